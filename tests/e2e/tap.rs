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

/// The tap's partial-call count, all parts.
fn partial(m: &str) -> f64 {
    sum(m, "pullwatch_cri_tap_partial_calls_total", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_after_start_is_read_whole_and_concurrent_pulls_stay_apart() {
    let sb = Sandbox::start().await;
    let reg = sb.registry.clone();
    let images: Vec<String> = (0..3)
        .map(|i| {
            let name = format!("conc-{i}");
            sb.push(
                &TestImage::build(&name, 4096 + i * 100, "amd64"),
                &format!("team/{name}"),
                "1",
            )
        })
        .collect();
    let agent = tap_agent(&sb, &[]);
    let mut s = Session::open(Caller::GrpcGoLocalhost, &sb.containerd_sock);
    // Six pulls at once on one connection: three that succeed, three that fail.
    let mut ids = Vec::new();
    for (i, image) in images.iter().enumerate() {
        ids.push((
            s.start(&pull(image, &format!("ok-{i}"))),
            format!("ok-{i}"),
            "success",
        ));
        let missing = format!("{reg}/team/absent-{i}:1");
        ids.push((
            s.start(&pull(&missing, &format!("nf-{i}"))),
            format!("nf-{i}"),
            "not_found",
        ));
    }
    let timed: Vec<(Timed, String, &str)> = ids
        .into_iter()
        .map(|(id, pod, r)| (s.wait(id), pod, r))
        .collect();
    let m = agent.scrape_until("six pulls", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 6.0
    });
    let by_pod = events_by_pod(&agent);
    for (t, pod, reason) in &timed {
        let lines = &by_pod[pod];
        assert_eq!(lines.len(), 1, "{pod}: {lines:?}");
        let e = &lines[0];
        let got = if e["result"] == "success" {
            "success"
        } else {
            e["reason"].as_str().unwrap()
        };
        assert_eq!(got, *reason, "{e}");
        assert!(
            e.get("cause_from").is_none() && e.get("method_from").is_none(),
            "read whole: {e}"
        );
        assert_timed(e, t);
    }
    assert_eq!(sum(&m, "pullwatch_image_pulls_total", &[]), 6.0);
    assert_eq!(
        partial(&m),
        0.0,
        "a connection seen from its first byte is read whole:\n{m}"
    );
    assert_eq!(
        sum(&m, "pullwatch_cri_requests_total", &[("method", PULL)]),
        6.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_answers_do_not_desynchronize_a_joined_connection() {
    let sb = Sandbox::start().await;
    // 3 MB of config: each verbose ImageStatus answer is over 3 MB.
    let big = sb.push(
        &TestImage::build_with_label("big-status", 2048, "amd64", 3 << 20),
        "team/big",
        "1",
    );
    let small = sb.push(
        &TestImage::build("after-big", 2048, "amd64"),
        "team/after-big",
        "1",
    );
    let mut s = Session::open(Caller::GrpcGoBarePath, &sb.containerd_sock);
    assert_eq!(s.call(&pull(&big, "before")).reply.code, 0);
    let agent = tap_agent(&sb, &[]);
    for _ in 0..3 {
        let r = s.call(&image_status(&big, true));
        assert_eq!(r.reply.code, 0);
        assert!(
            r.reply.response.len() > 6 << 20,
            "{} hex chars",
            r.reply.response.len()
        );
    }
    let t = s.call(&pull(&small, "after-big"));
    assert_eq!(t.reply.code, 0, "{}", t.reply.message);
    let m = agent.scrape_until("the pull after the big answers", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == 1.0
    });
    let e = &events_by_pod(&agent)["after-big"][0];
    assert_eq!(e["result"], "success");
    assert_timed(e, &t);
    assert_eq!(
        sum(&m, "pullwatch_cri_tap_lost_bytes_total", &[]),
        0.0,
        "{m}"
    );
    // Three big answers and a pull, each counted once (a status from before the join reads
    // as `unread`, never as a gRPC code).
    assert_eq!(
        sum(&m, "pullwatch_cri_requests_total", &[]),
        4.0,
        "{m}\n{}",
        agent.logs()
    );
    assert_eq!(
        sum(&m, "pullwatch_cri_requests_total", &[("code", "UNKNOWN")]),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_call_in_flight_records_nothing_wrong_and_the_next_agent_goes_on() {
    let sb = Sandbox::start().await;
    // 400 KiB at 48 KiB/s: about 8 s in flight.
    sb.fault.add(
        "team/slow",
        "1",
        &TestImage::build("slow-restart", 400 << 10, "amd64"),
    );
    let slow = format!("{}/slow/team/slow:1", sb.fault.host());
    let after = sb.push(
        &TestImage::build("after-restart", 2048, "amd64"),
        "team/after",
        "1",
    );
    let mut s = Session::open(Caller::GrpcGoBarePath, &sb.containerd_sock);
    assert_eq!(s.call(&version()).reply.code, 0);
    let mut first = tap_agent(&sb, &[]);
    let in_flight = s.start(&pull(&slow, "slow"));
    sb.fault
        .wait_for_hit("/slow/team/slow/blobs", "the slow download")
        .await;
    assert!(first.terminate().success());
    let m1 = first.scrape_if_running();
    let second = tap_agent(&sb, &[]);
    let t = s.wait(in_flight);
    assert_eq!(t.reply.code, 0, "{}", t.reply.message);
    let next = s.call(&pull(&after, "after"));
    assert_eq!(next.reply.code, 0);
    let m = second.scrape_until("the pull after the restart", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 1.0
    });
    let by_pod = events_by_pod(&second);
    assert!(
        !by_pod.contains_key("slow"),
        "a call begun before this agent was recorded"
    );
    assert_eq!(by_pod["after"].len(), 1);
    assert_timed(&by_pod["after"][0], &next);
    assert_eq!(sum(&m, "pullwatch_image_pulls_total", &[]), 1.0, "{m}");
    let first_events = events_by_pod(&first);
    assert!(
        !first_events.contains_key("slow"),
        "the stopped agent recorded a call it never saw end: {first_events:?} {m1:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interposer_and_the_tap_on_one_node_count_each_pull_once() {
    let sb = Sandbox::start().await;
    let a = sb.push(
        &TestImage::build("both-a", 2048, "amd64"),
        "team/both-a",
        "1",
    );
    let b = sb.push(
        &TestImage::build("both-b", 2048, "amd64"),
        "team/both-b",
        "1",
    );
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start(
        &sb,
        &[
            "--cri-tap",
            "--containerd-socket",
            &sock,
            "--log-level",
            "info",
        ],
    );
    // One pull through the interposer (its own connection to containerd: never followed by
    // the tap), one straight on containerd's socket (the tap's).
    let through = crate::common::pull_as(
        &agent.proxy_sock,
        &a,
        Some(("shop", "through")),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(crate::common::reason_of(&through), "success");
    let mut s = Session::open(Caller::GrpcGoBarePath, &sb.containerd_sock);
    assert_eq!(s.call(&pull(&b, "direct")).reply.code, 0);
    let m = agent.scrape_until("both pulls", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 2.0
    });
    std::thread::sleep(Duration::from_secs(3));
    let m2 = agent.scrape();
    assert_eq!(sum(&m2, "pullwatch_image_pulls_total", &[]), 2.0, "{m}");
    let by_pod = events_by_pod(&agent);
    assert_eq!(by_pod["through"].len(), 1);
    assert_eq!(by_pod["through"][0]["source"], "cri_proxy");
    assert_eq!(by_pod["direct"].len(), 1);
    assert_eq!(by_pod["direct"][0]["source"], "cri_tap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_that_refuses_bpf_leaves_the_other_sources_running() {
    let sb = Sandbox::start().await;
    let img = sb.push(
        &TestImage::build("no-bpf", 2048, "amd64"),
        "team/no-bpf",
        "1",
    );
    // pullwatch without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN: the kernel refuses its programs.
    let wrapper = sb.dir.path().join("pullwatch-no-bpf");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -bpf,-perfmon,-sys_admin --inh-caps -bpf,-perfmon,-sys_admin {} \"$@\"\n",
            crate::common::agent::pullwatch_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::spawn_bin_passive(
        &sb,
        &wrapper,
        &[
            "--cri-tap",
            "--containerd-socket",
            &sock,
            "--log-level",
            "info",
        ],
    );
    let logs = agent.logs();
    let off: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("kernel tap off"))
        .collect();
    assert_eq!(off.len(), 1, "{logs}");
    assert!(
        off[0].contains("refused"),
        "the line names the cause: {}",
        off[0]
    );
    let m = agent.scrape();
    assert_eq!(
        sum(&m, "pullwatch_source_up", &[("source", "cri_tap")]),
        0.0,
        "{m}"
    );
    // The containerd source goes on, and its passive attempts count now.
    let mut s = Session::open(Caller::GrpcGoBarePath, &sb.containerd_sock);
    assert_eq!(s.call(&pull(&img, "no-bpf")).reply.code, 0);
    agent.scrape_until("the passive attempt", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == 1.0
    });
}
