//! Reading and writing gRPC status (`grpc-status`, `grpc-message`) in HTTP/2 headers and
//! trailers, per the gRPC over HTTP/2 protocol.

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use tonic::Code;

/// Characters percent-encoded in `grpc-message`: everything outside printable ASCII, and `%`.
const GRPC_MESSAGE_ENCODE: &AsciiSet = &CONTROLS.add(b'%');

/// A gRPC status as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// Status code.
    pub code: Code,
    /// Percent-decoded message (lossy UTF-8).
    pub message: String,
}

/// Reads `grpc-status`/`grpc-message` from a header or trailer map, if present.
pub fn from_headers(map: &HeaderMap) -> Option<GrpcStatus> {
    let raw = map.get("grpc-status")?;
    let code = raw
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    let message = map
        .get("grpc-message")
        .map(|v| decode_message(v.as_bytes()))
        .unwrap_or_default();
    Some(GrpcStatus { code, message })
}

/// Percent-decodes a `grpc-message` value; invalid UTF-8 becomes U+FFFD.
pub fn decode_message(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// The gRPC code an HTTP status maps to when a response carries no `grpc-status`
/// (gRPC's "HTTP to gRPC status code mapping").
pub fn code_from_http(status: StatusCode) -> Code {
    match status.as_u16() {
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
pub fn code_name(code: Code) -> &'static str {
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

/// Percent-encodes `message` for `grpc-message` (always a valid header value).
pub fn encode_message(message: &str) -> String {
    utf8_percent_encode(message, GRPC_MESSAGE_ENCODE).to_string()
}

/// A "trailers-only" gRPC error response, as a server sends when it fails before any message.
pub fn trailers_only<B: Default>(code: Code, message: &str) -> Response<B> {
    let mut resp = Response::new(B::default());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(&encode_message(message)) {
        h.insert("grpc-message", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_percent_encoded_messages() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("2"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("failed to pull %22a:1%22: 429 Too Many Requests%0Aline2"),
        );
        let s = from_headers(&h).unwrap();
        assert_eq!(s.code, Code::Unknown);
        assert_eq!(
            s.message,
            "failed to pull \"a:1\": 429 Too Many Requests\nline2"
        );
    }

    #[test]
    fn missing_or_garbage_status() {
        assert_eq!(from_headers(&HeaderMap::new()), None);
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("banana"));
        assert_eq!(from_headers(&h).unwrap().code, Code::Unknown);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(from_headers(&h).unwrap().code, Code::Unavailable);
        assert_eq!(decode_message(b"bad %zz \xff"), "bad %zz \u{fffd}");
    }

    #[test]
    fn trailers_only_round_trips() {
        let r: Response<()> = trailers_only(Code::Unavailable, "runtime down: 100%\n");
        let s = from_headers(r.headers()).unwrap();
        assert_eq!(s.code, Code::Unavailable);
        assert_eq!(s.message, "runtime down: 100%\n");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn http_fallback_codes() {
        assert_eq!(
            code_from_http(StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(code_from_http(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }
}
