//! The CRI protocol: generated types and gRPC stubs for the subset in `proto/cri.proto` (package
//! `runtime.v1`) with pullwatch's decoding views, and the client ([`client`]) that
//! `pullwatch pull`, the runtime status source and the tests use.

pub mod client;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("runtime.v1");
}

pub use generated::*;

/// Redacting `Debug`: shows which credential fields are set, never their values.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| {
            if s.is_empty() {
                "<empty>"
            } else {
                "<redacted>"
            }
        };
        f.debug_struct("AuthConfig")
            .field("username", &set(&self.username))
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}
