//! Creating the interposer's listening unix socket safely: restrictive permissions from the first
//! moment (bind under a temporary name, chmod, rename into place), stale sockets replaced, live
//! sockets and non-socket files refused, and removal on shutdown only if the file is still ours.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Why the socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process is accepting connections on the path.
    #[error("{path}: another process is already listening on this socket")]
    InUse {
        /// Socket path.
        path: PathBuf,
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
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl BoundSocket {
    /// Path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }
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
pub fn resolve_group(value: &str, etc_group: &str) -> Option<u32> {
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

/// Binds a unix socket at `path` with permission bits `mode` (e.g. `0o660`) and, if given, owned
/// by group `group`; both are set before the socket appears at `path`.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<BoundSocket, SocketError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
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
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent, "create directory"))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
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
        // A live socket is refused.
        assert!(matches!(
            bind(&path, 0o600, None),
            Err(SocketError::InUse { .. })
        ));
        drop(s);
        assert!(!path.exists(), "socket removed on drop");
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
