//! Dependency review that runs offline in CI (the RustSec advisory database lives on GitHub,
//! which CI cannot reach; see docs/dependencies.md): every crate in the build is under a
//! permissive license, and the crates pullwatch's safety and size depend on appear in exactly one
//! version (one tonic, one hyper, one rustls, ...).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Licenses any dependency may use (alone, or as one side of an OR).
const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "0BSD",
    "Unlicense",
    "Unicode-3.0",
    "BSL-1.0",
    "CC0-1.0",
];

/// Crates that must not be duplicated: two of them would mean two HTTP/2 or TLS stacks (size,
/// and fixes landing in one copy only), or two gRPC stacks that cannot share types.
const SINGLE: &[&str] = &[
    "tokio",
    "tonic",
    "prost",
    "hyper",
    "h2",
    "http",
    "rustls",
    "tokio-rustls",
    "kube-client",
    "k8s-openapi",
    "procfs",
    "prometheus",
];

/// `cargo metadata` for the Linux build, and the ids of the packages actually in it.
fn metadata() -> (Value, BTreeSet<String>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let in_build = m["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    (m, in_build)
}

/// Evaluates an SPDX expression (`A OR (B AND C)`, `A/B`, `X WITH Y`) against [`ALLOWED`].
fn allowed(spdx: &str) -> bool {
    let spaced = spdx
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let mut tokens: Vec<String> = Vec::new();
    let mut words = spaced.split_whitespace().peekable();
    while let Some(w) = words.next() {
        if w == "WITH" {
            let exception = words.next().unwrap_or_default();
            let last = tokens.pop().unwrap_or_default();
            tokens.push(format!("{last} WITH {exception}"));
        } else {
            tokens.push(w.to_string());
        }
    }
    fn expr(t: &[String], i: &mut usize) -> bool {
        let mut any = term(t, i);
        while t.get(*i).is_some_and(|x| x == "OR") {
            *i += 1;
            any |= term(t, i);
        }
        any
    }
    fn term(t: &[String], i: &mut usize) -> bool {
        let mut all = factor(t, i);
        while t.get(*i).is_some_and(|x| x == "AND") {
            *i += 1;
            all &= factor(t, i);
        }
        all
    }
    fn factor(t: &[String], i: &mut usize) -> bool {
        let tok = t.get(*i).cloned().unwrap_or_default();
        *i += 1;
        if tok == "(" {
            let v = expr(t, i);
            *i += 1; // ")"
            v
        } else {
            ALLOWED.contains(&tok.as_str())
        }
    }
    let mut i = 0;
    !tokens.is_empty() && expr(&tokens, &mut i) && i == tokens.len()
}

#[test]
fn spdx_evaluation() {
    assert!(allowed("MIT OR Apache-2.0"));
    assert!(allowed("MIT/Apache-2.0"));
    assert!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(allowed(
        "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT"
    ));
    assert!(!allowed("GPL-3.0"));
    assert!(!allowed("MIT AND GPL-3.0"));
    assert!(allowed("GPL-3.0 OR MIT"));
    assert!(!allowed(""));
}

#[test]
fn every_dependency_is_permissively_licensed() {
    let (m, in_build) = metadata();
    let mut bad = Vec::new();
    let mut n = 0;
    for p in m["packages"].as_array().unwrap() {
        if !in_build.contains(p["id"].as_str().unwrap()) || p["source"].is_null() {
            continue; // not built for Linux, or our own crate
        }
        n += 1;
        let license = p["license"].as_str().unwrap_or("");
        if !allowed(license) {
            bad.push(format!("{} {}: {license:?}", p["name"], p["version"]));
        }
    }
    assert!(n > 100, "only {n} dependencies seen");
    assert!(bad.is_empty(), "licenses to review:\n{}", bad.join("\n"));
}

#[test]
fn key_crates_appear_once() {
    let (m, in_build) = metadata();
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in m["packages"].as_array().unwrap() {
        if in_build.contains(p["id"].as_str().unwrap()) {
            versions
                .entry(p["name"].as_str().unwrap())
                .or_default()
                .insert(p["version"].as_str().unwrap());
        }
    }
    for name in SINGLE {
        let v = versions.get(name).cloned().unwrap_or_default();
        assert_eq!(v.len(), 1, "{name}: {v:?}");
    }
}
