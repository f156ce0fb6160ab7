//! The metric contract and its registry. [`FAMILIES`] lists every family pullwatch exports (the
//! public API the README, alerts and dashboards are checked against); each owner — the recorder
//! for attempts, each source for its own — registers its families from it through typed handles
//! (`CounterFamily` and friends, labels as `LabelSet` structs) in one [`MetricsRegistry`].
//! This room defines no family's meaning and updates none.

mod families;
mod registry;
mod typed;

pub use families::{CRI_BUCKETS, FAMILIES, Family, Kind, PHASE_BUCKETS, PULL_BUCKETS, family};
pub use registry::MetricsRegistry;
pub(crate) use registry::RenderHook;
pub use typed::MetricsError;
pub(crate) use typed::{
    CounterFamily, FloatGaugeFamily, ForgetValue, GaugeFamily, HistogramFamily, LabelSet,
    LabelValue, counter,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for f in FAMILIES {
            assert!(f.name.starts_with("pullwatch_"), "{}", f.name);
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.labels.contains(&"error"), "no raw error text as label");
        }
    }

    #[test]
    fn renders_build_info_and_process_metrics() {
        let text = MetricsRegistry::new().unwrap().render();
        assert!(text.contains(&format!(
            "pullwatch_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            crate::REVISION,
            crate::VERSION
        )));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
