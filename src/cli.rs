//! Command-line interface: every flag also reads a `PULLWATCH_*` environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// pullwatch: times and classifies every container image pull on a node, for Prometheus.
#[derive(Debug, Parser)]
#[command(name = "pullwatch", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at start-up; boxing the flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: its sources (CRI interposer, containerd, Kubernetes API, rate-limit probe)
    /// and the /metrics endpoint.
    Run(RunArgs),
    /// Classify a pull error message (as shown by `kubectl describe pod`) and print a fix hint.
    Explain(ExplainArgs),
    /// Pull an image through a CRI socket (like `crictl pull`), printing duration or cause + hint.
    Pull(PullArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (pull events carry structured fields).
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags of `pullwatch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Unix socket the CRI interposer listens on; point kubelet's `imageServiceEndpoint`
    /// (or `--image-service-endpoint`) at `unix://PATH`. Each connection is relayed byte for byte
    /// to its own connection to --runtime-socket and observed on a copy. Without it the
    /// interposer is off.
    #[arg(long, env = "PULLWATCH_CRI_PROXY_SOCKET", value_name = "PATH")]
    pub cri_proxy_socket: Option<PathBuf>,

    /// Permission bits (octal) of the interposer socket. kubelet runs as root; keep it tight.
    #[arg(
        long,
        env = "PULLWATCH_CRI_PROXY_SOCKET_MODE",
        default_value = "0660",
        value_name = "OCTAL"
    )]
    pub cri_proxy_socket_mode: String,

    /// Group of the interposer socket, a name from /etc/group or a numeric GID (default: the
    /// agent's own group). With mode 0660, lets a non-root CRI client in that group connect.
    #[arg(long, env = "PULLWATCH_CRI_PROXY_SOCKET_GROUP", value_name = "GROUP")]
    pub cri_proxy_socket_group: Option<String>,

    /// The container runtime's CRI socket the interposer relays to (never pullwatch's own socket:
    /// refused at start).
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_SOCKET",
        default_value = "/run/containerd/containerd.sock",
        value_name = "PATH"
    )]
    pub runtime_socket: PathBuf,

    /// containerd's API socket. Turns on the containerd source (passive mode): live download
    /// progress, stalls and, without the interposer, pulled images. Needs no kubelet change.
    #[arg(long, env = "PULLWATCH_CONTAINERD_SOCKET", value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,

    /// containerd namespace of kubelet's images.
    #[arg(
        long,
        env = "PULLWATCH_CONTAINERD_NAMESPACE",
        default_value = "k8s.io",
        value_name = "NAME"
    )]
    pub containerd_namespace: String,

    /// How often the containerd source polls downloads in progress.
    #[arg(
        long,
        env = "PULLWATCH_INGEST_POLL_INTERVAL",
        default_value = "1s",
        value_name = "DURATION"
    )]
    pub ingest_poll_interval: String,

    /// A download without progress for this long counts in `pullwatch_image_pull_stalled`
    /// (containerd 2.x cancels such pulls after its `image_pull_progress_timeout`).
    #[arg(
        long,
        env = "PULLWATCH_STALL_AFTER",
        default_value = "60s",
        value_name = "DURATION"
    )]
    pub stall_after: String,

    /// How often runtime health and inventory (CRI Version, Status, ListImages, ImageFsInfo) are
    /// read from --runtime-socket; `0s` turns this off.
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_STATUS_INTERVAL",
        default_value = "30s",
        value_name = "DURATION"
    )]
    pub runtime_status_interval: String,

    /// Turn on the Kubernetes API source: kubelet's pull events and the container statuses of
    /// this node's pods give failure causes, kubelet-measured durations and backoff without the
    /// interposer. Needs --node-name and get/list/watch on pods and events.
    #[arg(long, env = "PULLWATCH_KUBE")]
    pub kube: bool,

    /// This node's name (the DaemonSet sets it from `spec.nodeName`); with --kube.
    #[arg(long, env = "PULLWATCH_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// With --kube: also watch kubelet's Pod events (successes with kubelet's durations, failures
    /// at once). `false` watches only this node's pods, for clusters where every agent receiving
    /// the cluster-wide stream of kubelet events is too much (the API cannot filter events by
    /// node): failures and backoff then come from pod statuses alone, successes are not seen.
    #[arg(
        long,
        env = "PULLWATCH_KUBE_EVENTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub kube_events: bool,

    /// kubeconfig for the Kubernetes API (local use); without it, the in-cluster service account.
    #[arg(long, env = "PULLWATCH_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Probe a registry's pull rate-limit headroom (off by default; repeatable): `docker.io`
    /// (HEADs `ratelimitpreview/test`, which Docker Hub does not count as a pull), or
    /// `[http://|https://]HOST[:PORT]/REPOSITORY[:TAG]` for another registry's manifest.
    #[arg(
        long,
        env = "PULLWATCH_RATELIMIT_PROBE",
        value_name = "REGISTRY",
        value_delimiter = ','
    )]
    pub ratelimit_probe: Vec<String>,

    /// How often each rate-limit probe runs (jittered by up to 10%).
    #[arg(
        long,
        env = "PULLWATCH_RATELIMIT_PROBE_INTERVAL",
        default_value = "5m",
        value_name = "DURATION"
    )]
    pub ratelimit_probe_interval: String,

    /// A `.dockerconfigjson` file (e.g. a mounted pull secret) with credentials for the probed
    /// registries; without it (or without an entry) the probe is anonymous. Never logged.
    #[arg(long, env = "PULLWATCH_RATELIMIT_PROBE_AUTH", value_name = "PATH")]
    pub ratelimit_probe_auth: Option<PathBuf>,

    /// TLS and basic auth for the HTTP endpoint: a YAML file in the Prometheus exporter
    /// toolkit's format (`tls_server_config`, `basic_auth_users` with bcrypt hashes). /healthz
    /// and /readyz stay without auth.
    #[arg(
        long = "web.config.file",
        env = "PULLWATCH_WEB_CONFIG_FILE",
        value_name = "PATH"
    )]
    pub web_config_file: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "PULLWATCH_LISTEN",
        default_value = "0.0.0.0:9798",
        value_name = "HOST:PORT"
    )]
    pub listen: String,

    /// Limit for connecting to the runtime socket; past it (or on a refused connect) the
    /// caller's connection is closed at once, as the runtime's own socket would refuse it.
    #[arg(
        long,
        env = "PULLWATCH_CONNECT_TIMEOUT",
        default_value = "2s",
        value_name = "DURATION"
    )]
    pub connect_timeout: String,

    /// On SIGTERM the interposer stops accepting and removes its socket, closes each connection
    /// once no call is open on it, and closes the rest after this long.
    #[arg(
        long,
        env = "PULLWATCH_SHUTDOWN_GRACE",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub shutdown_grace: String,

    /// A failing pod/image pair leaves `pullwatch_image_pull_backoff` after this long without a
    /// new attempt (kubelet's backoff caps at 5m, so a pair still retrying comes back sooner).
    #[arg(
        long,
        env = "PULLWATCH_BACKOFF_EXPIRY",
        default_value = "10m",
        value_name = "DURATION"
    )]
    pub backoff_expiry: String,

    /// Distinct `registry` label values kept; later ones are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_MAX_REGISTRIES",
        default_value_t = 100,
        value_name = "N"
    )]
    pub max_registries: usize,

    /// Distinct `namespace` label values kept; later ones are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_MAX_NAMESPACES",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub max_namespaces: usize,

    /// Also export `pullwatch_image_pulls_by_image_total` with an `image` label (off by default:
    /// image names are high-cardinality).
    #[arg(long, env = "PULLWATCH_IMAGE_LABEL")]
    pub image_label: bool,

    /// With --image-label: distinct images kept before the rest are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_IMAGE_LABEL_CAP",
        default_value_t = 100,
        value_name = "N"
    )]
    pub image_label_cap: usize,

    /// Log format (pull events are one structured line each).
    #[arg(long, env = "PULLWATCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter in RUST_LOG syntax, e.g. `info` or `info,pullwatch=debug`.
    #[arg(
        long,
        env = "PULLWATCH_LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,
}

/// Flags of `pullwatch explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The error message. Without it, messages are read from standard input, one per line.
    pub message: Option<String>,

    /// Print JSON: one object `{"reason", "hint"}` per message.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `pullwatch pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference to pull, e.g. `nginx:1.27` or `registry.example.com/team/app@sha256:...`.
    pub image: String,

    /// CRI socket to pull through (the runtime's, or pullwatch's interposer).
    #[arg(
        long,
        env = "PULLWATCH_RUNTIME_SOCKET",
        default_value = "/run/containerd/containerd.sock",
        value_name = "PATH"
    )]
    pub runtime_socket: PathBuf,

    /// Deadline for the pull (sent as the gRPC deadline, like kubelet's runtimeRequestTimeout).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub timeout: String,

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
