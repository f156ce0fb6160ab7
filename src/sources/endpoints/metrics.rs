//! The endpoint families: bytes per registry and endpoint, fallbacks per registry and the
//! endpoint gone past, and the witness's series of the shared source families
//! (`source="endpoints"`).

use crate::telemetry::health::{SourceFamilies, SourceHealth};
use crate::telemetry::{CounterFamily, MetricsError, MetricsRegistry};

crate::label_set! {
    /// Labels of the endpoint families.
    pub(crate) struct ByEndpoint<'a> { registry: &'a str, endpoint: &'a str }
}

/// The witness's families.
#[derive(Clone)]
pub(crate) struct EndpointMetrics {
    pub(crate) bytes: CounterFamily<ByEndpoint<'static>>,
    pub(crate) fallbacks: CounterFamily<ByEndpoint<'static>>,
    pub(crate) health: SourceHealth,
}

impl std::fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointMetrics")
    }
}

impl EndpointMetrics {
    /// Registers the families in `reg`; `shared` gives the `source="endpoints"` series.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        shared: &SourceFamilies,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            bytes: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_endpoint_bytes_total"),
            )?,
            fallbacks: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_fallbacks_total"),
            )?,
            health: shared.health(super::SOURCE),
        })
    }
}
