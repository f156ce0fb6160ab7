//! Runs the real `pullwatch run` binary as a process and talks to it over HTTP.

use super::sandbox::{Sandbox, free_port};
use super::wait;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The pullwatch binary: `PULLWATCH_TEST_BIN` if set (to show a test fails with an earlier
/// build), else Cargo's path for tests; for examples (which Cargo gives none), the `pullwatch`
/// next to the `examples/` directory the running example lives in.
pub fn pullwatch_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PULLWATCH_TEST_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_pullwatch") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("pullwatch"));
    match bin {
        Some(b) if b.exists() => b,
        _ => panic!(
            "pullwatch binary not found next to {}; run `cargo build --bins` first",
            exe.display()
        ),
    }
}

pub struct Agent {
    child: Option<Child>,
    pub proxy_sock: PathBuf,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    /// The command line it runs (binary and arguments), to show or repeat.
    pub command_line: Vec<String>,
}

/// GET `path` on `addr`; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

impl Agent {
    /// Starts `pullwatch run` with the interposer in front of the sandbox's containerd.
    pub fn start(sb: &Sandbox, extra: &[&str]) -> Self {
        let proxy_sock = sb
            .dir
            .path()
            .join(format!("pullwatch-{}.sock", free_port()));
        Self::start_at(sb, proxy_sock, extra)
    }

    /// Starts `pullwatch run` without the interposer (passive mode); `extra` names the sources.
    pub fn start_passive(sb: &Sandbox, extra: &[&str]) -> Self {
        Self::spawn(sb, None, extra)
    }

    pub fn start_at(sb: &Sandbox, proxy_sock: PathBuf, extra: &[&str]) -> Self {
        Self::spawn(sb, Some(proxy_sock), extra)
    }

    fn spawn(sb: &Sandbox, proxy_sock: Option<PathBuf>, extra: &[&str]) -> Self {
        Self::spawn_in(sb.dir.path(), &sb.containerd_sock, proxy_sock, extra)
    }

    /// Starts `pullwatch run` with only the sources `extra` names (no runtime needed: CRI status
    /// polling is off); logs go to `dir`.
    pub fn start_bare(dir: &std::path::Path, extra: &[&str]) -> Self {
        let mut args = vec!["--runtime-status-interval", "0s"];
        args.extend_from_slice(extra);
        Self::spawn_in(dir, &dir.join("no-runtime.sock"), None, &args)
    }

    /// An agent without the sandbox whose interposer (at `dir/proxy.sock`) forwards to
    /// `runtime_sock`, any HTTP/2 server; no other source polls it.
    pub fn start_proxy_to(
        dir: &std::path::Path,
        runtime_sock: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let mut args = vec!["--runtime-status-interval", "0s"];
        args.extend_from_slice(extra);
        Self::spawn_in(dir, runtime_sock, Some(dir.join("proxy.sock")), &args)
    }

    /// Starts `pullwatch run` relaying `proxy_sock` (if any) to `runtime_sock`, logs in `dir`.
    pub fn spawn_with(
        dir: &std::path::Path,
        runtime_sock: &std::path::Path,
        proxy_sock: Option<PathBuf>,
        extra: &[&str],
    ) -> Self {
        Self::spawn_in(dir, runtime_sock, proxy_sock, extra)
    }

    fn spawn_in(
        dir: &std::path::Path,
        runtime_sock: &std::path::Path,
        proxy_sock: Option<PathBuf>,
        extra: &[&str],
    ) -> Self {
        Self::spawn_bin(&pullwatch_bin(), dir, runtime_sock, proxy_sock, extra)
    }

    /// Like [`Agent::start_passive`], with another binary (a wrapper that limits pullwatch).
    pub fn spawn_bin_passive(sb: &Sandbox, bin: &std::path::Path, extra: &[&str]) -> Self {
        Self::spawn_bin(bin, sb.dir.path(), &sb.containerd_sock, None, extra)
    }

    /// Like [`Agent::start`], with another pullwatch binary (the benchmark compares builds).
    pub fn start_bin(sb: &Sandbox, bin: &std::path::Path, extra: &[&str]) -> Self {
        let proxy_sock = sb
            .dir
            .path()
            .join(format!("pullwatch-{}.sock", free_port()));
        Self::spawn_bin(
            bin,
            sb.dir.path(),
            &sb.containerd_sock,
            Some(proxy_sock),
            extra,
        )
    }

    fn spawn_bin(
        bin: &std::path::Path,
        dir: &std::path::Path,
        runtime_sock: &std::path::Path,
        proxy_sock: Option<PathBuf>,
        extra: &[&str],
    ) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log_path = dir.join(format!("pullwatch-{}.log", addr.port()));
        let mut cmd = Command::new(bin);
        cmd.arg("run");
        if let Some(p) = &proxy_sock {
            cmd.arg("--cri-proxy-socket").arg(p);
        }
        cmd.arg("--runtime-socket")
            .arg(runtime_sock)
            .arg("--listen")
            .arg(addr.to_string())
            .args(if extra.contains(&"--log-format") {
                &[][..]
            } else {
                &["--log-format", "json"][..]
            })
            // Trace by default (the credential test reads everything); callers may lower it.
            .args(if extra.contains(&"--log-level") {
                &[][..]
            } else {
                &["--log-level", "trace"][..]
            })
            .args(extra);
        let command_line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let agent = Self {
            child: Some(child),
            proxy_sock: proxy_sock.unwrap_or_default(),
            addr,
            log_path,
            command_line,
        };
        // Behind TLS the plain-HTTP probe cannot work: wait for the log line instead.
        let tls = extra.contains(&"--web.config.file");
        wait::until(
            Duration::from_secs(20),
            Duration::from_millis(30),
            || {
                if tls {
                    agent.logs().contains("serving /metrics")
                } else {
                    matches!(http_get(addr, "/readyz"), Ok((200, _)))
                }
            },
            || format!("pullwatch not ready: {}", agent.logs()),
        );
        agent
    }

    /// Process id of the agent.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn scrape(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").expect("scrape");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Scrapes until `ready(metrics)` holds (events such as a caller's reset reach pullwatch
    /// asynchronously), or panics after 10 s with the last scrape. The scrape returned is one
    /// taken 100 ms after the condition first held (and still holding): an attempt updates
    /// several families one after the other, and a render can fall between two of them, so the
    /// values a test asserts beside the one it waited for are read once they have settled.
    pub fn scrape_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        self.scrape_until_within(Duration::from_secs(10), what, ready)
    }

    /// [`Agent::scrape_until`] with a limit other than 10 s.
    pub fn scrape_until_within(
        &self,
        limit: Duration,
        what: &str,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let last = std::cell::RefCell::new(String::new());
        wait::until(
            limit,
            Duration::from_millis(50),
            || {
                *last.borrow_mut() = self.scrape();
                if !ready(&last.borrow()) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
                *last.borrow_mut() = self.scrape();
                ready(&last.borrow())
            },
            || format!("timed out waiting for {what}:\n{}", last.borrow()),
        );
        last.into_inner()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Pull events from the JSON log.
    pub fn pull_events(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "pullwatch::pull")
            .collect()
    }

    /// The metrics, if the agent still runs (else `None`).
    pub fn scrape_if_running(&self) -> Option<String> {
        self.child.as_ref()?;
        http_get(self.addr, "/metrics").ok().map(|(_, b)| b)
    }

    /// Sends SIGTERM and waits for exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let mut status = None;
        wait::until(
            Duration::from_secs(20),
            Duration::from_millis(20),
            || {
                status = child.try_wait().unwrap();
                status.is_some()
            },
            || "pullwatch ignored SIGTERM".into(),
        );
        status.expect("exited")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One parsed sample line of the text format.
pub type Series = (String, BTreeMap<String, String>, f64);

pub fn parse_metrics(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((name.to_string(), labels, value))
        })
        .collect()
}

/// Sum of samples of `name` whose labels include all of `want`.
pub fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    parse_metrics(text)
        .into_iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}
