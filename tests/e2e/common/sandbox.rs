//! A sandboxed container runtime on this machine: real containerd (CRI plugin) and a real
//! docker-registry, each with its own temp dir, socket and port, plus our fault registry and a
//! loopback DNS server that answers NXDOMAIN (containerd runs in a private mount namespace whose
//! /etc/resolv.conf points at it, so no lookup leaves the machine).

use super::fault_registry::FaultRegistry;
use super::image::TestImage;
use super::wait;
use pullwatch::cri::VersionRequest;
use pullwatch::cri::client::CriClient;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Layer size of the throttled image (`slow/` prefix) and the fault registry's trickle rate.
pub const SLOW_LAYER_BYTES: usize = 96 * 1024;
pub const SLOW_BYTES_PER_SEC: usize = 48 * 1024;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn require(bin: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{bin} is not installed: run .ci/run (it installs containerd, docker-registry, skopeo, prometheus)"
    );
}

/// Answers every DNS query on `addr` with NXDOMAIN, until the process ends. The address comes
/// from the registry's port, which a later sandbox of the same test process may get again: then
/// the server already there (ours, answering the same) serves it too.
fn nxdomain_server(addr: SocketAddr) {
    let sock = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return,
        Err(e) => panic!("bind DNS {addr}: {e}"),
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut resp = buf[..n].to_vec();
            resp[2] = 0x80 | (buf[2] & 0x01); // QR=1, opcode 0, RD copied
            resp[3] = 0x80 | 0x03; // RA=1, RCODE=3 NXDOMAIN
            resp[6..12].fill(0); // no answers, authority or additional records
            let _ = sock.send_to(&resp, peer);
        }
    });
}

/// Starts docker-registry serving `storage` on `addr`; its config and log go to `dir`
/// (`registry.yml`, `registry.log`).
fn spawn_docker_registry(dir: &Path, storage: &Path, addr: &str) -> Child {
    std::fs::write(
        dir.join("registry.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        ),
    )
    .unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("registry.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .unwrap()
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// `host:port` of the real docker-registry.
    pub registry: String,
    pub fault: FaultRegistry,
    pub containerd_sock: PathBuf,
    containerd: Option<Child>,
    registry_proc: Child,
    /// Held for the sandbox's life: one sandbox at a time, so tests of one module never time
    /// out because another module's load test shares the two cores (the e2e tests are one
    /// binary, run two at a time). Tests without a sandbox still run beside it.
    _serial: tokio::sync::OwnedMutexGuard<()>,
}

/// See `Sandbox::_serial`.
static SERIAL: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

/// The same turn a sandbox takes, for a test that starts a sandbox in another process (the
/// demo).
pub async fn exclusive() -> tokio::sync::OwnedMutexGuard<()> {
    SERIAL.clone().lock_owned().await
}

impl Sandbox {
    pub async fn start() -> Self {
        let serial = SERIAL.clone().lock_owned().await;
        for bin in ["containerd", "docker-registry", "skopeo", "unshare"] {
            require(bin);
        }
        let dir = tempfile::Builder::new()
            .prefix("pullwatch-e2e-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let reg_port = free_port();
        let registry = format!("127.0.0.1:{reg_port}");
        let registry_proc = spawn_docker_registry(d, &d.join("registry"), &registry);
        let fault = FaultRegistry::start(SLOW_BYTES_PER_SEC).await;

        // Registry host configuration: plain HTTP for ours; `localhost:<fault>` deliberately
        // addressed over HTTPS to provoke a TLS error.
        let certs = d.join("certs.d");
        for (host, server) in [
            (registry.clone(), format!("http://{registry}")),
            (fault.host(), format!("http://{}", fault.host())),
            (
                format!("localhost:{}", fault.addr.port()),
                format!("https://localhost:{}", fault.addr.port()),
            ),
        ] {
            std::fs::create_dir_all(certs.join(&host)).unwrap();
            std::fs::write(
                certs.join(&host).join("hosts.toml"),
                format!("server = \"{server}\"\n[host.\"{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
            )
            .unwrap();
        }
        // A DNS server of our own on a random loopback address.
        let dns_ip = Ipv4Addr::new(127, 53, (reg_port >> 8) as u8, (reg_port & 0xff) as u8);
        nxdomain_server(SocketAddr::from((dns_ip, 53)));
        std::fs::write(
            d.join("resolv.conf"),
            format!("nameserver {dns_ip}\noptions attempts:1 timeout:1\n"),
        )
        .unwrap();

        let sock = d.join("containerd.sock");
        std::fs::write(
            d.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "{log_level}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  disable_cgroup = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                opt = d.join("opt").display(),
                sock = sock.display(),
                certs = certs.display(),
                log_level =
                    std::env::var("PULLWATCH_E2E_CONTAINERD_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        )
        .unwrap();
        let mut sb = Self {
            dir,
            registry,
            fault,
            containerd_sock: sock,
            containerd: None,
            registry_proc,
            _serial: serial,
        };
        sb.start_containerd().await;
        sb.wait_registry();
        sb
    }

    fn wait_registry(&self) {
        wait::until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || std::net::TcpStream::connect(&self.registry).is_ok(),
            || {
                format!(
                    "docker-registry did not start: {}",
                    self.log("registry.log")
                )
            },
        );
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Starts containerd (in a private mount namespace with our resolv.conf) and waits for CRI.
    pub async fn start_containerd(&mut self) {
        let d = self.dir.path();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/resolv.conf && exec containerd --config "$2""#)
            .arg("sh")
            .arg(d.join("resolv.conf"))
            .arg(d.join("containerd.toml"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join("containerd.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.containerd = Some(child);
        let sock = self.containerd_sock.clone();
        wait::until_async(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let sock = sock.clone();
                async move {
                    match CriClient::connect(&sock, Duration::from_secs(1)).await {
                        Ok(mut c) => c.runtime.version(VersionRequest::default()).await.is_ok(),
                        Err(_) => false,
                    }
                }
            },
            || format!("containerd did not start: {}", self.log("containerd.log")),
        )
        .await;
    }

    /// Kills containerd and waits for it to exit.
    pub fn stop_containerd(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pushes `image` to the real registry as `repo:tag` with skopeo; returns the reference.
    pub fn push(&self, image: &TestImage, repo: &str, tag: &str) -> String {
        self.push_to(&self.registry, image, repo, tag)
    }

    /// containerd's registry host directory (`registry.config_path`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// containerd's configuration file.
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.path().join("containerd.toml")
    }

    /// Writes `registry`'s `hosts.toml` (containerd reads it at each pull).
    pub fn set_hosts(&self, registry: &str, toml: &str) {
        let dir = self.certs_dir().join(registry);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts.toml"), toml).unwrap();
    }

    /// Starts another docker-registry (storage of its own) on a free loopback port.
    pub fn start_registry(&self, name: &str) -> ExtraRegistry {
        let d = self.dir.path().join(format!("registry-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        let host = format!("127.0.0.1:{}", free_port());
        let proc = spawn_docker_registry(&d, &d.join("data"), &host);
        let r = ExtraRegistry {
            host,
            proc: Some(proc),
        };
        wait::until(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || std::net::TcpStream::connect(&r.host).is_ok(),
            || format!("docker-registry {name} did not start"),
        );
        r
    }

    /// Pushes `image` to `registry` (`host:port`, plain HTTP) as `repo:tag`; returns the
    /// reference.
    pub fn push_to(&self, registry: &str, image: &TestImage, repo: &str, tag: &str) -> String {
        let layout = self
            .dir
            .path()
            .join("layouts")
            .join(registry.replace(':', "_"))
            .join(repo.replace('/', "_"))
            .join(tag);
        image.write_layout(&layout, tag);
        let reference = format!("{registry}/{repo}:{tag}");
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

/// A docker-registry besides the sandbox's own, stopped when dropped.
pub struct ExtraRegistry {
    /// `host:port`.
    pub host: String,
    proc: Option<Child>,
}

impl ExtraRegistry {
    /// Stops it (connections to it are refused from now on).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for ExtraRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_containerd();
        let _ = self.registry_proc.kill();
        let _ = self.registry_proc.wait();
        // containerd's native snapshots may hold read-only dirs; make them removable.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.dir.path())
            .status();
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
