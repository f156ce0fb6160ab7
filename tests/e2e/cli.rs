//! The binary's command line: exit codes, one-line errors, explain and pull.

use crate::common::image::TestImage;
use crate::common::sandbox::Sandbox;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn pullwatch(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullwatch"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn explain_prints_reason_and_hint() {
    let o = pullwatch(
        &[
            "explain",
            "--json",
            "429 Too Many Requests - Server message: toomanyrequests",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reason"], "rate_limited");
    assert!(v["hint"].as_str().unwrap().contains("ratelimit-remaining"));
    let o = pullwatch(
        &[
            "explain",
            "dial tcp: lookup reg.corp on 10.0.0.10:53: no such host",
        ],
        None,
    );
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("reason: dns\nhint: "), "{out}");
    // kubelet's back-off wrapper alone: no cause, and where to find it.
    let o = pullwatch(
        &[
            "explain",
            "Back-off pulling image \"registry.example.com/team/app:1\"",
        ],
        None,
    );
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.starts_with("reason: unknown\nhint: This is kubelet's back-off")
            && out.contains("attempt before it"),
        "{out}"
    );
    // With the cause appended, the cause.
    let o = pullwatch(
        &[
            "explain",
            "Back-off pulling image \"redis:7\": ErrImagePull: 429 Too Many Requests",
        ],
        None,
    );
    assert!(
        String::from_utf8(o.stdout)
            .unwrap()
            .starts_with("reason: rate_limited")
    );
    let o = pullwatch(
        &[
            "explain",
            "Container image \"a:1\" is not present with pull policy of Never",
        ],
        None,
    );
    assert!(
        String::from_utf8(o.stdout)
            .unwrap()
            .starts_with("reason: never_pull")
    );
    // An unknown message is not sent back to `pullwatch explain`.
    let o = pullwatch(&["explain", "something nobody has seen"], None);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("reason: unknown"), "{out}");
    assert!(!out.contains("pullwatch explain"), "{out}");
}

/// `pullwatch explain < big | head -1`: the reader goes away after one line; pullwatch ends
/// quietly (exit 0, nothing on stderr), as standard tools do.
#[test]
fn explain_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    for json in [false, true] {
        let mut args = vec!["explain"];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_pullwatch"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let line = b"toomanyrequests: slow down\n".repeat(1000);
            for _ in 0..200 {
                if stdin.write_all(&line).is_err() {
                    break; // pullwatch ended: fine
                }
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 64];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout); // like `head -1` exiting
        let o = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert_eq!(o.status.code(), Some(0), "json={json}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "json={json}");
    }
}

#[test]
fn explain_reads_stdin_one_json_object_per_line() {
    let input =
        "x509: certificate signed by unknown authority\n\nfoo:1: not found\nsomething odd\n";
    let o = pullwatch(&["explain", "--json"], Some(input));
    assert!(o.status.success(), "{}", stderr(&o));
    let reasons: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(reasons, ["tls", "not_found", "unknown"]);
}

#[test]
fn bad_input_and_config_exit_64_with_one_line() {
    for (args, needle) in [
        (&["explain", "  "][..], "message is empty"),
        (&["run"][..], "--cri-proxy-socket"),
        (
            &[
                "run",
                "--cri-proxy-socket",
                "/tmp/x.sock",
                "--listen",
                "nowhere",
            ][..],
            "--listen",
        ),
        (
            &[
                "run",
                "--cri-proxy-socket",
                "/tmp/x.sock",
                "--backoff-expiry",
                "soon",
            ][..],
            "--backoff-expiry",
        ),
        (&["pull", "nginx", "--timeout", "forever"][..], "--timeout"),
        (&["run", "--kube"][..], "--node-name: required with --kube"),
        (
            &[
                "run",
                "--kube",
                "--node-name",
                "n1",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
            ][..],
            "--kubeconfig: /nonexistent/kubeconfig is not a readable file",
        ),
        (
            &[
                "run",
                "--containerd-socket",
                "/c.sock",
                "--kubeconfig",
                "/k",
            ][..],
            "--kubeconfig: only used with --kube",
        ),
        (
            &[
                "run",
                "--containerd-socket",
                "/c.sock",
                "--kube-events=cluster",
            ][..],
            "--kube-events: only used with --kube",
        ),
        (
            &["run", "--containerd-socket", "/c.sock", "--pod-events"][..],
            "--pod-events: needs --kube",
        ),
        (
            &["pulls", "--once", "--url", "ftp://node:9798"][..],
            "--url: \"ftp://node:9798\" is not an http:// or https:// URL",
        ),
        (&["pulls", "--interval", "0s"][..], "--interval"),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let o = pullwatch(args, None);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle), "{args:?}: {e}");
        if args[0] != "frobnicate" {
            assert_eq!(
                e.trim_end().lines().count(),
                1,
                "{args:?}: one line, got {e}"
            );
        }
    }
}

#[test]
fn kube_source_without_a_cluster_or_with_a_broken_kubeconfig_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("kubeconfig");
    // Malformed, and holding a token: the error must not quote it.
    std::fs::write(
        &broken,
        "users: [{name: u, user: {token: s3cr3t-t0ken}\nclusters: [",
    )
    .unwrap();
    for (extra, needle) in [
        (vec![], "--kube: no in-cluster service account"),
        (
            vec!["--kubeconfig", broken.to_str().unwrap()],
            "--kubeconfig",
        ),
    ] {
        let mut args = vec![
            "run",
            "--kube",
            "--node-name",
            "n1",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_pullwatch"))
            .args(&args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}

#[test]
fn run_creates_the_socket_with_the_configured_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "").unwrap();
    let me = std::fs::metadata(&probe).unwrap();
    // As root (CI) give it to `nogroup`; otherwise only our own group is allowed.
    let gid = if me.uid() == 0 { 65534 } else { me.gid() };
    let gid_arg = gid.to_string();
    let agent = crate::common::agent::Agent::start_proxy_to(
        dir.path(),
        &dir.path().join("no-runtime.sock"),
        &[
            "--cri-proxy-socket-mode",
            "0640",
            "--cri-proxy-socket-group",
            &gid_arg,
        ],
    );
    let meta = std::fs::symlink_metadata(&agent.proxy_sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
}

#[test]
fn run_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let o = pullwatch(
        &[
            "run",
            "--cri-proxy-socket",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--runtime-socket",
            "/nonexistent.sock",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a socket"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn run_refuses_to_relay_to_its_own_socket() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("run/sub")).unwrap();
    std::os::unix::fs::symlink(d.join("run"), d.join("var-run")).unwrap();
    let listen = d.join("run/pw.sock");
    for runtime in [d.join("run/sub/../pw.sock"), d.join("var-run/pw.sock")] {
        let o = pullwatch(
            &[
                "run",
                "--cri-proxy-socket",
                listen.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--runtime-socket",
                runtime.to_str().unwrap(),
                "--runtime-status-interval",
                "0s",
            ],
            None,
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains("--runtime-socket") && last.contains("relay to itself"),
            "{err}"
        );
        assert!(!listen.exists(), "the socket it bound is removed");
    }
}

#[test]
fn pull_to_a_missing_socket_is_unavailable() {
    let o = pullwatch(
        &[
            "pull",
            "nginx",
            "--runtime-socket",
            "/nonexistent/pullwatch.sock",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/pullwatch.sock"));
    // The cause, not only tonic's "transport error".
    assert!(
        stderr(&o).contains("No such file or directory"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// Text logs written to a file carry no colour escape codes; `pullwatch_build_info` names the
/// revision it was built from (this is a git checkout), and families of sources that are off
/// (`--kube`, the interposer) show no series.
#[test]
fn text_logs_in_a_file_are_plain_and_build_info_names_the_revision() {
    use crate::common::agent::{http_get, sum};
    use crate::common::sandbox::free_port;
    use crate::common::wait;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pullwatch"))
        .args(["run", "--containerd-socket", "/nonexistent/c.sock"])
        .args(["--runtime-status-interval", "0s", "--log-format", "text"])
        .args(["--listen", &addr.to_string()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait::until(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(50),
        || matches!(http_get(addr, "/readyz"), Ok((200, _))),
        || "agent not ready".to_string(),
    );
    let (_, metrics) = http_get(addr, "/metrics").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serving /metrics"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in a log file: {text:?}"
    );
    let info = metrics
        .lines()
        .find(|l| l.starts_with("pullwatch_build_info{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!info.contains("revision=\"unknown\""), "{info}");
    for off in [
        "pullwatch_kube_deduplicated_total",
        "pullwatch_interposer_connections_open",
    ] {
        assert_eq!(
            metrics.lines().filter(|l| l.starts_with(off)).count(),
            0,
            "{off} without its source:\n{metrics}"
        );
    }
    assert_eq!(
        sum(&metrics, "pullwatch_http_connections_rejected_total", &[]),
        0.0
    );
}

/// Two agents started at the same moment on one socket path: one runs, the other stops at once
/// with one line naming the socket (before the lock, both stayed running in 5 of 5 tries and
/// one socket was orphaned).
#[test]
fn two_instances_on_one_socket_path_one_runs() {
    use crate::common::sandbox::free_port;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cri.sock");
    for round in 0..5 {
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let children: Vec<std::process::Child> = std::thread::scope(|s| {
            let spawned: Vec<_> = (0..2)
                .map(|_| {
                    let (sock, start) = (sock.clone(), start.clone());
                    s.spawn(move || {
                        let listen = format!("127.0.0.1:{}", free_port());
                        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullwatch"));
                        cmd.args(["run", "--runtime-status-interval", "0s"])
                            .arg("--cri-proxy-socket")
                            .arg(&sock)
                            .args(["--runtime-socket", "/nonexistent/runtime.sock"])
                            .args(["--listen", &listen])
                            .stdout(Stdio::null())
                            .stderr(Stdio::piped());
                        start.wait();
                        cmd.spawn().unwrap()
                    })
                })
                .collect();
            spawned.into_iter().map(|h| h.join().unwrap()).collect()
        });
        std::thread::sleep(std::time::Duration::from_secs(2));
        let mut running = Vec::new();
        let mut stopped = Vec::new();
        for mut c in children {
            match c.try_wait().unwrap() {
                None => running.push(c),
                Some(_) => stopped.push(c.wait_with_output().unwrap()),
            }
        }
        assert_eq!(running.len(), 1, "round {round}: {} running", running.len());
        let o = &stopped[0];
        assert_eq!(o.status.code(), Some(1), "round {round}: {}", stderr(o));
        let last = stderr(o).lines().last().unwrap_or_default().to_string();
        assert!(last.contains("cri.sock"), "round {round}: {last}");
        assert!(
            last.contains("another pullwatch holds") || last.contains("already listening"),
            "round {round}: {last}"
        );
        for mut c in running {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        assert!(
            !sock.exists(),
            "round {round}: the socket is removed at stop"
        );
    }
}

#[test]
fn help_explains_every_command() {
    let o = pullwatch(&["--help"], None);
    assert!(o.status.success());
    let h = String::from_utf8(o.stdout).unwrap();
    for c in ["run", "explain", "pull", "pulls"] {
        assert!(h.contains(c), "{h}");
    }
    let o = pullwatch(&["run", "--help"], None);
    let h = String::from_utf8(o.stdout).unwrap();
    assert!(
        h.contains("PULLWATCH_CRI_PROXY_SOCKET") && h.contains("imageServiceEndpoint"),
        "{h}"
    );
    assert!(
        h.contains("Pod events:") && h.contains("PULLWATCH_POD_EVENTS"),
        "{h}"
    );
    let o = pullwatch(&["pulls", "--help"], None);
    let h = String::from_utf8(o.stdout).unwrap();
    assert!(
        h.contains("--once") && h.contains("PULLWATCH_BASIC_AUTH"),
        "{h}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_command_against_real_containerd() {
    let sb = Sandbox::start().await;
    let image = sb.push(&TestImage::build("cli", 2048, "amd64"), "team/cli", "1");
    let sock = sb.containerd_sock.to_str().unwrap().to_string();
    let o = pullwatch(&["pull", &image, "--runtime-socket", &sock, "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["result"], "success");
    assert!(v["image_ref"].as_str().unwrap().starts_with("sha256:"));
    let missing = format!("{}/team/cli:2", sb.registry);
    let o = pullwatch(&["pull", &missing, "--runtime-socket", &sock], None);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("reason: not_found") && out.contains("hint: "),
        "{out}"
    );
}

/// `pullwatch pulls` on a terminal for 3 s (through `script`, which gives it a pty) with `TERM`
/// set to `term`: what it wrote.
fn pulls_on_a_terminal(url: &str, term: &str) -> String {
    let cmd = format!(
        "timeout -s INT 3 {} pulls --interval 1s --url {url}",
        env!("CARGO_BIN_EXE_pullwatch")
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", term)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn pulls_draws_over_the_screen_only_on_a_terminal_that_can() {
    let dir = tempfile::tempdir().unwrap();
    // Any source will do: a containerd that is not there.
    let sock = dir.path().join("none.sock");
    let agent = crate::common::agent::Agent::start_bare(
        dir.path(),
        &["--containerd-socket", sock.to_str().unwrap()],
    );
    let url = format!("http://{}", agent.addr);
    let smart = pulls_on_a_terminal(&url, "xterm");
    assert!(smart.contains("PULLS IN PROGRESS"), "{smart}");
    assert!(smart.contains("\x1b[2J"), "a terminal redraws: {smart:?}");
    let dumb = pulls_on_a_terminal(&url, "dumb");
    assert!(dumb.contains("PULLS IN PROGRESS"), "{dumb}");
    assert!(
        !dumb.contains('\x1b'),
        "no screen control on TERM=dumb: {dumb:?}"
    );
    assert!(
        dumb.matches("PULLS IN PROGRESS").count() >= 2,
        "still refreshing, below the last: {dumb}"
    );
}
