//! What the benchmarks and the end-to-end tests reach inside the crate. Not an API: hidden from
//! the docs, and free to change with them.

pub use crate::recorder::{Recorder, RecorderConfig};
pub use crate::sinks::image_counts::ImagePullCounts;
pub use crate::telemetry::MetricsRegistry;

use crate::core::attempt::PullAttempt;

/// Records `attempt` as a source would ([`Recorder`]'s gate included).
pub fn record(recorder: &Recorder, attempt: &PullAttempt) {
    recorder.record(attempt);
}

/// Brings the backoff gauge up to date, as each `/metrics` render does first.
pub fn refresh_backoff(recorder: &Recorder) {
    recorder.refresh_backoff();
}

/// One gRPC message frame: the compressed flag, the length, then `message`.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    crate::grpc::frame::encode(message)
}

/// One read of a process's TCP connections as the endpoint witness makes it at each pull's
/// start and end: its descriptors in /proc, then the kernel's socket table (`sock_diag`).
pub struct ConnectionReader(crate::sources::endpoints::Reader);

impl ConnectionReader {
    /// Opens the kernel's socket table.
    pub fn open() -> Result<Self, String> {
        crate::sources::endpoints::Reader::open()
            .map(Self)
            .map_err(|e| e.to_string())
    }

    /// Reads `pid`'s TCP connections; returns how many it has.
    pub fn read(&mut self, pid: u32) -> Result<usize, String> {
        self.0.read(pid)
    }
}
