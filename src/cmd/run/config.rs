//! The agent's validated configuration: each room builds its own from its flags (next to its
//! code); here they are put together, with the one decision that spans them (which source
//! records attempts) and the check that at least one source is on. Nothing is bound yet.

use super::RunArgs;
use crate::flags::{ConfigError, err};
use crate::http::HttpConfig;
use crate::logging::LogFormat;
use crate::recorder::{RecorderConfig, Sources};
use crate::sources::containerd::ContainerdConfig;
use crate::sources::cri_proxy::ProxyConfig;
use crate::sources::cri_tap::TapConfig;
use crate::sources::endpoints::EndpointConfig;
use crate::sources::kube::KubeConfig;
use crate::sources::ratelimit::ProbeConfig;
use crate::sources::runtime_status::RuntimeStatusConfig;

/// The agent's configuration.
#[derive(Debug, Clone)]
pub(crate) struct RunConfig {
    /// Interposer settings, if enabled.
    pub proxy: Option<ProxyConfig>,
    /// Kernel tap settings, if enabled.
    pub tap: Option<TapConfig>,
    /// containerd source settings, if enabled.
    pub containerd: Option<ContainerdConfig>,
    /// Endpoint witness settings, if enabled (with the containerd source).
    pub endpoints: Option<EndpointConfig>,
    /// Kubernetes API source settings, if enabled.
    pub kube: Option<KubeConfig>,
    /// Rate-limit probe settings, if enabled.
    pub ratelimit_probe: Option<ProbeConfig>,
    /// Events on pods, if enabled.
    pub pod_events: Option<crate::sinks::pod_events::PodEventsConfig>,
    /// Runtime status poller settings, if enabled.
    pub runtime_status: Option<RuntimeStatusConfig>,
    /// HTTP endpoint settings.
    pub http: HttpConfig,
    /// Recorder limits and the attempt authority.
    pub recorder: RecorderConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
}

impl RunConfig {
    /// Validates `args`.
    pub(crate) fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        if args.runtime_socket.as_os_str().is_empty() {
            return Err(err("runtime-socket", "must not be empty"));
        }
        let proxy = ProxyConfig::from_args(&args.interposer, &args.runtime_socket)?;
        let tap = TapConfig::from_args(&args.tap, &args.runtime_socket)?;
        let kube = KubeConfig::from_args(&args.kube)?;
        let containerd = ContainerdConfig::from_args(&args.containerd)?;
        let endpoints = EndpointConfig::from_args(
            &args.endpoints,
            containerd.as_ref().map(|c| c.socket.as_path()),
        )?;
        let ratelimit_probe = ProbeConfig::from_args(&args.ratelimit)?;
        let pod_events = match (&args.pod_events, &kube) {
            (a, _) if !a.pod_events => None,
            (a, Some(k)) => Some(crate::sinks::pod_events::PodEventsConfig {
                after: a.pod_events_after,
                node: k.node_name.clone(),
            }),
            (_, None) => {
                return Err(err(
                    "pod-events",
                    "needs --kube (its API credentials and --node-name)",
                ));
            }
        };
        if proxy.is_none()
            && tap.is_none()
            && containerd.is_none()
            && kube.is_none()
            && ratelimit_probe.is_none()
        {
            return Err(err(
                "cri-proxy-socket",
                "no source enabled: pass --cri-tap (kernel tap), --cri-proxy-socket PATH (interposer), --containerd-socket PATH (passive mode), --kube (Kubernetes API) and/or --ratelimit-probe REGISTRY",
            ));
        }
        let sources = Sources {
            interposer: proxy.is_some(),
            tap: tap.is_some(),
            kube: kube.is_some(),
            containerd: containerd.is_some(),
        };
        let recorder = RecorderConfig::from_args(&args.recorder, sources);
        args.log.validate()?;
        Ok(Self {
            runtime_status: RuntimeStatusConfig::from_args(
                &args.runtime_status,
                &args.runtime_socket,
            )?,
            http: HttpConfig::from_args(&args.http)?,
            proxy,
            tap,
            containerd,
            endpoints,
            kube,
            ratelimit_probe,
            pod_events,
            recorder,
            log_format: args.log.log_format,
            log_level: args.log.log_level.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Cli, Command};
    use crate::recorder::Authority;
    use clap::Parser;
    use std::time::Duration;

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["pullwatch", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The one-line error `pullwatch run ARGS` stops with: from a flag's parser (at parse
    /// time) or from validation.
    fn error(extra: &[&str]) -> String {
        let mut argv = vec!["pullwatch", "run"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv) {
            Err(e) => crate::cmd::value_error_line(&e).unwrap_or_else(|| e.to_string()),
            Ok(Cli {
                command: Command::Run(a),
            }) => RunConfig::from_args(&a).unwrap_err().to_string(),
            Ok(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_validate() {
        let c = RunConfig::from_args(&run_args(&["--cri-proxy-socket", "/run/pw.sock"])).unwrap();
        let p = c.proxy.unwrap();
        assert_eq!(p.socket_mode, 0o660);
        assert!(!p.world_writable());
        let open = RunConfig::from_args(&run_args(&[
            "--cri-proxy-socket",
            "/run/pw.sock",
            "--cri-proxy-socket-mode",
            "0777",
        ]))
        .unwrap();
        assert!(open.proxy.unwrap().world_writable(), "0777 is warned about");
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
        assert_eq!(c.http.listen.port(), 9798);
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
                &["--runtime-status-interval", "1ns"],
                "--runtime-status-interval: must be 0s (off) or at least 1s",
            ),
            (
                &["--cri-proxy-socket-mode", "+660"],
                "--cri-proxy-socket-mode",
            ),
            (
                &["--cri-proxy-socket-group", "4294967295"],
                "--cri-proxy-socket-group: 4294967295 is not a group",
            ),
            (
                &["--cri-proxy-socket-group", "no-such-group-pullwatch"],
                "--cri-proxy-socket-group: no group \"no-such-group-pullwatch\" in /etc/group",
            ),
        ];
        for (extra, want) in cases {
            let mut argv = vec!["--cri-proxy-socket", "/run/pw.sock"];
            argv.extend_from_slice(extra);
            let e = error(&argv);
            assert!(e.contains(want), "{extra:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
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
        assert_eq!(Authority::of(c.recorder.sources), Authority::Containerd);
        let cd = c.containerd.unwrap();
        assert_eq!(
            (cd.namespace.as_str(), cd.stall_after),
            ("k8s.io", Duration::from_secs(60))
        );
        assert_eq!(c.runtime_status.unwrap().interval, Duration::from_secs(30));
        let c = RunConfig::from_args(&run_args(&[
            "--containerd-socket",
            "/c.sock",
            "--cri-proxy-socket",
            "/p.sock",
            "--runtime-status-interval",
            "0s",
        ]))
        .unwrap();
        assert_eq!(Authority::of(c.recorder.sources), Authority::Observed);
        assert!(c.recorder.join_content.is_some());
        assert!(c.containerd.is_some());
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

    #[test]
    fn the_endpoint_witness_runs_with_the_containerd_source_unless_turned_off() {
        use crate::sources::endpoints::HostsSource;
        let ctd = ["--containerd-socket", "/c.sock"];
        let c = RunConfig::from_args(&run_args(&ctd)).unwrap();
        let e = c.endpoints.expect("on with the containerd source");
        assert_eq!(
            e.hosts,
            HostsSource::ContainerdConfig("/etc/containerd/config.toml".into())
        );
        assert_eq!(e.poll_interval, Duration::from_secs(1));
        let dir = [ctd[0], ctd[1], "--registry-config-path", "/etc/certs.d"];
        let c = RunConfig::from_args(&run_args(&dir)).unwrap();
        assert_eq!(
            c.endpoints.unwrap().hosts,
            HostsSource::Dir("/etc/certs.d".into())
        );
        let off = [ctd[0], ctd[1], "--no-endpoints"];
        assert!(
            RunConfig::from_args(&run_args(&off))
                .unwrap()
                .endpoints
                .is_none()
        );
        assert!(
            RunConfig::from_args(&run_args(&["--kube", "--node-name", "n"]))
                .unwrap()
                .endpoints
                .is_none()
        );
        for (args, says) in [
            (
                &["--kube", "--node-name", "n", "--registry-config-path", "/d"][..],
                "--registry-config-path: needs --containerd-socket",
            ),
            (
                &[ctd[0], ctd[1], "--endpoint-poll-interval", "10ms"][..],
                "--endpoint-poll-interval: must be at least 100ms",
            ),
        ] {
            let e = RunConfig::from_args(&run_args(args))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
