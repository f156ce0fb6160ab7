//! Local demo: a sandboxed containerd, a real registry, a fault-injecting registry and the real
//! pullwatch agent as CRI interposer; fires a mix of good and failing pulls as three "pods",
//! then prints what pullwatch saw: a table of attempts with reasons, and the key metrics.
//!
//! Run with `sudo ./scripts/demo.sh` (it installs the Debian packages and builds first).
//! Needs root: containerd's CRI plugin and the private DNS namespace require it.

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use common::agent::Agent;
use common::image::TestImage;
use common::sandbox::Sandbox;
use common::{message_of, pull_as, reason_of};
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
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
    let agent = Agent::start(
        &sb,
        &[
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
        "{:<52} {:<20} {:>8}  {:<17} ERROR (end of message)",
        "IMAGE", "POD", "SECONDS", "RESULT"
    );
    for (image, pod, timeout) in &pulls {
        let rep = pull_as(&agent.proxy_sock, image, Some(*pod), *timeout).await;
        // The cause is at the end of a runtime's nested error: show the tail.
        let full = message_of(&rep);
        let chars: Vec<char> = full.chars().collect();
        let msg = if chars.len() > 70 {
            format!("…{}", chars[chars.len() - 70..].iter().collect::<String>())
        } else {
            full
        };
        println!(
            "{:<52} {:<20} {:>8.3}  {:<17} {}",
            image,
            format!("{}/{}", pod.0, pod.1),
            rep.duration.as_secs_f64(),
            reason_of(&rep),
            msg
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = agent.scrape();
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
    println!("\none event-log line (JSON, from the agent's log):");
    if let Some(ev) = agent
        .pull_events()
        .into_iter()
        .find(|e| e["reason"] == "rate_limited")
    {
        println!("  {ev}");
    }
}
