//! End to end with real Prometheus: it scrapes the real agent in the containerd + registry
//! harness, and PromQL over `pullwatch_image_pull_failures_total` returns the expected reasons.
//! Also checks the exposition with `promtool check metrics`.

use crate::common::agent::Agent;
use crate::common::image::TestImage;
use crate::common::prometheus::{query, start_prometheus};
use crate::common::sandbox::{Sandbox, require};
use crate::common::{pull_as, reason_of};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `label value -> sample value` of an instant query, keyed by `by_label`.
fn by_label(prom: SocketAddr, q: &str, by_label: &str) -> BTreeMap<String, f64> {
    query(prom, q)
        .iter()
        .map(|r| {
            let key = r["metric"][by_label].as_str().unwrap_or("").to_string();
            let val: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            (key, val)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_failures_by_reason() {
    let sb = Sandbox::start().await;
    let img = TestImage::build("prom", 2048, "amd64");
    let good = sb.push(&img, "team/app", "1");
    let good_label = good.clone();
    sb.fault.add("team/app", "1", &img);
    // --image-label: the by-image family has its own encoder; Prometheus and promtool check it.
    let agent = Agent::start(&sb, &["--image-label"]);
    let prom = start_prometheus(sb.dir.path(), agent.addr, "");
    let f = sb.fault.host();
    let s = &agent.proxy_sock;
    let t = Duration::from_secs(60);
    for (image, want) in [
        (good, "success"),
        (format!("{f}/ratelimitedhead/team/app:1"), "rate_limited"),
        (format!("{f}/ratelimitedhead/team/app:1"), "rate_limited"),
        (format!("{}/team/app:missing", sb.registry), "not_found"),
        (format!("{f}/forbidden/team/app:1"), "unauthorized"),
    ] {
        assert_eq!(
            reason_of(&pull_as(s, &image, Some(("prod", "web")), t).await),
            want
        );
    }

    let want: BTreeMap<String, f64> = [
        ("not_found", 1.0),
        ("rate_limited", 2.0),
        ("unauthorized", 1.0),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    let q = "sum by (reason) (pullwatch_image_pull_failures_total)";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = by_label(prom.addr, q, "reason");
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "PromQL {q} gave {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let backoff = by_label(
        prom.addr,
        "sum by (namespace) (pullwatch_image_pull_backoff)",
        "namespace",
    );
    // One pod, three failing images (the rate-limited one retried once): three pairs.
    assert_eq!(backoff.get("prod"), Some(&3.0), "{backoff:?}");
    let ok = by_label(
        prom.addr,
        "sum(pullwatch_image_pulls_total{result=\"success\"})",
        "",
    );
    assert_eq!(ok.get(""), Some(&1.0));
    let by_image = by_label(
        prom.addr,
        "sum by (result) (pullwatch_image_pulls_by_image_total)",
        "result",
    );
    assert_eq!(by_image.get("success"), Some(&1.0), "{by_image:?}");
    assert_eq!(by_image.get("failure"), Some(&4.0), "{by_image:?}");
    let rate_limited = by_label(
        prom.addr,
        "pullwatch_image_pulls_by_image_total{result=\"failure\"}",
        "image",
    );
    assert_eq!(
        rate_limited.get(&format!("{f}/ratelimitedhead/team/app:1")),
        Some(&2.0),
        "{rate_limited:?}"
    );
    let good = by_label(
        prom.addr,
        "pullwatch_image_pulls_by_image_total{result=\"success\"}",
        "image",
    );
    assert_eq!(good.keys().collect::<Vec<_>>(), [&good_label], "{good:?}");

    // promtool agrees the exposition is valid and follows the naming conventions.
    require("promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(agent.scrape().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {text}");
    assert!(
        !text.contains("pullwatch_"),
        "promtool lint findings: {text}"
    );
}
