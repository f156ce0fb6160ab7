//! Maps a failed pull (gRPC status code + the runtime's error message) to one [`Reason`].
//!
//! Rules are ordered: when a message matches patterns of several rules, the earliest rule wins.
//! The order encodes how runtimes nest errors, e.g. `dial tcp: lookup host: i/o timeout` is DNS
//! (not timeout), and `no match for platform in manifest: not found` is platform (not not-found).
//! The table was built from containerd 1.6 messages collected by the end-to-end harness plus the
//! documented forms of containerd 1.7/2.x and CRI-O; `tests/fixtures/error_corpus.tsv` holds them
//! with the expected reason for each.

use crate::core::reason::Reason;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use std::sync::OnceLock;
use tonic::Code;

/// Ordered rules: `(reason, case-insensitive substrings)`.
const RULES: &[(Reason, &[&str])] = &[
    // pullwatch's own answer when the runtime socket is unreachable (see the interposer).
    (
        Reason::RuntimeUnavailable,
        &["container runtime unavailable"],
    ),
    (
        Reason::InvalidReference,
        &[
            "invalid reference format",
            "failed to parse image reference",
            "invalid image name",
            "invalid image reference",
            "parsing image name",
            "repository name must be lowercase",
            "repository name must be canonical",
        ],
    ),
    // kubelet's ErrImageNeverPull: no pull happened (before not-found: "is not present").
    (
        Reason::NeverPull,
        &[
            "errimageneverpull",
            "is not present with pull policy of never",
        ],
    ),
    // Before the network, TLS and not-found rules: verifier output quotes certificates and
    // "no signatures found".
    (
        Reason::Signature,
        &[
            "signaturevalidationfailed",
            "source image rejected",
            "a signature was required",
            "is rejected by policy",
            "image verifier",
            "failed signature verification",
            "signature verification failed",
            "no matching signatures",
            "failed to verify signature",
        ],
    ),
    (
        Reason::Disk,
        &[
            "no space left on device",
            "disk quota exceeded",
            "not enough space",
        ],
    ),
    (
        Reason::Platform,
        &[
            "no match for platform in manifest",
            "no matching manifest for",
            "no image found in manifest list for architecture",
            "no image found in image index for architecture",
            "cannot be used on this platform",
            "does not match the specified platform",
            "exec format error",
        ],
    ),
    (
        Reason::RateLimited,
        &[
            "429 too many requests",
            "toomanyrequests",
            "too many requests",
            "pull rate limit",
            "rate limit exceeded",
            "ratelimit exceeded",
            "rate exceeded",
            "quota exceeded",
        ],
    ),
    (
        Reason::Unauthorized,
        &[
            "pull access denied",
            "insufficient_scope",
            "authorization failed",
            "failed to authorize",
            "401 unauthorized",
            "403 forbidden",
            "unauthorized: ",
            "denied: ",
            "requested access to the resource is denied",
            "authentication required",
            "access denied",
            "invalid username/password",
            "unauthorized to access repository",
            "no basic auth credentials",
        ],
    ),
    (
        Reason::NotFound,
        &[
            ": not found",
            "manifest unknown",
            "name unknown",
            "blob unknown",
            "404 not found",
            "repository name not known to registry",
            "manifest for",
            "not found: manifest",
            "does not exist",
        ],
    ),
    (
        Reason::Dns,
        &[
            "no such host",
            "dial tcp: lookup ",
            "dial udp: lookup ",
            "temporary failure in name resolution",
            "name or service not known",
            "server misbehaving",
            "name does not resolve",
        ],
    ),
    (
        Reason::Timeout,
        &[
            "i/o timeout",
            "deadline exceeded",
            "handshake timeout",
            "client.timeout exceeded",
            "timeout awaiting response headers",
            "because of no progress",
            "timed out",
        ],
    ),
    (
        Reason::Tls,
        &[
            "x509: ",
            "tls: ",
            "certificate",
            "server gave http response to https client",
        ],
    ),
    (
        Reason::RegistryError,
        &[
            "500 internal server error",
            "502 bad gateway",
            "503 service unavailable",
            "504 gateway timeout",
            "505 http version not supported",
            "507 insufficient storage",
            "508 loop detected",
            "internal server error",
            "service unavailable",
            "bad gateway",
            "gateway timeout",
        ],
    ),
    (
        Reason::Network,
        &[
            "connection refused",
            "connection reset",
            "no route to host",
            "network is unreachable",
            "host is unreachable",
            "broken pipe",
            "unexpected eof",
            ": eof",
            "server sent goaway",
            "use of closed network connection",
            "connection closed",
            "http2: client connection lost",
            "stream error",
        ],
    ),
    (
        Reason::Canceled,
        &["context canceled", "operation was canceled"],
    ),
];

struct Matcher {
    automaton: AhoCorasick,
    /// For each pattern id, the index of its rule in `RULES`.
    rule_of_pattern: Vec<usize>,
}

fn matcher() -> &'static Matcher {
    static MATCHER: OnceLock<Matcher> = OnceLock::new();
    MATCHER.get_or_init(|| {
        let mut patterns = Vec::new();
        let mut rule_of_pattern = Vec::new();
        for (i, (_, pats)) in RULES.iter().enumerate() {
            for p in *pats {
                patterns.push(*p);
                rule_of_pattern.push(i);
            }
        }
        let automaton = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)
            // The patterns are a fixed, small table: building cannot fail.
            .expect("classifier patterns build");
        Matcher {
            automaton,
            rule_of_pattern,
        }
    })
}

/// The match that decides `message`'s reason: the earliest rule that matches anywhere (see the
/// module docs), at its first position; `(rule index, start, end)`.
fn decisive_match(message: &str) -> Option<(usize, usize, usize)> {
    let m = matcher();
    m.automaton
        .find_overlapping_iter(message)
        .map(|mat| {
            (
                m.rule_of_pattern[mat.pattern().as_usize()],
                mat.start(),
                mat.end(),
            )
        })
        .min()
}

/// Classifies a runtime's error message alone (as copied from `kubectl describe pod`).
pub fn classify_message(message: &str) -> Reason {
    decisive_match(message).map_or(Reason::Unknown, |(rule, _, _)| RULES[rule].0)
}

/// Where in `message` the words that decided its reason are (the earliest match of the winning
/// rule), so a long nested runtime error can be shown around its cause; `None` if no rule
/// matched.
pub fn cause_span(message: &str) -> Option<std::ops::Range<usize>> {
    decisive_match(message).map(|(_, start, end)| start..end)
}

/// `message` cut to about `width` characters around its cause (see [`cause_span`]), with `…`
/// where text was left out; the end of the message when no rule matched.
pub fn around_cause(message: &str, width: usize) -> String {
    let chars: Vec<(usize, char)> = message.char_indices().collect();
    if chars.len() <= width {
        return message.to_string();
    }
    let at = |byte: usize| chars.partition_point(|(i, _)| *i < byte);
    let (first, last) = match cause_span(message) {
        Some(span) => {
            // Some context before the cause, the rest after it (the detail usually follows).
            let start = at(span.start)
                .saturating_sub(width / 3)
                .min(chars.len() - width);
            (start, start + width)
        }
        None => (chars.len() - width, chars.len()),
    };
    let mut out = String::new();
    if first > 0 {
        out.push('…');
    }
    out.extend(chars[first..last].iter().map(|(_, c)| c));
    if last < chars.len() {
        out.push('…');
    }
    out
}

/// Whether `message` is kubelet's back-off wrapper (`Back-off pulling image "x"`) without the
/// cause of the attempt before it: the back-off is no cause, the attempt before it has one.
pub fn is_bare_backoff(message: &str) -> bool {
    let m = message.trim_start().to_ascii_lowercase();
    m.starts_with("back-off pulling image") && classify_message(message) == Reason::Unknown
}

/// What to say about kubelet's back-off wrapper without its cause.
pub const BARE_BACKOFF_HINT: &str = "This is kubelet's back-off between attempts \
    (ImagePullBackOff), not a cause: kubelet waits before it retries a pull that failed. The \
    cause is in the attempt before it: the pod's earlier `Failed` event or `ErrImagePull` \
    message (`kubectl describe pod`, Events), or pullwatch's event-log line for that pod; explain \
    that message. (Newer kubelets append it: `Back-off pulling image \"x\": ErrImagePull: ...`.)";

/// Classifies a failed CRI call from its gRPC status code and message. The message decides when
/// it names a cause; the code decides only for what a message cannot say (a deadline or a cancel
/// that happened before the runtime said anything more specific).
pub fn classify(code: Code, message: &str) -> Reason {
    match classify_message(message) {
        Reason::Unknown => match code {
            Code::DeadlineExceeded => Reason::Timeout,
            Code::Cancelled => Reason::Canceled,
            // Not a quota: gRPC's own limits (message size, stream count) say RESOURCE_EXHAUSTED
            // too; only a registry's words (429, toomanyrequests, quota) make it rate_limited.
            Code::NotFound => Reason::NotFound,
            Code::PermissionDenied | Code::Unauthenticated => Reason::Unauthorized,
            _ => Reason::Unknown,
        },
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_errors_resolve_by_rule_order() {
        // DNS wrapped in a timeout is DNS.
        assert_eq!(
            classify_message("dial tcp: lookup reg.example on 10.0.0.10:53: read udp: i/o timeout"),
            Reason::Dns
        );
        // Platform's "not found" suffix is platform.
        assert_eq!(
            classify_message("failed to pull: no match for platform in manifest: not found"),
            Reason::Platform
        );
        // Docker Hub's ambiguous deny is unauthorized, even though it says "does not exist".
        assert_eq!(
            classify_message(
                "pull access denied, repository does not exist or may require authorization"
            ),
            Reason::Unauthorized
        );
        // A 504 is a registry error, not a timeout.
        assert_eq!(
            classify_message("unexpected status: 504 Gateway Timeout"),
            Reason::RegistryError
        );
    }

    #[test]
    fn matching_is_case_insensitive() {
        assert_eq!(
            classify_message("TOOMANYREQUESTS: slow down"),
            Reason::RateLimited
        );
        assert_eq!(classify_message("No Space Left On Device"), Reason::Disk);
    }

    #[test]
    fn code_decides_only_when_the_message_is_silent() {
        assert_eq!(classify(Code::DeadlineExceeded, "boom"), Reason::Timeout);
        assert_eq!(classify(Code::Cancelled, ""), Reason::Canceled);
        assert_eq!(classify(Code::Unknown, "boom"), Reason::Unknown);
        // gRPC's message-size limit is not a registry quota (it fired RegistryRateLimited).
        assert_eq!(
            classify(
                Code::ResourceExhausted,
                "grpc: received message larger than max (16777300 vs. 16777216)"
            ),
            Reason::Unknown
        );
        assert_eq!(
            classify(Code::ResourceExhausted, "toomanyrequests: Rate exceeded"),
            Reason::RateLimited
        );
        assert_eq!(
            classify(Code::Cancelled, "x509: certificate has expired"),
            Reason::Tls
        );
    }

    #[test]
    fn the_cause_is_shown_not_cut_off() {
        let long = "failed to pull and unpack image \"127.0.0.1:40463/ratelimited/shop/cart:2.0\": \
                    failed to resolve reference \"127.0.0.1:40463/ratelimited/shop/cart:2.0\": \
                    unexpected status from GET request to http://127.0.0.1:40463/v2/ratelimited/shop/\
                    cart/manifests/2.0: 429 Too Many Requests";
        let span = cause_span(long).unwrap();
        assert_eq!(&long[span], "429 Too Many Requests");
        let shown = around_cause(long, 70);
        assert!(shown.contains("429 Too Many Requests"), "{shown}");
        assert!(shown.chars().count() <= 72, "{shown}");
        let early = format!(
            "x509: certificate signed by unknown authority{}",
            " padding".repeat(20)
        );
        assert!(
            around_cause(&early, 50).starts_with("x509: certificate"),
            "{}",
            around_cause(&early, 50)
        );
        assert_eq!(
            around_cause("short: no such host", 70),
            "short: no such host"
        );
        assert_eq!(cause_span("nothing known here"), None);
    }

    #[test]
    fn every_rule_is_reachable() {
        for (reason, pats) in RULES {
            for p in *pats {
                assert_eq!(classify_message(p), *reason, "pattern {p:?} is shadowed");
            }
        }
    }
}
