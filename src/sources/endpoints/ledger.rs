//! The bytes the runtime received per endpoint over time, and whose they were. Each read of
//! the runtime's connections ([`Ledger::observe`]) turns the growth of every connection's
//! received bytes since the last read into a [`Delta`] over that interval. A delta belongs to
//! a registry when only one can own it: the endpoint serves one registry alone, or of the
//! registries it serves only one had a pull going. Otherwise it stays unattributed
//! (`unknown`), never guessed. Pulls are often learned of only at their end (containerd's
//! record), so a delta is counted ([`Ledger::settle`]) only once [`SETTLE`] has passed, when
//! the pulls that ran beside it have ended and said so. A finished pull's [`EndpointReport`]
//! sums the deltas of its window; the endpoints before the last one that served it alone are
//! those containerd went past. Pure: time and the connections come from the caller.

use super::hosts::Endpoint;
use crate::core::endpoints::{EndpointReport, Fallback, FallbackCause, Served};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The endpoint label of an address no configured host resolves to.
pub(super) const OTHER: &str = "other";
/// A delta is attributed and counted this long after its interval ended.
pub(super) const SETTLE: Duration = Duration::from_secs(5);
/// Deltas are kept this long (a pull's report sums those of its window).
const KEEP: Duration = Duration::from_secs(15 * 60);
/// Deltas kept at most.
const MAX_DELTAS: usize = 65_536;
/// Registries whose pull activity is kept at most (the least recently active leaves first).
const MAX_REGISTRIES: usize = 256;
/// Starts without an end (and ended pulls) kept per registry at most; how long a start waits.
const MAX_OPEN: usize = 64;
const OPEN_MAX_AGE: Duration = Duration::from_secs(30 * 60);

/// Which registries an endpoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Users {
    /// Only these (their `hosts.toml` name it).
    Only(Vec<String>),
    /// Any registry (`_default` names it, or no configured host has its address).
    Any,
}

/// Bytes one endpoint sent in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delta {
    pub from: Instant,
    pub to: Instant,
    /// Index of the endpoint among the configured ones; `None`: [`OTHER`].
    pub endpoint: Option<usize>,
    pub bytes: u64,
    /// The registry, when only one can own them (decided when settled).
    pub registry: Option<String>,
    /// Counted already.
    pub settled: bool,
}

/// Pulls of one registry: started and not ended, and ended recently.
#[derive(Debug, Default)]
struct Activity {
    open: VecDeque<Instant>,
    spans: VecDeque<(Instant, Instant)>,
    last: Option<Instant>,
}

impl Activity {
    fn during(&self, from: Instant, to: Instant) -> bool {
        self.open.iter().any(|s| *s < to) || self.spans.iter().any(|(s, e)| *s < to && *e > from)
    }
}

/// Downloads seen in progress, per registry host (containerd's download labels name the host
/// without its port): the times they were seen.
#[derive(Debug, Default)]
struct Downloads(HashMap<String, VecDeque<Instant>>);

impl Downloads {
    fn seen(&mut self, host: &str, now: Instant) {
        if !self.0.contains_key(host) && self.0.len() >= MAX_REGISTRIES {
            return;
        }
        let times = self.0.entry(host.to_string()).or_default();
        times.retain(|t| now.saturating_duration_since(*t) < KEEP);
        if times.len() >= 4 * MAX_OPEN {
            times.pop_front();
        }
        times.push_back(now);
    }

    fn during(&self, registry: &str, from: Instant, to: Instant) -> bool {
        self.0
            .get(host_of(registry))
            .is_some_and(|times| times.iter().any(|t| *t >= from && *t <= to))
    }
}

/// The host of a registry name (`host`, `host:port`, `[v6]:port`).
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => registry,
    }
}

/// One endpoint of a pull's registry, as the ledger needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Candidate {
    /// Index among the configured endpoints (`None`: not labelled, counts as `other`).
    pub endpoint: Option<usize>,
    /// Whether containerd tries it for every request before the next.
    pub fails_over: bool,
}

/// A finished pull's report and the fallbacks to count: a successful pull's, not counted yet
/// for an overlapping pull of the same registry.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Judged {
    pub report: EndpointReport,
    pub count: Vec<usize>,
}

/// Bytes per endpoint over time.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Per socket inode: its endpoint and the bytes it had received at the last read.
    sockets: HashMap<u64, (Option<usize>, u64)>,
    /// When the connections were last read (`None`: never; the first read is the baseline).
    last: Option<Instant>,
    deltas: VecDeque<Delta>,
    activity: HashMap<String, Activity>,
    downloads: Downloads,
    /// When a fallback past (registry, endpoint) was last counted.
    counted: HashMap<(String, usize), Instant>,
}

impl Ledger {
    /// A pull of `registry` started at `now`.
    pub(super) fn started(&mut self, registry: &str, now: Instant) {
        let a = self.activity(registry, now);
        a.open
            .retain(|s| now.saturating_duration_since(*s) < OPEN_MAX_AGE);
        if a.open.len() >= MAX_OPEN {
            a.open.pop_front();
        }
        a.open.push_back(now);
    }

    /// Downloads from registry host `host` were in progress at `now`.
    pub(super) fn downloading(&mut self, host: &str, now: Instant) {
        self.downloads.seen(host, now);
    }

    /// Whether a pull is known to be going at `now` (started and not ended, or downloads seen
    /// within `recent`): between pulls the connections need no reading, as each pull's end
    /// reads them anyway.
    pub(super) fn busy(&self, now: Instant, recent: Duration) -> bool {
        self.activity.values().any(|a| {
            a.open
                .iter()
                .any(|s| now.saturating_duration_since(*s) < OPEN_MAX_AGE)
        }) || self.downloads.0.values().any(|times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < recent)
        })
    }

    /// Whether a pull of `registry` ran between `from` and `to`, as far as is known: started or
    /// ended then, or downloads from its host seen then.
    fn active(&self, registry: &str, from: Instant, to: Instant) -> bool {
        self.activity
            .get(registry)
            .is_some_and(|a| a.during(from, to))
            || self.downloads.during(registry, from, to)
    }

    /// A pull of `registry` that started at `start` ended at `now` (said before the read at
    /// its end, so the bytes of that read can be its own).
    pub(super) fn ended(&mut self, registry: &str, start: Instant, now: Instant) {
        let a = self.activity(registry, now);
        // The start this end belongs to: the oldest one not after it (a second of slack for
        // clocks read on different threads and start times estimated by sources).
        let slack = Duration::from_secs(1);
        if let Some(i) = a.open.iter().position(|s| *s <= start + slack) {
            a.open.remove(i);
        }
        if a.spans.len() >= MAX_OPEN {
            a.spans.pop_front();
        }
        a.spans.push_back((start, now));
    }

    fn activity(&mut self, registry: &str, now: Instant) -> &mut Activity {
        if !self.activity.contains_key(registry) && self.activity.len() >= MAX_REGISTRIES {
            let oldest = self
                .activity
                .iter()
                .min_by_key(|(_, a)| a.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.activity.remove(&k);
            }
        }
        let a = self.activity.entry(registry.to_string()).or_default();
        a.last = Some(now);
        a
    }

    /// The registry bytes of an endpoint with `users` between `from` and `to` belong to, if
    /// only one can own them.
    fn owner(&self, users: &Users, from: Instant, to: Instant) -> Option<String> {
        if let Users::Only(only) = users
            && let [one] = only.as_slice()
        {
            return Some(one.clone());
        }
        let known: Vec<&str> = match users {
            Users::Only(only) => only.iter().map(String::as_str).collect(),
            Users::Any => self.activity.keys().map(String::as_str).collect(),
        };
        let mut active = known.into_iter().filter(|r| self.active(r, from, to));
        match (active.next(), active.next()) {
            (Some(one), None) => Some(one.to_string()),
            _ => None,
        }
    }

    /// A read of the runtime's connections at `now`: `(inode, endpoint, bytes received)`.
    /// Keeps the growth since the last read (the first read only sets the baseline).
    pub(super) fn observe(&mut self, conns: &[(u64, Option<usize>, u64)], now: Instant) {
        let previous = std::mem::take(&mut self.sockets);
        let mut grown: HashMap<Option<usize>, u64> = HashMap::new();
        for (inode, endpoint, bytes) in conns {
            self.sockets.insert(*inode, (*endpoint, *bytes));
            let before = match previous.get(inode) {
                Some((_, b)) if *b <= *bytes => *b,
                // New since the last read: all its bytes came since (a reused inode or a
                // counter that went back is a new connection too).
                _ => 0,
            };
            if *bytes > before {
                *grown.entry(*endpoint).or_default() += bytes - before;
            }
        }
        let Some(from) = self.last.replace(now) else {
            return;
        };
        let mut out: Vec<Delta> = grown
            .into_iter()
            .map(|(endpoint, bytes)| Delta {
                from,
                to: now,
                endpoint,
                bytes,
                registry: None,
                settled: false,
            })
            .collect();
        out.sort_by_key(|d| d.endpoint);
        while self.deltas.len() + out.len() > MAX_DELTAS
            || self
                .deltas
                .front()
                .is_some_and(|d| now.saturating_duration_since(d.to) > KEEP)
        {
            // An unsettled delta pushed out by the cap is lost to the counts (the cap is far
            // above what reads every second make in the kept time).
            if self.deltas.pop_front().is_none() {
                break;
            }
        }
        self.deltas.extend(out);
    }

    /// The deltas whose interval ended [`SETTLE`] before `now` (all of them with `all`, at
    /// shutdown), attributed now, to be counted once.
    pub(super) fn settle(
        &mut self,
        now: Instant,
        all: bool,
        users: impl Fn(Option<usize>) -> Users,
    ) -> Vec<Delta> {
        let mut out = Vec::new();
        for i in 0..self.deltas.len() {
            let d = &self.deltas[i];
            if d.settled || (!all && now.saturating_duration_since(d.to) < SETTLE) {
                continue;
            }
            let owner = self.owner(&users(d.endpoint), d.from, d.to);
            let d = &mut self.deltas[i];
            d.registry = owner;
            d.settled = true;
            out.push(d.clone());
        }
        out
    }

    /// The report of a pull of `registry` from `start` to `now` (its end said with
    /// [`Self::ended`]), whose endpoints containerd tries in the order of `candidates` (labels
    /// from `label`); `failed` if it did.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judge(
        &mut self,
        registry: &str,
        start: Instant,
        now: Instant,
        candidates: &[Candidate],
        label: impl Fn(Option<usize>) -> String,
        users: impl Fn(Option<usize>) -> Users,
        failed: bool,
    ) -> Judged {
        // Bytes per endpoint in the window: (alone, shared).
        let mut bytes: Vec<(Option<usize>, u64, u64)> = Vec::new();
        for d in self.deltas.iter().filter(|d| d.to > start && d.from < now) {
            let owner = self.owner(&users(d.endpoint), d.from, d.to);
            let alone = owner.as_deref() == Some(registry);
            let shared = owner.is_none()
                && match users(d.endpoint) {
                    Users::Only(only) => only.iter().any(|o| o == registry),
                    Users::Any => true,
                }
                && self.active(registry, d.from, d.to);
            if !alone && !shared {
                continue;
            }
            let i = match bytes.iter().position(|(e, _, _)| *e == d.endpoint) {
                Some(i) => i,
                None => {
                    bytes.push((d.endpoint, 0, 0));
                    bytes.len() - 1
                }
            };
            if alone {
                bytes[i].1 += d.bytes;
            } else {
                bytes[i].2 += d.bytes;
            }
        }
        let of = |e: Option<usize>| bytes.iter().find(|(x, _, _)| *x == e).copied();
        let mut report = EndpointReport::default();
        // In containerd's order: the candidates, then whatever else served (`other`).
        let mut order: Vec<Option<usize>> = candidates
            .iter()
            .map(|c| c.endpoint)
            .filter(Option::is_some)
            .collect();
        let rest: Vec<Option<usize>> = bytes
            .iter()
            .map(|(e, _, _)| *e)
            .filter(|e| !order.contains(e))
            .collect();
        order.extend(rest);
        for e in order {
            if let Some((_, alone, shared)) = of(e)
                && alone + shared > 0
            {
                report.served_by.push(Served {
                    endpoint: label(e),
                    bytes: alone + shared,
                    shared: shared > 0,
                });
            }
        }
        // The last candidate that served this pull alone: containerd went past each one
        // before it that it tries for every request.
        let last = candidates.iter().rposition(|c| {
            c.endpoint.is_some() && of(c.endpoint).is_some_and(|(_, alone, _)| alone > 0)
        });
        let mut count = Vec::new();
        for c in &candidates[..last.unwrap_or(0)] {
            let (Some(e), true) = (c.endpoint, c.fails_over) else {
                continue;
            };
            let answered = of(Some(e)).is_some_and(|(_, a, s)| a + s > 0);
            report.fell_back_from.push(Fallback {
                endpoint: label(Some(e)),
                cause: if answered {
                    FallbackCause::Answered
                } else {
                    FallbackCause::NoResponse
                },
            });
            // Counted for pulls that got their content from a later endpoint; a failed pull
            // names them too, uncounted.
            let key = (registry.to_string(), e);
            if !failed && self.counted.get(&key).is_none_or(|at| *at < start) {
                self.counted.insert(key, now);
                count.push(e);
            }
        }
        self.counted
            .retain(|_, at| now.saturating_duration_since(*at) < KEEP);
        if failed {
            report.tried = candidates.iter().map(|c| label(c.endpoint)).collect();
        }
        Judged { report, count }
    }
}

/// The candidates of a registry's endpoints, by label index.
pub(super) fn candidates(
    endpoints: &[Endpoint],
    index: impl Fn(&str) -> Option<usize>,
) -> Vec<Candidate> {
    endpoints
        .iter()
        .map(|e| Candidate {
            endpoint: index(&e.label),
            fails_over: e.fails_over,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIRROR: usize = 0;
    const UP_A: usize = 1;
    const UP_B: usize = 2;
    const LABELS: [&str; 3] = ["mirror:5001", "a:5000", "b:5000"];

    fn users(e: Option<usize>) -> Users {
        match e {
            Some(MIRROR) => Users::Only(vec!["a:5000".into(), "b:5000".into()]),
            Some(UP_A) => Users::Only(vec!["a:5000".into()]),
            Some(UP_B) => Users::Only(vec!["b:5000".into()]),
            _ => Users::Any,
        }
    }
    fn label(e: Option<usize>) -> String {
        e.map_or(OTHER.into(), |i| LABELS[i].into())
    }
    fn cands(up: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                endpoint: Some(MIRROR),
                fails_over: true,
            },
            Candidate {
                endpoint: Some(up),
                fails_over: true,
            },
        ]
    }
    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// A pull of `registry` from `a` to `b` ms, its end said before the read at `b`.
    fn pull(
        l: &mut Ledger,
        t0: Instant,
        registry: &str,
        (a, b): (u64, u64),
        up: usize,
        failed: bool,
    ) -> Judged {
        l.ended(registry, ms(t0, a), ms(t0, b));
        l.judge(
            registry,
            ms(t0, a),
            ms(t0, b),
            &cands(up),
            label,
            users,
            failed,
        )
    }

    #[test]
    fn a_pull_served_by_the_mirror_has_no_fallback() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.observe(&[(1, Some(MIRROR), 100)], t0);
        l.started("a:5000", ms(t0, 10));
        l.observe(&[(1, Some(MIRROR), 100)], ms(t0, 10));
        // The mirror's connection received 5000 more bytes, a new one to it 300.
        l.observe(
            &[(1, Some(MIRROR), 5100), (2, Some(MIRROR), 300)],
            ms(t0, 50),
        );
        let j = pull(&mut l, t0, "a:5000", (10, 50), UP_A, false);
        assert_eq!(j.report.summary(), "served by mirror:5001 (5300 B)");
        assert!(j.count.is_empty());
        assert!(
            l.settle(ms(t0, 50), false, users).is_empty(),
            "not settled yet"
        );
        let d = l.settle(ms(t0, 50) + SETTLE, false, users);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].bytes, d[0].registry.as_deref()),
            (5300, Some("a:5000"))
        );
        assert!(
            l.settle(ms(t0, 50) + SETTLE * 2, true, users).is_empty(),
            "counted once"
        );
    }

    #[test]
    fn bytes_from_the_upstream_after_the_mirror_answered_count_one_fallback() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.observe(&[], t0);
        l.started("a:5000", ms(t0, 10));
        l.observe(&[(1, Some(MIRROR), 200), (2, Some(UP_A), 9000)], ms(t0, 90));
        let j = pull(&mut l, t0, "a:5000", (10, 90), UP_A, false);
        assert_eq!(
            j.report.summary(),
            "served by mirror:5001 (200 B), a:5000 (9000 B); fell back from mirror:5001 (answered)"
        );
        assert_eq!(j.count, vec![MIRROR]);
        // A mirror that sent nothing (down): no_response. An overlapping pull of the same
        // registry lists it but does not count it again.
        let mut l = Ledger::default();
        l.observe(&[], t0);
        l.started("a:5000", ms(t0, 10));
        l.started("a:5000", ms(t0, 20));
        l.observe(&[(2, Some(UP_A), 9000)], ms(t0, 90));
        let j = pull(&mut l, t0, "a:5000", (10, 90), UP_A, true);
        assert_eq!(j.report.fell_back_from[0].cause, FallbackCause::NoResponse);
        assert_eq!(j.report.tried, ["mirror:5001", "a:5000"]);
        assert!(j.count.is_empty(), "a failed pull names it, uncounted");
        let j = pull(&mut l, t0, "a:5000", (10, 90), UP_A, false);
        assert_eq!(j.count, vec![MIRROR]);
        let j = pull(&mut l, t0, "a:5000", (20, 95), UP_A, false);
        assert_eq!(j.report.fell_back_from.len(), 1);
        assert!(j.count.is_empty(), "counted once for overlapping pulls");
    }

    #[test]
    fn a_shared_mirror_with_two_registries_pulling_is_not_guessed() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.observe(&[], t0);
        l.started("a:5000", ms(t0, 5));
        l.started("b:5000", ms(t0, 6));
        l.observe(&[(1, Some(MIRROR), 4000), (2, Some(UP_B), 700)], ms(t0, 80));
        let a = pull(&mut l, t0, "a:5000", (5, 80), UP_A, false);
        assert_eq!(a.report.summary(), "served by mirror:5001 (4000 B, shared)");
        assert!(a.report.fell_back_from.is_empty());
        let b = pull(&mut l, t0, "b:5000", (6, 80), UP_B, false);
        assert_eq!(
            b.report.summary(),
            "served by mirror:5001 (4000 B, shared), b:5000 (700 B); fell back from mirror:5001 (answered)"
        );
        let d = l.settle(ms(t0, 80) + SETTLE, false, users);
        let mirror = d.iter().find(|d| d.endpoint == Some(MIRROR)).unwrap();
        assert_eq!(mirror.registry, None, "unknown, never guessed");
        let up = d.iter().find(|d| d.endpoint == Some(UP_B)).unwrap();
        assert_eq!(
            up.registry.as_deref(),
            Some("b:5000"),
            "the upstream is b's alone"
        );
        // Alone again: the mirror's bytes are the one active registry's; bytes of an address
        // no host has, with no pull going, are nobody's.
        l.observe(&[(1, Some(MIRROR), 4000), (3, None, 50)], ms(t0, 200));
        l.started("b:5000", ms(t0, 210));
        l.observe(&[(1, Some(MIRROR), 4500), (3, None, 50)], ms(t0, 300));
        let d = l.settle(ms(t0, 300) + SETTLE, false, users);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].endpoint, d[0].registry.as_deref()), (None, None));
        assert_eq!(
            (d[1].endpoint, d[1].registry.as_deref()),
            (Some(MIRROR), Some("b:5000"))
        );
    }

    #[test]
    fn a_pull_learned_of_at_its_end_owns_its_bytes_until_a_neighbour_says_it_ran_too() {
        // Passive mode: no start; the end is said before the read at the end.
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.observe(&[], t0);
        l.ended("a:5000", ms(t0, 100), ms(t0, 400));
        l.observe(&[(1, Some(MIRROR), 800)], ms(t0, 400));
        let j = l.judge(
            "a:5000",
            ms(t0, 100),
            ms(t0, 400),
            &cands(UP_A),
            label,
            users,
            false,
        );
        assert_eq!(j.report.summary(), "served by mirror:5001 (800 B)");
        // b pulled beside it and says so a moment later, before the delta settles.
        l.ended("b:5000", ms(t0, 150), ms(t0, 450));
        let d = l.settle(ms(t0, 400) + SETTLE, false, users);
        assert_eq!(d[0].registry, None, "two could own it: unknown");
    }

    #[test]
    fn downloads_seen_from_a_host_make_its_registries_active() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.observe(&[], t0);
        // b's downloads were seen (by host, without port) while a ran: a's bytes via the
        // shared mirror are not a's alone.
        l.downloading("b", ms(t0, 200));
        l.ended("a:5000", ms(t0, 100), ms(t0, 400));
        l.observe(&[(1, Some(MIRROR), 800)], ms(t0, 400));
        let j = l.judge(
            "a:5000",
            ms(t0, 100),
            ms(t0, 400),
            &cands(UP_A),
            label,
            users,
            false,
        );
        assert_eq!(j.report.summary(), "served by mirror:5001 (800 B, shared)");
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("b:5000"), "b");
        assert_eq!(host_of("docker.io"), "docker.io");
        assert!(l.busy(ms(t0, 300), Duration::from_millis(200)));
        assert!(
            !l.busy(ms(t0, 500), Duration::from_millis(200)),
            "idle between pulls"
        );
        l.started("c:1", ms(t0, 600));
        assert!(l.busy(ms(t0, 900), Duration::from_millis(200)));
    }

    #[test]
    fn the_first_read_is_a_baseline_and_old_deltas_go() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        l.observe(&[(1, Some(UP_A), 1 << 30)], t0);
        assert!(l.settle(t0 + KEEP, true, users).is_empty());
        l.observe(&[(1, Some(UP_A), (1 << 30) + 10)], ms(t0, 1));
        assert_eq!(l.settle(ms(t0, 1), true, users)[0].bytes, 10);
        l.observe(&[(1, Some(UP_A), (1 << 30) + 20)], t0 + KEEP * 2);
        assert_eq!(l.deltas.len(), 1);
        for i in 0..(MAX_REGISTRIES + 10) {
            l.started(&format!("r{i}"), ms(t0, i as u64));
        }
        assert_eq!(l.activity.len(), MAX_REGISTRIES);
    }
}
