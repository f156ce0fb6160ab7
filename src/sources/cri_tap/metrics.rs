//! The tap's families: connections followed, bytes it could not copy, resynchronizations,
//! calls read in part, connections missed, and its series of the shared source families
//! (`source="cri_tap"`). Its calls count in the observer's CRI call families.

use crate::observe::{ByCause, ByPart};
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};
use crate::telemetry::health::{SourceFamilies, SourceHealth};

/// The tap's families.
#[derive(Clone)]
pub struct TapMetrics {
    pub(crate) connections: GaugeFamily<()>,
    pub(crate) lost_bytes: CounterFamily<ByCause<'static>>,
    pub(crate) resyncs: CounterFamily<ByCause<'static>>,
    pub(crate) partial: CounterFamily<ByPart<'static>>,
    pub(crate) missed: CounterFamily<ByCause<'static>>,
    pub(crate) health: SourceHealth,
}

impl TapMetrics {
    /// Registers the tap's families in `reg`; `shared` gives its `source="cri_tap"` series.
    pub fn register(reg: &MetricsRegistry, shared: &SourceFamilies) -> Result<Self, MetricsError> {
        Ok(Self {
            connections: GaugeFamily::register(reg, "pullwatch_cri_tap_connections")?,
            lost_bytes: CounterFamily::register(reg, "pullwatch_cri_tap_lost_bytes_total")?,
            resyncs: CounterFamily::register(reg, "pullwatch_cri_tap_resyncs_total")?,
            partial: CounterFamily::register(reg, "pullwatch_cri_tap_partial_calls_total")?,
            missed: CounterFamily::register(reg, "pullwatch_cri_tap_missed_connections_total")?,
            health: shared.health(super::SOURCE),
        })
    }
}
