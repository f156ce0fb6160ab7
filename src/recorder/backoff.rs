//! The recorder's side of `pullwatch_image_pull_backoff`: kubelet's back-off signals from any
//! source enter the tracker ([`crate::core::backoff`]) with their labels capped, pods that go
//! take their pairs with them, and a timer forgets expired pairs whether or not anyone scrapes.

use super::Recorder;
use crate::core::attempt::{MAX_IMAGE_LEN, PodRef, registry_of_image};
use crate::core::backoff::BackoffTracker;
use crate::core::cardinality::Claim;
use crate::core::reason::Reason;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Recorder {
    /// kubelet reports it is backing off `image` for `pod`; `last_failure` is the cause it
    /// gave, if any (classified here). See [`BackoffTracker::backing_off`].
    pub(crate) fn backing_off(&self, pod: &PodRef, image: &str, last_failure: Option<Reason>) {
        let image = &image[..image.floor_char_boundary(MAX_IMAGE_LEN)];
        let pod = &pod.clone().bounded();
        let pod = self.admitted_pod(pod);
        let registry = registry_of_image(image);
        let failure = last_failure.map(|r| {
            let registry = self.label(&self.registries, &registry, Claim::Seen, false);
            (registry, r)
        });
        self.backoff()
            .backing_off(&pod, image, failure, super::now());
    }

    /// `image` no longer fails for `pod`: it leaves the backoff gauge.
    pub(crate) fn backoff_cleared(&self, pod: &PodRef, image: &str) {
        let pod = self.admitted_pod(pod);
        self.backoff().clear(&pod, image);
    }

    /// The pod with `uid` is gone: its pairs leave the backoff gauge, its announced pulls the
    /// pulls view.
    pub(crate) fn pod_gone(&self, uid: &str) {
        self.announced_pod_gone(uid);
        self.backoff().forget_pod(uid);
    }

    /// `pod` with its namespace passed through the namespace cap, as the backoff tracker keys it.
    /// Not counted as an overflow: these are repeated signals about one pod, not attempts.
    pub(super) fn admitted_pod(&self, pod: &PodRef) -> PodRef {
        PodRef {
            namespace: self
                .label(&self.namespaces, &pod.namespace, Claim::Seen, false)
                .to_string(),
            ..pod.clone()
        }
    }

    /// Brings the backoff gauge up to date (each render does it first).
    pub(crate) fn refresh_backoff(&self) {
        use crate::telemetry::RenderHook;
        self.render.refresh();
    }

    pub(super) fn backoff(&self) -> std::sync::MutexGuard<'_, BackoffTracker> {
        self.render.backoff()
    }

    /// Forgets expired backoff pairs every half expiry window (at least every 30 s) until
    /// `stop`, so the tracker stays bounded when nobody scrapes (or every scrape fails auth):
    /// state never waits for a render to be cleaned.
    pub(crate) async fn expire_backoff(&self, stop: CancellationToken) {
        let expiry = self.backoff().expiry();
        let period = (expiry / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.backoff().expire(super::now()),
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::attempt;
    use super::super::{Recorder, RecorderConfig};
    use crate::core::attempt::Outcome;
    use crate::telemetry::MetricsRegistry;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;
    use tonic::Code;

    #[tokio::test(start_paused = true)]
    async fn backoff_pairs_expire_without_a_scrape() {
        let reg = MetricsRegistry::new().unwrap();
        let cfg = RecorderConfig {
            backoff_expiry: Duration::from_secs(60),
            max_namespaces: 10_000,
            ..Default::default()
        };
        let r = Arc::new(Recorder::new(&cfg, &reg).unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (r, stop) = (r.clone(), stop.clone());
            async move { r.expire_backoff(stop).await }
        });
        for i in 0..1000 {
            let a = attempt(
                &format!("a.io/x{i}:1"),
                "n",
                Outcome::failure(Code::Unknown, "x: not found"),
            );
            r.record(&a);
        }
        assert_eq!(r.backoff().len(), 1000);
        // Paused time: the recorder's clock is tokio's, so the window passes at once.
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(r.backoff().len(), 1000, "not expired within the window");
        tokio::time::sleep(Duration::from_secs(46)).await;
        assert!(r.backoff().is_empty(), "the timer alone empties it");
        stop.cancel();
        task.await.unwrap();
    }
}
