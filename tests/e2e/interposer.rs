//! End to end: real containerd + registries, pulls through the real `pullwatch run` interposer;
//! asserts the classification of every fault the harness can provoke, and the metrics.

use crate::common::agent::{Agent, sum};
use crate::common::image::TestImage;
use crate::common::sandbox::{SLOW_LAYER_BYTES, Sandbox};
use crate::common::{message_of, pull_as, reason_of};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provokable_reason_is_classified_and_counted() {
    let sb = Sandbox::start().await;
    let img = TestImage::build("good", 2048, "amd64");
    let good = sb.push(&img, "team/app", "1.0");
    sb.fault.add("team/app", "1.0", &img);
    sb.fault.add(
        "team/slowapp",
        "1.0",
        &TestImage::build("slow", SLOW_LAYER_BYTES, "amd64"),
    );
    // Fresh images for faults that hit manifest or blob downloads, so nothing is already cached.
    sb.fault
        .add("team/rl", "1.0", &TestImage::build("rl", 2048, "amd64"));
    sb.fault.add(
        "team/cut",
        "1.0",
        &TestImage::build("cut", 64 * 1024, "amd64"),
    );
    let f = sb.fault.host();
    let reg = &sb.registry;
    let agent = Agent::start(&sb, &[]);
    let sock = agent.proxy_sock.clone();

    let cases: Vec<(String, &str, Duration)> = vec![
        (good.clone(), "success", Duration::from_secs(60)),
        (
            format!("{f}/ok/team/app:1.0"),
            "success",
            Duration::from_secs(60),
        ),
        (
            format!("{reg}/team/app:nope"),
            "not_found",
            Duration::from_secs(60),
        ),
        (
            format!("{reg}/team/missing:1"),
            "not_found",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/ratelimited/team/rl:1.0"),
            "rate_limited",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/ratelimitedhead/team/app:1.0"),
            "rate_limited",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/unauthorized/team/app:1.0"),
            "unauthorized",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/tokendenied/team/app:1.0"),
            "unauthorized",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/forbidden/team/app:1.0"),
            "unauthorized",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/error500/team/app:1.0"),
            "registry_error",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/error502/team/app:1.0"),
            "registry_error",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/error503/team/app:1.0"),
            "registry_error",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/drop/team/app:1.0"),
            "network",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/dropblob/team/cut:1.0"),
            "network",
            Duration::from_secs(60),
        ),
        (
            "127.0.0.1:1/team/app:1.0".to_string(),
            "network",
            Duration::from_secs(60),
        ),
        (
            "registry.pullwatch-e2e.invalid/team/app:1.0".to_string(),
            "dns",
            Duration::from_secs(60),
        ),
        (
            format!("localhost:{}/ok/team/app:1.0", sb.fault.addr.port()),
            "tls",
            Duration::from_secs(60),
        ),
        (
            "Team/App:1.0".to_string(),
            "invalid_reference",
            Duration::from_secs(60),
        ),
        (
            format!("{f}/hang/team/app:1.0"),
            "timeout",
            Duration::from_secs(2),
        ),
        (
            format!("{f}/slow/team/slowapp:1.0"),
            "timeout",
            Duration::from_millis(1500),
        ),
    ];
    let mut wrong = Vec::new();
    for (image, want, timeout) in &cases {
        let r = pull_as(&sock, image, Some(("e2e", "pod-a")), *timeout).await;
        eprintln!("CORPUS\t{}\t{}", reason_of(&r), message_of(&r));
        if reason_of(&r) != *want {
            wrong.push(format!(
                "{image}: want {want}, got {} ({})",
                reason_of(&r),
                message_of(&r)
            ));
        }
    }
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));

    let failures = cases.iter().filter(|c| c.1 != "success").count() as f64;
    // Recorded, and none left in flight (a pull leaves the gauge just after its record).
    let m = agent.scrape_until("every attempt recorded, none in flight", |m| {
        sum(m, "pullwatch_image_pull_duration_seconds_count", &[]) >= cases.len() as f64
            && sum(m, "pullwatch_image_pulls_in_flight", &[]) == 0.0
    });
    assert_eq!(
        sum(&m, "pullwatch_image_pulls_total", &[("result", "success")]),
        2.0,
        "{m}"
    );
    assert_eq!(
        sum(&m, "pullwatch_image_pulls_total", &[("result", "failure")]),
        failures
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pulls_total",
            &[("registry", reg.as_str()), ("result", "success")]
        ),
        1.0
    );
    for reason in [
        "not_found",
        "rate_limited",
        "unauthorized",
        "registry_error",
        "network",
        "dns",
        "tls",
        "invalid_reference",
        "timeout",
    ] {
        let want = cases.iter().filter(|c| c.1 == reason).count() as f64;
        assert_eq!(
            sum(
                &m,
                "pullwatch_image_pull_failures_total",
                &[("reason", reason)]
            ),
            want,
            "{reason}\n{m}"
        );
    }
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_failures_total",
            &[("registry", &f), ("reason", "rate_limited")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_failures_total",
            &[("registry", "docker.io"), ("reason", "invalid_reference")]
        ),
        0.0
    );
    assert_eq!(
        sum(&m, "pullwatch_image_pull_duration_seconds_count", &[]),
        cases.len() as f64
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_cri_requests_total",
            &[("method", "/runtime.v1.ImageService/PullImage")]
        ),
        cases.len() as f64
    );
    assert_eq!(sum(&m, "pullwatch_image_pulls_in_flight", &[]), 0.0);

    // The event log: one JSON line per attempt, with pod, image, duration and reason.
    let events = agent.pull_events();
    assert_eq!(events.len(), cases.len(), "{events:#?}");
    for (image, want, _) in &cases {
        // Look events up by image: a caller's reset can be recorded after the next pull began.
        let ev = events
            .iter()
            .find(|e| e["image"] == image.as_str())
            .unwrap_or_else(|| panic!("no event for {image}"));
        assert_eq!(ev["namespace"], "e2e");
        assert_eq!(ev["pod"], "pod-a");
        assert_eq!(ev["source"], "cri_proxy");
        assert!(
            ev["duration_seconds"].as_f64().is_some_and(|d| d > 0.0),
            "{ev}"
        );
        if *want == "success" {
            assert_eq!(ev["result"], "success");
            assert!(
                ev["image_ref"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("sha256:")),
                "{ev}"
            );
        } else {
            assert_eq!(
                (ev["result"].as_str(), ev["reason"].as_str()),
                (Some("failure"), Some(*want)),
                "{ev}"
            );
            assert!(ev["error"].as_str().is_some_and(|e| !e.is_empty()), "{ev}");
        }
    }
}
