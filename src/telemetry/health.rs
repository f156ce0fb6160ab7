//! The families every source shares, each series labelled with the source that set it:
//! whether it runs as configured (`pullwatch_source_up`), whether it reaches the runtime
//! (`pullwatch_runtime_up`), its failed polls and watches (`pullwatch_source_errors_total`)
//! and what it could not decode (`pullwatch_decode_errors_total`). A source gets a [`SourceHealth`] bound to its own name and
//! touches no other source's series.

use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};

crate::label_set! {
    /// Labels of the per-source families.
    pub(crate) struct BySource<'a> { source: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_decode_errors_total`.
    pub(crate) struct ByMessage<'a> { message: &'a str }
}

/// The shared families, registered once.
#[derive(Clone)]
pub(crate) struct SourceFamilies {
    source_up: GaugeFamily<BySource<'static>>,
    up: GaugeFamily<BySource<'static>>,
    errors: CounterFamily<BySource<'static>>,
    decode_errors: CounterFamily<ByMessage<'static>>,
}

impl SourceFamilies {
    /// Registers the shared families in `reg`.
    pub(crate) fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            source_up: GaugeFamily::register(reg, crate::family_name!("pullwatch_source_up"))?,
            up: GaugeFamily::register(reg, crate::family_name!("pullwatch_runtime_up"))?,
            errors: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_source_errors_total"),
            )?,
            decode_errors: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_decode_errors_total"),
            )?,
        })
    }

    /// The handle for the source labelled `source`.
    pub(crate) fn health(&self, source: &'static str) -> SourceHealth {
        SourceHealth {
            source,
            families: self.clone(),
        }
    }
}

/// One source's series of the shared families, created on first use (a source that never
/// fails shows no error series).
#[derive(Clone)]
pub(crate) struct SourceHealth {
    source: &'static str,
    families: SourceFamilies,
}

impl SourceHealth {
    /// Sets `pullwatch_source_up{source}`: whether the source runs as configured.
    pub(crate) fn set_source_up(&self, up: bool) {
        let labels = BySource {
            source: self.source,
        };
        self.families.source_up.set(&labels, i64::from(up));
    }

    /// Sets `pullwatch_runtime_up{source}`.
    pub(crate) fn set_up(&self, up: bool) {
        let labels = BySource {
            source: self.source,
        };
        self.families.up.set(&labels, i64::from(up));
    }

    /// Counts one failed poll, broken connection or failed watch.
    pub(crate) fn error(&self) {
        self.families.errors.inc(&BySource {
            source: self.source,
        });
    }

    /// Counts one `message` (e.g. `pull_image_request`) that could not be decoded.
    pub(crate) fn decode_error(&self, message: &'static str) {
        self.families.decode_errors.inc(&ByMessage { message });
    }
}
