//! A token bucket: what bounds the API requests a node's agent makes (pod Events written, a
//! pod's Events read), whatever the node does.

use std::time::Instant;

/// A token bucket: `rate` tokens a second, at most `burst` saved.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_budget_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(5.0, 20.0, t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, 20);
        let later = t0 + Duration::from_secs(2);
        let more = (0..100).filter(|_| b.take(later)).count();
        assert_eq!(more, 10, "5 a second");
    }
}
