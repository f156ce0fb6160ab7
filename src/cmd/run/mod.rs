//! `pullwatch run`: its flags ([`args`]), their validation into a [`config::RunConfig`], and the
//! wiring of sources, recorder and the HTTP endpoint, run until a signal ([`signal`]).

pub(crate) mod args;
pub(crate) mod config;
pub(crate) mod signal;
mod tasks;

use crate::core::attempt::Source;
use crate::http::{self, Readiness};
use crate::observe::{CallMetrics, Recording};
use crate::recorder::{Recorder, RecorderConfig};
use crate::sources::containerd::{ContainerdMetrics, ContainerdSource};
use crate::sources::cri_proxy::{CriProxy, ProxyMetrics, loop_guard, socket};
use crate::sources::cri_tap::{self, TapMetrics};
use crate::sources::endpoints::{EndpointMetrics, Meter};
use crate::sources::kube::{KubeMetrics, KubeSource};
use crate::sources::ratelimit::{RateLimitMetrics, RateLimitProbe};
use crate::sources::runtime_status::{RuntimeStatusMetrics, RuntimeStatusSource};
use crate::telemetry::health::SourceFamilies;
use crate::telemetry::{MetricsError, MetricsRegistry};
pub(crate) use args::RunArgs;
use config::RunConfig;
use std::sync::Arc;
use tasks::Tasks;
use tokio_util::sync::CancellationToken;

/// Every owner's families, registered together at start-up, so `/metrics` lists the same
/// families whichever sources run. Each source is handed its own and the recorder.
struct Instruments {
    registry: MetricsRegistry,
    recorder: Arc<Recorder>,
    calls: CallMetrics,
    proxy: ProxyMetrics,
    tap: TapMetrics,
    containerd: ContainerdMetrics,
    endpoints: EndpointMetrics,
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
            endpoints: EndpointMetrics::register(&registry, &shared)?,
            runtime_status: RuntimeStatusMetrics::register(&registry, &shared)?,
            ratelimit: RateLimitMetrics::register(&registry)?,
            kube: KubeMetrics::register(&registry, &shared)?,
            http: crate::http::HttpMetrics::register(&registry)?,
            pod_events: crate::sinks::pod_events::PodEventsMetrics::register(&registry)?,
            registry,
        })
    }
}

/// Errors that stop the agent at start-up, or that it reports when it stops.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
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
    /// Tasks that should have run until shutdown ended before it (each was logged then).
    #[error("tasks ended before shutdown: {}", .0.join(", "))]
    TasksEnded(Vec<&'static str>),
    /// The rate-limit probe's HTTP client could not be built (no system trust roots).
    #[error("--ratelimit-probe: loading the system's CA certificates: {0}")]
    ProbeTls(#[source] std::io::Error),
}

impl RunError {
    /// Whether the error is in the configuration given (exit code 64), not the environment.
    pub(crate) fn is_usage(&self) -> bool {
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
    stop: CancellationToken,
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
                // Removes the socket file when it stops accepting.
                proxy.serve(bound, stop.cancelled_owned(), pc.shutdown_grace).await;
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
pub(crate) async fn run(
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
        tracing::info!(node = %kc.node_name, events = ?kc.events, "Kubernetes API source on");
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
    let stop = CancellationToken::new();
    let mut tasks = Tasks::new(ready.clone());
    tracing::info!(
        listen = %config.http.listen,
        version = crate::VERSION,
        tls = config.http.web_config.as_ref().is_some_and(|w| w.tls.is_some()),
        basic_auth = config.http.web_config.as_ref().is_some_and(|w| w.requires_auth()),
        "serving /metrics"
    );
    tasks.spawn(
        "http",
        http::serve(
            listener,
            instruments.registry.clone(),
            recorder.pulls().clone(),
            instruments.http.clone(),
            ready.clone(),
            config.http.clone(),
            stop.clone().cancelled_owned(),
        ),
    );

    if let Some(pc) = &config.proxy {
        let recording = Recording::new(
            recorder.clone(),
            Source::CriProxy,
            instruments.calls.clone(),
            instruments.proxy.unobserved.clone(),
            instruments.proxy.health.clone(),
        );
        let metrics = instruments.proxy.clone();
        let thread = spawn_interposer(pc, metrics, recording, stop.clone()).await?;
        tasks.watch_thread("cri interposer", thread);
        tracing::info!(
            socket = %pc.listen_socket.display(),
            runtime = %pc.runtime_socket.display(),
            "CRI interposer listening"
        );
    }
    // The tap first: it must follow the runtime before pullwatch's own connections to it open
    // (the kernel side never follows those, but one open before it attached would be joined).
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
        match cri_tap::start(tc, recording, tm.clone(), stop.clone()).await {
            Ok(thread) => tasks.watch_thread("cri tap", thread),
            Err(e) => {
                tracing::error!(source = cri_tap::SOURCE, error = %crate::causes::Causes(&e), "kernel tap off; the other sources go on");
                tm.health.set_source_up(false);
                recorder.source_unavailable(Source::CriTap);
            }
        }
    }
    tasks.spawn("backoff expiry", {
        let (recorder, stop) = (recorder.clone(), stop.clone());
        async move { recorder.expire_backoff(stop).await }
    });
    if recorder.joins() {
        let (recorder, stop) = (recorder.clone(), stop.clone());
        tasks.spawn(
            "content join",
            async move { recorder.join_expiry(stop).await },
        );
    }
    if let Some(ec) = config.endpoints.clone() {
        tracing::info!(hosts = ?ec.hosts, "registry endpoint witness on");
        let meter = Meter::new(ec, instruments.endpoints.clone());
        recorder.witness_endpoints(meter.clone());
        tasks.spawn("endpoint witness", meter.run(stop.clone()));
    }
    if let Some(cc) = config.containerd.clone() {
        tracing::info!(socket = %cc.socket.display(), namespace = %cc.namespace, "containerd source on");
        let source = ContainerdSource::new(cc, recorder.clone(), instruments.containerd.clone());
        tasks.spawn("containerd source", source.run(stop.clone()));
    }
    if let Some(source) = kube_source {
        tasks.spawn("kubernetes source", source.run(stop.clone()));
    }
    if let Some(writer) = pod_events {
        tasks.spawn("pod events", writer.run(stop.clone()));
    }
    if let Some(probe) = probe {
        tasks.spawn("rate-limit probe", probe.run(stop.clone()));
    }
    if let Some(rc) = config.runtime_status.clone() {
        let source = RuntimeStatusSource::new(rc, instruments.runtime_status.clone());
        tasks.spawn("runtime status", source.run(stop.clone()));
    }
    tracing::info!(
        attempts_from = recorder.authority().as_str(),
        "recording pull attempts from one source"
    );
    ready.set(true);
    tasks.until(shutdown).await;
    ready.set(false);
    stop.cancel();
    let ended_early = tasks.drain().await;
    if !ended_early.is_empty() {
        return Err(RunError::TasksEnded(ended_early));
    }
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
