//! Internal events that log and count together (vector's habit): one value per kind of
//! occurrence whose `emit` writes the line and bumps the counter at once, so the two never
//! drift apart, and a flood of the same warning costs one line per interval ([`Throttle`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one line of a repeated warning through per interval and counts the others, so a flood
/// of the same occurrence (refused connections, a loop) costs nothing and fills no disk.
#[derive(Debug)]
pub(crate) struct Throttle {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// At most one line per `interval`.
    pub(crate) const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the occurrences suppressed since
    /// the last one; `None` when this one is suppressed (and counted).
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.0 {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut s.1);
                s.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}

/// How often a repeated warning is written at most.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..10 {
            assert_eq!(t.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow(), Some(10));
    }
}
