//! End to end for pull anatomy (issue #12) against real containerd and real registries: where a
//! pull's time went (resolve, download, unpack), what it downloaded versus reused, exact numbers
//! in passive mode for pulls faster than the ingest poll, and one `registry` label per pull.

use crate::common::agent::{Agent, parse_metrics, sum};
use crate::common::fault_registry::{SLOW_MANIFEST_DELAY, THROTTLED_BYTES_PER_SEC};
use crate::common::image::{Layer, TestImage};
use crate::common::sandbox::Sandbox;
use crate::common::{message_of, pull_as, reason_of};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(120);
/// Longer than pullwatch's join window (an interposed success waits up to 2 s for containerd's
/// record of its content): after it, nothing of a pull is still waiting to be counted.
const JOIN_SETTLE: Duration = Duration::from_millis(2500);

/// Pulls `image` through `sock`, asserting success; returns the caller's measured time.
async fn pull_ok(sock: &std::path::Path, image: &str) -> Duration {
    let t0 = Instant::now();
    let r = pull_as(sock, image, Some(("shop", "web")), T).await;
    assert_eq!(reason_of(&r), "success", "{image}: {}", message_of(&r));
    t0.elapsed()
}

/// Sum and count of `pullwatch_image_pull_phase_seconds` for `phase` on `registry`.
fn phase(m: &str, registry: &str, phase: &str) -> (f64, f64) {
    let l = [("registry", registry), ("phase", phase)];
    (
        sum(m, "pullwatch_image_pull_phase_seconds_sum", &l),
        sum(m, "pullwatch_image_pull_phase_seconds_count", &l),
    )
}

/// The pull event lines of successes.
fn successes(agent: &Agent) -> Vec<serde_json::Value> {
    agent
        .pull_events()
        .into_iter()
        .filter(|e| e["event"] == "image_pull" && e["result"] == "success")
        .collect()
}

/// Every registry label value on the pull families, so a test can assert there is only one.
fn registries(m: &str) -> Vec<String> {
    let mut out: Vec<String> = parse_metrics(m)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("pullwatch_image_pull"))
        .filter_map(|(_, labels, _)| labels.get("registry").cloned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_pulls_faster_than_the_poll_get_exact_bytes_and_duration() {
    let sb = Sandbox::start().await;
    // The default ingest poll (1 s): these pulls finish between two polls.
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start_passive(&sb, &["--containerd-socket", &sock]);
    agent.scrape_until("containerd watched", |m| {
        sum(m, "pullwatch_runtime_up", &[("source", "containerd")]) == 1.0
    });
    let mut expected_bytes = 0;
    for (n, (seed, size)) in [("fast-2m", 2 << 20), ("fast-12m", 12 << 20)]
        .into_iter()
        .enumerate()
    {
        let img = TestImage::build(seed, size, "amd64");
        let image = sb.push(&img, &format!("team/{seed}"), "1");
        let caller = pull_ok(&sb.containerd_sock, &image).await;
        expected_bytes += img.total_bytes();
        let pulls = (n + 1) as f64;
        let m = agent.scrape_until("the passive success", |m| {
            sum(m, "pullwatch_image_pulls_total", &[]) >= pulls
        });
        let registry = sb.registry.as_str();
        assert_eq!(
            sum(
                &m,
                "pullwatch_image_pull_bytes_total",
                &[("registry", registry)]
            ),
            expected_bytes as f64,
            "every byte of every blob, however fast the pull:\n{m}"
        );
        let ev = successes(&agent);
        let ev = ev.last().expect("a pull event");
        let took = ev["duration_seconds"].as_f64().expect("a duration");
        let caller = caller.as_secs_f64();
        let error = (took - caller).abs();
        eprintln!("passive {seed}: caller {caller:.3}s, pullwatch {took:.3}s");
        assert!(
            error <= 0.1 || error <= caller * 0.5,
            "passive duration {took:.3}s vs the caller's {caller:.3}s"
        );
        assert_eq!(ev["downloaded_bytes"], img.total_bytes());
        assert_eq!(
            (
                ev["layers_downloaded"].as_u64(),
                ev["layers_cached"].as_u64()
            ),
            (Some(1), Some(0))
        );
        assert!(
            ev["download_seconds"].is_f64() && ev["unpack_seconds"].is_f64(),
            "{ev}"
        );
        assert!(
            ev.get("resolve_seconds").is_none(),
            "no call start in passive mode: {ev}"
        );
        // The download-progress gauges may show the bare host for a registry's very first pull
        // in passive mode when a poll catches it in flight (containerd's download labels drop
        // the port; README, "Pull anatomy"): every family of the finished pull carries host:port.
        let finished: String = m
            .lines()
            .filter(|l| {
                ![
                    "pullwatch_image_pull_bytes_in_flight",
                    "pullwatch_image_pull_downloads_in_flight",
                    "pullwatch_image_pull_receive_bytes_per_second",
                    "pullwatch_image_pull_stalled",
                ]
                .iter()
                .any(|g| l.starts_with(g))
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            registries(&finished),
            [registry],
            "one registry label (host:port):\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_layer_is_a_cache_hit_and_downloaded_once() {
    let sb = Sandbox::start().await;
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start_passive(&sb, &["--containerd-socket", &sock]);
    let (base, extra) = (
        Layer::noise("base", 3 << 20),
        Layer::noise("extra", 1 << 20),
    );
    let first = TestImage::with_layers(std::slice::from_ref(&base), "amd64", 0);
    let second = TestImage::with_layers(&[base.clone(), extra], "amd64", 0);
    let one = sb.push(&first, "team/first", "1");
    let two = sb.push(&second, "team/second", "1");
    pull_ok(&sb.containerd_sock, &one).await;
    agent.scrape_until("the first pull", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 1.0
    });
    pull_ok(&sb.containerd_sock, &two).await;
    let m = agent.scrape_until("the second pull", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 2.0
    });
    let registry = sb.registry.as_str();
    let r = |cache| {
        sum(
            &m,
            "pullwatch_image_pull_layers_total",
            &[("registry", registry), ("cache", cache)],
        )
    };
    assert_eq!((r("miss"), r("hit")), (2.0, 1.0), "{m}");
    let shared = base.gz.len() as f64;
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_cached_bytes_total",
            &[("registry", registry)]
        ),
        shared
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pull_bytes_total",
            &[("registry", registry)]
        ),
        (first.total_bytes() + second.total_bytes()) as f64 - shared,
        "the shared layer is downloaded once"
    );
    let ev = successes(&agent);
    assert_eq!(
        (
            ev[1]["layers_downloaded"].as_u64(),
            ev[1]["layers_cached"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_interposer_each_phase_shows_where_the_time_went() {
    let sb = Sandbox::start().await;
    let host = sb.fault.host();
    let throttled = TestImage::build("phase-download", 4 << 20, "amd64");
    sb.fault.add("team/dl", "1", &throttled);
    sb.fault.add(
        "team/mf",
        "1",
        &TestImage::build("phase-resolve", 64 << 10, "amd64"),
    );
    // 256 MiB of zeros: a download of about 256 KiB, then a long unpack.
    sb.fault.add(
        "team/zeros",
        "1",
        &TestImage::with_layers(&[Layer::zeros(256 << 20)], "amd64", 0),
    );
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start(
        &sb,
        &[
            "--containerd-socket",
            &sock,
            "--ingest-poll-interval",
            "200ms",
        ],
    );

    // Download: 4 MiB at 1 MiB/s. While it runs, the progress gauges carry host:port too.
    let image = format!("{host}/throttled/team/dl:1");
    let (sock, img) = (agent.proxy_sock.clone(), image.clone());
    let pull = tokio::spawn(async move { pull_ok(&sock, &img).await });
    agent.scrape_until("the download in flight, under host:port", |m| {
        sum(
            m,
            "pullwatch_image_pull_downloads_in_flight",
            &[("registry", &host)],
        ) >= 1.0
    });
    pull.await.unwrap();
    let m = agent.scrape_until("the first pull's phases", |m| {
        phase(m, &host, "download").1 >= 1.0
    });
    let expected = (4 << 20) as f64 / THROTTLED_BYTES_PER_SEC as f64;
    let (download, _) = phase(&m, &host, "download");
    assert!(
        download >= expected * 0.75 && download <= expected + 2.0,
        "download phase {download:.2}s for 4 MiB at 1 MiB/s"
    );
    let (resolve, _) = phase(&m, &host, "resolve");
    eprintln!("throttled 4 MiB: resolve {resolve:.3}s, download {download:.3}s");
    assert!(resolve < 1.0, "resolve {resolve:.2}s on loopback");

    // Resolve: every manifest answer delayed.
    pull_ok(&agent.proxy_sock, &format!("{host}/slowmanifest/team/mf:1")).await;
    let m = agent.scrape_until("the second pull's phases", |m| {
        phase(m, &host, "resolve").1 >= 2.0
    });
    let resolve2 = phase(&m, &host, "resolve").0 - resolve;
    assert!(
        resolve2 >= SLOW_MANIFEST_DELAY.as_secs_f64(),
        "resolve {resolve2:.2}s with a manifest delay of {SLOW_MANIFEST_DELAY:?}"
    );

    // Unpack: a tiny download that expands to 256 MiB.
    pull_ok(&agent.proxy_sock, &format!("{host}/ok/team/zeros:1")).await;
    agent.scrape_until("the third pull's phases", |m| {
        phase(m, &host, "unpack").1 >= 3.0
    });
    let ev = successes(&agent);
    assert_eq!(ev.len(), 3, "{ev:?}");
    let z = &ev[2];
    let part = |k: &str| z[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {z}"));
    let (unpack, total) = (part("unpack_seconds"), part("duration_seconds"));
    eprintln!("slow manifest: resolve {resolve2:.3}s; zeros: {z}");
    assert!(
        unpack > part("download_seconds")
            && unpack > part("resolve_seconds")
            && unpack >= total * 0.5,
        "unpack should dominate: {z}"
    );
    for e in &ev {
        assert_eq!(e["source"], "cri_proxy");
        assert!(e["downloaded_bytes"].as_u64().is_some_and(|b| b > 0), "{e}");
    }
    assert_eq!(ev[0]["downloaded_bytes"], throttled.total_bytes());
    let m = agent.scrape();
    assert_eq!(
        registries(&m),
        std::slice::from_ref(&host),
        "one registry label (host:port):\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_image_from_another_registry_is_all_reused_and_joined_at_once() {
    let sb = Sandbox::start().await;
    let img = TestImage::build("mirrored", 1 << 20, "amd64");
    let first = sb.push(&img, "team/mirrored", "1");
    sb.fault.add("team/mirrored", "1", &img);
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start(&sb, &["--containerd-socket", &sock]);
    pull_ok(&agent.proxy_sock, &first).await;
    let mirror = format!("{}/ok/team/mirrored:1", sb.fault.host());
    pull_ok(&agent.proxy_sock, &mirror).await;
    // Joined as soon as containerd's record arrives, well before the 2 s join window ends.
    let m = agent.scrape_until_within(Duration::from_millis(1500), "both pulls", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 2.0
    });
    let host = sb.fault.host();
    let by = [("registry", host.as_str())];
    assert_eq!(sum(&m, "pullwatch_image_pull_bytes_total", &by), 0.0, "{m}");
    assert_eq!(
        sum(&m, "pullwatch_image_pull_cached_bytes_total", &by),
        img.total_bytes() as f64
    );
    let ev = successes(&agent);
    assert_eq!(ev[1]["image"], mirror.as_str());
    assert_eq!(
        (
            ev[1]["layers_downloaded"].as_u64(),
            ev[1]["layers_cached"].as_u64()
        ),
        (Some(0), Some(1)),
        "{}",
        agent.logs()
    );
    // A re-pull of the same name: containerd updates the record (it also updates its labels
    // right after each pull, which is no pull): one join, all reused, nothing counted twice.
    pull_ok(&agent.proxy_sock, &mirror).await;
    let m = agent.scrape_until_within(Duration::from_millis(1500), "the re-pull", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) >= 3.0
    });
    tokio::time::sleep(JOIN_SETTLE).await;
    let m2 = agent.scrape();
    for family in [
        "pullwatch_image_pulls_total",
        "pullwatch_image_pull_layers_total",
    ] {
        assert_eq!(
            sum(&m, family, &by),
            sum(&m2, family, &by),
            "{family} moved later"
        );
    }
    let hits = [("registry", host.as_str()), ("cache", "hit")];
    assert_eq!(
        sum(&m2, "pullwatch_image_pull_layers_total", &hits),
        2.0,
        "{m2}"
    );
    let ev = successes(&agent);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[2]["layers_cached"].as_u64(), Some(1), "{}", ev[2]);
}
