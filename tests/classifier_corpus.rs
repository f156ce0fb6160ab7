//! The classifier against the corpus of real runtime error texts in `tests/fixtures/`.

use pullwatch::core::classifier::classify_message;
use pullwatch::core::reason::Reason;
use std::collections::BTreeSet;

const CORPUS: &str = include_str!("fixtures/error_corpus.tsv");

fn lines() -> Vec<(usize, Reason, &'static str, &'static str)> {
    CORPUS
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .map(|(i, l)| {
            let mut parts = l.splitn(3, '\t');
            let (reason, source, message) = (parts.next(), parts.next(), parts.next());
            let (Some(reason), Some(source), Some(message)) = (reason, source, message) else {
                panic!("line {}: want reason<TAB>source<TAB>message", i + 1)
            };
            let reason = Reason::from_label(reason)
                .unwrap_or_else(|| panic!("line {}: unknown reason {reason}", i + 1));
            (i + 1, reason, source, message)
        })
        .collect()
}

#[test]
fn every_corpus_line_gets_its_reason() {
    let wrong: Vec<String> = lines()
        .into_iter()
        .filter(|(_, want, _, msg)| classify_message(msg) != *want)
        .map(|(n, want, src, msg)| {
            format!(
                "line {n} ({src}): want {want}, got {}: {msg}",
                classify_message(msg)
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn corpus_covers_every_reason_and_real_e2e_texts() {
    let covered: BTreeSet<Reason> = lines().iter().map(|l| l.1).collect();
    for r in Reason::ALL {
        assert!(covered.contains(&r), "no corpus line for {r}");
    }
    let e2e: BTreeSet<Reason> = lines()
        .iter()
        .filter(|l| l.2 == "containerd-1.6-e2e")
        .map(|l| l.1)
        .collect();
    for r in [
        "not_found",
        "unauthorized",
        "rate_limited",
        "registry_error",
        "network",
        "dns",
        "tls",
        "invalid_reference",
        "timeout",
    ] {
        assert!(
            e2e.contains(&Reason::from_label(r).unwrap()),
            "no real e2e text for {r}"
        );
    }
}
