//! Caps the number of distinct values a metric label may take, so that a flood of registries,
//! namespaces or images cannot blow up the metrics endpoint or Prometheus, and so that whoever
//! can choose image names (anyone who can create a pod) cannot push a real registry out.
//!
//! The policy, per label: the first `cap` values take a slot each. Once the slots are full, a
//! new value takes the slot of the value seen least recently, but only of one that has been
//! quiet for the quiet period (10 minutes: longer than kubelet's 5-minute back-off, so a value
//! still retrying is never quiet). A value that served a successful pull is *proven*: a proven
//! newcomer may take the slot of any value that never proved itself, quiet or not. Otherwise
//! the newcomer is counted as [`OVERFLOW_VALUE`]. A value that loses its slot loses its series
//! too (the owner removes them), so the series stay within the cap.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Label value that stands for every value past the cap.
pub const OVERFLOW_VALUE: &str = "other";

/// How long a value must go unseen before a newcomer may take its slot.
pub const QUIET: Duration = Duration::from_secs(600);

crate::label_enum! {
    /// The labels whose values are capped.
    pub enum LabelName {
        /// A registry host (and port).
        Registry => "registry",
        /// A pod's namespace.
        Namespace => "namespace",
        /// An image name (with `--image-label`).
        Image => "image",
    }
}

/// How a value asks for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Seen in a signal (an attempt that failed, a pull that started, a back-off).
    Seen,
    /// Served a successful pull (or a download): a real registry, not a name in a pod spec.
    Proven,
}

#[derive(Debug)]
struct Slot {
    last: Instant,
    proven: bool,
}

/// Admits at most `cap` distinct values of one label at a time (see the module's policy).
#[derive(Debug)]
pub struct LabelGuard {
    label: LabelName,
    cap: usize,
    quiet: Duration,
    slots: Mutex<HashMap<String, Slot>>,
}

/// The result of admitting a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<'a> {
    /// The value may be used as is.
    Admitted(&'a str),
    /// The value took the slot of `evicted`, whose series must go.
    Replaced {
        /// The value admitted.
        value: &'a str,
        /// The value that lost its slot.
        evicted: String,
    },
    /// No slot: use [`OVERFLOW_VALUE`].
    Overflow,
}

impl<'a> Admission<'a> {
    /// The label value to use.
    pub fn value(&self) -> &'a str {
        match self {
            Admission::Admitted(v) | Admission::Replaced { value: v, .. } => v,
            Admission::Overflow => OVERFLOW_VALUE,
        }
    }
}

impl LabelGuard {
    /// A guard for `label` admitting at most `cap` distinct values, with the default quiet
    /// period.
    pub fn new(label: LabelName, cap: usize) -> Self {
        Self::with_quiet(label, cap, QUIET)
    }

    /// A guard whose slots may be taken after `quiet` without the value.
    pub fn with_quiet(label: LabelName, cap: usize, quiet: Duration) -> Self {
        Self {
            label,
            cap,
            quiet,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The label this guard protects.
    pub fn label(&self) -> LabelName {
        self.label
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `value` holds a slot.
    pub fn contains(&self, value: &str) -> bool {
        self.lock().contains_key(value)
    }

    /// The one admitted value `pick` accepts, `None` if none or several do.
    pub fn unique(&self, pick: impl Fn(&str) -> bool) -> Option<String> {
        let slots = self.lock();
        let mut found = slots.keys().filter(|v| pick(v));
        let first = found.next()?;
        found.next().is_none().then(|| first.clone())
    }

    /// Admits `value`, seen now.
    pub fn admit<'a>(&self, value: &'a str) -> Admission<'a> {
        self.admit_as(value, Claim::Seen, Instant::now())
    }

    /// Admits `value` with `claim` at `now` (see the module's policy).
    pub fn admit_as<'a>(&self, value: &'a str, claim: Claim, now: Instant) -> Admission<'a> {
        let proven = claim == Claim::Proven;
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(value) {
            slot.last = slot.last.max(now);
            slot.proven |= proven;
            return Admission::Admitted(value);
        }
        let slot = Slot { last: now, proven };
        if slots.len() < self.cap {
            slots.insert(value.to_string(), slot);
            return Admission::Admitted(value);
        }
        let quiet = |s: &Slot| now.saturating_duration_since(s.last) >= self.quiet;
        // The least recently seen value that may give its slot: a quiet one, or for a proven
        // newcomer any value that never proved itself.
        let victim = slots
            .iter()
            .filter(|(_, s)| quiet(s) || (proven && !s.proven))
            .min_by_key(|(_, s)| (s.proven, s.last))
            .map(|(v, _)| v.clone());
        match victim {
            Some(evicted) => {
                slots.remove(&evicted);
                slots.insert(value.to_string(), slot);
                Admission::Replaced { value, evicted }
            }
            None => Admission::Overflow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_become_other_and_known_ones_stay() {
        let g = LabelGuard::new(LabelName::Registry, 2);
        assert_eq!(g.admit("a").value(), "a");
        assert_eq!(g.admit("b").value(), "b");
        assert_eq!(g.admit("c"), Admission::Overflow);
        assert_eq!(g.admit("c").value(), OVERFLOW_VALUE);
        assert_eq!(g.admit("a").value(), "a");
        assert_eq!(g.label(), LabelName::Registry);
        assert_eq!(g.unique(|v| v == "a").as_deref(), Some("a"));
        assert_eq!(g.unique(|v| v.len() == 1), None, "two match: none");
        assert_eq!(g.unique(|v| v == "z"), None);
    }

    #[test]
    fn junk_cannot_push_a_proven_registry_out_and_quiet_slots_are_reused() {
        let t0 = Instant::now();
        let g = LabelGuard::new(LabelName::Registry, 3);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            g.admit_as("real.io", Claim::Proven, at(0)).value(),
            "real.io"
        );
        for (i, junk) in ["j1", "j2"].iter().enumerate() {
            g.admit_as(junk, Claim::Seen, at(i as u64 + 1));
        }
        // Full. More junk, still retrying: no slot.
        assert_eq!(g.admit_as("j3", Claim::Seen, at(10)), Admission::Overflow);
        // A new real registry's first success takes the least recent junk slot.
        assert_eq!(
            g.admit_as("new.io", Claim::Proven, at(20)),
            Admission::Replaced {
                value: "new.io",
                evicted: "j1".into()
            }
        );
        // Junk keeps failing: it never takes a proven slot while they are in use.
        for i in 0..150 {
            let name = format!("junk{i}.example");
            let a = g.admit_as(&name, Claim::Seen, at(30 + i));
            assert_eq!(a, Admission::Overflow, "the junk slot is not quiet yet");
        }
        assert!(g.contains("real.io") && g.contains("new.io"));
        // After the quiet period, even a proven value's slot can go to a newcomer.
        let later = at(30 + 150) + QUIET;
        assert!(matches!(
            g.admit_as("late.example", Claim::Seen, later),
            Admission::Replaced { .. }
        ));
    }
}
