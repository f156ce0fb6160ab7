//! The observer's memory: every byte it holds for a connection (bytes queued for observation,
//! a header block being assembled, PullImage captures) is taken from one [`MemoryBudget`]
//! through that connection's [`Share`].
//!
//! Fairness: each connection has a reserved floor that no other connection can take, plus a
//! fair part of a shared pool (the pool divided by the connections observed at that moment).
//! So one caller that sends huge unfinished requests can fill its own part, never another
//! caller's floor: kubelet's few-KiB PullImage requests are always observed. A grow that does
//! not fit fails; the caller of `grow` then drops what it would have held (a capture becomes a
//! decode error, a queue or header block ends observation of that connection, counted).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Observer bytes across all connections of one transport.
pub(crate) const TOTAL: usize = 64 << 20;
/// Bytes reserved for each observed connection.
pub(crate) const FLOOR: usize = 64 << 10;

/// A transport's budget: `floor` bytes reserved per connection for up to `max_connections`
/// connections, the rest of `total` a pool shared fairly.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    floor: usize,
    pool: usize,
    pool_used: AtomicUsize,
    members: AtomicUsize,
}

impl MemoryBudget {
    /// `total` bytes for at most `max_connections` connections, each with `floor` reserved
    /// (capped so the reservations take at most half of `total`).
    pub(crate) fn new(total: usize, floor: usize, max_connections: usize) -> Arc<Self> {
        let floor = floor.min(total / 2 / max_connections.max(1));
        Arc::new(Self {
            floor,
            pool: total - floor * max_connections.max(1),
            pool_used: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
        })
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// A budget without limits, for tests and fuzzing.
    pub(crate) fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX / 4, usize::MAX / 16, 1)
    }

    /// A new connection's share (counted among the connections the pool is divided by until
    /// dropped).
    pub(crate) fn share(self: &Arc<Self>) -> Arc<Share> {
        self.members.fetch_add(1, Ordering::Relaxed);
        Arc::new(Share {
            budget: self.clone(),
            used: Mutex::new(0),
        })
    }

    /// Bytes of the shared pool in use.
    #[cfg(test)]
    pub(crate) fn pool_used(&self) -> usize {
        self.pool_used.load(Ordering::Relaxed)
    }

    /// The most one connection may take from the pool now.
    fn fair_part(&self) -> usize {
        self.pool / self.members.load(Ordering::Relaxed).max(1)
    }

    fn take(&self, n: usize) -> bool {
        n == 0
            || self
                .pool_used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    u.checked_add(n).filter(|t| *t <= self.pool)
                })
                .is_ok()
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.pool_used.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// One connection's part of a [`MemoryBudget`].
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<MemoryBudget>,
    used: Mutex<usize>,
}

impl Share {
    /// Takes `n` more bytes, or nothing and `false`: within the floor always, beyond it from
    /// the pool up to the connection's fair part.
    pub(crate) fn grow(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let b = &self.budget;
        let Some(after) = used.checked_add(n) else {
            return false;
        };
        let from_pool = after.saturating_sub(b.floor) - used.saturating_sub(b.floor);
        if from_pool > 0 && (after - b.floor > b.fair_part() || !b.take(from_pool)) {
            return false;
        }
        *used = after;
        true
    }

    /// Gives `n` bytes back.
    pub(crate) fn shrink(&self, n: usize) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let floor = self.budget.floor;
        let after = used.saturating_sub(n);
        self.budget
            .give(used.saturating_sub(floor) - after.saturating_sub(floor));
        *used = after;
    }

    #[cfg(test)]
    /// Bytes this connection holds.
    pub(crate) fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let used = *self.used.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.budget.give(used.saturating_sub(self.budget.floor));
        self.budget.members.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes held from a [`Share`] by one buffer; given back when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    share: Arc<Share>,
    held: usize,
}

impl Lease {
    /// An empty lease on `share`.
    pub(crate) fn new(share: &Arc<Share>) -> Self {
        Self {
            share: share.clone(),
            held: 0,
        }
    }

    /// Takes `n` more bytes, or nothing and `false`.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        if !self.share.grow(n) {
            return false;
        }
        self.held += n;
        true
    }

    /// Holds exactly `n` bytes (taking or giving back the difference); `false` if more did not
    /// fit (then it holds what it held).
    pub(crate) fn hold(&mut self, n: usize) -> bool {
        if n > self.held {
            self.grow(n - self.held)
        } else {
            self.share.shrink(self.held - n);
            self.held = n;
            true
        }
    }

    /// Gives everything back.
    pub(crate) fn release(&mut self) {
        self.share.shrink(self.held);
        self.held = 0;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_are_reserved_and_the_pool_is_shared_fairly() {
        // 1000 bytes, floor 100 for up to 4 connections: pool 600.
        let b = MemoryBudget::new(1000, 100, 4);
        let greedy = b.share();
        assert!(greedy.grow(100), "its floor");
        assert!(greedy.grow(600), "alone, the whole pool");
        assert!(!greedy.grow(1));
        let kubelet = b.share();
        assert!(
            kubelet.grow(100),
            "a floor is never taken by another connection"
        );
        assert!(!kubelet.grow(1), "the pool is used up");
        // The greedy one gives back: now each may hold half the pool.
        greedy.shrink(600);
        assert!(!greedy.grow(301), "over its fair part of two");
        assert!(greedy.grow(300));
        assert!(kubelet.grow(300));
        assert_eq!(b.pool_used(), 600);
        drop(greedy);
        assert_eq!(
            b.pool_used(),
            300,
            "a dropped share gives its pool bytes back"
        );
        let mut l = Lease::new(&kubelet);
        assert!(l.hold(50) && l.hold(20));
        assert_eq!(kubelet.used(), 420);
        drop(l);
        assert_eq!(kubelet.used(), 400);
    }

    #[test]
    fn floors_take_at_most_half_the_total() {
        let b = MemoryBudget::new(1000, 400, 4);
        let s = b.share();
        assert!(s.grow(125), "floor cut to 1000 / 2 / 4");
        assert!(s.grow(500), "pool 500");
        assert!(!s.grow(1));
    }
}
