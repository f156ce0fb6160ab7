//! Typed flag values: the parsers clap runs on each value at parse time (durations, octal modes,
//! listen addresses), and the configuration error that names its flag. Each source declares its
//! own flags and builds its own config next to its code; this room only holds what they share.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A configuration error: names the flag and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    /// Flag name without dashes.
    pub flag: &'static str,
    /// What is wrong.
    pub problem: String,
}

/// A [`ConfigError`] for `flag`.
pub(crate) fn err(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        problem: problem.into(),
    }
}

/// A human duration such as `500ms`, `10s`, `5m`.
pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value.trim())
        .map_err(|e| format!("invalid duration {value:?} ({e}); use e.g. 500ms, 10s, 5m"))
}

/// A duration greater than zero (a timeout or window of 0 would never let anything through).
pub(crate) fn positive_duration(value: &str) -> Result<Duration, String> {
    let d = duration(value)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

/// A count of at least 1 (a cap of 0 would admit nothing).
pub(crate) fn positive_count(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("invalid number {value:?} ({e})")),
    }
}

/// Unix permission bits in octal (`0660`, `660` or `0o660`), at most `0777`: octal digits only
/// (no sign, one prefix at most).
pub(crate) fn octal_mode(value: &str) -> Result<u32, String> {
    let digits = value.strip_prefix("0o").unwrap_or(value);
    Some(digits)
        .filter(|d| !d.is_empty() && d.len() <= 4 && d.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .and_then(|d| u32::from_str_radix(d, 8).ok())
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("invalid octal mode {value:?}; use e.g. 0660"))
}

/// A listen address `HOST:PORT`: an IP address, or a host name resolved once at start (the
/// first address it resolves to).
pub(crate) fn listen_address(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let usage = "use HOST:PORT, e.g. 0.0.0.0:9798 or localhost:9798";
    let well_formed = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !well_formed {
        return Err(format!("invalid address {value:?}; {usage}"));
    }
    match value.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Ok(addr),
        Ok(None) => Err(format!("{value:?} resolves to no address; {usage}")),
        Err(e) => Err(format!("cannot resolve {value:?} ({e}); {usage}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_say_what_is_expected() {
        assert_eq!(duration(" 1m30s "), Ok(Duration::from_secs(90)));
        assert!(duration("soon").unwrap_err().contains("use e.g. 500ms"));
        assert_eq!(positive_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(
            positive_duration("0s").unwrap_err(),
            "must be greater than 0"
        );
        assert_eq!(positive_count("7"), Ok(7));
        assert_eq!(positive_count("0").unwrap_err(), "must be at least 1");
        assert!(positive_count("x").unwrap_err().contains("invalid number"));
        assert_eq!(octal_mode("0660"), Ok(0o660));
        assert_eq!(octal_mode("0o600"), Ok(0o600));
        assert_eq!(octal_mode("660"), Ok(0o660));
        for bad in [
            "999", "1000", "+660", "0o0o660", "-660", "", "0o", " 660", "06600",
        ] {
            assert!(octal_mode(bad).is_err(), "{bad:?}");
        }
        assert_eq!(listen_address("127.0.0.1:9798").unwrap().port(), 9798);
        assert_eq!(listen_address("[::1]:9798").unwrap().port(), 9798);
        let local = listen_address("localhost:9798").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9798, "{local}");
        for bad in [
            "nowhere",
            "localhost",
            ":9798",
            "localhost:99999",
            "localhost:x",
        ] {
            assert!(
                listen_address(bad).unwrap_err().contains("HOST:PORT"),
                "{bad:?}"
            );
        }
    }
}
