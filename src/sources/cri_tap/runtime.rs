//! Finding the runtime behind the CRI socket and the connections already open on it, through
//! /proc: its process (the peer of a connection to the socket, `SO_PEERCRED`), its listening
//! socket for that path and the connections accepted on it (the descriptors in
//! `/proc/<pid>/fd` whose socket inode `/proc/<pid>/net/unix` lists with the listener's path).
//! The path is compared as the runtime sees it (`/proc/<pid>/root/<path>`), by device and
//! inode, so `/var/run` versus `/run`, or a socket mounted elsewhere into pullwatch's
//! container, still match. Reading another process's descriptors takes `CAP_SYS_PTRACE` when
//! pullwatch holds fewer capabilities than the runtime (the DaemonSet grants it).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the runtime could not be found: one line naming what was tried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FindError {
    /// The process behind the CRI socket could not be found.
    #[error(transparent)]
    Peer(#[from] crate::sources::peer::PeerError),
    /// /proc could not be read.
    #[error(
        "reading {what}: {source} (the tap needs CAP_SYS_PTRACE to read the runtime's descriptors)"
    )]
    Proc {
        /// What was read.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime has no listening socket at that path.
    #[error("process {pid} has no listening socket at {path}")]
    NoListener {
        /// The runtime.
        pid: u32,
        /// The socket.
        path: PathBuf,
    },
}

/// The runtime and its CRI socket's descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Runtime {
    /// Its process.
    pub pid: u32,
    /// Descriptors of its listening sockets at the CRI path.
    pub listeners: Vec<u32>,
    /// Descriptors of the connections accepted on them, open now.
    pub connections: Vec<u32>,
    /// The listening socket's inode (to notice a new listener, a restarted runtime).
    pub listener_inode: u64,
}

/// One line of `/proc/<pid>/net/unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnixSocket {
    listening: bool,
    connected: bool,
    path: Option<String>,
}

/// Parses `/proc/<pid>/net/unix`: inode → socket.
fn parse_net_unix(text: &str) -> HashMap<u64, UnixSocket> {
    const ACCEPTCON: u32 = 0x0001_0000;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _num = f.next()?;
            let _refs = f.next()?;
            let _proto = f.next()?;
            let flags = u32::from_str_radix(f.next()?, 16).ok()?;
            let _kind = f.next()?;
            let state = f.next()?;
            let inode = f.next()?.parse().ok()?;
            let path = f.next().map(str::to_string);
            Some((
                inode,
                UnixSocket {
                    listening: flags & ACCEPTCON != 0,
                    connected: state == "03",
                    path,
                },
            ))
        })
        .collect()
}

/// The socket inode a `/proc/<pid>/fd/<n>` link names (`socket:[123]`).
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn proc_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FindError {
    let what = what.into();
    move |source| FindError::Proc { what, source }
}

/// The process at the other end of a connection to `socket`.
pub(super) async fn peer_of(socket: &Path) -> Result<u32, FindError> {
    Ok(crate::sources::peer::peer_of(socket).await?)
}

/// The descriptors of process `pid` at `socket` (as pullwatch sees the path), read from
/// `proc` (`/proc`).
pub(super) fn descriptors(proc: &Path, pid: u32, socket: &Path) -> Result<Runtime, FindError> {
    let want = std::fs::metadata(socket)
        .map(|m| (m.dev(), m.ino()))
        .map_err(proc_err(socket.display().to_string()))?;
    let base = proc.join(pid.to_string());
    let net = base.join("net/unix");
    let sockets = parse_net_unix(
        &std::fs::read_to_string(&net).map_err(proc_err(net.display().to_string()))?,
    );
    // The paths, as the runtime sees them, that are our socket.
    let mut ours: HashSet<&str> = HashSet::new();
    for s in sockets.values().filter(|s| s.listening) {
        let Some(path) = s.path.as_deref().filter(|p| p.starts_with('/')) else {
            continue;
        };
        let seen = base.join("root").join(path.trim_start_matches('/'));
        if std::fs::metadata(&seen).is_ok_and(|m| (m.dev(), m.ino()) == want) {
            ours.insert(path);
        }
    }
    let fds = base.join("fd");
    let entries = std::fs::read_dir(&fds).map_err(proc_err(fds.display().to_string()))?;
    let mut runtime = Runtime {
        pid,
        listeners: Vec::new(),
        connections: Vec::new(),
        listener_inode: 0,
    };
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(inode) = std::fs::read_link(entry.path())
            .ok()
            .and_then(|l| socket_inode(&l))
        else {
            continue;
        };
        let Some(s) = sockets.get(&inode) else {
            continue;
        };
        if !s.path.as_deref().is_some_and(|p| ours.contains(p)) {
            continue;
        }
        if s.listening {
            runtime.listeners.push(fd);
            runtime.listener_inode = inode;
        } else if s.connected {
            runtime.connections.push(fd);
        }
    }
    if runtime.listeners.is_empty() {
        return Err(FindError::NoListener {
            pid,
            path: socket.to_path_buf(),
        });
    }
    runtime.listeners.sort_unstable();
    runtime.connections.sort_unstable();
    Ok(runtime)
}

/// Whether the runtime still listens with the same socket (same process, same inode at the
/// first listener's descriptor).
pub(super) fn unchanged(proc: &Path, runtime: &Runtime) -> bool {
    let Some(fd) = runtime.listeners.first() else {
        return false;
    };
    let link = proc.join(format!("{}/fd/{fd}", runtime.pid));
    std::fs::read_link(link).ok().and_then(|l| socket_inode(&l)) == Some(runtime.listener_inode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_unix_lines_parse() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            00000000e8f30b8f: 00000002 00000000 00010000 0001 01 88104 /run/containerd/containerd.sock\n\
            00000000de3138ce: 00000003 00000000 00000000 0001 03 88106 /run/containerd/containerd.sock\n\
            00000000e0742bc8: 00000003 00000000 00000000 0001 03 88105\n\
            garbage\n";
        let s = parse_net_unix(text);
        assert_eq!(s.len(), 3);
        assert!(s[&88104].listening && !s[&88104].connected);
        assert!(s[&88106].connected && !s[&88106].listening);
        assert_eq!(s[&88105].path, None);
        assert_eq!(socket_inode(Path::new("socket:[42]")), Some(42));
        assert_eq!(socket_inode(Path::new("pipe:[42]")), None);
    }

    #[tokio::test]
    async fn finds_this_process_listener_and_its_accepted_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cri.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        use std::os::fd::AsRawFd;
        let me = std::process::id();
        assert_eq!(peer_of(&path).await.unwrap(), me);
        let r = descriptors(Path::new("/proc"), me, &path).unwrap();
        assert_eq!(r.listeners, vec![listener.as_raw_fd() as u32]);
        assert!(r.connections.contains(&(accepted.as_raw_fd() as u32)));
        // The client's side has no path: it is not one of the runtime's connections.
        assert!(!r.connections.contains(&(client.as_raw_fd() as u32)));
        assert!(unchanged(Path::new("/proc"), &r));
        // Another socket is not it.
        let other = dir.path().join("other.sock");
        let _o = std::os::unix::net::UnixListener::bind(&other).unwrap();
        let e = descriptors(Path::new("/proc"), 1, &dir.path().join("none.sock"));
        assert!(e.is_err());
    }
}
