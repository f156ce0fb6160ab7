//! Refusing to relay to ourselves: the listening socket and the runtime socket must not be the
//! same file by any path (`..`, symlinked directories, `/var/run` vs `/run`, bind mounts). Files
//! are compared by device and inode; a runtime socket that does not exist yet is compared by
//! its directory's device and inode plus its name.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The two paths name the same socket.
#[derive(Debug, thiserror::Error)]
#[error(
    "--runtime-socket {runtime} is the interposer's own socket {listen} (same file by another path): pullwatch would relay to itself"
)]
pub(crate) struct SelfLoop {
    /// The runtime socket as given.
    pub runtime: PathBuf,
    /// The listening socket as given.
    pub listen: PathBuf,
}

/// (device, inode) of what `path` names, following symlinks.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The file's directory identity and name: where a file that does not exist yet would be.
fn place(path: &Path) -> Option<((u64, u64), &std::ffi::OsStr)> {
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some((identity(parent)?, name))
}

/// Checks the bound listening socket `listen` against `runtime`.
pub(crate) fn check(listen: &Path, runtime: &Path) -> Result<(), SelfLoop> {
    let same = match (identity(runtime), identity(listen)) {
        (Some(r), Some(l)) => r == l,
        // The runtime socket does not exist (yet): it would be ours if it is our name in our
        // directory. A symlink at the runtime path pointing nowhere is followed by `place` of its
        // own directory only, so resolve it first.
        _ => {
            let runtime = std::fs::read_link(runtime)
                .map(|t| match runtime.parent() {
                    Some(dir) if t.is_relative() => dir.join(t),
                    _ => t,
                })
                .unwrap_or_else(|_| runtime.to_path_buf());
            matches!((place(&runtime), place(listen)), (Some(r), Some(l)) if r == l)
        }
    };
    if same {
        return Err(SelfLoop {
            runtime: runtime.to_path_buf(),
            listen: listen.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_socket_by_other_paths_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("run/sub")).unwrap();
        std::os::unix::fs::symlink(d.join("run"), d.join("var-run")).unwrap();
        let listen = d.join("run/pw.sock");
        // Before the runtime socket exists, by directory and name.
        let _l = std::os::unix::net::UnixListener::bind(&listen).unwrap();
        for runtime in [
            listen.clone(),
            d.join("run/sub/../pw.sock"),
            d.join("var-run/pw.sock"),
        ] {
            assert!(check(&listen, &runtime).is_err(), "{}", runtime.display());
        }
        // A symlink to our socket.
        std::os::unix::fs::symlink(&listen, d.join("link.sock")).unwrap();
        assert!(check(&listen, &d.join("link.sock")).is_err());
        // Other sockets, existing or not, are fine.
        let other = d.join("run/containerd.sock");
        assert!(check(&listen, &other).is_ok());
        let _o = std::os::unix::net::UnixListener::bind(&other).unwrap();
        assert!(check(&listen, &other).is_ok());
        assert!(check(&listen, &d.join("absent/dir/x.sock")).is_ok());
    }
}
