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

/// The README's Layout map: each path it names (the first word of a line of its code block),
/// with its description (the rest of that line and the indented lines after it).
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
    let mut last = String::new();
    for line in block.lines() {
        if line.starts_with(' ') {
            map.entry(last.clone()).or_default().push_str(line);
            continue;
        }
        let mut words = line.splitn(2, char::is_whitespace);
        last = words.next().unwrap_or_default().to_string();
        map.insert(last.clone(), words.next().unwrap_or_default().to_string());
    }
    map
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
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
    // Every directory under src/ is listed. A file is listed itself, or its directory is and
    // either names it (`mod.rs` goes without saying) or is a leaf room that owns all its files.
    let mut tree = Vec::new();
    walk(&root.join("src"), &mut tree);
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
        let covered = if path.is_dir() {
            listed.contains_key(&format!("{rel}/"))
        } else {
            let parent = format!("{}/", Path::new(&rel).parent().unwrap().display());
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            listed.contains_key(&rel)
                || listed.get(&parent).is_some_and(|about| {
                    name == "mod.rs" || about.contains(&name) || !has_listed_subdirs(&parent)
                })
        };
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
