//! The Kubernetes API source end to end: the real pullwatch binary, with kube-rs's client and
//! watcher, against a scripted API server fed realistic Pod and Event JSON of recent kubelets.

use crate::common::agent::{Agent, sum};
use crate::common::kube_api::{Kind, KubeApi, kubelet_event, pod, running, waiting};
use std::time::Duration;

const NODE: &str = "node-a";

const NOT_FOUND: &str = "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nginx:nope\": failed to resolve reference \"docker.io/library/nginx:nope\": docker.io/library/nginx:nope: not found";
const RATE_LIMITED: &str = "failed to pull and unpack image \"docker.io/library/redis:7\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/redis/manifests/sha256:0f1e: 429 Too Many Requests - Server message: toomanyrequests: You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit";
const DENIED: &str = "rpc error: code = Unknown desc = failed to pull and unpack image \"registry.example.com/team/private:1\": failed to resolve reference \"registry.example.com/team/private:1\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed";

fn start(api: &KubeApi, dir: &std::path::Path, extra: &[&str]) -> Agent {
    let kubeconfig = api.kubeconfig(dir);
    let mut args = vec![
        "--kube",
        "--node-name",
        NODE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--log-level",
        "info,kube=warn",
    ];
    args.extend_from_slice(extra);
    Agent::start_bare(dir, &args)
}

fn failed(image: &str, err: &str) -> String {
    format!("Failed to pull image \"{image}\": {err}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_successes_and_backoff_come_from_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    // History from before the agent started: counted nowhere, but the pod in backoff shows.
    api.apply(
        Kind::Pods,
        pod(
            "shop",
            "old-1",
            NODE,
            "nginx:nope",
            3600,
            Some(waiting(
                "ImagePullBackOff",
                &format!("Back-off pulling image \"nginx:nope\": ErrImagePull: {NOT_FOUND}"),
            )),
        ),
    );
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-old",
            ("shop", "old-1", NODE),
            ("Failed", &failed("nginx:nope", NOT_FOUND)),
            6,
            (3600, 120),
        ),
    );
    // Another node's pod is not ours (the field selector leaves it out); another node's event is
    // delivered (no selector exists for the host) and must be dropped.
    api.apply(
        Kind::Pods,
        pod(
            "shop",
            "elsewhere",
            "node-b",
            "redis:7",
            0,
            Some(waiting("ErrImagePull", RATE_LIMITED)),
        ),
    );
    let agent = start(&api, dir.path(), &["--kube-events=cluster"]);
    api.wait_for_watchers(Kind::Pods, 1).await;
    api.wait_for_watchers(Kind::Events, 1).await;
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-b",
            ("shop", "elsewhere", "node-b"),
            ("Failed", &failed("redis:7", RATE_LIMITED)),
            1,
            (0, 0),
        ),
    );

    let m = agent.scrape_until("the old pod in backoff", |m| {
        sum(
            m,
            "pullwatch_image_pull_backoff",
            &[("namespace", "shop"), ("reason", "not_found")],
        ) == 1.0
            && sum(m, "pullwatch_kube_watch_up", &[]) == 2.0
    });
    assert_eq!(
        sum(&m, "pullwatch_image_pulls_total", &[]),
        0.0,
        "history is not counted:\n{m}"
    );
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "pods are listed for this node only: {requests:#?}"
    );

    // A new pod pulls successfully: kubelet's own duration.
    api.apply(
        Kind::Pods,
        pod("shop", "web-1", NODE, "nginx:1.27", 0, None),
    );
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-pulling",
            ("shop", "web-1", NODE),
            ("Pulling", "Pulling image \"nginx:1.27\""),
            1,
            (2, 2),
        ),
    );
    api.apply(
        Kind::Events,
        kubelet_event("ev-pulled", ("shop", "web-1", NODE), ("Pulled", "Successfully pulled image \"nginx:1.27\" in 1.5s (2.1s including waiting). Image size: 68857691 bytes."), 1, (0, 0)),
    );
    api.apply(
        Kind::Pods,
        pod("shop", "web-1", NODE, "nginx:1.27", 0, Some(running())),
    );

    // A new pod fails on a rate limit: the event and the status are one attempt.
    api.apply(Kind::Pods, pod("batch", "job-1", NODE, "redis:7", 0, None));
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-rl",
            ("batch", "job-1", NODE),
            ("Failed", &failed("redis:7", RATE_LIMITED)),
            1,
            (0, 0),
        ),
    );
    api.apply(
        Kind::Pods,
        pod(
            "batch",
            "job-1",
            NODE,
            "redis:7",
            0,
            Some(waiting("ErrImagePull", RATE_LIMITED)),
        ),
    );
    let m = agent.scrape_until("one success and one rate-limited failure", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == 1.0
            && sum(
                m,
                "pullwatch_image_pull_failures_total",
                &[("reason", "rate_limited")],
            ) == 1.0
            && sum(m, "pullwatch_kube_deduplicated_total", &[]) == 1.0
    });
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_duration_seconds_sum",
            &[("result", "success")]
        ),
        1.5,
        "kubelet's duration:\n{m}"
    );
    // Its queue phase: 2.1 s including waiting, 1.5 s pulling.
    let queue = [("registry", "docker.io"), ("phase", "queue")];
    assert_eq!(
        (
            sum(&m, "pullwatch_image_pull_phase_seconds_count", &queue),
            sum(&m, "pullwatch_image_pull_phase_seconds_sum", &queue)
        ),
        (1.0, 0.6),
        "kubelet's wait in its pull queue:\n{m}"
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pulls_total",
            &[("registry", "docker.io")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_duration_seconds_count",
            &[("result", "failure")]
        ),
        0.0,
        "a failure's duration is unknown to the API, so it is not observed:\n{m}"
    );

    // kubelet retries: the event's count grows (folded repeats), the status flaps through
    // back-off. Two more attempts, no more.
    api.apply(
        Kind::Pods,
        pod(
            "batch",
            "job-1",
            NODE,
            "redis:7",
            0,
            Some(waiting(
                "ImagePullBackOff",
                "Back-off pulling image \"redis:7\"",
            )),
        ),
    );
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-rl",
            ("batch", "job-1", NODE),
            ("Failed", &failed("redis:7", RATE_LIMITED)),
            3,
            (20, 0),
        ),
    );
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-bo",
            ("batch", "job-1", NODE),
            ("BackOff", "Back-off pulling image \"redis:7\""),
            2,
            (15, 0),
        ),
    );
    let m = agent.scrape_until("three rate-limited attempts and the pod in backoff", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "rate_limited")],
        ) == 3.0
            && sum(
                m,
                "pullwatch_image_pull_backoff",
                &[("namespace", "batch"), ("reason", "rate_limited")],
            ) == 1.0
    });
    assert_eq!(
        sum(&m, "pullwatch_image_pulls_total", &[("result", "failure")]),
        3.0,
        "{m}"
    );

    // The pod is deleted: it leaves the backoff gauge at once.
    api.delete(Kind::Pods, "uid-batch-job-1");
    agent.scrape_until("the deleted pod out of backoff", |m| {
        sum(m, "pullwatch_image_pull_backoff", &[("namespace", "batch")]) == 0.0
    });

    // The event log says where each attempt came from.
    let events = agent.pull_events();
    let kube: Vec<_> = events.iter().filter(|e| e["source"] == "kube").collect();
    assert_eq!(kube.len(), 4, "{events:#?}");
    assert!(
        kube.iter()
            .any(|e| e["pod"] == "web-1" && e["duration_seconds"] == 1.5)
    );
    assert!(
        kube.iter()
            .all(|e| e["namespace"] != "shop" || e["pod"] != "old-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_only_in_the_status_counts_once_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    let agent = start(&api, dir.path(), &["--kube-events=cluster"]);
    api.wait_for_watchers(Kind::Pods, 1).await;
    // kubelet's event was lost (rate-limited by its recorder): only the status tells.
    api.apply(
        Kind::Pods,
        pod(
            "team",
            "api-1",
            NODE,
            "registry.example.com/team/private:1",
            0,
            None,
        ),
    );
    let failing = pod(
        "team",
        "api-1",
        NODE,
        "registry.example.com/team/private:1",
        0,
        Some(waiting("ErrImagePull", DENIED)),
    );
    api.apply(Kind::Pods, failing.clone());
    // Resyncs repeat the same status: still one attempt.
    api.apply(Kind::Pods, failing);
    let window = Duration::from_secs(45);
    let m = agent.scrape_until_within(
        window,
        "the status-only failure (after the 30 s dedup window)",
        |m| {
            sum(
                m,
                "pullwatch_image_pull_failures_total",
                &[
                    ("reason", "unauthorized"),
                    ("registry", "registry.example.com"),
                ],
            ) == 1.0
        },
    );
    assert_eq!(sum(&m, "pullwatch_kube_deduplicated_total", &[]), 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sum(&agent.scrape(), "pullwatch_image_pulls_total", &[]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survives_gone_watches_cuts_bookmarks_and_api_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    api.apply(
        Kind::Pods,
        pod(
            "shop",
            "web-1",
            NODE,
            "nginx:nope",
            0,
            Some(waiting("ErrImagePull", NOT_FOUND)),
        ),
    );
    let agent = start(&api, dir.path(), &["--kube-events=cluster"]);
    api.wait_for_watchers(Kind::Events, 1).await;
    api.wait_for_watchers(Kind::Pods, 1).await;
    let fail = |count: u32| {
        kubelet_event(
            "ev-nf",
            ("shop", "web-1", NODE),
            ("Failed", &failed("nginx:nope", NOT_FOUND)),
            count,
            (60, 0),
        )
    };
    api.apply(Kind::Events, fail(1));
    // The first attempt started before the agent (first seen 60 s ago): only this repeat counts.
    agent.scrape_until("the first failure", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "not_found")],
        ) == 1.0
    });

    // 410 Gone: the watch cache moved on. Meanwhile the event grew to 3; a relist sees it.
    let lists_before = list_requests(&api, "/api/v1/events");
    api.apply_unseen(Kind::Events, fail(3));
    api.expire_watches(Kind::Events);
    let m = agent.scrape_until("the relist after 410 counting the two new repeats", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "not_found")],
        ) == 3.0
    });
    assert!(
        list_requests(&api, "/api/v1/events") > lists_before,
        "410 must relist"
    );
    assert_eq!(sum(&m, "pullwatch_image_pulls_total", &[]), 3.0, "{m}");

    // A bookmark, then a silent cut: the watch resumes from the bookmark, and what happened in
    // between is replayed once.
    api.wait_for_watchers(Kind::Events, 1).await;
    let rv = api.bookmark(Kind::Events);
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.cut_watches(Kind::Events);
    api.apply(Kind::Events, fail(4));
    agent.scrape_until("the repeat after the cut", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "not_found")],
        ) == 4.0
    });
    let resumed = format!("resourceVersion={rv}");
    assert!(
        api.requests().iter().any(|r| r.contains("/api/v1/events?")
            && r.contains("watch=true")
            && r.contains(&resumed)),
        "watch must resume from the bookmark {rv}: {:#?}",
        api.requests()
    );

    // The API server goes away; the pod is deleted while it is away.
    api.set_down(true);
    api.delete_unseen(Kind::Pods, "uid-shop-web-1");
    api.expire_watches(Kind::Pods);
    api.expire_watches(Kind::Events);
    let m = agent.scrape_until("the watch marked down", |m| {
        sum(m, "pullwatch_kube_watch_up", &[]) < 2.0
            && sum(m, "pullwatch_source_errors_total", &[("source", "kube")]) >= 1.0
    });
    assert_eq!(sum(&m, "pullwatch_image_pull_backoff", &[]), 1.0, "{m}");
    api.set_down(false);
    let m = agent.scrape_until(
        "recovery: watches up, the deleted pod out of backoff",
        |m| {
            sum(m, "pullwatch_kube_watch_up", &[]) == 2.0
                && sum(m, "pullwatch_image_pull_backoff", &[]) == 0.0
        },
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "not_found")]
        ),
        4.0,
        "relists count nothing twice:\n{m}"
    );

    // Throttled by API priority and fairness: the client waits as told and carries on.
    let before = api.requests().len();
    api.throttle(3);
    api.cut_watches(Kind::Events);
    api.apply(Kind::Events, fail(5));
    agent.scrape_until_within(
        Duration::from_secs(30),
        "the repeat after throttling",
        |m| {
            sum(
                m,
                "pullwatch_image_pull_failures_total",
                &[("reason", "not_found")],
            ) == 5.0
        },
    );
    assert!(
        api.requests().len() >= before + 4,
        "the throttled requests were retried"
    );

    // A short outage without compaction: the watches resume where they were (no relist), and
    // the first change they deliver shows them up again.
    api.set_down(true);
    agent.scrape_until("the watches marked down again", |m| {
        sum(m, "pullwatch_kube_watch_up", &[]) == 0.0
    });
    api.set_down(false);
    api.apply(Kind::Events, fail(6));
    api.apply(
        Kind::Pods,
        pod("shop", "web-2", NODE, "nginx:1", 0, Some(running())),
    );
    agent.scrape_until_within(Duration::from_secs(40), "both watches back up", |m| {
        sum(m, "pullwatch_kube_watch_up", &[]) == 2.0
            && sum(
                m,
                "pullwatch_image_pull_failures_total",
                &[("reason", "not_found")],
            ) == 6.0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_interposer_on_the_api_adds_no_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    let proxy = dir.path().join("pullwatch.sock");
    let agent = start(
        &api,
        dir.path(),
        &[
            "--kube-events=cluster",
            "--cri-proxy-socket",
            proxy.to_str().unwrap(),
        ],
    );
    api.wait_for_watchers(Kind::Events, 1).await;
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-1",
            ("shop", "web-1", NODE),
            ("Failed", &failed("nginx:nope", NOT_FOUND)),
            2,
            (0, 0),
        ),
    );
    api.apply(
        Kind::Events,
        kubelet_event("ev-2", ("shop", "web-1", NODE), ("Pulled", "Successfully pulled image \"nginx:1\" in 1s (1s including waiting). Image size: 1 bytes."), 1, (0, 0)),
    );
    // The status arrives after the events on the same connection order: once it shows in the
    // backoff gauge (which the API source still feeds), the events were seen too.
    api.apply(
        Kind::Pods,
        pod(
            "shop",
            "web-1",
            NODE,
            "nginx:nope",
            0,
            Some(waiting(
                "ImagePullBackOff",
                &format!("Back-off pulling image \"nginx:nope\": ErrImagePull: {NOT_FOUND}"),
            )),
        ),
    );
    agent.scrape_until("the pod in backoff", |m| {
        sum(
            m,
            "pullwatch_image_pull_backoff",
            &[("reason", "not_found")],
        ) == 1.0
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = agent.scrape();
    assert_eq!(sum(&m, "pullwatch_image_pulls_total", &[]), 0.0, "{m}");
    assert!(agent.pull_events().is_empty());
}

fn list_requests(api: &KubeApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.contains(&format!("{path}?")) && !r.contains("watch=true"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_events_statuses_alone_give_failures_at_once() {
    // --kube-events=off: only this node's pods are watched; a status failure counts at once.
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    let agent = start(&api, dir.path(), &["--kube-events=off"]);
    api.wait_for_watchers(Kind::Pods, 1).await;
    let image = "registry.example.com/team/private:1";
    api.apply(Kind::Pods, pod("team", "api-1", NODE, image, 0, None));
    let failing = pod(
        "team",
        "api-1",
        NODE,
        image,
        0,
        Some(waiting("ErrImagePull", DENIED)),
    );
    api.apply(Kind::Pods, failing.clone());
    api.apply(Kind::Pods, failing);
    // An event that would count if events were watched: nobody asks for it.
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-1",
            ("team", "api-1", NODE),
            ("Failed", &failed(image, DENIED)),
            1,
            (0, 0),
        ),
    );
    // Well inside the 30 s an event would be waited for.
    let m = agent.scrape_until_within(Duration::from_secs(10), "the status failure", |m| {
        sum(
            m,
            "pullwatch_image_pull_failures_total",
            &[("reason", "unauthorized")],
        ) == 1.0
    });
    assert_eq!(
        sum(&m, "pullwatch_kube_watch_up", &[("resource", "pods")]),
        1.0
    );
    assert!(
        !m.contains("pullwatch_kube_watch_up{resource=\"events\"}"),
        "no events watch, no events health: {m}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sum(&agent.scrape(), "pullwatch_image_pulls_total", &[]),
        1.0
    );
    let requests = api.requests();
    assert!(
        !requests.iter().any(|r| r.contains("/api/v1/events")),
        "events were requested: {requests:#?}"
    );
    assert!(requests.iter().any(|r| r.contains("/api/v1/pods")));
}

/// The flags of the shipped DaemonSet that decide what it asks of the API server (`--kube…`,
/// `--pod-events…`), as its manifest lists them, commented-out lines left out.
fn daemonset_api_args() -> Vec<String> {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/base/daemonset.yaml"
    ))
    .unwrap();
    manifest
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- "))
        .filter(|a| a.starts_with("--kube") || a.starts_with("--pod-events"))
        .map(str::to_string)
        .collect()
}

/// `GET` requests for Events: (cluster-wide lists and watches, per-pod lists).
fn event_requests(api: &KubeApi) -> (Vec<String>, Vec<String>) {
    let gets: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/events"))
        .collect();
    gets.into_iter()
        .partition(|r| r.starts_with("GET /api/v1/events"))
}

const PULLED: &str = "Successfully pulled image \"nginx:1.27\" in 1.2s (3.5s including waiting). Image size: 68857691 bytes.";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_daemonsets_args_read_one_pods_events_per_pull_and_no_cluster_stream() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start().await;
    let args = daemonset_api_args();
    assert!(args.iter().any(|a| a == "--kube"), "{args:?}");
    let kubeconfig = api.kubeconfig(dir.path());
    let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
    flags.extend([
        "--node-name",
        NODE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    let agent = Agent::start_bare(dir.path(), &flags);
    api.wait_for_watchers(Kind::Pods, 1).await;
    // Past the agent's start second: what follows is new.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A pod whose image is pulled: created, its container created, kubelet's Pulled Event,
    // then it runs.
    let creating = waiting("ContainerCreating", "");
    api.apply(
        Kind::Pods,
        pod("shop", "web", NODE, "nginx:1.27", 0, Some(creating)),
    );
    api.apply(
        Kind::Events,
        kubelet_event(
            "ev-pulled",
            ("shop", "web", NODE),
            ("Pulled", PULLED),
            1,
            (0, 0),
        ),
    );
    api.apply(
        Kind::Pods,
        pod("shop", "web", NODE, "nginx:1.27", 0, Some(running())),
    );
    // A pod whose pull hits Docker Hub's rate limit, seen in its status only.
    api.apply(
        Kind::Pods,
        pod(
            "shop",
            "cache",
            NODE,
            "redis:7",
            0,
            Some(waiting("ErrImagePull", RATE_LIMITED)),
        ),
    );
    let m = agent.scrape_until_within(Duration::from_secs(15), "the pull and the failure", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == 1.0
            && sum(
                m,
                "pullwatch_image_pull_failures_total",
                &[("reason", "rate_limited")],
            ) == 1.0
    });
    // The queue phase comes from the Pulled Event: 3.5 s including waiting, 1.2 s pulling.
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_phase_seconds_count",
            &[("phase", "queue")]
        ),
        1.0
    );
    let queued = sum(
        &m,
        "pullwatch_image_pull_phase_seconds_sum",
        &[("phase", "queue")],
    );
    assert!((queued - 2.3).abs() < 1e-6, "{queued}");
    assert!(
        sum(
            &m,
            "pullwatch_image_pull_duration_seconds_sum",
            &[("result", "success")]
        ) > 1.19
    );
    // Resyncs of the same statuses count nothing again.
    api.apply(
        Kind::Pods,
        pod(
            "shop",
            "cache",
            NODE,
            "redis:7",
            0,
            Some(waiting("ErrImagePull", RATE_LIMITED)),
        ),
    );
    api.apply(
        Kind::Pods,
        pod("shop", "web", NODE, "nginx:1.27", 0, Some(running())),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = agent.scrape();
    assert_eq!(sum(&m, "pullwatch_image_pulls_total", &[]), 2.0, "{m}");
    assert_eq!(
        sum(&m, "pullwatch_kube_event_reads_total", &[("result", "ok")]),
        1.0
    );
    let (cluster, per_pod) = event_requests(&api);
    assert!(
        cluster.is_empty(),
        "cluster-wide Event requests: {cluster:#?}"
    );
    assert_eq!(per_pod.len(), 1, "{per_pod:#?}");
    let read = &per_pod[0];
    assert!(
        read.starts_with("GET /api/v1/namespaces/shop/events?")
            && read.contains("involvedObject.uid%3Duid-shop-web")
            && read.contains("resourceVersion=0"),
        "{read}"
    );
    assert_eq!(api.watchers(Kind::Events), 0);
    // The pods are listed from the watch cache.
    let pods = api.requests();
    let list = pods
        .iter()
        .find(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch="))
        .expect("a pod list");
    assert!(list.contains("resourceVersion=0"), "{list}");
}

/// One kubelet pod Event of another node of a 5,000-node cluster: the mix a rollout makes
/// (pulls, starts, probe failures).
fn elsewhere(i: u64) -> serde_json::Value {
    let node = format!("node-{}", 1 + i % 4999);
    let pod_name = format!("app-{}", i / 4);
    let (reason, message) = match i % 5 {
        0 => ("Pulling", "Pulling image \"registry.example.com/team/app:2\"".to_string()),
        1 => (
            "Pulled",
            "Successfully pulled image \"registry.example.com/team/app:2\" in 2.1s (2.1s including waiting). Image size: 120000000 bytes.".to_string(),
        ),
        2 => ("Created", "Created container: app".to_string()),
        3 => ("Started", "Started container app".to_string()),
        _ => (
            "Unhealthy",
            "Readiness probe failed: Get \"http://10.0.0.1:8080/ready\": dial tcp 10.0.0.1:8080: connect: connection refused".to_string(),
        ),
    };
    kubelet_event(
        &format!("ev-elsewhere-{i}"),
        ("prod", &pod_name, &node),
        (reason, &message),
        1,
        (0, 0),
    )
}

/// Plays a 5,000-node cluster's kubelet Event stream into `apis`: `per_second` Events a
/// second for `seconds`, and, spread through it, `pulls` pulls on this node (a pod created,
/// its Pulled Event, then running).
async fn play_cluster(apis: &[&KubeApi], per_second: u64, seconds: u64, pulls: u64) {
    let ticks = seconds * 20;
    let per_tick = per_second / 20;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut i = 0;
    for t in 0..ticks {
        tick.tick().await;
        for _ in 0..per_tick {
            let ev = elsewhere(i);
            for api in apis {
                api.apply(Kind::Events, ev.clone());
            }
            i += 1;
        }
        if t % (ticks / pulls) == 0 {
            let n = t / (ticks / pulls);
            let name = format!("web-{n}");
            for api in apis {
                let creating = waiting("ContainerCreating", "");
                api.apply(
                    Kind::Pods,
                    pod("shop", &name, NODE, "nginx:1.27", 0, Some(creating)),
                );
                api.apply(
                    Kind::Events,
                    kubelet_event(
                        &format!("ev-web-{n}"),
                        ("shop", &name, NODE),
                        ("Pulled", PULLED),
                        1,
                        (0, 0),
                    ),
                );
                api.apply(
                    Kind::Pods,
                    pod("shop", &name, NODE, "nginx:1.27", 0, Some(running())),
                );
            }
        }
        // Keep the scripted server's watch cache small (no agent resumes from it here).
        if t % 20 == 0 {
            for api in apis {
                api.trim_history(Kind::Events);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_a_5000_node_event_stream_the_cost_stays_per_node() {
    let dir = tempfile::tempdir().unwrap();
    let (per_pod_api, cluster_api) = (KubeApi::start().await, KubeApi::start().await);
    let per_pod_dir = dir.path().join("per-pod");
    let cluster_dir = dir.path().join("cluster");
    std::fs::create_dir_all(&per_pod_dir).unwrap();
    std::fs::create_dir_all(&cluster_dir).unwrap();
    let per_pod = start(&per_pod_api, &per_pod_dir, &[]);
    let cluster = start(&cluster_api, &cluster_dir, &["--kube-events=cluster"]);
    per_pod_api.wait_for_watchers(Kind::Pods, 1).await;
    cluster_api.wait_for_watchers(Kind::Events, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // 3 s by default; PULLWATCH_API_STREAM_SECONDS plays longer for docs/performance.md (one
    // pull of this node per second: 0.05 % of the stream).
    let seconds: u64 = std::env::var("PULLWATCH_API_STREAM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (events, pulls) = (2_000 * seconds, seconds);
    play_cluster(&[&per_pod_api, &cluster_api], 2_000, seconds, pulls).await;
    // Both see the three pulls with kubelet's durations.
    for agent in [&per_pod, &cluster] {
        agent.scrape_until_within(Duration::from_secs(15), "three pulls", |m| {
            sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == pulls as f64
        });
    }
    let (p, c) = (
        per_pod_api.sent(Kind::Events),
        cluster_api.sent(Kind::Events),
    );
    let pods = per_pod_api.sent(Kind::Pods);
    eprintln!(
        "over {seconds} s the cluster made {events} kubelet Events, {pulls} pulls on this node; per-pod agent: {} Events ({} bytes) in {} reads, {} pod objects ({} bytes); cluster-watch agent: {} Events ({} bytes)",
        p.objects,
        p.bytes,
        event_requests(&per_pod_api).1.len(),
        pods.objects,
        pods.bytes,
        c.objects,
        c.bytes
    );
    assert!(
        c.objects >= events,
        "the cluster watch gets everything: {c:?}"
    );
    assert!(
        p.objects <= pulls,
        "per pod: only this node's Pulled Events: {p:?}"
    );
    let (cluster_requests, reads) = event_requests(&per_pod_api);
    assert!(cluster_requests.is_empty(), "{cluster_requests:#?}");
    assert!(
        reads.len() as u64 <= pulls,
        "one read per pull at most: {reads:#?}"
    );
}
