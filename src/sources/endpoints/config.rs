//! The endpoint witness's flags and its validated settings.

use crate::flags::{self, ConfigError, err};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of the endpoint witness.
#[derive(Debug, Args)]
#[command(next_help_heading = "Registry endpoints (mirrors)")]
pub struct EndpointArgs {
    /// containerd's registry host directory (`hosts.toml` per registry). Without it, the
    /// directory is the `registry.config_path` that --containerd-config names. With mirrors
    /// configured there, each pull says which endpoint served it and which it fell back from
    /// (`pullwatch_image_pull_endpoint_bytes_total`, `..._fallbacks_total`). On with the
    /// containerd source; costs nothing when no mirror is configured.
    #[arg(long, env = "PULLWATCH_REGISTRY_CONFIG_PATH", value_name = "DIR")]
    pub registry_config_path: Option<PathBuf>,

    /// containerd's configuration file, read for its CRI plugin's `registry.config_path`.
    #[arg(
        long,
        env = "PULLWATCH_CONTAINERD_CONFIG",
        default_value = "/etc/containerd/config.toml",
        value_name = "PATH"
    )]
    pub containerd_config: PathBuf,

    /// How often the runtime's registry connections are read between pulls (each pull's start
    /// and end are read at once as well).
    #[arg(
        long,
        env = "PULLWATCH_ENDPOINT_POLL_INTERVAL",
        default_value = "1s",
        value_name = "DURATION",
        value_parser = flags::duration
    )]
    pub endpoint_poll_interval: Duration,

    /// Do not attribute pulls to registry endpoints.
    #[arg(long, env = "PULLWATCH_NO_ENDPOINTS")]
    pub no_endpoints: bool,
}

/// Where the registry host directory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostsSource {
    /// Given by `--registry-config-path`.
    Dir(PathBuf),
    /// containerd's `config.toml` names it (or names none: no mirrors).
    ContainerdConfig(PathBuf),
}

/// Settings of the endpoint witness.
#[derive(Debug, Clone)]
pub(crate) struct EndpointConfig {
    /// Where the host directory comes from.
    pub hosts: HostsSource,
    /// containerd's API socket: its peer is the process whose connections are read.
    pub containerd_socket: PathBuf,
    /// How often connections are read between pulls.
    pub poll_interval: Duration,
    /// How often the host directory is read again and its names resolved again.
    pub reload: Duration,
    /// Where the processes are read (`/proc`).
    pub proc: PathBuf,
}

impl EndpointConfig {
    /// The witness's settings with the containerd source on `containerd_socket`, or `None`
    /// (containerd source off, or `--no-endpoints`).
    pub(crate) fn from_args(
        args: &EndpointArgs,
        containerd_socket: Option<&std::path::Path>,
    ) -> Result<Option<Self>, ConfigError> {
        if args.endpoint_poll_interval < Duration::from_millis(100) {
            return Err(err("endpoint-poll-interval", "must be at least 100ms"));
        }
        let hosts = match &args.registry_config_path {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(err("registry-config-path", "must not be empty"));
            }
            Some(p) => HostsSource::Dir(p.clone()),
            None if args.containerd_config.as_os_str().is_empty() => {
                return Err(err("containerd-config", "must not be empty"));
            }
            None => HostsSource::ContainerdConfig(args.containerd_config.clone()),
        };
        let Some(socket) = containerd_socket else {
            if args.registry_config_path.is_some() && !args.no_endpoints {
                return Err(err(
                    "registry-config-path",
                    "needs --containerd-socket (endpoints are read from containerd's connections)",
                ));
            }
            return Ok(None);
        };
        if args.no_endpoints {
            return Ok(None);
        }
        Ok(Some(Self {
            hosts,
            containerd_socket: socket.to_path_buf(),
            poll_interval: args.endpoint_poll_interval,
            reload: Duration::from_secs(60),
            proc: PathBuf::from("/proc"),
        }))
    }
}
