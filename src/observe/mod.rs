//! The passive CRI observer: turns copies of the bytes of one HTTP/2 connection between a CRI
//! caller (kubelet, crictl, ...) and the runtime into timed, classified calls and pull attempts.
//! It never answers anything and never influences the connection; it is fed by a transport:
//! the interposer's byte relay (`sources/cri_proxy`, through the bounded queue of [`feed`]) or
//! the kernel tap (`sources/cri_tap`, from its ring buffer).
//!
//! [`wire`] reads frames and decodes header blocks with our [`hpack`] decoder, [`connection`]
//! pairs each request with its answer ([`call`]), [`decode`] reads the two CRI messages it
//! needs, [`methods`] bounds the method label, and [`budget`] holds every byte it keeps.

pub(crate) mod budget;
pub(crate) mod call;
pub(crate) mod connection;
pub(crate) mod decode;
mod events;
pub(crate) mod feed;
pub(crate) mod head;
pub(crate) mod hpack;
pub(crate) mod methods;
pub(crate) mod unobservable;
pub(crate) mod wire;

use crate::core::attempt::Source;
use crate::recorder::Recorder;
use crate::telemetry::health::SourceHealth;
use crate::telemetry::{
    CRI_BUCKETS, CounterFamily, HistogramFamily, MetricsError, MetricsRegistry,
};
use std::sync::Arc;

/// The `code` label of a call: its gRPC status, or `unread` when the tap could not read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallCode {
    /// The status the runtime answered.
    Status(tonic::Code),
    /// Not readable (the tap joined after the HPACK entry naming it).
    Unread,
}

impl crate::telemetry::LabelValue for CallCode {
    fn label_value(&self) -> &str {
        match self {
            CallCode::Status(code) => crate::grpc::status::code_name(*code),
            CallCode::Unread => methods::UNREAD,
        }
    }
}

crate::label_enum! {
    /// What could not be read of a call the tap observed.
    pub(crate) enum Part {
        /// Bytes of the call were lost: the call is dropped.
        Lost => "lost",
        /// Its status (read by its place, or not at all).
        Status => "status",
        /// Its method (read from the request's shape, or not at all).
        Method => "method",
        /// Header names, read by their order.
        Names => "names",
    }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_requests_total`.
    pub(crate) struct MethodCode { method: &'static str, code: CallCode }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_request_duration_seconds`.
    pub(crate) struct ByMethod { method: &'static str }
}

crate::label_set! {
    /// Labels of the transports' unobserved-connection counters.
    pub(crate) struct ByCause { cause: wire::UnobservedCause }
}

crate::label_set! {
    /// Labels of `pullwatch_cri_tap_partial_calls_total`.
    pub(crate) struct ByPart { part: Part }
}

/// The CRI call families every transport's observations count in.
#[derive(Clone)]
pub(crate) struct CallMetrics {
    pub(crate) requests: CounterFamily<MethodCode>,
    pub(crate) duration: HistogramFamily<ByMethod>,
}

impl CallMetrics {
    /// Registers the CRI call families in `reg`.
    pub(crate) fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            requests: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_requests_total"),
            )?,
            duration: HistogramFamily::register(
                reg,
                crate::family_name!("pullwatch_cri_request_duration_seconds"),
                &CRI_BUCKETS,
            )?,
        })
    }
}

/// Where one transport's observations go: attempts to the recorder (as `source`), calls to the
/// shared call families, connections it stops observing to its own counter, what it cannot
/// decode to its source's health series.
pub(crate) struct Recording {
    /// The attempt pipeline.
    pub(crate) recorder: Arc<Recorder>,
    /// The source attempts are recorded as.
    pub(crate) source: Source,
    /// CRI calls by method and code, and their durations.
    pub(crate) calls: CallMetrics,
    /// The transport's count of connections it stopped observing, by cause.
    pub(crate) unobserved: CounterFamily<ByCause>,
    /// The transport's shared source series (decode errors).
    pub(crate) health: SourceHealth,
    /// The transport's count of calls it could read only in part (the tap's; the interposer
    /// sees every connection from its first byte and has none).
    pub(crate) partial: Option<CounterFamily<ByPart>>,
}

impl Recording {
    /// Attempts to `recorder` as `source`, calls to `calls`, given-up connections to
    /// `unobserved`, decode errors to `health`.
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        source: Source,
        calls: CallMetrics,
        unobserved: CounterFamily<ByCause>,
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
        unobserved: CounterFamily<ByCause>,
        health: SourceHealth,
        partial: CounterFamily<ByPart>,
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
        let unobserved = CounterFamily::register(
            &reg,
            crate::family_name!("pullwatch_interposer_unobserved_connections_total"),
        )
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
