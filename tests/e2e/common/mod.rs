//! Shared end-to-end harness: real containerd + docker-registry + our fault registry, and the
//! real pullwatch binary. Used by the tests in `tests/` and by `examples/demo.rs`.
#![allow(dead_code)]

pub mod agent;
pub mod callers;
pub mod fault_registry;
pub mod image;
pub mod kube_api;
pub mod prometheus;
pub mod sandbox;
pub mod wait;

use pullwatch::cmd::pull::{PullReport, PullRequest, pull};
use pullwatch::core::attempt::Outcome;
use pullwatch::cri::client::CriClient;
use std::path::Path;
use std::time::Duration;

/// Serves HTTP/1 on `listener` in the current tokio runtime, one task per connection, each
/// request answered by `handle` (an `Err` closes the connection unanswered).
pub fn serve_http1<H, F, B>(listener: tokio::net::TcpListener, handle: H)
where
    H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<http::Response<B>, std::io::Error>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(&handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// Pulls `image` through the CRI socket at `sock` as pod `ns/pod`.
pub async fn pull_as(
    sock: &Path,
    image: &str,
    pod: Option<(&str, &str)>,
    timeout: Duration,
) -> PullReport {
    let mut c = CriClient::connect(sock, Duration::from_secs(5))
        .await
        .expect("connect");
    let req = PullRequest {
        image: image.to_string(),
        auth: None,
        pod: pod.map(|(ns, name)| (ns.to_string(), name.to_string(), format!("uid-{ns}-{name}"))),
        timeout: Some(timeout),
    };
    pull(&mut c, &req).await
}

/// The failure reason label of a report, or `success`.
pub fn reason_of(r: &PullReport) -> String {
    match &r.outcome {
        Outcome::Success { .. } => "success".into(),
        Outcome::Failure { reason, .. } => reason.as_str().into(),
    }
}

/// The failure message of a report (empty for success).
pub fn message_of(r: &PullReport) -> String {
    match &r.outcome {
        Outcome::Success { .. } => String::new(),
        Outcome::Failure { message, .. } => message.clone(),
    }
}

/// Every PromQL expression of the Grafana dashboards in `dashboards/`.
/// A tool the tests run: from the checkout's Python venv (`.venv/`, scripts/install-deps.sh
/// makes it) when it has it, else from PATH.
pub fn tool(name: &str) -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name);
    if venv.exists() {
        venv
    } else {
        std::path::PathBuf::from(name)
    }
}

pub fn dashboard_exprs() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dashboards/") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push(t["expr"].as_str().unwrap().to_string());
            }
        }
    }
    out
}
