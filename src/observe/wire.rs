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
//! held from the connection's memory [`Share`].

use crate::observe::budget::{Lease, Share};
use crate::observe::hpack::{Decoder, HpackError};
use std::sync::Arc;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const FRAME_HEADER_LEN: usize = 9;
/// Largest header block (HEADERS/PUSH_PROMISE plus CONTINUATIONs) buffered for decoding. grpc-go
/// and containerd send a few hundred bytes; a larger block ends observation, never the call.
pub const MAX_HEADER_BLOCK: usize = 256 << 10;
/// The decoded size (RFC 9113 §6.5.2: name + value + 32 per field) a header block may reach:
/// [`LIST_PER_BYTE`] times its own size, at least [`LIST_FLOOR`], at most [`LIST_MAX`]. kubelet's
/// blocks decode to about 20 times their size; one-byte references to a long table entry, an
/// amplification attack, to thousands.
const LIST_PER_BYTE: usize = 128;
const LIST_FLOOR: usize = 16 << 10;
const LIST_MAX: usize = 1 << 20;
/// Largest HPACK dynamic table the observer keeps per direction (peers default to 4 KiB).
pub const MAX_HPACK_TABLE: usize = 64 << 10;
/// Longest value kept of `grpc-message` (a runtime's error can be long; it is cut, not refused).
const MAX_MESSAGE: usize = 16 << 10;
/// Longest `:path` that can be a CRI method (the longest is under 60 bytes); a longer one is no
/// CRI call and is not materialized.
const MAX_PATH: usize = 128;
/// Longest `grpc-timeout` (at most 8 digits and a unit), `grpc-status` and W3C `traceparent`
/// (55 characters) worth reading; longer values are malformed and dropped.
const MAX_TIMEOUT: usize = 16;
const MAX_STATUS: usize = 8;
const MAX_TRACEPARENT: usize = 64;

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
pub enum Side {
    /// The caller (kubelet, crictl, ...): the HTTP/2 client.
    Caller,
    /// The container runtime: the HTTP/2 server.
    Runtime,
}

/// The header fields of one block that pullwatch reads; all others are decoded (for the HPACK
/// table) and dropped. Only the first occurrence of each is kept, each bounded in length.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    /// `:path` (requests); `None` if absent or longer than any CRI method.
    pub path: Option<String>,
    /// `:status` (responses).
    pub status: Option<u16>,
    /// `grpc-timeout` (requests).
    pub grpc_timeout: Option<String>,
    /// `traceparent` (requests; W3C trace context, sent by kubelet when its tracing is on).
    pub traceparent: Option<String>,
    /// `grpc-status` (responses and trailers).
    pub grpc_status: Option<String>,
    /// `grpc-message`, still percent-encoded, cut at 16 KiB.
    pub grpc_message: Option<Vec<u8>>,
    /// The block's first fields in order ([`MAX_ORDER`]), each by the name pullwatch knows it
    /// by, or unnamed (with its value, cut at 16 KiB, when known) where the decoder joined the
    /// connection too late to know the name: what is left to read a gRPC status by its place
    /// ([`Head::status_by_order`]).
    pub order: Vec<Slot>,
    /// Which of the fields above were seen (a repeat is ignored, never copied again).
    seen: u8,
}

/// Fields kept in [`Head::order`].
pub const MAX_ORDER: usize = 8;

/// One field of a header block, as far as its name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// A field pullwatch knows by this name.
    Named(Field),
    /// A field whose name the decoder could not know; its value when it could.
    Unnamed(Option<Vec<u8>>),
}

/// The names [`Head::order`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `:path`.
    Path,
    /// `:status`.
    Status,
    /// `content-type`.
    ContentType,
    /// `grpc-status`.
    GrpcStatus,
    /// `grpc-message`.
    GrpcMessage,
    /// Any other.
    Other,
}

/// The gRPC status of a stream-ending block whose names were partly unknown, read by the
/// place gRPC's HTTP/2 protocol gives each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusByOrder {
    /// `grpc-status`, if its value was known.
    pub code: Option<String>,
    /// `grpc-message` (percent-encoded), if its value was known.
    pub message: Option<Vec<u8>>,
}

impl Head {
    fn field(&mut self, name: Option<&[u8]>, value: Option<&[u8]>) {
        let Some(name) = name else {
            if self.order.len() < MAX_ORDER {
                let v = value.map(|v| v[..v.len().min(MAX_MESSAGE)].to_vec());
                self.order.push(Slot::Unnamed(v));
            }
            return;
        };
        let (bit, which) = match name {
            b":path" => (1, Field::Path),
            b":status" => (2, Field::Status),
            b"grpc-timeout" => (4, Field::Other),
            b"traceparent" => (8, Field::Other),
            b"grpc-status" => (16, Field::GrpcStatus),
            b"grpc-message" => (32, Field::GrpcMessage),
            b"content-type" => (0, Field::ContentType),
            _ => (0, Field::Other),
        };
        if self.order.len() < MAX_ORDER {
            self.order.push(Slot::Named(which));
        }
        let Some(value) = value else { return };
        if bit == 0 || self.seen & bit != 0 {
            return;
        }
        self.seen |= bit;
        let text =
            |max: usize| (value.len() <= max).then(|| String::from_utf8_lossy(value).into_owned());
        match bit {
            1 => self.path = text(MAX_PATH),
            2 => {
                self.status = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            4 => self.grpc_timeout = text(MAX_TIMEOUT),
            8 => self.traceparent = text(MAX_TRACEPARENT),
            16 => self.grpc_status = text(MAX_STATUS),
            _ => self.grpc_message = Some(value[..value.len().min(MAX_MESSAGE)].to_vec()),
        }
    }

    /// Whether some field's name could not be known (the decoder joined late).
    pub fn has_unnamed(&self) -> bool {
        self.order.iter().any(|s| matches!(s, Slot::Unnamed(_)))
    }

    /// Whether a request's `:path` may be among the fields whose name could not be known.
    pub fn path_unreadable(&self) -> bool {
        self.path.is_none() && self.has_unnamed() && !self.order.contains(&Slot::Named(Field::Path))
    }

    /// The gRPC status and message of a stream-ending block from a grpc server whose names
    /// were partly unknown, by place: gRPC over HTTP/2 sends `grpc-status`, then
    /// `grpc-message`, first in trailers, after `:status` and `content-type` in a
    /// Trailers-Only response (`trailers_only`). `None` when the block does not have that
    /// shape (a known name out of place, a status value that is not a gRPC code, a message
    /// that is not percent-encoded text), or when nothing was unknown (read the fields).
    pub fn status_by_order(&self, trailers_only: bool) -> Option<StatusByOrder> {
        if !self.has_unnamed() {
            return None;
        }
        let mut slots = self.order.iter();
        if trailers_only {
            // `:status` is always the static table's; `content-type` may be an unknown entry.
            if slots.next() != Some(&Slot::Named(Field::Status)) {
                return None;
            }
            match slots.next()? {
                Slot::Named(Field::ContentType) | Slot::Unnamed(_) => {}
                Slot::Named(_) => return None,
            }
        }
        let code = match slots.next()? {
            Slot::Named(Field::GrpcStatus) => self.grpc_status.clone(),
            Slot::Unnamed(Some(v)) => {
                let code = std::str::from_utf8(v).ok()?;
                code.parse::<u8>().ok().filter(|c| *c <= 16)?;
                Some(code.to_string())
            }
            Slot::Unnamed(None) => None,
            Slot::Named(_) => return None,
        };
        let message = match slots.next() {
            None => None,
            Some(Slot::Named(Field::GrpcMessage)) => self.grpc_message.clone(),
            Some(Slot::Unnamed(Some(v))) => {
                let text = v.iter().all(|b| (0x20..0x7f).contains(b));
                if !text {
                    return None;
                }
                Some(v.clone())
            }
            Some(Slot::Unnamed(None)) => None,
            Some(Slot::Named(_)) => return None,
        };
        Some(StatusByOrder { code, message })
    }
}

/// What one direction says, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
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

/// Why a connection cannot be observed (it is still relayed, unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unobservable {
    /// The caller did not open with the HTTP/2 preface.
    #[error("the caller did not send the HTTP/2 connection preface")]
    NotHttp2,
    /// A frame or frame sequence the observer does not understand.
    #[error("HTTP/2 frames not understood: {0}")]
    Protocol(&'static str),
    /// A header block that does not decode against the observer's HPACK table.
    #[error("HPACK decoding failed: {0}")]
    Hpack(String),
    /// The observer's memory or stream limits.
    #[error("over the observer's limits: {0}")]
    Limit(&'static str),
    /// A header block that decodes to far more than it weighs (HPACK amplification).
    #[error("a header block too costly to decode: {0}")]
    Cost(String),
    /// The observer fell behind the connection by more than its queue holds.
    #[error("the observer fell behind the connection")]
    Backlog,
    /// Bytes of the connection were lost before the observer saw them (the tap's ring was full,
    /// a syscall too large to copy).
    #[error("bytes were lost before the observer saw them")]
    Gap,
    /// The observer itself failed (a bug: it panicked); the relay is not affected.
    #[error("the observer failed: {0}")]
    Internal(String),
}

impl Unobservable {
    /// The bounded `cause` label.
    pub fn cause(&self) -> &'static str {
        match self {
            Unobservable::NotHttp2 => "not_http2",
            Unobservable::Protocol(_) => "protocol",
            Unobservable::Hpack(_) => "hpack",
            Unobservable::Limit(_) => "limit",
            Unobservable::Cost(_) => "cost",
            Unobservable::Backlog => "backlog",
            Unobservable::Gap => "gap",
            Unobservable::Internal(_) => "internal",
        }
    }
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
pub struct Reader {
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
    pub fn new(side: Side, share: &Arc<Share>) -> Self {
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
    pub fn joining(side: Side, share: &Arc<Share>) -> Self {
        Self {
            state: State::Hunt,
            seen_settings: true,
            hpack: Decoder::joining(MAX_HPACK_TABLE),
            ..Self::new(side, share)
        }
    }

    /// Whether the reader is looking for a frame boundary.
    pub fn is_hunting(&self) -> bool {
        matches!(self.state, State::Hunt)
    }

    /// Whether its HPACK decoder knows every entry the sender may refer to.
    pub fn is_exact(&self) -> bool {
        self.hpack.is_exact()
    }

    /// Bytes of this direction were lost: what was being read is dropped, the HPACK table is
    /// unknown again (the lost bytes may have changed it), and the reader hunts for a frame
    /// boundary.
    pub fn lost(&mut self) {
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
    pub fn feed_piece(
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
    pub fn feed(
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
pub fn starts_at_frame(piece: &[u8]) -> bool {
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
pub fn list_limit(len: usize) -> usize {
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
