#![no_main]
//! Fuzz target: `pullwatch::fuzzing::hpack_cost` (its invariants are documented there).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pullwatch::fuzzing::hpack_cost(data));
