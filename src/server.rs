//! The accept loop of the HTTP endpoint (plain and TLS): accept until shutdown,
//! back off on accept errors instead of spinning, watch every connection for graceful shutdown,
//! then let open connections drain for up to `grace`.

use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// Runs the loop. `accept` yields the next stream; `serve` turns it into a connection future.
pub async fn accept_loop<S, A, C>(
    what: &'static str,
    mut accept: impl FnMut() -> A,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    mut serve: impl FnMut(S) -> C,
) where
    A: Future<Output = std::io::Result<S>>,
    C: GracefulConnection + Send + 'static,
    C::Error: Display + Send,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(server = what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = graceful.watch(serve(stream));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
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
