//! Every Prometheus metric family pullwatch exports, defined in one table ([`FAMILIES`]) that the
//! README, alert rules and dashboards are checked against, and the typed handles to update them.

use super::image_counts::{self, ImagePullCounts};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;

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
        "CRI calls proxied by the interposer, by gRPC method and status code."
    ),
    family!(
        "pullwatch_cri_request_duration_seconds",
        Histogram,
        ["method"],
        "Duration of CRI calls proxied by the interposer, by gRPC method."
    ),
    family!(
        "pullwatch_interposer_connections_total",
        Counter,
        ["result"],
        "Caller connections the interposer accepted, by result (relayed|runtime_unreachable|self_loop)."
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
        "Connections the interposer relays without observing them from some point on, by cause (not_http2|protocol|hpack|limit|internal)."
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
        "pullwatch_label_overflow_total",
        Counter,
        ["label"],
        "Observations whose label value exceeded the distinct-value cap and was counted as \"other\"."
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
        "Bytes of downloads that completed (committed to containerd's content store), by registry."
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
        "pullwatch_kube_deduplicated_total",
        Counter,
        [],
        "Pull failures seen both in a pod status and as a kubelet event, counted once."
    ),
];

/// Looks up a family by name.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

fn opts(name: &str) -> (Opts, &'static [&'static str]) {
    // A name missing from FAMILIES is a programming error caught by every test.
    let f = family(name).unwrap_or_else(|| panic!("metric {name} is not in FAMILIES"));
    (Opts::new(f.name, f.help), f.labels)
}

fn counter(reg: &Registry, name: &str) -> prometheus::Result<IntCounterVec> {
    let (o, l) = opts(name);
    let c = IntCounterVec::new(o, l)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn plain_counter(reg: &Registry, name: &str) -> prometheus::Result<prometheus::IntCounter> {
    let (o, _) = opts(name);
    let c = prometheus::IntCounter::with_opts(o)?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(reg: &Registry, name: &str) -> prometheus::Result<IntGaugeVec> {
    let (o, l) = opts(name);
    let g = IntGaugeVec::new(o, l)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn plain_gauge(reg: &Registry, name: &str) -> prometheus::Result<prometheus::IntGauge> {
    let (o, _) = opts(name);
    let g = prometheus::IntGauge::with_opts(o)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn float_gauge(reg: &Registry, name: &str) -> prometheus::Result<GaugeVec> {
    let (o, l) = opts(name);
    let g = GaugeVec::new(o, l)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(reg: &Registry, name: &str, buckets: &[f64]) -> prometheus::Result<HistogramVec> {
    let (o, l) = opts(name);
    let h = HistogramVec::new(HistogramOpts::from(o).buckets(buckets.to_vec()), l)?;
    reg.register(Box::new(h.clone()))?;
    Ok(h)
}

/// Handles to every family, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `pullwatch_image_pulls_total`
    pub pulls: IntCounterVec,
    /// `pullwatch_image_pull_failures_total`
    pub failures: IntCounterVec,
    /// `pullwatch_image_pull_duration_seconds`
    pub pull_duration: HistogramVec,
    /// `pullwatch_image_pulls_in_flight`
    pub in_flight: IntGaugeVec,
    /// `pullwatch_image_pull_backoff`
    pub backoff: IntGaugeVec,
    /// `pullwatch_image_pulls_by_image_total`, only when the image label is on; kept outside the
    /// registry (see [`ImagePullCounts`]).
    pub by_image: Option<Arc<ImagePullCounts>>,
    /// `pullwatch_cri_requests_total`
    pub cri_requests: IntCounterVec,
    /// `pullwatch_cri_request_duration_seconds`
    pub cri_duration: HistogramVec,
    /// `pullwatch_decode_errors_total`
    pub decode_errors: IntCounterVec,
    /// `pullwatch_interposer_connections_total`
    pub interposer_connections: IntCounterVec,
    /// `pullwatch_interposer_connections_open`
    pub interposer_connections_open: prometheus::IntGauge,
    /// `pullwatch_interposer_unobserved_connections_total`
    pub interposer_unobserved: IntCounterVec,
    /// `pullwatch_log_lines_dropped_total`
    pub log_lines_dropped: prometheus::IntCounter,
    /// `pullwatch_label_overflow_total`
    pub label_overflow: IntCounterVec,
    /// `pullwatch_image_pull_bytes_in_flight`
    pub bytes_in_flight: IntGaugeVec,
    /// `pullwatch_image_pull_downloads_in_flight`
    pub downloads_in_flight: IntGaugeVec,
    /// `pullwatch_image_pull_receive_bytes_per_second`
    pub receive_rate: GaugeVec,
    /// `pullwatch_image_pull_bytes_total`
    pub bytes_total: IntCounterVec,
    /// `pullwatch_image_pull_stalled`
    pub stalled: IntGaugeVec,
    /// `pullwatch_runtime_up`
    pub runtime_up: IntGaugeVec,
    /// `pullwatch_runtime_info`
    pub runtime_info: IntGaugeVec,
    /// `pullwatch_runtime_condition`
    pub runtime_condition: IntGaugeVec,
    /// `pullwatch_images`
    pub images: IntGaugeVec,
    /// `pullwatch_images_size_bytes`
    pub images_size: IntGaugeVec,
    /// `pullwatch_image_fs_used_bytes`
    pub image_fs_used: IntGaugeVec,
    /// `pullwatch_image_fs_inodes_used`
    pub image_fs_inodes: IntGaugeVec,
    /// `pullwatch_source_errors_total`
    pub source_errors: IntCounterVec,
    /// `pullwatch_registry_ratelimit_limit`
    pub ratelimit_limit: IntGaugeVec,
    /// `pullwatch_registry_ratelimit_remaining`
    pub ratelimit_remaining: IntGaugeVec,
    /// `pullwatch_registry_ratelimit_window_seconds`
    pub ratelimit_window: IntGaugeVec,
    /// `pullwatch_registry_ratelimit_probe_errors_total`
    pub ratelimit_probe_errors: IntCounterVec,
    /// `pullwatch_kube_watch_up`
    pub kube_watch_up: IntGaugeVec,
    /// `pullwatch_kube_deduplicated_total`
    pub kube_deduplicated: prometheus::IntCounter,
}

impl Metrics {
    /// Registers every family (plus process metrics) in a fresh registry.
    pub fn new(image_label: bool) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let m = Self {
            pulls: counter(&registry, "pullwatch_image_pulls_total")?,
            failures: counter(&registry, "pullwatch_image_pull_failures_total")?,
            pull_duration: histogram(
                &registry,
                "pullwatch_image_pull_duration_seconds",
                &PULL_BUCKETS,
            )?,
            in_flight: gauge(&registry, "pullwatch_image_pulls_in_flight")?,
            backoff: gauge(&registry, "pullwatch_image_pull_backoff")?,
            by_image: image_label.then(Arc::default),
            cri_requests: counter(&registry, "pullwatch_cri_requests_total")?,
            cri_duration: histogram(
                &registry,
                "pullwatch_cri_request_duration_seconds",
                &CRI_BUCKETS,
            )?,
            decode_errors: counter(&registry, "pullwatch_decode_errors_total")?,
            interposer_connections: counter(&registry, "pullwatch_interposer_connections_total")?,
            interposer_connections_open: plain_gauge(
                &registry,
                "pullwatch_interposer_connections_open",
            )?,
            interposer_unobserved: counter(
                &registry,
                "pullwatch_interposer_unobserved_connections_total",
            )?,
            log_lines_dropped: plain_counter(&registry, "pullwatch_log_lines_dropped_total")?,
            label_overflow: counter(&registry, "pullwatch_label_overflow_total")?,
            bytes_in_flight: gauge(&registry, "pullwatch_image_pull_bytes_in_flight")?,
            downloads_in_flight: gauge(&registry, "pullwatch_image_pull_downloads_in_flight")?,
            receive_rate: float_gauge(&registry, "pullwatch_image_pull_receive_bytes_per_second")?,
            bytes_total: counter(&registry, "pullwatch_image_pull_bytes_total")?,
            stalled: gauge(&registry, "pullwatch_image_pull_stalled")?,
            runtime_up: gauge(&registry, "pullwatch_runtime_up")?,
            runtime_info: gauge(&registry, "pullwatch_runtime_info")?,
            runtime_condition: gauge(&registry, "pullwatch_runtime_condition")?,
            images: gauge(&registry, "pullwatch_images")?,
            images_size: gauge(&registry, "pullwatch_images_size_bytes")?,
            image_fs_used: gauge(&registry, "pullwatch_image_fs_used_bytes")?,
            image_fs_inodes: gauge(&registry, "pullwatch_image_fs_inodes_used")?,
            source_errors: counter(&registry, "pullwatch_source_errors_total")?,
            ratelimit_limit: gauge(&registry, "pullwatch_registry_ratelimit_limit")?,
            ratelimit_remaining: gauge(&registry, "pullwatch_registry_ratelimit_remaining")?,
            ratelimit_window: gauge(&registry, "pullwatch_registry_ratelimit_window_seconds")?,
            ratelimit_probe_errors: counter(
                &registry,
                "pullwatch_registry_ratelimit_probe_errors_total",
            )?,
            kube_watch_up: gauge(&registry, "pullwatch_kube_watch_up")?,
            kube_deduplicated: plain_counter(&registry, "pullwatch_kube_deduplicated_total")?,
            registry,
        };
        gauge(&m.registry, "pullwatch_build_info")?
            .with_label_values(&[crate::VERSION, crate::REVISION])
            .set(1);
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Renders the registry, then the image family, in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let dropped = crate::logging::dropped_lines();
        let counted = self.log_lines_dropped.get();
        if dropped > counted {
            self.log_lines_dropped.inc_by(dropped - counted);
        }
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on families with inconsistent label sets, which the
        // typed handles above cannot produce.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "rendering metrics failed");
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        if let Some(by_image) = &self.by_image {
            let help = family(image_counts::NAME).map_or("", |f| f.help);
            by_image.encode(help, &mut text);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        for f in FAMILIES {
            assert!(f.name.starts_with("pullwatch_"), "{}", f.name);
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.labels.contains(&"error"), "no raw error text as label");
        }
    }

    #[test]
    fn renders_build_info_and_process_metrics() {
        let m = Metrics::new(false).unwrap();
        let text = m.render();
        assert!(text.contains(&format!(
            "pullwatch_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            crate::REVISION,
            crate::VERSION
        )));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(!text.contains("pullwatch_image_pulls_by_image_total"));
        let m = Metrics::new(true).unwrap();
        m.by_image.as_ref().unwrap().inc("a.io/x:1", false);
        let text = m.render();
        let help = format!(
            "# HELP pullwatch_image_pulls_by_image_total {}\n",
            family(image_counts::NAME).unwrap().help
        );
        assert!(text.contains(&help), "{text}");
        assert!(text.ends_with(
            "pullwatch_image_pulls_by_image_total{image=\"a.io/x:1\",result=\"failure\"} 1\n"
        ));
    }
}
