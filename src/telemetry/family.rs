//! Typed handles to registered families: a family's labels are a struct ([`LabelSet`]), so a
//! call site names each label and cannot pass too few, too many or in the wrong order. The label
//! names are checked against [`FAMILIES`](super::FAMILIES) once, when the family registers; after
//! that no update can panic on a label count, which positional `with_label_values(&[..])` did.

use super::families::{Kind, family};
use super::registry::{MetricsError, MetricsRegistry};
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
};
use std::marker::PhantomData;

/// A label value: text as it appears on the series.
pub(crate) trait LabelValue {
    /// The value.
    fn label_value(&self) -> &str;
}

impl LabelValue for &str {
    fn label_value(&self) -> &str {
        self
    }
}

impl LabelValue for String {
    fn label_value(&self) -> &str {
        self
    }
}

impl LabelValue for crate::core::reason::Reason {
    fn label_value(&self) -> &str {
        self.as_str()
    }
}

impl LabelValue for crate::core::anatomy::Phase {
    fn label_value(&self) -> &str {
        self.as_str()
    }
}

/// The labels of one family, as a struct whose field names are the label names. Implemented by
/// [`label_set!`](crate::label_set) on `Name<'static>`; [`Values`](LabelSet::Values) is the same
/// struct borrowing for any lifetime, so call sites pass borrowed strings.
pub(crate) trait LabelSet: 'static {
    /// Label names, in field order.
    const NAMES: &'static [&'static str];
    /// The struct that carries the values.
    type Values<'a>;
    /// Calls `f` with the values in [`NAMES`](LabelSet::NAMES) order.
    fn with_values<R>(values: &Self::Values<'_>, f: impl FnOnce(&[&str]) -> R) -> R;
}

/// No labels.
impl LabelSet for () {
    const NAMES: &'static [&'static str] = &[];
    type Values<'a> = ();
    fn with_values<R>((): &(), f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[])
    }
}

/// Declares a label struct: `label_set! { /// doc  pub(crate) struct RegistryResult<'a> {
/// registry: &'a str, result: &'a str } }`. Each field's type implements
/// [`LabelValue`]; its name is the label's name.
#[macro_export]
#[doc(hidden)]
macro_rules! label_set {
    ($(#[$meta:meta])* $vis:vis struct $name:ident<'a> {
        $($(#[$fmeta:meta])* $field:ident : $ty:ty),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name<'a> {
            $($(#[$fmeta])* pub $field: $ty,)+
        }
        impl $crate::telemetry::LabelSet for $name<'static> {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];
            type Values<'a> = $name<'a>;
            fn with_values<R>(v: &$name<'_>, f: impl FnOnce(&[&str]) -> R) -> R {
                f(&[$($crate::telemetry::LabelValue::label_value(&v.$field)),+])
            }
        }
    };
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident : $ty:ty),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        $vis struct $name {
            $($(#[$fmeta])* pub $field: $ty,)+
        }
        impl $crate::telemetry::LabelSet for $name {
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];
            type Values<'a> = $name;
            fn with_values<R>(v: &$name, f: impl FnOnce(&[&str]) -> R) -> R {
                f(&[$($crate::telemetry::LabelValue::label_value(&v.$field)),+])
            }
        }
    };
}

/// Declares a closed set of label values: `label_enum! { /// doc  pub enum Cache { Miss =>
/// "miss", Hit => "hit" } }`. The enum gets `as_str`, `ALL`, [`LabelValue`] and a `Serialize`
/// that writes the same value, so a label and a JSON field cannot disagree.
#[macro_export]
#[doc(hidden)]
macro_rules! label_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $value:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $value)] $variant,)+
        }
        impl $name {
            /// Every value.
            #[allow(dead_code)]
            $vis const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The label (and JSON) value.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $value,)+
                }
            }
        }
        impl $crate::telemetry::LabelValue for $name {
            fn label_value(&self) -> &str {
                self.as_str()
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

fn opts<L: LabelSet>(name: &'static str, kind: Kind) -> Result<Opts, MetricsError> {
    let f = family(name).ok_or(MetricsError::Unknown(name))?;
    if f.kind != kind || f.labels != L::NAMES {
        return Err(MetricsError::Mismatch {
            name,
            kind: kind.as_str(),
            labels: L::NAMES,
        });
    }
    Ok(Opts::new(f.name, f.help))
}

fn register<C: Collector + Clone + 'static>(
    reg: &MetricsRegistry,
    c: C,
) -> Result<C, MetricsError> {
    reg.prometheus().register(Box::new(c.clone()))?;
    Ok(c)
}

/// `family_name!("pullwatch_…")`: the [`Def`] of a family for the handle it registers,
/// checked at compile time.
#[macro_export]
#[doc(hidden)]
macro_rules! family_name {
    ($name:literal) => {
        const { $crate::telemetry::Def::new($name) }
    };
}

/// A family's name, checked at compile time against [`FAMILIES`](super::FAMILIES) for the
/// kind and label struct of the handle `F` it registers: `CounterFamily::register(reg, const {
/// Def::new("pullwatch_image_pulls_total") })` does not build if the table says otherwise.
pub(crate) struct Def<F> {
    name: &'static str,
    _handle: PhantomData<fn() -> F>,
}

/// What a handle type registers as: its kind and label names.
pub(crate) trait Handle {
    /// The family kind.
    const KIND: Kind;
    /// The label names.
    const NAMES: &'static [&'static str];
}

impl<F: Handle> Def<F> {
    /// The name `name`, if `FAMILIES` lists it with `F`'s kind and labels; otherwise the
    /// constant (and so the build) fails.
    pub(crate) const fn new(name: &'static str) -> Self {
        assert!(
            super::families::listed(name, F::KIND, F::NAMES),
            "a family registered with a kind or labels that FAMILIES does not list for its name"
        );
        Self {
            name,
            _handle: PhantomData,
        }
    }
}

/// A registered family with labels `L`, over the crate's vector of metrics `V`. The four kinds
/// below differ only in how they register and in their one update method.
pub(crate) struct Family<V, L>(V, PhantomData<fn(L)>);

impl<V: Clone, L> Clone for Family<V, L> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

impl<T: MetricVecBuilder + 'static, L: LabelSet> Family<MetricVec<T>, L> {
    /// Checks `name` against `FAMILIES` as `kind` with labels `L`, builds the vector with
    /// `make` and registers it.
    fn register_as(
        reg: &MetricsRegistry,
        name: &'static str,
        kind: Kind,
        make: impl FnOnce(Opts) -> prometheus::Result<MetricVec<T>>,
    ) -> Result<Self, MetricsError> {
        let vec = make(opts::<L>(name, kind)?)?;
        Ok(Self(register(reg, vec)?, PhantomData))
    }

    /// The series for `labels` (created at 0 if new).
    pub(crate) fn with(&self, labels: &L::Values<'_>) -> T::M {
        L::with_values(labels, |v| self.0.with_label_values(v))
    }

    /// Removes every series (before publishing a fresh set).
    pub(crate) fn reset(&self) {
        self.0.reset();
    }

    /// Removes the series for `labels`, if it exists (a value no longer known).
    pub(crate) fn remove(&self, labels: &L::Values<'_>) {
        let _ = L::with_values(labels, |v| self.0.remove_label_values(v));
    }
}

/// A family whose series of one label value can be removed: what an owner calls when a value
/// loses its label slot ([`crate::core::cardinality`]).
pub(crate) trait ForgetValue: Send + Sync {
    /// Removes every series whose label `label` is `value`.
    fn forget(&self, label: &str, value: &str);
}

impl<T: MetricVecBuilder + 'static, L: LabelSet> ForgetValue for Family<MetricVec<T>, L>
where
    MetricVec<T>: Send + Sync,
{
    fn forget(&self, label: &str, value: &str) {
        let Some(at) = L::NAMES.iter().position(|n| *n == label) else {
            return;
        };
        for family in self.0.collect() {
            for metric in family.get_metric() {
                let pairs = metric.get_label();
                let values: Vec<&str> = L::NAMES
                    .iter()
                    .map(|n| {
                        pairs
                            .iter()
                            .find(|p| p.name() == *n)
                            .map_or("", |p| p.value())
                    })
                    .collect();
                if values[at] == value {
                    let _ = self.0.remove_label_values(&values);
                }
            }
        }
    }
}

/// An integer counter family with labels `L`.
pub(crate) type CounterFamily<L> = Family<IntCounterVec, L>;
/// An integer gauge family with labels `L`.
pub(crate) type GaugeFamily<L> = Family<IntGaugeVec, L>;
/// A floating-point gauge family with labels `L`.
pub(crate) type FloatGaugeFamily<L> = Family<GaugeVec, L>;
/// A histogram family with labels `L`.
pub(crate) type HistogramFamily<L> = Family<HistogramVec, L>;

impl<L: LabelSet> Handle for CounterFamily<L> {
    const KIND: Kind = Kind::Counter;
    const NAMES: &'static [&'static str] = L::NAMES;
}

impl<L: LabelSet> Handle for GaugeFamily<L> {
    const KIND: Kind = Kind::Gauge;
    const NAMES: &'static [&'static str] = L::NAMES;
}

impl<L: LabelSet> Handle for FloatGaugeFamily<L> {
    const KIND: Kind = Kind::Gauge;
    const NAMES: &'static [&'static str] = L::NAMES;
}

impl<L: LabelSet> Handle for HistogramFamily<L> {
    const KIND: Kind = Kind::Histogram;
    const NAMES: &'static [&'static str] = L::NAMES;
}

impl<L: LabelSet> CounterFamily<L> {
    /// Registers the family `def` names.
    pub(crate) fn register(reg: &MetricsRegistry, def: Def<Self>) -> Result<Self, MetricsError> {
        Self::register_as(reg, def.name, Kind::Counter, |o| {
            IntCounterVec::new(o, L::NAMES)
        })
    }

    /// Adds one to the series for `labels`.
    pub(crate) fn inc(&self, labels: &L::Values<'_>) {
        self.with(labels).inc();
    }
}

impl<L: LabelSet> GaugeFamily<L> {
    /// Registers the family `def` names.
    pub(crate) fn register(reg: &MetricsRegistry, def: Def<Self>) -> Result<Self, MetricsError> {
        Self::register_as(reg, def.name, Kind::Gauge, |o| {
            IntGaugeVec::new(o, L::NAMES)
        })
    }

    /// Sets the series for `labels`, saturating at `i64::MAX`.
    pub(crate) fn set(&self, labels: &L::Values<'_>, value: impl TryInto<i64>) {
        self.with(labels).set(value.try_into().unwrap_or(i64::MAX));
    }
}

impl<L: LabelSet> FloatGaugeFamily<L> {
    /// Registers the family `def` names.
    pub(crate) fn register(reg: &MetricsRegistry, def: Def<Self>) -> Result<Self, MetricsError> {
        Self::register_as(reg, def.name, Kind::Gauge, |o| GaugeVec::new(o, L::NAMES))
    }
}

impl<L: LabelSet> HistogramFamily<L> {
    /// Registers the family `def` names with `buckets`.
    pub(crate) fn register(
        reg: &MetricsRegistry,
        def: Def<Self>,
        buckets: &[f64],
    ) -> Result<Self, MetricsError> {
        Self::register_as(reg, def.name, Kind::Histogram, |o| {
            HistogramVec::new(HistogramOpts::from(o).buckets(buckets.to_vec()), L::NAMES)
        })
    }

    /// Observes `value` in the series for `labels`.
    pub(crate) fn observe(&self, labels: &L::Values<'_>, value: f64) {
        self.with(labels).observe(value);
    }
}

/// Registers the label-less counter `name`, shown from the start (at 0).
pub(crate) fn counter(
    reg: &MetricsRegistry,
    name: &'static str,
) -> Result<IntCounter, MetricsError> {
    register(
        reg,
        IntCounter::with_opts(opts::<()>(name, Kind::Counter)?)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::label_set! {
        /// Test labels.
        struct RegistryResult<'a> { registry: &'a str, result: &'a str }
    }

    #[test]
    fn labels_are_named_and_checked_against_families() {
        let reg = MetricsRegistry::new().unwrap();
        let pulls = CounterFamily::<RegistryResult<'static>>::register(
            &reg,
            crate::family_name!("pullwatch_image_pulls_total"),
        )
        .unwrap();
        let registry = String::from("a.io");
        pulls.inc(&RegistryResult {
            registry: &registry,
            result: "success",
        });
        assert!(
            reg.render()
                .contains("pullwatch_image_pulls_total{registry=\"a.io\",result=\"success\"} 1")
        );
        // Wrong labels, wrong kind, unknown name: no `Def` builds (a constant that fails is a
        // build error); the rule it evaluates:
        use super::super::families::listed;
        let names = <RegistryResult<'static> as LabelSet>::NAMES;
        assert!(listed("pullwatch_image_pulls_total", Kind::Counter, names));
        assert!(!listed(
            "pullwatch_image_pull_failures_total",
            Kind::Counter,
            names
        ));
        assert!(!listed("pullwatch_image_pulls_total", Kind::Gauge, names));
        assert!(!listed(
            "pullwatch_image_pulls_total",
            Kind::Counter,
            &["result", "registry"]
        ));
        assert!(!listed("pullwatch_nope_total", Kind::Counter, names));
        // Names registered by string are still checked when they register; twice is refused.
        assert!(matches!(
            counter(&reg, "pullwatch_nope_total"),
            Err(MetricsError::Unknown(_))
        ));
        let twice = CounterFamily::<RegistryResult<'static>>::register(
            &reg,
            crate::family_name!("pullwatch_image_pulls_total"),
        );
        assert!(matches!(twice, Err(MetricsError::Registry(_))));
        // Forgetting a value removes all its series, and only its.
        for r in ["b.io", "c.io"] {
            for result in ["success", "failure"] {
                pulls.inc(&RegistryResult {
                    registry: r,
                    result,
                });
            }
        }
        pulls.forget("registry", "b.io");
        let text = reg.render();
        assert!(!text.contains("b.io"), "{text}");
        assert!(
            text.contains("registry=\"c.io\",result=\"failure\""),
            "{text}"
        );
        assert!(text.contains("registry=\"a.io\""), "{text}");
    }
}
