//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (process alive),
//! `/readyz` (all enabled sources started).

use crate::recorder::Recorder;
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

fn route(req: &Request<Incoming>, recorder: &Recorder, ready: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
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

/// Serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    recorder: Arc<Recorder>,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let accept = || async { listener.accept().await.map(|(stream, _)| stream) };
    let serve = |stream| {
        let (recorder, ready) = (recorder.clone(), ready.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = route(&req, &recorder, &ready);
            async move { Ok::<_, Infallible>(resp) }
        });
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .into_owned()
    };
    crate::server::accept_loop("http", accept, shutdown, Duration::from_secs(2), serve).await;
}
