//! The flags of `pullwatch run`, gathered from the rooms that own them (each source, the HTTP
//! endpoint, the recorder, logging); every flag also reads a `PULLWATCH_*` environment variable.

use crate::http::HttpArgs;
use crate::logging::LogArgs;
use crate::recorder::RecorderArgs;
use crate::sources::containerd::ContainerdArgs;
use crate::sources::cri_proxy::ProxyArgs;
use crate::sources::cri_tap::TapArgs;
use crate::sources::endpoints::EndpointArgs;
use crate::sources::kube::KubeArgs;
use crate::sources::ratelimit::ProbeArgs;
use crate::sources::runtime_status::RuntimeStatusArgs;
use clap::Args;
use std::path::PathBuf;

/// Flags of `pullwatch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The container runtime's CRI socket: the interposer relays to it (never pullwatch's own
    /// socket: refused at start), the kernel tap observes it and the runtime status poller
    /// reads it.
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_SOCKET",
        default_value = crate::cri::client::DEFAULT_RUNTIME_SOCKET,
        value_name = "PATH"
    )]
    pub runtime_socket: PathBuf,

    /// The CRI interposer.
    #[command(flatten)]
    pub interposer: ProxyArgs,

    /// The kernel tap.
    #[command(flatten)]
    pub tap: TapArgs,

    /// The containerd source.
    #[command(flatten)]
    pub containerd: ContainerdArgs,

    /// Registry endpoints (mirrors).
    #[command(flatten)]
    pub endpoints: EndpointArgs,

    /// The runtime status poller.
    #[command(flatten)]
    pub runtime_status: RuntimeStatusArgs,

    /// The Kubernetes API source.
    #[command(flatten)]
    pub kube: KubeArgs,

    /// The rate-limit probe.
    #[command(flatten)]
    pub ratelimit: ProbeArgs,

    /// The HTTP endpoint.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Events on pods.
    #[command(flatten)]
    pub pod_events: crate::sinks::pod_events::PodEventsArgs,

    /// Label caps and backoff.
    #[command(flatten)]
    pub recorder: RecorderArgs,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}
