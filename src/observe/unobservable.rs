//! Why a connection, or a stretch of it, cannot be observed (it is still relayed, unchanged),
//! and the bounded `cause` label each reason counts under.

/// Why a connection cannot be observed (it is still relayed, unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unobservable {
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
    pub(crate) fn cause(&self) -> UnobservedCause {
        match self {
            Unobservable::NotHttp2 => UnobservedCause::NotHttp2,
            Unobservable::Protocol(_) => UnobservedCause::Protocol,
            Unobservable::Hpack(_) => UnobservedCause::Hpack,
            Unobservable::Limit(_) => UnobservedCause::Limit,
            Unobservable::Cost(_) => UnobservedCause::Cost,
            Unobservable::Backlog => UnobservedCause::Backlog,
            Unobservable::Gap => UnobservedCause::Gap,
            Unobservable::Internal(_) => UnobservedCause::Internal,
        }
    }
}

crate::label_enum! {
    /// Why a connection (or a stretch of it) went unobserved: the `cause` label.
    pub(crate) enum UnobservedCause {
        /// Not HTTP/2.
        NotHttp2 => "not_http2",
        /// An HTTP/2 protocol error.
        Protocol => "protocol",
        /// An HPACK error.
        Hpack => "hpack",
        /// A limit (header block size, frame size).
        Limit => "limit",
        /// Decoding would have cost more than the bytes bought.
        Cost => "cost",
        /// The observer fell behind by more than its queue holds.
        Backlog => "backlog",
        /// Bytes lost (the tap).
        Gap => "gap",
        /// A bug.
        Internal => "internal",
    }
}
