//! The observer of one relayed connection: one [`wire::Reader`] per direction, and the stitcher
//! that pairs each caller's request with the runtime's answer into a [`Call`]. It sees copies of
//! bytes already forwarded and never influences the relay: when it cannot follow a connection,
//! it stops observing it (counted in `pullwatch_interposer_unobserved_connections_total`, logged
//! once) and the connection goes on relayed.

use crate::recorder::Recorder;
use crate::sources::cri_proxy::budget::{self, Budget, Lease};
use crate::sources::cri_proxy::call::{Call, End};
use crate::sources::cri_proxy::wire::{Event, Reader, Side, Unobservable};
use std::collections::HashMap;
use std::sync::Arc;

/// Calls tracked at once on one connection; more ends observation of the connection.
pub const MAX_STREAMS: usize = 10_000;

/// HTTP/2 REFUSED_STREAM: the stream was not processed; the caller may retry it.
const REFUSED_STREAM: u32 = 0x7;

/// One connection's observer.
pub struct ConnectionObserver {
    recorder: Arc<Recorder>,
    caller: Reader,
    runtime: Reader,
    calls: HashMap<u32, Call>,
    connection_budget: Arc<Budget>,
    total_budget: Arc<Budget>,
    failed: Option<Unobservable>,
}

impl ConnectionObserver {
    /// An observer of a new connection; `total_budget` is shared by all connections.
    pub fn new(recorder: Arc<Recorder>, total_budget: Arc<Budget>) -> Self {
        Self {
            recorder,
            caller: Reader::new(Side::Caller),
            runtime: Reader::new(Side::Runtime),
            calls: HashMap::new(),
            connection_budget: Budget::new(budget::PER_CONNECTION),
            total_budget,
            failed: None,
        }
    }

    /// Bytes `side` sent (already forwarded).
    pub fn observe(&mut self, side: Side, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        let Self {
            recorder,
            caller,
            runtime,
            calls,
            connection_budget,
            total_budget,
            ..
        } = self;
        let reader = match side {
            Side::Caller => caller,
            Side::Runtime => runtime,
        };
        let mut limit = None;
        let mut on = |ev: Event<'_>| {
            if limit.is_none() {
                limit = on_event(side, ev, calls, recorder, connection_budget, total_budget).err();
            }
        };
        let result = reader.feed(bytes, &mut on);
        if let Some(e) = result.err().or(limit) {
            self.give_up(e);
        }
    }

    /// Whether no call is open (the connection may be closed without cutting one), as far as
    /// the observer knows: an unobserved connection is never idle.
    pub fn is_idle(&self) -> bool {
        self.failed.is_none() && self.calls.is_empty()
    }

    /// Whether the observer has given up on this connection.
    pub fn is_observing(&self) -> bool {
        self.failed.is_none()
    }

    /// Whether the runtime's direction stands between frames (bytes could be inserted there).
    pub fn runtime_at_frame_boundary(&self) -> bool {
        self.failed.is_none() && self.runtime.at_frame_boundary()
    }

    /// The connection ended; `first` is the side whose end (EOF or error) came first. Open
    /// calls end as that side's doing.
    pub fn closed(&mut self, first: Side) {
        for (_, call) in self.calls.drain() {
            match first {
                Side::Caller => call.finish(End::CallerGone),
                Side::Runtime => call.finish(End::RuntimeGone(
                    "runtime connection closed before the call ended (observed by pullwatch)"
                        .into(),
                )),
            }
        }
    }

    fn give_up(&mut self, why: Unobservable) {
        tracing::warn!(
            cause = why.cause(),
            error = %why,
            open_calls = self.calls.len(),
            "interposer: connection relayed without observation from here on"
        );
        self.recorder
            .metrics()
            .interposer_unobserved
            .with_label_values(&[why.cause()])
            .inc();
        for (_, call) in self.calls.drain() {
            call.discard();
        }
        self.failed = Some(why);
        self.caller = Reader::new(Side::Caller);
        self.runtime = Reader::new(Side::Runtime);
    }
}

/// Applies one event to the open calls.
fn on_event(
    side: Side,
    ev: Event<'_>,
    calls: &mut HashMap<u32, Call>,
    recorder: &Arc<Recorder>,
    connection_budget: &Arc<Budget>,
    total_budget: &Arc<Budget>,
) -> Result<(), Unobservable> {
    match (side, ev) {
        (
            Side::Caller,
            Event::Headers {
                stream,
                head,
                end_stream,
            },
        ) => {
            if !calls.contains_key(&stream) {
                if calls.len() >= MAX_STREAMS {
                    return Err(Unobservable::Limit("open calls"));
                }
                let lease = || Lease::new(connection_budget, total_budget);
                calls.insert(stream, Call::new(recorder.clone(), &head, lease));
            }
            if end_stream && let Some(c) = calls.get_mut(&stream) {
                c.on_request_end();
            }
        }
        (
            Side::Caller,
            Event::Data {
                stream,
                data,
                end_stream,
            },
        ) => {
            if let Some(c) = calls.get_mut(&stream) {
                c.on_request_data(data);
                if end_stream {
                    c.on_request_end();
                }
            }
        }
        (Side::Caller, Event::Reset { stream, .. }) => {
            if let Some(c) = calls.remove(&stream) {
                c.finish(End::CallerGone);
            }
        }
        (
            Side::Runtime,
            Event::Headers {
                stream,
                head,
                end_stream,
            },
        ) => {
            if let Some(c) = calls.get_mut(&stream) {
                c.on_response_headers(&head);
            }
            if end_stream && let Some(c) = calls.remove(&stream) {
                c.finish(End::Completed);
            }
        }
        (
            Side::Runtime,
            Event::Data {
                stream,
                data,
                end_stream,
            },
        ) => {
            if let Some(c) = calls.get_mut(&stream) {
                c.on_response_data(data);
            }
            if end_stream && let Some(c) = calls.remove(&stream) {
                c.finish(End::Completed);
            }
        }
        (Side::Runtime, Event::Reset { stream, code }) => {
            if let Some(c) = calls.remove(&stream) {
                if code == REFUSED_STREAM {
                    tracing::debug!(stream, "runtime refused a stream; the caller may retry it");
                    c.discard();
                } else {
                    c.finish(End::RuntimeReset(code));
                }
            }
        }
        (Side::Runtime, Event::GoAway { last_stream, code }) => {
            // Streams above `last_stream` were never processed: the caller retries them.
            let unprocessed: Vec<u32> =
                calls.keys().copied().filter(|s| *s > last_stream).collect();
            tracing::debug!(
                last_stream,
                code,
                unprocessed = unprocessed.len(),
                "runtime sent GOAWAY"
            );
            for s in unprocessed {
                if let Some(c) = calls.remove(&s) {
                    c.discard();
                }
            }
        }
        (Side::Caller, Event::GoAway { .. }) => {}
    }
    Ok(())
}

#[cfg(test)]
#[path = "observer_tests.rs"]
mod tests;
