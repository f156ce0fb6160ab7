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
