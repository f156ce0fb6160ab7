//! Minimal gRPC wire handling for the interposer: message framing, status metadata, deadlines.

pub mod frame;
pub mod status;
pub mod timeout;
