//! The pulls view: pulls in progress now, with their download progress, and the last finished
//! attempts with their cause and fix hint, as `GET /pulls` serves them, `pullwatch pulls` shows
//! them and the pod events read them. Bounded: live pulls are the interposer's in-flight calls;
//! finished ones a ring of [`FINISHED_KEPT`]; download summaries per (registry host, repository)
//! are replaced at each poll.

use crate::core::attempt::{AttemptResult, Outcome, PodRef, PullAttempt};
use crate::core::endpoints::EndpointReport;
use crate::core::reason::Reason;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Rate samples that must agree (within a factor of 2) before a time left is given.
const RATE_SAMPLES: usize = 3;
/// Finished attempts kept for `GET /pulls`.
pub(crate) const FINISHED_KEPT: usize = 50;
/// Live pulls tracked at most (beyond, new pulls are not shown; they are still counted).
const LIVE_MAX: usize = 4096;
/// Longest error text kept per finished attempt.
const ERROR_MAX: usize = 1024;
pub(crate) use crate::core::progress::{Downloads, RepoKey};

#[derive(Debug, Clone)]
struct Live {
    pod: Option<PodRef>,
    image: String,
    registry: String,
    key: Option<RepoKey>,
    started: Instant,
    /// Bytes this repository had committed when the pull started.
    committed_at_start: u64,
    /// Announced from a pod status only: shown once downloads of its repository are seen.
    tentative: bool,
}

crate::label_enum! {
    /// Where a pull in progress is, as the pulls view tells it.
    pub(crate) enum LivePhase {
        /// No download seen yet: resolving the manifest, authenticating.
        Resolve => "resolve",
        /// Downloads in flight.
        Download => "download",
        /// Downloads in flight that have not moved for the stall window.
        Stalled => "stalled",
        /// Downloads done: unpacking.
        Unpack => "unpack",
    }
}

/// One pull in progress, as `GET /pulls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct InProgress {
    /// Stable while the pull runs (for updating the same pod Event).
    pub id: u64,
    /// The pod, if the caller named one.
    pub pod: Option<PodRef>,
    /// Image as requested.
    pub image: String,
    /// Registry label value (host:port).
    pub registry: String,
    /// Where the pull is now.
    pub phase: LivePhase,
    /// Seconds since the pull started.
    pub elapsed_seconds: f64,
    /// Bytes done: of the whole image (blobs already in the store count) once its manifest is
    /// known, else of the downloads so far.
    pub bytes_done: u64,
    /// The image's size from its manifest, or (`total_from_manifest` false) the size of the
    /// downloads started so far (containerd fetches a few layers at a time).
    pub bytes_total: u64,
    /// Whether `bytes_total` is the whole image's.
    pub total_from_manifest: bool,
    /// Layers present and layers of the image, once the manifest is known.
    pub layers_done: Option<u64>,
    /// See `layers_done`.
    pub layers_total: Option<u64>,
    /// Downloads in flight now.
    pub downloads: u64,
    /// Receive rate now, bytes per second.
    pub rate_bytes_per_second: f64,
    /// Seconds left at the current rate for the downloads started so far, when it moves.
    pub eta_seconds: Option<f64>,
    /// Since when (Unix ms) its downloads have not moved, if stalled.
    pub stalled_since_unix_ms: Option<u64>,
}

/// One finished attempt, as `GET /pulls` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finished {
    /// Its place in the order attempts finished (from 1), for readers that follow the view.
    pub seq: u64,
    /// The pod, if known.
    pub pod: Option<PodRef>,
    /// Image as requested.
    pub image: String,
    /// Registry label value.
    pub registry: String,
    /// How it ended.
    pub result: AttemptResult,
    /// Classified reason of a failure.
    pub reason: Option<Reason>,
    /// Its one-line fix hint (as `pullwatch explain` gives it).
    pub hint: Option<String>,
    /// The runtime's error (cut to 1 KiB).
    pub error: Option<String>,
    /// Duration, if measured.
    pub duration_seconds: Option<f64>,
    /// When it ended (Unix ms).
    pub finished_unix_ms: u64,
    /// The registry endpoints that served it and those it fell back from, where mirrors are
    /// configured and watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointReport>,
}

/// What `GET /pulls` answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Pulls in progress, oldest first.
    pub in_progress: Vec<InProgress>,
    /// The last finished attempts, newest first.
    pub finished: Vec<Finished>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    finished_seq: u64,
    live: BTreeMap<u64, Live>,
    finished: VecDeque<Finished>,
    downloads: HashMap<RepoKey, Downloads>,
    /// The last receive rates per repository (steady when they agree).
    rates: HashMap<RepoKey, VecDeque<f64>>,
    /// Bytes committed per repository since start (bounded by the repositories in flight).
    committed: HashMap<RepoKey, u64>,
}

/// The view (shared by the recorder, the sources, the HTTP endpoint and the pod events).
#[derive(Debug, Default)]
pub(crate) struct PullsView(Mutex<Inner>);

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl PullsView {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pull started; `None` when too many are tracked. Call [`Self::ended`] with the id.
    pub(crate) fn started(
        &self,
        image: &str,
        registry: &str,
        repository: Option<&str>,
        pod: Option<PodRef>,
        tentative: bool,
    ) -> Option<u64> {
        let mut inner = self.lock();
        if inner.live.len() >= LIVE_MAX {
            return None;
        }
        let key = repository.map(|r| {
            (
                crate::core::reference::split_port(registry).0.to_string(),
                r.to_string(),
            )
        });
        let committed_at_start = key
            .as_ref()
            .and_then(|k| inner.committed.get(k))
            .copied()
            .unwrap_or(0);
        inner.next_id += 1;
        let id = inner.next_id;
        inner.live.insert(
            id,
            Live {
                pod,
                image: image.to_string(),
                registry: registry.to_string(),
                key,
                started: Instant::now(),
                committed_at_start,
                tentative,
            },
        );
        Some(id)
    }

    /// The pull `id` is over (its attempt is recorded separately, see [`Self::finished`]).
    pub(crate) fn ended(&self, id: u64) {
        let mut inner = self.lock();
        inner.live.remove(&id);
        if inner.live.is_empty() {
            // Nothing to measure against: keep the map from growing with every repository.
            inner.committed.clear();
        }
    }

    /// Records a finished attempt of the attempt authority.
    pub(crate) fn finished(&self, attempt: &PullAttempt, endpoints: Option<&EndpointReport>) {
        let (reason, hint, error) = match &attempt.outcome {
            Outcome::Success { .. } => (None, None, None),
            Outcome::Failure {
                reason, message, ..
            } => {
                let mut error = message.clone();
                crate::core::attempt::truncate(&mut error, ERROR_MAX);
                let hint = reason
                    .case_hint(attempt.credentials)
                    .unwrap_or_else(|| reason.hint());
                (Some(*reason), Some(hint.to_string()), Some(error))
            }
        };
        let mut f = Finished {
            seq: 0,
            pod: attempt.pod.clone(),
            image: attempt.image.clone(),
            registry: attempt.registry().to_string(),
            result: attempt.outcome.result(),
            reason,
            hint,
            error,
            duration_seconds: attempt.duration.map(|d| d.as_secs_f64()),
            finished_unix_ms: unix_ms(attempt.started_at + attempt.duration.unwrap_or_default()),
            endpoints: endpoints.cloned(),
        };
        let mut inner = self.lock();
        inner.finished_seq += 1;
        f.seq = inner.finished_seq;
        if inner.finished.len() >= FINISHED_KEPT {
            inner.finished.pop_back();
        }
        inner.finished.push_front(f);
    }

    /// The containerd source's latest poll: downloads in flight per (host, repository).
    pub(crate) fn set_downloads(&self, downloads: HashMap<RepoKey, Downloads>) {
        let mut inner = self.lock();
        inner.rates.retain(|k, _| downloads.contains_key(k));
        for (k, d) in &downloads {
            let rates = inner.rates.entry(k.clone()).or_default();
            if rates.len() >= RATE_SAMPLES {
                rates.pop_front();
            }
            rates.push_back(d.rate);
        }
        inner.downloads = downloads;
    }

    /// A download from (host, repository) was committed with `bytes`.
    pub(crate) fn committed(&self, host: &str, repository: &str, bytes: u64) {
        let mut inner = self.lock();
        if inner.live.is_empty() {
            return;
        }
        let key = (host.to_string(), repository.to_string());
        let watched = inner.live.values().any(|l| l.key.as_ref() == Some(&key));
        if watched {
            *inner.committed.entry(key).or_default() += bytes;
        }
    }

    /// Pulls in progress and the last finished attempts, now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let now = Instant::now();
        let in_progress = inner
            .live
            .iter()
            .filter_map(|(id, l)| {
                let none = Downloads::default();
                let d = l
                    .key
                    .as_ref()
                    .and_then(|k| inner.downloads.get(k))
                    .unwrap_or(&none);
                let committed = l
                    .key
                    .as_ref()
                    .and_then(|k| inner.committed.get(k))
                    .map_or(0, |c| c.saturating_sub(l.committed_at_start));
                let (bytes_done, bytes_total) = match d.image {
                    Some(i) => (i.done, i.total),
                    None => (committed + d.bytes, committed + d.total.max(d.bytes)),
                };
                let phase = if d.stalled_since.is_some() {
                    LivePhase::Stalled
                } else if d.count > 0 {
                    LivePhase::Download
                } else if bytes_done > 0 {
                    LivePhase::Unpack
                } else {
                    LivePhase::Resolve
                };
                // A pull only a pod status announced shows once its downloads do.
                if l.tentative && phase == LivePhase::Resolve {
                    return None;
                }
                let steady = l
                    .key
                    .as_ref()
                    .and_then(|k| inner.rates.get(k))
                    .is_some_and(|r| {
                        let (lo, hi) = r
                            .iter()
                            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
                        r.len() >= RATE_SAMPLES && lo > 0.0 && hi <= 2.0 * lo
                    });
                let eta_seconds = (steady && d.rate > 0.0 && bytes_total > bytes_done)
                    .then(|| (bytes_total - bytes_done) as f64 / d.rate);
                Some(InProgress {
                    id: *id,
                    pod: l.pod.clone(),
                    image: l.image.clone(),
                    registry: l.registry.clone(),
                    phase,
                    elapsed_seconds: now.saturating_duration_since(l.started).as_secs_f64(),
                    bytes_done,
                    bytes_total,
                    total_from_manifest: d.image.is_some(),
                    layers_done: d.image.map(|i| i.layers_done),
                    layers_total: d.image.map(|i| i.layers_total),
                    downloads: d.count,
                    rate_bytes_per_second: d.rate,
                    eta_seconds,
                    stalled_since_unix_ms: d.stalled_since.map(unix_ms),
                })
            })
            .collect();
        Snapshot {
            in_progress,
            finished: inner.finished.iter().cloned().collect(),
        }
    }
}

/// `bytes` for people: `340 MiB`, `1.2 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration for people: `35 s`, `4 min 10 s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

impl InProgress {
    /// One line saying how far the pull got: `340 MiB of 1.2 GiB (28 %), 25 MiB/s, about 35 s
    /// left; 3 of 7 layers done` (before the manifest is known: `of 12 MiB started`, and the
    /// downloads in flight).
    pub(crate) fn progress_line(&self) -> String {
        let mut s = human_bytes(self.bytes_done);
        if self.bytes_total > 0 {
            let pct = self.bytes_done as f64 * 100.0 / self.bytes_total as f64;
            let started = if self.total_from_manifest {
                ""
            } else {
                " started"
            };
            s.push_str(&format!(
                " of {}{started} ({pct:.0} %)",
                human_bytes(self.bytes_total)
            ));
        }
        if self.rate_bytes_per_second > 0.0 {
            s.push_str(&format!(
                ", {}/s",
                human_bytes(self.rate_bytes_per_second as u64)
            ));
        }
        if let Some(eta) = self.eta_seconds {
            s.push_str(&format!(
                ", about {} left",
                human_duration(Duration::from_secs_f64(eta.min(86_400.0)))
            ));
        }
        match (self.layers_done, self.layers_total) {
            (Some(done), Some(total)) => {
                s.push_str(&format!("; {done} of {total} layers done"));
            }
            _ => s.push_str(&format!(
                "; {} download{} in flight",
                self.downloads,
                if self.downloads == 1 { "" } else { "s" }
            )),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::reference::ImageRef;
    use tonic::Code;

    #[test]
    fn a_tentative_pull_shows_once_its_downloads_do() {
        let v = PullsView::default();
        v.started(
            "127.0.0.1:5000/team/app:1",
            "127.0.0.1:5000",
            Some("team/app"),
            None,
            true,
        )
        .unwrap();
        assert!(
            v.snapshot().in_progress.is_empty(),
            "no download: maybe no pull"
        );
        let key = ("127.0.0.1".to_string(), "team/app".to_string());
        let d = Downloads {
            bytes: 300,
            total: 1000,
            count: 1,
            rate: 100.0,
            stalled_since: None,
            image: None,
        };
        v.set_downloads(HashMap::from([(key, d)]));
        assert_eq!(v.snapshot().in_progress[0].phase, LivePhase::Download);
    }

    #[test]
    fn a_live_pull_shows_its_repositorys_downloads_and_ends() {
        let v = PullsView::default();
        let id = v
            .started(
                "127.0.0.1:5000/team/app:1",
                "127.0.0.1:5000",
                Some("team/app"),
                None,
                false,
            )
            .unwrap();
        assert_eq!(v.snapshot().in_progress[0].phase, LivePhase::Resolve);
        v.committed("127.0.0.1", "team/app", 100);
        let key = ("127.0.0.1".to_string(), "team/app".to_string());
        let d = Downloads {
            bytes: 300,
            total: 1000,
            count: 1,
            rate: 100.0,
            stalled_since: None,
            image: None,
        };
        v.set_downloads(HashMap::from([(key.clone(), d.clone())]));
        let p = &v.snapshot().in_progress[0];
        assert_eq!((p.bytes_done, p.bytes_total, p.downloads), (400, 1100, 1));
        assert_eq!(
            (p.phase, p.eta_seconds),
            (LivePhase::Download, None),
            "not steady yet"
        );
        assert_eq!(
            p.progress_line(),
            "400 B of 1.1 KiB started (36 %), 100 B/s; 1 download in flight"
        );
        // Three agreeing rates, and the manifest known: the whole image, layers, time left.
        let image = crate::core::progress::ImageProgress {
            done: 500,
            total: 1500,
            layers_done: 1,
            layers_total: 3,
        };
        for _ in 0..RATE_SAMPLES {
            v.set_downloads(HashMap::from([(
                key.clone(),
                Downloads {
                    image: Some(image),
                    ..d.clone()
                },
            )]));
        }
        let p = &v.snapshot().in_progress[0];
        assert_eq!(p.eta_seconds, Some(10.0));
        assert_eq!(
            p.progress_line(),
            "500 B of 1.5 KiB (33 %), 100 B/s, about 10 s left; 1 of 3 layers done"
        );
        let stalled = Downloads {
            stalled_since: Some(SystemTime::now()),
            ..Downloads::default()
        };
        v.set_downloads(HashMap::from([(key, stalled)]));
        assert_eq!(v.snapshot().in_progress[0].phase, LivePhase::Stalled);
        v.ended(id);
        assert!(v.snapshot().in_progress.is_empty());
    }

    #[test]
    fn finished_attempts_keep_cause_and_hint_and_are_bounded() {
        let v = PullsView::default();
        let attempt = |n: usize| PullAttempt {
            image: format!("quay.io/a/b:{n}"),
            reference: ImageRef::parse("quay.io/a/b:1").ok(),
            pod: None,
            started_at: SystemTime::now(),
            duration: Some(Duration::from_millis(10)),
            outcome: Outcome::failure(Code::Unknown, "429 Too Many Requests"),
            source: crate::core::attempt::Source::CriProxy,
            trace: None,
            credentials: None,
            readout: None,
        };
        for n in 0..FINISHED_KEPT + 5 {
            v.finished(&attempt(n), None);
        }
        let s = v.snapshot();
        assert_eq!(s.finished.len(), FINISHED_KEPT);
        assert_eq!(
            s.finished[0].image,
            format!("quay.io/a/b:{}", FINISHED_KEPT + 4)
        );
        assert_eq!(s.finished[0].reason, Some(Reason::RateLimited));
        assert!(
            s.finished[0]
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("rate limit"))
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(340 << 20), "340 MiB");
        assert_eq!(human_bytes(1288490188), "1.2 GiB");
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_duration(Duration::from_secs(250)), "4 min 10 s");
    }
}
