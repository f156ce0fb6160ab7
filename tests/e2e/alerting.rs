//! End to end for alerts and dashboards: real Prometheus loads the shipped rules (with `for:`
//! shortened) and scrapes the real agent while the harness causes failures; the chosen alerts
//! reach `firing`, real Alertmanager delivers them to a webhook of the test with labels and
//! runbook URL intact, and every dashboard and alert expression parses and returns data.

use crate::common::agent::{Agent, sum};
use crate::common::dashboard_exprs;
use crate::common::image::TestImage;
use crate::common::prometheus::{Webhook, query, start_alertmanager, start_prometheus};
use crate::common::sandbox::Sandbox;
use crate::common::{pull_as, reason_of};
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The shipped rules with every `for:` cut to 2 s, so the test needs seconds, not minutes.
fn fast_rules() -> String {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/pullwatch-rules.yml"
    ))
    .unwrap();
    rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                format!("{}for: 2s", &l[..l.len() - l.trim_start().len()])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn firing(prom: std::net::SocketAddr) -> Vec<String> {
    let (_, body) = crate::common::agent::http_get(prom, "/api/v1/alerts").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_reach_alertmanager_and_every_query_returns_data() {
    let sb = Sandbox::start().await;
    let good = sb.push(
        &TestImage::build("alert-good", 2048, "amd64"),
        "team/app",
        "1",
    );
    sb.fault.add(
        "team/app",
        "1",
        &TestImage::build("alert-fault", 2048, "amd64"),
    );
    sb.fault.add(
        "team/big",
        "1",
        &TestImage::build("alert-big", 3 << 20, "amd64"),
    );
    let ctd = sb.containerd_sock.to_str().unwrap().to_string();
    // A mirror in front of the sandbox's registry that lacks the image: the good pull falls
    // back to the upstream, so the mirror panels have data.
    let mirror = sb.start_registry("mirror");
    sb.set_hosts(
        &sb.registry,
        &format!(
            "server = \"http://{r}\"\n[host.\"http://{m}\"]\n",
            r = sb.registry,
            m = mirror.host
        ),
    );
    let certs = sb.certs_dir().to_str().unwrap().to_string();
    // Every source on, so every dashboard panel has data: the probe reads an exhausted quota,
    // the Kubernetes API source watches a scripted API server.
    let probe = format!("http://{}/ratelimitedhead/probe:1", sb.fault.host());
    let api = crate::common::kube_api::KubeApi::start().await;
    let kubeconfig = api.kubeconfig(sb.dir.path());
    let agent = Agent::start(
        &sb,
        &[
            "--containerd-socket",
            &ctd,
            "--ingest-poll-interval",
            "200ms",
            "--runtime-status-interval",
            "1s",
            "--ratelimit-probe",
            &probe,
            "--ratelimit-probe-interval",
            "1s",
            "--kube",
            "--node-name",
            "node-a",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--registry-config-path",
            &certs,
        ],
    );
    let dir = sb.dir.path();
    let hook = Webhook::start();
    let am = start_alertmanager(
        dir,
        &format!(
            "route:\n  receiver: test\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: http://{}/\n        send_resolved: false\n",
            hook.addr
        ),
    );
    std::fs::write(dir.join("rules.yml"), fast_rules()).unwrap();
    let prom = start_prometheus(
        dir,
        agent.addr,
        &format!(
            "rule_files:\n  - {}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n",
            dir.join("rules.yml").display(),
            am.addr
        ),
    );

    // A burst of rate-limited pulls from three pods of one namespace, plus other traffic.
    let f = sb.fault.host();
    let s = &agent.proxy_sock;
    for pod in ["report-1", "report-2", "report-3"] {
        let r = pull_as(
            s,
            &format!("{f}/ratelimitedhead/team/app:1"),
            Some(("batch", pod)),
            T,
        )
        .await;
        assert_eq!(reason_of(&r), "rate_limited");
    }
    assert_eq!(
        reason_of(
            &pull_as(
                s,
                &format!("{}/team/app:gone", sb.registry),
                Some(("web", "w")),
                T
            )
            .await
        ),
        "not_found"
    );
    assert_eq!(
        reason_of(&pull_as(s, &good, Some(("web", "w")), T).await),
        "success"
    );
    assert_eq!(
        reason_of(
            &pull_as(
                s,
                &format!("{f}/throttled/team/big:1"),
                Some(("web", "big")),
                T
            )
            .await
        ),
        "success"
    );
    agent.scrape_until("bytes of the throttled pull", |m| {
        sum(m, "pullwatch_image_pull_bytes_total", &[]) > 0.0
    });
    agent.scrape_until("the fallback past the mirror and its bytes", |m| {
        sum(m, "pullwatch_image_pull_fallbacks_total", &[]) == 1.0
            && sum(m, "pullwatch_image_pull_endpoint_bytes_total", &[]) > 0.0
    });

    // (2) The chosen alerts fire in Prometheus...
    let want = [
        "ImagePullBackOffSpike",
        "RegistryRateLimited",
        "RateLimitNearlyExhausted",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = firing(prom.addr);
        if want.iter().all(|w| now.iter().any(|n| n == w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts firing: {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ... and Alertmanager delivers them with labels and runbook URL intact.
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let got: Vec<Value> = hook
            .received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .collect();
        if want
            .iter()
            .all(|w| got.iter().any(|a| a["labels"]["alertname"] == *w))
        {
            break got;
        }
        assert!(Instant::now() < deadline, "webhook got {got:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let spike = delivered
        .iter()
        .find(|a| a["labels"]["alertname"] == "ImagePullBackOffSpike")
        .unwrap();
    assert_eq!(
        (
            spike["labels"]["namespace"].as_str(),
            spike["labels"]["reason"].as_str()
        ),
        (Some("batch"), Some("rate_limited"))
    );
    assert_eq!(spike["labels"]["severity"], "warning");
    assert_eq!(spike["status"], "firing");
    assert!(
        spike["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("3 pods in batch"),
        "{spike}"
    );
    let rl = delivered
        .iter()
        .find(|a| a["labels"]["alertname"] == "RegistryRateLimited")
        .unwrap();
    assert_eq!(rl["labels"]["registry"], f.as_str());
    let nearly = delivered
        .iter()
        .find(|a| a["labels"]["alertname"] == "RateLimitNearlyExhausted")
        .unwrap();
    assert_eq!(nearly["labels"]["registry"], f.as_str());
    assert!(
        nearly["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("has 0% of its"),
        "{nearly}"
    );
    for a in [spike, rl, nearly] {
        let name = a["labels"]["alertname"].as_str().unwrap();
        assert_eq!(
            a["annotations"]["runbook_url"].as_str().unwrap(),
            format!("docs/runbooks/{name}.md")
        );
    }

    // What one agent with every source on costs Prometheus here (README: Running at fleet
    // scale): its series, and the registries they cover.
    let m = agent.scrape();
    let series = m
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let registries: std::collections::BTreeSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("pullwatch_image_pulls_total{"))
        .filter_map(|l| l.split("registry=\"").nth(1)?.split('"').next())
        .collect();
    eprintln!(
        "series exported by one agent with every source on, pulls from {} registries: {series}",
        registries.len()
    );
    assert!(series < 2_000, "{series} series");
    // (1) Every dashboard expression returns data; every alert expression parses.
    let mut empty = Vec::new();
    for e in dashboard_exprs() {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$node", ".*")
            .replace("$cluster", ".*")
            .replace("$registry", ".*");
        if query(prom.addr, &q).is_empty() {
            empty.push(q);
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    let rules = std::fs::read_to_string(dir.join("rules.yml")).unwrap();
    let exprs = crate::common::prometheus::rule_exprs(&rules);
    // One rule per runbook: every alert has one, and no runbook is left without its alert.
    let runbooks = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbooks"))
        .unwrap()
        .count();
    assert_eq!(exprs.len(), runbooks);
    for (name, expr) in &exprs {
        let data = query(prom.addr, expr);
        if want.contains(&name.as_str()) {
            assert!(!data.is_empty(), "{name} returns no data");
        }
    }
}
