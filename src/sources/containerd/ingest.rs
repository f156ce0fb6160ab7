//! Tracks containerd content ingests (downloads in progress) across polls: bytes so far, receive
//! rate, stalls, and which ones ended. Pure state machine, fed by the containerd source.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// One ingest as containerd reports it (content service `ListStatuses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IngestSample {
    /// Ingest ref, e.g. `layer-sha256:ab…`.
    pub reference: String,
    /// Expected digest (may be empty).
    pub expected: String,
    /// Bytes written so far.
    pub offset: u64,
    /// Expected size (0 if unknown).
    pub total: u64,
}

impl IngestSample {
    /// The digest being downloaded: `expected`, or the digest in the ref (`layer-sha256:…`).
    pub(crate) fn digest(&self) -> &str {
        if !self.expected.is_empty() {
            return &self.expected;
        }
        self.reference
            .find("sha256:")
            .map_or(self.reference.as_str(), |i| &self.reference[i..])
    }
}

/// Where a download comes from, as far as containerd's labels tell.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Origin {
    /// Registry host.
    pub registry: String,
    /// Repository.
    pub repository: String,
}

#[derive(Debug)]
struct Tracked {
    digest: String,
    origin: Option<Origin>,
    first_seen: Instant,
    offset: u64,
    total: u64,
    last_progress: Instant,
    rate: f64,
    stalled: bool,
}

/// Something worth telling about an ingest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IngestEvent {
    /// First seen.
    Started {
        /// Ingest ref.
        reference: String,
        /// Origin, if known.
        origin: Option<Origin>,
    },
    /// No progress for the stall threshold.
    Stalled {
        /// Ingest ref.
        reference: String,
        /// Origin, if known.
        origin: Option<Origin>,
        /// Bytes so far.
        offset: u64,
        /// Expected size.
        total: u64,
        /// Time without progress.
        idle: Duration,
    },
    /// Progress again after a stall.
    Resumed {
        /// Ingest ref.
        reference: String,
    },
    /// No longer reported (committed or abandoned; the source checks which).
    Gone {
        /// Ingest ref.
        reference: String,
        /// Digest downloaded.
        digest: String,
        /// Origin, if known.
        origin: Option<Origin>,
        /// Last offset seen.
        offset: u64,
        /// Expected size.
        total: u64,
        /// When it was first seen.
        first_seen: Instant,
    },
}

/// Per-registry totals of in-flight downloads.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RegistryGauges {
    /// Bytes received so far by in-flight downloads.
    pub bytes: u64,
    /// Number of in-flight downloads.
    pub downloads: u64,
    /// Sum of receive rates, bytes/s.
    pub rate: f64,
    /// Stalled downloads.
    pub stalled: u64,
}

/// Registry label for downloads whose origin is not (yet) known.
pub(crate) const UNKNOWN: &str = crate::core::attempt::UNKNOWN_REGISTRY;

/// The tracker.
#[derive(Debug)]
pub(crate) struct IngestTracker {
    stall_after: Duration,
    ingests: HashMap<String, Tracked>,
}

impl IngestTracker {
    /// A tracker that calls a download stalled after `stall_after` without progress.
    pub(crate) fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            ingests: HashMap::new(),
        }
    }

    /// Digests of tracked downloads whose origin is unknown.
    #[cfg(test)]
    pub(crate) fn unattributed(&self) -> Vec<String> {
        self.ingests
            .values()
            .filter(|t| t.origin.is_none())
            .map(|t| t.digest.clone())
            .collect()
    }

    /// Feeds the current list of ingests observed at `now`. `origin_of` attributes a digest.
    pub(crate) fn update(
        &mut self,
        now: Instant,
        samples: &[IngestSample],
        origin_of: impl Fn(&str) -> Option<Origin>,
    ) -> Vec<IngestEvent> {
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            seen.insert(s.reference.as_str());
            let digest = s.digest().to_string();
            let t = self.ingests.entry(s.reference.clone()).or_insert_with(|| {
                let origin = origin_of(&digest);
                events.push(IngestEvent::Started {
                    reference: s.reference.clone(),
                    origin: origin.clone(),
                });
                Tracked {
                    digest,
                    origin,
                    first_seen: now,
                    offset: s.offset,
                    total: s.total,
                    last_progress: now,
                    rate: 0.0,
                    stalled: false,
                }
            });
            if t.origin.is_none() {
                t.origin = origin_of(&t.digest);
            }
            t.total = s.total;
            if s.offset != t.offset {
                let dt = now.saturating_duration_since(t.last_progress).as_secs_f64();
                let delta = s.offset.saturating_sub(t.offset) as f64;
                t.rate = if dt > 0.0 { delta / dt } else { 0.0 };
                t.offset = s.offset;
                t.last_progress = now;
                if std::mem::replace(&mut t.stalled, false) {
                    events.push(IngestEvent::Resumed {
                        reference: s.reference.clone(),
                    });
                }
            } else {
                let idle = now.saturating_duration_since(t.last_progress);
                if idle > Duration::ZERO {
                    t.rate = 0.0;
                }
                if !t.stalled && idle >= self.stall_after {
                    t.stalled = true;
                    events.push(IngestEvent::Stalled {
                        reference: s.reference.clone(),
                        origin: t.origin.clone(),
                        offset: t.offset,
                        total: t.total,
                        idle,
                    });
                }
            }
        }
        let gone: Vec<String> = self
            .ingests
            .keys()
            .filter(|r| !seen.contains(r.as_str()))
            .cloned()
            .collect();
        for reference in gone {
            if let Some(t) = self.ingests.remove(&reference) {
                events.push(IngestEvent::Gone {
                    reference,
                    digest: t.digest,
                    origin: t.origin,
                    offset: t.offset,
                    total: t.total,
                    first_seen: t.first_seen,
                });
            }
        }
        events
    }

    /// Current per-registry gauges.
    pub(crate) fn gauges(&self) -> BTreeMap<String, RegistryGauges> {
        let mut out: BTreeMap<String, RegistryGauges> = BTreeMap::new();
        for t in self.ingests.values() {
            let key = t.origin.as_ref().map_or(UNKNOWN, |o| o.registry.as_str());
            let g = out.entry(key.to_string()).or_default();
            g.bytes += t.offset;
            g.downloads += 1;
            g.rate += t.rate;
            g.stalled += u64::from(t.stalled);
        }
        out
    }

    /// Downloads in flight per (registry host, repository), for the pulls view; unattributed
    /// downloads are left out (no pull can be matched to them).
    pub(crate) fn by_repository(
        &self,
        now: Instant,
    ) -> HashMap<(String, String), crate::core::progress::Downloads> {
        let mut out: HashMap<(String, String), crate::core::progress::Downloads> = HashMap::new();
        let wall = std::time::SystemTime::now();
        for t in self.ingests.values() {
            let Some(o) = &t.origin else { continue };
            let d = out
                .entry((o.registry.clone(), o.repository.clone()))
                .or_default();
            d.bytes += t.offset;
            d.total += t.total;
            d.count += 1;
            d.rate += t.rate;
            if t.stalled {
                let since = wall - now.saturating_duration_since(t.last_progress);
                d.stalled_since = Some(d.stalled_since.map_or(since, |s| s.min(since)));
            }
        }
        out
    }

    /// Bytes received so far by each download in flight, by digest.
    pub(crate) fn offsets(&self) -> HashMap<String, u64> {
        self.ingests
            .values()
            .map(|t| (t.digest.clone(), t.offset))
            .collect()
    }

    /// Forgets everything (after losing the connection: what the outage hid is unknown).
    pub(crate) fn clear(&mut self) {
        self.ingests.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(r: &str, offset: u64, total: u64) -> IngestSample {
        IngestSample {
            reference: r.into(),
            expected: String::new(),
            offset,
            total,
        }
    }

    fn origin(d: &str) -> Option<Origin> {
        (d == "sha256:aa").then(|| Origin {
            registry: "reg:5000".into(),
            repository: "team/app".into(),
        })
    }

    #[test]
    fn progress_rate_and_completion() {
        let mut t = IngestTracker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let ev = t.update(
            t0,
            &[s("layer-sha256:aa", 0, 1000), s("layer-sha256:bb", 10, 50)],
            origin,
        );
        assert_eq!(ev.len(), 2);
        t.update(
            t0 + Duration::from_secs(2),
            &[
                s("layer-sha256:aa", 400, 1000),
                s("layer-sha256:bb", 10, 50),
            ],
            origin,
        );
        let g = t.gauges();
        assert_eq!(
            g["reg:5000"],
            RegistryGauges {
                bytes: 400,
                downloads: 1,
                rate: 200.0,
                stalled: 0
            }
        );
        assert_eq!(g[UNKNOWN].downloads, 1, "never a wrong registry: unknown");
        let ev = t.update(
            t0 + Duration::from_secs(3),
            &[s("layer-sha256:bb", 10, 50)],
            origin,
        );
        assert!(
            matches!(&ev[..], [IngestEvent::Gone { digest, offset: 400, total: 1000, origin: Some(_), .. }] if digest == "sha256:aa"),
            "{ev:?}"
        );
        assert!(!t.gauges().contains_key("reg:5000"));
    }

    #[test]
    fn stall_is_reported_once_and_clears_on_progress_or_disappearance() {
        let mut t = IngestTracker::new(Duration::from_secs(5));
        let t0 = Instant::now();
        t.update(t0, &[s("layer-sha256:aa", 100, 1000)], origin);
        assert!(
            t.update(
                t0 + Duration::from_secs(4),
                &[s("layer-sha256:aa", 100, 1000)],
                origin
            )
            .is_empty()
        );
        let ev = t.update(
            t0 + Duration::from_secs(5),
            &[s("layer-sha256:aa", 100, 1000)],
            origin,
        );
        assert!(
            matches!(&ev[..], [IngestEvent::Stalled { offset: 100, .. }]),
            "{ev:?}"
        );
        assert!(
            t.update(
                t0 + Duration::from_secs(9),
                &[s("layer-sha256:aa", 100, 1000)],
                origin
            )
            .is_empty(),
            "once"
        );
        assert_eq!(t.gauges()["reg:5000"].stalled, 1);
        let ev = t.update(
            t0 + Duration::from_secs(10),
            &[s("layer-sha256:aa", 200, 1000)],
            origin,
        );
        assert!(matches!(&ev[..], [IngestEvent::Resumed { .. }]));
        assert_eq!(t.gauges()["reg:5000"].stalled, 0);
        t.update(
            t0 + Duration::from_secs(20),
            &[s("layer-sha256:aa", 200, 1000)],
            origin,
        );
        assert_eq!(t.gauges()["reg:5000"].stalled, 1);
        t.update(t0 + Duration::from_secs(21), &[], origin);
        assert!(t.gauges().is_empty());
    }

    #[test]
    fn late_attribution_and_digest_from_ref() {
        let mut t = IngestTracker::new(Duration::from_secs(60));
        let t0 = Instant::now();
        t.update(t0, &[s("layer-sha256:aa", 0, 10)], |_| None);
        assert_eq!(t.unattributed(), ["sha256:aa"]);
        t.update(t0, &[s("layer-sha256:aa", 1, 10)], origin);
        assert!(t.unattributed().is_empty());
        assert_eq!(s("manifest-sha256:cc", 0, 0).digest(), "sha256:cc");
        let mut e = s("x", 0, 0);
        e.expected = "sha256:dd".into();
        assert_eq!(e.digest(), "sha256:dd");
    }
}
