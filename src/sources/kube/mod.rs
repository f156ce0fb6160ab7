//! The Kubernetes API source: the container statuses of this node's pods and kubelet's pull
//! Events, for failure causes, kubelet-measured durations, queue time and backoff without an
//! observer of CRI calls. Its cost to the API server is bounded by the node (`--kube-events`):
//! - Pods with `spec.nodeName=NODE`: one watch (kube-runtime's watcher, lists from the API
//!   server's cache, bookmarks, relists on `410 Gone`, backoff), no object cache.
//! - `per-pod` (default): when a container of a new pod starts after a pull, one list of that
//!   pod's `Pulled` Events by its UID ([`reads`]).
//! - `cluster`: a watch of every kubelet pod Event (`involvedObject.kind=Pod,source=kubelet`),
//!   kept only when `source.host` (or `reportingInstance`) is this node: the API offers no field
//!   selector on the host, so every node receives every kubelet pod Event of the cluster.
//! - `off`: statuses only.
//!
//! [`tracker::KubeTracker`] turns them into attempts, each kubelet attempt counted once;
//! [`convert`] reads the objects.

mod config;
mod convert;
pub(crate) mod messages;
mod reads;
pub(crate) mod tracker;

use crate::core::attempt::Source;
use crate::recorder::Recorder;
use crate::telemetry::health::{SourceFamilies, SourceHealth};
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};
pub(crate) use config::{KubeArgs, KubeConfig, KubeEvents};
use convert::{event_obs, pod_obs};
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tracker::{Action, KubeTracker};

/// A watch whose lists (relists after `410 Gone` included) are served from the API server's
/// watch cache, `resourceVersion=0`, as kubelet's own informers list: for this node's pods the
/// cache answers from its node index, where a consistent list would read every pod of the
/// cluster from etcd. Unpaged: kube-rs sends no `resourceVersion=0` with a page size (the API
/// server did not page cache lists), so a page size would turn each relist into that etcd read.
fn from_cache(config: watcher::Config) -> watcher::Config {
    let mut config = config.any_semantic();
    config.page_size = None;
    config
}

/// A failing read's warning is written at most this often.
static READ_FAILED: crate::telemetry::events::Throttle =
    crate::telemetry::events::Throttle::new(crate::telemetry::events::WARN_EVERY);

crate::label_enum! {
    /// What became of a per-pod read of `Pulled` Events: the `result` label.
    pub(crate) enum ReadResult {
        /// Read.
        Ok => "ok",
        /// The API failed or did not answer.
        Error => "error",
        /// Not made: too many pods waited to be read.
        Dropped => "dropped",
    }
}

crate::label_set! {
    /// Labels of `pullwatch_kube_event_reads_total`.
    pub(crate) struct ByReadResult { result: ReadResult }
}

/// A failing watch retries with backoff: its warning is written at most this often.
static WATCH_FAILED: crate::telemetry::events::Throttle =
    crate::telemetry::events::Throttle::new(crate::telemetry::events::WARN_EVERY);

/// Label value of this source in `pullwatch_source_errors_total`.
pub(crate) const SOURCE: &str = "kube";

crate::label_enum! {
    /// The resources the source watches: the `resource` label.
    #[derive(PartialOrd, Ord)]
    pub(crate) enum Resource {
        /// This node's pods.
        Pods => "pods",
        /// kubelet's Events.
        Events => "events",
    }
}

crate::label_set! {
    /// Labels of `pullwatch_kube_watch_up`.
    pub(crate) struct ByResource { resource: Resource }
}

/// The source's families: whether each watch works, failures seen twice and counted once, and
/// its series of the shared source families (`source="kube"`).
#[derive(Clone)]
pub(crate) struct KubeMetrics {
    watch_up: GaugeFamily<ByResource>,
    /// Label-less; its one series is created when the source starts, so the family shows
    /// (at 0) only with `--kube`.
    deduplicated: CounterFamily<()>,
    event_reads: CounterFamily<ByReadResult>,
    health: SourceHealth,
}

impl KubeMetrics {
    /// Registers the source's families in `reg`; `shared` gives its `source="kube"` series.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        shared: &SourceFamilies,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            watch_up: GaugeFamily::register(reg, crate::family_name!("pullwatch_kube_watch_up"))?,
            deduplicated: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_kube_deduplicated_total"),
            )?,
            event_reads: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_kube_event_reads_total"),
            )?,
            health: shared.health(SOURCE),
        })
    }
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubeError {
    /// The kubeconfig could not be read or used.
    #[error("--kubeconfig {path}: {problem}")]
    Kubeconfig {
        /// File.
        path: PathBuf,
        /// What is wrong: the first line of the parser's message only, because the lines after
        /// it quote the file, and a kubeconfig holds tokens and keys.
        problem: String,
    },
    /// Not in a cluster and no kubeconfig.
    #[error("--kube: no in-cluster service account ({0}); run in a pod, or pass --kubeconfig PATH")]
    InCluster(#[source] kube::config::InClusterError),
    /// The client could not be built from the configuration.
    #[error("--kube: building the API client: {0}")]
    Client(#[source] kube::Error),
}

fn kubeconfig_error(path: &std::path::Path, e: &kube::config::KubeconfigError) -> KubeError {
    KubeError::Kubeconfig {
        path: path.to_path_buf(),
        problem: e.to_string().lines().next().unwrap_or("").to_string(),
    }
}

/// Builds the API client from `config` (no request is made yet).
pub(crate) async fn client(config: &KubeConfig) -> Result<Client, KubeError> {
    let cfg = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| kubeconfig_error(path, &source))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| kubeconfig_error(path, &source))?
        }
        None => kube::Config::incluster().map_err(KubeError::InCluster)?,
    };
    Client::try_from(cfg).map_err(KubeError::Client)
}

/// The source.
pub(crate) struct KubeSource {
    config: KubeConfig,
    client: Client,
    recorder: Arc<Recorder>,
    metrics: KubeMetrics,
    tracker: KubeTracker,
    /// Pod UIDs listed since the last `Init` of the pod watch (to find pods deleted while the
    /// watch was down).
    relisted: Option<HashSet<String>>,
    known_pods: HashSet<String>,
    /// When each watch (`pods`, `events`) last failed, while it counts as down.
    failed_at: BTreeMap<Resource, Instant>,
    /// Per-pod reads of `Pulled` Events (`--kube-events=per-pod`).
    reads: reads::PulledReads,
    /// The watches that have listed and are not failing now.
    watching: std::collections::BTreeSet<Resource>,
}

/// A failed watch counts as recovered after this long without a new error: the watcher retries
/// with backoff capped at 30 s, so a watch still failing reports again within it, while a watch
/// that resumed quietly (no relist, no event yet) yields nothing to show that it is back.
pub(crate) const RECOVERED_AFTER: Duration = Duration::from_secs(40);

impl KubeSource {
    /// A source for `config` using `client`, recording attempts and backoff signals into
    /// `recorder` (which keeps the attempts only where kube is the attempt authority), the rest
    /// into `metrics`.
    pub(crate) fn new(
        config: KubeConfig,
        client: Client,
        recorder: Arc<Recorder>,
        metrics: KubeMetrics,
    ) -> Self {
        // Born at 0 when the source starts, so increase() sees the first deduplication.
        metrics.deduplicated.with(&());
        for result in ReadResult::ALL {
            metrics.event_reads.with(&ByReadResult { result: *result });
        }
        let tracker = KubeTracker::new(SystemTime::now());
        let tracker = match config.events {
            KubeEvents::Cluster => tracker,
            KubeEvents::PerPod => tracker.reading_pulled(),
            KubeEvents::Off => tracker.without_events(),
        };
        Self {
            reads: reads::PulledReads::new(client.clone(), Instant::now()),
            config,
            client,
            recorder,
            metrics,
            tracker,
            relisted: None,
            known_pods: HashSet::new(),
            failed_at: BTreeMap::new(),
            watching: std::collections::BTreeSet::new(),
        }
    }

    fn pod_stream(&self) -> impl Stream<Item = Result<WatchEvent<Pod>, watcher::Error>> + use<> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let cfg = from_cache(
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.node_name)),
        );
        watcher::watcher(api, cfg).default_backoff()
    }

    fn event_stream(
        &self,
    ) -> impl Stream<Item = Result<WatchEvent<Event>, watcher::Error>> + use<> {
        let api: Api<Event> = Api::all(self.client.clone());
        let cfg =
            from_cache(watcher::Config::default().fields("involvedObject.kind=Pod,source=kubelet"));
        watcher::watcher(api, cfg).default_backoff()
    }

    /// Runs until `shutdown` flips to true.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        // Down until its watches have listed: an API it cannot reach (RBAC, network) shows.
        self.publish_source_up();
        let mut pods = std::pin::pin!(self.pod_stream());
        let mut events = std::pin::pin!(if self.config.events == KubeEvents::Cluster {
            Either::Left(self.event_stream())
        } else {
            Either::Right(futures_util::stream::pending())
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = Instant::now();
                    let quiet: Vec<Resource> = self
                        .failed_at
                        .iter()
                        .filter(|(_, t)| now.saturating_duration_since(**t) >= RECOVERED_AFTER)
                        .map(|(r, _)| *r)
                        .collect();
                    for r in quiet {
                        self.watch_health(r, Ok(()));
                    }
                    self.reads.start_due(now);
                    self.tracker.tick(now, SystemTime::now())
                }
                done = self.reads.next_done() => self.on_pulled_read(done),
                Some(e) = pods.next() => self.on_pod_watch(e),
                Some(e) = events.next() => self.on_event_watch(e),
            };
            self.apply(actions);
        }
    }

    /// Marks the watch of `resource` up (it listed, delivered an object, or stayed quiet for
    /// [`RECOVERED_AFTER`] after a failure) or down (it failed).
    fn watch_health(&mut self, resource: Resource, result: Result<(), &watcher::Error>) {
        let m = &self.metrics;
        let labels = ByResource { resource };
        match result {
            Ok(()) => {
                self.failed_at.remove(&resource);
                self.watching.insert(resource);
                m.watch_up.set(&labels, 1);
            }
            Err(e) => {
                self.failed_at.insert(resource, Instant::now());
                self.watching.remove(&resource);
                m.watch_up.set(&labels, 0);
                m.health.error();
                if let Some(suppressed) = WATCH_FAILED.allow() {
                    tracing::warn!(source = SOURCE, %resource, error = %e, suppressed, "Kubernetes API watch failed; retrying");
                }
            }
        }
        self.publish_source_up();
    }

    /// The source works when every watch it needs has listed and is not failing.
    fn publish_source_up(&self) {
        let mut needed = vec![Resource::Pods];
        if self.config.events == KubeEvents::Cluster {
            needed.push(Resource::Events);
        }
        let up = needed.iter().all(|r| self.watching.contains(r));
        self.metrics.health.set_source_up(up);
    }

    fn on_pod_watch(&mut self, e: Result<WatchEvent<Pod>, watcher::Error>) -> Vec<Action> {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                self.watch_health(Resource::Pods, Err(&err));
                return Vec::new();
            }
        };
        let now = Instant::now();
        // A live change after a failure: the watch is back.
        if matches!(e, WatchEvent::Apply(_) | WatchEvent::Delete(_))
            && self.failed_at.contains_key(&Resource::Pods)
        {
            self.watch_health(Resource::Pods, Ok(()));
        }
        match e {
            WatchEvent::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            WatchEvent::InitApply(p) | WatchEvent::Apply(p) => {
                let Some(obs) = pod_obs(&p) else {
                    return Vec::new();
                };
                if let Some(seen) = &mut self.relisted {
                    seen.insert(obs.pod.uid.clone());
                }
                self.known_pods.insert(obs.pod.uid.clone());
                self.tracker.on_pod(&obs, now)
            }
            WatchEvent::InitDone => {
                self.watch_health(Resource::Pods, Ok(()));
                // Pods deleted while the watch was down never get a Delete: drop them now.
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<String> = self.known_pods.difference(&seen).cloned().collect();
                let mut out = Vec::new();
                for uid in gone {
                    self.known_pods.remove(&uid);
                    out.extend(self.tracker.on_pod_deleted(&uid));
                }
                out
            }
            WatchEvent::Delete(p) => {
                let uid = p.metadata.uid.unwrap_or_default();
                self.known_pods.remove(&uid);
                self.tracker.on_pod_deleted(&uid)
            }
        }
    }

    fn on_event_watch(&mut self, e: Result<WatchEvent<Event>, watcher::Error>) -> Vec<Action> {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                self.watch_health(Resource::Events, Err(&err));
                return Vec::new();
            }
        };
        if matches!(e, WatchEvent::Apply(_) | WatchEvent::Delete(_))
            && self.failed_at.contains_key(&Resource::Events)
        {
            self.watch_health(Resource::Events, Ok(()));
        }
        match e {
            WatchEvent::Init => Vec::new(),
            WatchEvent::InitDone => {
                self.watch_health(Resource::Events, Ok(()));
                Vec::new()
            }
            WatchEvent::InitApply(ev) | WatchEvent::Apply(ev) => {
                match event_obs(&ev, &self.config.node_name) {
                    Some(obs) => self.tracker.on_event(&obs, Instant::now()),
                    None => Vec::new(),
                }
            }
            WatchEvent::Delete(ev) => {
                if let Some(uid) = &ev.metadata.uid {
                    self.tracker.on_event_deleted(uid);
                }
                Vec::new()
            }
        }
    }

    /// The `Pulled` Events of a pod, read: each counts as the cluster-wide watch would have
    /// delivered it (the tracker keeps each Event's count, so a read again adds only what is
    /// new).
    fn on_pulled_read(&mut self, (pod, result): reads::Done) -> Vec<Action> {
        let events = match result {
            Ok(events) => events,
            Err(e) => {
                self.count_read(ReadResult::Error);
                self.metrics.health.error();
                if let Some(suppressed) = READ_FAILED.allow() {
                    tracing::warn!(source = SOURCE, namespace = %pod.namespace, pod = %pod.name, error = %e, suppressed, "reading a pod's Pulled events failed");
                }
                return Vec::new();
            }
        };
        self.count_read(ReadResult::Ok);
        let now = Instant::now();
        events
            .iter()
            .filter_map(|ev| event_obs(ev, &self.config.node_name))
            .filter(|obs| obs.pod.uid == pod.uid)
            .flat_map(|obs| self.tracker.on_event(&obs, now))
            .collect()
    }

    fn count_read(&self, result: ReadResult) {
        self.metrics.event_reads.inc(&ByReadResult { result });
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Record(attempt) => self.recorder.record(&attempt),
                Action::BackingOff { pod, image, reason } => {
                    self.recorder.backing_off(&pod, &image, reason)
                }
                Action::Cleared { pod, image } => self.recorder.backoff_cleared(&pod, &image),
                Action::PodGone(uid) => self.recorder.pod_gone(&uid),
                Action::Queued { image, wait } => {
                    self.recorder.observe_queue(&image, wait.as_secs_f64());
                }
                // A statement about attempts: counted where kube's attempts are the ones recorded.
                Action::Deduplicated if self.recorder.records_attempts_from(Source::Kube) => {
                    self.metrics.deduplicated.inc(&());
                }
                Action::Deduplicated => {}
                Action::PullStarted {
                    pod,
                    image,
                    tentative,
                } => self.recorder.pull_announced(pod, &image, tentative),
                Action::PullEnded { uid, image } => {
                    self.recorder.pull_announced_ended(&uid, &image)
                }
                Action::ReadPulled { pod } => {
                    if !self.reads.ask(pod, Instant::now()) {
                        self.count_read(ReadResult::Dropped);
                    }
                }
            }
        }
    }
}
