//! The `grpc-timeout` request header (`<up to 8 digits><unit>`), which carries a caller's deadline.

use std::time::Duration;

/// Parses a `grpc-timeout` value such as `120S`, `500m`, `2H`. Returns `None` for malformed values.
pub(crate) fn parse(value: &str) -> Option<Duration> {
    let value = value.trim();
    // ASCII only (also keeps the split below on a character boundary; found by fuzzing).
    if value.len() < 2 || value.len() > 9 || !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("120S"), Some(Duration::from_secs(120)));
        assert_eq!(parse("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed() {
        for v in [
            "",
            "S",
            "10",
            "10s",
            "-1S",
            "123456789S",
            "1.5S",
            "ten S",
            "5010\u{fffd}",
            "é",
        ] {
            assert_eq!(parse(v), None, "{v:?}");
        }
    }
}
