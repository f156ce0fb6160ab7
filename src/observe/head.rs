//! The header fields of one HTTP/2 header block that pullwatch reads (`:path`, `grpc-status`,
//! `grpc-message`, `grpc-timeout`, `traceparent`, ...), the first of each and capped in length,
//! and, for an observer that joined late and could not name every field, the order of the
//! fields it saw, from which a trailer's status can still be read.

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

/// The header fields of one block that pullwatch reads; all others are decoded (for the HPACK
/// table) and dropped. Only the first occurrence of each is kept, each bounded in length.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Head {
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
pub(crate) const MAX_ORDER: usize = 8;

/// One field of a header block, as far as its name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A field pullwatch knows by this name.
    Named(Field),
    /// A field whose name the decoder could not know; its value when it could.
    Unnamed(Option<Vec<u8>>),
}

/// The names [`Head::order`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
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
pub(crate) struct StatusByOrder {
    /// `grpc-status`, if its value was known.
    pub code: Option<String>,
    /// `grpc-message` (percent-encoded), if its value was known.
    pub message: Option<Vec<u8>>,
}

impl Head {
    pub(super) fn field(&mut self, name: Option<&[u8]>, value: Option<&[u8]>) {
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
    pub(crate) fn has_unnamed(&self) -> bool {
        self.order.iter().any(|s| matches!(s, Slot::Unnamed(_)))
    }

    /// Whether a request's `:path` may be among the fields whose name could not be known.
    pub(crate) fn path_unreadable(&self) -> bool {
        self.path.is_none() && self.has_unnamed() && !self.order.contains(&Slot::Named(Field::Path))
    }

    /// The gRPC status and message of a stream-ending block from a grpc server whose names
    /// were partly unknown, by place: gRPC over HTTP/2 sends `grpc-status`, then
    /// `grpc-message`, first in trailers, after `:status` and `content-type` in a
    /// Trailers-Only response (`trailers_only`). `None` when the block does not have that
    /// shape (a known name out of place, a status value that is not a gRPC code, a message
    /// that is not percent-encoded text), or when nothing was unknown (read the fields).
    pub(crate) fn status_by_order(&self, trailers_only: bool) -> Option<StatusByOrder> {
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
