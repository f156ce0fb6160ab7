//! Fuzz target bodies: every parser that reads bytes from the wire, a runtime, kubelet or a
//! registry, with the invariants each must keep. `fuzz/` (cargo-fuzz, libFuzzer) calls them with
//! generated inputs; `tests/fuzz_corpus.rs` replays the saved corpus on stable Rust in CI. A panic
//! is a bug: pullwatch must survive any input (and the interposer forwards undecodable calls
//! unchanged).
//!
//! Compiled only for tests and with the `fuzzing` feature (which `fuzz/Cargo.toml` turns on), so
//! the parsers it reaches stay crate-private.

use crate::core::attempt::MAX_IMAGE_LEN;
use crate::core::classifier;
use crate::core::reason::Reason;
use crate::core::reference::{ImageRef, ReferenceError};
use crate::grpc::{frame, status};
use crate::observe::decode;
use crate::sources::kube::messages;
use crate::sources::ratelimit::{credentials::CredentialStore, header, parse_challenge};
use tonic::Code;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("pull_request", pull_request),
    ("pull_response", pull_response),
    ("grpc_message", grpc_message),
    ("reference", reference),
    ("classifier", classifier),
    ("kubelet_message", kubelet_message),
    ("registry_headers", registry_headers),
    ("interposer_observer", interposer_observer),
    ("hpack_cost", hpack_cost),
    ("late_join", late_join),
];

/// A framed PullImage request: decodes or is refused, never panics; what it decodes is
/// consistent (the reference is the image's).
pub fn pull_request(data: &[u8]) {
    if let Some(o) = decode::pull_request(data) {
        // The reference is the whole image's; the image kept is cut to its bound.
        assert!(o.image.len() <= MAX_IMAGE_LEN);
        if o.image.len() < MAX_IMAGE_LEN {
            assert_eq!(o.reference, ImageRef::parse(&o.image).ok());
        }
    }
    // Whatever a frame declares, reading it stays within the bytes given.
    if let Ok(m) = frame::first_message(data) {
        assert!(m.len() + frame::HEADER_LEN <= data.len());
    }
}

/// A framed PullImage response.
pub fn pull_response(data: &[u8]) {
    let _ = decode::pull_response(data);
}

/// A `grpc-message` value: decodes to some text; text survives encode → decode unchanged.
pub fn grpc_message(data: &[u8]) {
    let decoded = status::decode_message(data);
    let reencoded = status::encode_message(&decoded);
    assert_eq!(status::decode_message(reencoded.as_bytes()), decoded);
}

/// An image reference: parsing never panics, and normalization is stable (the normalized form
/// parses to itself).
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = ImageRef::parse(s) {
        let normal = r.to_string();
        let again = match ImageRef::parse(&normal) {
            Ok(again) => again,
            // Normalizing adds `docker.io/library/` and `:latest`: a reference near the length
            // limit may outgrow it (found by the fuzzer); anything else is a bug.
            Err(ReferenceError::TooLong(_)) => return,
            Err(e) => panic!("{normal:?}: {e}"),
        };
        assert_eq!(again.to_string(), normal);
        assert_eq!(
            (again.registry, again.repository),
            (r.registry, r.repository)
        );
    }
}

/// An error message with a gRPC code (first byte): always one of the known reasons, the same
/// every time.
pub fn classifier(data: &[u8]) {
    let (code, msg) = match data.split_first() {
        Some((c, rest)) => (Code::from_i32(i32::from(*c % 17)), rest),
        None => (Code::Unknown, data),
    };
    let msg = String::from_utf8_lossy(msg);
    let r = classifier::classify(code, &msg);
    assert!(Reason::ALL.contains(&r));
    assert_eq!(r, classifier::classify(code, &msg));
}

/// A kubelet event or status message.
pub fn kubelet_message(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Some(messages::PullMessage::Pulled {
        duration: Some(d), ..
    }) = messages::parse(&s)
    {
        assert!(d.as_secs_f64().is_finite());
    }
    let _ = messages::split_rpc_error(&s);
    let _ = messages::parse_go_duration(&s);
}

/// What a registry sends the rate-limit probe: quota headers, auth challenges, and a pull
/// secret file's JSON.
pub fn registry_headers(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    if let Ok(q) = header::parse(&s) {
        // The number parsed is the one at the front of the first policy.
        assert!(
            s.trim_start().starts_with(|c: char| c.is_ascii_digit()),
            "{q:?}"
        );
    }
    let _ = parse_challenge(&s);
    let _ = CredentialStore::parse(&s);
}

/// The interposer's observer over an arbitrary interleaving of both directions of a connection.
/// The input is a sequence of operations: one byte `b` (bit 0: the side that sends, caller or
/// runtime; bits 1..: the chunk length minus one), then that many bytes. Invariants: no panic;
/// each direction's reader yields the same events and verdict whatever the chunking (compared
/// with the whole direction fed at once); once the connection closes, no pull is left in flight;
/// the observer never panics (a panic it contains is counted as cause `internal`).
pub fn interposer_observer(data: &[u8]) {
    use crate::observe::Recording;
    use crate::observe::budget::MemoryBudget;
    use crate::observe::connection::ConnectionObserver;
    use crate::observe::wire::{Event, Reader, Side};
    use crate::telemetry::MetricsRegistry;
    use std::sync::{Arc, OnceLock};
    use std::time::Instant;

    static RECORDING: OnceLock<(Arc<Recording>, MetricsRegistry)> = OnceLock::new();
    let (recording, registry) = RECORDING.get_or_init(Recording::standalone);
    let share = MemoryBudget::unlimited().share();
    let mut observer = ConnectionObserver::new(recording.clone(), share.clone());
    let mut chunks: Vec<(Side, &[u8])> = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let side = if op & 1 == 0 {
            Side::Caller
        } else {
            Side::Runtime
        };
        let n = usize::from(op >> 1).saturating_add(1).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        chunks.push((side, chunk));
        observer.observe(side, chunk, Instant::now());
        rest = tail;
    }
    observer.closed(
        if data.len().is_multiple_of(2) {
            Side::Caller
        } else {
            Side::Runtime
        },
        Instant::now(),
    );
    drop(observer);
    let in_flight = registry.value("pullwatch_image_pulls_in_flight", &[]);
    assert_eq!(in_flight, 0.0, "a pull left in flight");
    // The observer contains its own panics (cause `internal`) so kubelet's relay survives them;
    // here, where that containment would hide them, any is a failure.
    assert_eq!(
        registry.value(
            "pullwatch_interposer_unobserved_connections_total",
            &[("cause", "internal")]
        ),
        0.0,
        "the observer panicked (contained in production)"
    );
    for side in [Side::Caller, Side::Runtime] {
        let whole: Vec<u8> = chunks
            .iter()
            .filter(|(s, _)| *s == side)
            .flat_map(|(_, c)| c.iter().copied())
            .collect();
        let events = |pieces: &mut dyn Iterator<Item = &[u8]>| {
            let mut reader = Reader::new(side, &share);
            // DATA pieces depend on the chunking; their bytes, stream and order do not.
            let mut seen: Vec<(Option<u32>, Vec<u8>)> = Vec::new();
            let mut result = Ok(());
            for p in pieces {
                let r = reader.feed(p, &mut |e| match e {
                    Event::Data {
                        stream,
                        data,
                        end_stream: false,
                    } => match seen.last_mut() {
                        Some((Some(s), bytes)) if *s == stream => bytes.extend_from_slice(data),
                        _ => seen.push((Some(stream), data.to_vec())),
                    },
                    other => seen.push((None, format!("{other:?}").into_bytes())),
                });
                if r.is_err() {
                    result = r;
                }
            }
            seen.retain(|(s, b)| s.is_none() || !b.is_empty());
            (seen, result.map_err(|e| e.cause().as_str()))
        };
        let chunked = events(&mut chunks.iter().filter(|(s, _)| *s == side).map(|(_, c)| *c));
        assert_eq!(chunked, events(&mut std::iter::once(whole.as_slice())));
    }
}

/// The HPACK decoder's work is bounded by its input: arbitrary blocks (the input split at each
/// 0x00 0x00 pair, so a corpus can hold blocks that fill the table and blocks that refer to
/// it), decoded as the observer decodes them, with its limit on the decoded size. Invariants:
/// no panic; at most one field per input byte; the decoded size of a block that decodes never
/// exceeds the observer's limit for its length (one-byte references to a long entry, HPACK
/// amplification, stop at the limit: `cost`).
pub fn hpack_cost(data: &[u8]) {
    use crate::observe::hpack::Decoder;
    use crate::observe::wire::{MAX_HPACK_TABLE, list_limit};
    let mut decoder = Decoder::new(MAX_HPACK_TABLE);
    let mut late = Decoder::joining(MAX_HPACK_TABLE);
    let mut rest = data;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == [0, 0])
            .unwrap_or(rest.len());
        let block = &rest[..end];
        rest = rest.get(end + 2..).unwrap_or_default();
        let limit = list_limit(block.len());
        for d in [&mut decoder, &mut late] {
            let (mut fields, mut size) = (0usize, 0usize);
            let r = d.decode(block, limit, |n, v| {
                fields += 1;
                size += n.map_or(0, <[u8]>::len) + v.map_or(0, <[u8]>::len) + 32;
            });
            assert!(
                fields <= block.len(),
                "{fields} fields from {} bytes",
                block.len()
            );
            assert!(size <= limit, "decoded {size} bytes past the limit {limit}");
            if r.is_err() {
                // A decoder that failed is out of step: observation would end here.
                *d = Decoder::new(MAX_HPACK_TABLE);
            }
        }
    }
}

/// One connection as kubelet and containerd would write it (Go's HPACK encoder, one piece per
/// write): calls of several methods, pulls that succeed and that fail with several causes, some
/// concurrent. Each piece is (caller side?, bytes); each pull's truth is (pod, image, reason or
/// `success`).
#[allow(clippy::type_complexity)]
fn recorded_connection() -> &'static (Vec<(bool, Vec<u8>)>, Vec<(String, String, &'static str)>) {
    use crate::cri::{
        ImageSpec, ImageStatusRequest, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
        PullImageResponse,
    };
    use crate::observe::hpack::go_encoder::Encoder;
    use prost::Message;
    use std::sync::OnceLock;
    static CONNECTION: OnceLock<(Vec<(bool, Vec<u8>)>, Vec<(String, String, &'static str)>)> =
        OnceLock::new();
    CONNECTION.get_or_init(|| {
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = payload.len();
            let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        let (mut caller, mut runtime) = (Encoder::default(), Encoder::default());
        let mut pieces = vec![
            (true, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".iter().copied().chain(frame(4, 0, 0, &[])).collect()),
            (false, frame(4, 0, 0, &[])),
        ];
        let mut truth = Vec::new();
        let causes: [(&str, &str, Option<&str>); 5] = [
            ("ok", "0", None),
            ("nf", "5", Some("failed to pull and unpack image: reg.example/app: not found")),
            ("auth", "2", Some("failed to resolve reference: pulling from host reg.example failed with status code [manifests 1]: 401 Unauthorized")),
            ("rl", "2", Some("unexpected status from GET request to https://reg.example/v2/app/manifests/1: 429 Too Many Requests")),
            ("net", "2", Some("failed to do request: dial tcp 10.0.0.1:443: connect: connection refused")),
        ];
        let reasons = ["success", "not_found", "unauthorized", "rate_limited", "network"];
        for i in 0..40u32 {
            let stream = 1 + 2 * i;
            let timeout = format!("{}m", 119_000 + i * 7);
            let kind = i % 7;
            let (path, body, pull) = match kind {
                0 => ("/runtime.v1.RuntimeService/Version", Vec::new(), None),
                1 => (
                    "/runtime.v1.ImageService/ImageStatus",
                    ImageStatusRequest {
                        image: Some(ImageSpec { image: format!("reg.example/app:{i}"), ..Default::default() }),
                        verbose: false,
                    }
                    .encode_to_vec(),
                    None,
                ),
                _ => {
                    let c = (i as usize) % causes.len();
                    let pod = format!("pod-{i}");
                    let image = format!("reg.example/app-{}:{i}", causes[c].0);
                    let req = PullImageRequest {
                        image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
                        sandbox_config: Some(PodSandboxConfig {
                            metadata: Some(PodSandboxMetadata {
                                name: pod.clone(),
                                namespace: "ns".into(),
                                uid: format!("uid-{i}"),
                                attempt: 0,
                            }),
                        }),
                        ..Default::default()
                    };
                    truth.push((pod, image, reasons[c]));
                    ("/runtime.v1.ImageService/PullImage", req.encode_to_vec(), Some(c))
                }
            };
            let head = caller.encode(&[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", b"/run/containerd/containerd.sock"),
                (b"content-type", b"application/grpc"),
                (b"user-agent", b"grpc-go/1.58.3"),
                (b"te", b"trailers"),
                (b"grpc-timeout", timeout.as_bytes()),
            ]);
            let mut req = frame(1, 4, stream, &head);
            req.extend(frame(0, 1, stream, &crate::grpc::frame::encode(&body)));
            pieces.push((true, req));
            let answer = match pull.map(|c| causes[c]) {
                Some((_, code, Some(message))) => {
                    let block = runtime.encode(&[
                        (b":status", b"200"),
                        (b"content-type", b"application/grpc"),
                        (b"grpc-status", code.as_bytes()),
                        (b"grpc-message", message.as_bytes()),
                    ]);
                    frame(1, 5, stream, &block)
                }
                other => {
                    let head = runtime.encode(&[(b":status", b"200"), (b"content-type", b"application/grpc")]);
                    let reply = match other {
                        Some(_) => PullImageResponse { image_ref: format!("sha256:{i:064}") }.encode_to_vec(),
                        None => Vec::new(),
                    };
                    let mut a = frame(1, 4, stream, &head);
                    a.extend(frame(0, 0, stream, &crate::grpc::frame::encode(&reply)));
                    let trailers = runtime.encode(&[(b"grpc-status", b"0"), (b"grpc-message", b"")]);
                    a.extend(frame(1, 5, stream, &trailers));
                    a
                }
            };
            pieces.push((false, answer));
        }
        (pieces, truth)
    })
}

/// The tap joining a recorded connection at an arbitrary place, and losing arbitrary pieces
/// (the first byte picks the join, each further byte's bits drop a piece, as a full ring does,
/// or split it in two syscalls; the second byte is kept for the corpus's sake). Invariants: no
/// panic; every attempt recorded is a pull of the connection, with its own pod, image and
/// result; a cause read from the runtime (not `unknown`) is the pull's own; nothing is left in
/// flight.
pub fn late_join(data: &[u8]) {
    use crate::observe::Recording;
    use crate::observe::budget::MemoryBudget;
    use crate::observe::connection::ConnectionObserver;
    use crate::observe::wire::Side;
    use std::time::Instant;
    let (pieces, truth) = recorded_connection();
    let (recording, registry) = Recording::standalone();
    let mut observer =
        ConnectionObserver::joining(recording.clone(), MemoryBudget::unlimited().share());
    let join = usize::from(data.first().copied().unwrap_or(0)) % pieces.len();
    let bits = |i: usize, bit: u8| data.get(2 + i).is_some_and(|b| b & bit != 0);
    for (i, (caller, bytes)) in pieces.iter().enumerate().skip(join) {
        let side = if *caller { Side::Caller } else { Side::Runtime };
        let at = Instant::now();
        if bits(i, 1) {
            observer.lost(side, at);
            continue;
        }
        if bits(i, 2) && bytes.len() > 1 {
            // Two syscalls for one write: only the first starts at a frame.
            let (a, b) = bytes.split_at(bytes.len() / 2);
            observer.observe_piece(side, a, at);
            observer.observe_piece(side, b, at);
        } else {
            observer.observe_piece(side, bytes, at);
        }
    }
    observer.closed(Side::Caller, Instant::now());
    drop(observer);
    assert_eq!(
        registry.value("pullwatch_image_pulls_in_flight", &[]),
        0.0,
        "a pull left in flight"
    );
    for f in recording.recorder.pulls().snapshot().finished {
        let pod = f.pod.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        let Some((_, image, reason)) = truth.iter().find(|(p, _, _)| *p == pod) else {
            panic!("an attempt for a pod the connection never named: {f:?}");
        };
        assert_eq!(&f.image, image, "{f:?}");
        let failed = f.result == crate::core::attempt::AttemptResult::Failure;
        let got = if failed {
            f.reason.map_or("", |r| r.as_str())
        } else {
            "success"
        };
        assert!(
            got == *reason || (failed && got == "unknown" && *reason != "success"),
            "pod {pod}: recorded {got}, was {reason}: {f:?}"
        );
    }
}

#[cfg(test)]
mod late_join_tests {
    use super::*;

    /// What [`late_join`] records for `data`: (recorded, of them `unknown`).
    fn recorded(data: &[u8]) -> (usize, usize) {
        use crate::observe::Recording;
        use crate::observe::budget::MemoryBudget;
        use crate::observe::connection::ConnectionObserver;
        use crate::observe::wire::Side;
        let (pieces, _) = recorded_connection();
        let (recording, _reg) = Recording::standalone();
        let mut o =
            ConnectionObserver::joining(recording.clone(), MemoryBudget::unlimited().share());
        let join = usize::from(data[0]);
        for (caller, bytes) in pieces.iter().skip(join) {
            let side = if *caller { Side::Caller } else { Side::Runtime };
            o.observe_piece(side, bytes, std::time::Instant::now());
        }
        let finished = recording.recorder.pulls().snapshot().finished;
        let unknown = finished
            .iter()
            .filter(|f| f.reason == Some(crate::core::reason::Reason::Unknown))
            .count();
        (finished.len(), unknown)
    }

    #[test]
    fn a_join_at_the_start_reads_every_pull_and_a_late_one_the_later_pulls() {
        let (_, truth) = recorded_connection();
        late_join(&[0, 0]);
        // From the start, every pull but the first (the first write's frame proves the boundary).
        let (all, unknown) = recorded(&[0]);
        assert!(all >= truth.len() - 1, "{all} of {}", truth.len());
        assert_eq!(unknown, 0);
        // Joined after 20 calls: the later pulls, their causes read by place or unknown.
        let (late, _) = recorded(&[41]);
        assert!(late > 0 && late < all, "{late}");
    }
}

/// Replays the saved corpus (`fuzz/corpus/<target>/`, seeds plus whatever `scripts/fuzz.sh`
/// found worth keeping) through the same target functions on stable Rust, so every past input
/// keeps passing. A panic here is a regression.
#[cfg(test)]
mod corpus {
    use super::TARGETS;
    use std::path::Path;

    #[test]
    fn every_saved_input_passes_its_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", path.display());
                n += 1;
            }
            assert!(
                n >= 3,
                "{name}: only {n} corpus inputs in {}",
                dir.display()
            );
        }
        // Every target directory is a known target (a renamed target must take its corpus along).
        for entry in std::fs::read_dir(&root).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "corpus for unknown target {name}"
            );
        }
    }

    #[test]
    fn every_target_has_a_fuzz_binary() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
                .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
            assert!(
                src.contains(&format!("pullwatch::fuzzing::{name}(data)")),
                "{name}"
            );
        }
    }
}
