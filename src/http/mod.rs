//! The HTTP endpoint: `/metrics` (Prometheus text format), `/pulls` (pulls in progress and the
//! last finished attempts, JSON), `/healthz` (process alive), `/readyz` (all enabled sources
//! started).

mod accept;
mod config;
use accept::Lane;
pub(crate) mod web_config;

pub(crate) use config::{HttpArgs, HttpConfig};

use crate::sinks::pulls::PullsView;
use crate::telemetry::{MetricsError, MetricsRegistry};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use web_config::WebConfig;

/// Shared readiness flag: set once every enabled source is running.
#[derive(Debug, Default, Clone)]
pub(crate) struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the agent ready (or not).
    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the agent is ready.
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

const INDEX: &str = "pullwatch: image pull observability\n\n/metrics  Prometheus metrics\n/pulls    pulls in progress and the last finished attempts (JSON)\n/healthz  liveness\n/readyz   readiness\n";

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(req: &Request<Incoming>, shared: &Shared, lane: Lane) -> Response<Full<Bytes>> {
    let (metrics, ready) = (&shared.metrics, &shared.ready);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let path = req.uri().path();
    if lane == Lane::Probes && !matches!(path, "/healthz" | "/readyz") {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "over --web.max-connections: only /healthz and /readyz answer on this connection\n",
        );
    }
    // Probes stay open (kubelet's httpGet probes carry no credentials; they reveal nothing).
    if let Some(web) = &shared.web
        && !matches!(path, "/healthz" | "/readyz")
    {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !web.authorize(auth).await {
            let mut r = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"pullwatch\""),
            );
            return r;
        }
    }
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            r
        }
        "/pulls" => {
            let body = serde_json::to_vec(&shared.pulls.snapshot()).unwrap_or_default();
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/" => text(StatusCode::OK, INDEX),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The endpoint's families.
#[derive(Clone)]
pub(crate) struct HttpMetrics {
    rejected: prometheus::IntCounter,
}

impl HttpMetrics {
    /// Registers the endpoint's families in `reg`.
    pub(crate) fn register(reg: &MetricsRegistry) -> Result<Self, MetricsError> {
        Ok(Self {
            rejected: crate::telemetry::counter(reg, "pullwatch_http_connections_rejected_total")?,
        })
    }
}

/// What every connection shares.
struct Shared {
    metrics: MetricsRegistry,
    pulls: Arc<PullsView>,
    ready: Readiness,
    web: Option<Arc<WebConfig>>,
}

fn connection<S>(
    stream: S,
    s: &Arc<Shared>,
    header_timeout: Duration,
    lane: Lane,
) -> impl hyper_util::server::graceful::GracefulConnection<
    Error = Box<dyn std::error::Error + Send + Sync>,
> + use<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let s = s.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let s = s.clone();
        async move { Ok::<_, Infallible>(route(&req, &s, lane).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned()
}

/// Serves HTTP (HTTPS with a TLS web config; basic auth if it names users) on `listener` until
/// `shutdown` resolves, within `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: MetricsRegistry,
    pulls: Arc<PullsView>,
    http_metrics: HttpMetrics,
    ready: Readiness,
    config: HttpConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let web = config.web_config;
    let limits = config.limits;
    let tls = web.as_ref().and_then(|w| w.tls.clone());
    let shared = Arc::new(Shared {
        metrics,
        pulls,
        ready,
        web: web.filter(|w| w.requires_auth()),
    });
    let grace = Duration::from_secs(2);
    let rejected = http_metrics.rejected;
    let header_timeout = limits.header_timeout;
    let Some(tls) = tls else {
        let open = |stream, lane| {
            let conn = connection(stream, &shared, header_timeout, lane);
            async move { Some(conn) }
        };
        accept::accept_loop("http", listener, limits, rejected, shutdown, grace, open).await;
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let open = |stream, lane| {
        let (acceptor, shared) = (acceptor.clone(), shared.clone());
        async move {
            match tokio::time::timeout(accept::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some(connection(tls, &shared, header_timeout, lane)),
                // One client's failed handshake is its problem, not the listener's.
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    None
                }
            }
        }
    };
    accept::accept_loop("https", listener, limits, rejected, shutdown, grace, open).await;
}
