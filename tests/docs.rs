//! The README must match the code: its metric table the metric families exactly, its reasons
//! every reason, its Layout map the source tree.

use pullwatch::telemetry::FAMILIES;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const README: &str = include_str!("../README.md");

#[test]
fn readme_documents_every_metric_with_type_and_labels() {
    let mut documented = BTreeMap::new();
    for line in README.lines().filter(|l| l.starts_with("| `pullwatch_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let labels: Vec<String> = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        documented.insert(name, (cells[2].to_string(), labels));
    }
    for f in FAMILIES {
        let (kind, labels) = documented
            .remove(f.name)
            .unwrap_or_else(|| panic!("{} is not documented in the README", f.name));
        assert_eq!(kind, f.kind.as_str(), "{}", f.name);
        assert_eq!(labels, f.labels, "{}", f.name);
    }
    assert!(
        documented.is_empty(),
        "README documents metrics the code lacks: {documented:?}"
    );
}

#[test]
fn readme_lists_every_reason() {
    for r in pullwatch::core::reason::Reason::ALL {
        assert!(
            README.contains(&format!("| `{}` |", r.as_str())),
            "reason {r} missing from README"
        );
    }
}

/// The README's Layout map: each path it names (the words of a line of its code block before
/// two spaces), with its description (the rest of that line and the indented lines after it).
fn layout() -> BTreeMap<String, String> {
    let section = README
        .split("## Layout\n")
        .nth(1)
        .expect("README has a Layout section");
    let block = section
        .split("```\n")
        .nth(1)
        .expect("the Layout section has a code block");
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Vec<String> = Vec::new();
    for line in block.lines() {
        if line.starts_with(' ') {
            for p in &last {
                map.entry(p.clone()).or_default().push_str(line);
            }
            continue;
        }
        let (paths, about) = line.split_once("  ").unwrap_or((line, ""));
        last = paths.split_whitespace().map(str::to_string).collect();
        for p in &last {
            map.insert(p.clone(), about.trim().to_string());
        }
    }
    map
}

/// What is not part of the source tree: git's own, and what `.gitignore` names (build output,
/// the test tools' virtualenv, fuzzing's work directories), so the two lists cannot drift.
fn not_source(root: &Path) -> Vec<String> {
    let ignore = std::fs::read_to_string(root.join(".gitignore")).unwrap_or_default();
    std::iter::once(".git".to_string())
        .chain(
            ignore
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string()),
        )
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let not_source = not_source(root);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if not_source.contains(&rel) {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out);
        }
        out.push(path);
    }
}

#[test]
fn readme_layout_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = layout();
    for p in listed.keys() {
        assert!(
            root.join(p).exists(),
            "README Layout names {p}, which does not exist"
        );
    }
    // Every file and directory of the tree is listed itself, or its nearest listed directory
    // owns it: outside src/ always; in src/ when it names it (`mod.rs` goes without saying) or
    // is a leaf room that owns all it holds.
    let mut tree = Vec::new();
    walk(root, root, &mut tree);
    let has_listed_subdirs = |dir: &str| {
        listed
            .keys()
            .any(|k| k.len() > dir.len() && k.starts_with(dir) && k.ends_with('/'))
    };
    for path in tree {
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let key = if path.is_dir() {
            format!("{rel}/")
        } else {
            rel.clone()
        };
        // A directory is covered by what is listed inside it, or below.
        if listed.contains_key(&key)
            || (path.is_dir() && listed.keys().any(|k| k.starts_with(&key)))
        {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let owner = Path::new(&rel)
            .ancestors()
            .skip(1)
            .map(|a| format!("{}/", a.display()))
            .find(|a| listed.contains_key(a));
        let covered = owner.is_some_and(|dir| {
            name == "mod.rs"
                || listed[&dir].contains(&name)
                || !(dir.starts_with("src/") && has_listed_subdirs(&dir))
        });
        assert!(covered, "{rel} is missing from the README's Layout section");
    }
}

/// One minimum Rust version everywhere: Cargo.toml's `rust-version`, the README and the check
/// in `scripts/install-deps.sh`.
#[test]
fn one_minimum_rust_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml has rust-version")
        .trim_matches('"');
    assert!(
        README.contains(&format!("Rust ≥ {msrv})")),
        "README must say Rust ≥ {msrv}"
    );
    let deps = std::fs::read_to_string(root.join("scripts/install-deps.sh")).unwrap();
    assert!(
        deps.lines().any(|l| l == format!("RUST_MIN={msrv}")),
        "install-deps.sh must check {msrv}"
    );
}

/// The test command says which phase runs (a numbered banner each), and its quick mode for
/// local runs leaves out the benchmark build and fuzzing, which the full (CI) run keeps.
#[test]
fn the_test_command_announces_its_phases_and_has_a_quick_mode() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let phases = |args: &[&str]| -> Vec<String> {
        let o = std::process::Command::new("bash")
            .arg(root.join("scripts/test.sh"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("==> ["))
            .filter_map(|l| l.split_once("] ").map(|(_, rest)| rest.to_string()))
            .filter_map(|l| l.split(':').next().map(str::to_string))
            .collect()
    };
    let full = phases(&["--dry-run"]);
    assert_eq!(
        full,
        [
            "deps",
            "fmt",
            "clippy",
            "tests",
            "dockerfile",
            "benches",
            "fuzz"
        ]
    );
    let quick = phases(&["--dry-run", "--quick"]);
    assert_eq!(quick, ["deps", "fmt", "clippy", "tests", "dockerfile"]);
}
