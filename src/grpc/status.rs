//! Reading gRPC status (`grpc-status`, `grpc-message`) as the interposer's observer finds it in
//! HTTP/2 headers and trailers, and the codes a client reports for HTTP statuses and stream
//! resets, per the gRPC over HTTP/2 protocol.

use percent_encoding::percent_decode_str;
#[cfg(any(test, feature = "fuzzing"))]
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tonic::Code;

#[cfg(any(test, feature = "fuzzing"))]
/// Characters percent-encoded in `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

/// A gRPC status as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcStatus {
    /// Status code.
    pub code: Code,
    /// Percent-decoded message (lossy UTF-8).
    pub message: String,
}

/// Percent-decodes a `grpc-message` value; invalid UTF-8 becomes U+FFFD.
pub(crate) fn decode_message(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// The gRPC code an HTTP status maps to when a response carries no `grpc-status`
/// (gRPC's "HTTP to gRPC status code mapping").
pub(crate) fn code_from_http(status: u16) -> Code {
    match status {
        200 => Code::Unknown,
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The canonical upper-case name of a code, e.g. `UNAVAILABLE` (the `code` metric label).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(any(test, feature = "fuzzing"))]
/// Percent-encodes `message` for `grpc-message` (always a valid header value).
pub(crate) fn encode_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE_ENCODE).to_string()
}

/// A status from raw `grpc-status` and `grpc-message` values (as read off the wire).
pub(crate) fn from_raw(grpc_status: &str, grpc_message: Option<&[u8]>) -> GrpcStatus {
    let code = grpc_status
        .trim()
        .parse::<i32>()
        .map_or(Code::Unknown, Code::from_i32);
    GrpcStatus {
        code,
        message: grpc_message.map(decode_message).unwrap_or_default(),
    }
}

/// The gRPC code a client reports for a stream reset with HTTP/2 error `code` (gRPC over
/// HTTP/2, "Errors").
pub(crate) fn code_from_reset(code: u32) -> Code {
    match code {
        0x7 => Code::Unavailable,       // REFUSED_STREAM
        0x8 => Code::Cancelled,         // CANCEL
        0xb => Code::ResourceExhausted, // ENHANCE_YOUR_CALM
        0xc => Code::PermissionDenied,  // INADEQUATE_SECURITY
        _ => Code::Internal,
    }
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
pub(crate) fn reset_name(code: u32) -> &'static str {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("unknown error code")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_percent_encoded_messages() {
        let s = from_raw(
            "2",
            Some(b"failed to pull %22a:1%22: 429 Too Many Requests%0Aline2"),
        );
        assert_eq!(s.code, Code::Unknown);
        assert_eq!(
            s.message,
            "failed to pull \"a:1\": 429 Too Many Requests\nline2"
        );
    }

    #[test]
    fn garbage_status() {
        assert_eq!(
            from_raw("banana", None),
            GrpcStatus {
                code: Code::Unknown,
                message: String::new()
            }
        );
        assert_eq!(from_raw("14", None).code, Code::Unavailable);
        assert_eq!(decode_message(b"bad %zz \xff"), "bad %zz \u{fffd}");
    }

    #[test]
    fn raw_values_and_resets() {
        let s = from_raw(" 5", Some(b"image %22x%22 not found"));
        assert_eq!(
            (s.code, s.message.as_str()),
            (Code::NotFound, "image \"x\" not found")
        );
        assert_eq!(from_raw("x", None).code, Code::Unknown);
        assert_eq!(code_from_reset(8), Code::Cancelled);
        assert_eq!(code_from_reset(7), Code::Unavailable);
        assert_eq!(code_from_reset(2), Code::Internal);
        assert_eq!(reset_name(2), "INTERNAL_ERROR");
        assert_eq!(reset_name(99), "unknown error code");
    }

    #[test]
    fn http_fallback_codes() {
        assert_eq!(code_from_http(503), Code::Unavailable);
        assert_eq!(code_from_http(404), Code::Unimplemented);
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }
}
