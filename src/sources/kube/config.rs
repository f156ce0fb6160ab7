//! The Kubernetes API source's flags and its validated settings.

use crate::flags::{ConfigError, err};
use clap::Args;
use std::path::PathBuf;

/// Flags of the Kubernetes API source.
#[derive(Debug, Args)]
#[command(next_help_heading = "Kubernetes API source")]
pub struct KubeArgs {
    /// Turn on the Kubernetes API source: kubelet's pull events and the container statuses of
    /// this node's pods give failure causes, kubelet-measured durations and backoff without the
    /// interposer. Needs --node-name and get/list/watch on pods and events.
    #[arg(long, env = "PULLWATCH_KUBE")]
    pub kube: bool,

    /// This node's name (the DaemonSet sets it from `spec.nodeName`); with --kube.
    #[arg(long, env = "PULLWATCH_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// With --kube: also watch kubelet's Pod events (successes with kubelet's durations, failures
    /// at once). `false` watches only this node's pods, for clusters where every agent receiving
    /// the cluster-wide stream of kubelet events is too much (the API cannot filter events by
    /// node): failures and backoff then come from pod statuses alone, successes are not seen.
    #[arg(
        long,
        env = "PULLWATCH_KUBE_EVENTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub kube_events: bool,

    /// kubeconfig for the Kubernetes API (local use); without it, the in-cluster service account.
    #[arg(long, env = "PULLWATCH_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// Settings of the Kubernetes API source.
#[derive(Debug, Clone)]
pub(crate) struct KubeConfig {
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// A kubeconfig file; `None` means in-cluster (the pod's service account).
    pub kubeconfig: Option<PathBuf>,
    /// Watch kubelet's Pod events too (`--kube-events`), not only this node's pods.
    pub watch_events: bool,
}

impl KubeConfig {
    /// The source's settings, or `None` without `--kube`.
    pub(crate) fn from_args(args: &KubeArgs) -> Result<Option<Self>, ConfigError> {
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
        Ok(Some(Self {
            node_name: node_name.to_string(),
            kubeconfig: args.kubeconfig.clone(),
            watch_events: args.kube_events,
        }))
    }
}
