//! `--web.config.file` end to end: the real binary serving /metrics over TLS with basic auth
//! (exporter toolkit format, bcrypt hashes), scraped by real Prometheus; wrong credentials and
//! plain HTTP are refused, probes stay open, nothing secret is logged.

use crate::common::agent::Agent;
use crate::common::prometheus::{query, start_prometheus_with_jobs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "scr4pe-s3cret";

fn run(cmd: &str, args: &[&str], dir: &Path) {
    let o = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// `NAME.key` and `NAME.crt` for `subject`, signed by the test CA, with one X.509 extension line.
fn signed(dir: &Path, name: &str, subject: &str, extension: &str) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    let mut req = vec!["req", "-subj", subject, "-keyout", &key, "-out", &csr];
    req.extend(EC_KEY);
    run("openssl", &req, dir);
    std::fs::write(dir.join(&ext), format!("{extension}\n")).unwrap();
    let sign = [
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ];
    run("openssl", &sign, dir);
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn certs(dir: &Path) {
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=pullwatch test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(EC_KEY);
    run("openssl", &ca, dir);
    signed(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1",
    );
}

/// `curl` status code for `url` (0 when no HTTP answer came).
fn curl(dir: &Path, url: &str, extra: &[&str]) -> u16 {
    let o = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--cacert",
            "ca.crt",
        ])
        .args(extra)
        .arg(url)
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn metrics_over_tls_with_basic_auth_scraped_by_prometheus() {
    crate::common::sandbox::require("openssl");
    crate::common::sandbox::require("curl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    let hash = bcrypt::hash(PASSWORD, 6).unwrap();
    // Relative paths: resolved against the config file's directory.
    std::fs::write(
        d.join("web.yml"),
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .unwrap();
    let web = d.join("web.yml");
    let sock = d.join("pw.sock");
    let agent = Agent::start_bare(
        d,
        &[
            "--web.config.file",
            web.to_str().unwrap(),
            "--cri-proxy-socket",
            sock.to_str().unwrap(),
        ],
    );
    let base = format!("https://{}", agent.addr);
    let creds = format!("prometheus:{PASSWORD}");
    assert_eq!(
        curl(d, &format!("{base}/metrics"), &[]),
        401,
        "no credentials"
    );
    assert_eq!(
        curl(d, &format!("{base}/metrics"), &["-u", "prometheus:wrong"]),
        401
    );
    assert_eq!(curl(d, &format!("{base}/metrics"), &["-u", &creds]), 200);
    assert_eq!(
        curl(d, &format!("{base}/healthz"), &[]),
        200,
        "probes need no credentials"
    );
    assert_eq!(curl(d, &format!("{base}/readyz"), &[]), 200);
    assert_eq!(
        curl(
            d,
            &format!("http://{}/metrics", agent.addr),
            &["-u", &creds]
        ),
        0,
        "plain HTTP gets no answer"
    );

    // Real Prometheus: one job with the right credentials and CA, one with a wrong password.
    let jobs = format!(
        "  - job_name: pullwatch\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: {PASSWORD}\n    static_configs:\n      - targets: ['{addr}']\n\
         \x20 - job_name: wrong\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n    basic_auth:\n      username: prometheus\n      password: nope\n    static_configs:\n      - targets: ['{addr}']\n",
        ca = d.join("ca.crt").display(),
        addr = agent.addr
    );
    let prom = start_prometheus_with_jobs(d, &jobs, "");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = query(prom.addr, "up{job=\"pullwatch\"} == 1");
        let wrong = query(prom.addr, "up{job=\"wrong\"} == 0");
        let data = query(prom.addr, "pullwatch_build_info{job=\"pullwatch\"}");
        if !ok.is_empty() && !wrong.is_empty() && !data.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus over TLS: ok={ok:?} wrong={wrong:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = agent.logs();
    assert!(
        !logs.contains(PASSWORD) && !logs.contains(&hash),
        "secret in the log"
    );
    assert!(
        logs.contains("\"tls\":true") && logs.contains("\"basic_auth\":true"),
        "{logs}"
    );
}

#[test]
fn bad_web_configs_exit_64_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (yaml, want) in [
        (
            "basic_auth_users:\n  prometheus: hunter2\n",
            "basic_auth_users.prometheus: not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyClientCertIfGiven\n",
            "client_auth_type",
        ),
    ] {
        let web = d.join("web.yml");
        std::fs::write(&web, yaml).unwrap();
        let o = Command::new(crate::common::agent::pullwatch_bin())
            .args([
                "run",
                "--cri-proxy-socket",
                "/tmp/x.sock",
                "--web.config.file",
                web.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{yaml}: {e}");
        assert!(
            e.contains("--web.config.file") && e.contains(want),
            "{yaml}: {e}"
        );
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[test]
fn client_certificates_when_required() {
    crate::common::sandbox::require("openssl");
    crate::common::sandbox::require("curl");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs(d);
    signed(d, "client", "/CN=prometheus", "extendedKeyUsage=clientAuth");
    std::fs::write(
        d.join("web.yml"),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\n",
    )
    .unwrap();
    let (web, sock) = (d.join("web.yml"), d.join("pw.sock"));
    let agent = Agent::start_bare(
        d,
        &[
            "--web.config.file",
            web.to_str().unwrap(),
            "--cri-proxy-socket",
            sock.to_str().unwrap(),
        ],
    );
    let url = format!("https://{}/metrics", agent.addr);
    assert_eq!(
        curl(d, &url, &["--cert", "client.crt", "--key", "client.key"]),
        200
    );
    assert_eq!(curl(d, &url, &[]), 0, "no client certificate: no handshake");
    assert_eq!(
        curl(
            d,
            &url,
            &[
                "--cert",
                "client.crt",
                "--key",
                "client.key",
                "--tls-max",
                "1.2"
            ]
        ),
        0,
        "min_version TLS13 refuses TLS 1.2"
    );
}
