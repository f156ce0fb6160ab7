//! Pod events: what pullwatch knows about a pull, where people look (`kubectl describe pod`).
//! `PullProgress` (Normal) for a pull still running after `--pod-events-after`, updated on the
//! same Event at most every [`UPDATE_EVERY`]; `PullStalled` (Warning) once when its downloads
//! stop moving; `PullFailed` (Warning) for each failed attempt, with its classified reason and
//! fix hint next to the runtime's error.
//!
//! Never a flood and never in the way: a writer task reads the pulls view once a second (the
//! observers never wait for it), every write takes a token from a node-wide bucket, writes over
//! budget are dropped and counted, and a failing API server pauses writing, not observing.

use crate::core::attempt::{AttemptResult, PodRef};
use crate::core::rate::Budget;
use crate::sinks::pulls::{Finished, InProgress, PullsView, human_bytes, human_duration};
use crate::telemetry::{CounterFamily, MetricsError, MetricsRegistry};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Progress updates of one pull are at least this far apart.
pub(crate) const UPDATE_EVERY: Duration = Duration::from_secs(10);
/// Node-wide budget: writes per second, and the burst.
pub(crate) const RATE_PER_SEC: f64 = 5.0;
/// Node-wide budget: the bucket's size.
pub(crate) const BURST: f64 = 20.0;
/// One API call may take this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed write, the next one waits this long (the API server is down or shedding).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// Failures waiting for the budget or for the API server to come back, at most.
const FAILURES_QUEUED: usize = 64;
/// Longest message written (kubelet cuts its event messages to 1 KiB too).
const MESSAGE_MAX: usize = 1024;
/// Reporting component of every Event.
pub(crate) const COMPONENT: &str = "pullwatch";

/// Flags of the pod events.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Pod events")]
pub struct PodEventsArgs {
    /// Write pull progress, stalls and classified failures as Events on the pod (`kubectl
    /// describe pod` shows them). Needs --kube (its credentials and --node-name) and
    /// create/patch on events.
    #[arg(long, env = "PULLWATCH_POD_EVENTS")]
    pub pod_events: bool,

    /// With --pod-events: a pull gets a PullProgress Event once it has run this long.
    #[arg(
        long,
        env = "PULLWATCH_POD_EVENTS_AFTER",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = crate::flags::duration
    )]
    pub pod_events_after: Duration,
}

/// Settings of the pod events.
#[derive(Debug, Clone)]
pub(crate) struct PodEventsConfig {
    /// A pull gets a PullProgress Event after running this long.
    pub after: Duration,
    /// This node's name (the Events' reporting instance).
    pub node: String,
}

crate::label_enum! {
    /// The Events pullwatch writes on a pod: the Event's `reason` and the metric's label.
    #[allow(clippy::enum_variant_names)]
    pub(crate) enum EventReason {
        /// A pull running for a while, with its progress.
        PullProgress => "PullProgress",
        /// A pull whose downloads stopped moving.
        PullStalled => "PullStalled",
        /// A failed attempt, its cause and fix.
        PullFailed => "PullFailed",
    }
}

crate::label_enum! {
    /// What became of an Event pullwatch meant to write.
    pub(crate) enum WriteResult {
        /// Written (created or updated).
        Written => "written",
        /// Not written: over the write budget, or paused after a failure.
        Dropped => "dropped",
        /// The API refused it or did not answer.
        Failed => "failed",
    }
}

crate::label_set! {
    /// Labels of `pullwatch_pod_events_total`.
    pub(crate) struct ReasonResult { reason: EventReason, result: WriteResult }
}

/// The pod events' family.
#[derive(Clone)]
pub(crate) struct PodEventsMetrics {
    events: CounterFamily<ReasonResult>,
}

impl PodEventsMetrics {
    /// Registers `pullwatch_pod_events_total` in `reg`.
    pub(crate) fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            events: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_pod_events_total"),
            )?,
        })
    }

    fn count(&self, reason: EventReason, result: WriteResult) {
        self.events.inc(&ReasonResult { reason, result });
    }
}

/// One Event pullwatch keeps updating (a pull's PullProgress).
#[derive(Debug)]
struct Written {
    namespace: String,
    name: String,
    count: i32,
    at: Instant,
    message: String,
}

/// What one Event says.
struct Note<'a> {
    pod: &'a PodRef,
    reason: EventReason,
    warning: bool,
    message: String,
}

/// The writer task's state.
pub(crate) struct PodEvents {
    client: kube::Client,
    view: Arc<PullsView>,
    config: PodEventsConfig,
    metrics: PodEventsMetrics,
    budget: Budget,
    progress: HashMap<u64, Written>,
    stalled: HashSet<u64>,
    /// The newest finished attempt already looked at.
    seen_finished: u64,
    /// Failures not written yet (over budget, or the API server failing), oldest first.
    failures: std::collections::VecDeque<Finished>,
    paused_until: Option<Instant>,
    sequence: u64,
}

fn cut(mut s: String) -> String {
    crate::core::attempt::truncate(&mut s, MESSAGE_MAX);
    s
}

/// The PullProgress message of a pull in progress.
pub(crate) fn progress_message(p: &InProgress) -> String {
    cut(format!(
        "pullwatch: {} ({}) — {} after {}",
        p.image,
        p.registry,
        p.progress_line(),
        human_duration(Duration::from_secs_f64(p.elapsed_seconds.max(0.0)))
    ))
}

/// The PullStalled message of a pull whose downloads stopped.
pub(crate) fn stalled_message(p: &InProgress, idle: Duration) -> String {
    cut(format!(
        "pullwatch: {} — no bytes from {} for {} after {} received; containerd cancels a pull whose downloads make no progress for its image_pull_progress_timeout (5 min by default), then kubelet retries with backoff",
        p.image,
        p.registry,
        human_duration(idle),
        human_bytes(p.bytes_done)
    ))
}

/// The PullFailed message of a failed attempt: reason, the runtime's error around its cause,
/// then the fix hint (the same text `pullwatch explain` gives), cut to 1 KiB.
pub(crate) fn failed_message(f: &Finished) -> String {
    let error = crate::core::classifier::around_cause(f.error.as_deref().unwrap_or(""), 300);
    let endpoints = f
        .endpoints
        .as_ref()
        .map(|e| e.summary())
        .filter(|s| !s.is_empty())
        .map_or_else(String::new, |s| format!(" ({s})"));
    cut(format!(
        "pullwatch: {} failed: {}: {}{endpoints} — fix: {}",
        f.image,
        f.reason.unwrap_or(crate::core::reason::Reason::Unknown),
        error,
        f.hint.as_deref().unwrap_or("")
    ))
}

impl PodEvents {
    /// A writer for `view`'s pulls, writing through `client`.
    pub(crate) fn new(
        client: kube::Client,
        view: Arc<PullsView>,
        config: PodEventsConfig,
        metrics: PodEventsMetrics,
    ) -> Self {
        Self {
            client,
            view,
            config,
            metrics,
            budget: Budget::new(RATE_PER_SEC, BURST, Instant::now()),
            progress: HashMap::new(),
            stalled: HashSet::new(),
            seen_finished: 0,
            failures: std::collections::VecDeque::new(),
            paused_until: None,
            sequence: 0,
        }
    }

    /// Writes until `stop` flips, looking at the view once a second.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        // Attempts that ended before the writer started are history, not news.
        self.seen_finished = self.view.snapshot().finished.first().map_or(0, |f| f.seq);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            self.round().await;
        }
    }

    /// Whether a write may go now: not paused after a failed write, and a token in the budget.
    fn can_write(&mut self) -> bool {
        let now = Instant::now();
        self.paused_until.is_none_or(|t| now >= t) && self.budget.take(now)
    }

    /// [`Self::can_write`], counting a write that cannot go as dropped.
    fn may_write(&mut self, reason: EventReason) -> bool {
        let ok = self.can_write();
        if !ok {
            self.metrics.count(reason, WriteResult::Dropped);
        }
        ok
    }

    async fn round(&mut self) {
        let snapshot = self.view.snapshot();
        // Failures first: they are what people look for.
        let seen = self.seen_finished;
        let new: Vec<&Finished> = snapshot
            .finished
            .iter()
            .take_while(|f| f.seq > seen)
            .filter(|f| f.result == AttemptResult::Failure)
            .collect();
        // More attempts finished between two looks than the view keeps: failures among them
        // got no Event. Which ones were failures is not known any more: said, not counted.
        if let Some(oldest) = snapshot.finished.last()
            && seen > 0
            && oldest.seq > seen + 1
        {
            tracing::warn!(
                attempts = oldest.seq - seen - 1,
                "attempts finished faster than pod events could look at them; their failures got no PullFailed Event"
            );
        }
        self.seen_finished = snapshot.finished.first().map_or(seen, |f| f.seq);
        for f in new.into_iter().rev() {
            if f.pod.is_none() {
                continue;
            }
            if self.failures.len() >= FAILURES_QUEUED {
                self.failures.pop_front();
                self.metrics
                    .count(EventReason::PullFailed, WriteResult::Dropped);
            }
            self.failures.push_back(f.clone());
        }
        // Queued failures go as the budget and the API server allow, oldest first.
        while !self.failures.is_empty() && self.can_write() {
            let Some(f) = self.failures.pop_front() else {
                break;
            };
            let Some(pod) = &f.pod else { continue };
            let note = Note {
                pod,
                reason: EventReason::PullFailed,
                warning: true,
                message: failed_message(&f),
            };
            if self.create(&note).await.is_none() {
                self.failures.push_front(f);
                break;
            }
        }
        let live: HashSet<u64> = snapshot.in_progress.iter().map(|p| p.id).collect();
        self.progress.retain(|id, _| live.contains(id));
        self.stalled.retain(|id| live.contains(id));
        let after = self.config.after.as_secs_f64();
        for p in &snapshot.in_progress {
            let Some(pod) = &p.pod else { continue };
            if p.elapsed_seconds < after {
                continue;
            }
            if let Some(since) = p.stalled_since_unix_ms
                && !self.stalled.contains(&p.id)
                && self.may_write(EventReason::PullStalled)
            {
                let since = SystemTime::UNIX_EPOCH + Duration::from_millis(since);
                let idle = SystemTime::now().duration_since(since).unwrap_or_default();
                let note = Note {
                    pod,
                    reason: EventReason::PullStalled,
                    warning: true,
                    message: stalled_message(p, idle),
                };
                if self.create(&note).await.is_some() {
                    self.stalled.insert(p.id);
                }
            }
            let message = progress_message(p);
            match self.progress.get(&p.id) {
                None => {
                    if self.may_write(EventReason::PullProgress) {
                        let note = Note {
                            pod,
                            reason: EventReason::PullProgress,
                            warning: false,
                            message: message.clone(),
                        };
                        if let Some(written) = self.create(&note).await {
                            self.progress.insert(p.id, written);
                        }
                    }
                }
                Some(w) if w.at.elapsed() >= UPDATE_EVERY && w.message != message => {
                    if self.may_write(EventReason::PullProgress) {
                        self.update(p.id, message).await;
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn failed(&mut self, reason: EventReason, e: &dyn std::fmt::Display) {
        self.metrics.count(reason, WriteResult::Failed);
        self.paused_until = Some(Instant::now() + PAUSE_AFTER_FAILURE);
        tracing::warn!(%reason, error = %e, retry_in = ?PAUSE_AFTER_FAILURE, "writing a pod event failed; pausing pod events");
    }

    /// Creates the Event; `None` if the API did not take it.
    async fn create(&mut self, note: &Note<'_>) -> Option<Written> {
        self.sequence += 1;
        let now = SystemTime::now();
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // kubelet names its Events `<object>.<hex time>`; the sequence keeps two of one
        // nanosecond apart.
        let name = format!("{}.{:x}{:x}", note.pod.name, nanos, self.sequence);
        let stamp = timestamp(now);
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": note.pod.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": note.pod.namespace,
                "name": note.pod.name,
                "uid": note.pod.uid,
            },
            "reason": note.reason,
            "message": note.message,
            "type": if note.warning { "Warning" } else { "Normal" },
            "source": {"component": COMPONENT, "host": self.config.node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.config.node,
            "action": "Pulling",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        });
        let event: Event = match serde_json::from_value(object) {
            Ok(e) => e,
            Err(e) => {
                self.failed(note.reason, &e);
                return None;
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &note.pod.namespace);
        match tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &event)).await {
            Ok(Ok(_)) => {
                self.metrics.count(note.reason, WriteResult::Written);
                Some(Written {
                    namespace: note.pod.namespace.clone(),
                    name,
                    count: 1,
                    at: Instant::now(),
                    message: note.message.clone(),
                })
            }
            Ok(Err(e)) => {
                self.failed(note.reason, &crate::causes::Causes(&e));
                None
            }
            Err(_) => {
                self.failed(note.reason, &format!("no answer within {CALL_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Patches pull `id`'s PullProgress Event with `message` (count + 1).
    async fn update(&mut self, id: u64, message: String) {
        let Some(w) = self.progress.get(&id) else {
            return;
        };
        let (namespace, name, count) = (w.namespace.clone(), w.name.clone(), w.count + 1);
        let patch = serde_json::json!({
            "message": message,
            "count": count,
            "lastTimestamp": timestamp(SystemTime::now()),
        });
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let call = api.patch(&name, &params, &patch);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => {
                self.metrics
                    .count(EventReason::PullProgress, WriteResult::Written);
                if let Some(w) = self.progress.get_mut(&id) {
                    w.count = count;
                    w.at = Instant::now();
                    w.message = message;
                }
            }
            Ok(Err(e)) => self.failed(EventReason::PullProgress, &crate::causes::Causes(&e)),
            Err(_) => self.failed(
                EventReason::PullProgress,
                &format!("no answer within {CALL_TIMEOUT:?}"),
            ),
        }
    }
}

/// RFC 3339 in UTC, second precision (the `Time` of core/v1 Events).
pub(crate) fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_the_endpoints_tried() {
        let mut f = Finished {
            seq: 1,
            pod: None,
            image: "a.io/x:1".into(),
            registry: "a.io".into(),
            result: AttemptResult::Failure,
            reason: Some(crate::core::reason::Reason::NotFound),
            hint: Some("check the tag".into()),
            error: Some("a.io/x:1: not found".into()),
            duration_seconds: Some(0.1),
            finished_unix_ms: 0,
            endpoints: None,
        };
        assert!(!failed_message(&f).contains("endpoints"));
        f.endpoints = Some(crate::core::endpoints::EndpointReport {
            tried: vec!["mirror:5001".into(), "a.io".into()],
            ..Default::default()
        });
        let m = failed_message(&f);
        assert!(
            m.contains("(endpoints tried: mirror:5001, a.io) — fix: check the tag"),
            "{m}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_715_339);
        assert_eq!(timestamp(t), "2026-11-26T17:48:59Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
