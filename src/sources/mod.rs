//! Where pull attempts come from. Today: the CRI interposer.

pub mod cri_proxy;
