//! `scripts/install-deps.sh` on a host that runs its own services: it installs what is missing
//! without starting what the packages ship, never stops, restarts or disables a service, and
//! keeps its Python tools in a venv. Run against stand-ins for apt, dpkg, systemctl and Python
//! (installing packages for real is not what a test may do to a host).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Writes an executable stand-in `name` into `bin` that logs its arguments to `log`.
fn stand_in(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"{name} $*\" >> \"$LOG\"\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs install-deps with the stand-ins first on PATH; returns (success, log).
fn install_deps(dir: &Path, policy: &Path) -> (bool, String) {
    let bin = dir.join("bin");
    let log = dir.join("log");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let status = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-deps.sh"
        ))
        .env("PATH", path)
        .env("LOG", &log)
        .env("POLICY", policy)
        .env("PULLWATCH_POLICY_RC_D", policy)
        .env("PULLWATCH_VENV", dir.join("venv"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn install_deps_installs_without_starting_or_stopping_services() {
    if !nix_root() {
        eprintln!("skipped: install-deps needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Two packages missing; everything else installed.
    stand_in(
        &bin,
        "dpkg-query",
        r#"case "$*" in *" containerd"|*" skopeo") exit 1;; esac; echo "install ok installed""#,
    );
    // apt-get: while it installs, the policy must refuse every service start (exit 101).
    stand_in(
        &bin,
        "apt-get",
        r#"case "$1" in install) if [ -x "$POLICY" ]; then "$POLICY" containerd start; echo "policy says $?" >> "$LOG"; else echo "no policy" >> "$LOG"; fi;; esac"#,
    );
    for never in ["systemctl", "service", "invoke-rc.d", "deb-systemd-invoke"] {
        stand_in(&bin, never, "exit 0");
    }
    stand_in(&bin, "kubectl", "exit 0");
    // python3 -m venv DIR makes DIR/bin/python3, which has no grpc yet (its pip installs it).
    stand_in(
        &bin,
        "python3",
        r#"if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  d="$4"; mkdir -p "$d/bin"
  printf '#!/bin/sh\necho "venv-python $*" >> "$LOG"\n[ "$1" = "-m" ]\n' > "$d/bin/python3"
  chmod 755 "$d/bin/python3"
fi"#,
    );
    // A service of the host, running: it must still run afterwards.
    let mut service = Command::new("sleep").arg("300").spawn().unwrap();
    let policy = dir.path().join("policy-rc.d");
    let (ok, log) = install_deps(dir.path(), &policy);
    assert!(ok, "{log}");
    assert!(
        log.contains("apt-get install -y --no-install-recommends containerd skopeo"),
        "{log}"
    );
    assert!(
        log.contains("policy says 101"),
        "no policy during the install: {log}"
    );
    assert!(!policy.exists(), "the temporary policy was left behind");
    for never in ["systemctl", "service ", "invoke-rc.d", "deb-systemd-invoke"] {
        assert!(!log.contains(never), "{never} was called: {log}");
    }
    assert!(
        service.try_wait().unwrap().is_none(),
        "the host's service stopped"
    );
    // Python tools: into the venv, never into the system's Python.
    assert!(
        log.contains("python3 -m venv --system-site-packages"),
        "{log}"
    );
    assert!(
        log.contains("venv-python -m pip install --quiet kubernetes-validate grpcio"),
        "{log}"
    );
    assert!(!log.contains("break-system-packages"), "{log}");
    // A host with its own policy-rc.d keeps it, as it was.
    std::fs::write(&policy, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, log) = install_deps(dir.path(), &policy);
    assert!(ok, "{log}");
    assert_eq!(
        std::fs::read_to_string(&policy).unwrap(),
        "#!/bin/sh\nexit 0\n"
    );
    service.kill().unwrap();
    let _ = service.wait();
}

fn nix_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
