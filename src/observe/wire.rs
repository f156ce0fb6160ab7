//! A passive HTTP/2 reader for one direction of one observed connection. It is fed copies of
//! the bytes that direction carried, in whatever pieces they arrived, and turns them into the
//! few [`Event`]s pullwatch observes: request and response header blocks (only the fields
//! pullwatch reads), DATA payloads, RST_STREAM and GOAWAY. It never buffers DATA, keeps its own
//! HPACK dynamic table (every header block is decoded, wanted or not, so the table never drifts),
//! and is lenient where a peer is the judge: it enforces nothing and answers nothing. Anything it
//! does not understand, or that would take more memory or work than its limits, ends observation
//! with an [`Unobservable`] cause; the bytes were forwarded before it looked at them.
//!
//! Its work per input byte is bounded: HPACK references are resolved without copying, only the
//! few headers pullwatch reads are materialized (the first of each, capped in length), and a
//! header block that decodes to far more than it weighs (HPACK amplification) ends observation
//! as `cost`. Its buffers (the frame being collected, the header block being assembled) are
//! held from the connection's memory [`Share`]. The fields it reads are a [`Head`]; why it
//! stops, an [`Unobservable`].

use crate::observe::budget::{Lease, Share};
pub(crate) use crate::observe::head::{Head, StatusByOrder};
use crate::observe::hpack::{Decoder, HpackError};
pub(crate) use crate::observe::unobservable::{Unobservable, UnobservedCause};
use std::sync::Arc;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER_LEN: usize = 9;
/// Largest header block (HEADERS/PUSH_PROMISE plus CONTINUATIONs) buffered for decoding. grpc-go
/// and containerd send a few hundred bytes; a larger block ends observation, never the call.
pub(crate) const MAX_HEADER_BLOCK: usize = 256 << 10;
/// The decoded size (RFC 9113 §6.5.2: name + value + 32 per field) a header block may reach:
/// [`LIST_PER_BYTE`] times its own size, at least [`LIST_FLOOR`], at most [`LIST_MAX`]. kubelet's
/// blocks decode to about 20 times their size; one-byte references to a long table entry, an
/// amplification attack, to thousands.
const LIST_PER_BYTE: usize = 128;
const LIST_FLOOR: usize = 16 << 10;
const LIST_MAX: usize = 1 << 20;
/// Largest HPACK dynamic table the observer keeps per direction (peers default to 4 KiB).
pub(crate) const MAX_HPACK_TABLE: usize = 64 << 10;
/// Frame types and flags (RFC 9113 §6).
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY: u8 = 0x20;

/// Who sent the bytes of a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The caller (kubelet, crictl, ...): the HTTP/2 client.
    Caller,
    /// The container runtime: the HTTP/2 server.
    Runtime,
}

/// What one direction says, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A complete header block (HEADERS plus CONTINUATIONs).
    Headers {
        /// Stream.
        stream: u32,
        /// The fields pullwatch reads.
        head: Head,
        /// The block ends the sender's side of the stream (trailers, or a trailers-only answer).
        end_stream: bool,
    },
    /// Payload bytes of a DATA frame (padding removed), as they arrive; a frame carrying
    /// END_STREAM ends with an event whose `end_stream` is set (its `data` may be empty).
    Data {
        /// Stream.
        stream: u32,
        /// Payload piece.
        data: &'a [u8],
        /// The sender's side of the stream ends here.
        end_stream: bool,
    },
    /// RST_STREAM.
    Reset {
        /// Stream.
        stream: u32,
        /// HTTP/2 error code.
        code: u32,
    },
    /// GOAWAY: streams above `last_stream` were not (and will not be) processed by the sender.
    GoAway {
        /// Highest stream the sender processed or may still process.
        last_stream: u32,
        /// HTTP/2 error code.
        code: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

enum State {
    /// Looking for a frame boundary: the reader joined a connection under way, or bytes were
    /// lost. Only [`Reader::feed_piece`] can prove one.
    Hunt,
    /// Matching the client preface; `usize` bytes matched so far.
    Preface(usize),
    /// Reading a frame header.
    FrameHeader {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Collecting a frame's payload (its first `keep` bytes; the rest is skipped).
    Collect {
        frame: FrameHead,
        left: usize,
        keep: usize,
    },
    /// Waiting for the pad length of a padded DATA frame.
    DataPadLength { frame: FrameHead, left: usize },
    /// Passing DATA payload through as events; `pad` bytes of padding follow it.
    Data {
        frame: FrameHead,
        left: usize,
        pad: usize,
    },
    /// Skipping the rest of a frame; `data_end` is a DATA frame whose END_STREAM is still due.
    Skip {
        left: usize,
        data_end: Option<FrameHead>,
    },
    /// Observation ended.
    Failed,
}

/// The open header block: HEADERS or PUSH_PROMISE awaiting CONTINUATIONs.
struct Block {
    stream: u32,
    end_stream: bool,
    push: bool,
    fragment: Vec<u8>,
}

/// One direction's reader.
pub(crate) struct Reader {
    state: State,
    seen_settings: bool,
    hpack: Decoder,
    payload: Vec<u8>,
    block: Option<Block>,
    /// What `payload` and the open block hold, from the connection's share.
    memory: Lease,
}

impl Reader {
    /// A reader for the bytes `side` sends, from the first byte of the connection; its buffers
    /// are held from `share`.
    pub(crate) fn new(side: Side, share: &Arc<Share>) -> Self {
        let hpack = Decoder::new(MAX_HPACK_TABLE);
        Self {
            state: match side {
                Side::Caller => State::Preface(0),
                Side::Runtime => State::FrameHeader {
                    buf: [0; FRAME_HEADER_LEN],
                    have: 0,
                },
            },
            seen_settings: false,
            hpack,
            payload: Vec::new(),
            block: None,
            memory: Lease::new(share),
        }
    }

    /// A reader for the bytes `side` sends on a connection already under way: it hunts for a
    /// frame boundary ([`Reader::feed_piece`]) and decodes header blocks with a late-joining
    /// HPACK decoder ([`Decoder::joining`]).
    pub(crate) fn joining(side: Side, share: &Arc<Share>) -> Self {
        Self {
            state: State::Hunt,
            seen_settings: true,
            hpack: Decoder::joining(MAX_HPACK_TABLE),
            ..Self::new(side, share)
        }
    }

    /// Whether the reader is looking for a frame boundary.
    pub(crate) fn is_hunting(&self) -> bool {
        matches!(self.state, State::Hunt)
    }

    /// Bytes of this direction were lost: what was being read is dropped, the HPACK table is
    /// unknown again (the lost bytes may have changed it), and the reader hunts for a frame
    /// boundary.
    pub(crate) fn lost(&mut self) {
        self.state = State::Hunt;
        self.seen_settings = true;
        self.hpack = Decoder::joining(MAX_HPACK_TABLE);
        self.payload = Vec::new();
        self.block = None;
        self.memory.release();
    }

    /// A piece that starts where one of the sender's writes (or the runtime's reads) started:
    /// while hunting, a piece made of whole, plausible frames ([`starts_at_frame`]) proves a
    /// frame boundary, and reading resumes with it; any other piece is skipped. Otherwise the
    /// same as [`Reader::feed`].
    pub(crate) fn feed_piece(
        &mut self,
        piece: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Unobservable> {
        if self.is_hunting() {
            if !starts_at_frame(piece) {
                return Ok(());
            }
            self.next_frame();
        }
        self.feed(piece, on)
    }

    /// Holds from the share what the buffers hold plus `more` bytes about to be added.
    fn hold(&mut self, more: usize) -> Result<(), Unobservable> {
        let held = self.payload.len() + self.block.as_ref().map_or(0, |b| b.fragment.len());
        if self.memory.hold(held + more) {
            Ok(())
        } else {
            Err(Unobservable::Limit("observer memory"))
        }
    }

    /// Bytes the reader holds for an unfinished frame or header block.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.payload.capacity() + self.block.as_ref().map_or(0, |b| b.fragment.capacity())
    }

    /// Reads `bytes`, calling `on` for each event. After an error the reader ignores all input.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Unobservable> {
        while !bytes.is_empty() {
            match self.step(&mut bytes, on) {
                Ok(()) => {}
                Err(e) => {
                    self.state = State::Failed;
                    self.payload = Vec::new();
                    self.block = None;
                    self.memory.release();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn step(
        &mut self,
        bytes: &mut &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Unobservable> {
        match &mut self.state {
            State::Failed | State::Hunt => *bytes = &[],
            State::Preface(matched) => {
                let n = (PREFACE.len() - *matched).min(bytes.len());
                if bytes[..n] != PREFACE[*matched..*matched + n] {
                    return Err(Unobservable::NotHttp2);
                }
                *matched += n;
                *bytes = &bytes[n..];
                if *matched == PREFACE.len() {
                    self.state = State::FrameHeader {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                    };
                }
            }
            State::FrameHeader { buf, have } => {
                let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                buf[*have..*have + n].copy_from_slice(&bytes[..n]);
                *have += n;
                *bytes = &bytes[n..];
                if *have == FRAME_HEADER_LEN {
                    let frame = FrameHead::parse(buf);
                    self.begin(frame, on)?;
                }
            }
            State::Collect { frame, left, keep } => {
                let n = (*left).min(bytes.len());
                let wanted = (*keep).saturating_sub(self.payload.len()).min(n);
                let (frame, left_after) = (*frame, *left - n);
                *left = left_after;
                if wanted > 0 {
                    self.hold(wanted)?;
                    self.payload.extend_from_slice(&bytes[..wanted]);
                }
                *bytes = &bytes[n..];
                if left_after == 0 {
                    self.next_frame();
                    self.collected(frame, on)?;
                }
            }
            State::DataPadLength { frame, left } => {
                let pad = usize::from(bytes[0]);
                *bytes = &bytes[1..];
                let left = *left - 1;
                if pad > left {
                    return Err(Unobservable::Protocol("DATA padding longer than the frame"));
                }
                let frame = *frame;
                self.state = State::Data {
                    frame,
                    left: left - pad,
                    pad,
                };
                self.data_done_if_empty(on);
            }
            State::Data { frame, left, .. } => {
                let n = (*left).min(bytes.len());
                *left -= n;
                let frame = *frame;
                on(Event::Data {
                    stream: frame.stream,
                    data: &bytes[..n],
                    end_stream: false,
                });
                *bytes = &bytes[n..];
                self.data_done_if_empty(on);
            }
            State::Skip { left, data_end } => {
                let n = (*left).min(bytes.len());
                *left -= n;
                *bytes = &bytes[n..];
                if *left == 0 {
                    let data_end = data_end.take();
                    self.next_frame();
                    if let Some(frame) = data_end {
                        end_data(frame, on);
                    }
                }
            }
        }
        Ok(())
    }

    fn next_frame(&mut self) {
        self.state = State::FrameHeader {
            buf: [0; FRAME_HEADER_LEN],
            have: 0,
        };
    }

    /// Moves past a DATA frame's payload once it is all passed on.
    fn data_done_if_empty(&mut self, on: &mut impl FnMut(Event<'_>)) {
        if let State::Data {
            frame,
            left: 0,
            pad,
        } = self.state
        {
            if pad > 0 {
                self.state = State::Skip {
                    left: pad,
                    data_end: Some(frame),
                };
            } else {
                self.next_frame();
                end_data(frame, on);
            }
        }
    }

    /// A frame header was read: decide what to do with its payload.
    fn begin(
        &mut self,
        frame: FrameHead,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Unobservable> {
        if !self.seen_settings {
            if frame.kind != SETTINGS {
                return Err(Unobservable::Protocol("the first frame is not SETTINGS"));
            }
            self.seen_settings = true;
        }
        if let Some(block) = &self.block
            && (frame.kind != CONTINUATION || frame.stream != block.stream)
        {
            return Err(Unobservable::Protocol(
                "a header block interrupted by another frame",
            ));
        }
        let needs_stream = matches!(
            frame.kind,
            DATA | HEADERS | RST_STREAM | PUSH_PROMISE | CONTINUATION
        );
        if needs_stream && frame.stream == 0 {
            return Err(Unobservable::Protocol("a stream frame on stream 0"));
        }
        let collect = |keep: usize| State::Collect {
            frame,
            left: frame.len,
            keep,
        };
        self.state = match frame.kind {
            DATA if frame.has(PADDED) => {
                if frame.len == 0 {
                    return Err(Unobservable::Protocol("padded DATA without a pad length"));
                }
                State::DataPadLength {
                    frame,
                    left: frame.len,
                }
            }
            DATA => State::Data {
                frame,
                left: frame.len,
                pad: 0,
            },
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                let held = self.block.as_ref().map_or(0, |b| b.fragment.len());
                if held + frame.len > MAX_HEADER_BLOCK {
                    return Err(Unobservable::Limit("header block"));
                }
                collect(frame.len)
            }
            RST_STREAM => collect(4),
            GOAWAY => collect(8),
            _ => State::Skip {
                left: frame.len,
                data_end: None,
            },
        };
        // Zero-length payloads complete at once.
        match self.state {
            State::Collect { left: 0, .. } => {
                self.next_frame();
                self.collected(frame, on)?;
            }
            State::Data { left: 0, .. } => self.data_done_if_empty(on),
            State::Skip { left: 0, .. } => self.next_frame(),
            _ => {}
        }
        Ok(())
    }

    /// A collected frame is complete in `self.payload`.
    fn collected(
        &mut self,
        frame: FrameHead,
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Unobservable> {
        let payload = std::mem::take(&mut self.payload);
        let result = self.handle(frame, &payload, on);
        // Keep a small buffer for the next frame; give large ones back.
        if payload.capacity() <= 16 << 10 {
            self.payload = payload;
            self.payload.clear();
        }
        result?;
        self.hold(0)
    }

    fn handle(
        &mut self,
        frame: FrameHead,
        p: &[u8],
        on: &mut impl FnMut(Event<'_>),
    ) -> Result<(), Unobservable> {
        match frame.kind {
            RST_STREAM => {
                let code = be32(p).ok_or(Unobservable::Protocol("short RST_STREAM"))?;
                on(Event::Reset {
                    stream: frame.stream,
                    code,
                });
            }
            GOAWAY => {
                let (Some(last), Some(code)) = (be32(p), p.get(4..).and_then(be32)) else {
                    return Err(Unobservable::Protocol("short GOAWAY"));
                };
                on(Event::GoAway {
                    last_stream: last & 0x7fff_ffff,
                    code,
                });
            }
            HEADERS | PUSH_PROMISE => {
                let fragment = header_fragment(frame, p)?;
                self.block = Some(Block {
                    stream: frame.stream,
                    end_stream: frame.kind == HEADERS && frame.has(END_STREAM),
                    push: frame.kind == PUSH_PROMISE,
                    fragment: fragment.to_vec(),
                });
                if frame.has(END_HEADERS) {
                    self.decode_block(on)?;
                }
            }
            CONTINUATION => {
                let Some(block) = self.block.as_mut() else {
                    return Err(Unobservable::Protocol("CONTINUATION without HEADERS"));
                };
                block.fragment.extend_from_slice(p);
                if frame.has(END_HEADERS) {
                    self.decode_block(on)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_block(&mut self, on: &mut impl FnMut(Event<'_>)) -> Result<(), Unobservable> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut head = Head::default();
        let limit = list_limit(block.fragment.len());
        self.hpack
            .decode(&block.fragment, limit, |n, v| head.field(n, v))
            .map_err(|e| match e {
                HpackError::ListTooLarge(_) => Unobservable::Cost(e.to_string()),
                _ => Unobservable::Hpack(e.to_string()),
            })?;
        // A pushed request (never used by gRPC) is decoded for the table's sake only.
        if !block.push {
            on(Event::Headers {
                stream: block.stream,
                head,
                end_stream: block.end_stream,
            });
        }
        Ok(())
    }
}

/// Whether `piece` is a whole sequence of plausible HTTP/2 frames a gRPC peer may send, ending
/// exactly at its end: the proof of a frame boundary at its start. Every frame must be of a
/// known type, within the default maximum frame size, with only that type's flags, on a stream
/// its type allows (client-initiated, odd, for requests and their answers), with the length
/// its type has; a header block must end before another frame starts. A piece in the middle of
/// a frame passes all that by chance about once in millions; if it does, what follows fails
/// to parse and the reader hunts again.
pub(crate) fn starts_at_frame(piece: &[u8]) -> bool {
    /// Largest frame without a SETTINGS that raised it (grpc-go and containerd keep it).
    const MAX_FRAME: usize = 16_384;
    let mut rest = piece;
    let mut open_block: Option<u32> = None;
    let mut frames = 0;
    while !rest.is_empty() {
        let Some(h) = rest.get(..FRAME_HEADER_LEN) else {
            return false;
        };
        let mut head = [0u8; FRAME_HEADER_LEN];
        head.copy_from_slice(h);
        if head[5] & 0x80 != 0 {
            return false; // the reserved bit
        }
        let f = FrameHead::parse(&head);
        let s = f.stream;
        let client_stream = s != 0 && s % 2 == 1;
        let ok = f.len <= MAX_FRAME
            && match f.kind {
                DATA => f.flags & !(END_STREAM | PADDED) == 0 && client_stream,
                HEADERS => {
                    f.flags & !(END_STREAM | END_HEADERS | PADDED | PRIORITY) == 0 && client_stream
                }
                0x2 => f.flags == 0 && s != 0 && f.len == 5, // PRIORITY
                RST_STREAM => f.flags == 0 && s != 0 && f.len == 4,
                SETTINGS => {
                    f.flags & !1 == 0
                        && s == 0
                        && f.len.is_multiple_of(6)
                        && (f.flags == 0 || f.len == 0)
                }
                PUSH_PROMISE => false, // never from a gRPC peer
                0x6 => f.flags & !1 == 0 && s == 0 && f.len == 8, // PING
                GOAWAY => f.flags == 0 && s == 0 && f.len >= 8,
                0x8 => f.flags == 0 && f.len == 4, // WINDOW_UPDATE
                CONTINUATION => f.flags & !END_HEADERS == 0 && open_block == Some(s),
                _ => false,
            };
        let ok = ok && (open_block.is_none() || f.kind == CONTINUATION);
        if !ok {
            return false;
        }
        if f.kind == HEADERS || f.kind == CONTINUATION {
            open_block = (f.flags & END_HEADERS == 0).then_some(s);
        }
        let Some(next) = rest.get(FRAME_HEADER_LEN + f.len..) else {
            return false;
        };
        rest = next;
        frames += 1;
    }
    frames > 0
}

/// The decoded size a header block of `len` bytes may reach before it is given up as `cost`.
pub(crate) fn list_limit(len: usize) -> usize {
    len.saturating_mul(LIST_PER_BYTE)
        .clamp(LIST_FLOOR, LIST_MAX)
}

fn end_data(frame: FrameHead, on: &mut impl FnMut(Event<'_>)) {
    if frame.has(END_STREAM) {
        on(Event::Data {
            stream: frame.stream,
            data: &[],
            end_stream: true,
        });
    }
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: padding, priority and the
/// promised stream id removed.
fn header_fragment(frame: FrameHead, p: &[u8]) -> Result<&[u8], Unobservable> {
    let mut start = 0;
    let mut end = p.len();
    if frame.has(PADDED) {
        let pad = usize::from(*p.first().ok_or(Unobservable::Protocol("no pad length"))?);
        start = 1;
        end = end
            .checked_sub(pad)
            .ok_or(Unobservable::Protocol("padding longer than the frame"))?;
    }
    if frame.kind == HEADERS && frame.has(PRIORITY) {
        start += 5;
    }
    if frame.kind == PUSH_PROMISE {
        start += 4;
    }
    p.get(start..end).ok_or(Unobservable::Protocol(
        "header frame shorter than its fields",
    ))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
pub(crate) mod tests;
