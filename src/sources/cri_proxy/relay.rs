//! The byte relay: copies one caller connection to its own runtime connection and back, bytes
//! unchanged, as they arrive. It knows nothing of HTTP/2: after each piece is written on, it
//! hands a view of it to a [`Tap`], which must return at once (the interposer's copies it into
//! the observer's queue).

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Read size per direction (socat's default is 8 KiB).
pub(crate) const BUFFER: usize = 16 << 10;
/// After one direction ended, how long the other may still carry bytes (a runtime's GOAWAY
/// and close after the caller's last frame) before the connection is closed.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// One end of a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The caller (kubelet, crictl, ...).
    Caller,
    /// The container runtime.
    Runtime,
}

impl Side {
    fn other(self) -> Self {
        match self {
            Side::Caller => Side::Runtime,
            Side::Runtime => Side::Caller,
        }
    }
}

/// What sees the bytes after they were forwarded.
pub(crate) trait Tap {
    /// `side` sent `bytes`; they have been written to the other side. Must not block.
    fn bytes(&self, side: Side, bytes: &[u8]);
}

/// Copies what `side` sends (`from`) to the other side (`to`) until `side` ends its sending
/// (then `to`'s write side is shut, as a close would) or writing to the other side fails.
/// Returns the side that went away.
async fn pump<R, W>(mut from: R, mut to: W, side: Side, tap: &impl Tap) -> Side
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return side;
            }
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return side.other();
        }
        tap.bytes(side, &buf[..n]);
    }
}

/// Relays until both directions ended (the second within [`LINGER`] of the first). Returns the
/// side that went away first. When one side goes away its peer's write is shut down, as a close
/// would, and what the peer still sends is passed on: the caller gets the runtime's last
/// frames, as it would directly.
pub(crate) async fn relay(mut caller: UnixStream, mut runtime: UnixStream, tap: &impl Tap) -> Side {
    let (cr, cw) = caller.split();
    let (rr, rw) = runtime.split();
    let up = pump(cr, rw, Side::Caller, tap);
    let down = pump(rr, cw, Side::Runtime, tap);
    tokio::pin!(up, down);
    let (first, up_ended) = tokio::select! {
        gone = &mut up => (gone, true),
        gone = &mut down => (gone, false),
    };
    let rest = async { if up_ended { down.await } else { up.await } };
    let _ = tokio::time::timeout(LINGER, rest).await;
    first
}
