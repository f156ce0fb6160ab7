//! Benchmarks for issue "prove it is safe in kubelet's path", measured side by side in one run
//! against real containerd in the sandbox harness. Prints ratios; run with
//! `sudo cargo bench --bench proxy` (needs the same packages and root as the e2e tests).
//! Sizes can be reduced for a quick look: `PULLWATCH_BENCH_SCALE=0.1 cargo bench --bench proxy`.
//!
//! Latency is measured on three paths, interleaved call by call: direct to containerd, through a
//! byte-for-byte relay process (this binary re-executed as `relay LISTEN UPSTREAM`: one extra
//! unix-socket hop and no HTTP/2 processing, the floor any interposer process pays), and through
//! pullwatch.

#[path = "../tests/common/mod.rs"]
mod common;

use common::agent::Agent;
use common::image::TestImage;
use common::sandbox::Sandbox;
use pullwatch::core::attempt::{Outcome, PodRef, PullAttempt, Source};
use pullwatch::core::classifier::classify_message;
use pullwatch::core::reference::ImageRef;
use pullwatch::cri::{ImageSpec, ImageStatusRequest, ListImagesRequest, VersionRequest};
use pullwatch::cri_client::CriClient;
use pullwatch::recorder::{Recorder, RecorderConfig};
use std::time::{Duration, Instant, SystemTime};
use tonic::Code;

fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("PULLWATCH_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(10)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (utime + stime) in clock ticks, and RSS in KiB, of a process.
fn proc_stats(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (cpu, rss)
}

async fn unary(c: &mut CriClient, which: usize, image: &str) {
    match which {
        0 => drop(c.runtime.version(VersionRequest::default()).await.unwrap()),
        1 => drop(
            c.images
                .list_images(ListImagesRequest::default())
                .await
                .unwrap(),
        ),
        _ => drop(
            c.images
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap(),
        ),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = if args.get(1).is_some_and(|a| a == "relay") {
        // The relay, like pullwatch's interposer, runs on one thread with its own runtime.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    }
    .enable_all()
    .build()
    .unwrap();
    match args.get(1..4) {
        Some([mode, listen, upstream]) if mode == "relay" => rt.block_on(relay(listen, upstream)),
        _ => rt.block_on(bench()),
    }
}

/// Forwards every connection on `listen` to `upstream` byte for byte, until killed.
async fn relay(listen: &str, upstream: &str) {
    let listener = tokio::net::UnixListener::bind(listen).unwrap();
    loop {
        let (mut down, _) = listener.accept().await.unwrap();
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            let mut up = tokio::net::UnixStream::connect(&upstream).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    }
}

/// The relay process; killed when dropped.
struct Relay {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl Relay {
    fn start(dir: &std::path::Path, upstream: &std::path::Path) -> Self {
        let sock = dir.join("relay.sock");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("relay")
            .arg(&sock)
            .arg(upstream)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "relay did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, sock }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn bench() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/proxy.rs measures; run it with `cargo bench --bench proxy`");
        return;
    }
    // `cargo bench --bench proxy -- in-process`: only the parts that need no containerd (no root).
    if !std::env::args().any(|a| a == "in-process") {
        against_containerd().await;
    }
    in_process();
}

/// 1–4: latency, throughput, large pull and memory, with real containerd and the real agent.
async fn against_containerd() {
    let sb = Sandbox::start().await;
    let image = sb.push(&TestImage::build("bench", 4096, "amd64"), "bench/app", "1");
    let agent = Agent::start(&sb, &["--log-level", "warn"]);
    let t = Duration::from_secs(60);
    common::pull_as(&sb.containerd_sock, &image, None, t).await;
    let mut direct = CriClient::connect(&sb.containerd_sock, t).await.unwrap();
    let mut proxied = CriClient::connect(&agent.proxy_sock, t).await.unwrap();
    let relay = Relay::start(sb.dir.path(), &sb.containerd_sock);
    let mut relayed = CriClient::connect(&relay.sock, t).await.unwrap();
    let pid = agent.pid();
    let (_, rss_idle) = proc_stats(pid);
    println!("machine: {} cores, {}", num_cores(), kernel());
    println!("agent RSS idle: {:.1} MiB", rss_idle as f64 / 1024.0);

    // 1. Unary latency, same client code, interleaved direct / byte relay / pullwatch.
    println!(
        "\n## unary latency, interleaved (n per path per method: {})",
        scale(3000)
    );
    for (which, name) in [(0, "Version"), (1, "ListImages"), (2, "ImageStatus")] {
        let n = scale(3000);
        let (mut d, mut r, mut p) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for _ in 0..200 {
            unary(&mut direct, which, &image).await;
            unary(&mut relayed, which, &image).await;
            unary(&mut proxied, which, &image).await;
        }
        for _ in 0..n {
            for (client, samples) in [
                (&mut direct, &mut d),
                (&mut relayed, &mut r),
                (&mut proxied, &mut p),
            ] {
                let s = Instant::now();
                unary(client, which, &image).await;
                samples.push(s.elapsed());
            }
        }
        for v in [&mut d, &mut r, &mut p] {
            v.sort();
        }
        let (d50, d99) = (pct(&d, 0.5), pct(&d, 0.99));
        let (r50, r99) = (pct(&r, 0.5), pct(&r, 0.99));
        let (p50, p99) = (pct(&p, 0.5), pct(&p, 0.99));
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "{name:<12} p50/p99 direct {:.1}/{:.1}us | relay {:.1}/{:.1}us | pullwatch {:.1}/{:.1}us",
            us(d50),
            us(d99),
            us(r50),
            us(r99),
            us(p50),
            us(p99),
        );
        println!(
            "{:<12} ratio to direct p50/p99: relay {:.3}/{:.3}, pullwatch {:.3}/{:.3} | added p50: relay {:.1}us, pullwatch {:.1}us ({:.1}us beyond the relay)",
            "",
            ratio(r50, d50),
            ratio(r99, d99),
            ratio(p50, d50),
            ratio(p99, d99),
            us(r50) - us(d50),
            us(p50) - us(d50),
            us(p50) - us(r50),
        );
    }
    drop(relayed);
    drop(relay);

    // 2. Throughput with concurrent clients, and the agent's CPU per 1000 calls.
    let secs = 3.0 * scale(100) as f64 / 100.0;
    for (label, sock) in [
        ("direct", sb.containerd_sock.clone()),
        ("proxied", agent.proxy_sock.clone()),
    ] {
        let (cpu0, _) = proc_stats(pid);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let sock = sock.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = CriClient::connect(&sock, Duration::from_secs(10))
                    .await
                    .unwrap();
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    c.runtime.version(VersionRequest::default()).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let el = start.elapsed().as_secs_f64();
        let (cpu1, _) = proc_stats(pid);
        let ticks = cpu1 - cpu0;
        let agent_cpu_ms = ticks as f64 * 1000.0 / clk_tck();
        print!(
            "\n## throughput {label}: {:.0} Version calls/s (32 clients, {el:.1}s)",
            total as f64 / el
        );
        if label == "proxied" {
            print!(
                "; agent CPU {:.1} ms per 1000 calls",
                agent_cpu_ms / (total as f64 / 1000.0)
            );
        }
        println!();
    }

    // 3. A large pull through the interposer vs direct (two distinct images of the same size).
    let size = scale(64) << 20;
    let a = sb.push(
        &TestImage::build("big-a", size, "amd64"),
        "bench/big-a",
        "1",
    );
    let b = sb.push(
        &TestImage::build("big-b", size, "amd64"),
        "bench/big-b",
        "1",
    );
    let s = Instant::now();
    assert_eq!(
        common::reason_of(&common::pull_as(&sb.containerd_sock, &a, None, t).await),
        "success"
    );
    let d = s.elapsed();
    let s = Instant::now();
    assert_eq!(
        common::reason_of(&common::pull_as(&agent.proxy_sock, &b, Some(("bench", "p")), t).await),
        "success"
    );
    let p = s.elapsed();
    println!(
        "\n## large pull ({} MiB layer): direct {:.2}s, proxied {:.2}s, ratio {:.3}",
        size >> 20,
        d.as_secs_f64(),
        p.as_secs_f64(),
        p.as_secs_f64() / d.as_secs_f64()
    );

    // 4. Memory after a flood of distinct images and pods through the interposer (not_found).
    let n = scale(10_000);
    let start = Instant::now();
    for i in 0..n {
        let img = format!("{}/flood/img-{i}:1", sb.registry);
        let pod = format!("pod-{}", i % 1000);
        common::pull_as(&agent.proxy_sock, &img, Some(("flood", &pod)), t).await;
    }
    let (_, rss_loaded) = proc_stats(pid);
    let m = agent.scrape();
    let series = m.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "\n## flood: {n} distinct images, 1000 pods in {:.1}s; agent RSS {:.1} MiB (idle {:.1} MiB); {series} series exported",
        start.elapsed().as_secs_f64(),
        rss_loaded as f64 / 1024.0,
        rss_idle as f64 / 1024.0
    );
}

/// 5. In-process: /metrics render with ~10 000 series, classifier throughput.
fn in_process() {
    let cfg = RecorderConfig {
        image_label_cap: Some(10_000),
        max_registries: 1000,
        max_namespaces: 1000,
        ..Default::default()
    };
    let r = Recorder::new(&cfg).unwrap();
    for i in 0..10_000 {
        let image = format!("reg{}.example.com/team/app-{i}:1", i % 50);
        r.record(&PullAttempt {
            reference: ImageRef::parse(&image).ok(),
            image,
            pod: Some(PodRef {
                namespace: format!("ns-{}", i % 100),
                name: format!("p{i}"),
                uid: String::new(),
            }),
            started_at: SystemTime::now(),
            duration: Some(Duration::from_millis(500)),
            outcome: Outcome::failure(Code::Unknown, "x: not found"),
            source: Source::CriProxy,
            trace: None,
        });
    }
    let text = r.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let total = ms_per_run(|| drop(std::hint::black_box(r.render())));
    let refresh = ms_per_run(|| r.refresh());
    let encode = ms_per_run(|| drop(std::hint::black_box(r.metrics().render())));
    println!(
        "\n## /metrics render: {series} series in {total:.2} ms \
         (backoff refresh over 10 000 pods {refresh:.2} ms, gather + encode {encode:.2} ms)"
    );
    // Side by side: the same image series as a prometheus IntCounterVec (how they were kept
    // before src/sinks/image_counts.rs), through the crate's gather() and text encoder.
    let reg = prometheus::Registry::new();
    let vec = prometheus::IntCounterVec::new(
        prometheus::Opts::new("pullwatch_image_pulls_by_image_total", "by image"),
        &["image", "result"],
    )
    .unwrap();
    reg.register(Box::new(vec.clone())).unwrap();
    for i in 0..10_000 {
        let image = format!("reg{}.example.com/team/app-{i}:1", i % 50);
        vec.with_label_values(&[image.as_str(), "failure"]).inc();
    }
    let lean = ms_per_run(|| {
        let mut out = String::new();
        if let Some(by_image) = &r.metrics().by_image {
            by_image.encode("by image", &mut out);
        }
        std::hint::black_box(out);
    });
    let crate_gather = ms_per_run(|| {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut buf)
            .unwrap();
        std::hint::black_box(buf);
    });
    println!(
        "## the 10 000 by-image series alone: own encoder {lean:.2} ms, prometheus gather + encode \
         {crate_gather:.2} ms (×{:.1})",
        crate_gather / lean
    );
    let corpus: Vec<&str> = include_str!("../tests/fixtures/error_corpus.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.splitn(3, '\t').nth(2))
        .collect();
    let n = scale(1_000_000);
    let s = Instant::now();
    for i in 0..n {
        std::hint::black_box(classify_message(corpus[i % corpus.len()]));
    }
    println!(
        "## classifier: {:.2} M messages/s (corpus of {} real messages)",
        n as f64 / s.elapsed().as_secs_f64() / 1e6,
        corpus.len()
    );
}

/// Mean wall time of `f` over 20 runs, in milliseconds.
fn ms_per_run(mut f: impl FnMut()) -> f64 {
    const RUNS: u32 = 20;
    let s = Instant::now();
    for _ in 0..RUNS {
        f();
    }
    s.elapsed().as_secs_f64() * 1000.0 / f64::from(RUNS)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn clk_tck() -> f64 {
    100.0 // USER_HZ on Linux x86_64 and arm64
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
