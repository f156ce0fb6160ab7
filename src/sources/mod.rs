//! Where pull attempts and the signals around them come from: the CRI interposer, the kernel
//! tap, containerd, the runtime status poller, the Kubernetes API, and the registry rate-limit
//! probe.

pub mod containerd;
pub mod cri_proxy;
pub mod cri_tap;
pub mod kube;
pub mod ratelimit;
pub mod runtime_status;
