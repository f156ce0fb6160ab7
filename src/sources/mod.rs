//! Where pull attempts come from. Today: the CRI interposer.

pub mod containerd;
pub mod cri_client;
pub mod cri_proxy;
