//! The pipeline every source feeds: decides which source's attempts count (one authority per
//! agent), applies the cardinality guards, then updates the attempt metrics, the backoff tracker
//! and the event log for each [`PullAttempt`]. It owns the attempt families; sources own theirs.
//!
//! It also joins each pull to its anatomy ([`crate::core::anatomy`]): the interposer's
//! successful attempt waits up to [`RecorderConfig::join_content`] for the containerd source's
//! record of the same image, so one event line and one `registry` label carry both; a record
//! nobody claims counts on its own (bytes, layers, the phases it can measure).

use crate::core::anatomy::{Anatomy, ContentRecord, Phase};
use crate::core::attempt::{Outcome, PodRef, PullAttempt, Source};
use crate::core::backoff::BackoffTracker;
use crate::core::cardinality::{Admission, Claim, LabelGuard, OVERFLOW_VALUE};
use crate::core::reason::Reason;
use crate::core::reference::{ImageRef, split_port};
use crate::sinks::event_log;
use crate::sinks::image_counts::{self, ImagePullCounts};
use crate::telemetry::{
    CounterFamily, ForgetValue, GaugeFamily, HistogramFamily, MetricsError, MetricsRegistry,
    PHASE_BUCKETS, PULL_BUCKETS, RenderHook,
};
use crate::sinks::pulls::PullsView;
use prometheus::IntGauge;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an interposer success waits for its content record when the containerd source is
/// on (containerd writes the record, and sends its event, before it answers the call).
pub const JOIN_WAIT: Duration = Duration::from_secs(2);
/// Attempts (and records) waiting to be joined at most; beyond, they count unjoined at once.
const MAX_WAITING: usize = 1024;
/// How much earlier than an attempt's start its content record may be stamped (containerd's
/// clock and pullwatch's are read at different moments).
const JOIN_SLACK: Duration = Duration::from_millis(50);

/// Flags of the recorder: label caps and the backoff window.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Labels and backoff")]
pub struct RecorderArgs {
    /// A failing pod/image pair leaves `pullwatch_image_pull_backoff` after this long without a
    /// new attempt (kubelet's backoff caps at 5m, so a pair still retrying comes back sooner).
    #[arg(
        long,
        env = "PULLWATCH_BACKOFF_EXPIRY",
        default_value = "10m",
        value_name = "DURATION",
        value_parser = crate::flags::positive_duration
    )]
    pub backoff_expiry: Duration,

    /// Distinct `registry` label values kept; later ones are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_MAX_REGISTRIES",
        default_value_t = 100,
        value_name = "N",
        value_parser = crate::flags::positive_count
    )]
    pub max_registries: usize,

    /// Distinct `namespace` label values kept; later ones are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_MAX_NAMESPACES",
        default_value_t = 1000,
        value_name = "N",
        value_parser = crate::flags::positive_count
    )]
    pub max_namespaces: usize,

    /// Also export `pullwatch_image_pulls_by_image_total` with an `image` label (off by default:
    /// image names are high-cardinality).
    #[arg(long, env = "PULLWATCH_IMAGE_LABEL")]
    pub image_label: bool,

    /// With --image-label: distinct images kept before the rest are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_IMAGE_LABEL_CAP",
        default_value_t = 100,
        value_name = "N",
        value_parser = crate::flags::positive_count
    )]
    pub image_label_cap: usize,
}

/// Limits and switches of the recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// How long a failing pod/image pair stays in the backoff gauge without a new attempt.
    pub backoff_expiry: Duration,
    /// Distinct `registry` label values before overflow to `other`.
    pub max_registries: usize,
    /// Distinct `namespace` label values before overflow to `other`.
    pub max_namespaces: usize,
    /// Export `pullwatch_image_pulls_by_image_total` with at most this many images.
    pub image_label_cap: Option<usize>,
    /// The attempt sources enabled; the recorder decides from those running which one's
    /// attempts count ([`Authority`]).
    pub sources: Sources,
    /// With an observer (interposer, tap) as authority and the containerd source on: how long
    /// a successful attempt waits for its content record (its anatomy). `None`: no waiting.
    pub join_content: Option<Duration>,
}

/// The sources of attempts an agent runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    /// The CRI interposer.
    pub interposer: bool,
    /// The kernel tap.
    pub tap: bool,
    /// The Kubernetes API source.
    pub kube: bool,
    /// The containerd source.
    pub containerd: bool,
}

/// Whose attempts count, so no pull is counted twice: the observers of CRI calls (the
/// interposer and the tap: exact, and never the same connection, as the tap does not follow
/// pullwatch's own connections to the runtime), else the Kubernetes API (failures and
/// successes with kubelet's durations), else containerd (passive successes). The others still
/// feed their own families and the signals around attempts (backoff, queue, progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The interposer's and the tap's attempts.
    Observed,
    /// The Kubernetes API source's.
    KubeApi,
    /// The containerd source's.
    Containerd,
    /// None: no source of attempts runs.
    Nobody,
}

impl Authority {
    /// The authority among `sources`.
    pub fn of(sources: Sources) -> Self {
        if sources.interposer || sources.tap {
            Authority::Observed
        } else if sources.kube {
            Authority::KubeApi
        } else if sources.containerd {
            Authority::Containerd
        } else {
            Authority::Nobody
        }
    }

    /// Whether attempts from `source` count.
    pub fn accepts(self, source: Source) -> bool {
        matches!(
            (self, source),
            (Authority::Observed, Source::CriProxy | Source::CriTap)
                | (Authority::KubeApi, Source::Kube)
                | (Authority::Containerd, Source::Containerd)
        )
    }

    /// Log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Observed => "observed CRI calls",
            Authority::KubeApi => "kubernetes API",
            Authority::Containerd => "containerd",
            Authority::Nobody => "none",
        }
    }
}

impl RecorderConfig {
    /// The recorder's settings (its flags' values were checked as they were parsed) for an
    /// agent running `sources`: an observer's successes wait for containerd's content record
    /// when the containerd source runs too.
    pub fn from_args(args: &RecorderArgs, sources: Sources) -> Self {
        let observed = Authority::of(sources) == Authority::Observed;
        Self {
            backoff_expiry: args.backoff_expiry,
            max_registries: args.max_registries,
            max_namespaces: args.max_namespaces,
            image_label_cap: args.image_label.then_some(args.image_label_cap),
            sources,
            join_content: (observed && sources.containerd).then_some(JOIN_WAIT),
        }
    }
}

impl Default for RecorderConfig {
    /// Default limits; attempts from the interposer.
    fn default() -> Self {
        Self {
            backoff_expiry: crate::core::backoff::DEFAULT_EXPIRY,
            max_registries: 100,
            max_namespaces: 1000,
            image_label_cap: None,
            sources: Sources {
                interposer: true,
                ..Sources::default()
            },
            join_content: None,
        }
    }
}

crate::label_set! {
    /// Labels of the attempt counters and the duration histogram.
    pub(crate) struct RegistryResult<'a> { registry: &'a str, result: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_failures_total`.
    pub(crate) struct RegistryReason<'a> { registry: &'a str, reason: Reason }
}

crate::label_set! {
    /// Labels of families per registry.
    pub(crate) struct ByRegistry<'a> { registry: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_phase_seconds`.
    pub(crate) struct RegistryPhase<'a> { registry: &'a str, phase: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_layers_total`.
    pub(crate) struct RegistryCache<'a> { registry: &'a str, cache: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_backoff`.
    pub(crate) struct BackoffLabels<'a> { namespace: &'a str, registry: &'a str, reason: Reason }
}

crate::label_set! {
    /// Labels of `pullwatch_label_overflow_total`.
    pub(crate) struct OverflowLabels<'a> { label: &'a str }
}

/// The attempt families.
struct AttemptMetrics {
    pulls: CounterFamily<RegistryResult<'static>>,
    failures: CounterFamily<RegistryReason<'static>>,
    duration: HistogramFamily<RegistryResult<'static>>,
    in_flight: GaugeFamily<ByRegistry<'static>>,
    label_overflow: CounterFamily<OverflowLabels<'static>>,
    label_evictions: CounterFamily<OverflowLabels<'static>>,
    phases: HistogramFamily<RegistryPhase<'static>>,
    layers: CounterFamily<RegistryCache<'static>>,
    bytes: CounterFamily<ByRegistry<'static>>,
    cached_bytes: CounterFamily<ByRegistry<'static>>,
}

impl AttemptMetrics {
    fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            pulls: CounterFamily::register(reg, "pullwatch_image_pulls_total")?,
            failures: CounterFamily::register(reg, "pullwatch_image_pull_failures_total")?,
            duration: HistogramFamily::register(
                reg,
                "pullwatch_image_pull_duration_seconds",
                &PULL_BUCKETS,
            )?,
            in_flight: GaugeFamily::register(reg, "pullwatch_image_pulls_in_flight")?,
            label_overflow: CounterFamily::register(reg, "pullwatch_label_overflow_total")?,
            label_evictions: CounterFamily::register(reg, "pullwatch_label_evictions_total")?,
            phases: HistogramFamily::register(
                reg,
                "pullwatch_image_pull_phase_seconds",
                &PHASE_BUCKETS,
            )?,
            layers: CounterFamily::register(reg, "pullwatch_image_pull_layers_total")?,
            bytes: CounterFamily::register(reg, "pullwatch_image_pull_bytes_total")?,
            cached_bytes: CounterFamily::register(reg, "pullwatch_image_pull_cached_bytes_total")?,
        })
    }

    /// The families with a `registry` label, whose series go when a registry loses its slot.
    fn by_registry(&self) -> [&dyn ForgetValue; 8] {
        [
            &self.pulls,
            &self.failures,
            &self.duration,
            &self.in_flight,
            &self.phases,
            &self.layers,
            &self.bytes,
            &self.cached_bytes,
        ]
    }
}

/// What the recorder does at each render: the backoff gauge from the tracker, and the per-image
/// family kept outside the registry.
struct RenderState {
    backoff: Arc<Mutex<BackoffTracker>>,
    gauge: GaugeFamily<BackoffLabels<'static>>,
    by_image: Option<Arc<ImagePullCounts>>,
    registries: Arc<LabelGuard>,
    namespaces: Arc<LabelGuard>,
}

impl RenderHook for RenderState {
    fn refresh(&self) {
        let groups = lock(&self.backoff).snapshot(Instant::now());
        self.gauge.reset();
        // A pair entered under a value that has since lost its slot counts as `other`: added,
        // since several such values share that series.
        let current = |guard: &LabelGuard, v: String| {
            if v == OVERFLOW_VALUE || guard.contains(&v) {
                v
            } else {
                OVERFLOW_VALUE.to_string()
            }
        };
        for ((namespace, registry, reason), n) in groups {
            let labels = BackoffLabels {
                namespace: &current(&self.namespaces, namespace),
                registry: &current(&self.registries, registry),
                reason,
            };
            self.gauge
                .with(&labels)
                .add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn append(&self, out: &mut String) {
        if let Some(by_image) = &self.by_image {
            let help = crate::telemetry::family(image_counts::NAME).map_or("", |f| f.help);
            by_image.encode(help, out);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Items waiting to be joined, by image key, each with the moment it stops waiting.
type Waiting<T> = HashMap<String, VecDeque<(T, Instant)>>;

/// Attempts waiting for their content record, and records waiting for their attempt, by image
/// (first come, first joined), each with the moment it stops waiting.
#[derive(Default)]
struct Joins {
    attempts: Waiting<PullAttempt>,
    records: Waiting<(ContentRecord, Unclaimed)>,
    waiting: usize,
}

impl Joins {
    /// The first item waiting under `key` that `fits`; those before it that do not fit are
    /// left to wait out their window.
    fn take<T>(map: &mut Waiting<T>, key: &str, fits: impl Fn(&T) -> bool) -> Option<T> {
        let queue = map.get_mut(key)?;
        let at = queue.iter().position(|(t, _)| fits(t))?;
        let item = queue.remove(at).map(|(t, _)| t);
        if queue.is_empty() {
            map.remove(key);
        }
        item
    }

    /// What waits past `now` (everything, for `None`), removed.
    fn expired<T>(map: &mut Waiting<T>, now: Option<Instant>) -> Vec<T> {
        let mut out = Vec::new();
        map.retain(|_, queue| {
            while queue
                .front()
                .is_some_and(|(_, until)| now.is_none_or(|n| *until <= n))
            {
                out.extend(queue.pop_front().map(|(t, _)| t));
            }
            !queue.is_empty()
        });
        out
    }
}

/// What becomes of a content record no attempt claims within the join window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclaimed {
    /// It counts on its own (a new image record: a pull happened).
    Count,
    /// It is dropped (an updated image record: a re-pull if an attempt claims it, otherwise
    /// a label update by the runtime, which is no pull).
    Drop,
}

/// Records attempts into every sink.
pub struct Recorder {
    metrics: AttemptMetrics,
    render: Arc<RenderState>,
    registries: Arc<LabelGuard>,
    namespaces: Arc<LabelGuard>,
    images: Option<LabelGuard>,
    /// The sources running now (a source that could not start, the tap on a kernel that
    /// refuses it, is taken out), and the authority they make.
    sources: Mutex<Sources>,
    authority: std::sync::atomic::AtomicU8,
    join_content: Option<Duration>,
    joins: Mutex<Joins>,
    /// Set once the join task has stopped: from then on nothing waits to be joined (it would
    /// never be recorded).
    joins_closed: std::sync::atomic::AtomicBool,
    pulls: Arc<PullsView>,
}

/// Counts one pull in `pullwatch_image_pulls_in_flight`, and shows it in the pulls view, until
/// dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge, Option<(Arc<PullsView>, u64)>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
        if let Some((view, id)) = &self.1 {
            view.ended(*id);
        }
    }
}

impl Recorder {
    /// Builds the recorder and registers its families (and its render hook) in `registry`.
    pub fn new(config: &RecorderConfig, registry: &MetricsRegistry) -> Result<Self, MetricsError> {
        let registries = Arc::new(LabelGuard::new("registry", config.max_registries));
        let namespaces = Arc::new(LabelGuard::new("namespace", config.max_namespaces));
        let render = Arc::new(RenderState {
            backoff: Arc::new(Mutex::new(BackoffTracker::new(config.backoff_expiry))),
            gauge: GaugeFamily::register(registry, "pullwatch_image_pull_backoff")?,
            by_image: config.image_label_cap.map(|_| Arc::default()),
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
                .map(|cap| LabelGuard::new("image", cap)),
            sources: Mutex::new(config.sources),
            authority: std::sync::atomic::AtomicU8::new(Authority::of(config.sources) as u8),
            join_content: config.join_content,
            joins: Mutex::default(),
            joins_closed: std::sync::atomic::AtomicBool::new(false),
            pulls: Arc::default(),
        })
    }

    /// Pulls in progress and the last finished attempts (`GET /pulls`, pod events).
    pub fn pulls(&self) -> &Arc<PullsView> {
        &self.pulls
    }

    /// The attempt authority now.
    pub fn authority(&self) -> Authority {
        match self.authority.load(std::sync::atomic::Ordering::Acquire) {
            0 => Authority::Observed,
            1 => Authority::KubeApi,
            2 => Authority::Containerd,
            _ => Authority::Nobody,
        }
    }

    /// Whether attempts from `source` are recorded (it is the agent's attempt authority).
    pub fn records_attempts_from(&self, source: Source) -> bool {
        self.authority().accepts(source)
    }

    /// `source` could not start (the tap on a kernel that refuses BPF): the authority is
    /// decided again without it, so the next source's attempts count instead.
    pub fn source_unavailable(&self, source: Source) {
        let mut sources = lock(&self.sources);
        match source {
            Source::CriProxy => sources.interposer = false,
            Source::CriTap => sources.tap = false,
            Source::Kube => sources.kube = false,
            Source::Containerd => sources.containerd = false,
        }
        let authority = Authority::of(*sources);
        self.authority
            .store(authority as u8, std::sync::atomic::Ordering::Release);
        tracing::info!(
            unavailable = source.as_str(),
            attempts_from = authority.as_str(),
            "attempts are recorded from the sources that run"
        );
    }

    /// The label value of `value` under `guard`'s slot policy. An overflow is counted when
    /// `counted` (once per attempt, not per signal); a value that lost its slot to this one
    /// loses its series.
    fn label<'a>(
        &self,
        guard: &LabelGuard,
        value: &'a str,
        claim: Claim,
        counted: bool,
    ) -> &'a str {
        let label = guard.label();
        let a = guard.admit_as(value, claim, Instant::now());
        match &a {
            Admission::Overflow if counted => {
                self.metrics.label_overflow.inc(&OverflowLabels { label });
            }
            Admission::Replaced { evicted, .. } => {
                self.metrics.label_evictions.inc(&OverflowLabels { label });
                if label == "registry" {
                    for f in self.metrics.by_registry() {
                        f.forget(label, evicted);
                    }
                }
                if label == "image"
                    && let Some(by_image) = &self.render.by_image
                {
                    by_image.forget(evicted);
                }
                tracing::debug!(label, evicted = %evicted, "a label value gave its slot to a newcomer");
            }
            _ => {}
        }
        a.value()
    }

    /// `label` for an attempt or a signal seen now.
    fn admit<'a>(&self, guard: &LabelGuard, value: &'a str) -> &'a str {
        self.label(guard, value, Claim::Seen, true)
    }

    /// The `registry` label value of downloads from `registry` (real traffic: proven), after
    /// the cardinality cap.
    pub fn registry_label<'a>(&self, registry: &'a str) -> &'a str {
        self.label(&self.registries, registry, Claim::Proven, true)
    }

    /// The registry a download attributed to `host` belongs to: containerd's source labels
    /// drop the port, so the one registry on that host with a port that a pull named stands
    /// for it; otherwise `host` itself.
    pub fn registry_of_host(&self, host: &str) -> String {
        self.registries
            .unique(|r| matches!(split_port(r), (h, Some(_)) if h == host))
            .unwrap_or_else(|| host.to_string())
    }

    /// Marks a pull to `registry` as started; it counts as in flight until the guard drops.
    pub fn pull_started(&self, registry: &str) -> InFlight {
        // Not counted as an overflow here: the attempt's record() counts it once.
        let registry = self.label(&self.registries, registry, Claim::Seen, false);
        let g = self.metrics.in_flight.with(&ByRegistry { registry });
        g.inc();
        InFlight(g, None)
    }

    /// Marks a pull of `image` (for `pod`, if named) as started: in flight, and in the pulls
    /// view, until the guard drops.
    pub fn pull_started_for(
        &self,
        image: &str,
        reference: Option<&ImageRef>,
        pod: Option<PodRef>,
    ) -> InFlight {
        let registry = reference.map_or(crate::core::attempt::UNKNOWN_REGISTRY, |r| {
            r.registry.as_str()
        });
        let mut guard = self.pull_started(registry);
        let repository = reference.map(|r| r.repository.as_str());
        guard.1 = self
            .pulls
            .started(image, registry, repository, pod)
            .map(|id| (self.pulls.clone(), id));
        guard
    }

    /// Records one finished attempt, if it comes from the attempt authority (see
    /// [`RecorderConfig::attempts_from`]). An interposer success first waits for its content
    /// record when [`RecorderConfig::join_content`] says so.
    pub fn record(&self, attempt: &PullAttempt) {
        if !self.records_attempts_from(attempt.source) {
            tracing::trace!(
                source = attempt.source.as_str(),
                "attempt not recorded: another source is the attempt authority"
            );
            return;
        }
        if let (Some(wait), Outcome::Success { .. }, Source::CriProxy | Source::CriTap) =
            (self.join_wait(), &attempt.outcome, attempt.source)
        {
            let key = ImageRef::key(&attempt.image);
            let mut joins = lock(&self.joins);
            // A record written before this attempt started is an earlier pull's (its label
            // update, say): never this one's.
            let fits = |(c, _): &(ContentRecord, Unclaimed)| {
                c.recorded_at + JOIN_SLACK >= attempt.started_at
            };
            if let Some((content, _)) = Joins::take(&mut joins.records, &key, fits) {
                joins.waiting -= 1;
                drop(joins);
                return self.record_joined(attempt, &content);
            }
            if joins.waiting < MAX_WAITING {
                joins.waiting += 1;
                let until = Instant::now() + wait;
                joins
                    .attempts
                    .entry(key)
                    .or_default()
                    .push_back((attempt.clone(), until));
                return;
            }
        }
        self.record_with(attempt, None);
    }

    /// The containerd source's record of a finished pull: joined to the interposer's attempt
    /// for the same image (waiting for it up to the join window); if none claims it, `unclaimed`
    /// says whether it counts on its own.
    pub fn content_recorded(&self, content: ContentRecord, unclaimed: Unclaimed) {
        let key = ImageRef::key(&content.image);
        if let Some(wait) = self.join_wait() {
            let mut joins = lock(&self.joins);
            let fits = |a: &PullAttempt| content.recorded_at + JOIN_SLACK >= a.started_at;
            if let Some(attempt) = Joins::take(&mut joins.attempts, &key, fits) {
                joins.waiting -= 1;
                drop(joins);
                return self.record_joined(&attempt, &content);
            }
            if joins.waiting < MAX_WAITING {
                joins.waiting += 1;
                let until = Instant::now() + wait;
                joins
                    .records
                    .entry(key)
                    .or_default()
                    .push_back(((content, unclaimed), until));
                return;
            }
        }
        if unclaimed == Unclaimed::Count {
            self.record_content_alone(&content);
        }
    }

    /// Records what waited past the join window at `now` (everything, for `None`), unjoined.
    fn flush_expired(&self, now: Option<Instant>) {
        let (attempts, records) = {
            let mut joins = lock(&self.joins);
            let attempts = Joins::expired(&mut joins.attempts, now);
            let records = Joins::expired(&mut joins.records, now);
            joins.waiting -= attempts.len() + records.len();
            (attempts, records)
        };
        for a in &attempts {
            self.record_with(a, None);
        }
        for (r, unclaimed) in &records {
            if *unclaimed == Unclaimed::Count {
                self.record_content_alone(r);
            }
        }
    }

    /// Records everything still waiting to be joined and stops joining (at shutdown: attempts
    /// of calls still draining are recorded at once).
    pub fn flush_joins(&self) {
        self.joins_closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.flush_expired(None);
    }

    /// How long a success or a record may wait for its other half now.
    fn join_wait(&self) -> Option<Duration> {
        self.join_content
            .filter(|_| !self.joins_closed.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Records attempts and content records whose join window passed, every 100 ms, until
    /// `stop` flips; then everything still waiting.
    pub async fn join_expiry(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_expired(Some(Instant::now())),
                _ = stop.wait_for(|s| *s) => return self.flush_joins(),
            }
        }
    }

    fn record_joined(&self, attempt: &PullAttempt, content: &ContentRecord) {
        let end = attempt.started_at + attempt.duration.unwrap_or_default();
        let anatomy = content.anatomy(Some(attempt.started_at), end);
        self.record_with(attempt, Some(&anatomy));
    }

    /// A content record no attempt claimed (another authority, or the attempt came too late):
    /// its bytes, layers and the phases its own content measures.
    fn record_content_alone(&self, content: &ContentRecord) {
        let registry = ImageRef::parse(&content.image).map_or_else(
            |_| crate::core::attempt::UNKNOWN_REGISTRY.to_string(),
            |r| r.registry,
        );
        let anatomy = content.anatomy(None, content.recorded_at);
        let registry = self.label(&self.registries, &registry, Claim::Proven, true);
        self.record_anatomy(registry, &anatomy);
    }

    fn record_anatomy(&self, registry: &str, anatomy: &Anatomy) {
        let m = &self.metrics;
        for (phase, seconds) in &anatomy.phases {
            let labels = RegistryPhase {
                registry,
                phase: phase.as_str(),
            };
            m.phases.observe(&labels, *seconds);
        }
        let by = ByRegistry { registry };
        m.bytes.with(&by).inc_by(anatomy.downloaded_bytes);
        m.cached_bytes.with(&by).inc_by(anatomy.cached_bytes);
        for (cache, n) in [
            ("miss", anatomy.layers_downloaded),
            ("hit", anatomy.layers_cached),
        ] {
            m.layers.with(&RegistryCache { registry, cache }).inc_by(n);
        }
    }

    /// kubelet held a pull of `image` for `seconds` before calling the runtime (its `Pulled`
    /// event's `including waiting` time minus its pull time).
    pub fn observe_queue(&self, image: &str, seconds: f64) {
        let registry = ImageRef::parse(image).map_or_else(
            |_| crate::core::attempt::UNKNOWN_REGISTRY.to_string(),
            |r| r.registry,
        );
        let registry = self.admit(&self.registries, &registry);
        let labels = RegistryPhase {
            registry,
            phase: Phase::Queue.as_str(),
        };
        self.metrics.phases.observe(&labels, seconds);
    }

    /// Records one attempt of the authority with its anatomy, if known.
    pub fn record_with(&self, attempt: &PullAttempt, anatomy: Option<&Anatomy>) {
        if !attempt.is_bounded() {
            return self.record_with(&attempt.clone().bounded(), anatomy);
        }
        let claim = match attempt.outcome {
            Outcome::Success { .. } => Claim::Proven,
            Outcome::Failure { .. } => Claim::Seen,
        };
        let registry = self.label(&self.registries, attempt.registry(), claim, true);
        let result = attempt.outcome.result_label();
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
            self.lock_backoff().observe(&a, registry, Instant::now());
        }
        if let Some(anatomy) = anatomy {
            self.record_anatomy(registry, anatomy);
        }
        self.pulls.finished(attempt);
        event_log::emit(attempt, anatomy);
    }

    /// kubelet reports it is backing off `image` for `pod`; `last_failure` is the cause it
    /// gave, if any (classified here). See [`BackoffTracker::backing_off`].
    pub fn backing_off(&self, pod: &PodRef, image: &str, last_failure: Option<Reason>) {
        let image = &image[..image.floor_char_boundary(crate::core::attempt::MAX_IMAGE_LEN)];
        let pod = &pod.clone().bounded();
        let pod = self.admitted_pod(pod);
        let registry = ImageRef::parse(image)
            .map_or(crate::core::attempt::UNKNOWN_REGISTRY.to_string(), |r| {
                r.registry
            });
        let failure = last_failure.map(|r| {
            let registry = self.label(&self.registries, &registry, Claim::Seen, false);
            (registry, r)
        });
        self.lock_backoff()
            .backing_off(&pod, image, failure, Instant::now());
    }

    /// `image` no longer fails for `pod`: it leaves the backoff gauge.
    pub fn backoff_cleared(&self, pod: &PodRef, image: &str) {
        let pod = self.admitted_pod(pod);
        self.lock_backoff().clear(&pod, image);
    }

    /// The pod with `uid` is gone: its pairs leave the backoff gauge.
    pub fn pod_gone(&self, uid: &str) {
        self.lock_backoff().forget_pod(uid);
    }

    /// `pod` with its namespace passed through the namespace cap, as the backoff tracker keys it.
    /// Not counted as an overflow: these are repeated signals about one pod, not attempts.
    fn admitted_pod(&self, pod: &PodRef) -> PodRef {
        PodRef {
            namespace: self
                .label(&self.namespaces, &pod.namespace, Claim::Seen, false)
                .to_string(),
            ..pod.clone()
        }
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, BackoffTracker> {
        lock(&self.render.backoff)
    }

    /// Brings the backoff gauge up to date (each render does it first).
    pub fn refresh(&self) {
        self.render.refresh();
    }

    /// Forgets expired backoff pairs every half expiry window (at least every 30 s) until
    /// `stop` flips, so the tracker stays bounded when nobody scrapes (or every scrape fails
    /// auth): state never waits for a render to be cleaned.
    pub async fn expire_backoff(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let expiry = self.lock_backoff().expiry();
        let period = (expiry / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.lock_backoff().expire(Instant::now()),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::attempt::{Outcome, PodRef, Source};
    use crate::core::reference::ImageRef;
    use crate::telemetry::MetricsRegistry;
    use std::time::SystemTime;
    use tonic::Code;

    fn attempt(image: &str, ns: &str, outcome: Outcome) -> PullAttempt {
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
        r.content_recorded(
            content("127.0.0.1:5000/team/app:1", committed),
            Unclaimed::Drop,
        );
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
        r.content_recorded(
            content("docker.io/library/nginx:1", committed),
            Unclaimed::Count,
        );
        r.content_recorded(content("quay.io/x/y:1", committed), Unclaimed::Drop);
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
        assert_eq!(lock(&r.joins).waiting, 0);
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
        let all = Sources {
            interposer: true,
            tap: true,
            kube: true,
            containerd: true,
        };
        assert_eq!(Authority::of(all), Authority::Observed);
        let tap = Sources {
            interposer: false,
            ..all
        };
        assert!(Authority::of(tap).accepts(Source::CriTap));
        assert!(!Authority::of(tap).accepts(Source::Kube));
        let kube = Sources { tap: false, ..tap };
        assert_eq!(Authority::of(kube), Authority::KubeApi);
        let containerd = Sources {
            kube: false,
            ..kube
        };
        assert_eq!(Authority::of(containerd), Authority::Containerd);
        assert_eq!(Authority::of(Sources::default()), Authority::Nobody);
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

    #[tokio::test]
    async fn backoff_pairs_expire_without_a_scrape() {
        let reg = MetricsRegistry::new().unwrap();
        let cfg = RecorderConfig {
            backoff_expiry: Duration::from_millis(50),
            max_namespaces: 10_000,
            ..Default::default()
        };
        let r = std::sync::Arc::new(Recorder::new(&cfg, &reg).unwrap());
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let r = r.clone();
            async move { r.expire_backoff(stop).await }
        });
        for i in 0..1000 {
            let a = attempt(
                &format!("a.io/x{i}:1"),
                "n",
                Outcome::failure(Code::Unknown, "x: not found"),
            );
            r.record(&a);
        }
        assert_eq!(r.lock_backoff().len(), 1000);
        // No render in between: the timer alone empties it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.lock_backoff().is_empty() {
            assert!(Instant::now() < deadline, "backoff pairs never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&RecorderConfig::default(), &reg).unwrap();
        let g = r.pull_started("docker.io");
        assert!(
            reg.render()
                .contains("pullwatch_image_pulls_in_flight{registry=\"docker.io\"} 1")
        );
        drop(g);
        assert!(
            reg.render()
                .contains("pullwatch_image_pulls_in_flight{registry=\"docker.io\"} 0")
        );
    }
}
