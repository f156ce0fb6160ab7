//! Validated agent configuration, built from the command line before anything is bound.

use crate::cli::{LogFormat, RunArgs};
use crate::recorder::RecorderConfig;
use crate::sources::containerd::ContainerdConfig;
use crate::sources::cri_proxy::ProxyConfig;
use crate::sources::cri_proxy::socket::resolve_group;
use crate::sources::kube::KubeConfig;
use crate::sources::ratelimit::ProbeConfig;
use crate::sources::ratelimit::credentials::CredentialStore;
use crate::sources::ratelimit::target::ProbeTarget;
use std::net::SocketAddr;
use std::time::Duration;

/// A configuration error: names the flag and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    /// Flag name without dashes.
    pub flag: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn err(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        problem: problem.into(),
    }
}

/// Parses a human duration such as `500ms`, `10s`, `5m`.
pub fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        err(
            flag,
            format!("invalid duration {value:?} ({e}); use e.g. 500ms, 10s, 5m"),
        )
    })
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Interposer settings, if enabled.
    pub proxy: Option<ProxyConfig>,
    /// containerd source settings, if enabled.
    pub containerd: Option<ContainerdConfig>,
    /// Kubernetes API source settings, if enabled.
    pub kube: Option<KubeConfig>,
    /// Rate-limit probe settings, if enabled.
    pub ratelimit_probe: Option<ProbeConfig>,
    /// CRI status polling: runtime socket and interval, if enabled.
    pub runtime_status: Option<(std::path::PathBuf, Duration)>,
    /// HTTP endpoint address.
    pub listen: SocketAddr,
    /// TLS / basic auth configuration of the HTTP endpoint, if given.
    pub web_config: Option<std::sync::Arc<crate::web_config::WebConfig>>,
    /// Recorder limits.
    pub recorder: RecorderConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
}

impl RunConfig {
    /// Validates `args`.
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let listen: SocketAddr = args.listen.parse().map_err(|e| {
            err(
                "listen",
                format!(
                    "invalid address {:?} ({e}); use HOST:PORT, e.g. 0.0.0.0:9798",
                    args.listen
                ),
            )
        })?;
        let mode_str = args.cri_proxy_socket_mode.trim_start_matches("0o");
        let socket_mode = u32::from_str_radix(mode_str, 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                err(
                    "cri-proxy-socket-mode",
                    format!(
                        "invalid octal mode {:?}; use e.g. 0660",
                        args.cri_proxy_socket_mode
                    ),
                )
            })?;
        let socket_group = match &args.cri_proxy_socket_group {
            None => None,
            Some(_) if args.cri_proxy_socket.is_none() => {
                return Err(err("cri-proxy-socket-group", "needs --cri-proxy-socket"));
            }
            Some(g) => {
                let etc_group = std::fs::read_to_string("/etc/group").unwrap_or_default();
                Some(resolve_group(g, &etc_group).ok_or_else(|| {
                    err(
                        "cri-proxy-socket-group",
                        format!("no group {g:?} in /etc/group; give a group name or a numeric GID"),
                    )
                })?)
            }
        };
        let connect_timeout = parse_duration("connect-timeout", &args.connect_timeout)?;
        if connect_timeout.is_zero() {
            return Err(err("connect-timeout", "must be greater than 0"));
        }
        let shutdown_grace = parse_duration("shutdown-grace", &args.shutdown_grace)?;
        let backoff_expiry = parse_duration("backoff-expiry", &args.backoff_expiry)?;
        if backoff_expiry.is_zero() {
            return Err(err("backoff-expiry", "must be greater than 0"));
        }
        for (flag, n) in [
            ("max-registries", args.max_registries),
            ("max-namespaces", args.max_namespaces),
            ("image-label-cap", args.image_label_cap),
        ] {
            if n == 0 {
                return Err(err(flag, "must be at least 1"));
            }
        }
        if args.runtime_socket.as_os_str().is_empty() {
            return Err(err("runtime-socket", "must not be empty"));
        }
        let proxy = match &args.cri_proxy_socket {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(err("cri-proxy-socket", "must not be empty"));
            }
            Some(p) if p == &args.runtime_socket => {
                return Err(err(
                    "cri-proxy-socket",
                    "must differ from --runtime-socket (it would forward to itself)",
                ));
            }
            Some(p) => Some(ProxyConfig {
                listen_socket: p.clone(),
                socket_mode,
                socket_group,
                runtime_socket: args.runtime_socket.clone(),
                connect_timeout,
                shutdown_grace,
            }),
            None => None,
        };
        let kube = Self::kube(args, proxy.is_none())?;
        let poll_interval = parse_duration("ingest-poll-interval", &args.ingest_poll_interval)?;
        if poll_interval < Duration::from_millis(50) {
            return Err(err("ingest-poll-interval", "must be at least 50ms"));
        }
        let stall_after = parse_duration("stall-after", &args.stall_after)?;
        if stall_after < poll_interval {
            return Err(err(
                "stall-after",
                "must be at least --ingest-poll-interval",
            ));
        }
        if args.containerd_namespace.trim().is_empty() {
            return Err(err("containerd-namespace", "must not be empty"));
        }
        let containerd = match &args.containerd_socket {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(err("containerd-socket", "must not be empty"));
            }
            Some(p) => Some(ContainerdConfig {
                socket: p.clone(),
                namespace: args.containerd_namespace.clone(),
                poll_interval,
                stall_after,
                // One authority for attempts: the interposer, else the Kubernetes API.
                emit_attempts: proxy.is_none() && kube.is_none(),
            }),
            None => None,
        };
        let ratelimit_probe = Self::ratelimit_probe(args)?;
        if proxy.is_none() && containerd.is_none() && kube.is_none() && ratelimit_probe.is_none() {
            return Err(err(
                "cri-proxy-socket",
                "no source enabled: pass --cri-proxy-socket PATH (interposer), --containerd-socket PATH (passive mode), --kube (Kubernetes API) and/or --ratelimit-probe REGISTRY",
            ));
        }
        let status_interval =
            parse_duration("runtime-status-interval", &args.runtime_status_interval)?;
        let runtime_status =
            (!status_interval.is_zero()).then(|| (args.runtime_socket.clone(), status_interval));
        tracing_subscriber::EnvFilter::try_new(&args.log_level).map_err(|e| {
            err(
                "log-level",
                format!("invalid filter {:?}: {e}", args.log_level),
            )
        })?;
        let web_config = match &args.web_config_file {
            Some(p) => Some(std::sync::Arc::new(
                crate::web_config::WebConfig::load(p).map_err(|e| {
                    err("web.config.file", format!("{}: {}", p.display(), e.problem))
                })?,
            )),
            None => None,
        };
        Ok(Self {
            web_config,
            proxy,
            containerd,
            kube,
            ratelimit_probe,
            runtime_status,
            listen,
            recorder: RecorderConfig {
                backoff_expiry,
                max_registries: args.max_registries,
                max_namespaces: args.max_namespaces,
                image_label_cap: args.image_label.then_some(args.image_label_cap),
            },
            log_format: args.log_format,
            log_level: args.log_level.clone(),
        })
    }
}

impl RunConfig {
    fn kube(args: &RunArgs, emit_attempts: bool) -> Result<Option<KubeConfig>, ConfigError> {
        if !args.kube {
            if args.kubeconfig.is_some() {
                return Err(err("kubeconfig", "only used with --kube"));
            }
            if !args.kube_events {
                return Err(err("kube-events", "only used with --kube"));
            }
            return Ok(None);
        }
        let node_name = args
            .node_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                err(
                    "node-name",
                    "required with --kube (the DaemonSet sets PULLWATCH_NODE_NAME from spec.nodeName)",
                )
            })?;
        if let Some(p) = &args.kubeconfig
            && !p.is_file()
        {
            return Err(err(
                "kubeconfig",
                format!("{} is not a readable file", p.display()),
            ));
        }
        Ok(Some(KubeConfig {
            node_name: node_name.to_string(),
            kubeconfig: args.kubeconfig.clone(),
            emit_attempts,
            watch_events: args.kube_events,
        }))
    }

    fn ratelimit_probe(args: &RunArgs) -> Result<Option<ProbeConfig>, ConfigError> {
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
        let interval = parse_duration("ratelimit-probe-interval", &args.ratelimit_probe_interval)?;
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
        Ok(Some(ProbeConfig {
            targets,
            interval,
            credentials,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["pullwatch", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_validate() {
        let c = RunConfig::from_args(&run_args(&["--cri-proxy-socket", "/run/pw.sock"])).unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.socket_mode, 0o660);
        assert_eq!(p.socket_group, None);
        let c = RunConfig::from_args(&run_args(&[
            "--cri-proxy-socket",
            "/run/pw.sock",
            "--cri-proxy-socket-group",
            "root",
        ]))
        .unwrap();
        assert_eq!(c.proxy.unwrap().socket_group, Some(0));
        let e = RunConfig::from_args(&run_args(&[
            "--containerd-socket",
            "/c.sock",
            "--cri-proxy-socket-group",
            "0",
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--cri-proxy-socket-group: needs --cri-proxy-socket"),
            "{e}"
        );
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.listen.port(), 9798);
        assert_eq!(c.recorder.backoff_expiry, Duration::from_secs(600));
        assert_eq!(c.recorder.image_label_cap, None);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "nope"], "--listen: invalid address"),
            (
                &["--cri-proxy-socket-mode", "999"],
                "--cri-proxy-socket-mode",
            ),
            (
                &["--connect-timeout", "fast"],
                "--connect-timeout: invalid duration",
            ),
            (
                &["--backoff-expiry", "0s"],
                "--backoff-expiry: must be greater than 0",
            ),
            (
                &["--max-registries", "0"],
                "--max-registries: must be at least 1",
            ),
            (
                &["--runtime-socket", "/run/pw.sock"],
                "must differ from --runtime-socket",
            ),
            (&["--log-level", "=[bad"], "--log-level"),
            (
                &["--cri-proxy-socket-group", "no-such-group-pullwatch"],
                "--cri-proxy-socket-group: no group \"no-such-group-pullwatch\" in /etc/group",
            ),
        ];
        for (extra, want) in cases {
            let mut argv = vec!["--cri-proxy-socket", "/run/pw.sock"];
            argv.extend_from_slice(extra);
            let e = RunConfig::from_args(&run_args(&argv))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = RunConfig::from_args(&run_args(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no source enabled"), "{e}");
        let e = RunConfig::from_args(&run_args(&[
            "--containerd-socket",
            "/c.sock",
            "--stall-after",
            "10ms",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--stall-after"), "{e}");
    }

    #[test]
    fn passive_mode_emits_attempts_only_without_the_interposer() {
        let c = RunConfig::from_args(&run_args(&["--containerd-socket", "/c.sock"])).unwrap();
        let cd = c.containerd.unwrap();
        assert!(cd.emit_attempts);
        assert_eq!(
            (cd.namespace.as_str(), cd.stall_after),
            ("k8s.io", Duration::from_secs(60))
        );
        assert_eq!(c.runtime_status.unwrap().1, Duration::from_secs(30));
        let c = RunConfig::from_args(&run_args(&[
            "--containerd-socket",
            "/c.sock",
            "--cri-proxy-socket",
            "/p.sock",
            "--runtime-status-interval",
            "0s",
        ]))
        .unwrap();
        assert!(!c.containerd.unwrap().emit_attempts);
        assert!(c.runtime_status.is_none());
    }

    #[test]
    fn image_label_flag_sets_cap() {
        let c = RunConfig::from_args(&run_args(&[
            "--cri-proxy-socket",
            "/x.sock",
            "--image-label",
            "--image-label-cap",
            "7",
        ]))
        .unwrap();
        assert_eq!(c.recorder.image_label_cap, Some(7));
    }
}
