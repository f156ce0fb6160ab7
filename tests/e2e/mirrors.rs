//! End to end for the endpoint witness (#22): real containerd pulling through a mirror that
//! `hosts.toml` lists before the upstream, both real docker-registry instances; the agent reads
//! containerd's connections and says which endpoint served each pull and which it fell back
//! from. Passive mode (containerd source) and with the kernel tap.

use crate::common::agent::{Agent, http_get, sum};
use crate::common::image::TestImage;
use crate::common::sandbox::Sandbox;
use crate::common::{pull_as, reason_of};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The hosts.toml of a registry whose mirror is `mirror`.
fn with_mirror(upstream: &str, mirror: &str) -> String {
    format!(
        "server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The agent with the containerd source, the endpoint witness reading containerd's own
/// configuration (its `registry.config_path`), and connections read only at start and at each
/// pull (the poll interval is longer than the test).
fn agent(sb: &Sandbox, tap: bool) -> Agent {
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let config = sb.containerd_config().to_str().unwrap().to_string();
    let mut args = vec![
        "--containerd-socket",
        &sock,
        "--containerd-config",
        &config,
        "--endpoint-poll-interval",
        "10m",
        "--log-level",
        "info",
    ];
    if tap {
        args.push("--cri-tap");
    }
    let agent = Agent::start_passive(sb, &args);
    agent.scrape_until("the endpoint witness up", |m| {
        sum(m, "pullwatch_source_up", &[("source", "endpoints")]) == 1.0
    });
    agent
}

/// The pull event of `image` (its last).
fn event_of(agent: &Agent, image: &str) -> serde_json::Value {
    let mut found = None;
    crate::common::wait::until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            found = agent
                .pull_events()
                .into_iter()
                .rfind(|e| e["event"] == "image_pull" && e["image"] == image);
            found.is_some()
        },
        || format!("no pull event for {image}: {}", agent.logs()),
    );
    found.unwrap()
}

fn bytes(m: &str, registry: &str, endpoint: &str) -> f64 {
    sum(
        m,
        "pullwatch_image_pull_endpoint_bytes_total",
        &[("registry", registry), ("endpoint", endpoint)],
    )
}

fn fallbacks(m: &str, registry: &str, endpoint: &str) -> f64 {
    sum(
        m,
        "pullwatch_image_pull_fallbacks_total",
        &[("registry", registry), ("endpoint", endpoint)],
    )
}

async fn hit_miss_down_and_failure(tap: bool) {
    let sb = Sandbox::start().await;
    let upstream = sb.registry.clone();
    let mut mirror = sb.start_registry("mirror");
    let m = mirror.host.clone();
    // The mirror holds only `a`; the upstream holds `a`, `b` and `c`.
    let image = |seed: &str| TestImage::build(seed, 300 << 10, "amd64");
    let a = sb.push(&image("a"), "team/a", "1");
    sb.push_to(&m, &image("a"), "team/a", "1");
    let b = sb.push(&image("b"), "team/b", "1");
    let c = sb.push(&image("c"), "team/c", "1");
    sb.set_hosts(&upstream, &with_mirror(&upstream, &m));
    let agent = agent(&sb, tap);

    // A hit: a pull much shorter than the poll interval still gets its endpoint.
    let r = pull_as(&sb.containerd_sock, &a, Some(("shop", "a")), T).await;
    assert_eq!(reason_of(&r), "success");
    let e = event_of(&agent, &a);
    let served = e["served_by"].as_str().unwrap_or_default();
    assert!(served.starts_with(&format!("{m} (")), "{e}");
    assert!(!served.contains(&upstream), "{e}");
    assert!(e["fell_back_from"].is_null(), "{e}");
    let metrics = agent.scrape_until("the mirror's bytes settled", |t| {
        bytes(t, &upstream, &m) > 300_000.0
    });
    assert_eq!(
        fallbacks(&metrics, &upstream, &m),
        0.0,
        "a hit is no fallback"
    );
    assert_eq!(bytes(&metrics, &upstream, &upstream), 0.0, "{metrics}");

    // A miss: the mirror answers 404, containerd goes on to the upstream.
    let r = pull_as(&sb.containerd_sock, &b, Some(("shop", "b")), T).await;
    assert_eq!(reason_of(&r), "success");
    let e = event_of(&agent, &b);
    assert_eq!(e["fell_back_from"], format!("{m} (answered)"), "{e}");
    assert!(
        e["served_by"]
            .as_str()
            .unwrap_or_default()
            .contains(&upstream),
        "{e}"
    );
    let metrics = agent.scrape_until("the upstream's bytes settled", |t| {
        bytes(t, &upstream, &upstream) > 300_000.0
    });
    assert_eq!(fallbacks(&metrics, &upstream, &m), 1.0, "{metrics}");

    // A failure names every endpoint containerd tried, in the event log and in /pulls.
    let missing = format!("{upstream}/team/missing:1");
    let r = pull_as(&sb.containerd_sock, &missing, Some(("shop", "missing")), T).await;
    assert_eq!(reason_of(&r), "not_found");
    if tap {
        // Only an observer of CRI calls records failures here (passive mode sees successes).
        let e = event_of(&agent, &missing);
        assert_eq!(e["endpoints_tried"], format!("{m}, {upstream}"), "{e}");
        let (_, pulls) = http_get(agent.addr, "/pulls").unwrap();
        let pulls: serde_json::Value = serde_json::from_str(&pulls).unwrap();
        let failed = pulls["finished"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["image"] == missing.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            failed["endpoints"]["tried"],
            serde_json::json!([m, upstream]),
            "{pulls}"
        );
    }
    // The mirror down: nothing answers there, the upstream serves.
    mirror.stop();
    let r = pull_as(&sb.containerd_sock, &c, Some(("shop", "c")), T).await;
    assert_eq!(reason_of(&r), "success");
    let e = event_of(&agent, &c);
    assert_eq!(e["fell_back_from"], format!("{m} (no_response)"), "{e}");
    let metrics = agent.scrape_until("the second pull from the upstream settled", |t| {
        bytes(t, &upstream, &upstream) > 600_000.0
    });
    assert_eq!(fallbacks(&metrics, &upstream, &m), 2.0, "{metrics}");

    let (_, pulls) = http_get(agent.addr, "/pulls").unwrap();
    assert!(pulls.contains("\"fell_back_from\""), "{pulls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_mode_names_the_mirror_that_served_and_each_fallback() {
    hit_miss_down_and_failure(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_tap_the_same_and_failures_name_the_endpoints_tried() {
    hit_miss_down_and_failure(true).await;
}

/// Two registries share one mirror (our fault registry, its layers at 1 MiB/s, so the two
/// pulls surely overlap): the mirror's bytes are `unknown`, never one registry's, and each
/// pull says its bytes were shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_registries_sharing_a_mirror_are_not_guessed() {
    shared_mirror(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_tap_concurrent_pulls_sharing_a_mirror_are_not_guessed() {
    shared_mirror(true).await;
}

async fn shared_mirror(tap: bool) {
    let sb = Sandbox::start().await;
    let one = sb.registry.clone();
    let two_registry = sb.start_registry("two");
    let two = two_registry.host.clone();
    let mirror = sb.fault.host();
    let layer = 2 << 20;
    sb.fault
        .add("team/x", "1", &TestImage::build("x", layer, "amd64"));
    sb.fault
        .add("team/y", "1", &TestImage::build("y", layer, "amd64"));
    sb.set_hosts(&one, &with_mirror(&one, &mirror));
    sb.set_hosts(&two, &with_mirror(&two, &mirror));
    let agent = agent(&sb, tap);
    let x = format!("{one}/throttled/team/x:1");
    let y = format!("{two}/throttled/team/y:1");
    let (rx, ry) = tokio::join!(
        pull_as(&sb.containerd_sock, &x, Some(("shop", "x")), T),
        pull_as(&sb.containerd_sock, &y, Some(("shop", "y")), T),
    );
    assert_eq!(
        (reason_of(&rx), reason_of(&ry)),
        ("success".into(), "success".into())
    );
    for image in [&x, &y] {
        let e = event_of(&agent, image);
        let served = e["served_by"].as_str().unwrap_or_default();
        assert!(
            served.starts_with(&format!("{mirror} (")) && served.contains(", shared)"),
            "{e}"
        );
        assert!(e["fell_back_from"].is_null(), "{e}");
    }
    let metrics = agent.scrape_until("the shared bytes settled", |t| {
        bytes(t, "unknown", &mirror) > 2.0 * layer as f64
    });
    assert_eq!(
        bytes(&metrics, &one, &mirror),
        0.0,
        "never guessed: {metrics}"
    );
    assert_eq!(
        bytes(&metrics, &two, &mirror),
        0.0,
        "never guessed: {metrics}"
    );
    assert_eq!(
        sum(&metrics, "pullwatch_image_pull_fallbacks_total", &[]),
        0.0
    );
}

/// No mirror configured (the sandbox's hosts.toml only name each registry's own server): the
/// witness reads nothing and exports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_mirror_the_witness_is_idle() {
    let sb = Sandbox::start().await;
    let a = sb.push(&TestImage::build("idle", 4096, "amd64"), "team/idle", "1");
    let agent = agent(&sb, false);
    let r = pull_as(&sb.containerd_sock, &a, None, T).await;
    assert_eq!(reason_of(&r), "success");
    let metrics = agent.scrape_until("the pull recorded", |t| {
        sum(t, "pullwatch_image_pulls_total", &[]) >= 1.0
    });
    assert!(
        !metrics.contains("pullwatch_image_pull_endpoint_bytes_total{"),
        "{metrics}"
    );
    assert!(agent.logs().contains("endpoint attribution idle"));
    let e = event_of(&agent, &a);
    assert!(e["served_by"].is_null(), "{e}");
}
