//! The observer's internal events, each logged and counted in one `emit` so the line and the
//! counter never drift apart; a flood of the same warning costs one line per interval.

use super::ByCause;
use super::wire::{Side, Unobservable};
use crate::telemetry::CounterFamily;
use crate::telemetry::events::{Throttle, WARN_EVERY};

static GAVE_UP: Throttle = Throttle::new(WARN_EVERY);

/// The observer stopped following a connection: the connection goes on, unobserved.
pub(crate) struct GaveUp<'a> {
    /// Why.
    pub(crate) why: &'a Unobservable,
    /// Calls open then, dropped unrecorded.
    pub(crate) open_calls: usize,
}

impl GaveUp<'_> {
    /// Counts it by cause and warns (at most once per [`WARN_EVERY`]).
    pub(crate) fn emit(&self, unobserved: &CounterFamily<ByCause>) {
        let cause = self.why.cause();
        unobserved.inc(&ByCause { cause });
        if let Some(suppressed) = GAVE_UP.allow() {
            tracing::warn!(
                %cause,
                error = %self.why,
                open_calls = self.open_calls,
                suppressed,
                "connection carried on without observation from here on"
            );
        }
    }
}

/// The tap lost track of one side of a connection and hunts for the next frame.
pub(crate) struct Resynced<'a> {
    /// The side lost.
    pub(crate) side: Side,
    /// Why.
    pub(crate) why: &'a Unobservable,
}

impl Resynced<'_> {
    /// Counts it by cause; logged at debug (the counter says how often).
    pub(crate) fn emit(&self, resyncs: &CounterFamily<ByCause>) {
        let cause = self.why.cause();
        resyncs.inc(&ByCause { cause });
        tracing::debug!(side = ?self.side, %cause, error = %self.why, "lost track of a connection's bytes; resynchronizing");
    }
}
