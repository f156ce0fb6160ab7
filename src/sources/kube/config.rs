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

    /// With --kube: how kubelet's pod Events are read. `per-pod` (default): failures and
    /// backoff come from this node's pod statuses, and when a container of a pod starts after a
    /// pull, one list of that pod's `Pulled` Events (by its UID, from the API server's cache)
    /// gives kubelet's pull duration and queue time: the cost is bounded by the pods on the node.
    /// `cluster`: watch every kubelet pod Event of the cluster (the API cannot filter Events by
    /// node, so each agent receives all of them; for small clusters only): also shows pulls in
    /// progress from `Pulling`. `off`: pod statuses only (no successes).
    #[arg(
        long,
        env = "PULLWATCH_KUBE_EVENTS",
        default_value = "per-pod",
        value_name = "MODE"
    )]
    pub kube_events: KubeEvents,

    /// kubeconfig for the Kubernetes API (local use); without it, the in-cluster service account.
    #[arg(long, env = "PULLWATCH_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// How the Kubernetes API source reads kubelet's pod Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeEvents {
    /// One list of a pod's `Pulled` Events when its containers start after a pull.
    PerPod,
    /// A watch of every kubelet pod Event of the cluster.
    Cluster,
    /// None: pod statuses only.
    Off,
}

/// Settings of the Kubernetes API source.
#[derive(Debug, Clone)]
pub(crate) struct KubeConfig {
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// A kubeconfig file; `None` means in-cluster (the pod's service account).
    pub kubeconfig: Option<PathBuf>,
    /// How kubelet's pod Events are read (`--kube-events`).
    pub events: KubeEvents,
}

impl KubeConfig {
    /// The source's settings, or `None` without `--kube`.
    pub(crate) fn from_args(args: &KubeArgs) -> Result<Option<Self>, ConfigError> {
        if !args.kube {
            if args.kubeconfig.is_some() {
                return Err(err("kubeconfig", "only used with --kube"));
            }
            if args.kube_events != KubeEvents::PerPod {
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
            events: args.kube_events,
        }))
    }
}
