//! `pullwatch explain`: classify pull error messages copied from `kubectl describe pod`.

use crate::core::classifier::classify_message;
use crate::core::reason::Reason;
use std::io::{BufRead, Write};

/// Why explain could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The message argument is blank.
    #[error(
        "the error message is empty; pass the text from `kubectl describe pod`, or pipe messages on stdin"
    )]
    Empty,
    /// Standard input could not be read (e.g. not UTF-8).
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

fn json_line(reason: Reason) -> String {
    serde_json::json!(Explanation {
        reason,
        hint: reason.hint()
    })
    .to_string()
}

/// Explains one message to `out`.
pub fn explain_one(
    message: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<Reason, ExplainError> {
    if message.trim().is_empty() {
        return Err(ExplainError::Empty);
    }
    let reason = classify_message(message);
    if json {
        writeln!(out, "{}", json_line(reason))?;
    } else {
        writeln!(out, "reason: {reason}\nhint: {}", reason.hint())?;
    }
    Ok(reason)
}

/// Explains each non-blank line of `input`: JSON lines with `json`, else `reason<TAB>message`.
/// Returns the number of messages explained.
pub fn explain_lines(
    input: impl BufRead,
    json: bool,
    out: &mut impl Write,
) -> Result<usize, ExplainError> {
    let mut n = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(|source| ExplainError::Read {
            line: i + 1,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let reason = classify_message(&line);
        if json {
            writeln!(out, "{}", json_line(reason))?;
        } else {
            writeln!(out, "{reason}\t{line}")?;
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
    fn stdin_lines_skip_blanks_and_reject_bad_utf8() {
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
        let e = explain_lines(bad, false, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ExplainError::Read { line: 2, .. }), "{e}");
    }
}
