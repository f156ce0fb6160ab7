//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (process alive),
//! `/readyz` (all enabled sources started).

use crate::recorder::Recorder;
use crate::web_config::WebConfig;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Shared readiness flag: set once every enabled source is running.
#[derive(Debug, Default, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the agent ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the agent is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

const INDEX: &str = "pullwatch: image pull observability\n\n/metrics  Prometheus metrics\n/healthz  liveness\n/readyz   readiness\n";

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(
    req: &Request<Incoming>,
    recorder: &Recorder,
    ready: &Readiness,
    web: Option<&WebConfig>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let path = req.uri().path();
    // Probes stay open (kubelet's httpGet probes carry no credentials; they reveal nothing).
    if let Some(web) = web
        && !matches!(path, "/healthz" | "/readyz")
    {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !web.authorized(auth) {
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
            let mut r = text(StatusCode::OK, recorder.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(prometheus::TEXT_FORMAT),
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

/// What every connection shares.
#[derive(Clone)]
struct Shared {
    recorder: Arc<Recorder>,
    ready: Readiness,
    web: Option<Arc<WebConfig>>,
}

fn connection<S>(
    stream: S,
    s: &Shared,
) -> impl hyper_util::server::graceful::GracefulConnection<
    Error = Box<dyn std::error::Error + Send + Sync>,
> + use<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let s = s.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let resp = route(&req, &s.recorder, &s.ready, s.web.as_deref());
        async move { Ok::<_, Infallible>(resp) }
    });
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .into_owned()
}

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP (HTTPS with a TLS web config; basic auth if it names users) on `listener` until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    recorder: Arc<Recorder>,
    ready: Readiness,
    web: Option<Arc<WebConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let tls = web.as_ref().and_then(|w| w.tls.clone());
    let shared = Shared {
        recorder,
        ready,
        web: web.filter(|w| w.requires_auth()),
    };
    let grace = Duration::from_secs(2);
    let Some(tls) = tls else {
        let accept = || async { listener.accept().await.map(|(stream, _)| stream) };
        let serve = |stream| connection(stream, &shared);
        crate::server::accept_loop("http", accept, shutdown, grace, serve).await;
        return;
    };
    let listener = tokio::sync::Mutex::new(
        tls_listener::builder(tokio_rustls::TlsAcceptor::from(tls))
            .handshake_timeout(HANDSHAKE_TIMEOUT)
            .listen(listener),
    );
    let accept = || async {
        let mut l = listener.lock().await;
        loop {
            match l.accept().await {
                Ok((stream, _)) => return Ok(stream),
                // One client's failed handshake is its problem, not the listener's.
                Err(tls_listener::Error::ListenerError(e)) => return Err(e),
                Err(e) => {
                    tracing::debug!(peer = ?e.peer_addr(), error = %e, "TLS handshake failed");
                }
            }
        }
    };
    let serve = |stream| connection(stream, &shared);
    crate::server::accept_loop("https", accept, shutdown, grace, serve).await;
}
