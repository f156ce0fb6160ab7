//! The CRI interposer: a transparent HTTP/2 gRPC proxy on a unix socket in front of the runtime's
//! CRI socket. Every call (known or not, unary or streaming) is forwarded with its headers, body
//! frames and trailers unchanged; only PullImage bodies are additionally decoded, to time and
//! classify each pull. If pullwatch cannot reach the runtime, callers get a prompt UNAVAILABLE.

mod body;
mod call;
pub mod decode;
pub mod methods;
pub mod socket;
pub mod upstream;

use crate::grpc::status::trailers_only;
use crate::recorder::Recorder;
use body::{RequestBody, ResponseBody};
use call::{Call, End};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use upstream::{CONNECTION_WINDOW, MAX_HEADER_LIST_SIZE, STREAM_WINDOW, Upstream};

/// Interposer settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where kubelet connects (its `imageServiceEndpoint`).
    pub listen_socket: PathBuf,
    /// Permission bits of the listening socket.
    pub socket_mode: u32,
    /// Group owning the listening socket (default: pullwatch's own).
    pub socket_group: Option<u32>,
    /// The runtime's CRI socket.
    pub runtime_socket: PathBuf,
    /// Limit for connecting to the runtime socket.
    pub connect_timeout: Duration,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

/// The running interposer.
pub struct CriProxy {
    recorder: Arc<Recorder>,
    upstream: Upstream<RequestBody>,
}

impl CriProxy {
    /// An interposer forwarding to `config.runtime_socket`, recording into `recorder`.
    pub fn new(config: &ProxyConfig, recorder: Arc<Recorder>) -> Self {
        Self {
            recorder,
            upstream: Upstream::new(&config.runtime_socket, config.connect_timeout),
        }
    }

    /// Forwards one call and observes it.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let mut call = Call::new(self.recorder.clone(), req.uri().path(), req.headers());
        let (mut parts, body) = req.into_parts();
        parts.uri = upstream_uri(parts.uri);
        let req = Request::from_parts(parts, RequestBody::new(body, call.pull_capture()));
        match self.upstream.send(req).await {
            Ok(resp) => {
                call.on_response_head(resp.status(), resp.headers());
                let (parts, body) = resp.into_parts();
                Ok(Response::from_parts(
                    parts,
                    ResponseBody::upstream(body, call),
                ))
            }
            Err(e) => {
                let msg = format!("pullwatch: container runtime unavailable: {e}");
                tracing::warn!(runtime = %self.upstream.path().display(), error = %e, "forwarding failed");
                call.finish(End::RuntimeUnavailable(msg.clone()));
                Ok(trailers_only(Code::Unavailable, &msg))
            }
        }
    }

    /// Accepts connections on `listener` until `shutdown` resolves, then lets in-flight calls
    /// finish for up to `grace`.
    pub async fn serve(
        self: Arc<Self>,
        listener: &tokio::net::UnixListener,
        shutdown: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) {
        let accept = || async { listener.accept().await.map(|(stream, _)| stream) };
        let serve = |stream| {
            let proxy = self.clone();
            let service = hyper::service::service_fn(move |req| proxy.clone().handle(req));
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                // Transparent: the runtime's response headers only, no `date` added by hyper.
                .auto_date_header(false)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .initial_stream_window_size(STREAM_WINDOW)
                .max_header_list_size(MAX_HEADER_LIST_SIZE)
                .max_concurrent_streams(None)
                .serve_connection(TokioIo::new(stream), service)
        };
        crate::server::accept_loop("cri_proxy", accept, shutdown, grace, serve).await;
    }
}

/// HTTP/2 needs `:scheme` and `:authority`; keep the caller's authority, default `localhost`.
fn upstream_uri(uri: Uri) -> Uri {
    let mut parts = uri.into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    if parts.authority.is_none() {
        parts.authority = Some(Authority::from_static("localhost"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://localhost/"))
}
