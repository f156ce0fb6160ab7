//! End to end: what the byte relay guarantees beyond transparency — one caller that stops
//! reading cannot slow another (each has its own runtime connection), and a connection the
//! observer cannot follow still gets exactly the runtime's answer while it is counted as
//! unobserved.

use crate::common::agent::{Agent, sum};
use crate::common::image::TestImage;
use crate::common::sandbox::Sandbox;
use prost::Message;
use pullwatch::cri::client::CriClient;
use pullwatch::cri::{ImageSpec, ImageStatusRequest, VersionRequest};
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

/// A caller that asks for `calls` verbose ImageStatus answers of `image`, grants the runtime
/// every window it may want, and then never reads.
async fn stuck_caller(sock: &Path, image: &str, calls: u32) -> UnixStream {
    let mut s = UnixStream::connect(sock).await.unwrap();
    let mut out = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE 2^31-1, and the connection window opened as far.
    out.extend(frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    out.extend(frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    let mut hpack = loona_hpack::Encoder::new();
    let body = pullwatch::testing::grpc_frame(
        &ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: true,
        }
        .encode_to_vec(),
    );
    for i in 0..calls {
        let stream = 1 + 2 * i;
        let block = hpack.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.ImageService/ImageStatus"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]);
        out.extend(frame(0x1, 0x4, stream, &block));
        out.extend(frame(0x0, 0x1, stream, &body));
    }
    s.write_all(&out).await.unwrap();
    s
}

/// The slowest of `n` Version + ImageStatus calls on `sock`.
async fn slowest_call(sock: &Path, image: &str, n: usize) -> Duration {
    let mut c = CriClient::connect(sock, Duration::from_secs(5))
        .await
        .unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let v = tokio::time::timeout(
            Duration::from_secs(10),
            c.runtime.version(VersionRequest::default()),
        )
        .await;
        assert!(matches!(v, Ok(Ok(_))), "{v:?}");
        let s = tokio::time::timeout(
            Duration::from_secs(10),
            c.images.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false,
            }),
        )
        .await;
        assert!(matches!(s, Ok(Ok(_))), "{s:?}");
        worst = worst.max(t.elapsed());
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_does_not_slow_another() {
    let sb = Sandbox::start().await;
    // 3 MB of config: each verbose ImageStatus answer is over 3 MB.
    let img = TestImage::build_with_label("isolation", 2048, "amd64", 3 << 20);
    let image = sb.push(&img, "team/bigconfig", "1");
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    assert!(
        CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
            .await
            .unwrap()
            .images
            .pull_image(pullwatch::cri::PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .is_ok()
    );
    let direct = slowest_call(&sb.containerd_sock, &image, 20).await;
    let _stuck_direct = stuck_caller(&sb.containerd_sock, &image, 10).await;
    let _stuck = stuck_caller(&agent.proxy_sock, &image, 10).await;
    // Let the runtime fill what the stuck callers will never read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let proxied = slowest_call(&agent.proxy_sock, &image, 20).await;
    let direct_stuck = slowest_call(&sb.containerd_sock, &image, 20).await;
    eprintln!(
        "slowest call: direct {direct:?}, direct beside a stuck caller {direct_stuck:?}, through pullwatch beside a stuck caller {proxied:?}"
    );
    assert!(
        proxied < Duration::from_millis(500) + direct_stuck.max(direct) * 2,
        "through pullwatch {proxied:?} vs direct {direct_stuck:?}"
    );
    let m = agent.scrape();
    assert!(
        sum(&m, "pullwatch_interposer_connections_open", &[]) >= 1.0,
        "{m}"
    );
}

/// On a new connection to `sock`: writes `opening` and reads the answer until the runtime is
/// quiet (so the runtime's SETTINGS and ACK do not race what follows), then writes `rest` (while
/// reading) and reads until the runtime closes. Returns all it read.
async fn exchange(sock: &Path, opening: &[u8], rest: Vec<u8>) -> Vec<u8> {
    let s = UnixStream::connect(sock).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(opening).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), r.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&rest).await;
        w
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(10), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no close within 10 s; got {} bytes", got.len()),
        }
    }
    writer.abort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_observer_cannot_follow_still_gets_the_runtimes_answer() {
    let sb = Sandbox::start().await;
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let settings = frame(0x4, 0, 0, &[]);
    let opened = [PREFACE, &settings].concat();
    let cases: Vec<(&str, &[u8], Vec<u8>, &str)> = vec![
        (
            "garbage after the preface",
            PREFACE,
            b"this is not an HTTP/2 frame at all, not even close".to_vec(),
            "protocol",
        ),
        (
            "an HPACK index past the table",
            &opened,
            frame(0x1, 0x5, 1, &[0x82, 0x86, 0xff, 0x7f]),
            "hpack",
        ),
        (
            "an oversized header frame",
            &opened,
            frame(0x1, 0x4, 1, &vec![0x82; (1 << 20) + 10]),
            "limit",
        ),
    ];
    for (what, opening, rest, cause) in cases {
        let direct = exchange(&sb.containerd_sock, opening, rest.clone()).await;
        let proxied = exchange(&agent.proxy_sock, opening, rest).await;
        assert!(!direct.is_empty(), "{what}: containerd said nothing");
        assert_eq!(
            hex::encode(&proxied),
            hex::encode(&direct),
            "{what}: the runtime's answer through pullwatch differs"
        );
        let m = agent.scrape_until(what, |m| {
            sum(
                m,
                "pullwatch_interposer_unobserved_connections_total",
                &[("cause", cause)],
            ) == 1.0
        });
        assert_eq!(
            sum(&m, "pullwatch_interposer_unobserved_connections_total", &[]),
            1.0 + ["protocol", "hpack", "limit"]
                .iter()
                .position(|c| *c == cause)
                .unwrap() as f64,
            "{m}"
        );
    }
    // And the agent goes on observing the next, well-formed connection.
    let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
        .await
        .unwrap();
    c.runtime.version(VersionRequest::default()).await.unwrap();
    agent.scrape_until("the Version call", |m| {
        sum(m, "pullwatch_cri_requests_total", &[("code", "OK")]) == 1.0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_stderr_never_stalls_the_relay() {
    let sb = Sandbox::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("pw.sock");
    let addr = format!("127.0.0.1:{}", crate::common::sandbox::free_port());
    // stderr is a pipe nobody reads: it fills after 64 KiB, as journald's would when it stalls.
    let mut child = std::process::Command::new(crate::common::agent::pullwatch_bin())
        .args(["run", "--cri-proxy-socket"])
        .arg(&sock)
        .arg("--runtime-socket")
        .arg(&sb.containerd_sock)
        .args([
            "--listen",
            &addr,
            "--log-format",
            "json",
            "--log-level",
            "info",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "pullwatch did not start");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Invalid references: containerd refuses each at once, pullwatch logs one event line each.
    let calls = 9_600; // over the writer's 8 192 queued lines plus what the pipe holds
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let sock = sock.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = CriClient::connect(&sock, Duration::from_secs(5))
                .await
                .unwrap();
            let mut worst = Duration::ZERO;
            for i in 0..calls / 16 {
                let s = Instant::now();
                let r = c
                    .images
                    .pull_image(pullwatch::cri::PullImageRequest {
                        image: Some(ImageSpec {
                            image: format!("Invalid/Ref-{t}-{i}:1"),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await;
                assert!(r.is_err(), "{r:?}");
                worst = worst.max(s.elapsed());
            }
            worst
        }));
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        worst = worst.max(t.await.unwrap());
    }
    eprintln!(
        "{calls} pulls in {:?}, slowest {worst:?}",
        started.elapsed()
    );
    assert!(worst < Duration::from_secs(2), "a call waited {worst:?}");
    let scrape = || {
        crate::common::agent::http_get(addr.parse().unwrap(), "/metrics")
            .unwrap()
            .1
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = scrape();
    while sum(&m, "pullwatch_image_pulls_total", &[]) < calls as f64 {
        assert!(Instant::now() < deadline, "not every pull recorded:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = scrape();
    }
    assert!(
        sum(&m, "pullwatch_log_lines_dropped_total", &[]) > 0.0,
        "with the pipe full, lines must have been dropped and counted:\n{m}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_image_names_stay_bounded() {
    let sb = Sandbox::start().await;
    let agent = Agent::start(&sb, &["--log-level", "info"]);
    let rss = |pid: u32| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024.0
    };
    let before = rss(agent.pid());
    let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5))
        .await
        .unwrap();
    for i in 0..50 {
        let image = format!("reg.example/{}-{i}:1", "a".repeat(2 << 20));
        let r = c
            .images
            .pull_image(pullwatch::cri::PullImageRequest {
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                sandbox_config: Some(pullwatch::cri::PodSandboxConfig {
                    metadata: Some(pullwatch::cri::PodSandboxMetadata {
                        name: format!("p{}", "p".repeat(100_000)),
                        namespace: format!("n{i}{}", "n".repeat(100_000)),
                        uid: "u".repeat(100_000),
                        attempt: 0,
                    }),
                }),
                ..Default::default()
            })
            .await;
        assert!(r.is_err());
    }
    agent.scrape_until("every attempt", |m| {
        sum(m, "pullwatch_image_pulls_total", &[]) == 50.0
    });
    let after = rss(agent.pid());
    eprintln!("agent RSS {before:.1} MiB before, {after:.1} MiB after 50 pulls of 2 MiB names");
    assert!(after < before + 30.0, "RSS {before:.1} → {after:.1} MiB");
    let events = agent.pull_events();
    assert_eq!(events.len(), 50);
    for e in &events {
        assert!(
            e["image"].as_str().unwrap().len() <= 1024,
            "{}",
            e["image"].as_str().unwrap().len()
        );
        assert!(e["namespace"].as_str().unwrap().len() <= 63);
        assert!(e["pod"].as_str().unwrap().len() <= 253);
        assert!(e["pod_uid"].as_str().unwrap().len() <= 64);
        assert_eq!(
            e["registry"], "unknown",
            "an overlong reference is not parsed"
        );
    }
}
