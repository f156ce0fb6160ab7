//! End to end for the kernel tap (issue #23): real containerd, callers we did not write
//! (grpc-go as kubelet is built, grpcio) calling containerd's socket directly, no interposer
//! anywhere, and pullwatch started with `--cri-tap` after the callers' connections already made
//! calls (a late join, as a DaemonSet meets kubelet's days-old connection). Each pull is
//! recorded exactly once, as the interposer records it, and nothing is made up.

use crate::common::agent::{Agent, sum};
use crate::common::callers::{Call, Caller, Session, Timed};
use crate::common::image::TestImage;
use crate::common::sandbox::Sandbox;
use prost::Message;
use pullwatch::cri::{
    ImageSpec, ImageStatusRequest, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    VersionRequest,
};
use std::time::Duration;

const PULL: &str = "/runtime.v1.ImageService/PullImage";

fn pull(image: &str, pod: &str) -> Call<'static> {
    Call {
        method: PULL,
        request: PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            sandbox_config: Some(PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: pod.into(),
                    namespace: "shop".into(),
                    uid: format!("uid-{pod}"),
                    attempt: 0,
                }),
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        timeout: Some(Duration::from_secs(90)),
        ..Default::default()
    }
}

fn version() -> Call<'static> {
    Call {
        method: "/runtime.v1.RuntimeService/Version",
        request: VersionRequest::default().encode_to_vec(),
        ..Default::default()
    }
}

fn image_status(image: &str, verbose: bool) -> Call<'static> {
    Call {
        method: "/runtime.v1.ImageService/ImageStatus",
        request: ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose,
        }
        .encode_to_vec(),
        ..Default::default()
    }
}

/// The agent with only the tap and the containerd source.
fn tap_agent(sb: &Sandbox, extra: &[&str]) -> Agent {
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let mut args = vec![
        "--cri-tap",
        "--containerd-socket",
        &sock,
        "--log-level",
        "info",
    ];
    args.extend_from_slice(extra);
    Agent::start_passive(sb, &args)
}

/// The pull event lines, by pod name.
fn events_by_pod(agent: &Agent) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for e in agent.pull_events() {
        if e["event"] == "image_pull" {
            out.entry(e["pod"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(e);
        }
    }
    out
}

/// Asserts `e` is the tap's record of a call the caller timed as `t`.
fn assert_timed(e: &serde_json::Value, t: &Timed) {
    let recorded = e["duration_seconds"].as_f64().expect("a duration");
    let measured = t.elapsed.as_secs_f64();
    let slack = (measured * 0.05).max(0.05);
    assert!(
        (recorded - measured).abs() <= slack,
        "recorded {recorded:.4} s, the caller measured {measured:.4} s: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_join_records_each_later_pull_once_with_the_runtimes_words() {
    let sb = Sandbox::start().await;
    let reg = sb.registry.clone();
    let f = sb.fault.host();
    let mut images = Vec::new();
    for name in ["before", "after-go", "after-py"] {
        images.push(sb.push(
            &TestImage::build(name, 4096, "amd64"),
            &format!("team/{name}"),
            "1",
        ));
    }
    for caller in [Caller::GrpcGoBarePath, Caller::GrpcioDefault] {
        let tag = caller.name();
        // The rate-limited registry answers HEAD for images it has, then 429 on GET.
        sb.fault.add(
            &format!("team/app-{tag}"),
            "1",
            &TestImage::build(&format!("fault-{tag}"), 2048, "amd64"),
        );
        let mut s = Session::open(caller, &sb.containerd_sock);
        // Before pullwatch: a little of everything on this connection.
        assert_eq!(s.call(&version()).reply.code, 0);
        assert_eq!(s.call(&image_status(&images[0], false)).reply.code, 0);
        assert_eq!(
            s.call(&pull(&images[0], &format!("{tag}-before-ok")))
                .reply
                .code,
            0
        );
        let missing = format!("{reg}/team/missing-{tag}:1");
        assert_ne!(
            s.call(&pull(&missing, &format!("{tag}-before-fail")))
                .reply
                .code,
            0
        );
        let agent = tap_agent(&sb, &[]);
        // After: on the same connection.
        let ok_image = if caller == Caller::GrpcGoBarePath {
            &images[1]
        } else {
            &images[2]
        };
        let cases: Vec<(String, String, &str)> = vec![
            (ok_image.clone(), format!("{tag}-ok"), "success"),
            (
                format!("{reg}/team/nope-{tag}:1"),
                format!("{tag}-not-found"),
                "not_found",
            ),
            (
                format!("{f}/unauthorized/team/app-{tag}:1"),
                format!("{tag}-401"),
                "unauthorized",
            ),
            (
                format!("{f}/ratelimited/team/app-{tag}:1"),
                format!("{tag}-429"),
                "rate_limited",
            ),
            (
                "127.0.0.1:1/team/app:1".to_string(),
                format!("{tag}-refused"),
                "network",
            ),
        ];
        let mut timed = Vec::new();
        for (image, pod, _) in &cases {
            timed.push(s.call(&pull(image, pod)));
        }
        // The failure from before, again: its message may be an HPACK entry from before.
        let again = s.call(&pull(&missing, &format!("{tag}-again")));
        let m = agent.scrape_until("every pull after the join", |m| {
            sum(m, "pullwatch_image_pulls_total", &[]) >= cases.len() as f64 + 1.0
        });
        let by_pod = events_by_pod(&agent);
        eprintln!("{tag}: {by_pod:#?}");
        for ((_, pod, reason), t) in cases.iter().zip(&timed) {
            let lines = by_pod
                .get(pod)
                .unwrap_or_else(|| panic!("{pod} not recorded: {by_pod:#?}"));
            assert_eq!(lines.len(), 1, "{pod} recorded {} times", lines.len());
            let e = &lines[0];
            assert_eq!(e["source"], "cri_tap", "{e}");
            let got = if e["result"] == "success" {
                "success"
            } else {
                e["reason"].as_str().unwrap()
            };
            assert_eq!(got, *reason, "{pod}: {e}");
            assert_eq!(e["namespace"], "shop");
            assert_eq!(e["pod_uid"], format!("uid-{pod}"));
            assert_timed(e, t);
        }
        // The failure from before, repeated: its own cause, or honestly unknown, never another.
        let e = &by_pod[&format!("{tag}-again")];
        assert_eq!(e.len(), 1);
        let reason = e[0]["reason"].as_str().unwrap();
        match reason {
            "not_found" => {}
            "unknown" => assert_eq!(e[0]["cause_from"], "unreadable", "{}", e[0]),
            other => panic!("the repeat was recorded as {other}: {}", e[0]),
        }
        assert_timed(&e[0], &again);
        for before in ["before-ok", "before-fail"] {
            assert!(
                !by_pod.contains_key(&format!("{tag}-{before}")),
                "a call from before the join was recorded"
            );
        }
        assert_eq!(
            sum(&m, "pullwatch_image_pulls_total", &[]),
            cases.len() as f64 + 1.0,
            "{m}"
        );
        assert_eq!(
            sum(&m, "pullwatch_source_up", &[("source", "cri_tap")]),
            1.0
        );
        drop(agent);
    }
}
