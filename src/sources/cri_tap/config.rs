//! The tap's flags and its validated settings.

use crate::flags::{ConfigError, err};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of the kernel tap.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kernel tap")]
pub struct TapArgs {
    /// Observe the runtime's CRI socket (--runtime-socket) in the kernel: BPF programs copy
    /// the bytes the runtime reads and writes on the connections accepted there, and the same
    /// observer as the interposer's reads them. No kubelet change and nothing in kubelet's
    /// path. Needs Linux >= 5.8 with BTF, CAP_BPF and CAP_PERFMON (or root), the host's PID
    /// namespace, and CAP_SYS_PTRACE to read the runtime's descriptors. If it cannot load, one
    /// line says why, `pullwatch_source_up{source="cri_tap"}` is 0, and the other sources go on.
    #[arg(long, env = "PULLWATCH_CRI_TAP")]
    pub cri_tap: bool,

    /// Size of the tap's ring buffer in MiB (a power of two): bytes wait there between the
    /// kernel and pullwatch. When it is full, bytes are lost (counted) and the connection is
    /// read again from its next frame boundary.
    #[arg(
        long,
        env = "PULLWATCH_CRI_TAP_RING_MIB",
        default_value_t = 8,
        value_name = "MIB",
        value_parser = ring_mib
    )]
    pub cri_tap_ring_mib: u32,
}

/// A power of two from 1 to 1024.
fn ring_mib(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=1024).contains(&n) && n.is_power_of_two() => Ok(n),
        Ok(_) => Err("must be a power of two from 1 to 1024".into()),
        Err(e) => Err(format!("invalid number {value:?} ({e})")),
    }
}

/// Settings of the tap.
#[derive(Debug, Clone)]
pub(crate) struct TapConfig {
    /// The runtime's CRI socket.
    pub runtime_socket: PathBuf,
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// Where the processes are read (`/proc`).
    pub proc: PathBuf,
    /// How often the runtime is checked (restarted?) and the followed connections reconciled.
    pub rescan: Duration,
}

impl TapConfig {
    /// The tap's settings on `runtime_socket`, or `None` without `--cri-tap`.
    pub(crate) fn from_args(
        args: &TapArgs,
        runtime_socket: &Path,
    ) -> Result<Option<Self>, ConfigError> {
        if !args.cri_tap {
            return Ok(None);
        }
        if !cfg!(target_os = "linux") {
            return Err(err("cri-tap", "the kernel tap needs Linux"));
        }
        Ok(Some(Self {
            runtime_socket: runtime_socket.to_path_buf(),
            ring_bytes: args.cri_tap_ring_mib << 20,
            proc: PathBuf::from("/proc"),
            rescan: Duration::from_secs(2),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_a_power_of_two() {
        assert_eq!(ring_mib("8"), Ok(8));
        assert!(ring_mib("3").is_err());
        assert!(ring_mib("0").is_err());
        assert!(ring_mib("2048").is_err());
        assert!(ring_mib("x").is_err());
    }
}
