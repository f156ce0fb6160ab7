//! The Kubernetes API source: kubelet's pull events and the container statuses of this node's
//! pods, for failure causes, kubelet-measured durations and backoff without the interposer.
//!
//! Two watches (kube-runtime's watcher: paginated list, then watch with bookmarks; relists on
//! `410 Gone`; retries with backoff), no object cache:
//! - Pods with `spec.nodeName=NODE`.
//! - Events with `involvedObject.kind=Pod,source=kubelet`, kept only when `source.host` (or
//!   `reportingInstance`) is this node. The API offers no field selector on the host, so every
//!   node receives every kubelet pod event of the cluster and drops the others at once.
//!
//! [`tracker::KubeTracker`] turns both into attempts, each kubelet attempt counted once.

mod config;
pub mod messages;
pub mod tracker;

use crate::core::attempt::{PodRef, Source};
use crate::core::reference::ImageRef;
use crate::recorder::Recorder;
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};
use crate::telemetry::health::{SourceFamilies, SourceHealth};
pub use config::{KubeArgs, KubeConfig};
use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tracker::{Action, ContainerObs, EventObs, KubeTracker, PodObs, PullState};

/// Label value of this source in `pullwatch_source_errors_total`.
pub const SOURCE: &str = "kube";

crate::label_set! {
    /// Labels of `pullwatch_kube_watch_up`.
    pub(crate) struct ByResource<'a> { resource: &'a str }
}

/// The source's families: whether each watch works, failures seen twice and counted once, and
/// its series of the shared source families (`source="kube"`).
#[derive(Clone)]
pub struct KubeMetrics {
    watch_up: GaugeFamily<ByResource<'static>>,
    /// Label-less; its one series is created when the source starts, so the family shows
    /// (at 0) only with `--kube`.
    deduplicated: CounterFamily<()>,
    health: SourceHealth,
}

impl KubeMetrics {
    /// Registers the source's families in `reg`; `shared` gives its `source="kube"` series.
    pub fn register(reg: &MetricsRegistry, shared: &SourceFamilies) -> Result<Self, MetricsError> {
        Ok(Self {
            watch_up: GaugeFamily::register(reg, "pullwatch_kube_watch_up")?,
            deduplicated: CounterFamily::register(reg, "pullwatch_kube_deduplicated_total")?,
            health: shared.health(SOURCE),
        })
    }
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
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
pub async fn client(config: &KubeConfig) -> Result<Client, KubeError> {
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
pub struct KubeSource {
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
    failed_at: BTreeMap<&'static str, Instant>,
    /// Pulls kubelet said it started (`Pulling`) and has not ended, in the pulls view (only
    /// without the interposer, which sees them itself): (pod UID, image) → view id, start.
    live: std::sync::Mutex<HashMap<(String, String), (u64, Instant)>>,
}

/// A pull kubelet started but never said it ended leaves the pulls view after this long.
const LIVE_PULL_MAX: Duration = Duration::from_secs(30 * 60);
/// Pulls tracked from kubelet's events at most.
const LIVE_PULLS_MAX: usize = 4096;

/// A failed watch counts as recovered after this long without a new error: the watcher retries
/// with backoff capped at 30 s, so a watch still failing reports again within it, while a watch
/// that resumed quietly (no relist, no event yet) yields nothing to show that it is back.
pub const RECOVERED_AFTER: Duration = Duration::from_secs(40);

impl KubeSource {
    /// A source for `config` using `client`, recording attempts and backoff signals into
    /// `recorder` (which keeps the attempts only where kube is the attempt authority), the rest
    /// into `metrics`.
    pub fn new(
        config: KubeConfig,
        client: Client,
        recorder: Arc<Recorder>,
        metrics: KubeMetrics,
    ) -> Self {
        // Born at 0 when the source starts, so increase() sees the first deduplication.
        metrics.deduplicated.with(&());
        let tracker = KubeTracker::new(SystemTime::now());
        let tracker = if config.watch_events {
            tracker
        } else {
            tracker.without_events()
        };
        Self {
            config,
            client,
            recorder,
            metrics,
            tracker,
            relisted: None,
            known_pods: HashSet::new(),
            failed_at: BTreeMap::new(),
            live: std::sync::Mutex::default(),
        }
    }

    fn pod_stream(&self) -> impl Stream<Item = Result<WatchEvent<Pod>, watcher::Error>> + use<> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let cfg =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.config.node_name));
        watcher::watcher(api, cfg).default_backoff()
    }

    fn event_stream(
        &self,
    ) -> impl Stream<Item = Result<WatchEvent<Event>, watcher::Error>> + use<> {
        let api: Api<Event> = Api::all(self.client.clone());
        let cfg = watcher::Config::default().fields("involvedObject.kind=Pod,source=kubelet");
        watcher::watcher(api, cfg).default_backoff()
    }

    /// Runs until `shutdown` flips to true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut pods = std::pin::pin!(self.pod_stream());
        let mut events = std::pin::pin!(if self.config.watch_events {
            Either::Left(self.event_stream())
        } else {
            Either::Right(futures_util::stream::pending())
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {
                    let now = Instant::now();
                    let quiet: Vec<&'static str> = self
                        .failed_at
                        .iter()
                        .filter(|(_, t)| now.saturating_duration_since(**t) >= RECOVERED_AFTER)
                        .map(|(r, _)| *r)
                        .collect();
                    for r in quiet {
                        self.watch_health(r, Ok(()));
                    }
                    self.tracker.tick(now, SystemTime::now())
                }
                Some(e) = pods.next() => self.on_pod_watch(e),
                Some(e) = events.next() => self.on_event_watch(e),
            };
            self.apply(actions);
        }
    }

    /// Marks the watch of `resource` up (it listed, delivered an object, or stayed quiet for
    /// [`RECOVERED_AFTER`] after a failure) or down (it failed).
    fn watch_health(&mut self, resource: &'static str, result: Result<(), &watcher::Error>) {
        let m = &self.metrics;
        let labels = ByResource { resource };
        match result {
            Ok(()) => {
                self.failed_at.remove(resource);
                m.watch_up.set(&labels, 1);
            }
            Err(e) => {
                self.failed_at.insert(resource, Instant::now());
                m.watch_up.set(&labels, 0);
                m.health.error();
                tracing::warn!(source = SOURCE, resource, error = %e, "Kubernetes API watch failed; retrying");
            }
        }
    }

    fn on_pod_watch(&mut self, e: Result<WatchEvent<Pod>, watcher::Error>) -> Vec<Action> {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                self.watch_health("pods", Err(&err));
                return Vec::new();
            }
        };
        let now = Instant::now();
        // A live change after a failure: the watch is back.
        if matches!(e, WatchEvent::Apply(_) | WatchEvent::Delete(_))
            && self.failed_at.contains_key("pods")
        {
            self.watch_health("pods", Ok(()));
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
                self.watch_health("pods", Ok(()));
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
                self.watch_health("events", Err(&err));
                return Vec::new();
            }
        };
        if matches!(e, WatchEvent::Apply(_) | WatchEvent::Delete(_))
            && self.failed_at.contains_key("events")
        {
            self.watch_health("events", Ok(()));
        }
        match e {
            WatchEvent::Init => Vec::new(),
            WatchEvent::InitDone => {
                self.watch_health("events", Ok(()));
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

    fn apply(&self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Record(attempt) => self.recorder.record(&attempt),
                Action::BackingOff { pod, image, reason } => {
                    self.recorder.backing_off(&pod, &image, reason)
                }
                Action::Cleared { pod, image } => self.recorder.backoff_cleared(&pod, &image),
                Action::PodGone(uid) => {
                    let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                    live.retain(|(pod, _), (id, _)| {
                        let keep = *pod != uid;
                        if !keep {
                            self.recorder.pulls().ended(*id);
                        }
                        keep
                    });
                    drop(live);
                    self.recorder.pod_gone(&uid);
                }
                Action::Queued { image, wait } => {
                    self.recorder.observe_queue(&image, wait.as_secs_f64());
                }
                // A statement about attempts: counted where kube's attempts are the ones recorded.
                Action::Deduplicated if self.recorder.records_attempts_from(Source::Kube) => {
                    self.metrics.deduplicated.inc(&());
                }
                Action::Deduplicated => {}
                Action::PullStarted { pod, image } => self.pull_started(pod, &image),
                Action::PullEnded { uid, image } => self.pull_ended(&uid, &image),
            }
        }
    }

    /// kubelet started pulling `image` for `pod`: shown in the pulls view (progress, pod
    /// events) unless an observer of CRI calls, which names each pull's pod itself, is on.
    fn pull_started(&self, pod: PodRef, image: &str) {
        if self.recorder.authority() == crate::recorder::Authority::Observed {
            return;
        }
        let view = self.recorder.pulls();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.retain(|_, (id, at)| {
            let keep = now.saturating_duration_since(*at) < LIVE_PULL_MAX;
            if !keep {
                view.ended(*id);
            }
            keep
        });
        let key = (pod.uid.clone(), image.to_string());
        if live.len() >= LIVE_PULLS_MAX || live.contains_key(&key) {
            return;
        }
        let reference = ImageRef::parse(image).ok();
        let registry = reference
            .as_ref()
            .map_or(crate::core::attempt::UNKNOWN_REGISTRY, |r| {
                r.registry.as_str()
            });
        let repository = reference.as_ref().map(|r| r.repository.as_str());
        if let Some(id) = view.started(image, registry, repository, Some(pod)) {
            live.insert(key, (id, now));
        }
    }

    fn pull_ended(&self, uid: &str, image: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((id, _)) = live.remove(&(uid.to_string(), image.to_string())) {
            self.recorder.pulls().ended(id);
        }
    }
}

/// Seconds and nanoseconds since the epoch as a `SystemTime` (times before 1970 clamp to it).
fn epoch(seconds: i64, nanos: i32) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(seconds.max(0).unsigned_abs())
        + Duration::from_nanos(u64::from(nanos.max(0).unsigned_abs()))
}

fn system_time(t: &Time) -> SystemTime {
    epoch(t.0.as_second(), t.0.subsec_nanosecond())
}

fn micro_time(t: &MicroTime) -> SystemTime {
    epoch(t.0.as_second(), t.0.subsec_nanosecond())
}

/// The tracker's view of a kubelet Event, or `None` if it is not from this node's kubelet or not
/// about a pod.
pub fn event_obs(ev: &Event, node: &str) -> Option<EventObs> {
    let host = ev
        .source
        .as_ref()
        .and_then(|s| s.host.as_deref())
        .filter(|h| !h.is_empty())
        .or(ev.reporting_instance.as_deref());
    if host != Some(node) || ev.involved_object.kind.as_deref() != Some("Pod") {
        return None;
    }
    let o = &ev.involved_object;
    let series_count = ev.series.as_ref().and_then(|s| s.count);
    let count = series_count.or(ev.count).unwrap_or(1).max(1);
    let last_seen = ev
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(micro_time)
        .or_else(|| ev.last_timestamp.as_ref().map(system_time))
        .or_else(|| ev.event_time.as_ref().map(micro_time));
    let first_seen = ev
        .first_timestamp
        .as_ref()
        .map(system_time)
        .or_else(|| ev.event_time.as_ref().map(micro_time))
        .or(last_seen);
    Some(EventObs {
        uid: ev.metadata.uid.clone()?,
        count: u32::try_from(count).unwrap_or(1),
        reason: ev.reason.clone().unwrap_or_default(),
        message: ev.message.clone().unwrap_or_default(),
        pod: PodRef {
            namespace: o.namespace.clone().unwrap_or_default(),
            name: o.name.clone().unwrap_or_default(),
            uid: o.uid.clone().unwrap_or_default(),
        },
        first_seen,
        last_seen,
    })
}

/// What a container status says about its image pull.
fn pull_state(cs: &ContainerStatus) -> PullState {
    let Some(state) = &cs.state else {
        return PullState::Waiting;
    };
    if let Some(w) = &state.waiting {
        let message = w.message.clone().unwrap_or_default();
        return match w.reason.as_deref() {
            Some("ErrImagePull" | "RegistryUnavailable" | "SignatureValidationFailed") => {
                PullState::Failed(message)
            }
            Some("ImagePullBackOff") => PullState::BackOff(message),
            _ => PullState::Waiting,
        };
    }
    if state.running.is_some() || state.terminated.is_some() {
        PullState::Present
    } else {
        PullState::Waiting
    }
}

/// The tracker's view of a pod, or `None` without a UID.
pub fn pod_obs(p: &Pod) -> Option<PodObs> {
    let pod = PodRef {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone()?,
    };
    let mut containers = Vec::new();
    if let Some(status) = &p.status {
        for list in [
            &status.init_container_statuses,
            &status.container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        {
            for cs in list {
                containers.push(ContainerObs {
                    name: cs.name.clone(),
                    image: spec_image(p, &cs.name).unwrap_or_else(|| cs.image.clone()),
                    state: pull_state(cs),
                });
            }
        }
    }
    Some(PodObs {
        pod,
        created: p.metadata.creation_timestamp.as_ref().map(system_time),
        containers,
    })
}

/// The image the pod's spec names for container `name` (statuses of running containers show
/// the resolved image instead).
fn spec_image(p: &Pod, name: &str) -> Option<String> {
    let spec = p.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .and_then(|c| c.image.clone())
        .or_else(|| {
            spec.ephemeral_containers
                .iter()
                .flatten()
                .find(|c| c.name == name)
                .and_then(|c| c.image.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> Event {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn kubelet_events_of_this_node_only() {
        let mut j = serde_json::json!({
            "metadata": {"name": "web-1.17f", "namespace": "shop", "uid": "ev-1"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "pod-1",
                               "fieldPath": "spec.containers{app}"},
            "reason": "Failed",
            "message": "Failed to pull image \"nginx:nope\": not found",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-11-25T10:00:00Z",
            "lastTimestamp": "2026-11-25T10:05:00Z",
            "count": 3,
            "type": "Warning"
        });
        let obs = event_obs(&event(j.clone()), "node-a").unwrap();
        assert_eq!(obs.count, 3);
        assert_eq!(obs.pod.uid, "pod-1");
        assert_eq!(
            obs.last_seen
                .unwrap()
                .duration_since(obs.first_seen.unwrap())
                .ok(),
            Some(Duration::from_secs(300))
        );
        assert!(event_obs(&event(j.clone()), "node-b").is_none());
        // events.k8s.io-style (series, reportingInstance, no source.host).
        j["source"] = serde_json::json!({"component": "kubelet", "host": ""});
        j["reportingInstance"] = "node-b".into();
        j["series"] =
            serde_json::json!({"count": 9, "lastObservedTime": "2026-11-25T10:09:00.000000Z"});
        let obs = event_obs(&event(j), "node-b").unwrap();
        assert_eq!(obs.count, 9);
    }

    #[test]
    fn container_states_and_spec_images() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "pod-1",
                         "creationTimestamp": "2026-11-25T10:00:00Z"},
            "spec": {"nodeName": "node-a",
                     "initContainers": [{"name": "init", "image": "busybox"}],
                     "containers": [{"name": "app", "image": "nginx:nope"}, {"name": "side", "image": "envoy:1"}]},
            "status": {
                "initContainerStatuses": [{"name": "init", "image": "docker.io/library/busybox:latest", "imageID": "", "ready": true, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0}}}],
                "containerStatuses": [
                    {"name": "app", "image": "nginx:nope", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "ErrImagePull", "message": "rpc error: code = NotFound desc = not found"}}},
                    {"name": "side", "image": "envoy:1", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"envoy:1\""}}}
                ]}
        }))
        .unwrap();
        let obs = pod_obs(&p).unwrap();
        let states: Vec<(&str, &str, &PullState)> = obs
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_str(), &c.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("init", "busybox", &PullState::Present),
                (
                    "app",
                    "nginx:nope",
                    &PullState::Failed("rpc error: code = NotFound desc = not found".into())
                ),
                (
                    "side",
                    "envoy:1",
                    &PullState::BackOff("Back-off pulling image \"envoy:1\"".into())
                ),
            ]
        );
        assert!(obs.created.is_some());
    }
}
