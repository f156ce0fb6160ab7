//! The observer over recorded-style byte streams of whole calls: what it records for each way a
//! call can end, and that it gives up cleanly.

use super::*;
use crate::cri::{
    ImageSpec, PodSandboxConfig, PodSandboxMetadata, PullImageRequest, PullImageResponse,
};
use crate::grpc::frame::encode;
use crate::observe::budget::MemoryBudget;
use crate::observe::wire::tests::build::*;
use crate::observe::wire::{DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, SETTINGS};
use crate::telemetry::MetricsRegistry;
use prost::Message;

const PULL: &str = "/runtime.v1.ImageService/PullImage";

fn observer() -> (ConnectionObserver, MetricsRegistry) {
    let (recording, reg) = Recording::standalone();
    let o = ConnectionObserver::new(recording, MemoryBudget::unlimited().share());
    (o, reg)
}

/// The observer fed at the moment of the call, as a transport would.
trait Now {
    fn feed(&mut self, side: Side, bytes: &[u8]);
    fn end(&mut self, first: Side);
}

impl Now for ConnectionObserver {
    fn feed(&mut self, side: Side, bytes: &[u8]) {
        self.observe(side, bytes, std::time::Instant::now());
    }

    fn end(&mut self, first: Side) {
        self.closed(first, std::time::Instant::now());
    }
}

fn value(r: &MetricsRegistry, name: &str, labels: &[(&str, &str)]) -> u64 {
    r.value(name, labels) as u64
}

fn pull_request(image: &str) -> Vec<u8> {
    encode(
        &PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            sandbox_config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "web-1".into(),
                    namespace: "shop".into(),
                    uid: "u-1".into(),
                    attempt: 0,
                }),
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// A caller's PullImage on `stream` (after the opening when `open`).
fn pull_call(stream: u32, image: &str, open: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut s = if open { caller_open() } else { Vec::new() };
    s.extend(frame(HEADERS, END_HEADERS, stream, &request(PULL, extra)));
    let body = pull_request(image);
    let (a, b) = body.split_at(body.len() / 2);
    s.extend(frame(DATA, 0, stream, a));
    s.extend(frame(DATA, END_STREAM, stream, b));
    s
}

fn runtime_open() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[])
}

fn count(r: &MetricsRegistry, method: &str, code: &str) -> u64 {
    value(
        r,
        "pullwatch_cri_requests_total",
        &[("method", method), ("code", code)],
    )
}

fn pulls(r: &MetricsRegistry, registry: &str, result: &str) -> u64 {
    value(
        r,
        "pullwatch_image_pulls_total",
        &[("registry", registry), ("result", result)],
    )
}

#[test]
fn a_pull_is_recorded_with_its_pod_image_ref_and_trace() {
    let (mut o, r) = observer();
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    o.feed(
        Side::Caller,
        &pull_call(
            1,
            "reg.example:5000/team/app:1",
            true,
            &[("traceparent", trace)],
        ),
    );
    assert_eq!(
        value(
            &r,
            "pullwatch_image_pulls_in_flight",
            &[("registry", "reg.example:5000")]
        ),
        1
    );
    let mut s = runtime_open();
    s.extend(frame(HEADERS, END_HEADERS, 1, &response(&[])));
    let reply = encode(
        &PullImageResponse {
            image_ref: "sha256:abc".into(),
        }
        .encode_to_vec(),
    );
    s.extend(frame(DATA, 0, 1, &reply));
    s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &response(&[("grpc-status", "0")]),
    ));
    o.feed(Side::Runtime, &s);
    assert!(o.is_idle());
    assert_eq!(count(&r, PULL, "OK"), 1);
    assert_eq!(pulls(&r, "reg.example:5000", "success"), 1);
    assert_eq!(
        value(
            &r,
            "pullwatch_image_pulls_in_flight",
            &[("registry", "reg.example:5000")]
        ),
        0
    );
}

#[test]
fn failures_resets_cancels_and_unprocessed_streams() {
    let (mut o, r) = observer();
    let mut c = caller_open();
    for (stream, image) in [
        (1, "a.io/x:1"),
        (3, "b.io/x:1"),
        (5, "c.io/x:1"),
        (7, "d.io/x:1"),
    ] {
        c.extend(pull_call(stream, image, false, &[("grpc-timeout", "60S")]));
    }
    o.feed(Side::Caller, &c);
    let mut s = runtime_open();
    // 1: trailers-only NotFound; 3: reset by the runtime; 5: refused (never processed).
    s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &response(&[
            ("grpc-status", "5"),
            ("grpc-message", "a.io/x:1%3A not found"),
        ]),
    ));
    s.extend(frame(RST_STREAM, 0, 3, &2u32.to_be_bytes()));
    s.extend(frame(RST_STREAM, 0, 5, &7u32.to_be_bytes()));
    o.feed(Side::Runtime, &s);
    // 7: the caller cancels.
    o.feed(Side::Caller, &frame(RST_STREAM, 0, 7, &8u32.to_be_bytes()));
    assert!(o.is_idle());
    assert_eq!(count(&r, PULL, "NOT_FOUND"), 1);
    assert_eq!(count(&r, PULL, "INTERNAL"), 1);
    assert_eq!(count(&r, PULL, "CANCELLED"), 1);
    assert_eq!(count(&r, PULL, "UNAVAILABLE"), 0, "refused: not recorded");
    let failures = |reg: &str, reason: &str| {
        value(
            &r,
            "pullwatch_image_pull_failures_total",
            &[("registry", reg), ("reason", reason)],
        )
    };
    assert_eq!(failures("a.io", "not_found"), 1);
    assert_eq!(failures("d.io", "canceled"), 1);
    assert_eq!(pulls(&r, "c.io", "failure"), 0);
}

#[test]
fn goaway_drops_unprocessed_calls_and_a_dead_runtime_fails_the_rest() {
    let (mut o, r) = observer();
    let mut c = caller_open();
    c.extend(pull_call(1, "a.io/x:1", false, &[]));
    c.extend(pull_call(3, "b.io/x:1", false, &[]));
    o.feed(Side::Caller, &c);
    let mut g = 1u32.to_be_bytes().to_vec();
    g.extend_from_slice(&0u32.to_be_bytes());
    o.feed(
        Side::Runtime,
        &[runtime_open(), frame(GOAWAY, 0, 0, &g)].concat(),
    );
    assert!(!o.is_idle(), "stream 1 is still being processed");
    o.end(Side::Runtime);
    assert_eq!(
        pulls(&r, "b.io", "failure"),
        0,
        "stream 3 was never processed"
    );
    assert_eq!(
        value(
            &r,
            "pullwatch_image_pull_failures_total",
            &[("registry", "a.io"), ("reason", "runtime_unavailable")]
        ),
        1
    );
    assert_eq!(count(&r, PULL, "UNAVAILABLE"), 1);
}

#[test]
fn caller_going_away_is_a_cancel_and_a_passed_deadline_a_timeout() {
    let (mut o, r) = observer();
    let mut c = caller_open();
    c.extend(pull_call(1, "a.io/x:1", false, &[("grpc-timeout", "1n")]));
    c.extend(pull_call(3, "b.io/x:1", false, &[]));
    o.feed(Side::Caller, &c);
    o.end(Side::Caller);
    assert_eq!(count(&r, PULL, "DEADLINE_EXCEEDED"), 1);
    assert_eq!(count(&r, PULL, "CANCELLED"), 1);
}

#[test]
fn an_unobservable_connection_is_counted_once_and_never_idle() {
    let (mut o, r) = observer();
    o.feed(Side::Caller, &pull_call(1, "a.io/x:1", true, &[]));
    o.feed(
        Side::Runtime,
        &[
            runtime_open(),
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]),
        ]
        .concat(),
    );
    assert!(!o.is_observing() && !o.is_idle());
    o.feed(Side::Caller, b"anything at all");
    o.end(Side::Runtime);
    let unobserved = |cause: &str| {
        value(
            &r,
            "pullwatch_interposer_unobserved_connections_total",
            &[("cause", cause)],
        )
    };
    assert_eq!(unobserved("hpack"), 1);
    assert_eq!(unobserved("protocol"), 0);
    // The call it could no longer follow is neither a success nor a failure.
    assert_eq!(count(&r, PULL, "UNAVAILABLE") + count(&r, PULL, "OK"), 0);
    assert_eq!(
        value(
            &r,
            "pullwatch_image_pulls_in_flight",
            &[("registry", "a.io")]
        ),
        0
    );
}

#[test]
fn oversized_pull_requests_are_decode_errors_within_the_budget() {
    let (recording, reg) = Recording::standalone();
    // A floor of 1000 bytes and no pool: the capture does not fit.
    let share = MemoryBudget::new(2000, 1000, 1).share();
    let mut o = ConnectionObserver::new(recording, share.clone());
    let image = "a".repeat(2000);
    o.feed(Side::Caller, &pull_call(1, &image, true, &[]));
    assert_eq!(share.used(), 0, "the capture over budget was dropped");
    assert_eq!(
        value(
            &reg,
            "pullwatch_decode_errors_total",
            &[("message", "pull_image_request")]
        ),
        1
    );
    o.end(Side::Caller);
    assert_eq!(pulls(&reg, "unknown", "failure"), 1);
}

/// A connection recorded between grpcio (client) and a grpcio server (Huffman-coded headers,
/// dynamic-table references, a 3 KB header entry, a cancel), in the fuzz target's format: one
/// byte (bit 0: side, bits 1..: length - 1), then the bytes.
#[test]
fn a_recorded_grpcio_connection_is_followed_to_the_end() {
    let recorded = include_bytes!(
        "../../fuzz/corpus/interposer_observer/3d3ca97fef88df48b948e6f75b90bec8f84f4a49"
    );
    let (mut o, r) = observer();
    let mut rest = &recorded[..];
    while let Some((&op, tail)) = rest.split_first() {
        let side = if op & 1 == 0 {
            Side::Caller
        } else {
            Side::Runtime
        };
        let (chunk, tail) = tail.split_at(usize::from(op >> 1) + 1);
        o.feed(side, chunk);
        rest = tail;
    }
    assert!(o.is_observing() && o.is_idle());
    o.end(Side::Caller);
    assert_eq!(count(&r, "/runtime.v1.RuntimeService/Version", "OK"), 1);
    assert_eq!(count(&r, PULL, "OK"), 4);
    assert_eq!(count(&r, PULL, "NOT_FOUND"), 1);
    assert_eq!(count(&r, "other", "CANCELLED"), 1);
    assert_eq!(pulls(&r, "reg.example", "success"), 4);
    assert_eq!(
        value(
            &r,
            "pullwatch_image_pull_failures_total",
            &[("registry", "reg.example"), ("reason", "not_found")]
        ),
        1
    );
}
