//! Pulls in progress: counted in `pullwatch_image_pulls_in_flight` and shown in the pulls view
//! while an observed call is open ([`InFlight`]), or between kubelet's `Pulling` and its end as
//! the Kubernetes API announces them; and the download progress the containerd source reads,
//! passed on to the view. Sources reach the view only through here.

use super::Recorder;
use super::authority::Authority;
use super::metrics::ByRegistry;
use crate::core::attempt::{PodRef, registry_of};
use crate::core::cardinality::Claim;
use crate::core::progress::{Downloads, RepoKey};
use crate::core::reference::ImageRef;
use crate::sinks::event_log::Stalled;
use crate::sinks::pulls::PullsView;
use prometheus::IntGauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An announced pull leaves the view after this long without its end (a missed event).
const ANNOUNCED_MAX_AGE: Duration = Duration::from_secs(30 * 60);
/// Announced pulls shown at most.
const ANNOUNCED_MAX: usize = 4096;

/// Counts one pull in `pullwatch_image_pulls_in_flight`, and shows it in the pulls view, until
/// dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    gauge: IntGauge,
    shown: Option<(Arc<PullsView>, u64)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some((view, id)) = &self.shown {
            view.ended(*id);
        }
    }
}

/// Pulls the Kubernetes API announced, by (pod UID, image): their id in the view and when.
#[derive(Debug, Default)]
pub(super) struct Announced(HashMap<(String, String), (u64, Instant)>);

impl Recorder {
    /// Marks a pull to `registry` as started; it counts as in flight until the guard drops.
    pub(crate) fn pull_started(&self, registry: &str) -> InFlight {
        if let Some(w) = self.witness() {
            w.pull_started(registry);
        }
        // Not counted as an overflow here: the attempt's record() counts it once.
        let registry = self.label(&self.registries, registry, Claim::Seen, false);
        let gauge = self.metrics.in_flight.with(&ByRegistry { registry });
        gauge.inc();
        InFlight { gauge, shown: None }
    }

    /// Marks a pull of `image` (for `pod`, if named) as started: in flight, and in the pulls
    /// view, until the guard drops.
    pub(crate) fn pull_started_for(
        &self,
        image: &str,
        reference: Option<&ImageRef>,
        pod: Option<PodRef>,
    ) -> InFlight {
        let registry = registry_of(reference);
        let mut guard = self.pull_started(registry);
        let repository = reference.map(|r| r.repository.as_str());
        guard.shown = self
            .pulls
            .started(image, registry, repository, pod, false)
            .map(|id| (self.pulls.clone(), id));
        guard
    }

    /// kubelet started pulling `image` for `pod` (the Kubernetes API says so; `tentative`: it
    /// may be, as the pod's container is being created): shown in the pulls view until
    /// [`Self::pull_announced_ended`] (a tentative one only once downloads of its repository are
    /// seen), unless an observer of CRI calls, which shows each pull with its pod itself, runs.
    pub(crate) fn pull_announced(&self, pod: PodRef, image: &str, tentative: bool) {
        if self.authority() == Authority::Observed {
            return;
        }
        let mut announced = super::lock(&self.announced);
        let now = Instant::now();
        announced.0.retain(|_, (id, at)| {
            let keep = now.saturating_duration_since(*at) < ANNOUNCED_MAX_AGE;
            if !keep {
                self.pulls.ended(*id);
            }
            keep
        });
        let key = (pod.uid.clone(), image.to_string());
        if announced.0.len() >= ANNOUNCED_MAX || announced.0.contains_key(&key) {
            return;
        }
        let reference = ImageRef::parse(image).ok();
        let registry = registry_of(reference.as_ref());
        let repository = reference.as_ref().map(|r| r.repository.as_str());
        let shown = self
            .pulls
            .started(image, registry, repository, Some(pod), tentative);
        if let Some(id) = shown {
            announced.0.insert(key, (id, now));
        }
        // The witness reads containerd's connections now: not while holding the announced pulls.
        drop(announced);
        if let Some(w) = self.witness() {
            w.pull_started(registry);
        }
    }

    /// The announced pull of `image` for the pod with `uid` ended.
    pub(crate) fn pull_announced_ended(&self, uid: &str, image: &str) {
        let key = (uid.to_string(), image.to_string());
        if let Some((id, _)) = super::lock(&self.announced).0.remove(&key) {
            self.pulls.ended(id);
        }
    }

    /// The announced pulls of the pod with `uid` end with it.
    pub(super) fn announced_pod_gone(&self, uid: &str) {
        super::lock(&self.announced).0.retain(|(pod, _), (id, _)| {
            let keep = pod != uid;
            if !keep {
                self.pulls.ended(*id);
            }
            keep
        });
    }

    /// The containerd source's latest poll: downloads in flight per (host, repository).
    pub(crate) fn downloads_seen(&self, downloads: HashMap<RepoKey, Downloads>) {
        if let Some(w) = self.witness() {
            let hosts: std::collections::HashSet<&str> =
                downloads.keys().map(|(host, _)| host.as_str()).collect();
            for host in hosts {
                w.downloading(host);
            }
        }
        self.pulls.set_downloads(downloads);
    }

    /// A download of `bytes` from `host`'s `repository` was committed to the store.
    pub(crate) fn download_committed(&self, host: &str, repository: &str, bytes: u64) {
        self.pulls.committed(host, repository, bytes);
    }

    /// A download stopped moving: one line in the event log.
    pub(crate) fn download_stalled(&self, stalled: &Stalled<'_>) {
        crate::sinks::event_log::stalled(stalled);
    }

    /// Pulls in progress and the last finished attempts (`GET /pulls`, pod events).
    pub(crate) fn pulls(&self) -> &Arc<PullsView> {
        &self.pulls
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Recorder, RecorderConfig, Sources};
    use crate::core::attempt::PodRef;
    use crate::telemetry::MetricsRegistry;

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&RecorderConfig::default(), &reg).unwrap();
        let g = r.pull_started("docker.io");
        let value = || {
            reg.value(
                "pullwatch_image_pulls_in_flight",
                &[("registry", "docker.io")],
            )
        };
        assert_eq!(value(), 1.0);
        drop(g);
        assert_eq!(value(), 0.0);
    }

    #[test]
    fn announced_pulls_show_only_without_an_observer_and_end_with_their_pod() {
        let pod = PodRef {
            namespace: "n".into(),
            name: "p".into(),
            uid: "u1".into(),
        };
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&RecorderConfig::default(), &reg).unwrap();
        r.pull_announced(pod.clone(), "a.io/x:1", false);
        assert!(
            r.pulls().snapshot().in_progress.is_empty(),
            "the observer shows it"
        );
        let cfg = RecorderConfig {
            sources: Sources {
                kube: true,
                ..Sources::default()
            },
            ..RecorderConfig::default()
        };
        let reg = MetricsRegistry::new().unwrap();
        let r = Recorder::new(&cfg, &reg).unwrap();
        r.pull_announced(pod.clone(), "a.io/x:1", false);
        r.pull_announced(pod.clone(), "a.io/x:1", false);
        r.pull_announced(pod.clone(), "a.io/y:1", false);
        assert_eq!(
            r.pulls().snapshot().in_progress.len(),
            2,
            "once per pod and image"
        );
        r.pull_announced_ended("u1", "a.io/x:1");
        assert_eq!(r.pulls().snapshot().in_progress.len(), 1);
        r.pod_gone("u1");
        assert!(r.pulls().snapshot().in_progress.is_empty());
    }
}
