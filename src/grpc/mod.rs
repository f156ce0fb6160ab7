//! Minimal gRPC wire handling for the interposer: message framing, status metadata, deadlines.

pub(crate) mod frame;
pub(crate) mod status;
pub(crate) mod timeout;
