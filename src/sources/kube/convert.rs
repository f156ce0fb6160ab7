//! Kubernetes objects into the tracker's observations: a kubelet Event of this node into an
//! [`EventObs`], a pod's container statuses into a [`PodObs`]. Pure; everything the tracker
//! needs is read here, nothing else of the objects is kept.

use super::tracker::{ContainerObs, EventObs, PodObs, PullState};
use crate::core::attempt::PodRef;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use std::time::{Duration, SystemTime};

/// Seconds and nanoseconds since the epoch as a `SystemTime` (times before 1970 clamp to it).
fn epoch(seconds: i64, nanos: i32) -> SystemTime {
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(seconds.max(0).unsigned_abs())
        + Duration::from_nanos(u64::from(nanos.max(0).unsigned_abs()))
}

fn system_time(t: &Time) -> SystemTime {
    epoch(t.0.as_second(), t.0.subsec_nanosecond())
}

fn micro_time(t: &MicroTime) -> SystemTime {
    epoch(t.0.as_second(), t.0.subsec_nanosecond())
}

/// The tracker's view of a kubelet Event, or `None` if it is not from this node's kubelet or not
/// about a pod.
pub(crate) fn event_obs(ev: &Event, node: &str) -> Option<EventObs> {
    let host = ev
        .source
        .as_ref()
        .and_then(|s| s.host.as_deref())
        .filter(|h| !h.is_empty())
        .or(ev.reporting_instance.as_deref());
    if host != Some(node) || ev.involved_object.kind.as_deref() != Some("Pod") {
        return None;
    }
    let o = &ev.involved_object;
    let series_count = ev.series.as_ref().and_then(|s| s.count);
    let count = series_count.or(ev.count).unwrap_or(1).max(1);
    let last_seen = ev
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(micro_time)
        .or_else(|| ev.last_timestamp.as_ref().map(system_time))
        .or_else(|| ev.event_time.as_ref().map(micro_time));
    let first_seen = ev
        .first_timestamp
        .as_ref()
        .map(system_time)
        .or_else(|| ev.event_time.as_ref().map(micro_time))
        .or(last_seen);
    Some(EventObs {
        uid: ev.metadata.uid.clone()?,
        count: u32::try_from(count).unwrap_or(1),
        reason: ev.reason.clone().unwrap_or_default(),
        message: ev.message.clone().unwrap_or_default(),
        pod: PodRef {
            namespace: o.namespace.clone().unwrap_or_default(),
            name: o.name.clone().unwrap_or_default(),
            uid: o.uid.clone().unwrap_or_default(),
        },
        first_seen,
        last_seen,
    })
}

/// What a container status says about its image pull.
fn pull_state(cs: &ContainerStatus) -> PullState {
    let Some(state) = &cs.state else {
        return PullState::Waiting;
    };
    if let Some(w) = &state.waiting {
        let message = w.message.clone().unwrap_or_default();
        return match w.reason.as_deref() {
            Some("ErrImagePull" | "RegistryUnavailable" | "SignatureValidationFailed") => {
                PullState::Failed(message)
            }
            Some("ImagePullBackOff") => PullState::BackOff(message),
            // kubelet pulls while the container is being created.
            Some("ContainerCreating" | "PodInitializing") => PullState::Creating,
            _ => PullState::Waiting,
        };
    }
    if state.running.is_some() || state.terminated.is_some() {
        PullState::Present
    } else {
        PullState::Waiting
    }
}

/// The tracker's view of a pod, or `None` without a UID.
pub(crate) fn pod_obs(p: &Pod) -> Option<PodObs> {
    let pod = PodRef {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone()?,
    };
    let mut containers = Vec::new();
    if let Some(status) = &p.status {
        for list in [
            &status.init_container_statuses,
            &status.container_statuses,
            &status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        {
            for cs in list {
                containers.push(ContainerObs {
                    name: cs.name.clone(),
                    image: spec_image(p, &cs.name).unwrap_or_else(|| cs.image.clone()),
                    state: pull_state(cs),
                });
            }
        }
    }
    Some(PodObs {
        pod,
        created: p.metadata.creation_timestamp.as_ref().map(system_time),
        containers,
    })
}

/// The image the pod's spec names for container `name` (statuses of running containers show
/// the resolved image instead).
fn spec_image(p: &Pod, name: &str) -> Option<String> {
    let spec = p.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .and_then(|c| c.image.clone())
        .or_else(|| {
            spec.ephemeral_containers
                .iter()
                .flatten()
                .find(|c| c.name == name)
                .and_then(|c| c.image.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> Event {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn kubelet_events_of_this_node_only() {
        let mut j = serde_json::json!({
            "metadata": {"name": "web-1.17f", "namespace": "shop", "uid": "ev-1"},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "pod-1",
                               "fieldPath": "spec.containers{app}"},
            "reason": "Failed",
            "message": "Failed to pull image \"nginx:nope\": not found",
            "source": {"component": "kubelet", "host": "node-a"},
            "firstTimestamp": "2026-11-25T10:00:00Z",
            "lastTimestamp": "2026-11-25T10:05:00Z",
            "count": 3,
            "type": "Warning"
        });
        let obs = event_obs(&event(j.clone()), "node-a").unwrap();
        assert_eq!(obs.count, 3);
        assert_eq!(obs.pod.uid, "pod-1");
        assert_eq!(
            obs.last_seen
                .unwrap()
                .duration_since(obs.first_seen.unwrap())
                .ok(),
            Some(Duration::from_secs(300))
        );
        assert!(event_obs(&event(j.clone()), "node-b").is_none());
        // events.k8s.io-style (series, reportingInstance, no source.host).
        j["source"] = serde_json::json!({"component": "kubelet", "host": ""});
        j["reportingInstance"] = "node-b".into();
        j["series"] =
            serde_json::json!({"count": 9, "lastObservedTime": "2026-11-25T10:09:00.000000Z"});
        let obs = event_obs(&event(j), "node-b").unwrap();
        assert_eq!(obs.count, 9);
    }

    #[test]
    fn container_states_and_spec_images() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "pod-1",
                         "creationTimestamp": "2026-11-25T10:00:00Z"},
            "spec": {"nodeName": "node-a",
                     "initContainers": [{"name": "init", "image": "busybox"}],
                     "containers": [{"name": "app", "image": "nginx:nope"}, {"name": "side", "image": "envoy:1"}]},
            "status": {
                "initContainerStatuses": [{"name": "init", "image": "docker.io/library/busybox:latest", "imageID": "", "ready": true, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0}}}],
                "containerStatuses": [
                    {"name": "app", "image": "nginx:nope", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "ErrImagePull", "message": "rpc error: code = NotFound desc = not found"}}},
                    {"name": "side", "image": "envoy:1", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"envoy:1\""}}}
                ]}
        }))
        .unwrap();
        let obs = pod_obs(&p).unwrap();
        let states: Vec<(&str, &str, &PullState)> = obs
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_str(), &c.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("init", "busybox", &PullState::Present),
                (
                    "app",
                    "nginx:nope",
                    &PullState::Failed("rpc error: code = NotFound desc = not found".into())
                ),
                (
                    "side",
                    "envoy:1",
                    &PullState::BackOff("Back-off pulling image \"envoy:1\"".into())
                ),
            ]
        );
        assert!(obs.created.is_some());
    }
}
