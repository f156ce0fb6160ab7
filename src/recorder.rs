//! The pipeline every source feeds: applies the cardinality guards, then updates metrics, the
//! backoff tracker and the event log for each [`PullAttempt`].

use crate::core::attempt::{Outcome, PodRef, PullAttempt};
use crate::core::backoff::BackoffTracker;
use crate::core::cardinality::{Admission, LabelGuard};
use crate::core::reason::Reason;
use crate::core::reference::ImageRef;
use crate::sinks::event_log;
use crate::sinks::metrics::Metrics;
use prometheus::IntGauge;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits and switches of the recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// How long a failing pod/image pair stays in the backoff gauge without a new attempt.
    pub backoff_expiry: Duration,
    /// Distinct `registry` label values before overflow to `other`.
    pub max_registries: usize,
    /// Distinct `namespace` label values before overflow to `other`.
    pub max_namespaces: usize,
    /// Export `pullwatch_image_pulls_by_image_total` with at most this many images.
    pub image_label_cap: Option<usize>,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            backoff_expiry: crate::core::backoff::DEFAULT_EXPIRY,
            max_registries: 100,
            max_namespaces: 1000,
            image_label_cap: None,
        }
    }
}

/// Records attempts into every sink.
pub struct Recorder {
    metrics: Metrics,
    backoff: Mutex<BackoffTracker>,
    registries: LabelGuard,
    namespaces: LabelGuard,
    images: Option<LabelGuard>,
}

/// Counts one pull in `pullwatch_image_pulls_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Recorder {
    /// Builds the recorder and registers its metrics.
    pub fn new(config: &RecorderConfig) -> prometheus::Result<Self> {
        Ok(Self {
            metrics: Metrics::new(config.image_label_cap.is_some())?,
            backoff: Mutex::new(BackoffTracker::new(config.backoff_expiry)),
            registries: LabelGuard::new("registry", config.max_registries),
            namespaces: LabelGuard::new("namespace", config.max_namespaces),
            images: config
                .image_label_cap
                .map(|cap| LabelGuard::new("image", cap)),
        })
    }

    /// The metric handles (for sources that export their own families, e.g. CRI call metrics).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn admit<'a>(&self, guard: &LabelGuard, value: &'a str) -> &'a str {
        let a = guard.admit(value);
        if a == Admission::Overflow {
            self.metrics
                .label_overflow
                .with_label_values(&[guard.label()])
                .inc();
        }
        a.value()
    }

    /// The `registry` label value for `registry`, after the cardinality cap.
    pub fn registry_label<'a>(&self, registry: &'a str) -> &'a str {
        self.admit(&self.registries, registry)
    }

    /// Marks a pull to `registry` as started; it counts as in flight until the guard drops.
    pub fn pull_started(&self, registry: &str) -> InFlight {
        // Not counted as an overflow here: the attempt's record() counts it once.
        let registry = self.registries.admit(registry).value();
        let g = self.metrics.in_flight.with_label_values(&[registry]);
        g.inc();
        InFlight(g)
    }

    /// Records one finished attempt.
    pub fn record(&self, attempt: &PullAttempt) {
        if !attempt.is_bounded() {
            return self.record(&attempt.clone().bounded());
        }
        let registry = self.admit(&self.registries, attempt.registry());
        let result = attempt.outcome.result_label();
        self.metrics
            .pulls
            .with_label_values(&[registry, result])
            .inc();
        if let Some(d) = attempt.duration {
            self.metrics
                .pull_duration
                .with_label_values(&[registry, result])
                .observe(d.as_secs_f64());
        }
        if let Some(reason) = attempt.outcome.reason() {
            self.metrics
                .failures
                .with_label_values(&[registry, reason.as_str()])
                .inc();
        }
        if let (Some(guard), Some(by_image)) = (&self.images, &self.metrics.by_image) {
            let image = attempt
                .reference
                .as_ref()
                .map_or_else(|| attempt.image.clone(), ToString::to_string);
            let image = self.admit(guard, &image);
            by_image.inc(image, matches!(attempt.outcome, Outcome::Success { .. }));
        }
        if let Some(pod) = &attempt.pod {
            // Admit the namespace now so the backoff gauge never exceeds the cap.
            let mut a = attempt.clone();
            a.pod = Some(PodRef {
                namespace: self.admit(&self.namespaces, &pod.namespace).to_string(),
                ..pod.clone()
            });
            self.lock_backoff().observe(&a, registry, Instant::now());
        }
        event_log::emit(attempt);
    }

    /// kubelet reports it is backing off `image` for `pod`; `last_failure` is the cause it
    /// gave, if any (classified here). See [`BackoffTracker::backing_off`].
    pub fn backing_off(&self, pod: &PodRef, image: &str, last_failure: Option<Reason>) {
        let image = &image[..image.floor_char_boundary(crate::core::attempt::MAX_IMAGE_LEN)];
        let pod = &pod.clone().bounded();
        let pod = self.admitted_pod(pod);
        let registry = ImageRef::parse(image)
            .map_or(crate::core::attempt::UNKNOWN_REGISTRY.to_string(), |r| {
                r.registry
            });
        let failure = last_failure.map(|r| (self.registries.admit(&registry).value(), r));
        self.lock_backoff()
            .backing_off(&pod, image, failure, Instant::now());
    }

    /// `image` no longer fails for `pod`: it leaves the backoff gauge.
    pub fn backoff_cleared(&self, pod: &PodRef, image: &str) {
        let pod = self.admitted_pod(pod);
        self.lock_backoff().clear(&pod, image);
    }

    /// The pod with `uid` is gone: its pairs leave the backoff gauge.
    pub fn pod_gone(&self, uid: &str) {
        self.lock_backoff().forget_pod(uid);
    }

    /// `pod` with its namespace passed through the namespace cap, as the backoff tracker keys it.
    /// Not counted as an overflow: these are repeated signals about one pod, not attempts.
    fn admitted_pod(&self, pod: &PodRef) -> PodRef {
        PodRef {
            namespace: self.namespaces.admit(&pod.namespace).value().to_string(),
            ..pod.clone()
        }
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, BackoffTracker> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings time-derived gauges (backoff) up to date; call before rendering.
    pub fn refresh(&self) {
        let groups = self.lock_backoff().snapshot(Instant::now());
        let gauge = &self.metrics.backoff;
        gauge.reset();
        for ((ns, registry, reason), n) in groups {
            gauge
                .with_label_values(&[ns.as_str(), registry.as_str(), reason.as_str()])
                .set(n as i64);
        }
    }

    /// Refreshes and renders all metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        self.refresh();
        self.metrics.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::attempt::{Outcome, PodRef, Source};
    use crate::core::reference::ImageRef;
    use std::time::SystemTime;
    use tonic::Code;

    fn attempt(image: &str, ns: &str, outcome: Outcome) -> PullAttempt {
        PullAttempt {
            image: image.into(),
            reference: ImageRef::parse(image).ok(),
            pod: Some(PodRef {
                namespace: ns.into(),
                name: "p".into(),
                uid: "u".into(),
            }),
            started_at: SystemTime::now(),
            duration: Some(Duration::from_millis(1500)),
            outcome,
            source: Source::CriProxy,
            trace: None,
        }
    }

    #[test]
    fn records_counts_histogram_failures_and_backoff() {
        let r = Recorder::new(&RecorderConfig::default()).unwrap();
        r.record(&attempt(
            "nginx",
            "web",
            Outcome::Success {
                image_ref: "sha256:a".into(),
            },
        ));
        r.record(&attempt(
            "quay.io/x/y:1",
            "web",
            Outcome::failure(Code::Unknown, "y:1: not found"),
        ));
        let text = r.render();
        for line in [
            "pullwatch_image_pulls_total{registry=\"docker.io\",result=\"success\"} 1",
            "pullwatch_image_pulls_total{registry=\"quay.io\",result=\"failure\"} 1",
            "pullwatch_image_pull_failures_total{reason=\"not_found\",registry=\"quay.io\"} 1",
            "pullwatch_image_pull_duration_seconds_bucket{registry=\"docker.io\",result=\"success\",le=\"2.5\"} 1",
            "pullwatch_image_pull_duration_seconds_bucket{registry=\"docker.io\",result=\"success\",le=\"1\"} 0",
            "pullwatch_image_pull_backoff{namespace=\"web\",reason=\"not_found\",registry=\"quay.io\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn caps_overflow_to_other_and_are_counted() {
        let cfg = RecorderConfig {
            max_registries: 1,
            image_label_cap: Some(1),
            ..Default::default()
        };
        let r = Recorder::new(&cfg).unwrap();
        let ok = || Outcome::Success {
            image_ref: "x".into(),
        };
        r.record(&attempt("a.io/x", "n", ok()));
        r.record(&attempt("b.io/x", "n", ok()));
        r.record(&attempt("c.io/x", "n", ok()));
        let text = r.render();
        assert!(
            text.contains("pullwatch_image_pulls_total{registry=\"other\",result=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("pullwatch_label_overflow_total{label=\"registry\"} 2"),
            "{text}"
        );
        assert!(text.contains(
            "pullwatch_image_pulls_by_image_total{image=\"a.io/x:latest\",result=\"success\"} 1"
        ));
        assert!(text.contains(
            "pullwatch_image_pulls_by_image_total{image=\"other\",result=\"success\"} 2"
        ));
    }

    #[test]
    fn in_flight_guard_counts_up_and_down() {
        let r = Recorder::new(&RecorderConfig::default()).unwrap();
        let g = r.pull_started("docker.io");
        assert!(
            r.render()
                .contains("pullwatch_image_pulls_in_flight{registry=\"docker.io\"} 1")
        );
        drop(g);
        assert!(
            r.render()
                .contains("pullwatch_image_pulls_in_flight{registry=\"docker.io\"} 0")
        );
    }
}
