//! The containerd source's families: downloads in progress, their bytes, rate and stalls, per
//! registry; and its series of the shared source families (`source="containerd"`). What a
//! finished pull downloaded is counted by the recorder, with the pull.

use crate::recorder::ByRegistry;
use crate::telemetry::health::{SourceFamilies, SourceHealth};
use crate::telemetry::{FloatGaugeFamily, GaugeFamily, MetricsError, MetricsRegistry};

/// The containerd source's families.
#[derive(Clone)]
pub(crate) struct ContainerdMetrics {
    pub(crate) bytes_in_flight: GaugeFamily<ByRegistry<'static>>,
    pub(crate) downloads_in_flight: GaugeFamily<ByRegistry<'static>>,
    pub(crate) receive_rate: FloatGaugeFamily<ByRegistry<'static>>,
    pub(crate) stalled: GaugeFamily<ByRegistry<'static>>,
    pub(crate) health: SourceHealth,
}

impl ContainerdMetrics {
    /// Registers the source's families in `reg`; `shared` gives its `source="containerd"` series.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        shared: &SourceFamilies,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            bytes_in_flight: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_bytes_in_flight"),
            )?,
            downloads_in_flight: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_downloads_in_flight"),
            )?,
            receive_rate: FloatGaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_receive_bytes_per_second"),
            )?,
            stalled: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_stalled"),
            )?,
            health: shared.health(super::SOURCE),
        })
    }
}
