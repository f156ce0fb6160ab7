//! The passive CRI observer: turns copies of the bytes of one HTTP/2 connection between a CRI
//! caller (kubelet, crictl, ...) and the runtime into timed, classified calls and pull attempts.
//! It never answers anything and never influences the connection; it is fed by a transport:
//! the interposer's byte relay (`sources/cri_proxy`, through the bounded queue of [`feed`]) or
//! the kernel tap (`sources/cri_tap`, from its ring buffer).
//!
//! [`wire`] reads frames and decodes header blocks with our [`hpack`] decoder, [`connection`]
//! pairs each request with its answer ([`call`]), [`decode`] reads the two CRI messages it
//! needs, [`methods`] bounds the method label, and [`budget`] holds every byte it keeps.

pub mod budget;
pub(crate) mod call;
pub mod connection;
pub mod decode;
pub mod feed;
pub mod hpack;
pub mod methods;
pub mod wire;

use crate::core::attempt::Source;
use crate::recorder::Recorder;
use crate::telemetry::{
    CRI_BUCKETS, CounterFamily, HistogramFamily, MetricsError, MetricsRegistry,
};
use crate::telemetry::health::SourceHealth;
use std::sync::Arc;

crate::label_set! {
    /// Labels of `pullwatch_cri_requests_total`.
    pub(crate) struct MethodCode<'a> { method: &'a str, code: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_request_duration_seconds`.
    pub(crate) struct ByMethod<'a> { method: &'a str }
}

crate::label_set! {
    /// Labels of the transports' unobserved-connection counters.
    pub(crate) struct ByCause<'a> { cause: &'a str }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_tap_partial_calls_total`.
    pub(crate) struct ByPart<'a> { part: &'a str }
}

/// The CRI call families every transport's observations count in.
#[derive(Clone)]
pub struct CallMetrics {
    pub(crate) requests: CounterFamily<MethodCode<'static>>,
    pub(crate) duration: HistogramFamily<ByMethod<'static>>,
}

impl CallMetrics {
    /// Registers the CRI call families in `reg`.
    pub fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            requests: CounterFamily::register(reg, "pullwatch_cri_requests_total")?,
            duration: HistogramFamily::register(
                reg,
                "pullwatch_cri_request_duration_seconds",
                &CRI_BUCKETS,
            )?,
        })
    }
}

/// Where one transport's observations go: attempts to the recorder (as `source`), calls to the
/// shared call families, connections it stops observing to its own counter, what it cannot
/// decode to its source's health series.
pub struct Recording {
    /// The attempt pipeline.
    pub(crate) recorder: Arc<Recorder>,
    /// The source attempts are recorded as.
    pub(crate) source: Source,
    /// CRI calls by method and code, and their durations.
    pub(crate) calls: CallMetrics,
    /// The transport's count of connections it stopped observing, by cause.
    pub(crate) unobserved: CounterFamily<ByCause<'static>>,
    /// The transport's shared source series (decode errors).
    pub(crate) health: SourceHealth,
    /// The transport's count of calls it could read only in part (the tap's; the interposer
    /// sees every connection from its first byte and has none).
    pub(crate) partial: Option<CounterFamily<ByPart<'static>>>,
}

impl Recording {
    /// Attempts to `recorder` as `source`, calls to `calls`, given-up connections to
    /// `unobserved`, decode errors to `health`.
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        source: Source,
        calls: CallMetrics,
        unobserved: CounterFamily<ByCause<'static>>,
        health: SourceHealth,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder,
            source,
            calls,
            unobserved,
            health,
            partial: None,
        })
    }

    /// The same, counting calls read only in part in `partial` (the tap).
    pub(crate) fn with_partial(
        recorder: Arc<Recorder>,
        source: Source,
        calls: CallMetrics,
        unobserved: CounterFamily<ByCause<'static>>,
        health: SourceHealth,
        partial: CounterFamily<ByPart<'static>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder,
            source,
            calls,
            unobserved,
            health,
            partial: Some(partial),
        })
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl Recording {
    /// A recording of the interposer into a registry of its own (default recorder limits), for
    /// tests and fuzzing.
    pub(crate) fn standalone() -> (Arc<Self>, MetricsRegistry) {
        let reg = MetricsRegistry::new().expect("registering metrics");
        let recorder = Recorder::new(&crate::recorder::RecorderConfig::default(), &reg)
            .expect("registering metrics");
        let shared =
            crate::telemetry::health::SourceFamilies::register(&reg).expect("registering metrics");
        let calls = CallMetrics::register(&reg).expect("registering metrics");
        let unobserved =
            CounterFamily::register(&reg, "pullwatch_interposer_unobserved_connections_total")
                .expect("registering metrics");
        let recording = Self::new(
            Arc::new(recorder),
            Source::CriProxy,
            calls,
            unobserved,
            shared.health("cri_proxy"),
        );
        (recording, reg)
    }
}
