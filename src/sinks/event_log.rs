//! The event log: one structured `tracing` event per pull attempt (target `pullwatch::pull`),
//! which the JSON log format renders as one line. Carries pod, image, duration and cause, and
//! whether credentials were sent (`credentials`, presence only: the interposer never decodes
//! them); an `unauthorized` failure says which case it is (`hint`). A success joined to its
//! content record carries its anatomy: `<phase>_seconds` for each measured phase, bytes
//! downloaded and reused, layers downloaded and reused. An attempt the kernel tap could read only
//! in part says so: `method_from` (`request_message`: recognized as PullImage by its request)
//! and `cause_from` (`trailers`, `trailer_order`, or `unreadable` with reason `unknown`). Where
//! containerd's registry mirrors are watched, `served_by` names the endpoints that sent the
//! pull's bytes, `fell_back_from` those containerd went past (with why), and a failure's
//! `endpoints_tried` every endpoint containerd tries for the registry.

use crate::core::anatomy::{Anatomy, Phase};
use crate::core::attempt::{AttemptResult, Outcome, PullAttempt};
use crate::core::endpoints::EndpointReport;
use crate::grpc::status::code_name;
use std::time::UNIX_EPOCH;

/// Target of pull events, for filtering (`RUST_LOG=pullwatch::pull=info`).
pub(crate) const TARGET: &str = "pullwatch::pull";

/// Emits `attempt` (with its anatomy, when known) as one event.
pub(crate) fn emit(
    attempt: &PullAttempt,
    anatomy: Option<&Anatomy>,
    endpoints: Option<&EndpointReport>,
) {
    let phase = |p: Phase| anatomy.and_then(|a| a.phase(p));
    let (queue_seconds, resolve_seconds, download_seconds, unpack_seconds) = (
        phase(Phase::Queue),
        phase(Phase::Resolve),
        phase(Phase::Download),
        phase(Phase::Unpack),
    );
    let downloaded_bytes = anatomy.map(|a| a.downloaded_bytes);
    let cached_bytes = anatomy.map(|a| a.cached_bytes);
    let layers_downloaded = anatomy.map(|a| a.layers_downloaded);
    let layers_cached = anatomy.map(|a| a.layers_cached);
    let started_unix_ms = attempt
        .started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (namespace, pod, pod_uid) = attempt.pod.as_ref().map_or(("", "", ""), |p| {
        (p.namespace.as_str(), p.name.as_str(), p.uid.as_str())
    });
    let repository = attempt
        .reference
        .as_ref()
        .map_or("", |r| r.repository.as_str());
    let duration_seconds = attempt.duration.map(|d| d.as_secs_f64());
    let trace_id = attempt.trace.as_ref().map(|t| t.trace_id.as_str());
    let span_id = attempt.trace.as_ref().map(|t| t.span_id.as_str());
    let credentials = attempt.credentials;
    // What an observer that joined late could not read from the call's own fields.
    let method_from = attempt
        .readout
        .filter(|r| r.method_from_message)
        .map(|_| "request_message");
    let cause_from = attempt
        .readout
        .and_then(|r| r.cause_from)
        .map(crate::core::attempt::CauseFrom::as_str);
    // Where mirrors are watched: the endpoints that served, those gone past, and for a
    // failure every endpoint containerd tries.
    let nonempty = |s: String| (!s.is_empty()).then_some(s);
    let served_by = endpoints.and_then(|e| nonempty(e.served()));
    let fell_back_from = endpoints.and_then(|e| nonempty(e.fallbacks()));
    let endpoints_tried = endpoints.and_then(|e| nonempty(e.tried.join(", ")));
    let result = attempt.outcome.result();
    let (image_ref, reason, grpc_code, error) = match &attempt.outcome {
        Outcome::Success { image_ref } => (Some(image_ref.as_str()), None, None, None),
        Outcome::Failure {
            code,
            message,
            reason,
        } => (
            None,
            Some(*reason),
            Some(code_name(*code)),
            Some(message.as_str()),
        ),
    };
    let hint = reason.and_then(|r| r.case_hint(credentials));
    let cause_from = cause_from.filter(|_| reason.is_some());
    // One field list for both levels (a level must be a constant in `tracing::event!`).
    macro_rules! pull_event {
        ($level:expr, $message:literal) => {
            tracing::event!(
                target: TARGET,
                $level,
                event = "image_pull",
                result = result.as_str(),
                source = attempt.source.as_str(),
                estimated = attempt.source.is_estimated(),
                image = %attempt.image,
                registry = attempt.registry(),
                repository,
                namespace,
                pod,
                pod_uid,
                started_unix_ms,
                duration_seconds,
                trace_id,
                span_id,
                credentials,
                method_from,
                cause_from,
                queue_seconds,
                resolve_seconds,
                download_seconds,
                unpack_seconds,
                downloaded_bytes,
                cached_bytes,
                layers_downloaded,
                layers_cached,
                served_by,
                fell_back_from,
                endpoints_tried,
                image_ref,
                hint,
                reason = reason.map(|r| r.as_str()),
                grpc_code,
                error,
                $message
            )
        };
    }
    match result {
        AttemptResult::Success => pull_event!(tracing::Level::INFO, "image pull succeeded"),
        AttemptResult::Failure => pull_event!(tracing::Level::WARN, "image pull failed"),
    }
}

/// A download that has not moved for the stall window, with what is known of its origin.
pub(crate) struct Stalled<'a> {
    /// containerd's ingest reference.
    pub(crate) ingest: &'a str,
    /// The `registry` label value of its origin (`unknown` when not attributed).
    pub(crate) registry: &'a str,
    /// Its repository, if attributed.
    pub(crate) repository: &'a str,
    /// Bytes received.
    pub(crate) offset: u64,
    /// Bytes expected.
    pub(crate) total: u64,
    /// How long it has not moved.
    pub(crate) idle: std::time::Duration,
    /// The source that saw it.
    pub(crate) source: &'static str,
}

/// Emits a stalled download as one event.
pub(crate) fn stalled(s: &Stalled<'_>) {
    tracing::warn!(
        target: TARGET,
        event = "download_stalled",
        source = s.source,
        ingest = s.ingest,
        registry = s.registry,
        repository = s.repository,
        offset = s.offset,
        total = s.total,
        idle_seconds = s.idle.as_secs_f64(),
        "image download stalled"
    );
}
