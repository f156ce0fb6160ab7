//! Replays the saved fuzz corpus (`fuzz/corpus/<target>/`, seeds plus whatever `scripts/fuzz.sh`
//! found worth keeping) through the same target functions the fuzzers call, on stable Rust, so
//! every past input keeps passing. A panic here is a regression.

use pullwatch::fuzzing::TARGETS;
use std::path::Path;

#[test]
fn every_saved_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", path.display());
            n += 1;
        }
        assert!(
            n >= 3,
            "{name}: only {n} corpus inputs in {}",
            dir.display()
        );
    }
    // Every target directory is a known target (a renamed target must take its corpus along).
    for entry in std::fs::read_dir(&root).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "corpus for unknown target {name}"
        );
    }
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("pullwatch::fuzzing::{name}(data)")),
            "{name}"
        );
    }
}
