//! The interposer's flags and its validated settings.

use crate::flags::{self, ConfigError, err};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of the CRI interposer.
#[derive(Debug, Args)]
#[command(next_help_heading = "CRI interposer")]
pub struct ProxyArgs {
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
        value_name = "OCTAL",
        value_parser = flags::octal_mode
    )]
    pub cri_proxy_socket_mode: u32,

    /// Group of the interposer socket, a name from /etc/group or a numeric GID (default: the
    /// agent's own group). With mode 0660, lets a non-root CRI client in that group connect.
    #[arg(long, env = "PULLWATCH_CRI_PROXY_SOCKET_GROUP", value_name = "GROUP")]
    pub cri_proxy_socket_group: Option<String>,

    /// Limit for connecting to the runtime socket; past it (or on a refused connect) the
    /// caller's connection is closed at once, as the runtime's own socket would refuse it.
    #[arg(
        long,
        env = "PULLWATCH_CONNECT_TIMEOUT",
        default_value = "2s",
        value_name = "DURATION",
        value_parser = flags::positive_duration
    )]
    pub connect_timeout: Duration,

    /// Caller connections relayed at once. Each takes two file descriptors (the caller's and
    /// its own runtime connection); one more is closed at once and counted
    /// (`pullwatch_interposer_connections_total{result="over_limit"}`). kubelet keeps two.
    /// Default: 256, or fewer when the process's open-file limit leaves less room (half of what
    /// is left after 128 kept for the endpoint and the sources). A value given must fit.
    #[arg(
        long,
        env = "PULLWATCH_CRI_PROXY_MAX_CONNECTIONS",
        value_name = "N",
        value_parser = flags::positive_count
    )]
    pub cri_proxy_max_connections: Option<usize>,

    /// On SIGTERM the interposer stops accepting and removes its socket, closes each connection
    /// once no call is open on it, and closes the rest after this long.
    #[arg(
        long,
        env = "PULLWATCH_SHUTDOWN_GRACE",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = flags::duration
    )]
    pub shutdown_grace: Duration,
}

/// Interposer settings.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    /// Where kubelet connects (its `imageServiceEndpoint`).
    pub listen_socket: PathBuf,
    /// Permission bits of the listening socket.
    pub socket_mode: u32,
    /// Group owning the listening socket (default: pullwatch's own).
    pub socket_group: Option<u32>,
    /// The runtime's CRI socket.
    pub runtime_socket: PathBuf,
    /// Limit for connecting to the runtime socket.
    pub connect_timeout: Duration,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Caller connections relayed at once.
    pub max_connections: usize,
}

/// Caller connections relayed at once when the open-file limit leaves room.
pub(super) const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// File descriptors kept free beside the interposer's connections: the HTTP endpoint's
/// connections (64 by default, plus probes), the sources' clients, logs, the runtime.
pub(super) const RESERVED_FDS: u64 = 128;

/// The process's soft limit on open files (`/proc/self/limits`), if readable.
pub(super) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

impl ProxyConfig {
    /// Whether any local user may connect: the socket relays every CRI method to the runtime
    /// (RuntimeService too, Exec included), so start-up warns about it.
    pub(crate) fn world_writable(&self) -> bool {
        self.socket_mode & 0o002 != 0
    }

    /// The interposer's settings relaying to `runtime_socket`, or `None` without
    /// `--cri-proxy-socket`. A group name is looked up in `/etc/group`.
    pub(crate) fn from_args(
        args: &ProxyArgs,
        runtime_socket: &Path,
    ) -> Result<Option<Self>, ConfigError> {
        let socket_group = match &args.cri_proxy_socket_group {
            None => None,
            Some(_) if args.cri_proxy_socket.is_none() => {
                return Err(err("cri-proxy-socket-group", "needs --cri-proxy-socket"));
            }
            Some(g) if g.trim().parse::<u32>() == Ok(u32::MAX) => {
                return Err(err(
                    "cri-proxy-socket-group",
                    "4294967295 is not a group (chown reads it as \"leave the group unchanged\")",
                ));
            }
            Some(g) => {
                let etc_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                Some(super::socket::resolve_group(g, &etc_group).ok_or_else(|| {
                    err(
                        "cri-proxy-socket-group",
                        format!("no group {g:?} in /etc/group; give a group name or a numeric GID"),
                    )
                })?)
            }
        };
        let limit = open_files_limit();
        let max_connections = match (args.cri_proxy_max_connections, limit) {
            (Some(n), Some(limit)) if 2 * n as u64 + RESERVED_FDS > limit => {
                return Err(err(
                    "cri-proxy-max-connections",
                    format!(
                        "{n} connections need {} file descriptors with the {RESERVED_FDS} kept for the rest, over this process's limit of {limit} (raise LimitNOFILE / ulimit -n, or lower the cap)",
                        2 * n as u64 + RESERVED_FDS
                    ),
                ));
            }
            (Some(n), _) => n,
            (None, Some(limit)) => {
                let room =
                    usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
                DEFAULT_MAX_CONNECTIONS.min(room).max(2)
            }
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        };
        match &args.cri_proxy_socket {
            Some(p) if p.as_os_str().is_empty() => {
                Err(err("cri-proxy-socket", "must not be empty"))
            }
            Some(p) if p == runtime_socket => Err(err(
                "cri-proxy-socket",
                "must differ from --runtime-socket (it would forward to itself)",
            )),
            Some(p) => Ok(Some(Self {
                listen_socket: p.clone(),
                socket_mode: args.cri_proxy_socket_mode,
                socket_group,
                runtime_socket: runtime_socket.to_path_buf(),
                connect_timeout: args.connect_timeout,
                shutdown_grace: args.shutdown_grace,
                max_connections,
            })),
            None => Ok(None),
        }
    }
}
