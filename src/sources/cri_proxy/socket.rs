//! Creating the interposer's listening unix socket safely: one pullwatch per socket path (an
//! exclusive lock on `PATH.lock`, taken before anything else and held while it runs),
//! restrictive permissions from the first moment (bind under a temporary name that fits
//! `sun_path`, chmod, rename into place), stale sockets replaced, live sockets and non-socket
//! files refused, and removal on shutdown only if the file is still ours.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Why the socket could not be created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketError {
    /// Another process is accepting connections on the path.
    #[error("{path}: another process is already listening on this socket{busy}")]
    InUse {
        /// Socket path.
        path: PathBuf,
        /// `" (its backlog is full)"` when it did not take the test connection.
        busy: &'static str,
    },
    /// Another pullwatch holds the socket's lock (it is starting or running on this path).
    #[error("{path}: another pullwatch holds {lock} (one instance per socket)")]
    Locked {
        /// Socket path.
        path: PathBuf,
        /// Lock file.
        lock: PathBuf,
    },
    /// The path does not fit a unix socket address.
    #[error("{path}: {len} bytes; a unix socket path has at most {max}")]
    TooLong {
        /// Socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path exists and is not a socket; pullwatch will not delete it.
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// Offending path.
        path: PathBuf,
    },
    /// An I/O step failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// A bound listening socket that removes its file when dropped (if the file is still the one it
/// created).
#[derive(Debug)]
pub(crate) struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
    ino: u64,
    /// Holds the exclusive lock on `PATH.lock` while the socket lives (released on drop, after
    /// the socket file is removed). The lock file itself stays: removing it would race a
    /// starting instance.
    _lock: fs::File,
}

/// Longest unix socket path (`sun_path` is 108 bytes with the terminating NUL).
pub(crate) const MAX_PATH_LEN: usize = 107;

/// The lock file of the socket at `path`.
fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// A temporary name for binding next to `path` that fits `sun_path`: `PATH.tmp-PID`, else the
/// shorter `DIR/.PID` (hex); `None` when even that does not fit.
fn temporary_name(path: &Path) -> Option<PathBuf> {
    let pid = std::process::id();
    let mut long = path.as_os_str().to_owned();
    long.push(format!(".tmp-{pid}"));
    let short = path.parent().map(|d| d.join(format!(".{pid:x}")));
    [Some(PathBuf::from(long)), short]
        .into_iter()
        .flatten()
        .find(|p| p.as_os_str().len() <= MAX_PATH_LEN)
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino)
            && let Err(e) = fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove socket");
        }
    }
}

/// Resolves a socket group given as a numeric GID or as a group name listed in `etc_group` (the
/// text of `/etc/group`; groups known only to NSS/LDAP must be given by number).
pub(crate) fn resolve_group(value: &str, etc_group: &str) -> Option<u32> {
    if let Ok(gid) = value.parse::<u32>() {
        return Some(gid);
    }
    etc_group
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .find(|(name, _)| !name.is_empty() && *name == value)
        .map(|(_, gid)| gid)
}

/// Whether a process accepts connections on the socket at `path`: `Some("")` if a connect
/// succeeds, `Some(" (its backlog is full)")` if the socket is live but takes no more
/// connections now. The connect never blocks (a full backlog would block a plain connect
/// forever): a stale socket refuses at once.
fn live(path: &Path) -> Option<&'static str> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).ok()?;
    socket.set_nonblocking(true).ok()?;
    let addr = socket2::SockAddr::unix(path).ok()?;
    match socket.connect(&addr) {
        Ok(()) => Some(""),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(" (its backlog is full)"),
        Err(e) if e.raw_os_error() == Some(115) => Some(""), // EINPROGRESS
        Err(_) => None,
    }
}

/// Binds a unix socket at `path` with permission bits `mode` (e.g. `0o660`) and, if given, owned
/// by group `group`; both are set before the socket appears at `path`.
pub(crate) fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<BoundSocket, SocketError> {
    let len = path.as_os_str().len();
    if len > MAX_PATH_LEN {
        return Err(SocketError::TooLong {
            path: path.to_path_buf(),
            len,
            max: MAX_PATH_LEN,
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent, "create directory"))?;
    }
    // First the lock: two instances started at once would otherwise both find no live socket,
    // both bind, and one would orphan the other's socket.
    let lock = lock_path(path);
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io_err(&lock, "open lock file"))?;
    match lock_file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(SocketError::Locked {
                path: path.to_path_buf(),
                lock,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock, "lock")(e)),
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if let Some(busy) = live(path) {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                    busy,
                });
            }
            tracing::info!(path = %path.display(), "removing stale socket");
            fs::remove_file(path).map_err(io_err(path, "remove stale socket"))?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "inspect")(e)),
    }
    // Under the lock, with our pid in it: no other process uses this temporary name.
    let tmp = temporary_name(path).ok_or_else(|| SocketError::TooLong {
        path: path.to_path_buf(),
        len,
        max: MAX_PATH_LEN,
    })?;
    let _ = fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io_err(&tmp, "bind"))?;
    let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp, "set permissions"))
        .and_then(|()| match group {
            Some(gid) => {
                std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(io_err(&tmp, "set group"))
            }
            None => Ok(()),
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path, "move into place")));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let ino = fs::symlink_metadata(path)
        .map_err(io_err(path, "inspect"))?
        .ino();
    Ok(BoundSocket {
        listener,
        path: path.to_path_buf(),
        ino,
        _lock: lock_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_with_mode_replaces_stale_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/proxy.sock");
        // A stale socket file: its listener is gone, the file stayed.
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        // The group: one this process may give files to (its own primary group).
        let gid = fs::metadata(dir.path()).unwrap().gid();
        let s = bind(&path, 0o600, Some(gid)).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.gid(), gid);
        // Another pullwatch on it: its lock refuses us.
        assert!(matches!(
            bind(&path, 0o600, None),
            Err(SocketError::Locked { .. })
        ));
        drop(s);
        assert!(!path.exists(), "socket removed on drop");
        // A live socket of another program (no lock) is refused too.
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            bind(&path, 0o600, None),
            Err(SocketError::InUse { .. })
        ));
        drop(other);
        // A live socket whose backlog is full: refused at once, never a hanging connect.
        fs::remove_file(&path).unwrap();
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        while let Ok(c) = {
            let s =
                socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            s.connect(&socket2::SockAddr::unix(&path).unwrap())
                .map(|()| s)
        } {
            held.push(c);
            assert!(held.len() < 100_000, "the backlog never filled");
        }
        let started = std::time::Instant::now();
        let e = bind(&path, 0o600, None).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(e.to_string().contains("its backlog is full"), "{e}");
        drop((other, held));
    }

    #[tokio::test]
    async fn paths_up_to_the_sun_path_limit_bind() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().as_os_str().len();
        for len in [100, 104, MAX_PATH_LEN] {
            let name = "s".repeat(len - base - 1);
            let path = dir.path().join(&name);
            assert_eq!(path.as_os_str().len(), len);
            let s = bind(&path, 0o600, None).unwrap_or_else(|e| panic!("{len}: {e}"));
            let mode = fs::symlink_metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{len}");
            drop(s);
        }
        let too_long = dir.path().join("s".repeat(MAX_PATH_LEN + 1 - base));
        assert!(matches!(
            bind(&too_long, 0o600, None),
            Err(SocketError::TooLong { .. })
        ));
    }

    #[test]
    fn one_of_many_simultaneous_binds_wins_the_rest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.sock");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let results: Vec<Result<BoundSocket, SocketError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    s.spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        let _guard = rt.enter();
                        barrier.wait();
                        let r = bind(&path, 0o600, None);
                        // Keep the runtime's I/O driver alive with the listener: leak it.
                        std::mem::forget(rt);
                        r
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            won,
            1,
            "{:?}",
            results
                .iter()
                .map(|r| r.as_ref().err().map(ToString::to_string))
                .collect::<Vec<_>>()
        );
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, SocketError::Locked { .. } | SocketError::InUse { .. }),
                    "{e}"
                );
            }
        }
        drop(results);
        // The winner is gone: the path binds again (its lock was released with it).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(bind(&path, 0o600, None).is_ok());
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("important");
        fs::write(&path, "data").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(async { bind(&path, 0o600, None) }).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "data");
    }

    #[test]
    fn groups_resolve_by_number_or_etc_group_name() {
        let etc_group =
            "root:x:0:\n# comment\nbroken\ncri:x:997:kubelet\n:x:5:\nodd:x:notanumber:\n";
        assert_eq!(resolve_group("cri", etc_group), Some(997));
        assert_eq!(resolve_group("root", etc_group), Some(0));
        assert_eq!(resolve_group("1234", etc_group), Some(1234));
        assert_eq!(resolve_group("missing", etc_group), None);
        assert_eq!(resolve_group("odd", etc_group), None);
        assert_eq!(resolve_group("", etc_group), None);
    }
}
