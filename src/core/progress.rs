//! How far a pull in progress got: the downloads in flight per repository, and against the
//! image's manifest. The containerd source measures it; the pulls view shows it.

use std::time::SystemTime;

/// (registry host without port, repository): what containerd's download labels name.
pub type RepoKey = (String, String);

/// How far a pull of one image got, against its manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageProgress {
    /// Bytes of the image's blobs present or received (layers already in the store count).
    pub done: u64,
    /// Bytes of all of the image's blobs.
    pub total: u64,
    /// Layers present.
    pub layers_done: u64,
    /// Layers of the image.
    pub layers_total: u64,
}

impl std::ops::AddAssign for ImageProgress {
    fn add_assign(&mut self, o: Self) {
        self.done += o.done;
        self.total += o.total;
        self.layers_done += o.layers_done;
        self.layers_total += o.layers_total;
    }
}

/// Downloads in flight for one repository, from one ingest poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Downloads {
    /// Bytes received so far by downloads in flight.
    pub bytes: u64,
    /// Expected size of those downloads.
    pub total: u64,
    /// Downloads in flight.
    pub count: u64,
    /// Receive rate, bytes per second.
    pub rate: f64,
    /// Since when the oldest stalled download has not moved, if one is stalled.
    pub stalled_since: Option<SystemTime>,
    /// Against the image's manifest, once containerd has it.
    pub image: Option<ImageProgress>,
}
