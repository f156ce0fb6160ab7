//! Where pull attempts and the signals around them come from: the CRI interposer, the kernel
//! tap, containerd, the registry endpoints containerd's connections reach, the runtime status
//! poller, the Kubernetes API, and the registry rate-limit probe.

pub(crate) mod containerd;
pub(crate) mod cri_proxy;
pub(crate) mod cri_tap;
pub(crate) mod endpoints;
pub(crate) mod kube;
mod peer;
pub(crate) mod ratelimit;
pub(crate) mod runtime_status;
