//! Per-pod reads of kubelet's `Pulled` Events: when a container starts after a pull, one list
//! of that pod's `Pulled` Events (selected by the pod's UID, served from the API server's watch
//! cache with `resourceVersion=0`) gives kubelet's pull duration and its queue time. What it
//! costs is bounded by the node: reads of one pod within [`SETTLE`] are one read, at most
//! [`RATE`] a second start (burst [`BURST`]), [`MAX_RUNNING`] at once, and at most
//! [`MAX_WAITING`] wait; a read beyond is dropped and counted.

use crate::core::attempt::PodRef;
use crate::core::rate::Budget;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How long after a container's start its pod's Events are read: kubelet records `Pulled`
/// before it starts the container, and its event recorder writes asynchronously.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
/// Reads started per second at most, and saved up at most.
pub(crate) const RATE: f64 = 5.0;
pub(crate) const BURST: f64 = 20.0;
/// Reads in flight at most.
pub(crate) const MAX_RUNNING: usize = 4;
/// Pods waiting to be read at most.
pub(crate) const MAX_WAITING: usize = 1024;
/// A read that takes longer is abandoned.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a finished read brings back.
pub(crate) type Done = (PodRef, Result<Vec<Event>, ReadError>);

/// Why a read brought nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The API answered with an error.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// No answer within [`TIMEOUT`].
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

/// The reads waiting and running.
pub(crate) struct PulledReads {
    client: kube::Client,
    waiting: HashMap<String, (PodRef, Instant)>,
    budget: Budget,
    running: JoinSet<Done>,
}

impl PulledReads {
    pub(crate) fn new(client: kube::Client, now: Instant) -> Self {
        Self {
            client,
            waiting: HashMap::new(),
            budget: Budget::new(RATE, BURST, now),
            running: JoinSet::new(),
        }
    }

    /// Asks for `pod`'s `Pulled` Events [`SETTLE`] from `now` (one read for asks that come
    /// while it waits). `false` when too many pods wait: the ask is dropped.
    pub(crate) fn ask(&mut self, pod: PodRef, now: Instant) -> bool {
        if self.waiting.contains_key(&pod.uid) {
            return true;
        }
        if self.waiting.len() >= MAX_WAITING {
            return false;
        }
        self.waiting.insert(pod.uid.clone(), (pod, now + SETTLE));
        true
    }

    /// Starts the reads that are due, as the budget and [`MAX_RUNNING`] allow.
    pub(crate) fn start_due(&mut self, now: Instant) {
        let mut due: Vec<(String, Instant)> = self
            .waiting
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(uid, (_, at))| (uid.clone(), *at))
            .collect();
        due.sort_by_key(|(_, at)| *at);
        for (uid, _) in due {
            if self.running.len() >= MAX_RUNNING || !self.budget.take(now) {
                return;
            }
            let Some((pod, _)) = self.waiting.remove(&uid) else {
                continue;
            };
            let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
            // Unpaged: kube-rs sends no `resourceVersion=0` with a limit, and a pod has one
            // `Pulled` Event per pull (kubelet folds repeats).
            let params = ListParams::default()
                .fields(&format!("involvedObject.uid={},reason=Pulled", pod.uid))
                .match_any();
            self.running.spawn(async move {
                let listed = tokio::time::timeout(TIMEOUT, api.list(&params)).await;
                let result = match listed {
                    Ok(Ok(list)) => Ok(list.items),
                    Ok(Err(e)) => Err(ReadError::Api(e)),
                    Err(_) => Err(ReadError::Timeout),
                };
                (pod, result)
            });
        }
    }

    /// The next read that finished; pending while none runs.
    pub(crate) async fn next_done(&mut self) -> Done {
        loop {
            match self.running.join_next().await {
                Some(Ok(done)) => return done,
                // A read task cannot panic short of a bug; it is gone either way.
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }
}
