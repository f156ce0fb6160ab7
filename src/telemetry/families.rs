//! The metric contract: every family pullwatch exports, in one table ([`FAMILIES`]) that the
//! README, alert rules and dashboards are checked against. Owners register their families from
//! here by name ([`super::typed`]); a family not in this table cannot be registered.

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// Prometheus type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: the public API contract.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Full metric name.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Label names, in order.
    pub labels: &'static [&'static str],
    /// Help text.
    pub help: &'static str,
}

/// Buckets for whole image pulls: 100 ms (cached layers) to 10 min (huge images, slow links).
pub const PULL_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
];

/// Buckets for pull phases: 10 ms (a local manifest lookup) to 10 min (a huge layer).
pub const PHASE_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets for CRI calls: most are sub-millisecond to tens of milliseconds; PullImage goes long.
pub const CRI_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
];

macro_rules! family {
    ($name:literal, $kind:ident, [$($l:literal),*], $help:literal) => {
        Family { name: $name, kind: Kind::$kind, labels: &[$($l),*], help: $help }
    };
}

/// pullwatch's own metric families (the process collector adds the standard `process_*` ones).
pub const FAMILIES: &[Family] = &[
    family!(
        "pullwatch_image_pulls_total",
        Counter,
        ["registry", "result"],
        "Image pull attempts that finished, by registry and result (success|failure)."
    ),
    family!(
        "pullwatch_image_pull_failures_total",
        Counter,
        ["registry", "reason"],
        "Failed image pull attempts by registry and classified reason."
    ),
    family!(
        "pullwatch_image_pull_duration_seconds",
        Histogram,
        ["registry", "result"],
        "Duration of image pull attempts in seconds, by registry and result."
    ),
    family!(
        "pullwatch_image_pull_phase_seconds",
        Histogram,
        ["registry", "phase"],
        "Time successful pulls spent per phase (queue|resolve|download|unpack), by registry; a phase is observed only where the mode can measure it."
    ),
    family!(
        "pullwatch_image_pull_layers_total",
        Counter,
        ["registry", "cache"],
        "Layers of successful pulls, by registry and cache (hit: already in the content store; miss: downloaded)."
    ),
    family!(
        "pullwatch_image_pull_cached_bytes_total",
        Counter,
        ["registry"],
        "Bytes of content successful pulls found already in the content store (reused, not downloaded), by registry."
    ),
    family!(
        "pullwatch_pod_events_total",
        Counter,
        ["reason", "result"],
        "Events on pods (--pod-events) by reason (PullProgress|PullStalled|PullFailed) and result (written|dropped|failed)."
    ),
    family!(
        "pullwatch_image_pulls_in_flight",
        Gauge,
        ["registry"],
        "Image pulls currently in progress, by registry."
    ),
    family!(
        "pullwatch_image_pull_backoff",
        Gauge,
        ["namespace", "registry", "reason"],
        "Pod/image pairs whose latest pull failed and that have been retried within the backoff window."
    ),
    family!(
        "pullwatch_image_pulls_by_image_total",
        Counter,
        ["image", "result"],
        "Image pull attempts by image (only with --image-label; capped by --image-label-cap)."
    ),
    family!(
        "pullwatch_cri_requests_total",
        Counter,
        ["method", "code"],
        "CRI calls observed (through the interposer or by the kernel tap), by gRPC method and status code (\"unread\" for either when the tap could not read it)."
    ),
    family!(
        "pullwatch_cri_request_duration_seconds",
        Histogram,
        ["method"],
        "Duration of CRI calls observed (through the interposer or by the kernel tap), by gRPC method."
    ),
    family!(
        "pullwatch_interposer_connections_total",
        Counter,
        ["result"],
        "Caller connections the interposer accepted, by result (relayed|runtime_unreachable|self_loop|over_limit|out_of_fds)."
    ),
    family!(
        "pullwatch_interposer_connections_open",
        Gauge,
        [],
        "Caller connections the interposer is relaying now (each with its own runtime connection)."
    ),
    family!(
        "pullwatch_interposer_unobserved_connections_total",
        Counter,
        ["cause"],
        "Connections the interposer relays without observing them from some point on, by cause (not_http2|protocol|hpack|limit|cost|backlog|internal)."
    ),
    family!(
        "pullwatch_log_lines_dropped_total",
        Counter,
        [],
        "Log and event lines dropped because the log writer was behind (logging never blocks)."
    ),
    family!(
        "pullwatch_decode_errors_total",
        Counter,
        ["message"],
        "CRI messages pullwatch could not decode (they were still forwarded unchanged)."
    ),
    family!(
        "pullwatch_source_up",
        Gauge,
        ["source"],
        "Whether a source works (1) or not (0): the interposer listening, the tap attached, containerd and the runtime status poller connected, the Kubernetes API watches listed; the log says why not."
    ),
    family!(
        "pullwatch_cri_tap_connections",
        Gauge,
        [],
        "CRI connections the kernel tap follows now."
    ),
    family!(
        "pullwatch_cri_tap_lost_bytes_total",
        Counter,
        ["cause"],
        "Bytes on followed CRI connections the kernel tap could not copy, by cause (ring_full|unreadable|too_large|vectored); each loss ends the reading of that direction until it resynchronizes."
    ),
    family!(
        "pullwatch_cri_tap_resyncs_total",
        Counter,
        ["cause"],
        "Times the kernel tap lost a direction of a followed connection and hunted for a frame boundary again, by cause (gap|protocol|hpack|cost|limit|not_http2|internal)."
    ),
    family!(
        "pullwatch_cri_tap_partial_calls_total",
        Counter,
        ["part"],
        "CRI calls the kernel tap could read only in part, by the part (method: recognized by its request message; names: status read by its place in the trailers; status: not readable; lost: dropped unrecorded after a loss of bytes)."
    ),
    family!(
        "pullwatch_cri_tap_missed_connections_total",
        Counter,
        ["cause"],
        "Connections the kernel tap could not follow, by cause (events_lost: the ring had no room to say one opened or closed; table_full)."
    ),
    family!(
        "pullwatch_image_pull_endpoint_bytes_total",
        Counter,
        ["registry", "endpoint"],
        "Bytes the runtime received from each registry endpoint of containerd's hosts.toml (a mirror or the upstream; other: an address no configured host resolves to) while pulls ran, by the registry they were for (unknown: concurrent pulls of registries sharing the endpoint; other: a registry served through _default)."
    ),
    family!(
        "pullwatch_image_pull_fallbacks_total",
        Counter,
        ["registry", "endpoint"],
        "Successful pulls that got their manifest or blobs from a later endpoint of hosts.toml than this one (the endpoint that failed over), once per pull (and once for pulls of a registry that overlap)."
    ),
    family!(
        "pullwatch_label_overflow_total",
        Counter,
        ["label"],
        "Observations whose label value exceeded the distinct-value cap and was counted as \"other\"."
    ),
    family!(
        "pullwatch_label_evictions_total",
        Counter,
        ["label"],
        "Label values that gave their slot (and their series) to a newcomer: quiet for 10 minutes, or never proven when a registry's first success needed the slot."
    ),
    family!(
        "pullwatch_build_info",
        Gauge,
        ["version", "revision"],
        "Always 1; labels carry pullwatch's version and git revision."
    ),
    family!(
        "pullwatch_image_pull_bytes_in_flight",
        Gauge,
        ["registry"],
        "Bytes received so far by downloads in progress (containerd ingests), by registry."
    ),
    family!(
        "pullwatch_image_pull_downloads_in_flight",
        Gauge,
        ["registry"],
        "Downloads (layers, manifests, configs) in progress, by registry."
    ),
    family!(
        "pullwatch_image_pull_receive_bytes_per_second",
        Gauge,
        ["registry"],
        "Current receive rate of downloads in progress, bytes per second, by registry."
    ),
    family!(
        "pullwatch_image_pull_bytes_total",
        Counter,
        ["registry"],
        "Bytes successful pulls downloaded (exact content sizes from containerd's content store), by registry."
    ),
    family!(
        "pullwatch_image_pull_stalled",
        Gauge,
        ["registry"],
        "Downloads without progress for --stall-after, by registry."
    ),
    family!(
        "pullwatch_runtime_up",
        Gauge,
        ["source"],
        "1 if the source's connection to the container runtime works (source: containerd|cri), else 0."
    ),
    family!(
        "pullwatch_runtime_info",
        Gauge,
        ["runtime", "version", "api_version"],
        "Always 1; labels carry the runtime's name and version and the CRI API version (CRI Version)."
    ),
    family!(
        "pullwatch_runtime_condition",
        Gauge,
        ["condition"],
        "1 if the runtime reports the CRI condition (RuntimeReady, NetworkReady, ...) true, else 0."
    ),
    family!(
        "pullwatch_images",
        Gauge,
        [],
        "Images the runtime holds (CRI ListImages)."
    ),
    family!(
        "pullwatch_images_size_bytes",
        Gauge,
        [],
        "Total size of the images the runtime holds, bytes (CRI ListImages)."
    ),
    family!(
        "pullwatch_image_fs_used_bytes",
        Gauge,
        ["mountpoint"],
        "Bytes used on the runtime's image filesystem (CRI ImageFsInfo)."
    ),
    family!(
        "pullwatch_image_fs_inodes_used",
        Gauge,
        ["mountpoint"],
        "Inodes used on the runtime's image filesystem (CRI ImageFsInfo)."
    ),
    family!(
        "pullwatch_source_errors_total",
        Counter,
        ["source"],
        "Failed polls, broken connections or failed watches of a source (containerd|cri|kube)."
    ),
    family!(
        "pullwatch_registry_ratelimit_limit",
        Gauge,
        ["registry"],
        "Pulls the registry allows per window (its ratelimit-limit header, read by --ratelimit-probe)."
    ),
    family!(
        "pullwatch_registry_ratelimit_remaining",
        Gauge,
        ["registry"],
        "Pulls left in the current window (ratelimit-remaining header, read by --ratelimit-probe)."
    ),
    family!(
        "pullwatch_registry_ratelimit_window_seconds",
        Gauge,
        ["registry"],
        "Length of the registry's rate-limit window in seconds (the w= of its headers)."
    ),
    family!(
        "pullwatch_registry_ratelimit_probe_errors_total",
        Counter,
        ["registry"],
        "Rate-limit probes that failed (network, status, token or unreadable headers)."
    ),
    family!(
        "pullwatch_kube_watch_up",
        Gauge,
        ["resource"],
        "1 while the Kubernetes API watch of the resource (pods|events) works, 0 after it failed until it recovers."
    ),
    family!(
        "pullwatch_http_connections_rejected_total",
        Counter,
        [],
        "Connections to the HTTP endpoint closed at once because --web.max-connections were open."
    ),
    family!(
        "pullwatch_kube_deduplicated_total",
        Counter,
        [],
        "Pull failures seen both in a pod status and as a kubelet event, counted once."
    ),
    family!(
        "pullwatch_kube_event_reads_total",
        Counter,
        ["result"],
        "Per-pod reads of kubelet's Pulled Events (--kube-events=per-pod), by result (ok|error|dropped): one per pod whose containers started after a pull, bounded per node."
    ),
];

/// Looks up a family by name.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Whether two strings are equal, in a constant.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether [`FAMILIES`] lists `name` as `kind` with exactly `labels`, in order: evaluated at
/// compile time for each family an owner registers ([`super::family::Def`]).
pub(crate) const fn listed(name: &str, kind: Kind, labels: &[&str]) -> bool {
    let mut i = 0;
    while i < FAMILIES.len() {
        let f = &FAMILIES[i];
        if same(f.name, name) {
            if f.kind as u8 != kind as u8 || f.labels.len() != labels.len() {
                return false;
            }
            let mut j = 0;
            while j < labels.len() {
                if !same(f.labels[j], labels[j]) {
                    return false;
                }
                j += 1;
            }
            return true;
        }
        i += 1;
    }
    false
}
