//! The interposer's families: caller connections by result, open connections, connections it
//! stopped observing, and its series of the shared source families (`source="cri_proxy"`).
//! Its calls count in the observer's CRI call families ([`crate::observe::CallMetrics`]).

use crate::observe::ByCause;
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};
use crate::telemetry::health::{SourceFamilies, SourceHealth};

crate::label_set! {
    /// Labels of `pullwatch_interposer_connections_total`.
    pub(crate) struct ByResult<'a> { result: &'a str }
}

/// The interposer's families.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub(crate) connections: CounterFamily<ByResult<'static>>,
    /// Label-less; its series is created when the interposer starts (shown only with it).
    pub(crate) connections_open: GaugeFamily<()>,
    pub(crate) unobserved: CounterFamily<ByCause<'static>>,
    pub(crate) health: SourceHealth,
}

impl ProxyMetrics {
    /// Registers the interposer's families in `reg`; `shared` gives its `source="cri_proxy"`
    /// series.
    pub fn register(reg: &MetricsRegistry, shared: &SourceFamilies) -> Result<Self, MetricsError> {
        Ok(Self {
            connections: CounterFamily::register(reg, "pullwatch_interposer_connections_total")?,
            connections_open: GaugeFamily::register(reg, "pullwatch_interposer_connections_open")?,
            unobserved: CounterFamily::register(
                reg,
                "pullwatch_interposer_unobserved_connections_total",
            )?,
            health: shared.health(super::SOURCE),
        })
    }
}
