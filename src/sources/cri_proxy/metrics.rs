//! The interposer's families: caller connections by result, open connections, connections it
//! stopped observing, and its series of the shared source families (`source="cri_proxy"`).
//! Its calls count in the observer's CRI call families ([`crate::observe::CallMetrics`]).

use crate::observe::ByCause;
use crate::telemetry::health::{SourceFamilies, SourceHealth};
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};

crate::label_enum! {
    /// What became of a caller connection: the `result` label.
    pub(crate) enum ConnectionResult {
        /// Relayed to the runtime.
        Relayed => "relayed",
        /// The runtime socket could not be reached; the caller's connection was closed.
        RuntimeUnreachable => "runtime_unreachable",
        /// The runtime socket led back to a pullwatch (this one or another); closed.
        SelfLoop => "self_loop",
        /// Over `--cri-proxy-max-connections`; closed at once.
        OverLimit => "over_limit",
        /// pullwatch had no file descriptor left to connect to the runtime; closed.
        OutOfFds => "out_of_fds",
    }
}

crate::label_set! {
    /// Labels of `pullwatch_interposer_connections_total`.
    pub(crate) struct ByResult { result: ConnectionResult }
}

/// The interposer's families.
#[derive(Clone)]
pub(crate) struct ProxyMetrics {
    pub(crate) connections: CounterFamily<ByResult>,
    /// Label-less; its series is created when the interposer starts (shown only with it).
    pub(crate) connections_open: GaugeFamily<()>,
    pub(crate) unobserved: CounterFamily<ByCause>,
    pub(crate) health: SourceHealth,
}

impl ProxyMetrics {
    /// Registers the interposer's families in `reg`; `shared` gives its `source="cri_proxy"`
    /// series.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        shared: &SourceFamilies,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            connections: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_interposer_connections_total"),
            )?,
            connections_open: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_interposer_connections_open"),
            )?,
            unobserved: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_interposer_unobserved_connections_total"),
            )?,
            health: shared.health(super::SOURCE),
        })
    }
}
