//! The integration tests, one binary: the real `pullwatch` binary against real containerd,
//! docker-registry, Prometheus, Alertmanager, callers we did not write and servers of the tests,
//! with one shared harness (`common/`). One module per area, named for what it proves.

mod common;

mod alerting;
mod anatomy;
mod callers;
mod cli;
mod containerd;
mod demo;
mod deploy;
mod endpoint;
mod faults;
mod interposer;
mod kube;
mod mirrors;
mod pod_events;
mod prometheus;
mod proxy_behaviour;
mod proxy_transparency;
mod ratelimit_probe;
mod red_team;
mod relay;
mod setup;
mod tap;
mod web_config;
