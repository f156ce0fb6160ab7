//! Generated types and gRPC stubs for the CRI subset in `proto/cri.proto` (package `runtime.v1`),
//! plus pullwatch's decoding views.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("runtime.v1");

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
