//! The rate-limit probe's flags and its validated settings (credentials loaded here).

use super::credentials::CredentialStore;
use super::target::ProbeTarget;
use crate::flags::{self, ConfigError, err};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of the rate-limit probe.
#[derive(Debug, Args)]
#[command(next_help_heading = "Rate-limit probe")]
pub struct ProbeArgs {
    /// Probe a registry's pull rate-limit headroom (off by default; repeatable): `docker.io`
    /// (HEADs `ratelimitpreview/test`, which Docker Hub does not count as a pull), or
    /// `[http://|https://]HOST[:PORT]/REPOSITORY[:TAG]` for another registry's manifest.
    #[arg(
        long,
        env = "PULLWATCH_RATELIMIT_PROBE",
        value_name = "REGISTRY",
        value_delimiter = ','
    )]
    pub ratelimit_probe: Vec<String>,

    /// How often each rate-limit probe runs (jittered by up to 10%).
    #[arg(
        long,
        env = "PULLWATCH_RATELIMIT_PROBE_INTERVAL",
        default_value = "5m",
        value_name = "DURATION",
        value_parser = flags::duration
    )]
    pub ratelimit_probe_interval: Duration,

    /// A `.dockerconfigjson` file (e.g. a mounted pull secret) with credentials for the probed
    /// registries; without it (or without an entry) the probe is anonymous. Never logged.
    #[arg(long, env = "PULLWATCH_RATELIMIT_PROBE_AUTH", value_name = "PATH")]
    pub ratelimit_probe_auth: Option<PathBuf>,
}

/// Settings of the probe.
#[derive(Debug, Clone)]
pub(crate) struct ProbeConfig {
    /// What to probe.
    pub targets: Vec<ProbeTarget>,
    /// Mean interval between probes of one target.
    pub interval: Duration,
    /// Credentials by registry.
    pub credentials: CredentialStore,
}

impl ProbeConfig {
    /// The probe's settings, or `None` without `--ratelimit-probe`.
    pub(crate) fn from_args(args: &ProbeArgs) -> Result<Option<Self>, ConfigError> {
        let specs: Vec<&str> = args
            .ratelimit_probe
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if specs.is_empty() {
            if args.ratelimit_probe_auth.is_some() {
                return Err(err(
                    "ratelimit-probe-auth",
                    "only used with --ratelimit-probe",
                ));
            }
            return Ok(None);
        }
        let mut targets = Vec::new();
        for s in specs {
            let t = ProbeTarget::parse(s).map_err(|p| err("ratelimit-probe", p))?;
            if targets
                .iter()
                .any(|o: &ProbeTarget| o.registry == t.registry)
            {
                return Err(err(
                    "ratelimit-probe",
                    format!("{} is named twice (one probe per registry)", t.registry),
                ));
            }
            targets.push(t);
        }
        let interval = args.ratelimit_probe_interval;
        if interval < Duration::from_secs(1) {
            return Err(err("ratelimit-probe-interval", "must be at least 1s"));
        }
        let credentials = match &args.ratelimit_probe_auth {
            Some(p) => CredentialStore::load(p).map_err(|e| {
                err(
                    "ratelimit-probe-auth",
                    format!("{}: {}", p.display(), e.problem),
                )
            })?,
            None => CredentialStore::default(),
        };
        Ok(Some(Self {
            targets,
            interval,
            credentials,
        }))
    }
}
