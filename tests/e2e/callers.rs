//! End to end: tonic (ours) and CRI callers we did not write — grpcio with its default `unix:` authority (the
//! percent-encoded socket path) and with `localhost`, grpc-go dialing a bare socket path (how
//! kubelet dialed before kubernetes#123463) and with `WithAuthority("localhost")` (today's
//! kubelet) — each making the same calls against real containerd directly and through
//! pullwatch: Version, ImageStatus, PullImage success and failure, cancel, deadline, and the
//! runtime down. Every reply must be the same both ways, and pullwatch must have observed
//! every call.

use crate::common::agent::{Agent, sum};
use crate::common::callers::{Call, Caller, Reply, call};
use crate::common::image::TestImage;
use crate::common::sandbox::Sandbox;
use prost::Message;
use pullwatch::cri::{
    ImageSpec, ImageStatusRequest, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    VersionRequest,
};
use std::path::Path;
use std::time::Duration;

const PULL: &str = "/runtime.v1.ImageService/PullImage";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn pull_request(image: &str, pod: &str) -> Vec<u8> {
    PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        sandbox_config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.into(),
                namespace: "callers".into(),
                uid: format!("uid-{pod}"),
                attempt: 0,
            }),
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Makes `c` with `caller` directly and through pullwatch; both replies.
async fn both(caller: Caller, direct: &Path, proxied: &Path, c: &Call<'_>) -> (Reply, Reply) {
    (
        call(caller, direct, c).await,
        call(caller, proxied, c).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gets_through_pullwatch_what_it_gets_directly() {
    let sb = Sandbox::start().await;
    let good = sb.push(&TestImage::build("callers", 4096, "amd64"), "team/app", "1");
    let missing = format!("{}/team/app:missing", sb.registry);
    sb.fault.add(
        "team/hang",
        "1",
        &TestImage::build("callers-hang", 2048, "amd64"),
    );
    let hang = format!("{}/hang/team/hang:1", sb.fault.host());
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let (d, p) = (sb.containerd_sock.as_path(), agent.proxy_sock.as_path());
    let mut problems = Vec::new();
    let mut check = |what: String, ok: bool, detail: String| {
        if !ok {
            problems.push(format!("{what}: {detail}"));
        }
    };
    for caller in Caller::ALL {
        let name = caller.name();
        let version = Call {
            method: "/runtime.v1.RuntimeService/Version",
            request: VersionRequest {
                version: "v1".into(),
            }
            .encode_to_vec(),
            ..Default::default()
        };
        let status = Call {
            method: "/runtime.v1.ImageService/ImageStatus",
            request: ImageStatusRequest {
                image: Some(ImageSpec {
                    image: good.clone(),
                    ..Default::default()
                }),
                verbose: true,
            }
            .encode_to_vec(),
            ..Default::default()
        };
        let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
        let pull_ok = Call {
            method: PULL,
            request: pull_request(&good, name),
            traceparent: Some(&traceparent),
            ..Default::default()
        };
        let pull_missing = Call {
            method: PULL,
            request: pull_request(&missing, name),
            ..Default::default()
        };
        // Exact replies: codes, messages and response bytes.
        for (what, c) in [
            ("Version", &version),
            ("ImageStatus", &status),
            ("PullImage", &pull_ok),
            ("PullImage not found", &pull_missing),
        ] {
            let (rd, rp) = both(caller, d, p, c).await;
            check(
                format!("{name} {what}"),
                rd == rp,
                format!("direct {rd:?}\nproxied {rp:?}"),
            );
            check(
                format!("{name} {what} answered"),
                (what == "PullImage not found") == (rd.code == 5 || rd.code == 2),
                format!("{rd:?}"),
            );
        }
        // Cancel and deadline: the caller's own codes, both ways.
        let cancel = Call {
            method: PULL,
            request: pull_request(&hang, name),
            cancel_after: Some(Duration::from_millis(500)),
            ..Default::default()
        };
        let deadline = Call {
            method: PULL,
            request: pull_request(&hang, name),
            timeout: Some(Duration::from_millis(1000)),
            ..Default::default()
        };
        // tonic reports its own deadline as CANCELLED ("Timeout expired"); the others say
        // DEADLINE_EXCEEDED. Either way the same through pullwatch as directly.
        let deadline_code = if caller == Caller::Tonic { 1 } else { 4 };
        for (what, c, code) in [
            ("cancel", &cancel, 1),
            ("deadline", &deadline, deadline_code),
        ] {
            let (rd, rp) = both(caller, d, p, c).await;
            check(
                format!("{name} {what}"),
                rd.code == code && rp.code == code,
                format!("direct {rd:?}\nproxied {rp:?}"),
            );
        }
    }

    // pullwatch followed every connection of every caller and recorded every pull.
    let per_caller = 4.0; // success, not found, cancel, deadline
    let callers = Caller::ALL.len() as f64;
    let m = agent.scrape_until("every caller's pulls", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= per_caller * callers
    });
    assert_eq!(
        sum(&m, "pullwatch_interposer_unobserved_connections_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_cri_requests_total",
            &[
                ("method", "/runtime.v1.RuntimeService/Version"),
                ("code", "OK")
            ]
        ),
        callers
    );
    let events = agent.pull_events();
    for caller in Caller::ALL {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e["pod"] == caller.name() && e["namespace"] == "callers")
            .collect();
        let mut results: Vec<String> = mine
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or("success").to_string())
            .collect();
        results.sort();
        check(
            format!("{} recorded", caller.name()),
            results == ["canceled", "not_found", "success", "timeout"],
            format!("{results:?}"),
        );
        let traced = mine
            .iter()
            .any(|e| e["trace_id"] == TRACE_ID && e["span_id"] == "00f067aa0ba902b7");
        check(
            format!("{} trace", caller.name()),
            traced,
            format!("{mine:#?}"),
        );
    }

    // The runtime down: directly, nobody listens; through pullwatch, the caller's connection
    // closes at once. Every caller reports UNAVAILABLE both ways.
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent-runtime.sock");
    let down = Agent::start_proxy_to(dir.path(), &absent, &["--log-level", "info"]);
    for caller in Caller::ALL {
        let c = Call {
            method: "/runtime.v1.RuntimeService/Version",
            timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let (rd, rp) = both(caller, &absent, &down.proxy_sock, &c).await;
        // tonic alone reports a connection closed under its request as UNKNOWN ("transport
        // error") or CANCELLED ("operation was canceled"), by timing, where a refused connect is
        // UNAVAILABLE; gRPC's C core and grpc-go (kubelet) say UNAVAILABLE for both.
        let proxied_ok = rp.code == 14 || (caller == Caller::Tonic && [1, 2].contains(&rp.code));
        check(
            format!("{} runtime down", caller.name()),
            rd.code == 14 && proxied_ok,
            format!("direct {rd:?}\nproxied {rp:?}"),
        );
    }
    let m = down.scrape();
    assert_eq!(
        sum(&m, "pullwatch_runtime_up", &[("source", "cri_proxy")]),
        0.0,
        "{m}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
