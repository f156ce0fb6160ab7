//! pullwatch: an agent for Kubernetes nodes that times and classifies every container image pull
//! and exports the result as Prometheus metrics, a JSON event log and fix hints.
//!
//! Data path: **sources** (`sources/`: interposer, containerd, runtime status, Kubernetes API,
//! rate-limit probe) produce [`core::attempt::PullAttempt`]s; the **core** classifies failures
//! ([`core::classifier`]), tracks pods in backoff and bounds label cardinality; the [`recorder`]
//! keeps the attempt authority's attempts and feeds the **sinks** ([`sinks`]): the metric
//! registry and the event log; `http/` serves `/metrics`, `/healthz`, `/readyz`. [`cmd`] holds
//! the subcommands and wires it together for `run`.
//!
//! Public: the binary's entry point ([`cmd::main`]) and `pullwatch pull`, the domain model
//! ([`core`]), the CRI protocol and client ([`cri`]) and the metric contract ([`telemetry`]).
//! Everything else is crate-private; what the benchmarks and the end-to-end tests need from
//! inside is in the hidden [`testing`] module, and the fuzz targets' bodies in `fuzzing`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

mod causes;
pub mod cmd;
pub mod core;
pub mod cri;
mod flags;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod http;
mod logging;
mod observe;
mod recorder;
mod sinks;
mod sources;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;

/// pullwatch's version (Cargo package version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Git revision the binary was built from (`PULLWATCH_REVISION` at build time, else the
/// checkout's `git rev-parse --short=12 HEAD`; see `build.rs`), or `unknown`.
pub const REVISION: &str = match option_env!("PULLWATCH_REVISION") {
    Some(r) => r,
    None => "unknown",
};

#[cfg(test)]
mod tests {
    #[test]
    fn a_build_from_a_checkout_knows_its_revision() {
        let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".git");
        if !checkout.exists() {
            eprintln!("skipped: not built from a git checkout");
            return;
        }
        assert_ne!(super::REVISION, "unknown");
        assert!(
            super::REVISION.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}",
            super::REVISION
        );
    }
}
