//! End to end for issue #13: pull progress, stalls and classified failures as Events on the pod
//! (written to the scripted API server, validated against the Kubernetes schema), the node-wide
//! budget, an API server that fails, and `GET /pulls` / `pullwatch pulls`.

use crate::common::agent::{Agent, pullwatch_bin, sum};
use crate::common::image::TestImage;
use crate::common::kube_api::KubeApi;
use crate::common::sandbox::Sandbox;
use crate::common::{pull_as, reason_of, wait};
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The flags of an agent with the containerd source and the Kubernetes API source writing pod
/// events (a pull gets its PullProgress after 1 s, a download stalls after 2 s).
fn pod_event_flags(sb: &Sandbox, api: &KubeApi) -> Vec<String> {
    let kubeconfig = api.kubeconfig(sb.dir.path());
    [
        "--containerd-socket",
        sb.containerd_sock.to_str().unwrap(),
        "--ingest-poll-interval",
        "200ms",
        "--stall-after",
        "2s",
        "--kube",
        "--node-name",
        "node-a",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--pod-events",
        "--pod-events-after",
        "1s",
    ]
    .map(String::from)
    .to_vec()
}

/// That agent with the interposer too.
fn agent(sb: &Sandbox, api: &KubeApi, extra: &[&str]) -> Agent {
    let mut args = pod_event_flags(sb, api);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(sb, &args)
}

/// The written Events with `reason`.
fn events(api: &KubeApi, reason: &str) -> Vec<Value> {
    api.written_events()
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// Every written Event passes `kubernetes-validate --strict` (core/v1 Event schema).
fn validate(api: &KubeApi, dir: &std::path::Path) {
    let all = api.written_events();
    assert!(!all.is_empty());
    let file = dir.join("events.yaml");
    let docs: Vec<String> = all
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(&file, docs.join("\n---\n")).unwrap();
    let out = std::process::Command::new(crate::common::tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("kubernetes-validate (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stalled_and_failing_pulls_show_on_their_pods() {
    let sb = Sandbox::start().await;
    let api = KubeApi::start().await;
    // 14 MiB at 1 MiB/s: long enough for the first PullProgress and one update 10 s later.
    sb.fault.add(
        "team/slow",
        "1",
        &TestImage::build("ev-slow", 14 << 20, "amd64"),
    );
    sb.fault.add(
        "team/stuck",
        "1",
        &TestImage::build("ev-stuck", 4 << 20, "amd64"),
    );
    sb.fault.add(
        "team/limited",
        "1",
        &TestImage::build("ev-429", 4096, "amd64"),
    );
    let agent = agent(&sb, &api, &[]);
    let f = sb.fault.host();
    let sock = agent.proxy_sock.clone();
    let slow = tokio::spawn({
        let (sock, image) = (sock.clone(), format!("{f}/throttled/team/slow:1"));
        async move { pull_as(&sock, &image, Some(("shop", "web")), T).await }
    });
    // Stalls after 2 MiB; the caller gives up after 8 s (kubelet would wait for containerd).
    let stuck = tokio::spawn({
        let (sock, image) = (sock.clone(), format!("{f}/stallblob/team/stuck:1"));
        async move {
            pull_as(
                &sock,
                &image,
                Some(("shop", "stuck")),
                Duration::from_secs(8),
            )
            .await
        }
    });
    let limited = pull_as(
        &sock,
        &format!("{f}/ratelimited/team/limited:1"),
        Some(("batch", "report")),
        T,
    )
    .await;
    assert_eq!(reason_of(&limited), "rate_limited");
    assert_ne!(reason_of(&stuck.await.unwrap()), "success");
    assert_eq!(reason_of(&slow.await.unwrap()), "success");
    wait::until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || !events(&api, "PullFailed").is_empty(),
        || format!("no PullFailed: {:#?}", api.written_events()),
    );

    // The slow pull: one PullProgress Event on its pod, created once and patched after.
    let progress = events(&api, "PullProgress");
    let web: Vec<&Value> = progress
        .iter()
        .filter(|e| e["involvedObject"]["name"] == "web")
        .collect();
    assert_eq!(web.len(), 1, "one Event per pull: {progress:#?}");
    let e = web[0];
    assert_eq!(e["involvedObject"]["uid"], "uid-shop-web");
    assert_eq!(e["involvedObject"]["kind"], "Pod");
    assert_eq!(
        (e["type"].as_str(), e["reportingComponent"].as_str()),
        (Some("Normal"), Some("pullwatch"))
    );
    assert_eq!(e["reportingInstance"], "node-a");
    let name = e["metadata"]["name"].as_str().unwrap().to_string();
    let writes: Vec<String> = api
        .event_writes()
        .into_iter()
        .filter(|(_, n)| *n == name)
        .map(|(m, _)| m)
        .collect();
    assert_eq!(writes[0], "POST", "{writes:?}");
    assert!(
        writes.len() >= 2 && writes[1..].iter().all(|m| m == "PATCH"),
        "patched, not recreated: {writes:?}"
    );
    assert!(e["count"].as_i64().unwrap() >= 2, "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("throttled/team/slow:1")
            && message.contains("of 14 MiB (")
            && message.contains("/s")
            && message.contains("of 1 layers done"),
        "{message}"
    );

    // The stalled pull: exactly one PullStalled, saying how far it got and what comes next.
    let stalled = events(&api, "PullStalled");
    assert_eq!(stalled.len(), 1, "{stalled:#?}");
    assert_eq!(stalled[0]["involvedObject"]["name"], "stuck");
    assert_eq!(stalled[0]["type"], "Warning");
    let m = stalled[0]["message"].as_str().unwrap();
    assert!(
        m.contains("2.0 MiB") && m.contains("image_pull_progress_timeout"),
        "{m}"
    );

    // The 429: PullFailed with the reason and its hint, next to the runtime's error.
    let failed = events(&api, "PullFailed");
    let report: Vec<&Value> = failed
        .iter()
        .filter(|e| e["involvedObject"]["name"] == "report")
        .collect();
    assert_eq!(report.len(), 1, "{failed:#?}");
    let m = report[0]["message"].as_str().unwrap();
    assert!(
        m.contains("rate_limited")
            && m.contains("imagePullSecret")
            && m.contains("429 Too Many Requests"),
        "{m}"
    );
    validate(&api, sb.dir.path());
    let metrics = agent.scrape();
    for reason in ["PullProgress", "PullStalled", "PullFailed"] {
        assert!(
            sum(
                &metrics,
                "pullwatch_pod_events_total",
                &[("reason", reason), ("result", "written")]
            ) >= 1.0,
            "{reason}:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_down_shedding_or_failing_never_stops_observation_and_events_resume() {
    let sb = Sandbox::start().await;
    let api = KubeApi::start().await;
    sb.fault.add(
        "team/limited",
        "1",
        &TestImage::build("ev-down", 4096, "amd64"),
    );
    let agent = agent(&sb, &api, &[]);
    let image = format!("{}/ratelimited/team/limited:1", sb.fault.host());
    // Down: every write fails (connection closed); the interposer and the metrics go on.
    api.set_down(true);
    let r = pull_as(&agent.proxy_sock, &image, Some(("batch", "a")), T).await;
    assert_eq!(reason_of(&r), "rate_limited");
    agent.scrape_until("the failed write counted", |m| {
        sum(m, "pullwatch_pod_events_total", &[("result", "failed")]) >= 1.0
    });
    // Shedding: 429s; still observed and counted.
    api.set_down(false);
    api.throttle(1000);
    let r = pull_as(&agent.proxy_sock, &image, Some(("batch", "b")), T).await;
    assert_eq!(reason_of(&r), "rate_limited");
    agent.scrape_until("both failures recorded", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "rate_limited")],
        ) == 2.0
    });
    // Failing writes: 500s; still observed.
    api.throttle(0);
    api.fail_writes(1000);
    let r = pull_as(&agent.proxy_sock, &image, Some(("batch", "b2")), T).await;
    assert_eq!(reason_of(&r), "rate_limited");
    agent.scrape_until("three failures recorded", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "rate_limited")],
        ) == 3.0
    });
    assert!(api.written_events().is_empty());
    // Back: the next failure gets its Event (after the writer's pause).
    api.fail_writes(0);
    let r = pull_as(&agent.proxy_sock, &image, Some(("batch", "c")), T).await;
    assert_eq!(reason_of(&r), "rate_limited");
    wait::until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || {
            events(&api, "PullFailed")
                .iter()
                .any(|e| e["involvedObject"]["name"] == "c")
        },
        || {
            format!(
                "no Event after the API came back: {:#?}\n{}",
                api.requests(),
                agent.logs()
            )
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_slow_pulls_stay_within_the_node_budget() {
    let sb = Sandbox::start().await;
    let api = KubeApi::start().await;
    sb.fault.add(
        "team/many",
        "1",
        &TestImage::build("ev-many", 4 << 20, "amd64"),
    );
    let agent = agent(&sb, &api, &[]);
    let image = format!("{}/throttled/team/many:1", sb.fault.host());
    let started = std::time::Instant::now();
    let mut pulls = Vec::new();
    for i in 0..200 {
        let (sock, image) = (agent.proxy_sock.clone(), image.clone());
        pulls.push(tokio::spawn(async move {
            let pod = format!("p{i}");
            reason_of(&pull_as(&sock, &image, Some(("load", &pod)), T).await)
        }));
    }
    let mut results = std::collections::BTreeMap::<String, usize>::new();
    for p in pulls {
        *results.entry(p.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        results.get("success"),
        Some(&200),
        "{results:?}\n{}",
        agent
            .logs()
            .lines()
            .filter(|l| l.contains("image pull failed"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let secs = started.elapsed().as_secs_f64();
    let writes = api.event_writes().len() as f64;
    // 20 at once, then 5 a second.
    assert!(
        writes <= 20.0 + 5.0 * (secs + 1.0),
        "{writes} writes in {secs:.1} s"
    );
    // Every success is recorded (each waits for containerd's record of its content, at most
    // the join window).
    let m = agent.scrape_until("every success recorded", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == 200.0
    });
    assert!(
        sum(&m, "pullwatch_pod_events_total", &[("result", "dropped")]) > 0.0,
        "drops are counted:\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pullwatch_pulls_shows_the_pull_in_flight_and_the_last_causes() {
    let sb = Sandbox::start().await;
    let big_image = TestImage::build("pulls-big", 6 << 20, "amd64");
    sb.fault.add("team/big", "1", &big_image);
    sb.fault.add(
        "team/limited",
        "1",
        &TestImage::build("pulls-429", 4096, "amd64"),
    );
    let ctd = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start(
        &sb,
        &[
            "--containerd-socket",
            &ctd,
            "--ingest-poll-interval",
            "200ms",
        ],
    );
    let f = sb.fault.host();
    let r = pull_as(
        &agent.proxy_sock,
        &format!("{f}/ratelimited/team/limited:1"),
        Some(("batch", "report")),
        T,
    )
    .await;
    assert_eq!(reason_of(&r), "rate_limited");
    let big = format!("{f}/throttled/team/big:1");
    let pull = tokio::spawn({
        let (sock, image) = (agent.proxy_sock.clone(), big.clone());
        async move { pull_as(&sock, &image, Some(("shop", "web")), T).await }
    });
    let url = format!("http://{}", agent.addr);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(pullwatch_bin())
            .arg("pulls")
            .args(["--url", &url])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Wait until the download shows against the whole image (its manifest read), through the
    // JSON.
    let last = std::cell::RefCell::new(Value::Null);
    wait::until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let v: Value = serde_json::from_str(&run(&["--json"])).unwrap();
            let p = &v["in_progress"][0];
            let ready =
                p["bytes_done"].as_u64().unwrap_or(0) > 0 && p["total_from_manifest"] == true;
            *last.borrow_mut() = v;
            ready
        },
        || {
            format!(
                "the in-flight pull never showed progress: {}",
                last.borrow()
            )
        },
    );
    let last = last.into_inner();
    let p = &last["in_progress"][0];
    let blobs = big_image.total_bytes() - big_image.manifest.len() as u64;
    assert_eq!(
        p["bytes_total"].as_u64(),
        Some(blobs),
        "config + layer: {p}"
    );
    assert_eq!(p["layers_total"].as_u64(), Some(1), "{p}");
    let table = run(&["--once"]);
    let line = table
        .lines()
        .find(|l| l.contains("throttled/team/big:1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("shop/web")
            && line.contains("download")
            && line.contains("of 6.0 MiB (")
            && line.contains("of 1 layers done"),
        "{table}"
    );
    let cause = table
        .lines()
        .find(|l| l.contains("ratelimited/team/limited:1"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        cause.contains("rate_limited") && cause.contains("registry is rate limiting"),
        "{table}"
    );
    assert_eq!(reason_of(&pull.await.unwrap()), "success");
    // An unreachable agent: one line, exit 69.
    let out = std::process::Command::new(pullwatch_bin())
        .args(["pulls", "--once", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_interposer_kubelets_pulling_event_names_the_pod() {
    // --kube-events=cluster: kubelet's `Pulling` Event starts the pull, its `Pulled` ends it.
    pod_named_without_the_interposer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_interposer_or_any_event_watch_the_pods_status_names_it() {
    // The DaemonSet's default (--kube-events=per-pod): no Event stream; a new pod's container
    // being created stands for the pull once its downloads show, and its start ends it.
    pod_named_without_the_interposer(false).await;
}

/// The shipped DaemonSet's mode (containerd source + Kubernetes API source, no interposer): a
/// slow pull shows on its pod, and in `pullwatch pulls`, named by kubelet's `Pulling` Event
/// (`cluster_events`) or by the pod's status alone.
async fn pod_named_without_the_interposer(cluster_events: bool) {
    use crate::common::kube_api::{Kind, kubelet_event, pod, running, waiting};
    let sb = Sandbox::start().await;
    let api = KubeApi::start().await;
    sb.fault.add(
        "team/passive",
        "1",
        &TestImage::build("ev-passive", 8 << 20, "amd64"),
    );
    let mut flags = pod_event_flags(&sb, &api);
    if cluster_events {
        flags.push("--kube-events=cluster".into());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = Agent::start_passive(&sb, &flags);
    api.wait_for_watchers(Kind::Pods, 1).await;
    if cluster_events {
        api.wait_for_watchers(Kind::Events, 1).await;
    }
    // Events and pods from before the agent started are history: let a second pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let image = format!("{}/throttled/team/passive:1", sb.fault.host());
    let creating = || waiting("ContainerCreating", "");
    api.apply(
        Kind::Pods,
        pod("shop", "web", "node-a", &image, 0, Some(creating())),
    );
    if cluster_events {
        let pulling = format!("Pulling image \"{image}\"");
        api.apply(
            Kind::Events,
            kubelet_event(
                "ev-pulling",
                ("shop", "web", "node-a"),
                ("Pulling", &pulling),
                1,
                (0, 0),
            ),
        );
    }
    // kubelet then asks the runtime; pullwatch is not in that path.
    let pull = tokio::spawn({
        let (sock, image) = (sb.containerd_sock.clone(), image.clone());
        async move { pull_as(&sock, &image, None, T).await }
    });
    wait::until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            events(&api, "PullProgress").iter().any(|e| {
                e["involvedObject"]["uid"] == "uid-shop-web"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("of 8.0 MiB ("))
            })
        },
        || format!("no PullProgress on shop/web: {:#?}", api.written_events()),
    );
    assert_eq!(reason_of(&pull.await.unwrap()), "success");
    let pulled = format!(
        "Successfully pulled image \"{image}\" in 8s (8s including waiting). Image size: 1 bytes."
    );
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-pulled",
            ("shop", "web", "node-a"),
            ("Pulled", &pulled),
            1,
            (0, 0),
        ),
    );
    api.apply(
        Kind::Pods,
        pod("shop", "web", "node-a", &image, 0, Some(running())),
    );
    // kubelet's Pulled (or the container's start) ends it: no longer in progress.
    let url = format!("http://{}", agent.addr);
    wait::until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let out = std::process::Command::new(pullwatch_bin())
                .args(["pulls", "--json", "--url", &url])
                .output()
                .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v["in_progress"].as_array().is_some_and(Vec::is_empty)
        },
        || "the pull stayed in progress after kubelet's Pulled event".into(),
    );
    if !cluster_events {
        // The pod's Pulled Event was read once, by its UID, after its container started.
        agent.scrape_until("the pod's Pulled Event read", |m| {
            crate::common::agent::sum(m, "pullwatch_kube_event_reads_total", &[("result", "ok")])
                == 1.0
        });
        let reads: Vec<String> = api
            .requests()
            .into_iter()
            .filter(|r| r.starts_with("GET /api/v1/namespaces/shop/events?"))
            .collect();
        assert_eq!(reads.len(), 1, "{reads:#?}");
    }
    validate(&api, sb.dir.path());
}
