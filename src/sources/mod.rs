//! Where pull attempts and the signals around them come from: the CRI interposer, containerd,
//! the CRI client, the Kubernetes API, and the registry rate-limit probe.

pub mod containerd;
pub mod cri_client;
pub mod cri_proxy;
pub mod kube;
pub mod ratelimit;
