//! `pullwatch explain`: classify pull error messages copied from `kubectl describe pod`.

use crate::core::classifier::{BARE_BACKOFF_HINT, classify_message, is_bare_backoff};
use crate::core::reason::Reason;
use clap::Args;
use std::io::{BufRead, Write};

/// Flags of `pullwatch explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The error message. Without it, messages are read from standard input, one per line.
    pub message: Option<String>,

    /// Print JSON: one object `{"reason", "hint"}` per message.
    #[arg(long)]
    pub json: bool,
}

/// Why explain could not run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExplainError {
    /// The message argument is blank.
    #[error(
        "the error message is empty; pass the text from `kubectl describe pod`, or pipe messages on stdin"
    )]
    Empty,
    /// Standard input could not be read.
    #[error("reading standard input, line {line}: {source}")]
    Read {
        /// 1-based line number.
        line: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the answer failed.
    #[error("writing output: {0}")]
    Write(#[from] std::io::Error),
}

/// `{"reason": ..., "hint": ...}`
#[derive(serde::Serialize)]
struct Explanation {
    reason: Reason,
    hint: &'static str,
}

fn json_line(reason: Reason, hint: &'static str) -> String {
    serde_json::json!(Explanation { reason, hint }).to_string()
}

/// The reason of `message` and what to do about it: kubelet's back-off wrapper without a cause
/// says where the cause is instead of the unknown cause's hint.
fn explanation(message: &str) -> (Reason, &'static str) {
    let reason = classify_message(message);
    let hint = if is_bare_backoff(message) {
        BARE_BACKOFF_HINT
    } else {
        reason.hint()
    };
    (reason, hint)
}

/// Explains one message to `out`.
pub(crate) fn explain_one(
    message: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<Reason, ExplainError> {
    if message.trim().is_empty() {
        return Err(ExplainError::Empty);
    }
    let (reason, hint) = explanation(message);
    if json {
        writeln!(out, "{}", json_line(reason, hint))?;
    } else {
        writeln!(out, "reason: {reason}\nhint: {hint}")?;
    }
    Ok(reason)
}

/// Longest message read from one line; the rest of a longer line is skipped, so memory stays
/// bounded whatever is piped in.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (without its newline). `None` at the
/// end of input, else whether the line was cut.
fn read_line_capped(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let (mut cut, mut any) = (false, false);
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(cut));
        }
        any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(chunk.len());
        let room = MAX_LINE - buf.len();
        cut |= take > room;
        buf.extend_from_slice(&chunk[..take.min(room)]);
        input.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            return Ok(Some(cut));
        }
    }
}

/// `message` for a terminal: control characters (escape sequences, carriage returns, NUL...)
/// written as Rust escapes instead of raw.
fn printable(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Explains each non-blank line of `input`: one JSON object per line with `json`, else for each
/// message its (escaped) text, reason and hint, blocks separated by a blank line. Lines that are
/// not UTF-8 are read lossily; lines longer than [`MAX_LINE`] are classified on their first
/// `MAX_LINE` bytes. Returns the number of messages explained.
pub(crate) fn explain_lines(
    mut input: impl BufRead,
    json: bool,
    out: &mut impl Write,
) -> Result<usize, ExplainError> {
    let mut n = 0;
    let mut buf = Vec::new();
    for line_no in 1.. {
        let cut = read_line_capped(&mut input, &mut buf).map_err(|source| ExplainError::Read {
            line: line_no,
            source,
        })?;
        let Some(cut) = cut else { break };
        let line = String::from_utf8_lossy(&buf);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.trim().is_empty() {
            continue;
        }
        let (reason, hint) = explanation(line);
        if json {
            writeln!(out, "{}", json_line(reason, hint))?;
        } else {
            let more = if cut { " [cut at 64 KiB]" } else { "" };
            if n > 0 {
                writeln!(out)?;
            }
            writeln!(
                out,
                "message: {}{more}\nreason: {reason}\nhint: {hint}",
                printable(line),
            )?;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_text_and_json() {
        let mut out = Vec::new();
        let r = explain_one(
            "toomanyrequests: You have reached your pull rate limit",
            false,
            &mut out,
        )
        .unwrap();
        assert_eq!(r, Reason::RateLimited);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("reason: rate_limited\nhint: "), "{s}");
        let mut out = Vec::new();
        explain_one(
            "x509: certificate signed by unknown authority",
            true,
            &mut out,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["reason"], "tls");
        assert_eq!(v["hint"], Reason::Tls.hint());
        assert!(matches!(
            explain_one("  ", true, &mut Vec::new()),
            Err(ExplainError::Empty)
        ));
    }

    #[test]
    fn stdin_text_gives_message_reason_and_hint_escaped_lossy_and_bounded() {
        let mut input = b"\x1b[31mpull access denied\x1b[0m\r\n\xff\xfe: not found\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 3 * MAX_LINE));
        input.extend(b"toomanyrequests\nlast: no such host");
        let mut out = Vec::new();
        assert_eq!(explain_lines(input.as_slice(), false, &mut out).unwrap(), 4);
        let text = String::from_utf8(out).unwrap();
        let blocks: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(blocks.len(), 4, "{text}");
        assert!(
            blocks[0].starts_with("message: \\u{1b}[31mpull access denied\\u{1b}[0m\n"),
            "{}",
            blocks[0]
        );
        assert!(
            !text.contains('\x1b') && !text.contains('\r'),
            "control characters escaped"
        );
        assert!(
            blocks[0].contains("reason: unauthorized\nhint: "),
            "{}",
            blocks[0]
        );
        assert!(
            blocks[1].starts_with("message: \u{fffd}\u{fffd}: not found\nreason: not_found"),
            "{}",
            blocks[1]
        );
        // The long line is classified on its first 64 KiB (all 'a': unknown), the rest skipped.
        assert!(
            blocks[2].contains("[cut at 64 KiB]\nreason: unknown"),
            "{}",
            &blocks[2][blocks[2].len() - 200..]
        );
        assert!(blocks[2].len() < MAX_LINE + 1000);
        assert!(blocks[3].contains("reason: dns"), "{}", blocks[3]);
    }

    #[test]
    fn stdin_lines_skip_blanks_and_read_bad_utf8_lossily() {
        let input = "a: not found\n\nconnection refused\n";
        let mut out = Vec::new();
        assert_eq!(explain_lines(input.as_bytes(), true, &mut out).unwrap(), 2);
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["reason"], "not_found");
        assert_eq!(lines[1]["reason"], "network");
        let bad: &[u8] = b"ok line\n\xff\xfe\n";
        assert_eq!(explain_lines(bad, true, &mut Vec::new()).unwrap(), 2);
    }
}
