//! The texts kubelet writes into pull events and container statuses, read back into structure.
//!
//! Formats (kubelet's image manager, 1.25 to 1.34; older and newer variants are both accepted):
//! - `Pulling image "IMAGE"`
//! - `Successfully pulled image "IMAGE" in 1.2s (1.5s including waiting). Image size: N bytes.`
//!   (before 1.28: `Successfully pulled image "IMAGE" in 1.2s`)
//! - `Container image "IMAGE" already present on machine[ and can be accessed by the pod]`
//! - `Failed to pull image "IMAGE": ERROR` where ERROR is the runtime's error, with or without
//!   Go gRPC's `rpc error: code = NotFound desc = ` prefix
//! - `Back-off pulling image "IMAGE"[: ErrImagePull: ERROR]` (event and `ImagePullBackOff` status)

use std::time::Duration;
use tonic::Code;

/// What one kubelet pull message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PullMessage<'a> {
    /// A pull started.
    Pulling {
        /// Image as kubelet names it.
        image: &'a str,
    },
    /// A pull succeeded.
    Pulled {
        /// Image as kubelet names it.
        image: &'a str,
        /// kubelet's pull duration (without waiting in its serial-pull queue), if given.
        duration: Option<Duration>,
        /// kubelet's time including the wait in its pull queue (kubelet 1.28+), if given.
        waiting: Option<Duration>,
        /// Image size in bytes, if given (kubelet 1.28+).
        size: Option<u64>,
    },
    /// The image was already there: no pull happened.
    AlreadyPresent {
        /// Image as kubelet names it.
        image: &'a str,
    },
    /// A pull failed with the runtime's error.
    Failed {
        /// Image as kubelet names it.
        image: &'a str,
        /// The runtime's error, as kubelet got it.
        error: &'a str,
    },
    /// kubelet is waiting before the next attempt.
    BackOff {
        /// Image as kubelet names it.
        image: &'a str,
        /// The previous attempt's error, if kubelet appended it.
        error: Option<&'a str>,
    },
}

/// Takes `"IMAGE"` off the front of `s` (Go's `%q`; image references contain no quotes or
/// escapes), returning the image and the rest.
fn quoted(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('"')?;
    let end = s.find('"')?;
    Some((&s[..end], &s[end + 1..]))
}

/// Parses one kubelet message; `None` for messages that are not about pulls.
pub(crate) fn parse(message: &str) -> Option<PullMessage<'_>> {
    let m = message.trim();
    if let Some(rest) = m.strip_prefix("Pulling image ") {
        let (image, _) = quoted(rest)?;
        return Some(PullMessage::Pulling { image });
    }
    if let Some(rest) = m.strip_prefix("Successfully pulled image ") {
        let (image, rest) = quoted(rest)?;
        let duration = rest.strip_prefix(" in ").and_then(|r| {
            // The duration ends at " (" or at the end of the text; it may contain a '.'.
            let end = r.find(" (").unwrap_or(r.len());
            parse_go_duration(r[..end].trim_end_matches('.'))
        });
        let waiting = rest
            .split_once(" (")
            .and_then(|(_, r)| r.split_once(" including waiting"))
            .and_then(|(d, _)| parse_go_duration(d));
        let size = rest.split_once("Image size: ").and_then(|(_, s)| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
        return Some(PullMessage::Pulled {
            image,
            duration,
            waiting,
            size,
        });
    }
    if let Some(rest) = m.strip_prefix("Container image ") {
        let (image, rest) = quoted(rest)?;
        return rest
            .starts_with(" already present on machine")
            .then_some(PullMessage::AlreadyPresent { image });
    }
    if let Some(rest) = m.strip_prefix("Failed to pull image ") {
        let (image, rest) = quoted(rest)?;
        let error = rest.strip_prefix(": ").unwrap_or(rest).trim();
        return Some(PullMessage::Failed { image, error });
    }
    if let Some(rest) = m.strip_prefix("Back-off pulling image ") {
        let (image, rest) = quoted(rest)?;
        let error = rest.strip_prefix(": ").map(|e| {
            let e = e.trim();
            e.strip_prefix("ErrImagePull: ").unwrap_or(e)
        });
        return Some(PullMessage::BackOff { image, error });
    }
    None
}

/// Splits Go gRPC's `rpc error: code = NotFound desc = MESSAGE` into the code and the message;
/// text without that prefix is returned whole with [`Code::Unknown`].
pub(crate) fn split_rpc_error(error: &str) -> (Code, &str) {
    let Some(rest) = error.trim().strip_prefix("rpc error: code = ") else {
        return (Code::Unknown, error.trim());
    };
    let (name, desc) = rest.split_once(" desc = ").unwrap_or((rest, ""));
    (go_code(name.trim()), desc)
}

/// A gRPC code from Go's `codes.Code.String()` name.
fn go_code(name: &str) -> Code {
    match name {
        "OK" => Code::Ok,
        "Canceled" => Code::Cancelled,
        "InvalidArgument" => Code::InvalidArgument,
        "DeadlineExceeded" => Code::DeadlineExceeded,
        "NotFound" => Code::NotFound,
        "AlreadyExists" => Code::AlreadyExists,
        "PermissionDenied" => Code::PermissionDenied,
        "ResourceExhausted" => Code::ResourceExhausted,
        "FailedPrecondition" => Code::FailedPrecondition,
        "Aborted" => Code::Aborted,
        "OutOfRange" => Code::OutOfRange,
        "Unimplemented" => Code::Unimplemented,
        "Internal" => Code::Internal,
        "Unavailable" => Code::Unavailable,
        "DataLoss" => Code::DataLoss,
        "Unauthenticated" => Code::Unauthenticated,
        _ => Code::Unknown,
    }
}

/// Parses a Go `time.Duration` string such as `1.234s`, `850ms`, `1m2.5s`, `12µs`.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0s" || rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * unit;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_messages_of_old_and_new_kubelets() {
        assert_eq!(
            parse(
                "Successfully pulled image \"nginx:1.27\" in 7.264s (7.264s including waiting). Image size: 68857691 bytes."
            ),
            Some(PullMessage::Pulled {
                image: "nginx:1.27",
                duration: Some(Duration::from_millis(7264)),
                waiting: Some(Duration::from_millis(7264)),
                size: Some(68_857_691),
            })
        );
        assert_eq!(
            parse(
                "Successfully pulled image \"busybox\" in 830ms (1.594s including waiting). Image size: 4269694 bytes."
            ),
            Some(PullMessage::Pulled {
                image: "busybox",
                duration: Some(Duration::from_millis(830)),
                waiting: Some(Duration::from_millis(1594)),
                size: Some(4_269_694),
            })
        );
        assert_eq!(
            parse("Successfully pulled image \"quay.io/a/b:1\" in 1m2.5s"),
            Some(PullMessage::Pulled {
                image: "quay.io/a/b:1",
                duration: Some(Duration::from_millis(62_500)),
                waiting: None,
                size: None,
            })
        );
        assert_eq!(
            parse("Successfully pulled image \"x\""),
            Some(PullMessage::Pulled {
                image: "x",
                duration: None,
                waiting: None,
                size: None
            })
        );
    }

    #[test]
    fn other_pull_messages() {
        assert_eq!(
            parse("Pulling image \"registry.k8s.io/pause:3.10\""),
            Some(PullMessage::Pulling {
                image: "registry.k8s.io/pause:3.10"
            })
        );
        assert_eq!(
            parse(
                "Container image \"curlimages/curl:8.21.0\" already present on machine and can be accessed by the pod"
            ),
            Some(PullMessage::AlreadyPresent {
                image: "curlimages/curl:8.21.0"
            })
        );
        assert_eq!(
            parse(
                "Failed to pull image \"nginx:nope\": rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nginx:nope\": not found"
            ),
            Some(PullMessage::Failed {
                image: "nginx:nope",
                error: "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nginx:nope\": not found"
            })
        );
        assert_eq!(
            parse("Back-off pulling image \"nginx:nope\""),
            Some(PullMessage::BackOff {
                image: "nginx:nope",
                error: None
            })
        );
        assert_eq!(
            parse("Back-off pulling image \"a:1\": ErrImagePull: failed to pull: 401 Unauthorized"),
            Some(PullMessage::BackOff {
                image: "a:1",
                error: Some("failed to pull: 401 Unauthorized")
            })
        );
        for other in [
            "Error: ErrImagePull",
            "Error: ImagePullBackOff",
            "Back-off restarting failed container app in pod x_ns(uid)",
            "Created container: web",
            "Pulling image",
            "Failed to pull image \"unterminated",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn rpc_errors_split_into_code_and_text() {
        assert_eq!(
            split_rpc_error("rpc error: code = NotFound desc = not found"),
            (Code::NotFound, "not found")
        );
        assert_eq!(
            split_rpc_error("rpc error: code = Canceled desc = context canceled"),
            (Code::Cancelled, "context canceled")
        );
        assert_eq!(
            split_rpc_error("failed to pull and unpack image"),
            (Code::Unknown, "failed to pull and unpack image")
        );
        assert_eq!(
            split_rpc_error("rpc error: code = Bogus"),
            (Code::Unknown, "")
        );
    }

    #[test]
    fn go_durations() {
        for (s, ms) in [
            ("313ms", 313.0),
            ("1.661s", 1661.0),
            ("2h3m4.5s", 7_384_500.0),
            ("850µs", 0.85),
            ("12us", 0.012),
            ("0s", 0.0),
        ] {
            let d = parse_go_duration(s).unwrap_or_else(|| panic!("{s}"));
            assert!((d.as_secs_f64() * 1000.0 - ms).abs() < 1e-6, "{s}: {d:?}");
        }
        for bad in ["", "s", "1x", "1.2.3s", "-1s", "1e400s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
