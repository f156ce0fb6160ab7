//! `pullwatch run`: wires sources, recorder and the HTTP endpoint together and runs until a
//! signal.

use crate::config::RunConfig;
use crate::http::{self, Readiness};
use crate::recorder::Recorder;
use crate::sources::cri_proxy::{CriProxy, socket};
use std::sync::Arc;
use tokio::sync::watch;

/// Errors that stop the agent at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Metrics registration failed (a bug).
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP endpoint could not bind.
    #[error("--listen {addr}: {source}")]
    Listen {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The interposer socket could not be created.
    #[error("--cri-proxy-socket: {0}")]
    Socket(#[from] socket::SocketError),
    /// The Kubernetes API client could not be configured.
    #[error(transparent)]
    Kube(#[from] crate::sources::kube::KubeError),
    /// The rate-limit probe's HTTP client could not be built (no system trust roots).
    #[error("--ratelimit-probe: loading the system's CA certificates: {0}")]
    ProbeTls(#[source] std::io::Error),
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let recorder = Arc::new(Recorder::new(&config.recorder)?);
    // Everything that can fail on configuration is built before anything is bound.
    let mut kube_source = None;
    if let Some(kc) = config.kube.clone() {
        let client = crate::sources::kube::client(&kc).await?;
        tracing::info!(node = %kc.node_name, attempts = kc.emit_attempts, "Kubernetes API source on");
        kube_source = Some(crate::sources::kube::KubeSource::new(
            kc,
            client,
            recorder.clone(),
        ));
    }
    let mut probe = None;
    if let Some(pc) = config.ratelimit_probe.clone() {
        let registries: Vec<&str> = pc.targets.iter().map(|t| t.registry.as_str()).collect();
        tracing::info!(registries = ?registries, interval = ?pc.interval, "rate-limit probe on");
        probe = Some(
            crate::sources::ratelimit::RateLimitProbe::new(pc, recorder.clone())
                .map_err(RunError::ProbeTls)?,
        );
    }
    let ready = Readiness::default();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.listen,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tracing::info!(
        listen = %config.listen,
        version = crate::VERSION,
        tls = config.web_config.as_ref().is_some_and(|w| w.tls.is_some()),
        basic_auth = config.web_config.as_ref().is_some_and(|w| w.requires_auth()),
        "serving /metrics"
    );
    let http_task = tokio::spawn(http::serve(
        listener,
        recorder.clone(),
        ready.clone(),
        config.web_config.clone(),
        stopped(stop_rx.clone()),
    ));

    let mut proxy_task = None;
    if let Some(pc) = &config.proxy {
        let bound = socket::bind(&pc.listen_socket, pc.socket_mode)?;
        let proxy = Arc::new(CriProxy::new(pc, recorder.clone()));
        tracing::info!(
            socket = %pc.listen_socket.display(),
            runtime = %pc.runtime_socket.display(),
            "CRI interposer listening"
        );
        let stop = stopped(stop_rx.clone());
        let grace = pc.shutdown_grace;
        proxy_task = Some(tokio::spawn(async move {
            proxy.serve(&bound.listener, stop, grace).await;
            drop(bound); // removes the socket file
        }));
    }
    let mut source_tasks = Vec::new();
    if let Some(cc) = config.containerd.clone() {
        tracing::info!(socket = %cc.socket.display(), namespace = %cc.namespace, passive = cc.emit_attempts, "containerd source on");
        let source = crate::sources::containerd::ContainerdSource::new(cc, recorder.clone());
        source_tasks.push(tokio::spawn(source.run(stop_rx.clone())));
    }
    if let Some(source) = kube_source {
        source_tasks.push(tokio::spawn(source.run(stop_rx.clone())));
    }
    if let Some(probe) = probe {
        source_tasks.push(tokio::spawn(probe.run(stop_rx.clone())));
    }
    if let Some((socket, interval)) = config.runtime_status.clone() {
        let source =
            crate::sources::cri_client::CriClientSource::new(socket, interval, recorder.clone());
        source_tasks.push(tokio::spawn(source.run(stop_rx.clone())));
    }
    ready.set(true);
    shutdown.await;
    ready.set(false);
    let _ = stop_tx.send(true);
    if let Some(t) = proxy_task {
        let _ = t.await;
    }
    for t in source_tasks {
        let _ = t.await;
    }
    let _ = http_task.await;
    tracing::info!("stopped");
    Ok(())
}
