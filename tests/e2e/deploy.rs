//! Static checks of everything shipped to clusters: kustomize renders valid Kubernetes objects,
//! alert rules pass promtool (and their unit tests), the PrometheusRule carries the same rules,
//! every alert has a runbook, dashboards are valid and use only real metrics, the systemd unit
//! verifies, and the Dockerfile builds the way CI does.

use crate::common::dashboard_exprs;
use pullwatch::telemetry::FAMILIES;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(crate::common::tool(cmd))
        .args(args)
        .current_dir(ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/install-deps.sh installs it)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    let o = run(cmd, args, stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd} {args:?} failed:\n{text}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// YAML (possibly multi-document) to JSON values, with PyYAML.
fn yaml(text: &str) -> Vec<Value> {
    let script = "import sys,yaml,json; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))";
    serde_json::from_str(&ok("python3", &["-c", script], Some(text))).unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn render(dir: &str) -> Vec<Value> {
    let out = ok("kubectl", &["kustomize", dir], None);
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), &out).unwrap();
    ok(
        "kubernetes-validate",
        &["--strict", "--quiet", tmp.path().to_str().unwrap()],
        None,
    );
    yaml(&out)
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kustomize_renders_valid_objects_with_a_safe_daemonset() {
    let docs = render("deploy/kubernetes/base");
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Namespace",
            "Service",
            "ServiceAccount"
        ])
    );
    // Minimal RBAC: read pods and events, write Events (--pod-events, on in the DaemonSet),
    // nothing else, bound to the agent's account.
    let role = kind(&docs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
        ])
    );
    let binding = kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "pullwatch");
    assert_eq!(
        (
            binding["subjects"][0]["name"].as_str(),
            binding["subjects"][0]["namespace"].as_str()
        ),
        (Some("pullwatch"), Some("pullwatch"))
    );
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    // The tap's least privilege: these three capabilities and the host's PID namespace, no
    // privileged container. The host's network namespace, for the endpoint witness: containerd's
    // registry connections are only in its socket table (no capability needed to read it).
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE"])
    );
    assert!(sc.get("privileged").is_none_or(|p| p == false));
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["env"][0]["name"], "PULLWATCH_NODE_NAME");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["readOnly"] == true)
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The arguments are ones the binary accepts.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let bin = env!("CARGO_BIN_EXE_pullwatch");
    let help = ok(bin, &["run", "--help"], None);
    // So do the ones suggested in comments (`# - --flag=...`).
    let manifest = read("deploy/kubernetes/base/daemonset.yaml");
    let suggested: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# - "))
        .collect();
    assert!(!suggested.is_empty());
    for a in args[1..].iter().chain(&suggested) {
        let flag = a.split('=').next().unwrap();
        assert!(
            help.contains(flag),
            "DaemonSet passes or suggests unknown flag {flag}"
        );
    }
    assert!(
        args.contains(&"--cri-tap"),
        "the DaemonSet runs the tap: {args:?}"
    );
    let svc = kind(&docs, "Service");
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9798);
}

/// For clusters that forbid BPF: the same DaemonSet without the tap, its capabilities or the
/// host's PID namespace, and still valid.
#[test]
fn no_bpf_overlay_leaves_the_tap_and_its_privileges_out() {
    let docs = render("deploy/kubernetes/overlays/no-bpf");
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!args.contains(&"--cri-tap"), "{args:?}");
    assert!(args.contains(&"--containerd-socket=/run/containerd/containerd.sock"));
    assert!(pod.get("hostPID").is_none());
    assert!(pod.get("hostNetwork").is_none());
    assert!(args.contains(&"--no-endpoints"), "{args:?}");
    assert!(c["securityContext"]["capabilities"].get("add").is_none());
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
}

/// The documented way onto a cluster with your own build: the own-image overlay's `images:`
/// entry replaces the placeholder image, and the base names exactly that placeholder (so the
/// entry keeps matching).
#[test]
fn own_image_overlay_sets_the_daemonsets_image() {
    let base = render("deploy/kubernetes/base");
    let image = |docs: &[Value]| {
        kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(image(&base), "ghcr.io/pullwatch/pullwatch:0.1.0");
    let own = render("deploy/kubernetes/overlays/own-image");
    assert_eq!(image(&own), "registry.example.com/platform/pullwatch:0.1.0");
    assert!(read("README.md").contains("kubectl apply -k deploy/kubernetes/overlays/own-image"));
}

#[test]
fn prometheus_operator_overlay_carries_the_same_rules() {
    let docs = render("deploy/kubernetes/overlays/prometheus-operator");
    let rule = kind(&docs, "PrometheusRule");
    let file = &yaml(&read("deploy/prometheus/pullwatch-rules.yml"))[0];
    assert_eq!(
        rule["spec"], *file,
        "PrometheusRule and pullwatch-rules.yml differ"
    );
    let sm = kind(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert!(
        docs.iter().any(|d| d["kind"] == "DaemonSet"),
        "overlay includes the base"
    );
}

#[test]
fn rules_pass_promtool_and_their_unit_tests() {
    ok(
        "promtool",
        &["check", "rules", "deploy/prometheus/pullwatch-rules.yml"],
        None,
    );
    let out = ok(
        "promtool",
        &[
            "test",
            "rules",
            "deploy/prometheus/pullwatch-rules.test.yml",
        ],
        None,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

fn group(name: &str) -> Vec<Value> {
    let file = &yaml(&read("deploy/prometheus/pullwatch-rules.yml"))[0];
    let group = file["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no rule group {name}"));
    group["rules"].as_array().unwrap().clone()
}

fn alerts() -> Vec<Value> {
    group("pullwatch.alerts")
}

/// The recorded series' names.
fn recorded() -> BTreeSet<String> {
    group("pullwatch.recording")
        .iter()
        .map(|r| r["record"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_recording_rule_is_unit_tested_and_the_dashboard_reads_them() {
    let tests = read("deploy/prometheus/pullwatch-rules.test.yml");
    let recorded = recorded();
    assert!(recorded.len() >= 10, "{recorded:?}");
    for r in &recorded {
        let tested = tests.lines().any(|l| {
            l.trim_start().starts_with("- expr: ")
                && l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .any(|w| w == r)
        });
        assert!(tested, "no promql_expr_test evaluates {r}");
    }
    for e in dashboard_exprs() {
        // No raw rate or increase: a 5,000-node dashboard reads recorded series.
        assert!(
            !e.contains("rate(") && !e.contains("increase("),
            "raw rate in the dashboard: {e}"
        );
        // Every recorded name it reads exists.
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.contains(':') && word.contains("pullwatch") {
                assert!(recorded.contains(word), "{word} is not recorded: {e}");
            }
        }
        if e.contains("histogram_quantile(") {
            assert!(e.contains(":rate5m"), "quantile over raw buckets: {e}");
        }
        // Nodes are named by `node`, not by the scrape address.
        assert!(!e.contains("instance"), "{e}");
    }
}

#[test]
fn scrape_configs_name_the_node_with_the_jobs_pullwatchdown_watches() {
    let jobs = yaml(&read("deploy/prometheus/scrape-configs.yml"))[0].clone();
    let jobs = jobs.as_array().unwrap();
    let names: Vec<&str> = jobs
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pullwatch", "pullwatch-host"]);
    let down = alerts()
        .into_iter()
        .find(|a| a["alert"] == "PullwatchDown")
        .unwrap();
    let expr = down["expr"].as_str().unwrap();
    for j in jobs {
        let name = j["job_name"].as_str().unwrap();
        let watched = expr
            .split("job=~\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        assert!(
            watched.split('|').any(|j| j == name),
            "PullwatchDown misses {name}: {expr}"
        );
        let relabels = j["relabel_configs"].as_array().unwrap();
        assert!(
            relabels.iter().any(|r| r["target_label"] == "node"
                && r["source_labels"][0]
                    .as_str()
                    .is_some_and(|s| s.ends_with("node_name"))),
            "{name} sets no node label"
        );
        assert!(j["kubernetes_sd_configs"][0]["role"].is_string());
    }
    // The ServiceMonitor does the same, and its job is `pullwatch`.
    let docs = render("deploy/kubernetes/overlays/prometheus-operator");
    let sm = kind(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["jobLabel"], "app.kubernetes.io/name");
    let service = kind(&docs, "Service");
    assert_eq!(
        service["metadata"]["labels"]["app.kubernetes.io/name"],
        "pullwatch"
    );
    let relabel = &sm["spec"]["endpoints"][0]["relabelings"][0];
    assert_eq!(relabel["targetLabel"], "node");
    // Alert texts name the node, never the scrape address.
    for a in alerts() {
        let text = format!("{}", a["annotations"]);
        assert!(!text.contains("$labels.instance"), "{}: {text}", a["alert"]);
    }
}

#[test]
fn every_alert_has_severity_runbook_and_unit_tests_both_ways() {
    let tests = read("deploy/prometheus/pullwatch-rules.test.yml");
    for a in alerts() {
        let name = a["alert"].as_str().unwrap();
        assert!(
            ["warning", "critical"].contains(&a["labels"]["severity"].as_str().unwrap()),
            "{name}"
        );
        let url = a["annotations"]["runbook_url"].as_str().unwrap();
        assert!(
            url.ends_with(&format!("docs/runbooks/{name}.md")),
            "{name}: {url}"
        );
        let book = read(&format!("docs/runbooks/{name}.md"));
        assert!(
            book.contains("## Diagnose") && book.len() > 500,
            "{name}: runbook too thin"
        );
        assert!(
            a["annotations"]["summary"].as_str().unwrap().contains("{{"),
            "{name}: summary not templated"
        );
        // The unit tests have a firing case and a must-not-fire case for it.
        let section = tests
            .split("  - name: ")
            .find(|s| s.starts_with(name))
            .unwrap_or_else(|| panic!("no tests for {name}"));
        assert!(
            section.contains("exp_alerts: []") && section.contains("exp_labels"),
            "{name}"
        );
    }
}

/// Metric names a PromQL expression uses (identifiers followed by `{`, `[` or `)` that look like ours).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr
        .match_indices("pullwatch_")
        .chain(expr.match_indices("process_"))
    {
        // Part of another name, or of a recorded series' name (`level:metric:operation`).
        if i > 0
            && (expr.as_bytes()[i - 1].is_ascii_alphanumeric()
                || matches!(expr.as_bytes()[i - 1], b'_' | b':'))
        {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

fn known_metric(name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
    FAMILIES.iter().any(|f| f.name == name || f.name == base)
        || [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ]
        .contains(&name)
}

#[test]
fn dashboard_is_valid_and_uses_only_real_metrics() {
    let text = read("dashboards/pullwatch.json");
    let d: Value = serde_json::from_str(&text).unwrap();
    assert!(
        d["uid"].is_string() && d["title"].is_string() && d["schemaVersion"].as_u64() >= Some(30)
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "cluster", "node", "registry"]);
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "hard-coded datasource in {}",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
        }
    }
    let mut used = BTreeSet::new();
    for e in dashboard_exprs().iter().chain(
        alerts()
            .iter()
            .chain(group("pullwatch.recording").iter())
            .map(|a| a["expr"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        for m in metric_names(e) {
            assert!(known_metric(&m), "unknown metric {m} in {e}");
            used.insert(m);
        }
    }
    for needed in [
        "pullwatch_image_pull_failures_total",
        "pullwatch_image_pull_backoff",
        "pullwatch_cri_requests_total",
        "pullwatch_image_pull_stalled",
    ] {
        assert!(used.contains(needed), "no panel or alert uses {needed}");
    }
}

#[test]
fn systemd_unit_verifies_and_orders_before_kubelet() {
    let unit = read("deploy/systemd/pullwatch-cri-proxy.service");
    assert!(unit.contains("Before=kubelet.service") && unit.contains("Restart=always"));
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("RequiredBy=") || l.starts_with("BindsTo=")),
        "stopping pullwatch must not stop kubelet"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pullwatch-cri-proxy.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/pullwatch", env!("CARGO_BIN_EXE_pullwatch")),
    )
    .unwrap();
    let o = run("systemd-analyze", &["verify", path.to_str().unwrap()], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains("pullwatch-cri-proxy.service:"),
        "{err}"
    );
}

#[test]
fn dockerfile_builds_the_way_ci_does() {
    let df = read("Dockerfile");
    let deps = read("scripts/install-deps.sh");
    assert!(
        df.contains("cargo build --release --locked"),
        "reproducible build"
    );
    assert!(
        df.contains("protobuf-compiler") && deps.contains("protobuf-compiler"),
        "same protoc package as CI"
    );
    assert!(
        df.contains("AS build") && df.contains("COPY --from=build"),
        "multi-stage"
    );
    assert!(df.contains(r#"ENTRYPOINT ["pullwatch"]"#) && df.contains(r#"CMD ["run"]"#));
    assert!(
        df.lines()
            .any(|l| l.starts_with("USER ") && !l.contains(" 0") && !l.contains("root")),
        "non-root default user"
    );
    assert!(df.contains("org.opencontainers.image.source"));
    for line in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(src).exists(),
                "Dockerfile copies missing {src}"
            );
        }
    }
}

/// The build stage of the Dockerfile: its `COPY` sources, `ENV` settings and the `cargo build`
/// command of its `RUN`, as written.
struct BuildStage {
    copies: Vec<String>,
    env: Vec<(String, String)>,
    build: String,
}

fn build_stage(dockerfile: &str) -> BuildStage {
    let stage: Vec<&str> = dockerfile
        .lines()
        .skip_while(|l| !(l.starts_with("FROM ") && l.contains(" AS build")))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .collect();
    // Continuation lines joined, as the engine reads them.
    let mut joined = Vec::new();
    let mut cur = String::new();
    for l in stage {
        match l.trim_end().strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(l);
                joined.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut copies = Vec::new();
    let mut env = Vec::new();
    let mut build = String::new();
    for l in &joined {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.first() {
            Some(&"COPY") => copies.extend(words[1..words.len() - 1].iter().map(|w| w.to_string())),
            Some(&"ENV") => {
                for kv in &words[1..] {
                    let (k, v) = kv.split_once('=').unwrap();
                    // `${ARG}` values come from the ARG's default: none is needed to build.
                    if !v.starts_with("${") {
                        env.push((k.to_string(), v.to_string()));
                    }
                }
            }
            Some(&"RUN") if l.contains("cargo build") => {
                build = l
                    .split("&&")
                    .map(str::trim)
                    .find(|c| c.starts_with("cargo build") || c.starts_with("RUN cargo build"))
                    .unwrap()
                    .trim_start_matches("RUN ")
                    .to_string();
            }
            _ => {}
        }
    }
    BuildStage { copies, env, build }
}

/// Copies `from` into `to`, leaving out what `.dockerignore` names (top-level paths).
fn copy_context(from: &Path, to: &Path, ignored: &[String], rel: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let rel = rel.join(entry.file_name());
        if ignored.iter().any(|i| Path::new(i) == rel) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_context(&entry.path(), &target, ignored, &rel);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What an engine would build, without one: the Dockerfile's context (the checkout minus
/// `.dockerignore`), copied as its build stage's `COPY` lines say into a temporary directory,
/// then its `cargo build` command with its `ENV`, offline. The defect this catches: a file the
/// manifest needs (a bench, a proto) left out of the context.
#[test]
fn dockerfile_context_builds_offline_with_its_own_command() {
    let stage = build_stage(&read("Dockerfile"));
    assert!(
        stage.build.starts_with("cargo build --release --locked"),
        "{}",
        stage.build
    );
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(
                !l.contains('*') && !l.starts_with('!'),
                "a pattern this test does not read: {l}"
            );
            l.trim_end_matches('/').to_string()
        })
        .collect();
    assert!(ignored.iter().any(|i| i == "target"), "{ignored:?}");
    let context = tempfile::tempdir().unwrap();
    copy_context(Path::new(ROOT), context.path(), &ignored, Path::new(""));
    let work = tempfile::tempdir().unwrap();
    for src in &stage.copies {
        if src == "." {
            copy_context(context.path(), work.path(), &[], Path::new(""));
        } else {
            let from = context.path().join(src);
            assert!(from.exists(), "COPY {src}: not in the build context");
            let to = work.path().join(src);
            if from.is_dir() {
                std::fs::create_dir_all(&to).unwrap();
                copy_context(&from, &to, &[], Path::new(""));
            } else {
                std::fs::copy(&from, &to).unwrap();
            }
        }
    }
    let mut words = stage.build.split_whitespace();
    assert_eq!(words.next(), Some("cargo"));
    let target = Path::new(ROOT).join("target/dockerfile-context");
    let o = Command::new("cargo")
        .args(words)
        .current_dir(work.path())
        .envs(stage.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the Dockerfile's build fails on its context:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bin = target.join("release/pullwatch");
    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("run"));
}

#[test]
fn the_release_script_builds_both_architectures_of_the_image_the_daemonset_runs() {
    let manifest = read("deploy/kubernetes/base/daemonset.yaml");
    let image = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .unwrap()
        .to_string();
    let version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(
        image.ends_with(&format!(":{version}")),
        "{image} is not {version}"
    );
    let plan = ok("bash", &["scripts/release.sh", &version, "--dry-run"], None);
    assert!(
        plan.starts_with("docker buildx build --platform linux/amd64,linux/arm64")
            && plan.contains(&format!("--tag {image} "))
            && plan.contains("--push"),
        "{plan}"
    );
    let wrong = run("bash", &["scripts/release.sh", "9.9.9", "--dry-run"], None);
    assert_eq!(wrong.status.code(), Some(64));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("9.9.9") && err.contains(&version), "{err}");
    // The workflow runs the script for a tag.
    let workflow = read(".github/workflows/release.yml");
    assert!(workflow.contains("scripts/release.sh") && workflow.contains("tags:"));
}

/// Builds the image for real. Needs a container engine, which this machine kind does not run:
/// ignored by default, and `scripts/test.sh` runs it with `--ignored` where `docker info` works
/// (and says it skipped it otherwise). Without an engine, `dockerfile_builds_the_way_ci_does`
/// lints the Dockerfile.
#[test]
#[ignore = "needs a container engine; scripts/test.sh runs it where `docker info` works"]
fn dockerfile_builds_where_an_engine_runs() {
    let engine = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        engine.is_ok_and(|s| s.success()),
        "no container engine (docker info failed)"
    );
    let out = ok(
        "docker",
        &["build", "-q", "-t", "pullwatch:test", "."],
        None,
    );
    let size = ok(
        "docker",
        &["image", "inspect", "-f", "{{.Size}}", "pullwatch:test"],
        None,
    );
    let bytes: u64 = size.trim().parse().unwrap();
    assert!(
        bytes < 25 << 20,
        "image is {bytes} bytes (target < 25 MiB): {out}"
    );
    let help = ok("docker", &["run", "--rm", "pullwatch:test", "--help"], None);
    assert!(help.contains("run"));
}
