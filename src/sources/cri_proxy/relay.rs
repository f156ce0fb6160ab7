//! The byte relay: copies one caller connection to its own runtime connection and back, bytes
//! unchanged, as they arrive. It knows nothing of HTTP/2: after each piece is written on, it
//! hands a view of it to a [`Tap`], which must not block.

use crate::sources::cri_proxy::wire::Side;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Read size per direction (socat's default is 8 KiB).
pub const BUFFER: usize = 16 << 10;
/// After one direction ended, how long the other may still carry bytes (a runtime's GOAWAY
/// and close after the caller's last frame) before the connection is closed.
pub const LINGER: Duration = Duration::from_secs(5);

/// What sees the bytes after they were forwarded.
pub trait Tap {
    /// `side` sent `bytes`; they have been written to the other side.
    fn bytes(&self, side: Side, bytes: &[u8]);
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The sender closed its side; the receiver's write was shut down in turn.
    Eof,
    /// Reading or writing failed.
    Error,
}

async fn pump<R, W>(mut from: R, mut to: W, side: Side, tap: &impl Tap) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return Ended::Eof;
            }
            Ok(n) => n,
            Err(_) => {
                let _ = to.shutdown().await;
                return Ended::Error;
            }
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return Ended::Error;
        }
        tap.bytes(side, &buf[..n]);
    }
}

/// Relays until both directions ended (the second within [`LINGER`] of the first). Returns the
/// side that ended first. When one side goes away its peer's write is shut down, as a close
/// would, and what the peer still sends is passed on: the caller gets the runtime's last
/// frames, as it would directly.
pub async fn relay(mut caller: UnixStream, mut runtime: UnixStream, tap: &impl Tap) -> Side {
    let (cr, cw) = caller.split();
    let (rr, rw) = runtime.split();
    let up = pump(cr, rw, Side::Caller, tap);
    let down = pump(rr, cw, Side::Runtime, tap);
    tokio::pin!(up, down);
    let first = tokio::select! {
        _ = &mut up => Side::Caller,
        _ = &mut down => Side::Runtime,
    };
    let rest = async {
        match first {
            Side::Caller => drop(down.await),
            Side::Runtime => drop(up.await),
        }
    };
    let _ = tokio::time::timeout(LINGER, rest).await;
    first
}
