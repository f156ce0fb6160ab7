//! The interposer's HTTP/2 connection to the runtime's CRI socket: one multiplexed connection,
//! opened on demand, replaced when it closes (runtime restart), bounded connect time.

use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// HTTP/2 flow-control windows on both sides. Large and fixed (not adaptive): h2's protection
/// against floods of small DATA frames budgets them at half the connection window, and a burst of
/// hundreds of concurrent unary calls (5-byte frames each) from kubelet must not trip it.
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Per-stream window: a CRI message (up to 16 MiB) flows without waiting on a window update
/// per 64 KiB.
pub const STREAM_WINDOW: u32 = 2 << 20;

/// Header list limit on both sides; matches grpc-go's default so pullwatch is never stricter
/// than kubelet or the runtime.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 << 20;

/// Why a call could not be handed to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting to the socket failed.
    #[error("connect {path}: {source}")]
    Connect {
        /// Runtime socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connect {path}: timed out after {timeout:?}")]
    ConnectTimeout {
        /// Runtime socket.
        path: PathBuf,
        /// Limit.
        timeout: Duration,
    },
    /// The HTTP/2 handshake or the request failed.
    #[error("runtime connection: {0}")]
    Http(#[from] hyper::Error),
}

/// A lazily (re)connected HTTP/2 client to the runtime.
pub struct Upstream<B> {
    path: PathBuf,
    connect_timeout: Duration,
    sender: Mutex<Option<SendRequest<B>>>,
}

impl<B> Upstream<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A client for the runtime socket at `path`.
    pub fn new(path: &Path, connect_timeout: Duration) -> Self {
        Self {
            path: path.to_path_buf(),
            connect_timeout,
            sender: Mutex::new(None),
        }
    }

    /// The runtime socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn sender(&self) -> Result<SendRequest<B>, UpstreamError> {
        let mut slot = self.sender.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *slot = None;
        let stream = tokio::time::timeout(self.connect_timeout, UnixStream::connect(&self.path))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout {
                path: self.path.clone(),
                timeout: self.connect_timeout,
            })?
            .map_err(|source| UpstreamError::Connect {
                path: self.path.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .handshake(TokioIo::new(stream))
            .await?;
        let path = self.path.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(path = %path.display(), error = %e, "runtime connection closed");
            }
        });
        tracing::debug!(path = %self.path.display(), "connected to runtime");
        *slot = Some(sender.clone());
        Ok(sender)
    }

    /// Sends one request to the runtime.
    pub async fn send(&self, req: Request<B>) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.sender().await?;
        Ok(sender.send_request(req).await?)
    }
}
