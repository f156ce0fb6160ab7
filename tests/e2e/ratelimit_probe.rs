//! The rate-limit headroom probe end to end: the real binary probing our fault registry, which
//! plays Docker Hub's `ratelimitpreview/test` (Bearer token, `ratelimit-*` headers on HEAD), a
//! registry that is out of quota (429), one with unreadable headers, one whose token endpoint
//! refuses, and one without limits.

use crate::common::agent::{Agent, sum};
use crate::common::fault_registry::{FaultRegistry, QUOTA_PASSWORD, QUOTA_USER};
use base64::Engine;

/// Probe flags (trace logging, so the credential check reads everything).
fn probe_args<'a>(specs: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--ratelimit-probe-interval", "1s", "--log-level", "trace"];
    for s in specs {
        args.extend(["--ratelimit-probe", s.as_str()]);
    }
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headroom_anonymous_then_authenticated_without_spending_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let reg = FaultRegistry::start(1 << 20).await;
    let host = reg.host();
    let spec = vec![format!("http://{host}/quota/probe")];
    let agent = Agent::start_bare(dir.path(), &probe_args(&spec, &[]));
    let l = [("registry", host.as_str())];
    let m = agent.scrape_until("the anonymous quota", |m| {
        sum(m, "pullwatch_registry_ratelimit_limit", &l) == 100.0
    });
    assert_eq!(
        sum(&m, "pullwatch_registry_ratelimit_remaining", &l),
        76.0,
        "{m}"
    );
    assert_eq!(
        sum(&m, "pullwatch_registry_ratelimit_window_seconds", &l),
        21600.0
    );
    assert_eq!(
        sum(&m, "pullwatch_registry_ratelimit_probe_errors_total", &l),
        0.0
    );
    assert!(
        m.contains(&format!(
            "pullwatch_registry_ratelimit_probe_errors_total{{registry=\"{host}\"}} 0"
        )),
        "the error counter exists from the start:\n{m}"
    );
    // Quota goes down between probes: the next probe shows it.
    reg.set_quota_remaining(3);
    agent.scrape_until("the lower quota", |m| {
        sum(m, "pullwatch_registry_ratelimit_remaining", &l) == 3.0
    });
    // A HEAD is not a pull: no manifest or blob was ever fetched.
    assert!(reg.hits("HEAD /v2/quota/probe/manifests/latest") >= 2);
    assert_eq!(reg.hits("GET /v2/"), 0);
    assert!(reg.token_auth().iter().all(|a| *a == "anonymous"));
    drop(agent);

    // With a pull secret, the token endpoint gets Basic auth and the account's quota shows.
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{QUOTA_USER}:{QUOTA_PASSWORD}"));
    let secret = dir.path().join("config.json");
    std::fs::write(
        &secret,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let agent = Agent::start_bare(
        dir.path(),
        &probe_args(&spec, &["--ratelimit-probe-auth", secret.to_str().unwrap()]),
    );
    agent.scrape_until("the authenticated quota", |m| {
        sum(m, "pullwatch_registry_ratelimit_limit", &l) == 200.0
    });
    assert_eq!(reg.token_auth().last(), Some(&"basic-ok"));
    let logs = agent.logs();
    for secret in [QUOTA_PASSWORD, auth.as_str(), "authed-token"] {
        assert!(
            !logs.contains(secret),
            "a credential reached the log: {secret}"
        );
        assert!(!agent.scrape().contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_garbage_refused_and_unlimited_registries() {
    let dir = tempfile::tempdir().unwrap();
    // One registry per case: the registry label is the probe's identity.
    let exhausted = FaultRegistry::start(1 << 20).await;
    let garbage = FaultRegistry::start(1 << 20).await;
    let refused = FaultRegistry::start(1 << 20).await;
    let unlimited = FaultRegistry::start(1 << 20).await;
    let specs = vec![
        format!("http://{}/ratelimitedhead/probe:1", exhausted.host()),
        format!("http://{}/garbage/probe", garbage.host()),
        format!("http://{}/tokendenied/probe", refused.host()),
        format!("http://{}/nolimit/probe", unlimited.host()),
    ];
    let agent = Agent::start_bare(dir.path(), &probe_args(&specs, &[]));
    let (e, g, r, u) = (
        exhausted.host(),
        garbage.host(),
        refused.host(),
        unlimited.host(),
    );
    let errors = |m: &str, h: &str| {
        sum(
            m,
            "pullwatch_registry_ratelimit_probe_errors_total",
            &[("registry", h)],
        )
    };
    let m = agent.scrape_until("every probe ran twice", |m| {
        errors(m, &g) >= 2.0
            && errors(m, &r) >= 2.0
            && unlimited.hits("HEAD") >= 2
            && exhausted.hits("HEAD") >= 2
    });
    // 429 with the headers: nothing left, not an error.
    assert_eq!(
        sum(
            &m,
            "pullwatch_registry_ratelimit_limit",
            &[("registry", &e)]
        ),
        100.0,
        "{m}"
    );
    assert_eq!(
        sum(
            &m,
            "pullwatch_registry_ratelimit_remaining",
            &[("registry", &e)]
        ),
        0.0
    );
    assert!(m.contains(&format!(
        "pullwatch_registry_ratelimit_remaining{{registry=\"{e}\"}} 0"
    )));
    assert_eq!(errors(&m, &e), 0.0);
    // Unreadable headers and a refused token: errors, and no value rather than a made-up one.
    for h in [&g, &r] {
        assert!(
            !m.contains(&format!(
                "pullwatch_registry_ratelimit_limit{{registry=\"{h}\"}}"
            )),
            "{m}"
        );
    }
    // No limit reported: no series and no error.
    assert!(
        !m.contains(&format!(
            "pullwatch_registry_ratelimit_limit{{registry=\"{u}\"}}"
        )),
        "{m}"
    );
    assert_eq!(errors(&m, &u), 0.0);
    let logs = agent.logs();
    assert!(
        logs.contains("unreadable rate-limit header value"),
        "{logs}"
    );
    assert!(logs.contains("token from"), "{logs}");
}

#[test]
fn bad_probe_flags_exit_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad_auth = dir.path().join("bad.json");
    std::fs::write(&bad_auth, r#"{"auths":{"r.io":{"auth":"c2VjcmV0"}}}"#).unwrap();
    for (args, want) in [
        (
            vec!["--ratelimit-probe", "quay.io"],
            "--ratelimit-probe: \"quay.io\": name a manifest",
        ),
        (
            vec![
                "--ratelimit-probe",
                "docker.io",
                "--ratelimit-probe",
                "index.docker.io",
            ],
            "named twice",
        ),
        (
            vec![
                "--ratelimit-probe",
                "docker.io",
                "--ratelimit-probe-interval",
                "0s",
            ],
            "--ratelimit-probe-interval",
        ),
        (
            vec![
                "--ratelimit-probe",
                "docker.io",
                "--ratelimit-probe-auth",
                "/nonexistent/x.json",
            ],
            "--ratelimit-probe-auth: /nonexistent/x.json",
        ),
        (
            vec![
                "--ratelimit-probe",
                "docker.io",
                "--ratelimit-probe-auth",
                bad_auth.to_str().unwrap(),
            ],
            "not user:password",
        ),
        (
            vec!["--ratelimit-probe-auth", "/x.json"],
            "only used with --ratelimit-probe",
        ),
    ] {
        let out = std::process::Command::new(crate::common::agent::pullwatch_bin())
            .arg("run")
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !err.contains("c2VjcmV0") && !err.contains("secret"),
            "{err}"
        );
    }
}
