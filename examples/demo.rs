//! Local demo: a sandboxed containerd, a real registry, a fault-injecting registry and the real
//! pullwatch agent as CRI interposer; fires a mix of good and failing pulls as three "pods",
//! then prints what pullwatch saw: a table of attempts with the cause-bearing part of each error,
//! the key metrics, the duration histogram and where each successful pull's time went. The sandbox and the agent then stay up, so the
//! printed `/metrics` URL works, until Ctrl-C; `--once` stops right away (scripts, CI).
//!
//! Run with `./scripts/demo.sh [--once]` (as root or through sudo; it installs the Debian
//! packages and builds first).
//! Needs root: containerd's CRI plugin and the private DNS namespace require it.

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use common::agent::Agent;
use common::image::TestImage;
use common::sandbox::Sandbox;
use common::{message_of, pull_as, reason_of};
use pullwatch::core::classifier::around_cause;
use std::time::Duration;

/// Removes `image` from the runtime through `sock`, so its next pull downloads again.
async fn remove_image(sock: &std::path::Path, image: &str) {
    let Ok(mut c) = pullwatch::cri::client::CriClient::connect(sock, Duration::from_secs(5)).await
    else {
        return;
    };
    let request = pullwatch::cri::RemoveImageRequest {
        image: Some(pullwatch::cri::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
    };
    let _ = c.images.remove_image(request).await;
}

/// Prints the duration histogram of every (registry, result) as one line: the cumulative count
/// at each bucket bound where it grows.
fn print_histogram(metrics: &str) {
    let mut rows: std::collections::BTreeMap<(String, String), Vec<(String, f64)>> =
        Default::default();
    for (name, labels, value) in common::agent::parse_metrics(metrics) {
        if name != "pullwatch_image_pull_duration_seconds_bucket" {
            continue;
        }
        let key = (labels["registry"].clone(), labels["result"].clone());
        rows.entry(key)
            .or_default()
            .push((labels["le"].clone(), value));
    }
    println!(
        "\n--- pull duration histogram (pullwatch_image_pull_duration_seconds, cumulative counts) ---"
    );
    for ((registry, result), buckets) in rows {
        let mut cells = Vec::new();
        let mut seen = 0.0;
        for (le, n) in &buckets {
            if *n > seen && le != "+Inf" {
                cells.push(format!("≤{le}s: {n}"));
                seen = *n;
            }
        }
        let total = buckets.last().map_or(0.0, |(_, n)| *n);
        println!(
            "{registry:<24} {result:<8} {} (of {total})",
            cells.join(", ")
        );
    }
}

/// Prints where each successful pull's time went and what it downloaded or reused, from the
/// event log (the interposer's reply joined to containerd's content record).
fn print_anatomy(agent: &Agent) {
    println!(
        "\n--- where each successful pull's time went (event log; pullwatch_image_pull_phase_seconds) ---"
    );
    println!(
        "{:<52} {:>8} {:>9} {:>7} {:>11} {:>11}  LAYERS",
        "IMAGE", "RESOLVE", "DOWNLOAD", "UNPACK", "DOWNLOADED", "REUSED"
    );
    let secs = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |s| format!("{s:.3}s"));
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    for e in agent
        .pull_events()
        .into_iter()
        .filter(|e| e["event"] == "image_pull" && e["result"] == "success")
    {
        println!(
            "{:<52} {:>8} {:>9} {:>7} {:>10}B {:>10}B  {} downloaded, {} reused",
            e["image"].as_str().unwrap_or(""),
            secs(&e["resolve_seconds"]),
            secs(&e["download_seconds"]),
            secs(&e["unpack_seconds"]),
            num(&e["downloaded_bytes"]),
            num(&e["cached_bytes"]),
            num(&e["layers_downloaded"]),
            num(&e["layers_cached"]),
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let once = std::env::args().skip(1).any(|a| a == "--once");
    println!("starting sandbox: containerd + docker-registry + fault registry ...");
    let sb = Sandbox::start().await;
    let app = TestImage::build("demo-app", 256 * 1024, "amd64");
    let web = sb.push(&app, "shop/web", "1.4.2");
    sb.fault.add("shop/web", "1.4.2", &app);
    // Not pulled before, so the rate-limited manifest GET really happens.
    sb.fault.add(
        "shop/cart",
        "2.0",
        &TestImage::build("demo-cart", 4096, "amd64"),
    );
    sb.fault.add(
        "shop/slow",
        "1.0",
        &TestImage::build("demo-slow", 96 * 1024, "amd64"),
    );
    let containerd = sb.containerd_sock.to_str().expect("utf-8 path").to_string();
    // The fault registry plays Docker Hub's rate-limit preview endpoint for the quota probe.
    let probe = format!("http://{}/quota/probe", sb.fault.host());
    sb.fault.set_quota_remaining(7);
    // Interposer for attempts and causes, containerd source for bytes and progress, the probe
    // for pull quota left.
    // Info, not the tests' trace: the demo may stay up for hours; at info the log is one line
    // per pull (about 2 a minute with the repeating slow pull) and warnings.
    let agent = Agent::start(
        &sb,
        &[
            "--log-level",
            "info",
            "--backoff-expiry",
            "10m",
            "--containerd-socket",
            &containerd,
            "--ratelimit-probe",
            &probe,
            "--ratelimit-probe-interval",
            "2s",
        ],
    );
    println!("pullwatch is interposing on {}", agent.proxy_sock.display());
    println!("the agent runs as:\n  {}", agent.command_line.join(" "));
    println!("metrics: http://{}/metrics\n", agent.addr);

    let f = sb.fault.host();
    let r = &sb.registry;
    let t = Duration::from_secs(30);
    let pulls: Vec<(String, (&str, &str), Duration)> = vec![
        (web.clone(), ("shop", "web-0"), t),
        (format!("{r}/shop/web:1.4.3"), ("shop", "web-1"), t),
        (
            format!("{f}/ratelimited/shop/cart:2.0"),
            ("batch", "report-7"),
            t,
        ),
        (
            format!("{f}/ratelimitedhead/shop/web:1.4.2"),
            ("batch", "report-8"),
            t,
        ),
        (
            format!("{f}/unauthorized/shop/web:1.4.2"),
            ("payments", "api-0"),
            t,
        ),
        (
            format!("{f}/error503/shop/web:1.4.2"),
            ("payments", "api-1"),
            t,
        ),
        (
            "registry.corp.invalid/shop/web:1.4.2".to_string(),
            ("shop", "web-2"),
            t,
        ),
        ("Shop/Web:latest".to_string(), ("shop", "web-3"), t),
        (
            format!("{f}/slow/shop/slow:1.0"),
            ("batch", "etl-0"),
            Duration::from_secs(1),
        ),
        (format!("{f}/ok/shop/web:1.4.2"), ("shop", "web-4"), t),
    ];
    println!(
        "{:<52} {:<20} {:>8}  {:<17} ERROR (around its cause)",
        "IMAGE", "POD", "SECONDS", "RESULT"
    );
    for (image, pod, timeout) in &pulls {
        let rep = pull_as(&agent.proxy_sock, image, Some(*pod), *timeout).await;
        // A runtime's error nests its cause somewhere in a long message: show the words the
        // classifier decided on, with some context.
        let msg = around_cause(&message_of(&rep), 80);
        println!(
            "{:<52} {:<20} {:>8.3}  {:<17} {}",
            image,
            format!("{}/{}", pod.0, pod.1),
            rep.duration.as_secs_f64(),
            reason_of(&rep),
            msg
        );
    }
    // Successes wait for containerd's record of their content (their anatomy): wait for all.
    let metrics = agent.scrape_until("every attempt recorded", |m| {
        common::agent::sum(m, "pullwatch_image_pulls_total", &[]) >= pulls.len() as f64
    });
    println!("\n--- key metrics (from /metrics) ---");
    for line in metrics.lines() {
        let keep = [
            "pullwatch_image_pulls_total",
            "pullwatch_image_pull_failures_total",
            "pullwatch_image_pull_backoff{",
            "pullwatch_runtime_up",
            "pullwatch_registry_ratelimit_limit",
            "pullwatch_registry_ratelimit_remaining",
        ];
        if keep.iter().any(|k| line.starts_with(k)) {
            println!("{line}");
        }
    }
    println!("\nfix hint for the rate-limited pulls (`pullwatch explain`):");
    println!("  {}", pullwatch::core::reason::Reason::RateLimited.hint());
    print_histogram(&metrics);
    print_anatomy(&agent);
    println!("\none event-log line (JSON, from the agent's log):");
    if let Some(ev) = agent
        .pull_events()
        .into_iter()
        .find(|e| e["reason"] == "rate_limited")
    {
        println!("  {ev}");
    }
    if once {
        return;
    }
    // A slow pull that repeats while the demo stays up: 24 MiB at 1 MiB/s, removed from the
    // runtime after each pull so the next one downloads again, so `pullwatch pulls` has a pull
    // in progress to show whenever one looks.
    sb.fault.add(
        "shop/big",
        "1.0",
        &TestImage::build("demo-big", 24 << 20, "amd64"),
    );
    let slow_image = format!("{f}/throttled/shop/big:1.0");
    let slow = tokio::spawn({
        let (sock, image) = (agent.proxy_sock.clone(), slow_image.clone());
        async move {
            for round in 0u64.. {
                let pod = format!("big-{round}");
                pull_as(
                    &sock,
                    &image,
                    Some(("shop", &pod)),
                    Duration::from_secs(300),
                )
                .await;
                remove_image(&sock, &image).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    });
    // Printed with the binary's full path: it is not on PATH.
    let bin = common::agent::pullwatch_bin();
    let bin = bin.display();
    println!(
        "
a slow pull of {slow_image} repeats (about 25 s each, then 5 s pause): watch it with
  {bin} pulls --url http://{}",
        agent.addr
    );
    println!(
        "
the sandbox and the agent stay up until Ctrl-C:
  curl http://{}/metrics
  {bin} pull --runtime-socket {} {web}
  {bin} explain 'toomanyrequests: You have reached your pull rate limit'",
        agent.addr,
        agent.proxy_sock.display(),
    );
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("demo: waiting for Ctrl-C failed ({e}); stopping");
    }
    slow.abort();
    println!("stopping: agent, containerd and registries");
}
