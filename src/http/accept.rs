//! The accept loop of the HTTP endpoint (plain and TLS), bounded: at most `max_connections`
//! open at once, a TLS handshake within [`HANDSHAKE_TIMEOUT`], a first byte within the header
//! timeout of the accept and the rest of the request headers within it again (hyper's), and
//! no connection idle longer than the idle timeout ([`Idle`]). So scrapers, or whoever can
//! reach the port, cannot take the file descriptors kubelet's path needs. Over the cap, a few
//! more connections are taken for the probes only ([`PROBE_SLOTS`], [`Lane::Probes`]): kubelet's
//! liveness probe still gets its answer while the cap is full; beyond those, a connection is
//! closed at once and counted. Accept errors back off instead of spinning; on shutdown open
//! connections drain for up to `grace`.

use super::config::ConnectionLimits;
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use prometheus::IntCounter;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

/// How long a client may take for its TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections kept for `/healthz` and `/readyz` once `max_connections` are open.
pub(super) const PROBE_SLOTS: usize = 4;
/// How long a connection on a probe slot may take to send its request.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which requests a connection may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Any: it holds one of the `max_connections` slots.
    Any,
    /// The probes only: it holds a probe slot, taken while every other slot was in use.
    Probes,
}

/// Runs the loop. `open` turns an accepted stream into its connection on its lane (after a TLS
/// handshake, say), or `None` when that failed; it runs on the connection's own task.
pub(super) async fn accept_loop<C, F>(
    what: &'static str,
    listener: TcpListener,
    limits: ConnectionLimits,
    rejected: IntCounter,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    open: impl Fn(Idle<TcpStream>, Lane) -> F,
) where
    F: Future<Output = Option<C>> + Send + 'static,
    C: GracefulConnection + Send + 'static,
    C::Error: Display + Send,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let probe_slots = Arc::new(Semaphore::new(PROBE_SLOTS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(server = what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (slot, lane, first_byte) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, Lane::Any, limits.header_timeout),
            Err(_) => match probe_slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, Lane::Probes, PROBE_TIMEOUT.min(limits.header_timeout)),
                Err(_) => {
                    rejected.inc();
                    tracing::debug!(
                        server = what,
                        max = limits.max_connections,
                        "connection over --web.max-connections closed"
                    );
                    drop(stream);
                    continue;
                }
            },
        };
        let watcher = graceful.watcher();
        let connection = open(Idle::new(stream, first_byte, limits.idle_timeout), lane);
        tokio::spawn(async move {
            let _slot = slot;
            let Some(conn) = connection.await else { return };
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(server = what, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!(
        server = what,
        "stopped accepting; draining open connections"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server = what,
            ?grace,
            "open connections did not finish within the grace period"
        );
    }
}

/// A stream that fails with `TimedOut` once nothing was read or written for its timeout, or
/// nothing was read at all within its first-byte timeout of the accept: an idle (or never
/// used) connection gives its descriptor back.
pub(super) struct Idle<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Idle<S> {
    /// `inner`, closed if no byte arrives within `first_byte`, then after `timeout` without
    /// traffic.
    pub(super) fn new(inner: S, first_byte: Duration, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(first_byte)),
        }
    }

    fn active(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection idle for --web.idle-timeout",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.active();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.expired(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_cut_at_the_first_byte_timeout() {
        let (a, _b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, Duration::from_secs(10), Duration::from_secs(120));
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let e = idle.read(&mut byte).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn an_idle_stream_times_out_and_traffic_keeps_it_open() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, Duration::from_millis(200), Duration::from_millis(200));
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                b.write_all(b"x").await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(b);
        });
        let started = Instant::now();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        let err = loop {
            match idle.read(&mut byte).await {
                Ok(n) => got.extend_from_slice(&byte[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"xxxxx", "traffic every 100 ms kept it open");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(650) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
        writer.abort();
    }
}
