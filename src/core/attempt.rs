//! The one event model every source produces: a single image pull attempt.

use crate::core::classifier;
use crate::core::reason::Reason;
use crate::core::reference::ImageRef;
use serde::Serialize;
use std::time::{Duration, SystemTime};
use tonic::Code;

/// Registry label used when a reference could not be read.
pub const UNKNOWN_REGISTRY: &str = "unknown";

/// The registry `reference` names, else [`UNKNOWN_REGISTRY`].
pub fn registry_of(reference: Option<&ImageRef>) -> &str {
    reference.map_or(UNKNOWN_REGISTRY, |r| r.registry.as_str())
}

/// The registry image name `image` names, else [`UNKNOWN_REGISTRY`].
pub fn registry_of_image(image: &str) -> String {
    ImageRef::parse(image).map_or_else(|_| UNKNOWN_REGISTRY.to_string(), |r| r.registry)
}

/// Which source observed an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The CRI interposer in kubelet's call path: exact start, end and error.
    CriProxy,
    /// The kernel tap on the runtime's CRI socket: the same exact calls, observed without being
    /// in the path (what it could not read after joining late is said in [`Readout`]).
    CriTap,
    /// containerd's events and ingests (passive mode): successes only, start estimated from the
    /// first download seen.
    Containerd,
    /// The Kubernetes API: kubelet's pull events and pod statuses for this node. Durations are
    /// kubelet's own; start times are derived from event timestamps (second resolution).
    Kube,
}

impl Source {
    /// Whether start and duration are estimates rather than measured on the call.
    pub fn is_estimated(self) -> bool {
        matches!(self, Source::Containerd | Source::Kube)
    }

    /// Label/JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::CriProxy => "cri_proxy",
            Source::CriTap => "cri_tap",
            Source::Containerd => "containerd",
            Source::Kube => "kube",
        }
    }
}

/// The pod a pull was made for (from the PullImage request's sandbox config).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct PodRef {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The runtime returned an image reference (usually the image ID/digest).
    Success {
        /// `image_ref` from the PullImage response.
        image_ref: String,
    },
    /// The call failed.
    Failure {
        /// gRPC status code.
        code: Code,
        /// The runtime's error message (percent-decoded grpc-message).
        message: String,
        /// Classified cause.
        reason: Reason,
    },
}

impl Outcome {
    /// Builds a failure, classifying it.
    pub fn failure(code: Code, message: impl Into<String>) -> Self {
        let message = message.into();
        let reason = classifier::classify(code, &message);
        Outcome::Failure {
            code,
            message,
            reason,
        }
    }

    /// The failure reason, if any.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Outcome::Success { .. } => None,
            Outcome::Failure { reason, .. } => Some(*reason),
        }
    }

    /// `success` or `failure`, the `result` label.
    pub fn result(&self) -> AttemptResult {
        match self {
            Outcome::Success { .. } => AttemptResult::Success,
            Outcome::Failure { .. } => AttemptResult::Failure,
        }
    }
}

crate::label_enum! {
    /// How an attempt ended, as the `result` label and JSON field say it.
    pub enum AttemptResult {
        /// The runtime has the image.
        Success => "success",
        /// The pull failed.
        Failure => "failure",
    }
}

/// One image pull attempt, as one source saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct PullAttempt {
    /// The image exactly as requested (may be empty if the request could not be decoded).
    pub image: String,
    /// Parsed reference, `None` if `image` does not parse.
    pub reference: Option<ImageRef>,
    /// The pod the pull was for, if the caller said (kubelet always does; crictl does not).
    pub pod: Option<PodRef>,
    /// Wall-clock start.
    pub started_at: SystemTime,
    /// How long the attempt took; `None` when the source could not measure it (kubelet's
    /// `Failed` events and pod statuses carry no duration).
    pub duration: Option<Duration>,
    /// Result.
    pub outcome: Outcome,
    /// Who observed it.
    pub source: Source,
    /// The caller's W3C trace context (kubelet sends one with each CRI call when its tracing is
    /// on), so the pull can be found from kubelet's trace.
    pub trace: Option<Box<TraceContext>>,
    /// Whether the caller sent registry credentials with the pull (presence only, never a
    /// value); `None` where the source cannot see the request (containerd, the Kubernetes API).
    pub credentials: Option<bool>,
    /// How the call's parts were read, when not all from their own fields (the tap joined the
    /// connection late); `None`: read in full, or a source that does not read calls.
    pub readout: Option<Readout>,
}

/// What an observer could not read from a call's own fields, and where it took it from
/// instead. Never another call's: a part not found is said to be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readout {
    /// The method was not readable (its `:path` was an HPACK entry from before pullwatch
    /// joined): the call was recognized as PullImage by its request message.
    pub method_from_message: bool,
    /// Where a failure's status and message came from.
    pub cause_from: Option<CauseFrom>,
}

/// Where a failure's cause was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseFrom {
    /// The runtime's `grpc-status` and `grpc-message` fields, by name.
    Trailers,
    /// The runtime's own status and message, by the place gRPC over HTTP/2 gives them in the
    /// trailers (their names were HPACK entries from before pullwatch joined).
    TrailerOrder,
    /// The failure's status and message could not be read at all: reason `unknown`.
    Unreadable,
}

impl CauseFrom {
    /// Event-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            CauseFrom::Trailers => "trailers",
            CauseFrom::TrailerOrder => "trailer_order",
            CauseFrom::Unreadable => "unreadable",
        }
    }
}

/// The trace and span a call was made in, from its W3C `traceparent` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// The caller's span: 16 lowercase hex digits.
    pub span_id: String,
}

impl TraceContext {
    /// Parses `version-traceid-parentid-flags` (W3C Trace Context §3.2); `None` for anything
    /// malformed, a version `ff`, or an all-zero id.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        // Version 00 has exactly four fields; later versions may append more.
        let ok = hex(version, 2)
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && hex(trace_id, 32)
            && nonzero(trace_id)
            && hex(span_id, 16)
            && nonzero(span_id)
            && hex(flags, 2);
        ok.then(|| Self {
            trace_id: trace_id.to_string(),
            span_id: span_id.to_string(),
        })
    }
}

/// Longest image reference kept (a valid one is far shorter: names up to 255 characters, tags
/// up to 128, a digest); longer ones, from a broken or hostile caller, are cut.
pub const MAX_IMAGE_LEN: usize = 1024;
/// Longest pod name kept (a DNS subdomain: 253).
pub const MAX_POD_NAME_LEN: usize = 253;
/// Longest namespace kept (a DNS label: 63).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest pod UID kept (a UUID is 36).
pub const MAX_UID_LEN: usize = 64;

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    s.truncate(s.floor_char_boundary(max));
}

impl PodRef {
    /// The pod with every field cut to its bound.
    pub fn bounded(mut self) -> Self {
        truncate(&mut self.namespace, MAX_NAMESPACE_LEN);
        truncate(&mut self.name, MAX_POD_NAME_LEN);
        truncate(&mut self.uid, MAX_UID_LEN);
        self
    }

    /// Whether every field is within its bound.
    pub fn is_bounded(&self) -> bool {
        self.namespace.len() <= MAX_NAMESPACE_LEN
            && self.name.len() <= MAX_POD_NAME_LEN
            && self.uid.len() <= MAX_UID_LEN
    }
}

impl PullAttempt {
    /// Whether image and pod strings are within their bounds (see [`PullAttempt::bounded`]).
    pub fn is_bounded(&self) -> bool {
        self.image.len() <= MAX_IMAGE_LEN && self.pod.as_ref().is_none_or(PodRef::is_bounded)
    }

    /// The attempt with image and pod strings cut to their bounds, so that no caller can make
    /// labels, backoff keys or event lines grow with its input.
    pub fn bounded(mut self) -> Self {
        truncate(&mut self.image, MAX_IMAGE_LEN);
        self.pod = self.pod.map(PodRef::bounded);
        self
    }

    /// Normalized registry, or `unknown`.
    pub fn registry(&self) -> &str {
        registry_of(self.reference.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_strictly() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id, "00f067aa0ba902b7");
        // A future version may carry more fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn strings_are_cut_on_char_boundaries() {
        let mut s = "é".repeat(10);
        truncate(&mut s, 5);
        assert_eq!(s, "éé");
        let pod = PodRef {
            namespace: "n".repeat(100),
            name: "p".repeat(300),
            uid: "u".repeat(100),
        }
        .bounded();
        assert!(pod.is_bounded());
        assert_eq!(
            (pod.namespace.len(), pod.name.len(), pod.uid.len()),
            (63, 253, 64)
        );
    }
}
