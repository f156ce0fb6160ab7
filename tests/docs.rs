//! The README's metric table must match the code's metric families exactly.

use pullwatch::sinks::metrics::FAMILIES;
use std::collections::BTreeMap;

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
