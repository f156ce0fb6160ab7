//! The containerd source's flags and its validated settings.

use crate::flags::{self, ConfigError, err};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of the containerd source.
#[derive(Debug, Args)]
#[command(next_help_heading = "containerd source (passive mode)")]
pub struct ContainerdArgs {
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
        value_name = "DURATION",
        value_parser = flags::duration
    )]
    pub ingest_poll_interval: Duration,

    /// A download without progress for this long counts in `pullwatch_image_pull_stalled`
    /// (containerd 2.x cancels such pulls after its `image_pull_progress_timeout`).
    #[arg(
        long,
        env = "PULLWATCH_STALL_AFTER",
        default_value = "60s",
        value_name = "DURATION",
        value_parser = flags::duration
    )]
    pub stall_after: Duration,
}

/// Settings of the containerd source.
#[derive(Debug, Clone)]
pub(crate) struct ContainerdConfig {
    /// containerd's API socket.
    pub socket: PathBuf,
    /// containerd namespace kubelet's images live in.
    pub namespace: String,
    /// How often ingests are polled.
    pub poll_interval: Duration,
    /// A download without progress for this long counts as stalled.
    pub stall_after: Duration,
}

impl ContainerdConfig {
    /// The source's settings, or `None` without `--containerd-socket`.
    pub(crate) fn from_args(args: &ContainerdArgs) -> Result<Option<Self>, ConfigError> {
        let poll_interval = args.ingest_poll_interval;
        if poll_interval < Duration::from_millis(50) {
            return Err(err("ingest-poll-interval", "must be at least 50ms"));
        }
        if args.stall_after < poll_interval {
            return Err(err(
                "stall-after",
                "must be at least --ingest-poll-interval",
            ));
        }
        if args.containerd_namespace.trim().is_empty() {
            return Err(err("containerd-namespace", "must not be empty"));
        }
        match &args.containerd_socket {
            Some(p) if p.as_os_str().is_empty() => {
                Err(err("containerd-socket", "must not be empty"))
            }
            Some(p) => Ok(Some(Self {
                socket: p.clone(),
                namespace: args.containerd_namespace.clone(),
                poll_interval,
                stall_after: args.stall_after,
            })),
            None => Ok(None),
        }
    }
}
