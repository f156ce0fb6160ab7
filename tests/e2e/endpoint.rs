//! The HTTP endpoint under connections that never finish: idle sockets, slow-drip headers and
//! more connections than allowed. The agent stays bounded (the cap), gives descriptors back
//! (header and idle timeouts) and keeps answering `/healthz` once they are gone.

use crate::common::agent::{Agent, http_get, sum};
use crate::common::wait;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // e.g. a 408 before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn idle_slow_and_excess_connections_cannot_hold_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_bare(
        dir.path(),
        &[
            "--containerd-socket",
            "/nonexistent/containerd.sock",
            "--web.max-connections",
            "8",
            "--web.header-timeout",
            "1s",
            "--web.idle-timeout",
            "2s",
        ],
    );
    // Idle connections up to the cap are held, and 4 more on the probes' slots; the ones
    // above those are closed at once.
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(agent.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // One look at each, at once (well within the 1 s first-byte timeout).
    let mut closed_at_once = 0;
    for s in &mut idle {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        if !matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            closed_at_once += 1;
        }
        s.set_nonblocking(false).unwrap();
    }
    assert_eq!(closed_at_once, 8, "20 connections, cap 8, 4 probe slots");
    // The cap holds the endpoint too while they live; when the header timeout (counted from the
    // accept: they never sent a byte) frees the slots, /healthz answers again.
    let started = Instant::now();
    wait::until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || matches!(http_get(agent.addr, "/healthz"), Ok((200, _))),
        || "healthz never came back".to_string(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(2)),
            "a silent connection outlived the header timeout"
        );
    }
    // Slow drip: one header byte every 300 ms keeps the connection busy but never completes the
    // headers: cut by the header timeout, not held for as long as the client likes.
    let mut drip = TcpStream::connect(agent.addr).unwrap();
    let started = Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for b in request {
        if drip.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(
        cut || closed_within(&mut drip, Duration::from_secs(1)),
        "slow drip was not cut"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        started.elapsed()
    );
    // The 8 above the cap and the probe slots, and the /healthz probes made while all were
    // full.
    let m = agent.scrape();
    let rejected = sum(&m, "pullwatch_http_connections_rejected_total", &[]);
    assert!(rejected >= 8.0, "{rejected}\n{m}");
}

/// The report's scenario: the agent's descriptor limit below what idle HTTP clients open. With
/// the cap, kubelet's path (a CRI call through the interposer) and the probes keep working; the
/// endpoint, not the process, is what runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_clients_cannot_take_the_interposers_descriptors() {
    use crate::common::agent::pullwatch_bin;
    use crate::common::sandbox::Sandbox;
    use pullwatch::cri::VersionRequest;
    use pullwatch::cri::client::CriClient;
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start().await;
    // pullwatch under a 150-descriptor limit (prlimit, util-linux).
    let wrapper = sb.dir.path().join("pullwatch-limited");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile=150:150 {} \"$@\"\n",
            pullwatch_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start_bin(&sb, &wrapper, &["--log-level", "info"]);
    // 300 idle connections: twice the descriptor limit.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(agent.addr).ok())
        .collect();
    assert!(idle.len() >= 150, "{} connected", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    // kubelet's path still works: a new CRI connection through the interposer. Bounded: without
    // the cap the connection waits in an accept backlog nobody drains.
    let version = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = CriClient::connect(&agent.proxy_sock, Duration::from_secs(5)).await?;
        let v = c.runtime.version(VersionRequest::default()).await?;
        Ok::<_, Box<dyn std::error::Error>>(v.into_inner().runtime_name)
    })
    .await
    .expect("the interposer answered in time while HTTP clients piled up")
    .unwrap();
    assert_eq!(version, "containerd");
    drop(idle);
    wait::until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || matches!(http_get(agent.addr, "/healthz"), Ok((200, _))),
        || format!("healthz never came back: {}", agent.logs()),
    );
    let m = agent.scrape();
    assert!(
        sum(&m, "pullwatch_http_connections_rejected_total", &[]) >= 200.0,
        "{m}"
    );
}
