//! The demo as a new user runs it: it prints a `/metrics` URL that works, keeps the sandbox and
//! the agent up until Ctrl-C, then stops cleanly; `--once` stops by itself.

use crate::common::agent::{http_get, pullwatch_bin};
use crate::common::sandbox;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demo binary `cargo test --examples` builds next to pullwatch's.
fn demo_bin() -> Option<std::path::PathBuf> {
    let bin = pullwatch_bin().parent()?.join("examples/demo");
    bin.exists().then_some(bin)
}

/// Waits for a stdout line containing `want`, returning every line read so far.
fn read_until(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !seen.iter().any(|l| l.contains(want)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no {want:?} from the demo:\n{}", seen.join("\n")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stays_up_until_ctrl_c_and_its_url_works() {
    let Some(demo) = demo_bin() else {
        eprintln!("skipped: examples/demo not built (cargo test --examples builds it)");
        return;
    };
    let _turn = sandbox::exclusive().await;
    let mut child = Command::new(&demo)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    read_until(&lines, &mut seen, " explain 'toomanyrequests");
    let url = seen
        .iter()
        .find_map(|l| l.strip_prefix("metrics: http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics URL:\n{}", seen.join("\n")));
    let addr: SocketAddr = url.parse().unwrap();
    assert!(
        seen.iter()
            .any(|l| l.contains("pullwatch run --cri-proxy-socket")),
        "the agent's command line is shown"
    );
    assert!(seen.iter().any(|l| l.contains("histogram")));
    let rate_limited = seen
        .iter()
        .find(|l| l.contains("/ratelimited/") && l.contains("rate_limited"))
        .unwrap();
    assert!(
        rate_limited.contains("429"),
        "the cause is shown: {rate_limited}"
    );
    // Everything printed, and still up: the URL it printed answers.
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "the demo exited early");
    let (status, body) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("pullwatch_image_pulls_total"), "{body}");
    assert!(
        seen.iter()
            .any(|l| l.contains("where each successful pull's time went")),
        "the phases are shown"
    );
    // The `pulls` command it printed, run exactly as printed (the binary's full path: it is
    // not on PATH), shows the slow pull in progress with how far it got.
    let printed = seen
        .iter()
        .position(|l| l.contains("watch it with"))
        .and_then(|i| seen.get(i + 1))
        .unwrap_or_else(|| panic!("no pulls command:\n{}", seen.join("\n")))
        .trim()
        .to_string();
    let words: Vec<&str> = printed.split_whitespace().collect();
    assert!(
        words[0].starts_with('/') && words[1] == "pulls",
        "{printed}"
    );
    let shows = |pod: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // A live view: let it refresh for 3 s, then stop it.
            let mut child = Command::new(words[0])
                .args(&words[1..])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{printed}: {e}"));
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = table
                .lines()
                .find(|l| {
                    l.contains("throttled/shop/big:1.0") && l.contains(" of ") && l.contains(pod)
                })
                .map(str::to_string);
            match line {
                Some(l) => break l,
                None if Instant::now() > deadline => {
                    panic!("no slow pull of {pod} with progress:\n{table}")
                }
                None => {}
            }
        }
    };
    let shown = shows("shop/big-0");
    assert!(
        shown.contains("MiB") && shown.contains("layers done"),
        "{shown}"
    );
    // And it repeats: the next round is a new pull, downloading again.
    shows("shop/big-1");
    // Ctrl-C: everything stops, cleanly.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(http_get(addr, "/metrics").is_err(), "the agent stopped too");
}
