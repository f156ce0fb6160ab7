//! Observation of one proxied CRI call: its method, timing and final gRPC status, and for
//! PullImage the decoded request (image, pod) and response (image ref), turned into a
//! [`PullAttempt`] when the call ends, however it ends.

use crate::core::attempt::{Outcome, PullAttempt, Source};
use crate::core::reason::Reason;
use crate::grpc::status::{self, GrpcStatus, code_name};
use crate::grpc::timeout;
use crate::recorder::{InFlight, Recorder};
use crate::sources::cri_proxy::decode::{self, ObservedPull};
use crate::sources::cri_proxy::methods;
use http::{HeaderMap, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tonic::Code;

/// Largest PullImage request pullwatch buffers to decode (kubelet's are a few KiB; the CRI
/// message limit is 16 MiB). Larger ones are forwarded untouched and counted as decode errors.
const MAX_REQUEST_CAPTURE: usize = 4 << 20;
/// Largest PullImage response buffered (it holds one string).
const MAX_RESPONSE_CAPTURE: usize = 64 << 10;

/// Bytes of a PullImage request collected as they stream to the runtime.
pub(crate) struct PullCapture {
    recorder: Arc<Recorder>,
    buf: Vec<u8>,
    overflow: bool,
    observed: Option<Option<ObservedPull>>,
    in_flight: Option<InFlight>,
}

impl PullCapture {
    fn new(recorder: Arc<Recorder>) -> Self {
        Self {
            recorder,
            buf: Vec::new(),
            overflow: false,
            observed: None,
            in_flight: None,
        }
    }

    /// Appends request bytes (until the cap).
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.observed.is_some() || self.overflow {
            return;
        }
        if self.buf.len() + data.len() > MAX_REQUEST_CAPTURE {
            self.overflow = true;
            self.wipe();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Zeroes and frees the buffer: it may hold AuthConfig bytes.
    fn wipe(&mut self) {
        self.buf.fill(0);
        self.buf = Vec::new();
    }

    /// Decodes the request (once) and starts counting the pull as in flight.
    pub(crate) fn complete(&mut self) {
        if self.observed.is_some() {
            return;
        }
        let decoded = if self.overflow {
            None
        } else {
            decode::pull_request(&self.buf)
        };
        self.wipe();
        let observed = match decoded {
            Some(o) => Some(o),
            None => {
                self.recorder
                    .metrics()
                    .decode_errors
                    .with_label_values(&["pull_image_request"])
                    .inc();
                tracing::debug!("could not decode a PullImage request; forwarded unchanged");
                None
            }
        };
        let registry = observed
            .as_ref()
            .and_then(|o| o.reference.as_ref())
            .map_or(crate::core::attempt::UNKNOWN_REGISTRY, |r| {
                r.registry.as_str()
            });
        self.in_flight = Some(self.recorder.pull_started(registry));
        self.observed = Some(observed);
    }
}

/// How a call ended.
pub(crate) enum End {
    /// The response stream finished (status from trailers or headers).
    Completed,
    /// The runtime could not be reached or the connection to it failed.
    RuntimeUnavailable(String),
}

/// One in-progress proxied call. Records itself exactly once: when finished, or when dropped
/// (the caller went away, or its deadline passed).
pub(crate) struct Call {
    recorder: Arc<Recorder>,
    method: String,
    started: Instant,
    started_at: SystemTime,
    deadline: Option<Duration>,
    pull: Option<Arc<Mutex<PullCapture>>>,
    response: Vec<u8>,
    http_status: StatusCode,
    status: Option<GrpcStatus>,
    finished: bool,
}

fn lock(c: &Mutex<PullCapture>) -> std::sync::MutexGuard<'_, PullCapture> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl Call {
    /// Starts observing a call to `path` with request headers `headers`.
    pub(crate) fn new(recorder: Arc<Recorder>, path: &str, headers: &HeaderMap) -> Self {
        let pull = methods::is_pull_image(path)
            .then(|| Arc::new(Mutex::new(PullCapture::new(recorder.clone()))));
        Self {
            method: methods::label(path).to_string(),
            deadline: headers
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(timeout::parse),
            started: Instant::now(),
            started_at: SystemTime::now(),
            recorder,
            pull,
            response: Vec::new(),
            http_status: StatusCode::OK,
            status: None,
            finished: false,
        }
    }

    /// The request capture shared with the request body, for PullImage calls.
    pub(crate) fn pull_capture(&self) -> Option<Arc<Mutex<PullCapture>>> {
        self.pull.clone()
    }

    /// Notes the response head. A status in the headers means a trailers-only response: done.
    pub(crate) fn on_response_head(&mut self, http_status: StatusCode, headers: &HeaderMap) {
        self.http_status = http_status;
        if let Some(s) = status::from_headers(headers) {
            self.status = Some(s);
            self.finish(End::Completed);
        }
    }

    /// Notes response bytes (kept only for PullImage).
    pub(crate) fn on_data(&mut self, data: &[u8]) {
        if self.pull.is_some() && self.response.len() + data.len() <= MAX_RESPONSE_CAPTURE {
            self.response.extend_from_slice(data);
        }
    }

    /// Notes the response trailers.
    pub(crate) fn on_trailers(&mut self, trailers: &HeaderMap) {
        if let Some(s) = status::from_headers(trailers) {
            self.status = Some(s);
        }
    }

    /// Whether the call has been recorded.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// Records the call (once).
    pub(crate) fn finish(&mut self, end: End) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let duration = self.started.elapsed();
        let (code, message, forced_reason) = match end {
            End::Completed => match &self.status {
                Some(s) => (s.code, s.message.clone(), None),
                None if self.http_status != StatusCode::OK => (
                    status::code_from_http(self.http_status),
                    format!(
                        "runtime answered HTTP {} without grpc-status",
                        self.http_status
                    ),
                    None,
                ),
                None => (
                    Code::Unknown,
                    "response ended without grpc-status".to_string(),
                    None,
                ),
            },
            End::RuntimeUnavailable(msg) => {
                (Code::Unavailable, msg, Some(Reason::RuntimeUnavailable))
            }
        };
        self.record(code, message, forced_reason, duration);
    }

    /// Records a call whose caller went away before it ended.
    fn abandon(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let duration = self.started.elapsed();
        // A caller's deadline firing looks like a cancel from here; tell them apart by time.
        let (code, message) = match self.deadline {
            Some(d) if duration + Duration::from_millis(20) >= d => (
                Code::DeadlineExceeded,
                format!("deadline exceeded: the caller's deadline of {d:?} passed before the runtime answered (observed by pullwatch)"),
            ),
            _ => (
                Code::Cancelled,
                "context canceled: the caller went away before the runtime answered (observed by pullwatch)"
                    .to_string(),
            ),
        };
        self.record(code, message, None, duration);
    }

    fn record(&mut self, code: Code, message: String, forced: Option<Reason>, duration: Duration) {
        let metrics = self.recorder.metrics();
        metrics
            .cri_requests
            .with_label_values(&[self.method.as_str(), code_name(code)])
            .inc();
        metrics
            .cri_duration
            .with_label_values(&[self.method.as_str()])
            .observe(duration.as_secs_f64());
        let Some(capture) = self.pull.take() else {
            return;
        };
        let (observed, in_flight) = {
            let mut c = lock(&capture);
            c.complete();
            (c.observed.clone().flatten(), c.in_flight.take())
        };
        let outcome = match (code, forced) {
            (Code::Ok, _) => Outcome::Success {
                image_ref: self.decode_image_ref(),
            },
            (_, Some(reason)) => Outcome::Failure {
                code,
                message,
                reason,
            },
            _ => Outcome::failure(code, message),
        };
        let observed = observed.unwrap_or(ObservedPull {
            image: String::new(),
            reference: None,
            pod: None,
        });
        let attempt = PullAttempt {
            image: observed.image,
            reference: observed.reference,
            pod: observed.pod,
            started_at: self.started_at,
            duration: Some(duration),
            outcome,
            source: Source::CriProxy,
        };
        self.recorder.record(&attempt);
        drop(in_flight);
    }

    fn decode_image_ref(&self) -> String {
        match decode::pull_response(&self.response) {
            Some(r) => r,
            None => {
                self.recorder
                    .metrics()
                    .decode_errors
                    .with_label_values(&["pull_image_response"])
                    .inc();
                String::new()
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.status.is_some() {
            self.finish(End::Completed);
        } else {
            self.abandon();
        }
    }
}
