//! `pullwatch run`: its flags ([`args`]), their validation into a [`config::RunConfig`], and the
//! wiring of sources, recorder and the HTTP endpoint, run until a signal ([`signal`]).

pub mod args;
pub mod config;
pub mod signal;

use crate::core::attempt::Source;
use crate::http::{self, Readiness};
use crate::observe::{CallMetrics, Recording};
use crate::recorder::{Recorder, RecorderConfig};
use crate::telemetry::{MetricsError, MetricsRegistry};
use crate::sources::containerd::{ContainerdMetrics, ContainerdSource};
use crate::sources::cri_proxy::{CriProxy, ProxyMetrics, loop_guard, socket};
use crate::sources::cri_tap::{self, TapMetrics};
use crate::telemetry::health::SourceFamilies;
use crate::sources::kube::{KubeMetrics, KubeSource};
use crate::sources::ratelimit::{RateLimitMetrics, RateLimitProbe};
use crate::sources::runtime_status::{RuntimeStatusMetrics, RuntimeStatusSource};
pub use args::RunArgs;
use config::RunConfig;
use std::sync::Arc;
use tokio::sync::watch;

/// Every owner's families, registered together at start-up, so `/metrics` lists the same
/// families whichever sources run. Each source is handed its own and the recorder.
struct Instruments {
    registry: MetricsRegistry,
    recorder: Arc<Recorder>,
    calls: CallMetrics,
    proxy: ProxyMetrics,
    tap: TapMetrics,
    containerd: ContainerdMetrics,
    runtime_status: RuntimeStatusMetrics,
    ratelimit: RateLimitMetrics,
    kube: KubeMetrics,
    http: crate::http::HttpMetrics,
    pod_events: crate::sinks::pod_events::PodEventsMetrics,
}

impl Instruments {
    fn register(recorder: &RecorderConfig) -> Result<Self, MetricsError> {
        let registry = MetricsRegistry::new()?;
        crate::telemetry::register_build_info(&registry)?;
        let shared = SourceFamilies::register(&registry)?;
        crate::logging::register_metrics(&registry)?;
        Ok(Self {
            recorder: Arc::new(Recorder::new(recorder, &registry)?),
            calls: CallMetrics::register(&registry)?,
            proxy: ProxyMetrics::register(&registry, &shared)?,
            tap: TapMetrics::register(&registry, &shared)?,
            containerd: ContainerdMetrics::register(&registry, &shared)?,
            runtime_status: RuntimeStatusMetrics::register(&registry, &shared)?,
            ratelimit: RateLimitMetrics::register(&registry)?,
            kube: KubeMetrics::register(&registry, &shared)?,
            http: crate::http::HttpMetrics::register(&registry)?,
            pod_events: crate::sinks::pod_events::PodEventsMetrics::register(&registry)?,
            registry,
        })
    }
}

/// Errors that stop the agent at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Metrics registration failed (a bug).
    #[error("registering metrics: {0}")]
    Metrics(#[from] MetricsError),
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
    /// The runtime socket is the interposer's own socket.
    #[error(transparent)]
    SelfLoop(#[from] crate::sources::cri_proxy::loop_guard::SelfLoop),
    /// The interposer's thread or runtime could not start.
    #[error("starting the CRI interposer: {0}")]
    InterposerRuntime(#[source] std::io::Error),
    /// The Kubernetes API client could not be configured.
    #[error(transparent)]
    Kube(#[from] crate::sources::kube::KubeError),
    /// The rate-limit probe's HTTP client could not be built (no system trust roots).
    #[error("--ratelimit-probe: loading the system's CA certificates: {0}")]
    ProbeTls(#[source] std::io::Error),
}

impl RunError {
    /// Whether the error is in the configuration given (exit code 64), not the environment.
    pub fn is_usage(&self) -> bool {
        matches!(self, RunError::SelfLoop(_))
    }
}

/// Starts the interposer on its own thread with a single-threaded runtime, and returns once its
/// socket is bound (or why it could not be). kubelet's calls then never queue behind the metrics
/// render, bcrypt or the other sources, and each call's wakeups stay on one thread: measured
/// ~15 % less added latency and ~40 % less CPU per call than on the shared multi-threaded
/// runtime (docs/performance.md). The thread ends after `stop` flips and in-flight calls drained,
/// having removed the socket.
async fn spawn_interposer(
    pc: &crate::sources::cri_proxy::ProxyConfig,
    metrics: ProxyMetrics,
    recording: Arc<Recording>,
    mut stop: watch::Receiver<bool>,
) -> Result<std::thread::JoinHandle<()>, RunError> {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<Result<(), RunError>>();
    let pc = pc.clone();
    let thread = std::thread::Builder::new()
        .name("cri-interposer".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound_tx.send(Err(RunError::InterposerRuntime(e)));
                    return;
                }
            };
            rt.block_on(async move {
                // Bound here: the listener belongs to this runtime's I/O driver.
                let bound = match socket::bind(&pc.listen_socket, pc.socket_mode, pc.socket_group) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e.into()));
                        return;
                    }
                };
                if pc.world_writable() {
                    tracing::warn!(
                        socket = %pc.listen_socket.display(),
                        mode = format!("{:04o}", pc.socket_mode),
                        "the interposer socket is world-writable: any local user can call every CRI method through it (RuntimeService too, Exec included); use 0660 and --cri-proxy-socket-group"
                    );
                }
                // Bound first: then our socket exists and is compared by device and inode.
                if let Err(e) = loop_guard::check(&pc.listen_socket, &pc.runtime_socket) {
                    let _ = bound_tx.send(Err(e.into()));
                    return;
                }
                let proxy = match CriProxy::new(&pc, metrics, recording) {
                    Ok(p) => Arc::new(p),
                    Err(e) => {
                        let _ = bound_tx.send(Err(RunError::InterposerRuntime(e)));
                        return;
                    }
                };
                let _ = bound_tx.send(Ok(()));
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                // Removes the socket file when it stops accepting.
                proxy.serve(bound, stopped, pc.shutdown_grace).await;
            });
        })
        .map_err(RunError::InterposerRuntime)?;
    match bound_rx.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(RunError::InterposerRuntime(std::io::Error::other(
            "the interposer thread ended before binding its socket",
        ))),
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    let instruments = Instruments::register(&config.recorder)?;
    let recorder = instruments.recorder.clone();
    // Everything that can fail on configuration is built before anything is bound.
    let mut kube_source = None;
    let mut pod_events = None;
    if let Some(kc) = config.kube.clone() {
        let client = crate::sources::kube::client(&kc).await?;
        tracing::info!(node = %kc.node_name, events = kc.watch_events, "Kubernetes API source on");
        if let Some(pc) = config.pod_events.clone() {
            tracing::info!(after = ?pc.after, "pod events on");
            pod_events = Some(crate::sinks::pod_events::PodEvents::new(
                client.clone(),
                recorder.pulls().clone(),
                pc,
                instruments.pod_events.clone(),
            ));
        }
        kube_source = Some(KubeSource::new(
            kc,
            client,
            recorder.clone(),
            instruments.kube.clone(),
        ));
    }
    let mut probe = None;
    if let Some(pc) = config.ratelimit_probe.clone() {
        let registries: Vec<&str> = pc.targets.iter().map(|t| t.registry.as_str()).collect();
        tracing::info!(registries = ?registries, interval = ?pc.interval, "rate-limit probe on");
        probe = Some(
            RateLimitProbe::new(pc, instruments.ratelimit.clone()).map_err(RunError::ProbeTls)?,
        );
    }
    let ready = Readiness::default();
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.http.listen,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tracing::info!(
        listen = %config.http.listen,
        version = crate::VERSION,
        tls = config.http.web_config.as_ref().is_some_and(|w| w.tls.is_some()),
        basic_auth = config.http.web_config.as_ref().is_some_and(|w| w.requires_auth()),
        "serving /metrics"
    );
    let http_task = tokio::spawn(http::serve(
        listener,
        instruments.registry.clone(),
        recorder.pulls().clone(),
        instruments.http.clone(),
        ready.clone(),
        config.http.clone(),
        stopped(stop_rx.clone()),
    ));

    let mut proxy_thread = None;
    if let Some(pc) = &config.proxy {
        let recording = Recording::new(
            recorder.clone(),
            Source::CriProxy,
            instruments.calls.clone(),
            instruments.proxy.unobserved.clone(),
            instruments.proxy.health.clone(),
        );
        let metrics = instruments.proxy.clone();
        proxy_thread = Some(spawn_interposer(pc, metrics, recording, stop_rx.clone()).await?);
        tracing::info!(
            socket = %pc.listen_socket.display(),
            runtime = %pc.runtime_socket.display(),
            "CRI interposer listening"
        );
    }
    // The tap first: it must follow the runtime before pullwatch's own connections to it open
    // (the kernel side never follows those, but one open before it attached would be joined).
    let mut tap_thread = None;
    if let Some(tc) = config.tap.clone() {
        let tm = instruments.tap.clone();
        let recording = Recording::with_partial(
            recorder.clone(),
            Source::CriTap,
            instruments.calls.clone(),
            tm.resyncs.clone(),
            tm.health.clone(),
            tm.partial.clone(),
        );
        match cri_tap::start(tc, recording, tm.clone(), stop_rx.clone()).await {
            Ok(thread) => tap_thread = Some(thread),
            Err(e) => {
                tracing::error!(source = cri_tap::SOURCE, error = %crate::causes::Causes(&e), "kernel tap off; the other sources go on");
                tm.health.set_source_up(false);
                recorder.source_unavailable(Source::CriTap);
            }
        }
    }
    let mut source_tasks = Vec::new();
    source_tasks.push(tokio::spawn({
        let recorder = recorder.clone();
        let stop = stop_rx.clone();
        async move { recorder.expire_backoff(stop).await }
    }));
    if config.recorder.join_content.is_some() {
        let (recorder, stop) = (recorder.clone(), stop_rx.clone());
        source_tasks.push(tokio::spawn(
            async move { recorder.join_expiry(stop).await },
        ));
    }
    if let Some(cc) = config.containerd.clone() {
        tracing::info!(socket = %cc.socket.display(), namespace = %cc.namespace, "containerd source on");
        let source = ContainerdSource::new(cc, recorder.clone(), instruments.containerd.clone());
        source_tasks.push(tokio::spawn(source.run(stop_rx.clone())));
    }
    if let Some(source) = kube_source {
        source_tasks.push(tokio::spawn(source.run(stop_rx.clone())));
    }
    if let Some(writer) = pod_events {
        source_tasks.push(tokio::spawn(writer.run(stop_rx.clone())));
    }
    if let Some(probe) = probe {
        source_tasks.push(tokio::spawn(probe.run(stop_rx.clone())));
    }
    if let Some(rc) = config.runtime_status.clone() {
        let source = RuntimeStatusSource::new(rc, instruments.runtime_status.clone());
        source_tasks.push(tokio::spawn(source.run(stop_rx.clone())));
    }
    tracing::info!(
        attempts_from = recorder.authority().as_str(),
        "recording pull attempts from one source"
    );
    ready.set(true);
    shutdown.await;
    ready.set(false);
    let _ = stop_tx.send(true);
    if let Some(t) = proxy_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    if let Some(t) = tap_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    for t in source_tasks {
        let _ = t.await;
    }
    let _ = http_task.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::FAMILIES;

    #[test]
    fn every_family_is_registered_once_whichever_sources_run() {
        let config = RecorderConfig {
            image_label_cap: Some(10),
            ..Default::default()
        };
        let i = Instruments::register(&config).unwrap();
        for f in FAMILIES {
            if f.name == crate::sinks::image_counts::NAME {
                // Kept outside the registry; rendered by the recorder's hook.
                assert!(
                    i.registry
                        .render()
                        .contains(&format!("# TYPE {} counter", f.name))
                );
                continue;
            }
            // A family of that name already registered makes the registry refuse another.
            let again = prometheus::IntCounter::new(f.name, "probe").unwrap();
            let refused = i.registry.prometheus().register(Box::new(again));
            assert!(refused.is_err(), "{} is not registered", f.name);
        }
    }
}
