//! Real Prometheus and Alertmanager processes for the tests, on loopback, plus a webhook receiver.

use super::agent::http_get;
use super::sandbox::{free_port, require};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running server process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(addr: SocketAddr, what: &str, log: &Path) {
    super::wait::until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || matches!(http_get(addr, "/-/ready"), Ok((200, _))),
        || {
            format!(
                "{what} not ready: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        },
    );
}

/// Spawns `bin` with `args` (logging to `dir/<name>.log`) and waits until it answers `/-/ready`.
fn spawn_ready(dir: &Path, bin: &str, args: Vec<String>) -> Server {
    require(bin);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.join(format!("{bin}.log"));
    let child = Command::new(bin)
        .args(args)
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let s = Server { child, addr };
    wait_ready(addr, bin, &log);
    s
}

/// Starts Prometheus scraping `target` every second; `extra` is appended to the config
/// (rule_files, alerting).
pub fn start_prometheus(dir: &Path, target: SocketAddr, extra: &str) -> Server {
    // The `node` label, as the shipped scrape configs set it.
    let job = format!(
        "  - job_name: pullwatch\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          node: node-a\n"
    );
    start_prometheus_with_jobs(dir, &job, extra)
}

/// Starts Prometheus with the given `scrape_configs` entries (YAML list items, indented by two),
/// scraping every second; `extra` is appended to the config.
pub fn start_prometheus_with_jobs(dir: &Path, jobs: &str, extra: &str) -> Server {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}{extra}"
        ),
    )
    .unwrap();
    let args = vec![
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
    ];
    spawn_ready(dir, "prometheus", args)
}

/// Starts Alertmanager with `config` (YAML), clustering off.
pub fn start_alertmanager(dir: &Path, config: &str) -> Server {
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(&cfg, config).unwrap();
    let args = vec![
        format!("--config.file={}", cfg.display()),
        format!("--storage.path={}", dir.join("am").display()),
        "--cluster.listen-address=".to_string(),
    ];
    spawn_ready(dir, "prometheus-alertmanager", args)
}

/// Runs a PromQL instant query; returns the API's `data.result` array (panics on API errors).
pub fn query(prom: SocketAddr, q: &str) -> Vec<Value> {
    let path = format!(
        "/api/v1/query?query={}",
        utf8_percent_encode(q, NON_ALPHANUMERIC)
    );
    let (status, body) = http_get(prom, &path).unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{q}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// Collects the JSON bodies POSTed to it (Alertmanager's webhook receiver).
#[derive(Clone)]
pub struct Webhook {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hook = Self {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
        };
        let received = hook.received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut len = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    received.lock().unwrap().push(v);
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        hook
    }
}

/// `(alert name, expression)` of every alerting rule in a rules file (via PyYAML).
pub fn rule_exprs(rules_yaml: &str) -> Vec<(String, String)> {
    let script = "import sys,yaml,json; d=yaml.safe_load(sys.stdin); print(json.dumps([[r['alert'], r['expr']] for g in d['groups'] for r in g['rules'] if 'alert' in r]))";
    let mut child = Command::new(super::tool("python3"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules_yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}
