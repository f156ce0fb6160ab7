#![no_main]
//! Fuzz target: `pullwatch::fuzzing::grpc_message` (its invariants are documented there).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pullwatch::fuzzing::grpc_message(data));
