//! pullwatch: an agent for Kubernetes nodes that times and classifies every container image pull
//! and exports the result as Prometheus metrics, a JSON event log and fix hints.
//!
//! Data path: **sources** ([`sources`]) produce [`core::attempt::PullAttempt`]s; the **core**
//! classifies failures ([`core::classifier`]), tracks pods in backoff and bounds label
//! cardinality; the [`recorder`] feeds the **sinks** ([`sinks`]): the Prometheus registry and the
//! event log; [`http`] serves `/metrics`, `/healthz`, `/readyz`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod core;
pub mod cri;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod pull;
pub mod recorder;
pub mod server;
pub mod signal;
pub mod sinks;
pub mod sources;
pub mod web_config;

/// pullwatch's version (Cargo package version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Git revision the binary was built from (`PULLWATCH_REVISION` at build time), or `unknown`.
pub const REVISION: &str = match option_env!("PULLWATCH_REVISION") {
    Some(r) => r,
    None => "unknown",
};
