//! Pull anatomy: where one pull's time went (the phases `queue`, `resolve`, `download`, `unpack`)
//! and what it downloaded versus reused, computed from the runtime's own content records (each
//! blob's size, when its download started if a poll saw it, and when it was committed). Pure:
//! the containerd source gathers the records, the recorder joins them to the attempt.
//!
//! A phase that cannot be measured is absent, never guessed and never 0: `resolve` needs the
//! pull's start (the CRI call), `download` and `unpack` need at least one downloaded blob,
//! `queue` needs kubelet's own figures.

use crate::core::attempt::{Outcome, PullAttempt, Source};
use crate::core::reference::ImageRef;
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// One phase of a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// kubelet held the pull before calling the runtime (serialized pulls,
    /// `maxParallelImagePulls`): kubelet's `including waiting` time minus its pull time.
    Queue,
    /// From the start of the pull to the first byte of image content: manifest resolution and
    /// registry auth round trips.
    Resolve,
    /// From the first content download's start to the last one's commit.
    Download,
    /// From the last download's commit to the end of the pull (layers unpacked into the
    /// snapshotter, image record written).
    Unpack,
}

impl Phase {
    /// Every phase, in pull order.
    pub const ALL: [Phase; 4] = [Phase::Queue, Phase::Resolve, Phase::Download, Phase::Unpack];

    /// Label/JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Resolve => "resolve",
            Phase::Download => "download",
            Phase::Unpack => "unpack",
        }
    }
}

/// What a blob is to its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// An image index (multi-platform list) or a manifest: fetched first.
    Manifest,
    /// The image configuration.
    Config,
    /// A filesystem layer.
    Layer,
}

/// One blob of an image, as the runtime's content store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Content digest.
    pub digest: String,
    /// Role in the image.
    pub kind: BlobKind,
    /// Size in bytes (the content store's, exact).
    pub size: u64,
    /// When the content was committed to the store.
    pub committed_at: SystemTime,
    /// When its download started, if a poll saw it in flight.
    pub started_at: Option<SystemTime>,
    /// Already counted as downloaded by an earlier pull (so reused by this one, whatever its
    /// commit time says).
    pub counted_before: bool,
}

/// An image's content after a pull: its blobs and when the runtime wrote the image record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRecord {
    /// Image name as the runtime recorded it.
    pub image: String,
    /// The image's blobs (index/manifest first).
    pub blobs: Vec<Blob>,
    /// When the runtime created or updated the image record (the end of its pull).
    pub recorded_at: SystemTime,
}

/// Where one pull's time went and what it downloaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Anatomy {
    /// Measured phases, in seconds (absent: not measurable in this mode).
    pub phases: Vec<(Phase, f64)>,
    /// Bytes downloaded by this pull (exact content sizes).
    pub downloaded_bytes: u64,
    /// Bytes of content the pull found already in the store.
    pub cached_bytes: u64,
    /// Layers downloaded.
    pub layers_downloaded: u64,
    /// Layers found in the store.
    pub layers_cached: u64,
    /// When the first download started (`None`: nothing downloaded).
    #[serde(skip)]
    pub first_download: Option<SystemTime>,
}

/// How much earlier than the recorded start a blob may have been committed and still belong to
/// the pull (clock reads of pullwatch and the runtime on one node are not simultaneous).
const CLOCK_SLACK: Duration = Duration::from_millis(5);

/// In passive mode, an index or manifest committed longer before its image record than this is
/// not taken as the start of the pull (it was already in the store).
pub const PASSIVE_MAX_PULL: Duration = Duration::from_secs(3600);

impl ContentRecord {
    /// The passive attempt a new image record stands for, with its anatomy: it started with
    /// its first download seen (or, with nothing downloaded, when it was recorded) and ended
    /// when the record was written. `None` for a name that is no image reference.
    pub fn passive_attempt(&self) -> Option<(PullAttempt, Anatomy)> {
        let reference = ImageRef::parse(&self.image).ok()?;
        let anatomy = self.anatomy(None, self.recorded_at);
        let start = anatomy.first_download;
        let duration = start.and_then(|s| self.recorded_at.duration_since(s).ok());
        let attempt = PullAttempt {
            image: self.image.clone(),
            reference: Some(reference),
            pod: None,
            started_at: start.unwrap_or(self.recorded_at),
            duration,
            outcome: Outcome::Success {
                image_ref: String::new(),
            },
            source: Source::Containerd,
            trace: None,
            credentials: None,
            readout: None,
        };
        Some((attempt, anatomy))
    }

    /// The pull's start as its own content tells, when nothing else does (passive mode): the
    /// earliest download a poll saw start, or the commit of the image's first blob (its
    /// index or manifest, a few KiB fetched right after resolution) when that blob was new to
    /// this pull. `None` when nothing was downloaded.
    pub fn passive_start(&self) -> Option<SystemTime> {
        let seen = self
            .blobs
            .iter()
            .filter(|b| !b.counted_before)
            .filter_map(|b| b.started_at)
            .min();
        let first = self.blobs.first().filter(|b| {
            !b.counted_before
                && self
                    .recorded_at
                    .duration_since(b.committed_at)
                    .is_ok_and(|d| d <= PASSIVE_MAX_PULL)
        });
        match (seen, first.map(|b| b.committed_at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The anatomy of a pull that ran from `start` (`None`: unknown, see
    /// [`Self::passive_start`]) to `end`: a blob committed at or after the start and not
    /// counted before was downloaded by it; the rest was reused.
    pub fn anatomy(&self, start: Option<SystemTime>, end: SystemTime) -> Anatomy {
        let since = start.or_else(|| self.passive_start());
        let mut a = Anatomy::default();
        let mut last_commit: Option<SystemTime> = None;
        for b in &self.blobs {
            let downloaded = !b.counted_before
                && since.is_some_and(|s| b.committed_at + CLOCK_SLACK >= s)
                && b.committed_at <= end + CLOCK_SLACK;
            let layer = u64::from(b.kind == BlobKind::Layer);
            if downloaded {
                a.downloaded_bytes += b.size;
                a.layers_downloaded += layer;
                let began = b.started_at.unwrap_or(b.committed_at);
                a.first_download = Some(a.first_download.map_or(began, |f| f.min(began)));
                last_commit = Some(last_commit.map_or(b.committed_at, |l| l.max(b.committed_at)));
            } else {
                a.cached_bytes += b.size;
                a.layers_cached += layer;
            }
        }
        let secs = |from: SystemTime, to: SystemTime| to.duration_since(from).ok();
        if let (Some(first), Some(last)) = (a.first_download, last_commit) {
            if let Some(s) = start.and_then(|s| secs(s, first)) {
                a.phases.push((Phase::Resolve, s.as_secs_f64()));
            }
            if let Some(d) = secs(first, last) {
                a.phases.push((Phase::Download, d.as_secs_f64()));
            }
            if let Some(u) = secs(last, end) {
                a.phases.push((Phase::Unpack, u.as_secs_f64()));
            }
        }
        a
    }
}

impl Anatomy {
    /// The measured duration of `phase`, if any.
    pub fn phase(&self, phase: Phase) -> Option<f64> {
        self.phases
            .iter()
            .find(|(p, _)| *p == phase)
            .map(|(_, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(ms)
    }

    fn blob(kind: BlobKind, size: u64, committed: u64, started: Option<u64>) -> Blob {
        Blob {
            digest: format!("sha256:{committed}"),
            kind,
            size,
            committed_at: at(committed),
            started_at: started.map(at),
            counted_before: false,
        }
    }

    fn record(blobs: Vec<Blob>, recorded: u64) -> ContentRecord {
        ContentRecord {
            image: "r:5000/a:1".into(),
            blobs,
            recorded_at: at(recorded),
        }
    }

    #[test]
    fn phases_of_a_pull_with_a_known_start() {
        // Call at 0, manifest committed at 300 (resolve), layers until 2300, record at 2800.
        let r = record(
            vec![
                blob(BlobKind::Manifest, 500, 300, None),
                blob(BlobKind::Config, 1000, 320, None),
                blob(BlobKind::Layer, 4 << 20, 2300, Some(330)),
                // Already in the store before the pull: reused.
                blob(BlobKind::Layer, 7, 0, None),
            ],
            2800,
        );
        let a = r.anatomy(Some(at(100)), at(2900));
        assert_eq!(a.phase(Phase::Resolve), Some(0.2));
        assert_eq!(a.phase(Phase::Download), Some(2.0));
        assert_eq!(a.phase(Phase::Unpack), Some(0.6));
        assert_eq!(a.phase(Phase::Queue), None);
        assert_eq!(a.downloaded_bytes, 500 + 1000 + (4 << 20));
        assert_eq!((a.layers_downloaded, a.layers_cached), (1, 1));
        assert_eq!(a.cached_bytes, 7);
    }

    #[test]
    fn passive_pulls_start_at_their_first_new_blob() {
        let r = record(
            vec![
                blob(BlobKind::Manifest, 500, 1000, None),
                blob(BlobKind::Layer, 2 << 20, 1140, None),
            ],
            1150,
        );
        assert_eq!(r.passive_start(), Some(at(1000)));
        let a = r.anatomy(None, r.recorded_at);
        assert_eq!(a.downloaded_bytes, 500 + (2 << 20));
        assert_eq!(
            a.phase(Phase::Resolve),
            None,
            "no call start in passive mode"
        );
        assert_eq!(a.phase(Phase::Download), Some(0.14));
        assert!((a.phase(Phase::Unpack).unwrap() - 0.01).abs() < 1e-9);
        // A download a poll saw start earlier than the manifest's commit starts the pull.
        let mut r = r;
        r.blobs[1].started_at = Some(at(990));
        assert_eq!(r.passive_start(), Some(at(990)));
    }

    #[test]
    fn content_counted_before_or_long_present_is_reused() {
        let mut r = record(
            vec![
                blob(BlobKind::Manifest, 500, 1000, None),
                blob(BlobKind::Layer, 100, 1100, None),
            ],
            1200,
        );
        r.blobs[0].counted_before = true;
        r.blobs[1].counted_before = true;
        assert_eq!(r.passive_start(), None);
        let a = r.anatomy(None, r.recorded_at);
        assert_eq!((a.downloaded_bytes, a.cached_bytes), (0, 600));
        assert_eq!((a.layers_downloaded, a.layers_cached), (0, 1));
        assert!(a.phases.is_empty(), "nothing downloaded: no phase measured");
        // A manifest committed long before the record was not fetched by this pull.
        let old = record(
            vec![blob(BlobKind::Manifest, 500, 0, None)],
            PASSIVE_MAX_PULL.as_millis() as u64 + 1,
        );
        assert_eq!(old.passive_start(), None);
    }
}
