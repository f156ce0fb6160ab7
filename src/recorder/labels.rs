//! The recorder's label values: every `registry`, `namespace` and `image` value passes its cap
//! here ([`crate::core::cardinality`]), overflows and evictions are counted, and an evicted
//! registry's series go. Also the one mapping from a download's host to its registry.

use super::Recorder;
use super::metrics::ByLabel;
use crate::core::cardinality::{Admission, Claim, LabelGuard, LabelName};
use crate::core::reference::{ImageRef, split_port};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// Hosts whose registries with a port are remembered at most.
const MAX_PORT_HOSTS: usize = 256;
/// Registries with a port remembered per host at most.
const MAX_PORTS_PER_HOST: usize = 4;

/// Registries with a port, by host, from the image names seen: containerd's download labels drop
/// the port, the pulls' `registry` label keeps it.
#[derive(Debug, Default)]
pub(super) struct HostPorts(HashMap<String, BTreeSet<String>>);

impl HostPorts {
    fn learn(&mut self, image: &str) {
        let Ok(r) = ImageRef::parse(image) else {
            return;
        };
        let (host, Some(_)) = split_port(&r.registry) else {
            return;
        };
        if !self.0.contains_key(host) && self.0.len() >= MAX_PORT_HOSTS {
            return;
        }
        let known = self.0.entry(host.to_string()).or_default();
        if known.len() < MAX_PORTS_PER_HOST {
            known.insert(r.registry);
        }
    }

    /// The one registry on `host`, `Some(host)` when several are, `None` when none was seen.
    fn resolve(&self, host: &str) -> Option<String> {
        let known = self.0.get(host)?;
        match known.iter().next() {
            Some(one) if known.len() == 1 => Some(one.clone()),
            _ => Some(host.to_string()),
        }
    }
}

impl Recorder {
    /// The label value of `value` under `guard`'s slot policy. An overflow is counted when
    /// `counted` (once per attempt, not per signal); a value that lost its slot to this one
    /// loses its series.
    pub(super) fn label<'a>(
        &self,
        guard: &LabelGuard,
        value: &'a str,
        claim: Claim,
        counted: bool,
    ) -> &'a str {
        let label = guard.label();
        let a = guard.admit_as(value, claim, Instant::now());
        match &a {
            Admission::Overflow if counted => {
                self.metrics.label_overflow.inc(&ByLabel { label });
            }
            Admission::Replaced { evicted, .. } => {
                self.metrics.label_evictions.inc(&ByLabel { label });
                match label {
                    LabelName::Registry => {
                        for f in self.metrics.by_registry() {
                            f.forget(label.as_str(), evicted);
                        }
                    }
                    LabelName::Image => {
                        if let Some(by_image) = &self.render.by_image {
                            by_image.forget(evicted);
                        }
                    }
                    LabelName::Namespace => {}
                }
                tracing::debug!(%label, evicted = %evicted, "a label value gave its slot to a newcomer");
            }
            _ => {}
        }
        a.value()
    }

    /// `label` for an attempt or a signal seen now, its overflow counted.
    pub(super) fn admit<'a>(&self, guard: &LabelGuard, value: &'a str) -> &'a str {
        self.label(guard, value, Claim::Seen, true)
    }

    /// The `registry` label value of downloads from `registry` (real traffic: proven), after
    /// the cardinality cap.
    pub(crate) fn registry_label<'a>(&self, registry: &'a str) -> &'a str {
        self.label(&self.registries, registry, Claim::Proven, true)
    }

    /// An image name a source saw (containerd's records): remembered if its registry has a
    /// port, so downloads from its host are attributed to it.
    pub(crate) fn image_seen(&self, image: &str) {
        super::lock(&self.host_ports).learn(image);
    }

    /// The registry a download attributed to `host` belongs to: downloads name the host alone,
    /// so the one registry with a port on that host that an image name or a pull showed stands
    /// for it; otherwise (none, or several) `host` itself.
    pub(crate) fn registry_of_host(&self, host: &str) -> String {
        if let Some(known) = super::lock(&self.host_ports).resolve(host) {
            return known;
        }
        self.registries
            .unique(|r| matches!(split_port(r), (h, Some(_)) if h == host))
            .unwrap_or_else(|| host.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_resolves_to_its_one_registry_with_a_port() {
        let mut p = HostPorts::default();
        assert_eq!(p.resolve("127.0.0.1"), None);
        p.learn("127.0.0.1:5000/a:1");
        assert_eq!(p.resolve("127.0.0.1").as_deref(), Some("127.0.0.1:5000"));
        p.learn("127.0.0.1:5001/a:1");
        assert_eq!(
            p.resolve("127.0.0.1").as_deref(),
            Some("127.0.0.1"),
            "two ports: the host"
        );
        p.learn("quay.io/a:1");
        assert_eq!(p.resolve("quay.io"), None);
        for i in 0..1000 {
            p.learn(&format!("h{i}:1/a:1"));
        }
        assert!(p.0.len() <= MAX_PORT_HOSTS);
        for i in 0..100 {
            p.learn(&format!("x:{i}/a:1"));
        }
        assert!(p.0.get("x").is_none_or(|k| k.len() <= MAX_PORTS_PER_HOST));
    }
}
