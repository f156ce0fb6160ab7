#![no_main]
//! Fuzz target: `pullwatch::fuzzing::pull_response` (its invariants are documented there).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pullwatch::fuzzing::pull_response(data));
