//! Tracks pod/image pairs whose latest pull failed and that kubelet is still retrying
//! (what `kubectl get pods` shows as `ImagePullBackOff` / `ErrImagePull`).

use crate::core::attempt::{PodRef, PullAttempt};
use crate::core::reason::Reason;
use crate::core::reference::ImageRef;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Default window after which a failing pair without new attempts is forgotten. kubelet's image
/// pull backoff caps at 5 minutes, so a pair still in backoff is retried within that; twice the
/// cap plus slack avoids flapping.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    pod: PodRef,
    /// Normalized reference (`nginx` and `docker.io/library/nginx:latest` are one image), or the
    /// text as given when it does not parse.
    image: String,
}

impl Key {
    fn new(pod: &PodRef, image: &str) -> Self {
        Key {
            pod: pod.clone(),
            // Every source names the same image the same way.
            image: ImageRef::parse(image).map_or_else(|_| image.to_string(), |r| r.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    registry: String,
    reason: Reason,
    last_attempt: Instant,
}

/// `(namespace, registry, reason)`: one series of the backoff gauge.
pub type BackoffGroup = (String, String, Reason);

/// The backoff state machine. Not thread-safe on its own; the pipeline wraps it in a mutex.
#[derive(Debug)]
pub struct BackoffTracker {
    expiry: Duration,
    entries: HashMap<Key, Entry>,
}

impl BackoffTracker {
    /// A tracker that forgets a pair `expiry` after its last attempt.
    pub fn new(expiry: Duration) -> Self {
        Self {
            expiry,
            entries: HashMap::new(),
        }
    }

    /// Feeds one attempt observed at `now`. `registry` is the label value to count it under
    /// (already passed through the cardinality guard). Attempts without a pod are ignored:
    /// nobody retries them.
    pub fn observe(&mut self, attempt: &PullAttempt, registry: &str, now: Instant) {
        let Some(pod) = &attempt.pod else { return };
        let key = match &attempt.reference {
            Some(r) => Key {
                pod: pod.clone(),
                image: r.to_string(),
            },
            None => Key::new(pod, &attempt.image),
        };
        match attempt.outcome.reason() {
            // A cancel is kubelet giving up on this attempt, not the image failing: keep state.
            Some(Reason::Canceled) => {
                if let Some(e) = self.entries.get_mut(&key) {
                    e.last_attempt = now;
                }
            }
            Some(reason) => self.enter(key, registry, reason, now),
            None => {
                self.entries.remove(&key);
            }
        }
    }

    /// kubelet says it is backing off `image` for `pod` (a `BackOff` event or an
    /// `ImagePullBackOff` status). A tracked pair stays in the gauge as if retried now; an
    /// untracked one enters with `failure` (`(registry label, reason)`) when the cause is known.
    pub fn backing_off(
        &mut self,
        pod: &PodRef,
        image: &str,
        failure: Option<(&str, Reason)>,
        now: Instant,
    ) {
        let key = Key::new(pod, image);
        if let Some(e) = self.entries.get_mut(&key) {
            e.last_attempt = now;
        } else if let Some((registry, reason)) = failure {
            self.enter(key, registry, reason, now);
        }
    }

    fn enter(&mut self, key: Key, registry: &str, reason: Reason, now: Instant) {
        self.entries.insert(
            key,
            Entry {
                registry: registry.to_string(),
                reason,
                last_attempt: now,
            },
        );
    }

    /// `image` is no longer failing for `pod` (its container runs, or waits for something else).
    pub fn clear(&mut self, pod: &PodRef, image: &str) {
        self.entries.remove(&Key::new(pod, image));
    }

    /// The pod with `uid` is gone: forget all its pairs.
    pub fn forget_pod(&mut self, uid: &str) {
        self.entries.retain(|k, _| k.pod.uid != uid);
    }

    /// Drops the pairs without an attempt for the expiry window.
    pub fn expire(&mut self, now: Instant) {
        let expiry = self.expiry;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_attempt) < expiry);
    }

    /// How long a pair stays without a new attempt.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Drops expired pairs and returns the number of pairs per `(namespace, registry, reason)`.
    pub fn snapshot(&mut self, now: Instant) -> BTreeMap<BackoffGroup, u64> {
        self.expire(now);
        // Count under borrowed keys (no allocation per pair), then own one key per group.
        let mut groups: BTreeMap<(&str, &str, Reason), u64> = BTreeMap::new();
        for (k, e) in &self.entries {
            *groups
                .entry((&k.pod.namespace, &e.registry, e.reason))
                .or_insert(0) += 1;
        }
        groups
            .into_iter()
            .map(|((ns, registry, reason), n)| ((ns.to_string(), registry.to_string(), reason), n))
            .collect()
    }

    /// Number of tracked pairs (including ones not yet expired by a snapshot).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pair is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::attempt::{Outcome, Source};
    use std::time::SystemTime;
    use tonic::Code;

    fn attempt(ns: &str, pod: &str, image: &str, outcome: Outcome) -> PullAttempt {
        PullAttempt {
            image: image.into(),
            reference: None,
            pod: Some(PodRef {
                namespace: ns.into(),
                name: pod.into(),
                uid: format!("uid-{pod}"),
            }),
            started_at: SystemTime::now(),
            duration: Some(Duration::from_millis(5)),
            outcome,
            source: Source::CriProxy,
            trace: None,
            credentials: None,
            readout: None,
        }
    }

    fn fail(msg: &str) -> Outcome {
        Outcome::failure(Code::Unknown, msg)
    }

    #[test]
    fn failure_enters_success_leaves() {
        let mut t = BackoffTracker::new(DEFAULT_EXPIRY);
        let now = Instant::now();
        t.observe(
            &attempt("prod", "a", "x:1", fail("x:1: not found")),
            "docker.io",
            now,
        );
        t.observe(
            &attempt("prod", "b", "x:1", fail("x:1: not found")),
            "docker.io",
            now,
        );
        t.observe(
            &attempt("dev", "c", "y:1", fail("429 Too Many Requests")),
            "docker.io",
            now,
        );
        let s = t.snapshot(now);
        assert_eq!(s[&("prod".into(), "docker.io".into(), Reason::NotFound)], 2);
        assert_eq!(
            s[&("dev".into(), "docker.io".into(), Reason::RateLimited)],
            1
        );
        // The retry of pod a succeeds: it leaves.
        let ok = Outcome::Success {
            image_ref: "sha256:1".into(),
        };
        t.observe(&attempt("prod", "a", "x:1", ok), "docker.io", now);
        let s = t.snapshot(now);
        assert_eq!(s[&("prod".into(), "docker.io".into(), Reason::NotFound)], 1);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn latest_reason_wins_and_cancel_keeps_state() {
        let mut t = BackoffTracker::new(DEFAULT_EXPIRY);
        let now = Instant::now();
        t.observe(
            &attempt("ns", "p", "i", fail("503 Service Unavailable")),
            "r",
            now,
        );
        t.observe(
            &attempt("ns", "p", "i", fail("connection refused")),
            "r",
            now,
        );
        t.observe(&attempt("ns", "p", "i", fail("context canceled")), "r", now);
        let s = t.snapshot(now);
        assert_eq!(s.len(), 1);
        assert_eq!(s[&("ns".into(), "r".into(), Reason::Network)], 1);
    }

    #[test]
    fn quiet_pairs_expire_and_pod_less_pulls_are_ignored() {
        let mut t = BackoffTracker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        t.observe(&attempt("ns", "p", "i", fail("not found: x")), "r", t0);
        let mut podless = attempt("ns", "q", "i", fail("not found: x"));
        podless.pod = None;
        t.observe(&podless, "r", t0);
        assert_eq!(
            t.snapshot(t0 + Duration::from_secs(59))
                .values()
                .sum::<u64>(),
            1
        );
        assert!(t.snapshot(t0 + Duration::from_secs(60)).is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn kubelet_backoff_signals_keep_clear_and_forget_pairs() {
        let mut t = BackoffTracker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let a = attempt("ns", "p", "nginx", fail("not found: x"));
        let pod = a.pod.clone().unwrap();
        t.observe(&a, "docker.io", t0);
        // Same image under its normalized name: refreshed, so it outlives the first expiry.
        t.backing_off(
            &pod,
            "docker.io/library/nginx:latest",
            None,
            t0 + Duration::from_secs(50),
        );
        assert_eq!(t.snapshot(t0 + Duration::from_secs(100)).len(), 1);
        // An unknown pair with no cause stays out; with a cause it enters.
        t.backing_off(&pod, "other:1", None, t0);
        assert_eq!(t.len(), 1);
        t.backing_off(
            &pod,
            "other:1",
            Some(("docker.io", Reason::RateLimited)),
            t0,
        );
        assert_eq!(t.len(), 2);
        t.clear(&pod, "nginx:latest");
        assert_eq!(t.len(), 1);
        t.forget_pod(&pod.uid);
        assert!(t.is_empty());
    }
}
