//! The CRI method names the interposer knows, for a bounded `method` metric label.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Label for any method outside the known CRI set (a newer kubelet, or garbage).
pub(crate) const OTHER: &str = "other";
/// Label for a call whose method (or, as `code`, whose status) could not be read: the kernel
/// tap joined the connection after the HPACK entry naming it was sent.
pub(crate) const UNREAD: &str = "unread";

const RUNTIME_METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "CheckpointPod",
    "RestorePod",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
];

const IMAGE_METHODS: &[&str] = &[
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// CRI API versions kubelet may speak.
const API_VERSIONS: &[&str] = &["v1", "v1alpha2"];

fn known() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut set = HashSet::new();
        for v in API_VERSIONS {
            for m in RUNTIME_METHODS {
                set.insert(format!("/runtime.{v}.RuntimeService/{m}"));
            }
            for m in IMAGE_METHODS {
                set.insert(format!("/runtime.{v}.ImageService/{m}"));
            }
        }
        set
    })
}

/// The `method` label for a request path: the path itself if it is a known CRI method.
pub(crate) fn label(path: &str) -> &'static str {
    known().get(path).map_or(OTHER, String::as_str)
}

/// Whether the path is CRI's PullImage (any API version).
pub(crate) fn is_pull_image(path: &str) -> bool {
    API_VERSIONS.iter().any(|v| {
        path.strip_prefix("/runtime.")
            .and_then(|p| p.strip_prefix(v))
            == Some(".ImageService/PullImage")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            label("/runtime.v1.ImageService/PullImage"),
            "/runtime.v1.ImageService/PullImage"
        );
        assert_eq!(
            label("/runtime.v1alpha2.RuntimeService/Version"),
            "/runtime.v1alpha2.RuntimeService/Version"
        );
        assert_eq!(label("/runtime.v1.ImageService/FutureMethod"), OTHER);
        assert_eq!(label("/grpc.health.v1.Health/Check"), OTHER);
        assert_eq!(
            known().len(),
            2 * (RUNTIME_METHODS.len() + IMAGE_METHODS.len())
        );
    }

    #[test]
    fn pull_image_in_both_versions_only() {
        assert!(is_pull_image("/runtime.v1.ImageService/PullImage"));
        assert!(is_pull_image("/runtime.v1alpha2.ImageService/PullImage"));
        assert!(!is_pull_image("/runtime.v1.ImageService/PullImages"));
        assert!(!is_pull_image("/runtime.v2.ImageService/PullImage"));
        assert!(!is_pull_image("/x.ImageService/PullImage"));
    }
}
