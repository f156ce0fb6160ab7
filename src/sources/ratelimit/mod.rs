//! The rate-limit headroom probe: periodically asks registries how much pull quota this node
//! has left (the `ratelimit-limit` / `ratelimit-remaining` headers of a manifest HEAD, which
//! Docker Hub does not count as a pull), so an alert fires before pulls start failing with 429.
//!
//! Flow per probe: HEAD the manifest; on `401` with a Bearer challenge, fetch a token from the
//! challenge's realm (with the configured credentials, if any, as Basic auth; anonymous
//! otherwise) and HEAD again. `200` and `429` both carry the headers; a `429` without them means
//! nothing remains.

mod config;
pub(crate) mod credentials;
pub(crate) mod header;
pub(crate) mod target;

use crate::recorder::ByRegistry;
use crate::telemetry::{CounterFamily, GaugeFamily, MetricsError, MetricsRegistry};
use bytes::Bytes;
pub(crate) use config::{ProbeArgs, ProbeConfig};
use credentials::Credentials;
use http::{Method, Request, Response, StatusCode, header as h};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use target::ProbeTarget;
use tokio_util::sync::CancellationToken;

/// Label value of the probe in logs.
pub(crate) const SOURCE: &str = "ratelimit_probe";

/// One probe may take this long (token and HEAD together).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest token response read.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// Manifest media types a HEAD accepts (so registries answer as for a real pull).
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// What one probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Headroom {
    /// Pulls allowed per window.
    pub limit: u64,
    /// Pulls left in the current window.
    pub remaining: u64,
    /// The window, if the registry named one.
    pub window: Option<Duration>,
}

/// Why a probe failed. Never carries a credential or token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The request could not be made or the connection failed.
    #[error("request to {url} failed: {detail}")]
    Http {
        /// URL (no credentials in it).
        url: String,
        /// Transport error text.
        detail: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{url} answered {status}")]
    Status {
        /// URL.
        url: String,
        /// Status.
        status: StatusCode,
    },
    /// The token endpoint did not give a token.
    #[error("token from {realm}: {problem}")]
    Token {
        /// Token endpoint.
        realm: String,
        /// What went wrong.
        problem: String,
    },
    /// A header was present but unreadable.
    #[error(transparent)]
    Header(#[from] header::QuotaError),
    /// The probe took longer than [`PROBE_TIMEOUT`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Builds the HTTP(S) client: system trust roots, HTTP/1.1, ring crypto.
pub(crate) fn https_client() -> std::io::Result<HttpsClient> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Parses a `WWW-Authenticate` challenge: the scheme and its `key="value"` parameters.
pub(crate) fn parse_challenge(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.trim().is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (_, c) => {
                        val.push(c);
                        escaped = false;
                    }
                }
            }
        } else {
            val = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.push((key.trim().to_ascii_lowercase(), val.trim().to_string()));
    }
    Some((scheme.to_ascii_lowercase(), params))
}

/// Whether credentials may be sent to `url`: only over TLS, or to this machine.
fn may_send_credentials(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https")
        || matches!(
            uri.host(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        )
}

/// The probe's families: each registry's quota as its headers state it, and failed probes.
#[derive(Clone)]
pub(crate) struct RateLimitMetrics {
    limit: GaugeFamily<ByRegistry<'static>>,
    remaining: GaugeFamily<ByRegistry<'static>>,
    window: GaugeFamily<ByRegistry<'static>>,
    errors: CounterFamily<ByRegistry<'static>>,
}

impl RateLimitMetrics {
    /// Registers the probe's families in `reg`.
    pub(crate) fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            limit: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_registry_ratelimit_limit"),
            )?,
            remaining: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_registry_ratelimit_remaining"),
            )?,
            window: GaugeFamily::register(
                reg,
                crate::family_name!("pullwatch_registry_ratelimit_window_seconds"),
            )?,
            errors: CounterFamily::register(
                reg,
                crate::family_name!("pullwatch_registry_ratelimit_probe_errors_total"),
            )?,
        })
    }
}

/// The probe.
pub(crate) struct RateLimitProbe {
    config: ProbeConfig,
    client: HttpsClient,
    metrics: RateLimitMetrics,
}

impl RateLimitProbe {
    /// A probe for `config`, exporting into `metrics`.
    pub(crate) fn new(config: ProbeConfig, metrics: RateLimitMetrics) -> std::io::Result<Self> {
        Ok(Self {
            config,
            client: https_client()?,
            metrics,
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        auth: Option<&str>,
    ) -> Result<Response<hyper::body::Incoming>, ProbeError> {
        let http_err = |detail: String| ProbeError::Http {
            url: url.to_string(),
            detail,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(h::ACCEPT, ACCEPT)
            .header(
                h::USER_AGENT,
                concat!("pullwatch/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = auth {
            req = req.header(h::AUTHORIZATION, a);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| http_err(e.to_string()))?;
        self.client.request(req).await.map_err(|e| {
            // hyper's error chain holds no request data, only the transport cause.
            let mut detail = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                detail = format!("{detail}: {s}");
                src = s.source();
            }
            http_err(detail)
        })
    }

    /// Gets a Bearer token for `target` from the challenge's realm.
    async fn token(
        &self,
        target: &ProbeTarget,
        params: &[(String, String)],
        creds: Option<&Credentials>,
    ) -> Result<String, ProbeError> {
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let realm = get("realm").ok_or_else(|| ProbeError::Token {
            realm: String::new(),
            problem: "challenge without realm".into(),
        })?;
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let scope = get("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", target.repository));
        let mut url = format!("{realm}?scope={}", enc(&scope));
        if let Some(service) = get("service") {
            url.push_str(&format!("&service={}", enc(service)));
        }
        let basic = creds
            .filter(|_| may_send_credentials(realm))
            .map(Credentials::basic);
        let token_err = |problem: String| ProbeError::Token {
            realm: realm.to_string(),
            problem,
        };
        let resp = self.send(Method::GET, &url, basic.as_deref()).await?;
        if !resp.status().is_success() {
            return Err(token_err(format!("answered {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_TOKEN_BODY)
            .collect()
            .await
            .map_err(|e| token_err(format!("reading the answer: {e}")))?
            .to_bytes();
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("not JSON: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("no token in the answer".into()))
    }

    /// Probes `target` once.
    pub(crate) async fn probe(&self, target: &ProbeTarget) -> Result<Option<Headroom>, ProbeError> {
        let url = target.manifest_url();
        let creds = self.config.credentials.get(&target.registry);
        let mut resp = self.send(Method::HEAD, &url, None).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(h::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let auth = match challenge {
                Some((scheme, params)) if scheme == "bearer" => Some(format!(
                    "Bearer {}",
                    self.token(target, &params, creds).await?
                )),
                Some((scheme, _)) if scheme == "basic" => creds
                    .filter(|_| may_send_credentials(&url))
                    .map(Credentials::basic),
                _ => None,
            };
            if let Some(auth) = auth {
                resp = self.send(Method::HEAD, &url, Some(&auth)).await?;
            }
        }
        let status = resp.status();
        if status != StatusCode::OK && status != StatusCode::TOO_MANY_REQUESTS {
            return Err(ProbeError::Status { url, status });
        }
        let read = |name: &str| -> Result<Option<header::Quota>, ProbeError> {
            match resp.headers().get(name) {
                None => Ok(None),
                Some(v) => {
                    let text = v
                        .to_str()
                        .map_err(|_| header::QuotaError("<not text>".into()))?;
                    Ok(Some(header::parse(text)?))
                }
            }
        };
        let limit = read("ratelimit-limit")?;
        let remaining = read("ratelimit-remaining")?;
        Ok(match (limit, remaining) {
            (Some(l), r) => Some(Headroom {
                limit: l.value,
                // A 429 that does not say what remains: nothing does.
                remaining: r.map_or(0, |r| r.value),
                window: l.window.or(r.and_then(|r| r.window)),
            }),
            (None, _) if status == StatusCode::TOO_MANY_REQUESTS => {
                return Err(ProbeError::Status { url, status });
            }
            // No limit reported (e.g. a paid Docker Hub account, or a registry without quotas).
            (None, _) => None,
        })
    }

    fn export(&self, target: &ProbeTarget, result: &Result<Option<Headroom>, ProbeError>) {
        let m = &self.metrics;
        let labels = ByRegistry {
            registry: &target.registry,
        };
        match result {
            Ok(Some(hr)) => {
                m.limit.set(&labels, hr.limit);
                m.remaining.set(&labels, hr.remaining);
                match hr.window {
                    Some(w) => m.window.set(&labels, w.as_secs()),
                    None => m.window.remove(&labels),
                }
                tracing::debug!(source = SOURCE, registry = %target.registry, limit = hr.limit, remaining = hr.remaining, "rate-limit probe");
            }
            Ok(None) | Err(_) => {
                // Unknown now: drop the old values rather than export stale ones.
                for g in [&m.limit, &m.remaining, &m.window] {
                    g.remove(&labels);
                }
                match result {
                    Err(e) => {
                        m.errors.inc(&labels);
                        tracing::warn!(source = SOURCE, registry = %target.registry, error = %e, "rate-limit probe failed");
                    }
                    _ => {
                        tracing::debug!(source = SOURCE, registry = %target.registry, "registry reports no rate limit")
                    }
                }
            }
        }
    }

    /// Probes every target now, then every interval (±10%), until `shutdown` flips to true.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        // Make sure the error counter exists from the start (so increase() sees the first error).
        for t in &self.config.targets {
            self.metrics.errors.with(&ByRegistry {
                registry: &t.registry,
            });
        }
        loop {
            for t in &self.config.targets {
                let result = match tokio::time::timeout(PROBE_TIMEOUT, self.probe(t)).await {
                    Ok(r) => r,
                    Err(_) => Err(ProbeError::Timeout(PROBE_TIMEOUT)),
                };
                self.export(t, &result);
            }
            let wait = jittered(self.config.interval);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// `interval` ±10%, so a fleet of nodes does not probe in lockstep.
fn jittered(interval: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
    let unit = (hasher.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    interval.mul_f64(1.0 + 0.1 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm=registry"#).unwrap();
        assert_eq!((scheme.as_str(), params.len()), ("basic", 1));
    }

    #[test]
    fn credentials_only_over_tls_or_loopback() {
        assert!(may_send_credentials("https://auth.docker.io/token"));
        assert!(may_send_credentials("http://127.0.0.1:5000/token"));
        assert!(!may_send_credentials("http://auth.example.com/token"));
        assert!(!may_send_credentials("not a url"));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(300);
        for _ in 0..200 {
            let j = jittered(base);
            assert!(j >= base.mul_f64(0.9) && j <= base.mul_f64(1.1), "{j:?}");
        }
    }
}
