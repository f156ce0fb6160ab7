//! The one event model every source produces: a single image pull attempt.

use crate::core::classifier;
use crate::core::reason::Reason;
use crate::core::reference::ImageRef;
use serde::Serialize;
use std::time::{Duration, SystemTime};
use tonic::Code;

/// Registry label used when a reference could not be read.
pub const UNKNOWN_REGISTRY: &str = "unknown";

/// Which source observed an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The CRI interposer in kubelet's call path: exact start, end and error.
    CriProxy,
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
            Source::Containerd => "containerd",
            Source::Kube => "kube",
        }
    }
}

/// The pod a pull was made for (from the PullImage request's sandbox config).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
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
    pub fn result_label(&self) -> &'static str {
        match self {
            Outcome::Success { .. } => "success",
            Outcome::Failure { .. } => "failure",
        }
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
}

impl PullAttempt {
    /// Normalized registry, or `unknown`.
    pub fn registry(&self) -> &str {
        self.reference
            .as_ref()
            .map_or(UNKNOWN_REGISTRY, |r| r.registry.as_str())
    }
}
