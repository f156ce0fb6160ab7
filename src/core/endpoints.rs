//! Which registry endpoints served a pull: the report a finished attempt carries when the
//! runtime's registry hosts configure mirrors, and the witness that makes it. The witness
//! (`crate::sources::endpoints`) watches the runtime's own connections; the recorder asks it at
//! each pull's start and end and never learns how it knows.

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

crate::label_enum! {
    /// Why containerd went past an endpoint to a later one (hosts.toml order).
    pub enum FallbackCause {
        /// No byte came from it during the pull: down, refused, unresolvable or silent.
        NoResponse => "no_response",
        /// It answered but served nothing the pull kept: not found, denied, or an error status.
        Answered => "answered",
    }
}

/// One endpoint that carried bytes of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The endpoint as `hosts.toml` names it (`host[:port]`), or `other` for an address that
    /// no configured host resolves to (a redirect to a CDN, say).
    pub endpoint: String,
    /// Bytes the runtime received from it during the pull.
    pub bytes: u64,
    /// Other pulls that could have used the same endpoint ran at the same time: the bytes
    /// are theirs and this pull's together, not split.
    pub shared: bool,
}

/// One endpoint a pull went past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// The endpoint as `hosts.toml` names it.
    pub endpoint: String,
    /// Why, as far as its connections tell.
    pub cause: FallbackCause,
}

/// The endpoints of one pull, in `hosts.toml` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointReport {
    /// Endpoints that sent bytes during the pull.
    pub served_by: Vec<Served>,
    /// Endpoints before the first that served, which containerd tried and went past.
    pub fell_back_from: Vec<Fallback>,
    /// For a failed pull: every endpoint containerd tries for the registry, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tried: Vec<String>,
}

impl EndpointReport {
    /// The endpoints that served, for people: `a (5300 B), b (700 B, shared)`.
    pub fn served(&self) -> String {
        let served: Vec<String> = self
            .served_by
            .iter()
            .map(|s| {
                let shared = if s.shared { ", shared" } else { "" };
                format!("{} ({} B{shared})", s.endpoint, s.bytes)
            })
            .collect();
        served.join(", ")
    }

    /// The endpoints gone past, for people: `m (no_response)`.
    pub fn fallbacks(&self) -> String {
        let from: Vec<String> = self
            .fell_back_from
            .iter()
            .map(|f| format!("{} ({})", f.endpoint, f.cause))
            .collect();
        from.join(", ")
    }

    /// One line for people: `endpoints tried: m, u; served by u (9000 B); fell back from m
    /// (no_response)`, each part only when it has something to say.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.tried.is_empty() {
            parts.push(format!("endpoints tried: {}", self.tried.join(", ")));
        }
        if !self.served_by.is_empty() {
            parts.push(format!("served by {}", self.served()));
        }
        if !self.fell_back_from.is_empty() {
            parts.push(format!("fell back from {}", self.fallbacks()));
        }
        parts.join("; ")
    }
}

/// What watches the runtime's registry connections. The recorder tells it when pulls of a
/// registry start and end, and asks it for a finished pull's report.
pub trait EndpointWitness: Send + Sync + std::fmt::Debug {
    /// A pull of `registry` started now (or was first learned of now).
    fn pull_started(&self, registry: &str);
    /// Downloads from registry host `host` are in progress now (containerd's download labels
    /// name the host without its port).
    fn downloading(&self, host: &str);
    /// A pull of `registry` that ran from `started` to now ended; `failed` if it did. `None`
    /// when no mirror is configured for the registry.
    fn pull_ended(
        &self,
        registry: &str,
        started: SystemTime,
        failed: bool,
    ) -> Option<EndpointReport>;
}
