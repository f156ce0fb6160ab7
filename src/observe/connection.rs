//! The observer of one connection: one [`wire::Reader`](crate::observe::wire::Reader) per
//! direction, and the stitcher that pairs each caller's request with the runtime's answer into
//! a [`Call`]. It sees copies of bytes the connection already carried and never influences it.
//!
//! Two ways of following a connection, one per transport ([`Follow`]). The interposer sees
//! every byte from the first: when it cannot follow a connection, it stops observing it
//! (counted in its unobserved-connections family, logged once) and the connection goes on. The
//! kernel tap may join a connection under way and may lose bytes (its ring was full): it then
//! hunts for a frame boundary and reads on ([`Reader::joining`]), counting each
//! resynchronization by cause; calls it may have lost part of are dropped and counted as
//! partial, never recorded with a guess.

use crate::observe::Recording;
use crate::observe::budget::{Lease, Share};
use crate::observe::call::{Call, End};
use crate::observe::wire::{Event, Reader, Side, Unobservable};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Calls tracked at once on one connection; more ends observation of the connection.
pub(crate) const MAX_STREAMS: usize = 10_000;

/// HTTP/2 REFUSED_STREAM: the stream was not processed; the caller may retry it.
const REFUSED_STREAM: u32 = 0x7;

/// How a connection is followed when its bytes cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Give up for good (the interposer: it saw everything, so what it cannot read now it never
    /// will).
    GiveUp,
    /// Hunt for a frame boundary and read on (the tap).
    Resync,
}

/// One connection's observer.
pub(crate) struct ConnectionObserver {
    caller: Reader,
    runtime: Reader,
    calls: Stitcher,
    failed: Option<Unobservable>,
    share: Arc<Share>,
    follow: Follow,
    /// When the runtime's side last skipped bytes while hunting: a call opened by then may
    /// have had its answer there.
    runtime_skipped: Option<Instant>,
}

/// Pairs each caller's request with the runtime's answer: the open calls of a connection.
struct Stitcher {
    recording: Arc<Recording>,
    open: HashMap<u32, Call>,
    /// The highest stream the caller opened: a new call needs a higher one (RFC 9113 §5.1.1),
    /// so a late header block on a finished stream never starts a second call.
    last_stream: u32,
    share: Arc<Share>,
}

impl ConnectionObserver {
    /// An observer of a new connection, from its first byte, that gives up on what it cannot
    /// follow ([`Follow::GiveUp`]), holding its buffers from `share`.
    pub(crate) fn new(recording: Arc<Recording>, share: Arc<Share>) -> Self {
        Self {
            caller: Reader::new(Side::Caller, &share),
            runtime: Reader::new(Side::Runtime, &share),
            calls: Stitcher {
                recording,
                open: HashMap::new(),
                last_stream: 0,
                share: share.clone(),
            },
            failed: None,
            share,
            follow: Follow::GiveUp,
            runtime_skipped: None,
        }
    }

    /// An observer of a new connection, from its first byte, that resynchronizes
    /// ([`Follow::Resync`]).
    pub(crate) fn tap(recording: Arc<Recording>, share: Arc<Share>) -> Self {
        Self {
            follow: Follow::Resync,
            ..Self::new(recording, share)
        }
    }

    /// An observer joining a connection under way (both directions hunt for a frame boundary,
    /// HPACK decoders join late), that resynchronizes ([`Follow::Resync`]).
    pub(crate) fn joining(recording: Arc<Recording>, share: Arc<Share>) -> Self {
        Self {
            caller: Reader::joining(Side::Caller, &share),
            runtime: Reader::joining(Side::Runtime, &share),
            follow: Follow::Resync,
            ..Self::new(recording, share)
        }
    }

    fn reader(&mut self, side: Side) -> &mut Reader {
        match side {
            Side::Caller => &mut self.caller,
            Side::Runtime => &mut self.runtime,
        }
    }

    /// Whether `side`'s reader is looking for a frame boundary (then only whole pieces,
    /// [`Self::observe_piece`], can resume it).
    pub(crate) fn is_hunting(&self, side: Side) -> bool {
        match side {
            Side::Caller => self.caller.is_hunting(),
            Side::Runtime => self.runtime.is_hunting(),
        }
    }

    /// Bytes `side` sent at `at` (already carried to the other side).
    pub(crate) fn observe(&mut self, side: Side, bytes: &[u8], at: Instant) {
        self.read(side, bytes, at, false);
    }

    /// A piece `side` sent at `at` that starts where one of its writes (or the runtime's
    /// reads) started: a hunting reader may find its frame boundary there.
    pub(crate) fn observe_piece(&mut self, side: Side, piece: &[u8], at: Instant) {
        self.read(side, piece, at, true);
    }

    /// `n` bytes of `side` were lost at `at` (never seen): the reader hunts again, and calls
    /// that may have lost a part are dropped as partial.
    pub(crate) fn lost(&mut self, side: Side, at: Instant) {
        let _ = at;
        self.resync(side, Unobservable::Gap);
    }

    fn read(&mut self, side: Side, bytes: &[u8], at: Instant, piece: bool) {
        if self.failed.is_some() {
            return;
        }
        // The runtime's side finds its boundary: calls opened before it last skipped bytes may
        // have had their answers in them (the runtime answers only after it read a request, so
        // the others cannot).
        if side == Side::Runtime && self.is_hunting(side) {
            if piece && crate::observe::wire::starts_at_frame(bytes) {
                if let Some(skipped) = self.runtime_skipped.take() {
                    self.calls.lose_opened_by(skipped);
                }
            } else {
                self.runtime_skipped = Some(at);
            }
        }
        let reader = match side {
            Side::Caller => &mut self.caller,
            Side::Runtime => &mut self.runtime,
        };
        let calls = &mut self.calls;
        let mut limit = None;
        let mut on = |ev: Event<'_>| {
            if limit.is_none() {
                limit = calls.on_event(side, ev, at).err();
            }
        };
        // A panic here would take kubelet's relay down with it: contain it, stop observing.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if piece {
                reader.feed_piece(bytes, &mut on)
            } else {
                reader.feed(bytes, &mut on)
            }
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Unobservable::Internal(what))
        });
        if let Some(e) = result.err().or(limit) {
            match self.follow {
                Follow::GiveUp => self.give_up(e),
                Follow::Resync => self.resync(side, e),
            }
        }
    }

    /// The tap lost track of `side` (`why`): counted, its reader hunts again, and the calls
    /// that may have lost a part are dropped as partial: all of them when the runtime's side
    /// was lost (their answers may be in what was lost), those whose request had not ended
    /// when the caller's was.
    fn resync(&mut self, side: Side, why: Unobservable) {
        let event = super::events::Resynced { side, why: &why };
        event.emit(&self.calls.recording.unobserved);
        match side {
            Side::Runtime => {
                self.calls.lose_all();
                self.runtime_skipped = None;
            }
            Side::Caller => self.calls.lose_unfinished_requests(),
        }
        self.reader(side).lost();
    }

    /// The connection can no longer be followed (its end was lost): open calls are dropped as
    /// partial.
    pub(crate) fn abandon(&mut self) {
        self.calls.lose_all();
    }

    /// Drops the calls open longer than `max` at `now` (their end was never seen), as partial.
    pub(crate) fn sweep(&mut self, now: Instant, max: std::time::Duration) {
        let stale: Vec<u32> = self
            .calls
            .open
            .iter()
            .filter(|(_, c)| c.open_for(now) > max)
            .map(|(s, _)| *s)
            .collect();
        for s in stale {
            if let Some(c) = self.calls.open.remove(&s) {
                c.lost();
            }
        }
    }

    #[cfg(test)]
    /// Whether no call is open (the connection may be closed without cutting one), as far as
    /// the observer knows: an unobserved connection is never idle.
    pub(crate) fn is_idle(&self) -> bool {
        self.failed.is_none() && self.calls.open.is_empty()
    }

    /// Whether the observer still follows this connection.
    pub(crate) fn is_observing(&self) -> bool {
        self.failed.is_none()
    }

    /// Calls open on the connection, as far as the observer knows.
    pub(crate) fn open_calls(&self) -> usize {
        self.calls.open.len()
    }

    /// The connection ended at `at`; `first` is the side whose end (EOF or error) came first.
    /// Open calls end as that side's doing.
    pub(crate) fn closed(&mut self, first: Side, at: Instant) {
        for (_, call) in self.calls.open.drain() {
            match first {
                Side::Caller => call.finish(End::CallerGone, at),
                Side::Runtime => call.finish(
                    End::RuntimeGone(
                        "runtime connection closed before the call ended (observed by pullwatch)"
                            .into(),
                    ),
                    at,
                ),
            }
        }
    }

    /// Stops observing the connection (open calls are dropped unrecorded), counted by cause and
    /// logged once.
    pub(crate) fn give_up(&mut self, why: Unobservable) {
        if self.failed.is_some() {
            return;
        }
        let event = super::events::GaveUp {
            why: &why,
            open_calls: self.calls.open.len(),
        };
        event.emit(&self.calls.recording.unobserved);
        for (_, call) in self.calls.open.drain() {
            call.discard();
        }
        self.failed = Some(why);
        self.caller = Reader::new(Side::Caller, &self.share);
        self.runtime = Reader::new(Side::Runtime, &self.share);
    }
}

impl Stitcher {
    /// Drops every open call as partial.
    fn lose_all(&mut self) {
        for (_, c) in self.open.drain() {
            c.lost();
        }
    }

    /// Drops the calls opened at or before `at`, as partial.
    fn lose_opened_by(&mut self, at: Instant) {
        let early: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, c)| c.started_at_or_before(at))
            .map(|(s, _)| *s)
            .collect();
        for s in early {
            if let Some(c) = self.open.remove(&s) {
                c.lost();
            }
        }
    }

    /// Drops the open calls whose request had not ended, as partial.
    fn lose_unfinished_requests(&mut self) {
        let unfinished: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, c)| !c.request_ended())
            .map(|(s, _)| *s)
            .collect();
        for s in unfinished {
            if let Some(c) = self.open.remove(&s) {
                c.lost();
            }
        }
    }

    /// Applies one event, seen at `at`, to the open calls.
    fn on_event(&mut self, side: Side, ev: Event<'_>, at: Instant) -> Result<(), Unobservable> {
        let calls = &mut self.open;
        match (side, ev) {
            (
                Side::Caller,
                Event::Headers {
                    stream,
                    head,
                    end_stream,
                },
            ) => {
                if stream > self.last_stream {
                    if calls.len() >= MAX_STREAMS {
                        return Err(Unobservable::Limit("open calls"));
                    }
                    self.last_stream = stream;
                    let share = &self.share;
                    let lease = || Lease::new(share);
                    calls.insert(stream, Call::new(self.recording.clone(), &head, lease, at));
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
                    c.finish(End::CallerGone, at);
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
                    c.on_response_headers(&head, end_stream);
                }
                if end_stream && let Some(c) = calls.remove(&stream) {
                    c.finish(End::Completed, at);
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
                    c.finish(End::Completed, at);
                }
            }
            (Side::Runtime, Event::Reset { stream, code }) => {
                if let Some(c) = calls.remove(&stream) {
                    if code == REFUSED_STREAM {
                        tracing::debug!(
                            stream,
                            "runtime refused a stream; the caller may retry it"
                        );
                        c.discard();
                    } else {
                        c.finish(End::RuntimeReset(code), at);
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
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
