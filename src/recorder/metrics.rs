//! The attempt families the recorder owns, their label sets, and what it renders on each
//! scrape (the backoff gauge from the tracker, the per-image family kept outside the registry).

use crate::core::anatomy::Phase;
use crate::core::attempt::AttemptResult;
use crate::core::backoff::BackoffTracker;
use crate::core::cardinality::{LabelGuard, LabelName, OVERFLOW_VALUE};
use crate::core::reason::Reason;
use crate::sinks::image_counts::{self, ImagePullCounts};
use crate::telemetry::{
    CounterFamily, ForgetValue, GaugeFamily, HistogramFamily, MetricsError, MetricsRegistry,
    PHASE_BUCKETS, PULL_BUCKETS, RenderHook,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

crate::label_enum! {
    /// Whether a layer was downloaded or already in the store.
    pub(crate) enum Cache {
        /// Downloaded by this pull.
        Miss => "miss",
        /// Reused from the store.
        Hit => "hit",
    }
}

crate::label_set! {
    /// Labels of the attempt counters and the duration histogram.
    pub(crate) struct RegistryResult<'a> { registry: &'a str, result: AttemptResult }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_failures_total`.
    pub(crate) struct RegistryReason<'a> { registry: &'a str, reason: Reason }
}

crate::label_set! {
    /// Labels of families per registry.
    pub(crate) struct ByRegistry<'a> { registry: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_phase_seconds`.
    pub(crate) struct RegistryPhase<'a> { registry: &'a str, phase: Phase }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_layers_total`.
    pub(crate) struct RegistryCache<'a> { registry: &'a str, cache: Cache }
}

crate::label_set! {
    /// Labels of `pullwatch_image_pull_backoff`.
    pub(crate) struct BackoffLabels<'a> { namespace: &'a str, registry: &'a str, reason: Reason }
}

crate::label_set! {
    /// Labels of `pullwatch_label_overflow_total` and `pullwatch_label_evictions_total`.
    pub(crate) struct ByLabel { label: LabelName }
}

/// The attempt families.
pub(super) struct AttemptMetrics {
    pub(super) pulls: CounterFamily<RegistryResult<'static>>,
    pub(super) failures: CounterFamily<RegistryReason<'static>>,
    pub(super) duration: HistogramFamily<RegistryResult<'static>>,
    pub(super) in_flight: GaugeFamily<ByRegistry<'static>>,
    pub(super) label_overflow: CounterFamily<ByLabel>,
    pub(super) label_evictions: CounterFamily<ByLabel>,
    pub(super) phases: HistogramFamily<RegistryPhase<'static>>,
    pub(super) layers: CounterFamily<RegistryCache<'static>>,
    pub(super) bytes: CounterFamily<ByRegistry<'static>>,
    pub(super) cached_bytes: CounterFamily<ByRegistry<'static>>,
}

impl AttemptMetrics {
    pub(super) fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            pulls: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pulls_total"),
            )?,
            failures: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_failures_total"),
            )?,
            duration: HistogramFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_duration_seconds"),
                &PULL_BUCKETS,
            )?,
            in_flight: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pulls_in_flight"),
            )?,
            label_overflow: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_label_overflow_total"),
            )?,
            label_evictions: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_label_evictions_total"),
            )?,
            phases: HistogramFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_phase_seconds"),
                &PHASE_BUCKETS,
            )?,
            layers: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_layers_total"),
            )?,
            bytes: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_bytes_total"),
            )?,
            cached_bytes: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_image_pull_cached_bytes_total"),
            )?,
        })
    }

    /// The families with a `registry` label, whose series go when a registry loses its slot.
    pub(super) fn by_registry(&self) -> [&dyn ForgetValue; 8] {
        [
            &self.pulls,
            &self.failures,
            &self.duration,
            &self.in_flight,
            &self.phases,
            &self.layers,
            &self.bytes,
            &self.cached_bytes,
        ]
    }
}

/// What the recorder does at each render: the backoff gauge from the tracker, and the per-image
/// family kept outside the registry.
pub(super) struct Rendered {
    pub(super) backoff: Mutex<BackoffTracker>,
    pub(super) gauge: GaugeFamily<BackoffLabels<'static>>,
    pub(super) by_image: Option<ImagePullCounts>,
    pub(super) registries: Arc<LabelGuard>,
    pub(super) namespaces: Arc<LabelGuard>,
}

impl Rendered {
    pub(super) fn backoff(&self) -> std::sync::MutexGuard<'_, BackoffTracker> {
        self.backoff.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RenderHook for Rendered {
    fn refresh(&self) {
        let groups = self.backoff().snapshot(Instant::now());
        self.gauge.reset();
        // A pair entered under a value that has since lost its slot counts as `other`: added,
        // since several such values share that series.
        let current = |guard: &LabelGuard, v: String| {
            if v == OVERFLOW_VALUE || guard.contains(&v) {
                v
            } else {
                OVERFLOW_VALUE.to_string()
            }
        };
        for ((namespace, registry, reason), n) in groups {
            let labels = BackoffLabels {
                namespace: &current(&self.namespaces, namespace),
                registry: &current(&self.registries, registry),
                reason,
            };
            self.gauge
                .with(&labels)
                .add(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn append(&self, out: &mut String) {
        if let Some(by_image) = &self.by_image {
            let help = crate::telemetry::family(image_counts::NAME).map_or("", |f| f.help);
            by_image.encode(help, out);
        }
    }
}
