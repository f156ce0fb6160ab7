//! The event log: one structured `tracing` event per pull attempt (target `pullwatch::pull`),
//! which the JSON log format renders as one line. Carries pod, image, duration and cause, and
//! whether credentials were sent (`credentials`, presence only: the interposer never decodes
//! them); an `unauthorized` failure says which case it is (`hint`). A success joined to its
//! content record carries its anatomy: `<phase>_seconds` for each measured phase, bytes
//! downloaded and reused, layers downloaded and reused. An attempt the kernel tap could read only
//! in part says so: `method_from` (`request_message`: recognized as PullImage by its request)
//! and `cause_from` (`trailers`, `trailer_order`, or `unreadable` with reason `unknown`).

use crate::core::anatomy::{Anatomy, Phase};
use crate::core::attempt::{Outcome, PullAttempt};
use crate::grpc::status::code_name;
use std::time::UNIX_EPOCH;

/// Target of pull events, for filtering (`RUST_LOG=pullwatch::pull=info`).
pub const TARGET: &str = "pullwatch::pull";

/// Emits `attempt` (with its anatomy, when known) as one event.
pub fn emit(attempt: &PullAttempt, anatomy: Option<&Anatomy>) {
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
    match &attempt.outcome {
        Outcome::Success { image_ref } => tracing::info!(
            target: TARGET,
            event = "image_pull",
            result = "success",
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
            queue_seconds,
            resolve_seconds,
            download_seconds,
            unpack_seconds,
            downloaded_bytes,
            cached_bytes,
            layers_downloaded,
            layers_cached,
            image_ref = %image_ref,
            "image pull succeeded"
        ),
        Outcome::Failure {
            code,
            message,
            reason,
        } => tracing::warn!(
            target: TARGET,
            event = "image_pull",
            result = "failure",
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
            hint = reason.case_hint(credentials),
            reason = reason.as_str(),
            grpc_code = code_name(*code),
            error = %message,
            "image pull failed"
        ),
    }
}
