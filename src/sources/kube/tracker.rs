//! Turns kubelet's pull events and pod container statuses into pull attempts, counting each
//! kubelet attempt once.
//!
//! - Events repeat: kubelet's recorder folds repeats into one Event whose `count` grows, and a
//!   relist delivers every Event again. Each Event's last seen count is kept, so only the growth
//!   counts. An Event first seen after a (re)list counts only for what happened since the agent
//!   started.
//! - Statuses repeat on every resync. Only a container's *transition* into a pull-failure state
//!   is a new attempt, and only a fallback: kubelet records the same failure as a `Failed` event,
//!   which is authoritative. A status failure waits [`DEDUP_WINDOW`] for its event and counts
//!   only if none arrives (events can be dropped by kubelet's rate limit or expire); when events
//!   are not watched at all ([`KubeTracker::without_events`]) it counts at once.
//!
//! Pure state machine (no I/O, time passed in) so every rule is unit-tested.

use super::messages::{self, PullMessage};
use crate::core::attempt::{Outcome, PodRef, PullAttempt, Source};
use crate::core::classifier;
use crate::core::reason::Reason;
use crate::core::reference::ImageRef;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

/// How long a pull failure seen in a pod status waits for kubelet's `Failed` event (and how far
/// apart the two may be to count as one attempt).
pub(crate) const DEDUP_WINDOW: Duration = Duration::from_secs(30);

/// Events older than this (by their last timestamp) are forgotten; the API server's default
/// event TTL is one hour.
pub(crate) const EVENT_MEMORY: Duration = Duration::from_secs(2 * 3600);

/// At most this many Events are remembered (a node's pods rarely produce more than a few hundred
/// pull events an hour); beyond it the oldest are dropped first.
pub(crate) const MAX_TRACKED_EVENTS: usize = 20_000;

/// A kubelet Event about a pod on this node, reduced to what matters.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventObs {
    /// Event UID (the key of its repeats).
    pub uid: String,
    /// Occurrences so far (`count`, or `series.count`; at least 1).
    pub count: u32,
    /// kubelet's reason: `Pulling`, `Pulled`, `Failed`, `BackOff`, ...
    pub reason: String,
    /// The message.
    pub message: String,
    /// The pod it is about.
    pub pod: PodRef,
    /// First occurrence.
    pub first_seen: Option<SystemTime>,
    /// Latest occurrence.
    pub last_seen: Option<SystemTime>,
}

/// What a container's state says about pulling its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PullState {
    /// The last pull failed (`ErrImagePull`, `RegistryUnavailable`, `SignatureValidationFailed`)
    /// with this message.
    Failed(String),
    /// kubelet waits before retrying (`ImagePullBackOff`), message as given.
    BackOff(String),
    /// Being created (`ContainerCreating`, `PodInitializing`): kubelet may be pulling its image.
    Creating,
    /// Waiting for something that is not a pull (`CrashLoopBackOff`, `CreateContainerError`...).
    Waiting,
    /// Running or terminated: the image is there.
    Present,
}

/// One container of a pod, as its status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerObs {
    /// Container name.
    pub name: String,
    /// Image as the spec names it.
    pub image: String,
    /// State.
    pub state: PullState,
}

/// A pod on this node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodObs {
    /// The pod.
    pub pod: PodRef,
    /// `metadata.creationTimestamp`.
    pub created: Option<SystemTime>,
    /// Its containers (init, regular and ephemeral).
    pub containers: Vec<ContainerObs>,
}

/// What the source should do with the recorder.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Record one attempt.
    Record(PullAttempt),
    /// kubelet backs off `image` for `pod`; `reason` is the last failure's cause if it said.
    BackingOff {
        /// Pod.
        pod: PodRef,
        /// Image.
        image: String,
        /// Cause, if known.
        reason: Option<Reason>,
    },
    /// `image` no longer fails for `pod`.
    Cleared {
        /// Pod.
        pod: PodRef,
        /// Image.
        image: String,
    },
    /// The pod with this UID is gone.
    PodGone(String),
    /// A status failure was matched to its event and not counted again.
    Deduplicated,
    /// kubelet started pulling `image` for `pod` (its `Pulling` event), or, `tentative`, a
    /// container of a new pod is being created and kubelet may be pulling its image (shown only
    /// once downloads of it are seen).
    PullStarted {
        /// Pod.
        pod: PodRef,
        /// Image as kubelet names it.
        image: String,
        /// From a pod status, not a `Pulling` event.
        tentative: bool,
    },
    /// kubelet's pull of `image` for the pod with this UID ended (`Pulled`, `Failed`, `BackOff`).
    PullEnded {
        /// Pod UID.
        uid: String,
        /// Image as kubelet names it.
        image: String,
    },
    /// A container of `pod` started after a pull (or after its pull failed): its `Pulled`
    /// Events say how long the pull took (with [`KubeTracker::reading_pulled`]).
    ReadPulled {
        /// Pod.
        pod: PodRef,
    },
    /// kubelet held a pull of `image` in its queue this long before calling the runtime.
    Queued {
        /// Image.
        image: String,
        /// Time in kubelet's pull queue.
        wait: Duration,
    },
}

/// `(pod uid, normalized image)`.
type PairKey = (String, String);

#[derive(Debug)]
struct SeenEvent {
    count: u32,
    last_seen: SystemTime,
}

#[derive(Debug)]
struct PendingStatus {
    deadline: Instant,
    attempt: PullAttempt,
}

/// The state machine. See the module docs for the rules.
#[derive(Debug)]
pub(crate) struct KubeTracker {
    since: SystemTime,
    events: HashMap<String, SeenEvent>,
    /// Container states by (pod uid, container name).
    containers: HashMap<(String, String), PullState>,
    /// Failed events not (yet) matched to a status failure, by pair, with when they were seen.
    unmatched_events: HashMap<PairKey, VecDeque<Instant>>,
    /// Status failures waiting for their event.
    pending: HashMap<PairKey, VecDeque<PendingStatus>>,
    /// How long a status failure waits for its event: [`DEDUP_WINDOW`], or zero when events are
    /// not watched.
    wait_for_event: Duration,
    /// Whether a container's start after a pull asks for its pod's `Pulled` Events.
    reads_pulled: bool,
    /// Containers whose start already asked, by (pod uid, container name).
    asked: std::collections::HashSet<(String, String)>,
}

impl KubeTracker {
    /// A tracker for an agent started at `since`. It reports every attempt it sees; whether they
    /// are recorded is the recorder's decision (the attempt authority), not the tracker's.
    pub(crate) fn new(since: SystemTime) -> Self {
        // Kubernetes timestamps have second resolution: compare against the start's second.
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(since, |d| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
            });
        Self {
            since,
            events: HashMap::new(),
            containers: HashMap::new(),
            unmatched_events: HashMap::new(),
            pending: HashMap::new(),
            wait_for_event: DEDUP_WINDOW,
            reads_pulled: false,
            asked: std::collections::HashSet::new(),
        }
    }

    /// For a source that reads a pod's `Pulled` Events when its containers start: status
    /// failures count at once (no `Failed` Event will come), and a container's start in a pod
    /// created since the agent started, or after its pull failed, yields [`Action::ReadPulled`]
    /// (once per container and pull).
    pub(crate) fn reading_pulled(mut self) -> Self {
        self.wait_for_event = Duration::ZERO;
        self.reads_pulled = true;
        self
    }

    /// For a source that does not watch Events: status failures count at the next tick, since
    /// no event will come to stand for them.
    pub(crate) fn without_events(mut self) -> Self {
        self.wait_for_event = Duration::ZERO;
        self
    }

    /// How many of `ev`'s occurrences are new.
    fn new_occurrences(&mut self, ev: &EventObs) -> u32 {
        let count = ev.count.max(1);
        let last_seen = ev.last_seen.or(ev.first_seen).unwrap_or(self.since);
        let previous = self.events.insert(
            ev.uid.clone(),
            SeenEvent {
                count: count.max(self.events.get(&ev.uid).map_or(0, |s| s.count)),
                last_seen,
            },
        );
        match previous {
            Some(p) => count.saturating_sub(p.count),
            None if ev.first_seen.is_some_and(|t| t >= self.since) => count,
            None if last_seen >= self.since => 1,
            None => 0,
        }
    }

    /// Feeds one Event (added, modified or relisted).
    pub(crate) fn on_event(&mut self, ev: &EventObs, now: Instant) -> Vec<Action> {
        let parsed = messages::parse(&ev.message);
        let relevant = matches!(
            (ev.reason.as_str(), &parsed),
            ("Pulling", Some(PullMessage::Pulling { .. }))
                | ("Pulled", Some(PullMessage::Pulled { .. }))
                | ("Failed", Some(PullMessage::Failed { .. }))
                | ("BackOff", Some(PullMessage::BackOff { .. }))
        );
        if !relevant {
            return Vec::new(); // not remembered either: memory is for pull events only
        }
        let n = self.new_occurrences(ev);
        if n == 0 {
            return Vec::new();
        }
        let at = ev.last_seen.unwrap_or_else(SystemTime::now);
        let mut out = Vec::new();
        match (ev.reason.as_str(), &parsed) {
            ("Pulling", Some(PullMessage::Pulling { image })) => {
                out.push(Action::PullStarted {
                    pod: ev.pod.clone(),
                    image: image.to_string(),
                    tentative: false,
                });
                return out;
            }
            (
                "Pulled" | "Failed" | "BackOff",
                Some(
                    PullMessage::Pulled { image, .. }
                    | PullMessage::Failed { image, .. }
                    | PullMessage::BackOff { image, .. },
                ),
            ) => out.push(Action::PullEnded {
                uid: ev.pod.uid.clone(),
                image: image.to_string(),
            }),
            _ => {}
        }
        match (ev.reason.as_str(), parsed) {
            (
                "Pulled",
                Some(PullMessage::Pulled {
                    image,
                    duration,
                    waiting,
                    ..
                }),
            ) => {
                // One queue figure per event: folded repeats carry only the latest.
                if let (Some(d), Some(w)) = (duration, waiting) {
                    out.push(Action::Queued {
                        image: image.to_string(),
                        wait: w.saturating_sub(d),
                    });
                }
                for i in 0..n {
                    // Folded repeats carry only the latest duration.
                    let duration = if i == 0 { duration } else { None };
                    out.push(Action::Record(attempt(
                        image,
                        &ev.pod,
                        at,
                        duration,
                        Outcome::Success {
                            image_ref: String::new(),
                        },
                    )));
                }
            }
            ("Failed", Some(PullMessage::Failed { image, error })) => {
                let outcome = failure(error);
                for _ in 0..n {
                    out.push(Action::Record(attempt(
                        image,
                        &ev.pod,
                        at,
                        None,
                        outcome.clone(),
                    )));
                    if self.take_pending(&(ev.pod.uid.clone(), ImageRef::key(image))) {
                        out.push(Action::Deduplicated);
                    } else {
                        let q = self
                            .unmatched_events
                            .entry((ev.pod.uid.clone(), ImageRef::key(image)))
                            .or_default();
                        q.push_back(now);
                        if q.len() > 16 {
                            q.pop_front();
                        }
                    }
                }
            }
            ("BackOff", Some(PullMessage::BackOff { image, error })) => {
                out.push(Action::BackingOff {
                    pod: ev.pod.clone(),
                    image: image.to_string(),
                    reason: error.and_then(|e| failure(e).reason()),
                });
            }
            _ => {}
        }
        out
    }

    /// Consumes one pending status failure of `key`, if any.
    fn take_pending(&mut self, key: &PairKey) -> bool {
        let Some(q) = self.pending.get_mut(key) else {
            return false;
        };
        let took = q.pop_front().is_some();
        if q.is_empty() {
            self.pending.remove(key);
        }
        took
    }

    /// Consumes one unmatched event of `key` seen within the window before `now`, if any.
    fn take_unmatched_event(&mut self, key: &PairKey, now: Instant) -> bool {
        let Some(q) = self.unmatched_events.get_mut(key) else {
            return false;
        };
        q.retain(|t| now.saturating_duration_since(*t) <= DEDUP_WINDOW);
        let took = q.pop_front().is_some();
        if q.is_empty() {
            self.unmatched_events.remove(key);
        }
        took
    }

    /// Feeds one pod (added, modified or relisted).
    pub(crate) fn on_pod(&mut self, p: &PodObs, now: Instant) -> Vec<Action> {
        let new_pod = p.created.is_some_and(|t| t >= self.since);
        let mut out = Vec::new();
        for c in &p.containers {
            let ckey = (p.pod.uid.clone(), c.name.clone());
            let previous = self.containers.insert(ckey, c.state.clone());
            if previous.as_ref() == Some(&c.state) {
                continue; // a resync: nothing changed
            }
            // Without `Pulling` Events, a container being created stands for a pull that may
            // be running; it ends when the container leaves that state.
            if self.reads_pulled || self.wait_for_event.is_zero() {
                if c.state == PullState::Creating && new_pod {
                    out.push(Action::PullStarted {
                        pod: p.pod.clone(),
                        image: c.image.clone(),
                        tentative: true,
                    });
                } else if previous == Some(PullState::Creating) {
                    out.push(Action::PullEnded {
                        uid: p.pod.uid.clone(),
                        image: c.image.clone(),
                    });
                }
            }
            match &c.state {
                PullState::Failed(message) => {
                    // A container seen for the first time in a failed state is history unless
                    // the pod itself is new.
                    if previous.is_none() && !new_pod {
                        out.push(Action::BackingOff {
                            pod: p.pod.clone(),
                            image: c.image.clone(),
                            reason: failure(message).reason(),
                        });
                        continue;
                    }
                    let key = (p.pod.uid.clone(), ImageRef::key(&c.image));
                    if self.take_unmatched_event(&key, now) {
                        out.push(Action::Deduplicated);
                        continue;
                    }
                    self.pending
                        .entry(key)
                        .or_default()
                        .push_back(PendingStatus {
                            deadline: now + self.wait_for_event,
                            attempt: attempt(
                                &c.image,
                                &p.pod,
                                SystemTime::now(),
                                None,
                                failure(message),
                            ),
                        });
                }
                PullState::BackOff(message) => {
                    let error = match messages::parse(message) {
                        Some(PullMessage::BackOff { error, .. }) => error,
                        _ => None,
                    };
                    out.push(Action::BackingOff {
                        pod: p.pod.clone(),
                        image: c.image.clone(),
                        reason: error.and_then(|e| failure(e).reason()),
                    });
                }
                PullState::Present => {
                    let after_failure =
                        matches!(previous, Some(PullState::Failed(_) | PullState::BackOff(_)));
                    let first_start = new_pod
                        && matches!(
                            previous,
                            None | Some(PullState::Waiting | PullState::Creating)
                        )
                        && !self.asked.contains(&(p.pod.uid.clone(), c.name.clone()));
                    if self.reads_pulled && (after_failure || first_start) {
                        self.asked.insert((p.pod.uid.clone(), c.name.clone()));
                        out.push(Action::ReadPulled { pod: p.pod.clone() });
                    }
                    out.push(Action::Cleared {
                        pod: p.pod.clone(),
                        image: c.image.clone(),
                    });
                }
                PullState::Waiting | PullState::Creating => {}
            }
        }
        out
    }

    /// The pod with `uid` was deleted.
    pub(crate) fn on_pod_deleted(&mut self, uid: &str) -> Vec<Action> {
        self.containers.retain(|(u, _), _| u != uid);
        self.unmatched_events.retain(|(u, _), _| u != uid);
        self.asked.retain(|(u, _)| u != uid);
        // A failure seen just before deletion still happened: keep it pending.
        vec![Action::PodGone(uid.to_string())]
    }

    /// The Event with `uid` was deleted (expired): forget its count.
    pub(crate) fn on_event_deleted(&mut self, uid: &str) {
        self.events.remove(uid);
    }

    /// Emits status failures whose event never came, and forgets old state. Call every second.
    pub(crate) fn tick(&mut self, now: Instant, wall: SystemTime) -> Vec<Action> {
        let mut out = Vec::new();
        self.pending.retain(|_, q| {
            while q.front().is_some_and(|p| p.deadline <= now) {
                if let Some(p) = q.pop_front() {
                    out.push(Action::Record(p.attempt));
                }
            }
            !q.is_empty()
        });
        self.unmatched_events.retain(|_, q| {
            q.retain(|t| now.saturating_duration_since(*t) <= DEDUP_WINDOW);
            !q.is_empty()
        });
        self.events.retain(|_, e| {
            wall.duration_since(e.last_seen)
                .map_or(true, |age| age < EVENT_MEMORY)
        });
        if self.events.len() > MAX_TRACKED_EVENTS {
            let mut by_age: Vec<(SystemTime, String)> = self
                .events
                .iter()
                .map(|(k, e)| (e.last_seen, k.clone()))
                .collect();
            by_age.sort();
            let excess = self.events.len() - MAX_TRACKED_EVENTS;
            for (_, k) in by_age.into_iter().take(excess) {
                self.events.remove(&k);
            }
        }
        out
    }

    /// Number of Events remembered (for tests and bounds).
    #[cfg(test)]
    pub(crate) fn tracked_events(&self) -> usize {
        self.events.len()
    }
}

/// A failure outcome from kubelet's copy of the runtime's error.
fn failure(error: &str) -> Outcome {
    let (code, text) = messages::split_rpc_error(error);
    // Keep the whole text for the log; classify on the description with the code as fallback.
    let reason = classifier::classify(code, if text.is_empty() { error } else { text });
    Outcome::Failure {
        code,
        message: error.to_string(),
        reason,
    }
}

fn attempt(
    image: &str,
    pod: &PodRef,
    ended_at: SystemTime,
    duration: Option<Duration>,
    outcome: Outcome,
) -> PullAttempt {
    PullAttempt {
        image: image.to_string(),
        reference: ImageRef::parse(image).ok(),
        pod: Some(pod.clone()),
        started_at: ended_at - duration.unwrap_or_default(),
        duration,
        outcome,
        source: Source::Kube,
        trace: None,
        credentials: None,
        readout: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "uid-1".into(),
        }
    }

    fn ev(uid: &str, count: u32, reason: &str, message: &str, at: SystemTime) -> EventObs {
        EventObs {
            uid: uid.into(),
            count,
            reason: reason.into(),
            message: message.into(),
            pod: pod(),
            first_seen: Some(at),
            last_seen: Some(at),
        }
    }

    fn records(actions: &[Action]) -> Vec<&PullAttempt> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn pod_with(state: PullState, created: SystemTime) -> PodObs {
        PodObs {
            pod: pod(),
            created: Some(created),
            containers: vec![ContainerObs {
                name: "app".into(),
                image: "nginx:nope".into(),
                state,
            }],
        }
    }

    const FAILED: &str = "Failed to pull image \"nginx:nope\": rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nginx:nope\": failed to resolve reference \"docker.io/library/nginx:nope\": docker.io/library/nginx:nope: not found";

    #[test]
    fn pulled_event_is_one_success_with_kubelets_duration() {
        let since = SystemTime::now();
        let mut t = KubeTracker::new(since);
        let now = Instant::now();
        let e = ev(
            "e1",
            1,
            "Pulled",
            "Successfully pulled image \"nginx:1.27\" in 1.5s (2s including waiting). Image size: 10 bytes.",
            since + Duration::from_secs(5),
        );
        let a = t.on_event(&e, now);
        let r = records(&a);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].duration, Some(Duration::from_millis(1500)));
        assert_eq!(r[0].registry(), "docker.io");
        assert_eq!(r[0].source, Source::Kube);
        assert_eq!(r[0].started_at, since + Duration::from_millis(3500));
        // The same event again (resync, relist): nothing new.
        assert!(t.on_event(&e, now).is_empty());
        // Cache hits are not pulls.
        let hit = ev(
            "e2",
            1,
            "Pulled",
            "Container image \"nginx:1.27\" already present on machine",
            since,
        );
        assert!(t.on_event(&hit, now).is_empty());
    }

    #[test]
    fn pulling_starts_a_live_pull_and_its_outcome_ends_it() {
        let since = SystemTime::now();
        let mut t = KubeTracker::new(since);
        let now = Instant::now();
        let at = since + Duration::from_secs(1);
        let a = t.on_event(
            &ev("p1", 1, "Pulling", "Pulling image \"nginx:1.27\"", at),
            now,
        );
        assert!(
            matches!(&a[..], [Action::PullStarted { pod, image, tentative: false }] if pod.uid == "uid-1" && image == "nginx:1.27"),
            "{a:?}"
        );
        let a = t.on_event(&ev("f1", 1, "Failed", FAILED, at), now);
        assert!(
            matches!(&a[0], Action::PullEnded { uid, image } if uid == "uid-1" && image == "nginx:nope"),
            "{a:?}"
        );
        assert_eq!(records(&a).len(), 1);
    }

    #[test]
    fn per_pod_reads_are_asked_once_per_start_after_a_pull() {
        let since = SystemTime::now();
        let mut t = KubeTracker::new(since).reading_pulled();
        let now = Instant::now();
        let new = since + Duration::from_secs(1);
        let reads = |a: &[Action]| {
            a.iter()
                .filter(|a| matches!(a, Action::ReadPulled { .. }))
                .count()
        };
        // Being created: a pull may run (tentative), and it ends when the container starts.
        let a = t.on_pod(&pod_with(PullState::Creating, new), now);
        assert!(
            matches!(
                &a[..],
                [Action::PullStarted {
                    tentative: true,
                    ..
                }]
            ),
            "{a:?}"
        );
        let a = t.on_pod(&pod_with(PullState::Present, new), now);
        assert_eq!(reads(&a), 1, "{a:?}");
        assert!(a.iter().any(|a| matches!(a, Action::PullEnded { .. })));
        // A restart (crash loop) is no pull: no read.
        t.on_pod(&pod_with(PullState::Waiting, new), now);
        assert_eq!(reads(&t.on_pod(&pod_with(PullState::Present, new), now)), 0);
        // After a failed pull, the start is a pull again.
        let failed = PullState::Failed(FAILED.into());
        t.on_pod(&pod_with(failed, new), now);
        let a = t.tick(now, SystemTime::now());
        assert_eq!(
            records(&a).len(),
            1,
            "status failures count at the next tick"
        );
        assert_eq!(reads(&t.on_pod(&pod_with(PullState::Present, new), now)), 1);
        // A pod from before the agent started: its running containers are history.
        let mut t = KubeTracker::new(since).reading_pulled();
        let old = since - Duration::from_secs(60);
        assert_eq!(reads(&t.on_pod(&pod_with(PullState::Present, old), now)), 0);
        // Watching every Event instead: no read, no tentative pull.
        let mut t = KubeTracker::new(since);
        let a = t.on_pod(&pod_with(PullState::Creating, new), now);
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(reads(&t.on_pod(&pod_with(PullState::Present, new), now)), 0);
    }

    #[test]
    fn event_counts_grow_and_only_growth_counts() {
        let since = SystemTime::now();
        let mut t = KubeTracker::new(since);
        let now = Instant::now();
        let mut e = ev("f", 1, "Failed", FAILED, since + Duration::from_secs(1));
        let r = t.on_event(&e, now);
        assert_eq!(records(&r).len(), 1);
        assert_eq!(records(&r)[0].outcome.reason(), Some(Reason::NotFound));
        e.count = 4;
        assert_eq!(records(&t.on_event(&e, now)).len(), 3);
        e.count = 4;
        assert!(records(&t.on_event(&e, now)).is_empty());
        // Non-pull "Failed" events (kubelet's follow-up "Error: ErrImagePull") never count.
        let follow = ev(
            "g",
            1,
            "Failed",
            "Error: ErrImagePull",
            since + Duration::from_secs(1),
        );
        assert!(t.on_event(&follow, now).is_empty());
    }

    #[test]
    fn events_from_before_the_start_are_history() {
        let since = SystemTime::now();
        let mut t = KubeTracker::new(since);
        let now = Instant::now();
        let before = since - Duration::from_secs(60);
        assert!(
            t.on_event(&ev("old", 7, "Failed", FAILED, before), now)
                .is_empty()
        );
        // A folded event that started before us but repeated after: only the latest counts.
        let mut e = ev("mixed", 5, "Failed", FAILED, before);
        e.last_seen = Some(since + Duration::from_secs(1));
        assert_eq!(records(&t.on_event(&e, now)).len(), 1);
        // The old one grows while we watch: the growth counts.
        let mut old = ev("old", 9, "Failed", FAILED, before);
        old.last_seen = Some(since + Duration::from_secs(2));
        assert_eq!(records(&t.on_event(&old, now)).len(), 2);
    }

    #[test]
    fn status_failure_counts_once_with_its_event_either_order() {
        let since = SystemTime::now();
        let now = Instant::now();
        // Status first, event second.
        let mut t = KubeTracker::new(since);
        t.on_pod(&pod_with(PullState::Waiting, since), now);
        let a = t.on_pod(
            &pod_with(
                PullState::Failed("rpc error: code = NotFound desc = x: not found".into()),
                since,
            ),
            now,
        );
        assert!(records(&a).is_empty(), "status waits for its event");
        let a = t.on_event(
            &ev("f", 1, "Failed", FAILED, since),
            now + Duration::from_secs(2),
        );
        assert_eq!(records(&a).len(), 1);
        assert!(a.contains(&Action::Deduplicated));
        assert!(t.tick(now + DEDUP_WINDOW * 2, SystemTime::now()).is_empty());

        // Event first, status second.
        let mut t = KubeTracker::new(since);
        t.on_pod(&pod_with(PullState::Waiting, since), now);
        assert_eq!(
            records(&t.on_event(&ev("f", 1, "Failed", FAILED, since), now)).len(),
            1
        );
        let a = t.on_pod(
            &pod_with(PullState::Failed("x: not found".into()), since),
            now + Duration::from_secs(1),
        );
        assert_eq!(a, vec![Action::Deduplicated]);
        assert!(t.tick(now + DEDUP_WINDOW * 2, SystemTime::now()).is_empty());
    }

    #[test]
    fn without_events_a_status_failure_counts_at_the_next_tick_once() {
        let since = SystemTime::now();
        let now = Instant::now();
        let mut t = KubeTracker::new(since).without_events();
        t.on_pod(&pod_with(PullState::Waiting, since), now);
        let failed = pod_with(PullState::Failed("429 Too Many Requests".into()), since);
        assert!(records(&t.on_pod(&failed, now)).is_empty());
        let a = t.tick(now, SystemTime::now());
        let r = records(&a);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].outcome.reason(), Some(Reason::RateLimited));
        // Resyncs of the same status still count nothing.
        t.on_pod(&failed, now + Duration::from_secs(1));
        assert!(records(&t.tick(now + Duration::from_secs(1), SystemTime::now())).is_empty());
    }

    #[test]
    fn status_failure_without_event_counts_after_the_window() {
        let since = SystemTime::now();
        let now = Instant::now();
        let mut t = KubeTracker::new(since);
        t.on_pod(&pod_with(PullState::Waiting, since), now);
        let failed = pod_with(PullState::Failed("429 Too Many Requests".into()), since);
        t.on_pod(&failed, now);
        // Resyncs of the same status are not new attempts.
        t.on_pod(&failed, now + Duration::from_secs(5));
        assert!(
            t.tick(now + Duration::from_secs(10), SystemTime::now())
                .is_empty()
        );
        let a = t.tick(now + DEDUP_WINDOW, SystemTime::now());
        let r = records(&a);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].outcome.reason(), Some(Reason::RateLimited));
        assert_eq!(r[0].duration, None);
        // Back-off, then a new failure: a second attempt.
        let b = t.on_pod(
            &pod_with(
                PullState::BackOff("Back-off pulling image \"nginx:nope\"".into()),
                since,
            ),
            now,
        );
        assert!(matches!(b[0], Action::BackingOff { reason: None, .. }));
        t.on_pod(&failed, now + DEDUP_WINDOW);
        assert_eq!(
            records(&t.tick(now + DEDUP_WINDOW * 2, SystemTime::now())).len(),
            1
        );
    }

    #[test]
    fn statuses_seen_first_in_a_relist_are_history_but_feed_backoff() {
        let since = SystemTime::now();
        let now = Instant::now();
        let mut t = KubeTracker::new(since);
        let old = since - Duration::from_secs(600);
        let a = t.on_pod(
            &pod_with(
                PullState::Failed(
                    "pull access denied, repository does not exist or may require authorization"
                        .into(),
                ),
                old,
            ),
            now,
        );
        assert_eq!(
            a,
            vec![Action::BackingOff {
                pod: pod(),
                image: "nginx:nope".into(),
                reason: Some(Reason::Unauthorized)
            }]
        );
        assert!(t.tick(now + DEDUP_WINDOW * 2, SystemTime::now()).is_empty());
        let b = t.on_pod(
            &pod_with(
                PullState::BackOff(
                    "Back-off pulling image \"nginx:nope\": ErrImagePull: 429 Too Many Requests"
                        .into(),
                ),
                old,
            ),
            now,
        );
        assert!(matches!(
            b[0],
            Action::BackingOff {
                reason: Some(Reason::RateLimited),
                ..
            }
        ));
        assert!(matches!(
            t.on_pod(&pod_with(PullState::Present, old), now)[0],
            Action::Cleared { .. }
        ));
        assert_eq!(
            t.on_pod_deleted("uid-1"),
            vec![Action::PodGone("uid-1".into())]
        );
    }

    const BACKOFF: &str = "Back-off pulling image \"nginx:nope\"";

    #[test]
    fn memory_is_bounded() {
        let since = SystemTime::now();
        let now = Instant::now();
        let mut t = KubeTracker::new(since);
        for i in 0..(MAX_TRACKED_EVENTS + 500) {
            let at = since + Duration::from_millis(i as u64);
            t.on_event(&ev(&format!("e{i}"), 1, "BackOff", BACKOFF, at), now);
        }
        t.tick(now, since);
        assert_eq!(t.tracked_events(), MAX_TRACKED_EVENTS);
        // The oldest went first: the newest is still known (a repeat counts nothing).
        let last = MAX_TRACKED_EVENTS + 499;
        let at = since + Duration::from_millis(last as u64);
        assert!(
            t.on_event(&ev(&format!("e{last}"), 1, "BackOff", BACKOFF, at), now)
                .is_empty()
        );
        // Events that are not about pulls are not remembered at all.
        t.on_event(&ev("x", 1, "Started", "Started container app", since), now);
        assert_eq!(t.tracked_events(), MAX_TRACKED_EVENTS);
        t.tick(now, since + EVENT_MEMORY + Duration::from_secs(60));
        assert_eq!(t.tracked_events(), 0);
    }
}
