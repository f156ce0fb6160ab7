//! The gate every attempt passes: the one place that decides which source's attempts count
//! ([`Authority`]), then records each counted [`PullAttempt`] into the attempt families, the
//! backoff tracker, the pulls view and the event log. A source makes one call per fact it
//! learns (`record`, `content_recorded`, `backing_off`, `pull_announced`, ...) and never
//! touches a sink. Its rooms:
//!
//! - [`authority`]: whose attempts count;
//! - [`join`]: an observed success waits for containerd's content record of the same image
//!   (its anatomy, [`crate::core::anatomy`]), so one event line and one `registry` label carry
//!   both; a record nobody claims counts on its own;
//! - [`labels`]: label caps and the host→registry mapping;
//! - [`in_flight`]: pulls in progress and download progress, passed on to the pulls view;
//! - [`backoff`]: kubelet's back-off signals;
//! - [`metrics`]: the families and what each scrape renders;
//! - [`config`]: flags and settings.

mod authority;
mod backoff;
mod config;
mod in_flight;
mod join;
mod labels;
mod metrics;

pub(crate) use crate::sinks::event_log::Stalled;
pub(crate) use authority::{Authority, Sources};
pub(crate) use config::RecorderArgs;
pub use config::RecorderConfig;
pub(crate) use in_flight::InFlight;
pub(crate) use metrics::ByRegistry;

use crate::core::anatomy::{Anatomy, ContentRecord, Phase};
use crate::core::attempt::{Outcome, PodRef, PullAttempt, Source, registry_of_image};
use crate::core::backoff::BackoffTracker;
use crate::core::cardinality::{Claim, LabelGuard, LabelName};
use crate::core::endpoints::{EndpointReport, EndpointWitness};
use crate::sinks::event_log;
use crate::sinks::pulls::PullsView;
use crate::telemetry::{GaugeFamily, MetricsError, MetricsRegistry};
use authority::AuthorityCell;
use join::{Fate, Half, JoinQueue};
use metrics::{
    AttemptMetrics, Cache, RegistryCache, RegistryPhase, RegistryReason, RegistryResult,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The recorder's clock: tokio's, so tests with paused time move it (outside a runtime, and
/// always in release builds without tokio's test clock, it is the monotonic clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Records attempts into every sink.
pub struct Recorder {
    metrics: AttemptMetrics,
    render: Arc<metrics::Rendered>,
    registries: Arc<LabelGuard>,
    namespaces: Arc<LabelGuard>,
    images: Option<LabelGuard>,
    /// The sources running now (a source that could not start, the tap on a kernel that
    /// refuses it, is taken out), and the authority they make.
    authority: AuthorityCell,
    /// With an observer as authority and the containerd source on: successes and content
    /// records waiting for each other.
    joins: Option<Mutex<JoinQueue>>,
    host_ports: Mutex<labels::HostPorts>,
    announced: Mutex<in_flight::Announced>,
    pulls: Arc<PullsView>,
    /// What says which registry endpoint served each pull, when mirrors are watched.
    witness: std::sync::OnceLock<Arc<dyn EndpointWitness>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("authority", &self.authority())
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Builds the recorder and registers its families (and its render hook) in `registry`.
    pub fn new(config: &RecorderConfig, registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let registries = Arc::new(LabelGuard::new(LabelName::Registry, config.max_registries));
        let namespaces = Arc::new(LabelGuard::new(LabelName::Namespace, config.max_namespaces));
        let render = Arc::new(metrics::Rendered {
            backoff: Mutex::new(BackoffTracker::new(config.backoff_expiry)),
            gauge: GaugeFamily::register(
                registry,
                crate::family_name!("pullwatch_image_pull_backoff"),
            )?,
            by_image: config.image_label_cap.map(|_| Default::default()),
            registries: registries.clone(),
            namespaces: namespaces.clone(),
        });
        registry.add_hook(render.clone());
        Ok(Self {
            metrics: AttemptMetrics::register(registry)?,
            render,
            registries,
            namespaces,
            images: config
                .image_label_cap
                .map(|cap| LabelGuard::new(LabelName::Image, cap)),
            authority: AuthorityCell::new(config.sources),
            joins: config.join_content.map(|w| Mutex::new(JoinQueue::new(w))),
            host_ports: Mutex::default(),
            announced: Mutex::default(),
            pulls: Arc::default(),
            witness: std::sync::OnceLock::new(),
        })
    }

    /// From now on, `witness` is told of every pull's start and end, and says which registry
    /// endpoints served each finished attempt (set once; a second witness is ignored).
    pub(crate) fn witness_endpoints(&self, witness: Arc<dyn EndpointWitness>) {
        if self.witness.set(witness).is_err() {
            tracing::debug!("an endpoint witness is already set");
        }
    }

    fn witness(&self) -> Option<&dyn EndpointWitness> {
        self.witness.get().map(|w| &**w)
    }

    /// The attempt authority now.
    pub fn authority(&self) -> Authority {
        self.authority.get()
    }

    /// Whether attempts from `source` are recorded now (for a source's own statements about
    /// attempts, such as how many it deduplicated).
    pub(crate) fn records_attempts_from(&self, source: Source) -> bool {
        self.authority().accepts(source)
    }

    /// `source` could not start (the tap on a kernel that refuses BPF): the authority is
    /// decided again without it, so the next source's attempts count instead.
    pub(crate) fn source_unavailable(&self, source: Source) {
        let authority = self.authority.without(source);
        tracing::info!(
            unavailable = source.as_str(),
            attempts_from = authority.as_str(),
            "attempts are recorded from the sources that run"
        );
    }

    /// A finished attempt from any source: recorded if its source is the attempt authority.
    /// An observed success first waits for its content record when the containerd source runs.
    pub(crate) fn record(&self, attempt: &PullAttempt) {
        if !self.records_attempts_from(attempt.source) {
            tracing::trace!(
                source = attempt.source.as_str(),
                "attempt not recorded: another source is the attempt authority"
            );
            return;
        }
        let observed = matches!(attempt.source, Source::CriProxy | Source::CriTap);
        if let (Some(joins), true, Outcome::Success { .. }) =
            (&self.joins, observed, &attempt.outcome)
        {
            let fate = lock(joins).offer(Half::Attempt(Box::new(attempt.clone())), now());
            return self.settle(fate);
        }
        self.record_attempt(attempt, None);
    }

    /// The containerd source's record of a finished pull; `created` when the image record is
    /// new (an update is a re-pull only if an observed pull claims it: the runtime also updates
    /// a record's labels right after creating it). Where containerd is the attempt authority a
    /// new record is the attempt; otherwise it joins the observed attempt of the same image
    /// (waiting up to the join window), or counts its content on its own if new.
    pub(crate) fn content_recorded(&self, record: ContentRecord, created: bool) {
        self.image_seen(&record.image);
        if self.records_attempts_from(Source::Containerd) {
            if created && let Some((attempt, anatomy)) = record.passive_attempt() {
                self.record_attempt(&attempt, Some(&anatomy));
            }
            return;
        }
        let unclaimed = if created {
            join::Unclaimed::Count
        } else {
            join::Unclaimed::Drop
        };
        let half = Half::Record(record, unclaimed);
        let fate = match &self.joins {
            Some(joins) => lock(joins).offer(half, now()),
            None => Fate::Alone(half),
        };
        self.settle(fate);
    }

    /// Records what the join made of a half.
    fn settle(&self, fate: Fate) {
        match fate {
            Fate::Joined(attempt, record) => {
                let end = attempt.started_at + attempt.duration.unwrap_or_default();
                let anatomy = record.anatomy(Some(attempt.started_at), end);
                self.record_attempt(&attempt, Some(&anatomy));
            }
            Fate::Waits => {}
            Fate::Alone(half) => self.record_alone(half),
        }
    }

    fn record_alone(&self, half: Half) {
        match half {
            Half::Attempt(attempt) => self.record_attempt(&attempt, None),
            Half::Record(record, join::Unclaimed::Count) => self.record_content_alone(&record),
            Half::Record(_, join::Unclaimed::Drop) => {}
        }
    }

    /// Records what waited past the join window at `now`, unjoined.
    fn flush_expired(&self, now: Instant) {
        let Some(joins) = &self.joins else { return };
        let halves = lock(joins).expired(now);
        for h in halves {
            self.record_alone(h);
        }
    }

    /// Records everything still waiting to be joined and stops joining (at shutdown: attempts
    /// of calls still draining are recorded at once).
    pub(crate) fn flush_joins(&self) {
        let Some(joins) = &self.joins else { return };
        let halves = lock(joins).close();
        for h in halves {
            self.record_alone(h);
        }
    }

    /// Whether anything waits to be joined (so a join task must run).
    pub(crate) fn joins(&self) -> bool {
        self.joins.is_some()
    }

    /// Records attempts and content records whose join window passed, every 100 ms, until
    /// `stop`; then everything still waiting.
    pub(crate) async fn join_expiry(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_expired(now()),
                () = stop.cancelled() => return self.flush_joins(),
            }
        }
    }

    /// A content record no attempt claimed (another authority, or the attempt came too late):
    /// its bytes, layers and the phases its own content measures.
    fn record_content_alone(&self, content: &ContentRecord) {
        let registry = registry_of_image(&content.image);
        let anatomy = content.anatomy(None, content.recorded_at);
        let registry = self.label(&self.registries, &registry, Claim::Proven, true);
        self.record_anatomy(registry, &anatomy);
    }

    fn record_anatomy(&self, registry: &str, anatomy: &Anatomy) {
        let m = &self.metrics;
        for (phase, seconds) in &anatomy.phases {
            let labels = RegistryPhase {
                registry,
                phase: *phase,
            };
            m.phases.observe(&labels, *seconds);
        }
        let by = ByRegistry { registry };
        m.bytes.with(&by).inc_by(anatomy.downloaded_bytes);
        m.cached_bytes.with(&by).inc_by(anatomy.cached_bytes);
        for (cache, n) in [
            (Cache::Miss, anatomy.layers_downloaded),
            (Cache::Hit, anatomy.layers_cached),
        ] {
            m.layers.with(&RegistryCache { registry, cache }).inc_by(n);
        }
    }

    /// kubelet held a pull of `image` for `seconds` before calling the runtime (its `Pulled`
    /// event's `including waiting` time minus its pull time).
    pub(crate) fn observe_queue(&self, image: &str, seconds: f64) {
        let registry = registry_of_image(image);
        let registry = self.admit(&self.registries, &registry);
        let labels = RegistryPhase {
            registry,
            phase: Phase::Queue,
        };
        self.metrics.phases.observe(&labels, seconds);
    }

    /// Records one attempt of the authority with its anatomy, if known: the only way into the
    /// attempt families, the backoff tracker, the pulls view and the event log.
    fn record_attempt(&self, attempt: &PullAttempt, anatomy: Option<&Anatomy>) {
        if !attempt.is_bounded() {
            return self.record_attempt(&attempt.clone().bounded(), anatomy);
        }
        let claim = match attempt.outcome {
            Outcome::Success { .. } => Claim::Proven,
            Outcome::Failure { .. } => Claim::Seen,
        };
        let registry = self.label(&self.registries, attempt.registry(), claim, true);
        let result = attempt.outcome.result();
        let labels = RegistryResult { registry, result };
        self.metrics.pulls.inc(&labels);
        if let Some(d) = attempt.duration {
            self.metrics.duration.observe(&labels, d.as_secs_f64());
        }
        if let Some(reason) = attempt.outcome.reason() {
            self.metrics
                .failures
                .inc(&RegistryReason { registry, reason });
        }
        if let (Some(guard), Some(by_image)) = (&self.images, &self.render.by_image) {
            let image = attempt
                .reference
                .as_ref()
                .map_or_else(|| attempt.image.clone(), ToString::to_string);
            let image = self.admit(guard, &image);
            by_image.inc(image, matches!(attempt.outcome, Outcome::Success { .. }));
        }
        if let Some(pod) = &attempt.pod {
            // Admit the namespace now so the backoff gauge never exceeds the cap.
            let mut a = attempt.clone();
            a.pod = Some(PodRef {
                namespace: self.admit(&self.namespaces, &pod.namespace).to_string(),
                ..pod.clone()
            });
            self.backoff().observe(&a, registry, now());
        }
        if let Some(anatomy) = anatomy {
            self.record_anatomy(registry, anatomy);
        }
        let endpoints: Option<EndpointReport> = self.witness().and_then(|w| {
            let failed = result == crate::core::attempt::AttemptResult::Failure;
            w.pull_ended(attempt.registry(), attempt.started_at, failed)
        });
        self.pulls.finished(attempt, endpoints.as_ref());
        event_log::emit(attempt, anatomy, endpoints.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::attempt::{Outcome, PodRef, Source};
    use crate::core::reason::Reason;
    use crate::core::reference::ImageRef;
    use crate::telemetry::MetricsRegistry;
    use std::time::SystemTime;
    use tonic::Code;

    pub(super) fn attempt(image: &str, ns: &str, outcome: Outcome) -> PullAttempt {
        PullAttempt {
            image: image.into(),
            reference: ImageRef::parse(image).ok(),
            pod: Some(PodRef {
                namespace: ns.into(),
                name: "p".into(),
                uid: "u".into(),
            }),
            started_at: SystemTime::now(),
            duration: Some(Duration::from_millis(1500)),
            outcome,
            source: Source::CriProxy,
            trace: None,
            credentials: None,
            readout: None,
        }
    }

    #[test]
    fn records_counts_histogram_failures_and_backoff() {
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&RecorderConfig::default(), &reg).unwrap();
        r.record(&attempt(
            "nginx",
            "web",
            Outcome::Success {
                image_ref: "sha256:a".into(),
            },
        ));
        r.record(&attempt(
            "quay.io/x/y:1",
            "web",
            Outcome::failure(Code::Unknown, "y:1: not found"),
        ));
        let text = reg.render();
        for line in [
            "pullwatch_image_pulls_total{registry=\"docker.io\",result=\"success\"} 1",
            "pullwatch_image_pulls_total{registry=\"quay.io\",result=\"failure\"} 1",
            "pullwatch_image_pull_failures_total{reason=\"not_found\",registry=\"quay.io\"} 1",
            "pullwatch_image_pull_duration_seconds_bucket{registry=\"docker.io\",result=\"success\",le=\"2.5\"} 1",
            "pullwatch_image_pull_duration_seconds_bucket{registry=\"docker.io\",result=\"success\",le=\"1\"} 0",
            "pullwatch_image_pull_backoff{namespace=\"web\",reason=\"not_found\",registry=\"quay.io\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    fn content(image: &str, committed: SystemTime) -> ContentRecord {
        use crate::core::anatomy::{Blob, BlobKind};
        let blob = |digest: &str, kind, size, at| Blob {
            digest: digest.into(),
            kind,
            size,
            committed_at: at,
            started_at: None,
            counted_before: false,
        };
        ContentRecord {
            image: image.into(),
            blobs: vec![
                blob("sha256:m", BlobKind::Manifest, 100, committed),
                blob("sha256:new", BlobKind::Layer, 1000, committed),
                // In the store long before: reused.
                blob(
                    "sha256:old",
                    BlobKind::Layer,
                    50,
                    committed - Duration::from_secs(3600),
                ),
            ],
            recorded_at: committed + Duration::from_millis(200),
        }
    }

    #[test]
    fn a_success_waits_for_its_content_and_both_share_one_registry() {
        let cfg = RecorderConfig {
            join_content: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&cfg, &reg).unwrap();
        let ok = Outcome::Success {
            image_ref: "sha256:a".into(),
        };
        let a = attempt("127.0.0.1:5000/team/app:1", "web", ok.clone());
        r.record(&a);
        let value = |name: &str, labels: &[(&str, &str)]| reg.value(name, labels);
        assert_eq!(value("pullwatch_image_pulls_total", &[]), 0.0, "waits");
        let committed = a.started_at + Duration::from_millis(300);
        r.content_recorded(content("127.0.0.1:5000/team/app:1", committed), false);
        let port = [("registry", "127.0.0.1:5000")];
        assert_eq!(value("pullwatch_image_pulls_total", &port), 1.0);
        assert_eq!(value("pullwatch_image_pull_bytes_total", &port), 1100.0);
        assert_eq!(
            value("pullwatch_image_pull_cached_bytes_total", &port),
            50.0
        );
        let layers = |cache| {
            value(
                "pullwatch_image_pull_layers_total",
                &[port[0], ("cache", cache)],
            )
        };
        assert_eq!((layers("miss"), layers("hit")), (1.0, 1.0));
        let resolve = [port[0], ("phase", "resolve")];
        assert_eq!(value("pullwatch_image_pull_phase_seconds", &resolve), 1.0);
        let text = reg.render();
        let sum = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "pullwatch_image_pull_phase_seconds_sum{phase=\"resolve\",registry=\"127.0.0.1:5000\"} ",
                )
            })
            .and_then(|v| v.parse::<f64>().ok());
        assert!(sum.is_some_and(|s| (s - 0.3).abs() < 1e-6), "{text}");
        // A record nobody claims, and an attempt whose record never comes: counted once the
        // window passes, each on its own.
        r.content_recorded(content("docker.io/library/nginx:1", committed), true);
        r.content_recorded(content("quay.io/x/y:1", committed), false);
        r.record(&attempt("quay.io/a/b:1", "web", ok.clone()));
        assert_eq!(value("pullwatch_image_pulls_total", &[]), 1.0);
        r.flush_joins();
        assert_eq!(
            value("pullwatch_image_pulls_total", &[("registry", "quay.io")]),
            1.0
        );
        // Once the join task has stopped (shutdown), successes are recorded at once.
        r.record(&attempt("quay.io/a/c:1", "web", ok));
        assert_eq!(
            value("pullwatch_image_pulls_total", &[("registry", "quay.io")]),
            2.0
        );
        let hub = [("registry", "docker.io")];
        assert_eq!(value("pullwatch_image_pull_bytes_total", &hub), 1100.0);
        assert_eq!(value("pullwatch_image_pulls_total", &hub), 0.0);
        assert_eq!(r.joins.as_ref().map(|j| lock(j).waiting()), Some(0));
    }

    #[test]
    fn downloads_without_a_port_map_to_the_one_registry_on_that_host() {
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&RecorderConfig::default(), &reg).unwrap();
        assert_eq!(r.registry_of_host("127.0.0.1"), "127.0.0.1");
        drop(r.pull_started("127.0.0.1:5000"));
        assert_eq!(r.registry_of_host("127.0.0.1"), "127.0.0.1:5000");
        drop(r.pull_started("127.0.0.1:5001"));
        assert_eq!(
            r.registry_of_host("127.0.0.1"),
            "127.0.0.1",
            "two: ambiguous"
        );
        assert_eq!(r.registry_of_host("127.0.0"), "127.0.0");
        // An image name containerd recorded says it too, before any pull.
        r.image_seen("10.0.0.1:5000/a:1");
        assert_eq!(r.registry_of_host("10.0.0.1"), "10.0.0.1:5000");
    }

    #[test]
    fn caps_overflow_to_other_and_are_counted() {
        let cfg = RecorderConfig {
            max_registries: 1,
            image_label_cap: Some(1),
            ..Default::default()
        };
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&cfg, &reg).unwrap();
        let ok = || Outcome::Success {
            image_ref: "x".into(),
        };
        r.record(&attempt("a.io/x", "n", ok()));
        r.record(&attempt("b.io/x", "n", ok()));
        r.record(&attempt("c.io/x", "n", ok()));
        let text = reg.render();
        assert!(
            text.contains("pullwatch_image_pulls_total{registry=\"other\",result=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pullwatch_label_overflow_total{label=\"registry\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "pullwatch_image_pulls_by_image_total{image=\"a.io/x:latest\",result=\"success\"} 1"
        ));
        assert!(text.contains(
            "pullwatch_image_pulls_by_image_total{image=\"other\",result=\"success\"} 2"
        ));
    }

    #[test]
    fn only_the_attempt_authority_records_attempts() {
        let tap = Sources {
            tap: true,
            kube: true,
            ..Sources::default()
        };
        // A tap that cannot load hands the authority on.
        let reg = MetricsRegistry::new().unwrap();
        let cfg = RecorderConfig {
            sources: tap,
            ..RecorderConfig::default()
        };
        let r = Recorder::new(&cfg, &reg).unwrap();
        assert!(r.records_attempts_from(Source::CriTap));
        r.source_unavailable(Source::CriTap);
        assert_eq!(r.authority(), Authority::KubeApi);
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&RecorderConfig::default(), &reg).unwrap();
        let mut from_kube = attempt(
            "a.io/x:1",
            "n",
            Outcome::failure(Code::Unknown, "x: not found"),
        );
        from_kube.source = Source::Kube;
        r.record(&from_kube);
        assert_eq!(reg.value("pullwatch_image_pulls_total", &[]), 0.0);
        // Backoff signals still count from any source.
        let pod = from_kube.pod.clone().unwrap();
        r.backing_off(&pod, "a.io/x:1", Some(Reason::NotFound));
        r.backing_off(&pod, "a.io/x:1", Some(Reason::NotFound));
        assert_eq!(reg.value("pullwatch_image_pull_backoff", &[]), 1.0);
        let mut from_proxy = from_kube;
        from_proxy.source = Source::CriProxy;
        r.record(&from_proxy);
        assert_eq!(
            reg.value("pullwatch_image_pulls_total", &[("result", "failure")]),
            1.0
        );
    }
}
