//! Observation off the relay's path. The interposer's relay hands each piece it forwarded to
//! its connection's [`Feed`], which copies it into a queue and returns at once; one observer
//! thread ([`Observers`]) takes the pieces in order and runs the [`ConnectionObserver`]s. So no
//! relay ever waits on HTTP/2 or HPACK work, however costly a connection's bytes are to decode.
//!
//! The queue is bounded: what a connection has queued counts against its memory [`Share`] and
//! [`MAX_QUEUED`]; a connection the observer gave up on queues nothing more. A piece that does not fit ends observation of that connection (cause
//! `backlog`, counted); its bytes go on being relayed, never slower.

use crate::observe::Recording;
use crate::observe::budget::{MemoryBudget, Share};
use crate::observe::connection::ConnectionObserver;
use crate::observe::wire::{Side, Unobservable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Bytes one connection may have waiting for the observer (within its memory share); more
/// ends its observation. Room for a burst of large requests (a caller may write a whole
/// 4 MiB PullImage request at once) while the observer thread is busy elsewhere.
pub(crate) const MAX_QUEUED: usize = 16 << 20;

/// What the relay tells the observer thread, in order per connection.
enum Message {
    Open {
        id: u64,
        state: Arc<FeedState>,
        share: Arc<Share>,
    },
    Bytes {
        id: u64,
        side: Side,
        data: Vec<u8>,
        at: Instant,
    },
    GiveUp {
        id: u64,
        why: Unobservable,
    },
    Closed {
        id: u64,
        first: Side,
        at: Instant,
    },
}

/// What a connection's relay and the observer thread share.
#[derive(Debug, Default)]
struct FeedState {
    /// Bytes queued and not yet observed.
    queued: AtomicUsize,
    /// Calls open, as of the last piece observed.
    open_calls: AtomicUsize,
    /// Observation of the connection ended: the relay stops copying.
    off: AtomicBool,
    /// Signalled when the connection may have become idle.
    idle: tokio::sync::Notify,
}

impl FeedState {
    fn is_idle(&self) -> bool {
        !self.off.load(Ordering::Acquire)
            && self.queued.load(Ordering::Acquire) == 0
            && self.open_calls.load(Ordering::Acquire) == 0
    }
}

/// The observer thread of one transport, and the feeds of its connections.
pub(crate) struct Observers {
    tx: Mutex<mpsc::Sender<Message>>,
    budget: Arc<MemoryBudget>,
    next: AtomicU64,
}

impl Observers {
    /// Starts the observer thread; observations go to `recording`, each connection's bytes
    /// are held from `budget`.
    pub(crate) fn start(
        recording: Arc<Recording>,
        budget: Arc<MemoryBudget>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cri-observer".into())
            .spawn(move || observe_all(&recording, &rx))?;
        Ok(Self {
            tx: Mutex::new(tx),
            budget,
            next: AtomicU64::new(1),
        })
    }

    /// The feed of a new connection.
    pub(crate) fn feed(&self) -> Feed {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(FeedState::default());
        let share = self.budget.share();
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let _ = tx.send(Message::Open {
            id,
            state: state.clone(),
            share: share.clone(),
        });
        Feed {
            id,
            tx,
            share,
            state,
            closed: false,
        }
    }
}

/// One connection's way to the observer thread. Never blocks.
pub(crate) struct Feed {
    id: u64,
    tx: mpsc::Sender<Message>,
    share: Arc<Share>,
    state: Arc<FeedState>,
    closed: bool,
}

impl Feed {
    /// `side` carried `bytes` (already forwarded): queued for the observer, or, if the queue
    /// is full, the connection's observation ends (`backlog`).
    pub(crate) fn bytes(&self, side: Side, bytes: &[u8]) {
        let state = &self.state;
        if bytes.is_empty() || state.off.load(Ordering::Relaxed) {
            return;
        }
        let n = bytes.len();
        if state.queued.load(Ordering::Relaxed) + n > MAX_QUEUED || !self.share.grow(n) {
            state.off.store(true, Ordering::Release);
            let why = Unobservable::Backlog;
            let _ = self.tx.send(Message::GiveUp { id: self.id, why });
            return;
        }
        state.queued.fetch_add(n, Ordering::AcqRel);
        let message = Message::Bytes {
            id: self.id,
            side,
            data: bytes.to_vec(),
            at: Instant::now(),
        };
        if self.tx.send(message).is_err() {
            // The observer thread is gone (shutdown): nothing observes any more.
            state.off.store(true, Ordering::Release);
            self.share.shrink(n);
        }
    }

    #[cfg(test)]
    /// Whether the connection has no call open and nothing waiting to be observed (it may be
    /// closed without cutting a call). An unobserved connection is never idle.
    pub(crate) fn is_idle(&self) -> bool {
        self.state.is_idle()
    }

    /// Waits until [`Feed::is_idle`].
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.state.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.is_idle() {
                return;
            }
            notified.await;
        }
    }

    /// The connection ended; `first` is the side whose end came first.
    pub(crate) fn closed(mut self, first: Side) {
        self.closed = true;
        let at = Instant::now();
        let _ = self.tx.send(Message::Closed {
            id: self.id,
            first,
            at,
        });
    }
}

impl Drop for Feed {
    /// A connection whose task was cut (shutdown grace over) ends as the caller's doing.
    fn drop(&mut self) {
        if !self.closed {
            let at = Instant::now();
            let _ = self.tx.send(Message::Closed {
                id: self.id,
                first: Side::Caller,
                at,
            });
        }
    }
}

/// The observer thread: runs every connection's observer until every feed and the
/// [`Observers`] are gone.
fn observe_all(recording: &Arc<Recording>, rx: &mpsc::Receiver<Message>) {
    let mut conns: HashMap<u64, (ConnectionObserver, Arc<FeedState>, Arc<Share>)> = HashMap::new();
    while let Ok(message) = rx.recv() {
        match message {
            Message::Open { id, state, share } => {
                let observer = ConnectionObserver::new(recording.clone(), share.clone());
                conns.insert(id, (observer, state, share));
            }
            Message::Bytes { id, side, data, at } => {
                let Some((observer, state, share)) = conns.get_mut(&id) else {
                    continue;
                };
                observer.observe(side, &data, at);
                share.shrink(data.len());
                state
                    .open_calls
                    .store(observer.open_calls(), Ordering::Release);
                state.queued.fetch_sub(data.len(), Ordering::AcqRel);
                if !observer.is_observing() {
                    state.off.store(true, Ordering::Release);
                }
                if state.is_idle() {
                    state.idle.notify_waiters();
                }
            }
            Message::GiveUp { id, why } => {
                if let Some((observer, state, _)) = conns.get_mut(&id) {
                    observer.give_up(why);
                    state.open_calls.store(0, Ordering::Release);
                }
            }
            Message::Closed { id, first, at } => {
                if let Some((mut observer, _, _)) = conns.remove(&id) {
                    observer.closed(first, at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::wire::tests::build::*;
    use crate::observe::wire::{DATA, END_HEADERS, END_STREAM, HEADERS, SETTINGS};

    fn wait(what: &str, ok: impl Fn() -> bool) {
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn calls_are_observed_in_order_and_the_feed_knows_when_it_is_idle() {
        let (recording, reg) = Recording::standalone();
        let observers = Observers::start(recording, MemoryBudget::unlimited()).unwrap();
        let feed = observers.feed();
        let mut caller = caller_open();
        caller.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &request("/runtime.v1.RuntimeService/Version", &[]),
        ));
        caller.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        feed.bytes(Side::Caller, &caller);
        wait("the call opened", || !feed.is_idle());
        let mut runtime = frame(SETTINGS, 0, 0, &[]);
        runtime.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &response(&[("grpc-status", "0")]),
        ));
        feed.bytes(Side::Runtime, &runtime);
        wait("the call ended", || feed.is_idle());
        let code = [
            ("method", "/runtime.v1.RuntimeService/Version"),
            ("code", "OK"),
        ];
        wait("the call counted", || {
            reg.value("pullwatch_cri_requests_total", &code) == 1.0
        });
        feed.closed(Side::Caller);
    }

    #[test]
    fn a_piece_over_the_share_ends_observation_never_the_caller() {
        let (recording, reg) = Recording::standalone();
        // 128 KiB for one connection: 64 KiB floor, 64 KiB pool.
        let observers =
            Observers::start(recording, MemoryBudget::new(128 << 10, 64 << 10, 1)).unwrap();
        let feed = observers.feed();
        feed.bytes(Side::Caller, &caller_open());
        let started = Instant::now();
        for _ in 0..1000 {
            feed.bytes(Side::Runtime, &vec![0u8; 200 << 10]);
        }
        // 200 MB handed over without waiting: none of it was queued.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        wait("counted as backlog", || {
            reg.value(
                "pullwatch_interposer_unobserved_connections_total",
                &[("cause", "backlog")],
            ) == 1.0
        });
        assert!(!feed.is_idle(), "an unobserved connection is never idle");
    }
}
