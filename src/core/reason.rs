//! The closed set of pull failure causes, with the remediation hint for each.

use serde::Serialize;
use std::fmt;

/// Why an image pull failed. A bounded set: it is a metric label.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The reference does not parse (bad characters, uppercase, empty tag).
    InvalidReference,
    /// The pod's pull policy is `Never` and the image is not on the node (kubelet's
    /// `ErrImageNeverPull`): no pull was tried.
    NeverPull,
    /// A signature or policy check on the node refused the image (CRI-O's policy.json, a
    /// containerd image verifier).
    Signature,
    /// The node ran out of disk or quota while storing or unpacking.
    Disk,
    /// The image has no variant for the node's OS/architecture.
    Platform,
    /// The registry refused because a pull quota was exhausted (HTTP 429).
    RateLimited,
    /// The registry refused the credentials, or sent none were accepted (401/403).
    Unauthorized,
    /// The repository, tag or digest does not exist.
    NotFound,
    /// The registry host name did not resolve.
    Dns,
    /// A network operation took too long, or the caller's deadline passed.
    Timeout,
    /// TLS failed: untrusted or expired certificate, handshake error, HTTP vs HTTPS mismatch.
    Tls,
    /// The registry answered with a server error (5xx).
    RegistryError,
    /// The connection to the registry failed or broke (refused, reset, unreachable, EOF).
    Network,
    /// The caller (kubelet) canceled the pull.
    Canceled,
    /// pullwatch could not reach the container runtime's socket at all.
    RuntimeUnavailable,
    /// None of the above; read the message.
    Unknown,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 16] = [
        Reason::InvalidReference,
        Reason::NeverPull,
        Reason::Signature,
        Reason::Disk,
        Reason::Platform,
        Reason::RateLimited,
        Reason::Unauthorized,
        Reason::NotFound,
        Reason::Dns,
        Reason::Timeout,
        Reason::Tls,
        Reason::RegistryError,
        Reason::Network,
        Reason::Canceled,
        Reason::RuntimeUnavailable,
        Reason::Unknown,
    ];

    /// The label value, e.g. `rate_limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidReference => "invalid_reference",
            Reason::NeverPull => "never_pull",
            Reason::Signature => "signature",
            Reason::Disk => "disk",
            Reason::Platform => "platform",
            Reason::RateLimited => "rate_limited",
            Reason::Unauthorized => "unauthorized",
            Reason::NotFound => "not_found",
            Reason::Dns => "dns",
            Reason::Timeout => "timeout",
            Reason::Tls => "tls",
            Reason::RegistryError => "registry_error",
            Reason::Network => "network",
            Reason::Canceled => "canceled",
            Reason::RuntimeUnavailable => "runtime_unavailable",
            Reason::Unknown => "unknown",
        }
    }

    /// Parses a label value back into a reason.
    pub fn from_label(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The one line that tells cases of this cause apart, where what the pull carried does:
    /// for `unauthorized`, whether the caller sent credentials (`None`: unknown, no line).
    pub fn case_hint(self, credentials: Option<bool>) -> Option<&'static str> {
        match (self, credentials) {
            (Reason::Unauthorized, Some(false)) => Some(
                "no credentials were sent for this registry: the pod has no imagePullSecret (or \
                 none whose `auths` host matches the image's registry) and the registry wants one",
            ),
            (Reason::Unauthorized, Some(true)) => Some(
                "credentials were sent and the registry refused them: the pull secret is wrong, \
                 expired or lacks pull access to this repository (or the repository does not exist)",
            ),
            _ => None,
        }
    }

    /// What an operator should check and do about this cause.
    pub fn hint(self) -> &'static str {
        match self {
            Reason::NeverPull => {
                "The pod's `imagePullPolicy` is `Never` and the image is not on this node, so \
                 kubelet does not pull it and the pod cannot start. Either load the image onto \
                 the node first (pre-pulled images, `ctr -n k8s.io images import`), or set \
                 `imagePullPolicy: IfNotPresent` (or `Always`) so kubelet pulls it."
            }
            Reason::InvalidReference => {
                "The image reference is malformed. Check the `image:` field of the pod spec for \
                 uppercase letters, spaces, an empty tag (`name:`) or a stray scheme such as \
                 `https://`; references look like `registry.example.com:5000/team/app:1.2` or \
                 `app@sha256:<digest>`. Fix the manifest (or the template/values that render it)."
            }
            Reason::Signature => {
                "A signature or policy check on the node refused the image, before any layer was \
                 pulled. Check that the image is signed by a key or identity the node's policy \
                 trusts and that the tag points at the signed digest; that the signatures can be \
                 fetched (registry referrers or sigstore attachments, `registries.d` lookaside); \
                 and the policy itself: CRI-O reads `/etc/containers/policy.json`, containerd 2.x \
                 runs the image verifiers in its `bin_dir` (their reason is in the message). The \
                 pull will keep failing until the image or the policy changes."
            }
            Reason::Disk => {
                "The node ran out of disk space (or quota) while storing or unpacking layers. \
                 Check the image filesystem (`df -h /var/lib/containerd`, `crictl imagefsinfo`), \
                 let kubelet's image garbage collection catch up or lower its thresholds \
                 (`imageGCHighThresholdPercent`), remove unused images (`crictl rmi --prune`), \
                 and size node disks for your largest images."
            }
            Reason::Platform => {
                "The image has no variant for this node's OS/architecture (e.g. an amd64-only image \
                 on an arm64 node). Inspect the manifest list (`skopeo inspect --raw \
                 docker://IMAGE`), publish a multi-arch image (`docker buildx build --platform \
                 linux/amd64,linux/arm64`), or pin the pod to matching nodes with a \
                 `kubernetes.io/arch` nodeSelector."
            }
            Reason::RateLimited => {
                "The registry is rate limiting pulls (HTTP 429). On Docker Hub, anonymous pulls are \
                 limited per source IP (all nodes behind one NAT share it) and authenticated pulls \
                 get a higher, plan-dependent quota; the limits have changed over time, so read \
                 your current quota from the `ratelimit-limit` and `ratelimit-remaining` response \
                 headers rather than trusting a fixed number. Authenticate pulls with an \
                 imagePullSecret, use a registry mirror or pull-through cache, pin digests and use \
                 `imagePullPolicy: IfNotPresent` to avoid needless pulls. Some registries answer \
                 an exhausted quota with 401/403, so a sudden burst of auth failures can be this too."
            }
            Reason::Unauthorized => {
                "The registry refused access (401/403, `pull access denied`, `insufficient_scope`). \
                 Check that the pod (or its ServiceAccount) has an imagePullSecret for this \
                 registry, that the secret is of type `kubernetes.io/dockerconfigjson` in the \
                 pod's namespace, that its `auths` key matches the registry host exactly, and that \
                 the credentials are not expired (cloud registry tokens often live 12 h). Docker \
                 Hub also says `pull access denied` for repositories that do not exist, and some \
                 registries answer rate limiting with 401/403."
            }
            Reason::NotFound => {
                "The repository, tag or digest does not exist in the registry. Check the image \
                 path and tag for typos (`skopeo inspect docker://IMAGE`, or the registry's UI), \
                 whether the tag was deleted or never pushed (CI failure), and whether the image \
                 lives in a different registry or project than the manifest says."
            }
            Reason::Dns => {
                "The registry host name did not resolve on the node. Check the spelling of the \
                 registry host, the node's resolver (`/etc/resolv.conf`, systemd-resolved), \
                 whether the name is only resolvable inside the cluster (node runtimes do not use \
                 cluster DNS), and whether egress DNS is blocked by a firewall."
            }
            Reason::Timeout => {
                "The pull took too long: a connection, TLS handshake or read timed out, or the \
                 runtime gave up on a pull without progress (containerd's \
                 `image_pull_progress_timeout`, 5 minutes by default; CRI-O's pull timeouts); \
                 kubelet itself sets no deadline on pulls. Check registry latency and node egress \
                 bandwidth, proxies and firewalls that silently drop packets, and very large \
                 images; a registry mirror close to the nodes helps."
            }
            Reason::Tls => {
                "TLS to the registry failed: untrusted CA (`x509: certificate signed by unknown \
                 authority`), expired or mismatched certificate, or an HTTP registry addressed \
                 over HTTPS. Install the registry's CA on the node (containerd: \
                 `/etc/containerd/certs.d/<host>/hosts.toml` with `ca = ...`), renew the \
                 certificate, check for TLS-intercepting proxies, and only for test registries \
                 configure plain HTTP explicitly."
            }
            Reason::RegistryError => {
                "The registry answered with a server error (5xx). This is on the registry side: \
                 check its status page or logs, its storage backend, and any proxy or load \
                 balancer in front of it. Retries usually succeed once it recovers; a mirror or \
                 pull-through cache keeps nodes pulling during registry outages."
            }
            Reason::Network => {
                "The connection to the registry failed or broke: refused, reset, unreachable, or \
                 closed mid-transfer (EOF). Check that the node can reach the registry \
                 (`curl -v https://REGISTRY/v2/`), egress firewall rules and NAT capacity, HTTP \
                 proxy settings of the runtime (`HTTPS_PROXY`/`NO_PROXY` in the containerd unit), \
                 and the registry's own availability."
            }
            Reason::Canceled => {
                "The pull was canceled by its caller, usually kubelet (pod deleted before its image \
                 arrived, or kubelet restarting; kubelet sets no deadline on pulls), or a client \
                 such as `crictl pull` giving up. Frequent cancels of the \
                 same image mean pulls take longer than the caller waits: look at pull duration \
                 and registry speed."
            }
            Reason::RuntimeUnavailable => {
                "pullwatch could not reach the container runtime's socket, so kubelet's pull never \
                 reached the runtime. Check that containerd/CRI-O is running \
                 (`systemctl status containerd`) and that `--runtime-socket` names its CRI socket."
            }
            Reason::Unknown => {
                "The error did not match a known cause. Read the whole message (pullwatch's event \
                 log, `kubectl describe pod`, and the runtime's own log on the node, e.g. \
                 `journalctl -u containerd`) for the registry's or the runtime's words: a status \
                 code, `denied`, `not found`, a timeout. Please report messages pullwatch does not \
                 classify, so the classifier learns them."
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate label {r}");
            assert_eq!(Reason::from_label(r.as_str()), Some(r));
            assert!(r.hint().len() > 80, "{r} needs a real hint");
        }
        assert_eq!(Reason::from_label("nope"), None);
    }

    #[test]
    fn rate_limit_hint_points_at_headers_not_fixed_numbers() {
        let h = Reason::RateLimited.hint();
        assert!(h.contains("ratelimit-remaining") && h.contains("mirror"));
        assert!(
            !h.contains("100 pulls"),
            "limits change; do not hard-code them"
        );
    }
}
