//! Tracing setup: logs and pull events to standard error, JSON or text, through a non-blocking
//! writer: a thread of its own writes the lines, so a full stderr pipe (journald behind, a stuck
//! terminal) never stalls the caller, kubelet's relay least of all. When the writer falls
//! `BUFFERED_LINES` behind, lines are dropped and counted (`pullwatch_log_lines_dropped_total`).

use crate::telemetry::{MetricsError, MetricsRegistry, RenderHook};
use prometheus::IntCounter;
use std::sync::{Arc, OnceLock};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (pull events carry structured fields).
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of logging.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log format (pull events are one structured line each).
    #[arg(long, env = "PULLWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,pullwatch=debug`.
    #[arg(
        long,
        env = "PULLWATCH_LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,
}

impl LogArgs {
    /// Checks the filter's syntax.
    pub fn validate(&self) -> Result<(), crate::flags::ConfigError> {
        EnvFilter::try_new(&self.log_level)
            .map(|_| ())
            .map_err(|e| {
                crate::flags::err(
                    "log-level",
                    format!("invalid filter {:?}: {e}", self.log_level),
                )
            })
    }
}

/// Lines the writer may fall behind before new ones are dropped.
pub(crate) const BUFFERED_LINES: usize = 8_192;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Lines dropped so far because the writer was behind.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// `pullwatch_log_lines_dropped_total`, brought up to the writer's own count at each render.
struct DroppedLines(IntCounter);

impl RenderHook for DroppedLines {
    fn refresh(&self) {
        let (dropped, counted) = (dropped_lines(), self.0.get());
        if dropped > counted {
            self.0.inc_by(dropped - counted);
        }
    }
}

/// Registers logging's family in `reg`.
pub(crate) fn register_metrics(reg: &MetricsRegistry) -> Result<(), MetricsError> {
    let counter = crate::telemetry::counter(reg, "pullwatch_log_lines_dropped_total")?;
    reg.add_hook(Arc::new(DroppedLines(counter)));
    Ok(())
}

/// Installs the global subscriber. `filter` is in RUST_LOG syntax (validated by the config).
/// Keep the returned guard until exit: dropping it flushes the lines still queued.
pub(crate) fn init(format: LogFormat, filter: &str) -> WorkerGuard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("pullwatch-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    // Colours only for a person at a terminal: never escape codes in files, pipes or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.fmt_fields(escaped_fields()).try_init(),
    };
    if let Err(e) = result {
        eprintln!("pullwatch: logging already initialized: {e}");
    }
    guard
}

/// `s` with control characters written as escapes (`\n`, `\u{1b}`, ...), so a value that
/// came from outside (an image name, a runtime's message) can neither forge a log line nor
/// send terminal escape sequences. Printable text, Unicode included, is kept.
pub(crate) fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// The text format's fields, each value escaped ([`escape_controls`]): `name=value`, the
/// message bare.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = escape_controls(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_is_kept() {
        assert_eq!(escape_controls("reg.example/app:1"), "reg.example/app:1");
        assert_eq!(escape_controls("ünïcode"), "ünïcode");
        assert_eq!(
            escape_controls("a\nlevel=ERROR forged\u{1b}[31m\u{9b}x"),
            "a\\nlevel=ERROR forged\\u{1b}[31m\\u{9b}x"
        );
    }
}
