//! Observation of one CRI call: its method, timing and final gRPC status, and for PullImage the
//! decoded request (image, pod) and response (image ref), turned into a [`PullAttempt`] when
//! the call ends, however it ends. Times are those the transport saw the bytes at.

use crate::core::attempt::{CauseFrom, Outcome, PullAttempt, Readout, TraceContext};
use crate::core::reason::Reason;
use crate::grpc::status::{self, GrpcStatus};
use crate::grpc::timeout;
use crate::observe::budget::Lease;
use crate::observe::decode::{self, ObservedPull};
use crate::observe::methods;
use crate::observe::wire::{Head, StatusByOrder};
use crate::observe::{ByMethod, ByPart, CallCode, MethodCode, Part, Recording};
use crate::recorder::InFlight;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tonic::Code;

/// Largest PullImage request pullwatch buffers to decode (kubelet's are a few KiB; the CRI
/// message limit is 16 MiB). Larger ones are relayed untouched and counted as decode errors.
pub(crate) const MAX_REQUEST_CAPTURE: usize = 4 << 20;
/// Largest PullImage response buffered (it holds one string).
const MAX_RESPONSE_CAPTURE: usize = 64 << 10;
/// Largest request buffered of a call whose method could not be read (to tell a PullImage by
/// its message; kubelet's are a few KiB with the pod's sandbox config).
const MAX_UNREAD_CAPTURE: usize = 256 << 10;
/// The message of a failure whose status and message could not be read.
pub(crate) const UNREADABLE: &str = "the runtime's status could not be read: the kernel tap joined the connection after the HPACK entries that name it were sent (pullwatch_cri_tap_partial_calls_total)";

/// Bytes of a PullImage message collected as they are relayed, within a memory lease.
struct Capture {
    buf: Vec<u8>,
    lease: Lease,
    limit: usize,
    overflow: bool,
}

impl Capture {
    fn new(lease: Lease, limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            lease,
            limit,
            overflow: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if self.overflow || data.is_empty() {
            return;
        }
        if self.buf.len() + data.len() > self.limit || !self.lease.grow(data.len()) {
            self.overflow = true;
            self.wipe();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Zeroes and frees the buffer: a request may hold AuthConfig bytes.
    fn wipe(&mut self) {
        self.buf.fill(0);
        self.buf = Vec::new();
        self.lease.release();
    }
}

/// The PullImage part of a call (or of a call whose method could not be read, until its
/// request tells whether it is one).
struct Pull {
    request: Capture,
    response: Capture,
    /// The decoded request, once the request ended (`Some(None)`: not decodable).
    observed: Option<Option<ObservedPull>>,
    in_flight: Option<InFlight>,
    /// The method was not read: this is a PullImage only if its request says so.
    tentative: bool,
}

/// How a call ended.
pub(crate) enum End {
    /// The runtime ended the response (status from trailers or headers).
    Completed,
    /// The runtime reset the stream with this HTTP/2 error code.
    RuntimeReset(u32),
    /// The runtime's connection closed or failed before the call ended.
    RuntimeGone(String),
    /// The caller reset the stream or went away.
    CallerGone,
}

/// One call in progress. Records itself exactly once (or is discarded, when the runtime said
/// it never processed it: the caller retries on a new stream).
pub(crate) struct Call {
    recording: Arc<Recording>,
    method: &'static str,
    started: Instant,
    started_at: SystemTime,
    deadline: Option<Duration>,
    trace: Option<Box<TraceContext>>,
    pull: Option<Pull>,
    http_status: Option<u16>,
    status: Option<GrpcStatus>,
    /// The status was read by its place in the trailers ([`Head::status_by_order`]).
    status_by_order: bool,
    /// A stream-ending block's status could not be read (unnamed, unknown value); the message
    /// by its place, if it could be.
    unreadable_status: Option<Option<String>>,
    /// Response header blocks seen, and whether DATA came before the last.
    response_blocks: u8,
    response_data: bool,
    /// The method could not be read (its `:path` was an HPACK entry from before the join).
    unread_method: bool,
    /// The caller's request ended.
    request_done: bool,
    finished: bool,
}

impl Call {
    /// Starts observing a call from its request header block, seen at `at`. `lease` gives the
    /// memory of the PullImage captures.
    pub(crate) fn new(
        recording: Arc<Recording>,
        head: &Head,
        lease: impl Fn() -> Lease,
        at: Instant,
    ) -> Self {
        let path = head.path.as_deref().unwrap_or("");
        let unread_method = head.path_unreadable();
        let pull = (methods::is_pull_image(path) || unread_method).then(|| Pull {
            request: Capture::new(
                lease(),
                if unread_method {
                    MAX_UNREAD_CAPTURE
                } else {
                    MAX_REQUEST_CAPTURE
                },
            ),
            response: Capture::new(lease(), MAX_RESPONSE_CAPTURE),
            observed: None,
            in_flight: None,
            tentative: unread_method,
        });
        Self {
            method: if unread_method {
                methods::UNREAD
            } else {
                methods::label(path)
            },
            deadline: head.grpc_timeout.as_deref().and_then(timeout::parse),
            trace: head
                .traceparent
                .as_deref()
                .and_then(TraceContext::parse)
                .map(Box::new),
            started: at,
            started_at: wall_clock(at),
            recording,
            pull,
            http_status: None,
            status: None,
            status_by_order: false,
            unreadable_status: None,
            response_blocks: 0,
            response_data: false,
            unread_method,
            request_done: false,
            finished: false,
        }
    }

    /// Request message bytes.
    pub(crate) fn on_request_data(&mut self, data: &[u8]) {
        if let Some(p) = &mut self.pull
            && p.observed.is_none()
        {
            p.request.push(data);
        }
    }

    /// The caller finished its request: decode it (once) and count the pull as in flight. A
    /// call whose method could not be read is a pull only if its request is one by its shape
    /// ([`decode::pull_request_by_shape`]); otherwise it is no pull.
    pub(crate) fn on_request_end(&mut self) {
        self.request_done = true;
        let Some(p) = &mut self.pull else { return };
        if p.observed.is_some() {
            return;
        }
        if p.tentative {
            let decoded = (!p.request.overflow)
                .then(|| decode::pull_request_by_shape(&p.request.buf))
                .flatten();
            p.request.wipe();
            let Some(o) = decoded else {
                self.pull = None;
                return;
            };
            p.in_flight = Some(self.recording.recorder.pull_started_for(
                &o.image,
                o.reference.as_ref(),
                o.pod.clone(),
            ));
            p.observed = Some(Some(o));
            return;
        }
        let decoded = if p.request.overflow {
            None
        } else {
            decode::pull_request(&p.request.buf)
        };
        p.request.wipe();
        if decoded.is_none() {
            self.recording.health.decode_error("pull_image_request");
            tracing::debug!("could not decode a PullImage request; relayed unchanged");
        }
        let recorder = &self.recording.recorder;
        p.in_flight = Some(match &decoded {
            Some(o) => recorder.pull_started_for(&o.image, o.reference.as_ref(), o.pod.clone()),
            None => recorder.pull_started(crate::core::attempt::UNKNOWN_REGISTRY),
        });
        p.observed = Some(decoded);
    }

    /// A response header block: the head first, trailers after (or one block for both: a
    /// trailers-only answer). The observer ends the call when the block ends the stream. When
    /// the block's names were partly unknown (the tap joined late), the status and message are
    /// read by their place, or said to be unreadable.
    pub(crate) fn on_response_headers(&mut self, head: &Head, end_stream: bool) {
        self.response_blocks = self.response_blocks.saturating_add(1);
        if self.http_status.is_none() {
            self.http_status = head.status.or(Some(200));
        }
        if let Some(code) = &head.grpc_status {
            self.status = Some(status::from_raw(code, head.grpc_message.as_deref()));
            return;
        }
        if !end_stream || !head.has_unnamed() {
            return;
        }
        let trailers_only = self.response_blocks == 1 && !self.response_data;
        match head.status_by_order(trailers_only) {
            Some(StatusByOrder {
                code: Some(code),
                message,
            }) => {
                self.status = Some(status::from_raw(&code, message.as_deref()));
                self.status_by_order = true;
            }
            Some(StatusByOrder {
                code: None,
                message,
            }) => {
                self.unreadable_status = Some(message.map(|m| status::decode_message(&m)));
            }
            None => self.unreadable_status = Some(None),
        }
    }

    /// Response message bytes.
    pub(crate) fn on_response_data(&mut self, data: &[u8]) {
        self.response_data |= !data.is_empty();
        if let Some(p) = &mut self.pull {
            p.response.push(data);
        }
    }

    /// Whether the caller's request ended (its END_STREAM was seen).
    pub(crate) fn request_ended(&self) -> bool {
        self.request_done
    }

    /// Whether the call opened at or before `at`.
    pub(crate) fn started_at_or_before(&self, at: Instant) -> bool {
        self.started <= at
    }

    /// How long the call has been open at `now`.
    pub(crate) fn open_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Counts a part of the call that could not be read in the transport's partial family.
    fn partial(&self, part: Part) {
        if let Some(f) = &self.recording.partial {
            f.inc(&ByPart { part });
        }
    }

    /// Drops the call unrecorded because the observer lost track of it (bytes lost, a
    /// resynchronization), counted as partial.
    pub(crate) fn lost(mut self) {
        self.finished = true;
        self.partial(Part::Lost);
    }

    /// Drops the call unrecorded: the runtime never processed it (REFUSED_STREAM, or a GOAWAY
    /// below its stream id) and the caller's gRPC library retries it on a new stream.
    pub(crate) fn discard(mut self) {
        self.finished = true;
    }

    /// Records the call (once), ended at `at`.
    pub(crate) fn finish(mut self, end: End, at: Instant) {
        self.finished = true;
        let duration = at.saturating_duration_since(self.started);
        let (code, message, forced) = match end {
            End::Completed => match (&self.status, &self.unreadable_status) {
                (Some(s), _) => (s.code, s.message.clone(), None),
                // A pull answered with its image ref succeeded, whatever status it had.
                (None, Some(_)) if self.answered_with_image() => {
                    self.partial(Part::Status);
                    (Code::Ok, String::new(), None)
                }
                (None, Some(message)) => {
                    self.partial(Part::Status);
                    match message {
                        Some(m) => {
                            self.status_by_order = true;
                            (Code::Unknown, m.clone(), None)
                        }
                        None => (Code::Unknown, UNREADABLE.to_string(), Some(Reason::Unknown)),
                    }
                }
                (None, None) => match self.http_status {
                    Some(h) if h != 200 => (
                        status::code_from_http(h),
                        format!("runtime answered HTTP {h} without grpc-status"),
                        None,
                    ),
                    _ => (
                        Code::Unknown,
                        "response ended without grpc-status".to_string(),
                        None,
                    ),
                },
            },
            End::RuntimeReset(h2) => {
                let code = status::code_from_reset(h2);
                (
                    code,
                    format!(
                        "stream reset by the runtime (HTTP/2 {})",
                        status::reset_name(h2)
                    ),
                    None,
                )
            }
            End::RuntimeGone(msg) => (Code::Unavailable, msg, Some(Reason::RuntimeUnavailable)),
            End::CallerGone => {
                // A caller's deadline firing looks like a cancel from here; tell them apart by time.
                match self.deadline {
                    Some(d) if duration + Duration::from_millis(20) >= d => (
                        Code::DeadlineExceeded,
                        format!("deadline exceeded: the caller's deadline of {d:?} passed before the runtime answered (observed by pullwatch)"),
                        None,
                    ),
                    _ => (
                        Code::Cancelled,
                        "context canceled: the caller went away before the runtime answered (observed by pullwatch)"
                            .to_string(),
                        None,
                    ),
                }
            }
        };
        self.record(code, message, forced, duration);
    }

    /// Whether a pull's answer is a PullImage response with an image ref.
    fn answered_with_image(&self) -> bool {
        self.pull.as_ref().is_some_and(|p| {
            !p.response.overflow && decode::pull_response_by_shape(&p.response.buf).is_some()
        })
    }

    fn record(&mut self, code: Code, message: String, forced: Option<Reason>, duration: Duration) {
        if self.unread_method {
            self.partial(Part::Method);
        }
        if self.status_by_order {
            self.partial(Part::Names);
        }
        // A status that could not be read is no gRPC code, unless the answer itself told it (a
        // pull's image ref) or its message was read by its place.
        let unread = self.unreadable_status.is_some() && !self.status_by_order && code != Code::Ok;
        let metrics = &self.recording.calls;
        metrics.requests.inc(&MethodCode {
            method: self.method,
            code: if unread {
                CallCode::Unread
            } else {
                CallCode::Status(code)
            },
        });
        metrics.duration.observe(
            &ByMethod {
                method: self.method,
            },
            duration.as_secs_f64(),
        );
        if self.pull.is_none() {
            return;
        }
        self.on_request_end();
        let Some(mut pull) = self.pull.take() else {
            return;
        };
        let outcome = match (code, forced) {
            (Code::Ok, _) => Outcome::Success {
                image_ref: self.decode_image_ref(&pull.response),
            },
            (_, Some(reason)) => Outcome::Failure {
                code,
                message,
                reason,
            },
            _ => Outcome::failure(code, message),
        };
        let readout = self.readout(&outcome);
        // An undecodable request: nothing is known of it, not even whether it had credentials.
        let decoded = pull.observed.take().flatten();
        let credentials = decoded.as_ref().map(|o| o.credentials);
        let observed = decoded.unwrap_or(ObservedPull {
            image: String::new(),
            reference: None,
            pod: None,
            credentials: false,
        });
        let attempt = PullAttempt {
            image: observed.image,
            reference: observed.reference,
            pod: observed.pod,
            started_at: self.started_at,
            duration: Some(duration),
            outcome,
            source: self.recording.source,
            trace: self.trace.take(),
            credentials,
            readout,
        };
        self.recording.recorder.record(&attempt);
        drop(pull.in_flight.take());
    }

    /// What of the call could not be read from its own fields, and where it was read instead.
    fn readout(&self, outcome: &Outcome) -> Option<Readout> {
        let unread_status = self.unreadable_status.is_some();
        if !(self.unread_method || self.status_by_order || unread_status) {
            return None;
        }
        let cause_from = match outcome {
            Outcome::Success { .. } => None,
            Outcome::Failure { .. } if self.status_by_order => Some(CauseFrom::TrailerOrder),
            Outcome::Failure { .. } if unread_status => Some(CauseFrom::Unreadable),
            Outcome::Failure { .. } => Some(CauseFrom::Trailers),
        };
        Some(Readout {
            method_from_message: self.unread_method,
            cause_from,
        })
    }

    fn decode_image_ref(&self, response: &Capture) -> String {
        let decoded = (!response.overflow)
            .then(|| decode::pull_response(&response.buf))
            .flatten();
        decoded.unwrap_or_else(|| {
            self.recording.health.decode_error("pull_image_response");
            String::new()
        })
    }
}

/// The wall-clock time of `at` (a monotonic instant of the recent past).
fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or_else(SystemTime::now)
}

impl Drop for Call {
    /// A call dropped unfinished was cut by pullwatch itself (its shutdown grace ran out):
    /// the caller sees its connection close.
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            let duration = self.started.elapsed();
            self.record(
                Code::Unavailable,
                "pullwatch stopped before the runtime answered (shutdown grace over)".into(),
                Some(Reason::RuntimeUnavailable),
                duration,
            );
        }
    }
}
