//! The `ratelimit-limit` / `ratelimit-remaining` headers registries send (Docker Hub, and the
//! IETF RateLimit header draft it follows): `100;w=21600` means 100 per 21 600-second window.

use std::time::Duration;

/// One parsed header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// The number (limit, or what remains).
    pub value: u64,
    /// The window, when the value names one (`;w=SECONDS`).
    pub window: Option<Duration>,
}

/// Why a header value is not a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable rate-limit header value {0:?}")]
pub(crate) struct QuotaError(pub String);

/// Parses `N`, `N;w=SECONDS` (parameters in any order, unknown ones ignored). When a server
/// sends several policies separated by `,`, the first is the one in force.
pub(crate) fn parse(value: &str) -> Result<Quota, QuotaError> {
    let bad = || QuotaError(value.chars().take(64).collect());
    let first = value.split(',').next().unwrap_or("").trim();
    let mut parts = first.split(';');
    let value_part = parts.next().unwrap_or("").trim();
    if value_part.is_empty() || !value_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = value_part.parse().map_err(|_| bad())?;
    let mut window = None;
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("w")
        {
            let secs: u64 = v.trim().parse().map_err(|_| bad())?;
            window = Some(Duration::from_secs(secs));
        }
    }
    Ok(Quota { value: n, window })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_and_draft_forms() {
        assert_eq!(
            parse("100;w=21600"),
            Ok(Quota {
                value: 100,
                window: Some(Duration::from_secs(21600))
            })
        );
        assert_eq!(
            parse(" 76 ; w=21600 ; comment=\"x\""),
            Ok(Quota {
                value: 76,
                window: Some(Duration::from_secs(21600))
            })
        );
        assert_eq!(
            parse("5000"),
            Ok(Quota {
                value: 5000,
                window: None
            })
        );
        assert_eq!(parse("10;w=60, 100;w=3600").map(|q| q.value), Ok(10));
        for bad in [
            "",
            "lots",
            ";w=1",
            "10;w=soon",
            "-1",
            "+1",
            "1.5;w=2",
            "99999999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
