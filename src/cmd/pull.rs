//! `pullwatch pull`: pull one image through a CRI socket and report how it went.

use crate::core::attempt::Outcome;
use crate::core::reason::Reason;
use crate::cri::client::CriClient;
use crate::cri::{AuthConfig, ImageSpec, PodSandboxConfig, PodSandboxMetadata, PullImageRequest};
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::Code;

/// Flags of `pullwatch pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference to pull, e.g. `nginx:1.27` or `registry.example.com/team/app@sha256:...`.
    pub image: String,

    /// CRI socket to pull through (the runtime's, or pullwatch's interposer).
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_SOCKET",
        default_value = crate::cri::client::DEFAULT_RUNTIME_SOCKET,
        value_name = "PATH"
    )]
    pub runtime_socket: PathBuf,

    /// Deadline for the pull, sent as the gRPC deadline (kubelet sets none on pulls; `0s`: none).
    #[arg(
        long,
        default_value = "5m",
        value_name = "DURATION",
        value_parser = crate::flags::duration
    )]
    pub timeout: Duration,

    /// Registry user name.
    #[arg(long, env = "PULLWATCH_PULL_USERNAME")]
    pub username: Option<String>,

    /// Registry password (prefer the environment variable: arguments are visible in `ps`).
    #[arg(long, env = "PULLWATCH_PULL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// Base64 `user:password`, as in a `.dockerconfigjson` `auth` field.
    #[arg(long, env = "PULLWATCH_PULL_AUTH", hide_env_values = true)]
    pub auth: Option<String>,

    /// Bearer token for the registry.
    #[arg(long, env = "PULLWATCH_PULL_REGISTRY_TOKEN", hide_env_values = true)]
    pub registry_token: Option<String>,

    /// Pod namespace to report in the request's sandbox metadata (as kubelet does).
    #[arg(long)]
    pub pod_namespace: Option<String>,

    /// Pod name to report.
    #[arg(long)]
    pub pod_name: Option<String>,

    /// Pod UID to report.
    #[arg(long)]
    pub pod_uid: Option<String>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What the pull produced.
#[derive(Debug, Clone)]
pub struct PullReport {
    /// The image as requested.
    pub image: String,
    /// Wall time of the call.
    pub duration: Duration,
    /// Result.
    pub outcome: Outcome,
    /// Whether credentials were sent with the pull.
    pub credentials: bool,
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
    pub fn from_args(args: &PullArgs) -> Result<Self, crate::flags::ConfigError> {
        let timeout = args.timeout;
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
        credentials: req.auth.is_some(),
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
            } => {
                let case = reason
                    .case_hint(Some(self.credentials))
                    .map_or(String::new(), |c| format!("case: {c}\n"));
                format!(
                    "pull of {} failed after {secs:.3}s\nreason: {reason}\n{case}grpc code: {}\nerror: {message}\nhint: {}\n",
                    self.image,
                    crate::grpc::status::code_name(*code),
                    reason.hint()
                )
            }
        }
    }

    /// One JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "image": self.image,
            "result": self.outcome.result(),
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
                v["credentials"] = self.credentials.into();
                if let Some(case) = reason.case_hint(Some(self.credentials)) {
                    v["case"] = case.into();
                }
            }
        }
        v
    }
}
