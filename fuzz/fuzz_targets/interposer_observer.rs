#![no_main]
//! Fuzz target: `pullwatch::fuzzing::interposer_observer` (its invariants are documented there).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pullwatch::fuzzing::interposer_observer(data));
