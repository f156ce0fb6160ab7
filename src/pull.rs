//! `pullwatch pull`: pull one image through a CRI socket and report how it went.

use crate::cli::PullArgs;
use crate::core::attempt::Outcome;
use crate::core::reason::Reason;
use crate::cri::client::CriClient;
use crate::cri::{AuthConfig, ImageSpec, PodSandboxConfig, PodSandboxMetadata, PullImageRequest};
use std::time::{Duration, Instant};
use tonic::Code;

/// What the pull produced.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image as requested.
    pub image: String,
    /// Wall time of the call.
    pub duration: Duration,
    /// Result.
    pub outcome: Outcome,
}

/// Pull parameters (the testable core of the `pull` command).
#[derive(Clone, Default)]
pub struct PullRequest {
    /// Image reference.
    pub image: String,
    /// Credentials, if any.
    pub auth: Option<AuthConfig>,
    /// `(namespace, name, uid)` of the pod to report.
    pub pod: Option<(String, String, String)>,
    /// gRPC deadline.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for PullRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullRequest")
            .field("image", &self.image)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("pod", &self.pod)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PullRequest {
    /// Builds the request from command-line flags.
    pub fn from_args(args: &PullArgs) -> Result<Self, crate::config::ConfigError> {
        let timeout = crate::config::parse_duration("timeout", &args.timeout)?;
        let auth = (args.username.is_some()
            || args.password.is_some()
            || args.auth.is_some()
            || args.registry_token.is_some())
        .then(|| AuthConfig {
            username: args.username.clone().unwrap_or_default(),
            password: args.password.clone().unwrap_or_default(),
            auth: args.auth.clone().unwrap_or_default(),
            registry_token: args.registry_token.clone().unwrap_or_default(),
            ..Default::default()
        });
        let pod =
            (args.pod_namespace.is_some() || args.pod_name.is_some() || args.pod_uid.is_some())
                .then(|| {
                    (
                        args.pod_namespace.clone().unwrap_or_default(),
                        args.pod_name.clone().unwrap_or_default(),
                        args.pod_uid.clone().unwrap_or_default(),
                    )
                });
        Ok(Self {
            image: args.image.clone(),
            auth,
            pod,
            timeout: (!timeout.is_zero()).then_some(timeout),
        })
    }
}

/// Pulls `req.image` through `client`.
pub async fn pull(client: &mut CriClient, req: &PullRequest) -> PullReport {
    let mut request = tonic::Request::new(PullImageRequest {
        image: Some(ImageSpec {
            image: req.image.clone(),
            ..Default::default()
        }),
        auth: req.auth.clone(),
        sandbox_config: req
            .pod
            .as_ref()
            .map(|(namespace, name, uid)| PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.clone(),
                    uid: uid.clone(),
                    namespace: namespace.clone(),
                    attempt: 0,
                }),
            }),
    });
    if let Some(t) = req.timeout {
        request.set_timeout(t);
    }
    let start = Instant::now();
    let result = client.images.pull_image(request).await;
    let duration = start.elapsed();
    let outcome = match result {
        Ok(resp) => Outcome::Success {
            image_ref: resp.into_inner().image_ref,
        },
        // tonic reports an unreachable socket as UNAVAILABLE with a transport message.
        Err(status)
            if status.code() == Code::Unavailable && status.message().contains("transport") =>
        {
            Outcome::Failure {
                code: status.code(),
                message: status.message().to_string(),
                reason: Reason::RuntimeUnavailable,
            }
        }
        // tonic reports its own deadline firing as CANCELLED "Timeout expired"; say what it was.
        Err(status)
            if status.code() == Code::Cancelled && req.timeout.is_some_and(|t| duration >= t) =>
        {
            Outcome::failure(
                Code::DeadlineExceeded,
                format!("deadline exceeded after {duration:?}: {}", status.message()),
            )
        }
        Err(status) => Outcome::failure(status.code(), status.message()),
    };
    PullReport {
        image: req.image.clone(),
        duration,
        outcome,
    }
}

impl PullReport {
    /// Human-readable report.
    pub fn to_text(&self) -> String {
        let secs = self.duration.as_secs_f64();
        match &self.outcome {
            Outcome::Success { image_ref } => {
                format!(
                    "pulled {} in {secs:.3}s\nimage ref: {image_ref}\n",
                    self.image
                )
            }
            Outcome::Failure {
                code,
                message,
                reason,
            } => format!(
                "pull of {} failed after {secs:.3}s\nreason: {reason}\ngrpc code: {}\nerror: {message}\nhint: {}\n",
                self.image,
                crate::grpc::status::code_name(*code),
                reason.hint()
            ),
        }
    }

    /// One JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "image": self.image,
            "result": self.outcome.result_label(),
            "duration_seconds": self.duration.as_secs_f64(),
        });
        match &self.outcome {
            Outcome::Success { image_ref } => v["image_ref"] = image_ref.clone().into(),
            Outcome::Failure {
                code,
                message,
                reason,
            } => {
                v["reason"] = reason.as_str().into();
                v["grpc_code"] = crate::grpc::status::code_name(*code).into();
                v["error"] = message.clone().into();
                v["hint"] = reason.hint().into();
            }
        }
        v
    }
}
