#![no_main]
//! Fuzz target: `pullwatch::fuzzing::late_join` (its invariants are documented there).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pullwatch::fuzzing::late_join(data));
