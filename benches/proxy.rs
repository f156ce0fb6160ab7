//! Benchmarks for issue "prove it is safe in kubelet's path", measured side by side in one run
//! against real containerd in the sandbox harness. Prints ratios; run with
//! `sudo cargo bench --bench proxy` (needs the same packages and root as the e2e tests).
//! Sizes can be reduced for a quick look: `PULLWATCH_BENCH_SCALE=0.1 cargo bench --bench proxy`.
//!
//! Latency and throughput are measured on three paths, interleaved call by call: direct to
//! containerd, through a plain byte relay (`socat UNIX-LISTEN:…,fork UNIX-CONNECT:…`: one extra
//! unix-socket hop and no HTTP/2 processing, the floor any interposer process pays), and through
//! pullwatch. With `PULLWATCH_BENCH_BASELINE=/path/to/pullwatch` a fourth path runs another
//! pullwatch build (e.g. the previous design) side by side in the same run.
//!
//! The kernel tap (`--cri-tap`) is measured on direct calls to containerd with and without it
//! attached, in blocks A/B/A (the tap's agent stopped, running, stopped), with its CPU per 1 000
//! calls, the bytes it loses at about 5 000 calls/s, and how many calls of a kubelet-like
//! connection it takes for its HPACK decoder to read a PullImage's method again after a late
//! join.

#[path = "../tests/e2e/common/mod.rs"]
mod common;

use common::agent::Agent;
use common::image::TestImage;
use common::sandbox::Sandbox;
use pullwatch::core::attempt::{Outcome, PodRef, PullAttempt, Source};
use pullwatch::core::classifier::classify_message;
use pullwatch::core::reference::ImageRef;
use pullwatch::cri::client::CriClient;
use pullwatch::cri::{ImageSpec, ImageStatusRequest, ListImagesRequest, VersionRequest};
use pullwatch::testing::{ImagePullCounts, MetricsRegistry, Recorder, RecorderConfig};
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

/// The byte-relay floor: `socat UNIX-LISTEN:…,fork UNIX-CONNECT:…`; killed when dropped.
struct Relay {
    child: std::process::Child,
    sock: std::path::PathBuf,
}

impl Relay {
    fn start(dir: &std::path::Path, upstream: &std::path::Path) -> Self {
        let sock = dir.join("relay.sock");
        let child = std::process::Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork,backlog=128", sock.display()))
            .arg(format!("UNIX-CONNECT:{}", upstream.display()))
            .spawn()
            .expect("socat (Debian package socat; scripts/install-deps.sh installs it)");
        common::wait::until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || sock.exists(),
            || "socat did not start".into(),
        );
        Self { child, sock }
    }

    /// CPU ticks of socat and the children it forked per connection.
    fn cpu(&self) -> u64 {
        let parent = self.child.id();
        let mut total = proc_stats(parent).0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            if after.split_whitespace().nth(1) == Some(&parent.to_string()) {
                total += proc_stats(pid).0;
            }
        }
        total
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
    // `-- tap`: only the kernel tap's part.
    if std::env::args().any(|a| a == "tap") {
        let sb = Sandbox::start().await;
        let image = sb.push(&TestImage::build("bench", 4096, "amd64"), "bench/app", "1");
        common::pull_as(&sb.containerd_sock, &image, None, Duration::from_secs(60)).await;
        tap(&sb, &image).await;
        return;
    }
    if !std::env::args().any(|a| a == "in-process") {
        against_containerd().await;
    }
    in_process();
}

/// One path a call can take to containerd.
struct Path {
    name: &'static str,
    sock: std::path::PathBuf,
}

/// 1–4: latency, throughput, large pull and memory, with real containerd and the real agent.
async fn against_containerd() {
    let sb = Sandbox::start().await;
    let image = sb.push(&TestImage::build("bench", 4096, "amd64"), "bench/app", "1");
    let agent = Agent::start(&sb, &["--log-level", "warn"]);
    let baseline = std::env::var_os("PULLWATCH_BENCH_BASELINE")
        .map(|bin| Agent::start_bin(&sb, std::path::Path::new(&bin), &["--log-level", "warn"]));
    let t = Duration::from_secs(60);
    common::pull_as(&sb.containerd_sock, &image, None, t).await;
    let relay = Relay::start(sb.dir.path(), &sb.containerd_sock);
    let mut paths = vec![
        Path {
            name: "direct",
            sock: sb.containerd_sock.clone(),
        },
        Path {
            name: "relay",
            sock: relay.sock.clone(),
        },
        Path {
            name: "pullwatch",
            sock: agent.proxy_sock.clone(),
        },
    ];
    if let Some(b) = &baseline {
        paths.push(Path {
            name: "baseline",
            sock: b.proxy_sock.clone(),
        });
    }
    let mut clients = Vec::new();
    for p in &paths {
        clients.push(CriClient::connect(&p.sock, t).await.unwrap());
    }
    let pid = agent.pid();
    let (_, rss_idle) = proc_stats(pid);
    println!("machine: {} cores, {}", num_cores(), kernel());
    println!("agent RSS idle: {:.1} MiB", rss_idle as f64 / 1024.0);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();

    // 1. Unary latency, same client code, paths interleaved call by call.
    let n = scale(3000);
    println!("\n## unary latency, interleaved (n per path per method: {n})");
    for (which, name) in [(0, "Version"), (1, "ListImages"), (2, "ImageStatus")] {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); paths.len()];
        for _ in 0..200 {
            for c in clients.iter_mut() {
                unary(c, which, &image).await;
            }
        }
        for _ in 0..n {
            for (c, v) in clients.iter_mut().zip(samples.iter_mut()) {
                let s = Instant::now();
                unary(c, which, &image).await;
                v.push(s.elapsed());
            }
        }
        let mut line = format!("{name:<12} p50/p99 us:");
        let mut q = Vec::new();
        for (p, v) in paths.iter().zip(samples.iter_mut()) {
            v.sort();
            let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
            line += &format!(" {} {:.1}/{:.1} |", p.name, us(p50), us(p99));
            q.push((p50, p99));
        }
        println!("{}", line.trim_end_matches(" |"));
        let mut line = format!(
            "{:<12} pullwatch/relay p50 {:.3} p99 {:.3} (targets 1.05, 1.10); added over direct p50: relay {:.1}us, pullwatch {:.1}us",
            "",
            ratio(q[2].0, q[1].0),
            ratio(q[2].1, q[1].1),
            us(q[1].0) - us(q[0].0),
            us(q[2].0) - us(q[0].0),
        );
        if let Some(b) = q.get(3) {
            line += &format!(
                "; baseline/relay p50 {:.3} p99 {:.3}, baseline added {:.1}us",
                ratio(b.0, q[1].0),
                ratio(b.1, q[1].1),
                us(b.0) - us(q[0].0)
            );
        }
        println!("{line}");
    }
    drop(clients);

    // 2. Throughput with 32 concurrent callers (one connection each, as separate clients),
    // and the CPU of what sits in the path, per 1000 calls.
    let secs = 3.0 * scale(100) as f64 / 100.0;
    let mut direct_rate = 0.0;
    let mut relay_rate = 0.0;
    for p in &paths {
        let cpu = |name: &str| match name {
            "relay" => relay.cpu(),
            "pullwatch" => proc_stats(pid).0,
            "baseline" => baseline.as_ref().map_or(0, |b| proc_stats(b.pid()).0),
            _ => 0,
        };
        let mut conns = Vec::new();
        for _ in 0..32 {
            conns.push(
                CriClient::connect(&p.sock, Duration::from_secs(10))
                    .await
                    .unwrap(),
            );
        }
        let cpu0 = cpu(p.name);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for mut c in conns {
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    c.runtime.version(VersionRequest::default()).await.unwrap();
                    n += 1;
                }
                (n, c)
            }));
        }
        let mut total = 0;
        let mut alive = Vec::new();
        for t in tasks {
            let (n, c) = t.await.unwrap();
            total += n;
            alive.push(c);
        }
        let el = start.elapsed().as_secs_f64();
        // Measured before the connections close (socat's per-connection children exit then).
        let ticks = cpu(p.name) - cpu0;
        drop(alive);
        let rate = total as f64 / el;
        let mut line = format!(
            "\n## throughput {}: {rate:.0} Version calls/s (32 callers, {el:.1}s)",
            p.name
        );
        match p.name {
            "direct" => direct_rate = rate,
            "relay" => relay_rate = rate,
            _ => {}
        }
        if p.name != "direct" {
            line += &format!(
                "; {:.3} of direct, {:.3} of the relay; CPU {:.1} ms per 1000 calls",
                rate / direct_rate,
                rate / relay_rate.max(1.0),
                ticks as f64 * 1000.0 / clk_tck() / (total as f64 / 1000.0)
            );
        }
        println!("{line}");
    }
    drop(relay);

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
    drop(agent);
    drop(baseline);
    tap(&sb, &image).await;
}

/// A tap agent on the sandbox's containerd (nothing else of pullwatch connects to it).
fn tap_agent(sb: &Sandbox) -> Agent {
    Agent::start_passive(
        sb,
        &[
            "--cri-tap",
            "--runtime-status-interval",
            "0s",
            "--log-level",
            "warn,pullwatch::pull=info",
        ],
    )
}

/// 6. The kernel tap: direct calls without it, with it, without it again.
async fn tap(sb: &Sandbox, image: &str) {
    let t = Duration::from_secs(60);
    let n = scale(3000);
    let mut c = CriClient::connect(&sb.containerd_sock, t).await.unwrap();
    // Blocks without the tap (A) and with it (B), alternated eight times, so that the machine's
    // drift over the run falls on both alike; percentiles over each side's pooled calls.
    const BLOCKS: usize = 8;
    let per_block = (n / (BLOCKS / 2)).max(10);
    println!(
        "\n## kernel tap: direct calls, {BLOCKS} alternating blocks without (A) and with (B) the tap ({per_block} calls per block per method)"
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let (mut cpu_ns, mut calls_b) = (0u64, 0usize);
    let mut pooled: [[Vec<Duration>; 3]; 2] = Default::default();
    for block in 0..BLOCKS {
        let with = block % 2 == 1;
        let agent = with.then(|| tap_agent(sb));
        // Past the agent's own start (its binary loading, the programs' verification).
        tokio::time::sleep(Duration::from_millis(if with { 1000 } else { 300 })).await;
        let cpu0 = agent.as_ref().map(|a| task_cpu_ns(a.pid()));
        for k in 0..3 {
            let which = (k + block) % 3;
            for _ in 0..50 {
                unary(&mut c, which, image).await;
            }
            for _ in 0..per_block {
                let s = Instant::now();
                unary(&mut c, which, image).await;
                pooled[usize::from(with)][which].push(s.elapsed());
            }
        }
        if let (Some(a), Some(cpu0)) = (&agent, cpu0) {
            // Let the tap read what is in its ring before its CPU is read.
            tokio::time::sleep(Duration::from_millis(50)).await;
            cpu_ns += task_cpu_ns(a.pid()) - cpu0;
            calls_b += 3 * (per_block + 50);
        }
    }
    for (which, name) in ["Version", "ListImages", "ImageStatus"].iter().enumerate() {
        for side in &mut pooled {
            side[which].sort();
        }
        let q = |with: usize, p: f64| pct(&pooled[with][which], p);
        println!(
            "{name:<12} p50 without {:.1} with {:.1} us, p99 without {:.1} with {:.1} us; with/without p50 {:.3} p99 {:.3} (targets 1.02, 1.05)",
            us(q(0, 0.5)),
            us(q(1, 0.5)),
            us(q(0, 0.99)),
            us(q(1, 0.99)),
            ratio(q(1, 0.5), q(0, 0.5)),
            ratio(q(1, 0.99), q(0, 0.99)),
        );
    }
    println!(
        "tap agent CPU: {:.2} ms per 1000 CRI calls (its threads' run time, /proc/<pid>/task/*/schedstat)",
        cpu_ns as f64 / 1e6 / (calls_b as f64 / 1000.0)
    );
    // What every other syscall of the node pays while the tap is attached (the raw syscall exit
    // tracepoint): the cost of sched_yield (no other thread runnable here), without and with.
    let syscall_ns = || {
        let n = 2_000_000;
        (0..3)
            .map(|_| {
                let s = Instant::now();
                for _ in 0..n {
                    std::thread::yield_now();
                }
                s.elapsed().as_secs_f64() * 1e9 / f64::from(n)
            })
            .fold(f64::MAX, f64::min)
    };
    let without = syscall_ns();
    let agent = tap_agent(sb);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with = syscall_ns();
    drop(agent);
    println!(
        "any other syscall of the node: {without:.0} ns without the tap, {with:.0} ns with it (+{:.0} ns)",
        with - without
    );
    drop(c);

    // Bytes lost at about 5 000 calls/s (32 callers, each paced), for 5 s.
    let agent = tap_agent(sb);
    let secs = 5.0 * scale(100) as f64 / 100.0;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let sock = sb.containerd_sock.clone();
        let image = image.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = CriClient::connect(&sock, Duration::from_secs(10))
                .await
                .unwrap();
            let mut n = 0u64;
            let pace = Duration::from_secs_f64(32.0 / 5000.0);
            while start.elapsed().as_secs_f64() < secs {
                let s = Instant::now();
                unary(&mut c, (n % 3) as usize, &image).await;
                n += 1;
                if let Some(rest) = pace.checked_sub(s.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await; // the tap's counters are read every 2 s
    let m = agent.scrape();
    let lost = common::agent::sum(&m, "pullwatch_cri_tap_lost_bytes_total", &[]);
    let observed = common::agent::sum(&m, "pullwatch_cri_requests_total", &[]);
    println!(
        "tap at {rate:.0} calls/s for {secs:.1} s: {observed} of {total} calls observed, {lost} bytes lost, {} resyncs",
        common::agent::sum(&m, "pullwatch_cri_tap_resyncs_total", &[])
    );
    drop(agent);

    // HPACK turnover: a kubelet-like connection (grpc-go, a new grpc-timeout each call) that
    // pulled before the tap attached; how many calls until a PullImage's method is read again.
    use common::callers::{Call, Caller, Session};
    use prost::Message;
    let pull = |pod: &str| Call {
        method: "/runtime.v1.ImageService/PullImage",
        request: pullwatch::cri::PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            sandbox_config: Some(pullwatch::cri::PodSandboxConfig {
                metadata: Some(pullwatch::cri::PodSandboxMetadata {
                    name: pod.into(),
                    namespace: "bench".into(),
                    uid: format!("uid-{pod}"),
                    attempt: 0,
                }),
            }),
            ..Default::default()
        }
        .encode_to_vec(),
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let status = Call {
        method: "/runtime.v1.ImageService/ImageStatus",
        request: ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        }
        .encode_to_vec(),
        timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let mut s = Session::open(Caller::GrpcGoLocalhost, &sb.containerd_sock);
    assert_eq!(s.call(&pull("before")).reply.code, 0);
    let agent = tap_agent(sb);
    let mut calls = 0;
    let mut exact_after = None;
    for round in 0..100 {
        for _ in 0..9 {
            s.call(&status);
            calls += 1;
        }
        let pod = format!("turnover-{round}");
        s.call(&pull(&pod));
        calls += 1;
        let mut line = None;
        common::wait::until(
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                line = agent
                    .pull_events()
                    .into_iter()
                    .find(|e| e["pod"] == pod.as_str());
                line.is_some()
            },
            || format!("{pod} not recorded"),
        );
        if line.is_some_and(|e| e.get("method_from").is_none()) {
            exact_after = Some(calls);
            break;
        }
    }
    match exact_after {
        Some(n) => println!(
            "HPACK turnover on a kubelet-like connection: a PullImage's method read again after {n} calls \
             (kubelet's image connection makes ImageStatus/ImageFsInfo calls every few seconds: minutes at most)"
        ),
        None => println!("HPACK turnover: not within 1 000 calls"),
    }
}

/// What one read of the runtime's connections costs the endpoint witness (at each pull's start
/// and end, and every poll interval): this process holds `n` loopback connections, the node
/// holds whatever else it has.
fn endpoint_reads() {
    let Ok(mut reader) = pullwatch::testing::ConnectionReader::open() else {
        println!("endpoint reads: skipped, sock_diag is not available here");
        return;
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for n in [10usize, 500, 2000] {
        while held.len() < n {
            let c = std::net::TcpStream::connect(addr).unwrap();
            let (s, _) = listener.accept().unwrap();
            held.push((c, s));
        }
        let reads = 200;
        let t = Instant::now();
        let mut found = 0;
        for _ in 0..reads {
            found = reader.read(std::process::id()).unwrap();
        }
        let per = t.elapsed() / reads;
        println!(
            "endpoint read: {found} TCP sockets of the process ({n} connections held): {:.3} ms per read",
            per.as_secs_f64() * 1e3
        );
    }
}

/// 5. In-process: an endpoint read, /metrics render (~10 000 series), classifier throughput.
fn in_process() {
    endpoint_reads();
    let cfg = RecorderConfig {
        image_label_cap: Some(10_000),
        max_registries: 1000,
        max_namespaces: 1000,
        ..Default::default()
    };
    let metrics = MetricsRegistry::new().unwrap();
    let r = Recorder::new(&cfg, &metrics).unwrap();
    for i in 0..10_000 {
        let image = format!("reg{}.example.com/team/app-{i}:1", i % 50);
        pullwatch::testing::record(
            &r,
            &PullAttempt {
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
                credentials: None,
                readout: None,
            },
        );
    }
    let text = metrics.render();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let total = ms_per_run(|| drop(std::hint::black_box(metrics.render())));
    let refresh = ms_per_run(|| pullwatch::testing::refresh_backoff(&r));
    let encode = ms_per_run(|| drop(std::hint::black_box(metrics.encode_registry())));
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
    let counts = ImagePullCounts::default();
    for i in 0..10_000 {
        let image = format!("reg{}.example.com/team/app-{i}:1", i % 50);
        vec.with_label_values(&[image.as_str(), "failure"]).inc();
        counts.inc(&image, false);
    }
    let lean = ms_per_run(|| {
        let mut out = String::new();
        counts.encode("by image", &mut out);
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

/// Run time of every thread of `pid`, nanoseconds (`/proc/<pid>/task/*/schedstat`).
fn task_cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
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
