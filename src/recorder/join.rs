//! The join of an observed success to containerd's content record of the same image (its
//! anatomy): a pure queue. Each half offered either meets a waiting other half (joined), waits
//! for one until its window ends, or goes on alone (no room, or joining has closed). Nothing here
//! records; the recorder does with what comes out.

use crate::core::anatomy::ContentRecord;
use crate::core::attempt::PullAttempt;
use crate::core::reference::ImageRef;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Halves waiting to be joined at most; beyond, they go on alone at once.
pub(crate) const MAX_WAITING: usize = 1024;
/// How much earlier than an attempt's start its content record may be stamped (containerd's
/// clock and pullwatch's are read at different moments).
const JOIN_SLACK: Duration = Duration::from_millis(50);

/// What becomes of a content record no attempt claims within the join window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unclaimed {
    /// It counts on its own (a new image record: a pull happened).
    Count,
    /// It is dropped (an updated image record: a re-pull if an attempt claims it, otherwise
    /// a label update by the runtime, which is no pull).
    Drop,
}

/// One half of a join.
#[derive(Debug, Clone)]
pub(crate) enum Half {
    /// An observed successful attempt.
    Attempt(Box<PullAttempt>),
    /// A content record, and what becomes of it unclaimed.
    Record(ContentRecord, Unclaimed),
}

/// What became of a half offered to the queue (returned and consumed at once: not boxed).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Fate {
    /// It met its other half.
    Joined(PullAttempt, ContentRecord),
    /// It waits for its other half.
    Waits,
    /// It goes on alone now.
    Alone(Half),
}

/// Items waiting to be joined, by image key, each with the moment it stops waiting.
type Waiting<T> = HashMap<String, VecDeque<(T, Instant)>>;

/// Attempts waiting for their content record and records waiting for their attempt, by image
/// (first come, first joined).
#[derive(Debug)]
pub(crate) struct JoinQueue {
    window: Duration,
    attempts: Waiting<PullAttempt>,
    records: Waiting<(ContentRecord, Unclaimed)>,
    waiting: usize,
    closed: bool,
}

impl JoinQueue {
    /// A queue where a half waits up to `window` for the other.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            attempts: HashMap::new(),
            records: HashMap::new(),
            waiting: 0,
            closed: false,
        }
    }

    /// Halves waiting now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Offers `half`, arriving at `now`. A record written before an attempt started is an
    /// earlier pull's (its label update, say): never that attempt's.
    pub(crate) fn offer(&mut self, half: Half, now: Instant) -> Fate {
        if self.closed {
            return Fate::Alone(half);
        }
        match half {
            Half::Attempt(attempt) => {
                let key = ImageRef::key(&attempt.image);
                let fits = |(c, _): &(ContentRecord, Unclaimed)| fits(c, &attempt);
                if let Some(record) = self.take_record(&key, fits) {
                    return Fate::Joined(*attempt, record);
                }
                if self.waiting >= MAX_WAITING {
                    return Fate::Alone(Half::Attempt(attempt));
                }
                self.waiting += 1;
                let until = now + self.window;
                let queue = self.attempts.entry(key).or_default();
                queue.push_back((*attempt, until));
                Fate::Waits
            }
            Half::Record(record, unclaimed) => {
                let key = ImageRef::key(&record.image);
                if let Some(attempt) = self.take_attempt(&key, |a| fits(&record, a)) {
                    return Fate::Joined(attempt, record);
                }
                if self.waiting >= MAX_WAITING {
                    return Fate::Alone(Half::Record(record, unclaimed));
                }
                self.waiting += 1;
                let until = now + self.window;
                let queue = self.records.entry(key).or_default();
                queue.push_back(((record, unclaimed), until));
                Fate::Waits
            }
        }
    }

    /// The halves whose window ended by `now`, removed, oldest first per image.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Half> {
        self.drain(Some(now))
    }

    /// Everything still waiting, removed; from now on every half goes on alone (at shutdown:
    /// nothing may wait for a join task that has stopped).
    pub(crate) fn close(&mut self) -> Vec<Half> {
        self.closed = true;
        self.drain(None)
    }

    fn drain(&mut self, now: Option<Instant>) -> Vec<Half> {
        let attempts = expire(&mut self.attempts, now);
        let records = expire(&mut self.records, now);
        self.waiting -= attempts.len() + records.len();
        let attempts = attempts.into_iter().map(|a| Half::Attempt(Box::new(a)));
        attempts
            .chain(records.into_iter().map(|(r, u)| Half::Record(r, u)))
            .collect()
    }

    fn take_record(
        &mut self,
        key: &str,
        fits: impl Fn(&(ContentRecord, Unclaimed)) -> bool,
    ) -> Option<ContentRecord> {
        let taken = take(&mut self.records, key, fits)?;
        self.waiting -= 1;
        Some(taken.0)
    }

    fn take_attempt(
        &mut self,
        key: &str,
        fits: impl Fn(&PullAttempt) -> bool,
    ) -> Option<PullAttempt> {
        let taken = take(&mut self.attempts, key, fits)?;
        self.waiting -= 1;
        Some(taken)
    }
}

/// Whether `record` may be `attempt`'s: not stamped before the attempt started.
fn fits(record: &ContentRecord, attempt: &PullAttempt) -> bool {
    record.recorded_at + JOIN_SLACK >= attempt.started_at
}

/// The first item waiting under `key` that `fits`; those before it that do not fit are left to
/// wait out their window.
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
fn expire<T>(map: &mut Waiting<T>, now: Option<Instant>) -> Vec<T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::attempt::{Outcome, Source};
    use std::time::SystemTime;

    fn attempt(image: &str, started_at: SystemTime) -> PullAttempt {
        PullAttempt {
            image: image.into(),
            reference: ImageRef::parse(image).ok(),
            pod: None,
            started_at,
            duration: Some(Duration::from_secs(1)),
            outcome: Outcome::Success {
                image_ref: "sha256:a".into(),
            },
            source: Source::CriProxy,
            trace: None,
            credentials: None,
            readout: None,
        }
    }

    fn record(image: &str, recorded_at: SystemTime) -> ContentRecord {
        ContentRecord {
            image: image.into(),
            blobs: Vec::new(),
            recorded_at,
        }
    }

    fn joined(f: &Fate) -> bool {
        matches!(f, Fate::Joined(..))
    }

    #[test]
    fn halves_of_one_image_join_in_either_order() {
        let (t, now) = (SystemTime::now(), Instant::now());
        let mut q = JoinQueue::new(Duration::from_secs(2));
        // kubelet says `nginx`, containerd records the qualified name: one key.
        assert!(matches!(
            q.offer(Half::Attempt(Box::new(attempt("nginx", t))), now),
            Fate::Waits
        ));
        let r = Half::Record(record("docker.io/library/nginx:latest", t), Unclaimed::Drop);
        assert!(joined(&q.offer(r, now)));
        let r = Half::Record(record("quay.io/a/b:1", t), Unclaimed::Count);
        assert!(matches!(q.offer(r, now), Fate::Waits));
        assert!(joined(&q.offer(
            Half::Attempt(Box::new(attempt("quay.io/a/b:1", t))),
            now
        )));
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn a_record_older_than_the_attempt_is_not_its_own() {
        let (t, now) = (SystemTime::now(), Instant::now());
        let mut q = JoinQueue::new(Duration::from_secs(2));
        let early = t - Duration::from_secs(5);
        let r = Half::Record(record("quay.io/a/b:1", early), Unclaimed::Drop);
        assert!(matches!(q.offer(r, now), Fate::Waits));
        // Within the slack it is: the two clocks are read at different moments.
        let slack = Half::Record(
            record("quay.io/a/b:1", t - Duration::from_millis(20)),
            Unclaimed::Count,
        );
        assert!(matches!(q.offer(slack, now), Fate::Waits));
        match q.offer(Half::Attempt(Box::new(attempt("quay.io/a/b:1", t))), now) {
            Fate::Joined(_, r) => assert_eq!(r.recorded_at, t - Duration::from_millis(20)),
            other => panic!("{other:?}"),
        }
        // The older record waits out its window, then goes on alone.
        assert!(q.expired(now + Duration::from_secs(1)).is_empty());
        let out = q.expired(now + Duration::from_secs(2));
        assert!(matches!(out.as_slice(), [Half::Record(_, Unclaimed::Drop)]));
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn bounded_and_closed_queues_send_halves_on_alone() {
        let (t, now) = (SystemTime::now(), Instant::now());
        let mut q = JoinQueue::new(Duration::from_secs(2));
        for i in 0..MAX_WAITING {
            let a = Half::Attempt(Box::new(attempt(&format!("a.io/x{i}:1"), t)));
            assert!(matches!(q.offer(a, now), Fate::Waits));
        }
        let over = Half::Attempt(Box::new(attempt("a.io/over:1", t)));
        assert!(matches!(q.offer(over, now), Fate::Alone(Half::Attempt(_))));
        assert_eq!(q.close().len(), MAX_WAITING);
        assert_eq!(q.waiting(), 0);
        let late = Half::Record(record("a.io/x1:1", t), Unclaimed::Count);
        assert!(matches!(
            q.offer(late, now),
            Fate::Alone(Half::Record(_, Unclaimed::Count))
        ));
    }
}
