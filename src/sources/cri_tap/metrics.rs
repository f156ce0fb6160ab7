//! The tap's families: connections followed, bytes it could not copy, resynchronizations,
//! calls read in part, connections missed, and its series of the shared source families
//! (`source="cri_tap"`). Its calls count in the observer's CRI call families.

use crate::observe::{ByCause, ByPart};

crate::label_enum! {
    /// Why the kernel side could not copy bytes of a followed connection.
    pub(crate) enum LostCause {
        /// The ring buffer was full (the agent read too slowly).
        RingFull => "ring_full",
        /// The kernel could not read the user buffer.
        Unreadable => "unreadable",
        /// One read or write larger than the program copies.
        TooLarge => "too_large",
        /// A vectored read or write (readv/writev), not copied.
        Vectored => "vectored",
    }
}

crate::label_enum! {
    /// Why a connection to the runtime was not followed.
    pub(crate) enum MissedCause {
        /// Its open or close record was lost.
        EventsLost => "events_lost",
        /// The kernel's connection table was full.
        TableFull => "table_full",
    }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_tap_lost_bytes_total`.
    pub(crate) struct ByLostCause { cause: LostCause }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_tap_missed_connections_total`.
    pub(crate) struct ByMissedCause { cause: MissedCause }
}
use crate::telemetry::health::{SourceFamilies, SourceHealth};
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};

/// The tap's families.
#[derive(Clone)]
pub(crate) struct TapMetrics {
    pub(crate) connections: GaugeFamily<()>,
    pub(crate) lost_bytes: CounterFamily<ByLostCause>,
    pub(crate) resyncs: CounterFamily<ByCause>,
    pub(crate) partial: CounterFamily<ByPart>,
    pub(crate) missed: CounterFamily<ByMissedCause>,
    pub(crate) health: SourceHealth,
}

impl TapMetrics {
    /// Registers the tap's families in `reg`; `shared` gives its `source="cri_tap"` series.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        shared: &SourceFamilies,
    ) -> Result<Self, MetricsError> {
        Ok(Self {
            connections: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_tap_connections"),
            )?,
            lost_bytes: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_tap_lost_bytes_total"),
            )?,
            resyncs: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_tap_resyncs_total"),
            )?,
            partial: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_tap_partial_calls_total"),
            )?,
            missed: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_tap_missed_connections_total"),
            )?,
            health: shared.health(super::SOURCE),
        })
    }
}
