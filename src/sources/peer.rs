//! The process behind a Unix socket: the peer of a connection to it (`SO_PEERCRED`), seen in
//! pullwatch's PID namespace. The kernel tap finds the runtime this way, and the endpoint
//! witness finds containerd.

use std::path::{Path, PathBuf};

/// Why the process behind a socket could not be found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    /// The socket does not answer.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket's peer has no process in pullwatch's PID namespace (run with hostPID).
    #[error(
        "{path}: the runtime's process is not visible (pullwatch needs the host's PID namespace: hostPID)"
    )]
    NoPeer {
        /// The socket.
        path: PathBuf,
    },
}

/// The process at the other end of a connection to `socket`.
pub(crate) async fn peer_of(socket: &Path) -> Result<u32, PeerError> {
    let connect = tokio::net::UnixStream::connect(socket);
    let stream = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        .map_err(|source| PeerError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    match pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0) {
        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => Ok(pid),
        _ => Err(PeerError::NoPeer {
            path: socket.to_path_buf(),
        }),
    }
}
