//! pullwatch's own telemetry plumbing: the metric contract ([`FAMILIES`], every family pullwatch
//! exports: the public API the README, alerts and dashboards are checked against), the registry
//! each owner registers its families in ([`MetricsRegistry`]) through typed handles
//! (`CounterFamily` and friends, labels as `LabelSet` structs), the build info registered at
//! start-up ([`register_build_info`]), the families every source shares ([`health`]), and
//! internal events that log and count together with repeated warnings throttled ([`events`]). It defines no family's meaning and updates none.

pub(crate) mod events;
mod families;
mod family;
pub(crate) mod health;
mod registry;

pub use families::{CRI_BUCKETS, FAMILIES, Family, Kind, PHASE_BUCKETS, PULL_BUCKETS, family};
pub(crate) use family::{
    CounterFamily, Def, FloatGaugeFamily, ForgetValue, GaugeFamily, HistogramFamily, LabelSet,
    LabelValue, counter,
};
pub use registry::MetricsError;
pub use registry::MetricsRegistry;
pub(crate) use registry::RenderHook;

crate::label_set! {
    /// `pullwatch_build_info` labels.
    struct BuildLabels<'a> { version: &'a str, revision: &'a str }
}

/// Registers `pullwatch_build_info` (always 1; its labels say what runs) in `reg`.
pub fn register_build_info(reg: &MetricsRegistry) -> Result<(), MetricsError> {
    GaugeFamily::<BuildLabels<'static>>::register(
        reg,
        crate::family_name!("pullwatch_build_info"),
    )?
    .set(
        &BuildLabels {
            version: crate::VERSION,
            revision: crate::REVISION,
        },
        1,
    );
    Ok(())
}

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
        let reg = MetricsRegistry::new().unwrap();
        register_build_info(&reg).unwrap();
        let text = reg.render();
        assert!(text.contains(&format!(
            "pullwatch_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            crate::REVISION,
            crate::VERSION
        )));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
