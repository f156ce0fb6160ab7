//! Tracing setup: logs and pull events to standard error, JSON or text, through a non-blocking
//! writer: a thread of its own writes the lines, so a full stderr pipe (journald behind, a stuck
//! terminal) never stalls the caller, kubelet's relay least of all. When the writer falls
//! `BUFFERED_LINES` behind, lines are dropped and counted (`pullwatch_log_lines_dropped_total`).

use crate::cli::LogFormat;
use std::sync::OnceLock;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the writer may fall behind before new ones are dropped.
pub const BUFFERED_LINES: usize = 8_192;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped so far because the writer was behind.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// Installs the global subscriber. `filter` is in RUST_LOG syntax (validated by the config).
/// Keep the returned guard until exit: dropping it flushes the lines still queued.
pub fn init(format: LogFormat, filter: &str) -> WorkerGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("pullwatch-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("pullwatch: logging already initialized: {e}");
    }
    guard
}
