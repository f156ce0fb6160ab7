//! The registry every owner registers its families in, and the `/metrics` text it renders:
//! the registered families, then those kept outside it ([`RenderHook::append`]).

use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a family could not be registered: a programming error that every test run catches.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The name is not in `FAMILIES`.
    #[error("metric {0} is not in FAMILIES")]
    Unknown(&'static str),
    /// The kind or label names differ from `FAMILIES`.
    #[error("metric {name}: registered as {kind} {labels:?}, FAMILIES says otherwise")]
    Mismatch {
        /// Family name.
        name: &'static str,
        /// Kind it was registered as.
        kind: &'static str,
        /// Label names it was registered with.
        labels: &'static [&'static str],
    },
    /// The registry refused it (registered twice).
    #[error(transparent)]
    Registry(#[from] prometheus::Error),
}

/// Work an owner does at each render: bring time-derived families up to date, or write families
/// it keeps outside the registry.
pub(crate) trait RenderHook: Send + Sync {
    /// Called before the registry is gathered.
    fn refresh(&self) {}
    /// Appends families kept outside the registry, in the text format (0.0.4).
    fn append(&self, _out: &mut String) {}
}

/// The Prometheus registry with the process collector, plus the render hooks of owners that keep
/// state outside it.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    registry: Registry,
    hooks: Arc<Mutex<Vec<Arc<dyn RenderHook>>>>,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// A registry holding, on Linux, the `process_*` families.
    pub fn new() -> Result<Self, MetricsError> {
        let reg = Self::default();
        #[cfg(target_os = "linux")]
        reg.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(reg)
    }

    pub(crate) fn prometheus(&self) -> &Registry {
        &self.registry
    }

    /// Adds `hook` to every render.
    pub(crate) fn add_hook(&self, hook: Arc<dyn RenderHook>) {
        self.lock_hooks().push(hook);
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn RenderHook>>> {
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the hooks' refresh, then renders the registry and the hooks' own families in the
    /// Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let hooks = self.lock_hooks().clone();
        for h in &hooks {
            h.refresh();
        }
        let mut text = self.encode_registry();
        for h in &hooks {
            h.append(&mut text);
        }
        text
    }

    /// Gathers and encodes the registered families only (no hooks).
    pub fn encode_registry(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on families with inconsistent label sets, which the
        // typed handles cannot produce.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The sum of the samples of family `name` whose labels include `labels` (a counter's or
    /// gauge's value, a histogram's count), as a render would show them; 0 when none. For tests
    /// and fuzz invariants.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for h in self.lock_hooks().clone() {
            h.refresh();
        }
        let sum: f64 = self
            .registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| {
                m.get_counter().value()
                    + m.get_gauge().value()
                    + m.get_histogram().get_sample_count() as f64
            })
            .sum();
        sum + 0.0 // an empty sum is -0.0
    }
}
