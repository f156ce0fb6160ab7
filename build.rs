//! Generates Rust types and gRPC client/server stubs for the CRI subset in `proto/`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Never let a derived Debug print credentials.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_protos(&["proto/cri.proto"], &["proto"])?;
    Ok(())
}
