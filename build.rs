//! Generates Rust types and gRPC client/server stubs for the CRI subset in `proto/`, compiles
//! the kernel tap's BPF programs with clang (`src/sources/cri_tap/bpf/tap.bpf.c`, CO-RE; see
//! `bpf()`), and stamps the git revision into `pullwatch_build_info` (`PULLWATCH_REVISION` if
//! given, as the Dockerfile does; else `git rev-parse` when building from a checkout; else
//! `unknown`).
use std::path::Path;
use std::process::Command;

fn revision() -> String {
    println!("cargo:rerun-if-env-changed=PULLWATCH_REVISION");
    if let Ok(r) = std::env::var("PULLWATCH_REVISION")
        && !r.is_empty()
        && r != "unknown"
    {
        return r;
    }
    let git = Path::new(".git");
    if !git.exists() {
        return "unknown".into();
    }
    // Rebuild when the checkout moves: HEAD, the branch it names, packed refs. (A worktree's
    // .git is a file: no files to watch, the revision is read at each full rebuild.)
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
            && let Some(r) = head.trim().strip_prefix("ref: ")
            && git.join(r).exists()
        {
            println!("cargo:rerun-if-changed=.git/{r}");
        }
        if git.join("packed-refs").exists() {
            println!("cargo:rerun-if-changed=.git/packed-refs");
        }
    }
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into())
}

/// Compiles the tap's BPF object into `OUT_DIR/tap.bpf.o` with clang (`PULLWATCH_CLANG`, else
/// `clang`), for the target's architecture. Without clang the build goes on with an empty
/// object and the tap says at run time that it was built without it; `PULLWATCH_REQUIRE_BPF=1`
/// (CI, the Dockerfile) makes a missing or failing clang a build error instead.
fn bpf() -> Result<(), Box<dyn std::error::Error>> {
    const SOURCE: &str = "src/sources/cri_tap/bpf/tap.bpf.c";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=PULLWATCH_CLANG");
    println!("cargo:rerun-if-env-changed=PULLWATCH_REQUIRE_BPF");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tap.bpf.o");
    let required = std::env::var("PULLWATCH_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let (define, multiarch) = match arch.as_str() {
        "x86_64" => ("__TARGET_ARCH_x86", "x86_64-linux-gnu"),
        "aarch64" => ("__TARGET_ARCH_arm64", "aarch64-linux-gnu"),
        other => {
            std::fs::write(&out, b"")?;
            println!(
                "cargo:warning=the kernel tap is not built for {other} (x86_64 and aarch64 only)"
            );
            return Ok(());
        }
    };
    let clang = std::env::var("PULLWATCH_CLANG").unwrap_or_else(|_| "clang".into());
    let result = Command::new(&clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-D{define}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", SOURCE, "-o"])
        .arg(&out)
        .output();
    let problem = match result {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => format!("{clang} failed:\n{}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!(
            "{clang} not found ({e}); install clang and libbpf-dev (scripts/install-deps.sh does)"
        ),
    };
    if required {
        return Err(format!("the kernel tap's BPF programs: {problem}").into());
    }
    std::fs::write(&out, b"")?;
    println!(
        "cargo:warning=building without the kernel tap (--cri-tap will say so): {}",
        problem.lines().next().unwrap_or_default()
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    bpf()?;
    println!("cargo:rustc-env=PULLWATCH_REVISION={}", revision());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Never let a derived Debug print credentials.
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_protos(&["proto/cri.proto"], &["proto"])?;
    Ok(())
}
