//! End to end: the second red team's findings (issue #19), each an attack that worked on the
//! build before the fix, as an attacker on the node would make it (anyone who can reach the
//! interposer's socket or the port; anyone who can create a pod and so choose image names).
//! Each asserts the bound the issue set. `PULLWATCH_TEST_BIN=<older build>` runs them against
//! an earlier binary.

use crate::common::agent::{Agent, http_get, sum};
use crate::common::image::TestImage;
use crate::common::sandbox::{Sandbox, free_port};
use crate::common::{message_of, pull_as, reason_of};
use pullwatch::cri::client::CriClient;
use pullwatch::cri::{ImageSpec, PodSandboxConfig, PodSandboxMetadata, PullImageRequest};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (no Huffman) with its length prefix.
fn hpack_string(s: &[u8], out: &mut Vec<u8>) {
    let mut v = s.len();
    if v < 127 {
        out.push(v as u8);
    } else {
        out.push(0x7f);
        v -= 127;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }
    out.extend_from_slice(s);
}

/// A connection's opening: preface, SETTINGS, and a header block on stream 1 that puts a
/// 4000-byte `:path` into the dynamic table (index 62).
fn amplification_opening() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut block = vec![0x83, 0x86, 0x44]; // POST, http, :path literal with indexing
    hpack_string(&vec![b'/'; 4000], &mut block);
    out.extend(frame(0x1, 0x4, 1, &block));
    out
}

/// Percentile `p` (0..=100) of `samples`.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

/// Latencies of Version calls on one connection to `sock` for `how_long`.
async fn version_latencies(sock: &Path, how_long: Duration) -> Vec<Duration> {
    let mut c = CriClient::connect(sock, Duration::from_secs(5))
        .await
        .unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.runtime.version(pullwatch::cri::VersionRequest::default()),
        )
        .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_amplification_on_one_connection_does_not_slow_another_caller() {
    let sb = Sandbox::start().await;
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let sock = agent.proxy_sock.clone();
    let before = version_latencies(&sock, Duration::from_secs(1)).await;
    // 16 KiB HEADERS frames of one-byte references to the 4000-byte entry, on new streams,
    // as fast as the socket takes them, again on a new connection whenever one is closed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = tokio::spawn({
        let (sock, stop) = (sock.clone(), stop.clone());
        async move {
            let mut frames = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(s) = UnixStream::connect(&sock).await else {
                    continue;
                };
                let (mut r, mut w) = s.into_split();
                let drain = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
                });
                if w.write_all(&amplification_opening()).await.is_err() {
                    continue;
                }
                let mut stream = 3u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let f = frame(0x1, 0x4, stream, &vec![0xbe; 16 << 10]);
                    if w.write_all(&f).await.is_err() {
                        break;
                    }
                    frames += 1;
                    stream += 2;
                }
                drain.abort();
            }
            frames
        }
    });
    let mut during = version_latencies(&sock, Duration::from_secs(5)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let frames = attacker.await.unwrap();
    let (p50, p99, max) = (
        percentile(&mut during, 50),
        percentile(&mut during, 99),
        percentile(&mut during, 100),
    );
    let mut before = before;
    eprintln!(
        "Version through pullwatch: before p50 {:?}; under {frames} amplification frames p50 {p50:?} p99 {p99:?} max {max:?} ({} calls)",
        percentile(&mut before, 50),
        during.len()
    );
    assert!(frames > 100, "the attack did not run: {frames} frames");
    assert!(p99 <= Duration::from_millis(50), "p99 {p99:?}");
    assert!(max <= Duration::from_millis(250), "max {max:?}");
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_header_blocks_on_300_connections_stay_within_the_budget() {
    let sb = Sandbox::start().await;
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let before = rss_mib(agent.pid());
    let mut held = Vec::new();
    for _ in 0..300 {
        let Ok(mut s) = UnixStream::connect(&agent.proxy_sock).await else {
            continue;
        };
        let mut out = PREFACE.to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        // HEADERS without END_HEADERS, then CONTINUATIONs up to 1 MiB, never ended.
        out.extend(frame(0x1, 0, 1, &vec![0x82; 16 << 10]));
        for _ in 0..63 {
            out.extend(frame(0x9, 0, 1, &vec![0x82; 16 << 10]));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(agent.pid());
    let m = agent.scrape();
    eprintln!(
        "agent RSS {before:.1} MiB before, {after:.1} MiB with {} connections holding unfinished 1 MiB header blocks; {} over the cap",
        held.len(),
        sum(
            &m,
            "pullwatch_interposer_connections_total",
            &[("result", "over_limit")]
        )
    );
    assert!(after - before <= 80.0, "RSS {before:.1} → {after:.1} MiB");
    drop(held);
    // The agent goes on serving once the attackers' connections are gone.
    agent.scrape_until_within(Duration::from_secs(20), "the connections to close", |m| {
        sum(m, "pullwatch_interposer_connections_open", &[]) < 256.0
    });
    let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
        .await
        .unwrap();
    c.runtime
        .version(pullwatch::cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_filling_the_capture_budget_leaves_other_callers_pulls_attributed() {
    let sb = Sandbox::start().await;
    let img = TestImage::build("attributed", 1024, "amd64");
    let image = sb.push(&img, "team/app", "1");
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    // 16 PullImage streams (4 connections of 4) announcing 4 MiB messages and sending all but
    // their last bytes, within the runtime's flow-control windows (so it keeps the connections
    // and the streams).
    let mut held = 0;
    for _ in 0..4 {
        held += hold_unfinished_pulls(&agent.proxy_sock, 4, (4 << 20) + 16).await;
    }
    eprintln!("the attacker holds {held} bytes of unfinished PullImage requests");
    assert!(
        held >= 32 << 20,
        "the attack did not get its requests through: {held}"
    );
    // Another caller's pull is still attributed: image, registry and pod.
    let r = pull_as(
        &agent.proxy_sock,
        &image,
        Some(("shop", "web")),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(reason_of(&r), "success", "{}", message_of(&r));
    let registry = sb.registry.clone();
    agent.scrape_until("the other caller's pull", |m| {
        sum(
            m,
            "pullwatch_image_pulls_total",
            &[("registry", &registry), ("result", "success")],
        ) == 1.0
    });
    let e = agent
        .pull_events()
        .into_iter()
        .find(|e| e["result"] == "success")
        .expect("a success line");
    assert_eq!(e["image"], image.as_str());
    assert_eq!(
        (e["namespace"].as_str(), e["pod"].as_str()),
        (Some("shop"), Some("web"))
    );
}

/// Opens `streams` PullImage calls on one connection to `sock`, each announcing a message of
/// `size` bytes, and sends all but the last 16 bytes of each as the runtime's flow-control
/// windows allow (reading its SETTINGS and WINDOW_UPDATEs), for at most 20 s. The connection
/// is left open (leaked) so the calls stay unfinished; returns the bytes sent.
async fn hold_unfinished_pulls(sock: &Path, streams: u32, size: usize) -> usize {
    use std::collections::HashMap;
    let s = UnixStream::connect(sock).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let mut hpack = loona_hpack::Encoder::new();
    for i in 0..streams {
        let block = hpack.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.ImageService/PullImage"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
        ]);
        out.extend(frame(0x1, 0x4, 1 + 2 * i, &block));
    }
    w.write_all(&out).await.unwrap();
    // Credits: the connection's (stream 0) and each stream's, from the defaults on.
    let initial: i64 = 65_535;
    let mut credit: HashMap<u32, i64> = (0..=streams)
        .map(|i| (if i == 0 { 0 } else { 2 * i - 1 }, initial))
        .collect();
    let mut sent: HashMap<u32, usize> = HashMap::new();
    let mut inbox = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let end = Instant::now() + Duration::from_secs(20);
    let total = size - 16;
    while Instant::now() < end && sent.values().sum::<usize>() < total * streams as usize {
        // Send what the windows allow.
        let mut wrote = false;
        for i in 0..streams {
            let id = 1 + 2 * i;
            let done = sent.get(&id).copied().unwrap_or(0);
            let room = credit[&0]
                .min(credit[&id])
                .min(16 << 10)
                .min((total - done) as i64);
            if room <= 0 {
                continue;
            }
            let mut piece = Vec::new();
            if done == 0 {
                piece.push(0);
                piece.extend_from_slice(&(size as u32).to_be_bytes());
            }
            piece.resize(room as usize, 0);
            w.write_all(&frame(0x0, 0, id, &piece)).await.unwrap();
            *credit.get_mut(&0).unwrap() -= room;
            *credit.get_mut(&id).unwrap() -= room;
            *sent.entry(id).or_default() += room as usize;
            wrote = true;
        }
        // Read what the runtime says: SETTINGS (initial window), WINDOW_UPDATE.
        let wait = if wrote {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(200)
        };
        match tokio::time::timeout(wait, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => inbox.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        while inbox.len() >= 9 {
            let len = (usize::from(inbox[0]) << 16)
                | (usize::from(inbox[1]) << 8)
                | usize::from(inbox[2]);
            if inbox.len() < 9 + len {
                break;
            }
            let (kind, flags) = (inbox[3], inbox[4]);
            let id = u32::from_be_bytes([inbox[5], inbox[6], inbox[7], inbox[8]]) & 0x7fff_ffff;
            let p = inbox[9..9 + len].to_vec();
            inbox.drain(..9 + len);
            match kind {
                0x8 if p.len() == 4 => {
                    let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
                    *credit.entry(id).or_insert(initial) += inc;
                }
                0x4 if flags & 1 == 0 => {
                    for s in p.chunks(6) {
                        if s.len() == 6 && u16::from_be_bytes([s[0], s[1]]) == 4 {
                            let v = i64::from(u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
                            for (k, c) in credit.iter_mut() {
                                if *k != 0 {
                                    *c += v - initial;
                                }
                            }
                        }
                    }
                    // Acknowledge, as a client must.
                    w.write_all(&frame(0x4, 1, 0, &[])).await.unwrap();
                }
                _ => {}
            }
        }
    }
    std::mem::forget((r, w));
    sent.values().sum()
}

/// CPU time (user + system) of `pid`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_made_after_start_backs_off_instead_of_spinning() {
    let sb = Sandbox::start().await;
    let dir = sb.dir.path();
    // The runtime path is a symlink to containerd's socket at start ...
    let runtime = dir.join("runtime-link.sock");
    std::os::unix::fs::symlink(&sb.containerd_sock, &runtime).unwrap();
    let proxy = dir.join("loop-proxy.sock");
    let agent = Agent::spawn_with(
        dir,
        &runtime,
        Some(proxy.clone()),
        &["--log-level", "info", "--runtime-status-interval", "0s"],
    );
    // ... and then comes to point at the interposer's own socket.
    std::fs::remove_file(&runtime).unwrap();
    std::os::unix::fs::symlink(&proxy, &runtime).unwrap();
    let cpu_before = cpu_time(agent.pid());
    let started = Instant::now();
    let mut callers = 0u32;
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(mut s) = UnixStream::connect(&proxy).await {
            callers += 1;
            let _ = s.write_all(PREFACE).await;
            let mut b = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cpu_time(agent.pid()) - cpu_before;
    let m = agent.scrape();
    let accepted = sum(&m, "pullwatch_interposer_connections_total", &[]);
    let self_connections = accepted - f64::from(callers);
    let logs = agent.logs();
    let lines = logs.lines().filter(|l| l.contains("leads")).count();
    eprintln!(
        "{callers} caller connections in 5 s: {accepted} accepted, so {self_connections} self-connections; agent CPU {cpu:?}; {lines} loop log lines"
    );
    assert!(
        self_connections <= 10.0,
        "{self_connections} self-connections\n{m}"
    );
    assert!(cpu <= Duration::from_secs(1), "CPU {cpu:?}");
    assert!(lines <= 5, "{lines} loop log lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_running_out_is_not_the_runtime_down() {
    let sb = Sandbox::start().await;
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
        .await
        .unwrap();
    c.runtime
        .version(pullwatch::cri::VersionRequest::default())
        .await
        .unwrap();
    // Leave the agent one descriptor (the lowest free number; the limit bounds numbers): a
    // caller's connection is accepted, the runtime's cannot be opened.
    let pid = agent.pid();
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let free = (0..).find(|n| !used.contains(n)).unwrap();
    let limit = (free + 1).to_string();
    let st = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    for _ in 0..3 {
        if let Ok(mut s) = UnixStream::connect(&agent.proxy_sock).await {
            let _ = s.write_all(PREFACE).await;
            let mut b = [0u8; 16];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
        }
    }
    let m = agent.scrape_until("a connection refused for want of descriptors", |m| {
        sum(
            m,
            "pullwatch_interposer_connections_total",
            &[("result", "out_of_fds")],
        ) >= 1.0
    });
    assert_eq!(
        sum(&m, "pullwatch_runtime_up", &[("source", "cri_proxy")]),
        1.0,
        "the runtime is not down:\n{m}"
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_interposer_connections_total",
            &[("result", "runtime_unreachable")]
        ),
        0.0
    );
    assert!(agent.logs().contains("no file descriptor left"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_keep_the_probes_from_answering() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_bare(
        dir.path(),
        &[
            "--containerd-socket",
            "/nonexistent/containerd.sock",
            "--web.header-timeout",
            "3s",
        ],
    );
    // Every slot taken by a socket that sends nothing.
    let silent: Vec<_> = (0..64)
        .filter_map(|_| std::net::TcpStream::connect(agent.addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let (status, body) = http_get(agent.addr, "/healthz").expect("healthz answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // /metrics on a probe slot is refused, not served to whoever filled the endpoint.
    let (status, _) = http_get(agent.addr, "/metrics").unwrap();
    assert!(status == 503 || status == 0, "{status}");
    // After the header timeout (counted from accept) the silent sockets are gone.
    std::thread::sleep(Duration::from_secs(4));
    let (status, _) = http_get(agent.addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    drop(silent);
}

/// A web config with one user (bcrypt cost 10) in `dir`.
fn basic_auth_config(dir: &Path) -> std::path::PathBuf {
    let hash = bcrypt::hash("right", 10).unwrap();
    let path = dir.join("web.yml");
    std::fs::write(&path, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
    path
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Sends a request with basic auth `user:password`; returns the status and how long it took.
fn timed_get(addr: std::net::SocketAddr, user: &str, password: &str) -> (u16, Duration) {
    use base64::Engine;
    use std::io::{Read, Write};
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_cannot_run_away_with_threads_or_tell_users_apart() {
    let dir = tempfile::tempdir().unwrap();
    let web = basic_auth_config(dir.path());
    let agent = Agent::start_bare(
        dir.path(),
        &[
            "--containerd-socket",
            "/nonexistent/containerd.sock",
            "--web.config.file",
            web.to_str().unwrap(),
            "--web.max-connections",
            "256",
        ],
    );
    let addr = agent.addr;
    // 200 wrong passwords that hang up after 5 ms.
    let mut peak = 0;
    for i in 0..200 {
        use base64::Engine;
        use std::io::Write;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:wrong{i}"));
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n"
            );
            std::thread::sleep(Duration::from_millis(5));
            drop(s);
        }
        peak = peak.max(threads(agent.pid()));
    }
    for _ in 0..40 {
        peak = peak.max(threads(agent.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("threads at most {peak} under 200 early-hang-up wrong passwords");
    assert!(peak <= 24, "{peak} threads");
    // An unknown user costs a hash too: no faster than half a wrong password.
    let median = |user: &str| {
        let mut t: Vec<Duration> = (0..5)
            .map(|i| {
                let (status, took) = timed_get(addr, user, &format!("nope{i}"));
                assert_eq!(status, 401);
                took
            })
            .collect();
        t.sort();
        t[2]
    };
    let (wrong, unknown) = (median("prometheus"), median("nobody"));
    eprintln!("refusal: wrong password {wrong:?}, unknown user {unknown:?}");
    assert!(
        unknown * 2 >= wrong,
        "unknown {unknown:?} vs wrong {wrong:?}"
    );
    assert_eq!(timed_get(addr, "prometheus", "right").0, 200);
}

/// A pull request for `image` as pod `ns/name`.
fn pull_request(image: &str) -> PullImageRequest {
    PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        sandbox_config: Some(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "junk".into(),
                namespace: "tenant".into(),
                uid: "u".into(),
                attempt: 0,
            }),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_registries_cannot_push_a_real_registry_into_other() {
    let sb = Sandbox::start().await;
    let img = TestImage::build("label-slots", 1024, "amd64");
    let image = sb.push(&img, "team/app", "1");
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
        .await
        .unwrap();
    // 150 pods naming registries that do not exist (our DNS answers NXDOMAIN at once).
    for i in 0..150 {
        let r = c
            .images
            .pull_image(pull_request(&format!("junk{i}.invalid/x:1")))
            .await;
        assert!(r.is_err());
    }
    agent.scrape_until("150 junk failures", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "failure")]) == 150.0
    });
    let r = pull_as(
        &agent.proxy_sock,
        &image,
        Some(("shop", "web")),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(reason_of(&r), "success", "{}", message_of(&r));
    let registry = sb.registry.clone();
    let m = agent.scrape_until("the real registry's success", |m| {
        sum(m, "pullwatch_image_pulls_total", &[("result", "success")]) == 1.0
    });
    assert_eq!(
        sum(
            &m,
            "pullwatch_image_pulls_total",
            &[("registry", &registry), ("result", "success")]
        ),
        1.0,
        "the real registry kept its label:\n{m}"
    );
    assert!(
        sum(
            &m,
            "pullwatch_label_evictions_total",
            &[("label", "registry")]
        ) >= 1.0
    );
    // Series stay within the cap.
    let series = m
        .lines()
        .filter(|l| l.starts_with("pullwatch_image_pulls_total{"))
        .count();
    assert!(series <= 101, "{series} series");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_pull_after_image_gc_counts_its_layers_as_downloaded_again() {
    let sb = Sandbox::start().await;
    let img = TestImage::build("gc-repull", 2 << 20, "amd64");
    let image = sb.push(&img, "team/gc", "1");
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let agent = Agent::start(&sb, &["--containerd-socket", &sock, "--log-level", "info"]);
    for round in 0..2 {
        let r = pull_as(
            &agent.proxy_sock,
            &image,
            Some(("shop", "web")),
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(reason_of(&r), "success", "{}", message_of(&r));
        crate::common::wait::until(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                agent
                    .pull_events()
                    .iter()
                    .filter(|e| e["result"] == "success" && e["downloaded_bytes"].is_u64())
                    .count()
                    > round
            },
            || format!("no joined success line for round {round}: {}", agent.logs()),
        );
        if round == 0 {
            // What kubelet's image GC does: remove the image and collect its content.
            let st = std::process::Command::new("ctr")
                .args(["--address", &sock, "-n", "k8s.io", "images", "rm", "--sync"])
                .arg(&image)
                .status()
                .unwrap();
            assert!(st.success());
            // And the ID record the CRI plugin keeps.
            let _ = std::process::Command::new("ctr")
                .args(["--address", &sock, "-n", "k8s.io", "images", "ls", "-q"])
                .output()
                .map(|o| {
                    for name in String::from_utf8_lossy(&o.stdout).lines() {
                        let _ = std::process::Command::new("ctr")
                            .args([
                                "--address",
                                &sock,
                                "-n",
                                "k8s.io",
                                "images",
                                "rm",
                                "--sync",
                                name,
                            ])
                            .status();
                    }
                });
        }
    }
    let lines: Vec<serde_json::Value> = agent
        .pull_events()
        .into_iter()
        .filter(|e| e["result"] == "success")
        .collect();
    let layer_bytes = img.total_bytes();
    for (i, e) in lines.iter().enumerate() {
        eprintln!(
            "pull {i}: downloaded {} cached {} layers downloaded {} cached {}",
            e["downloaded_bytes"], e["cached_bytes"], e["layers_downloaded"], e["layers_cached"]
        );
        assert_eq!(e["layers_downloaded"], 1, "pull {i}: {e}");
        assert_eq!(e["layers_cached"], 0, "pull {i}: {e}");
        assert!(
            e["downloaded_bytes"].as_u64().unwrap() * 2 >= layer_bytes,
            "pull {i}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_name_cannot_forge_a_text_log_line() {
    let sb = Sandbox::start().await;
    let agent = Agent::start(&sb, &["--log-format", "text", "--log-level", "info"]);
    let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
        .await
        .unwrap();
    let forged = "reg.example/x:1\n2026-01-01T00:00:00Z ERROR pullwatch: forged \u{1b}[31mred";
    let r = c.images.pull_image(pull_request(forged)).await;
    assert!(r.is_err());
    agent.scrape_until("the attempt", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) == 1.0
    });
    std::thread::sleep(Duration::from_millis(300));
    let logs = agent.logs();
    assert!(
        !logs
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR")),
        "a forged line:\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "an escape sequence passed through"
    );
    assert!(logs.contains("reg.example/x:1\\n2026"), "{logs}");
}

#[test]
fn a_foreign_socket_with_a_full_backlog_stops_start_up_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let mut held = Vec::new();
    loop {
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        if s.connect(&socket2::SockAddr::unix(&path).unwrap()).is_err() {
            break;
        }
        held.push(s);
        assert!(held.len() < 100_000);
    }
    let t = Instant::now();
    let mut child = std::process::Command::new(crate::common::agent::pullwatch_bin())
        .args([
            "run",
            "--runtime-status-interval",
            "0s",
            "--cri-proxy-socket",
        ])
        .arg(&path)
        .args(["--runtime-socket", "/nonexistent.sock", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    while t.elapsed() < Duration::from_secs(10) && status.is_none() {
        status = child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("start-up hung on the busy socket for 10 s");
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("backlog is full"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    drop((listener, held));
}
