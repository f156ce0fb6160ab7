//! The connections the tap follows, each with its observer: the kernel's records in order, a
//! gap wherever a record's position is not where the last one ended (the ring was full, a
//! syscall too large to copy), and whole syscalls offered to a reader that is hunting for a
//! frame boundary (the piece that proves one).

use super::bpf::Record;
use crate::observe::Recording;
use crate::observe::budget::{Lease, MemoryBudget, Share};
use crate::observe::connection::ConnectionObserver;
use crate::observe::wire::Side;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest syscall gathered for a hunting reader (what one syscall's records carry).
const MAX_PIECE: usize = 256 << 10;
/// A call open longer than this on a followed connection lost its end (dropped as partial).
pub(super) const MAX_CALL: Duration = Duration::from_secs(3600);

/// One direction of a followed connection.
struct Direction {
    /// Where the next record must start (`None`: anywhere, the connection was just joined).
    next: Option<u64>,
    /// The syscall being gathered for a hunting reader: its size and what came of it.
    piece: Option<(usize, Vec<u8>)>,
    /// What `piece` holds, from the connection's share.
    memory: Lease,
}

impl Direction {
    fn new(next: Option<u64>, share: &Arc<Share>) -> Self {
        Self {
            next,
            piece: None,
            memory: Lease::new(share),
        }
    }

    fn drop_piece(&mut self) {
        self.piece = None;
        self.memory.release();
    }
}

/// A followed connection.
struct Connection {
    observer: ConnectionObserver,
    /// By the observer's side: the runtime read what the caller sent (0), wrote its answers (1).
    directions: [Direction; 2],
    /// The runtime read the end of the caller's stream.
    caller_gone: bool,
}

/// The followed connections and where their observations go.
pub(super) struct Followed {
    recording: Arc<Recording>,
    budget: Arc<MemoryBudget>,
    connections: HashMap<u64, Connection>,
    clock: Clock,
    /// Records of connections not followed (their OPEN was lost).
    pub unknown_records: u64,
}

/// Kernel time (CLOCK_MONOTONIC, ns) to [`Instant`] (the same clock on Linux).
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    instant: Instant,
    ns: u64,
}

impl Clock {
    /// Pairs the two clocks now.
    pub(super) fn now() -> Self {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let instant = Instant::now();
        let ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0);
        Self { instant, ns }
    }

    /// The instant of kernel time `ns`.
    pub(super) fn at(&self, ns: u64) -> Instant {
        if ns >= self.ns {
            self.instant + Duration::from_nanos(ns - self.ns)
        } else {
            self.instant
                .checked_sub(Duration::from_nanos(self.ns - ns))
                .unwrap_or(self.instant)
        }
    }
}

impl Followed {
    /// No connection followed yet; observations go to `recording`, within `budget`.
    pub(super) fn new(recording: Arc<Recording>, budget: Arc<MemoryBudget>) -> Self {
        Self {
            recording,
            budget,
            connections: HashMap::new(),
            clock: Clock::now(),
            unknown_records: 0,
        }
    }

    /// Connections followed now.
    pub(super) fn len(&self) -> usize {
        self.connections.len()
    }

    /// Follows connection `id`, open before the tap attached: its observer joins late.
    pub(super) fn joined(&mut self, id: u64) {
        let share = self.budget.share();
        let observer = ConnectionObserver::joining(self.recording.clone(), share.clone());
        self.connections.insert(
            id,
            Connection {
                observer,
                directions: [Direction::new(None, &share), Direction::new(None, &share)],
                caller_gone: false,
            },
        );
    }

    /// Applies one record of the kernel side.
    pub(super) fn record(&mut self, record: Record<'_>) {
        match record {
            Record::Open { conn, fd, .. } => {
                tracing::debug!(
                    conn,
                    fd,
                    "kernel tap: a connection accepted on the CRI socket"
                );
                let share = self.budget.share();
                let observer = ConnectionObserver::tap(self.recording.clone(), share.clone());
                self.connections.insert(
                    conn,
                    Connection {
                        observer,
                        directions: [
                            Direction::new(Some(0), &share),
                            Direction::new(Some(0), &share),
                        ],
                        caller_gone: false,
                    },
                );
            }
            Record::Eof { conn, .. } => {
                if let Some(c) = self.connections.get_mut(&conn) {
                    c.caller_gone = true;
                }
            }
            Record::Close { conn, ts } => {
                if let Some(mut c) = self.connections.remove(&conn) {
                    let first = if c.caller_gone {
                        Side::Caller
                    } else {
                        Side::Runtime
                    };
                    c.observer.closed(first, self.clock.at(ts));
                }
            }
            Record::Data {
                conn,
                ts,
                runtime_wrote,
                pos,
                total,
                chunk,
                bytes,
            } => {
                let at = self.clock.at(ts);
                let Some(c) = self.connections.get_mut(&conn) else {
                    self.unknown_records += 1;
                    return;
                };
                let (side, d) = if runtime_wrote {
                    (Side::Runtime, &mut c.directions[1])
                } else {
                    (Side::Caller, &mut c.directions[0])
                };
                if d.next.is_some_and(|next| next != pos) {
                    d.drop_piece();
                    c.observer.lost(side, at);
                }
                d.next = Some(pos + bytes.len() as u64);
                if !c.observer.is_hunting(side) {
                    d.drop_piece();
                    c.observer.observe(side, bytes, at);
                    return;
                }
                // A hunting reader gets whole syscalls only: one starting with this record,
                // gathered until its size is reached (a syscall too large to be copied whole
                // cannot prove a boundary).
                let size = total as usize;
                if chunk == 0 {
                    d.drop_piece();
                    if size <= MAX_PIECE && d.memory.hold(size) {
                        d.piece = Some((size, Vec::with_capacity(size)));
                    }
                }
                let Some((size, piece)) = &mut d.piece else {
                    return;
                };
                if piece.len() + bytes.len() > *size {
                    d.drop_piece();
                    return;
                }
                piece.extend_from_slice(bytes);
                if piece.len() == *size {
                    let piece = std::mem::take(piece);
                    d.drop_piece();
                    c.observer.observe_piece(side, &piece, at);
                }
            }
        }
    }

    /// Keeps only the connections the kernel still follows (a CLOSE record the ring had no room
    /// for leaves one behind), and drops calls open longer than [`MAX_CALL`], as partial.
    pub(super) fn reconcile(&mut self, followed: &std::collections::HashSet<u64>) {
        self.connections.retain(|id, c| {
            let keep = followed.contains(id);
            if !keep {
                c.observer.abandon();
            }
            keep
        });
        let now = Instant::now();
        for c in self.connections.values_mut() {
            c.observer.sweep(now, MAX_CALL);
        }
    }

    /// Stops following everything (the runtime restarted, or the tap stops): open calls are
    /// dropped as partial.
    pub(super) fn clear(&mut self) {
        for (_, mut c) in self.connections.drain() {
            c.observer.abandon();
        }
    }
}
