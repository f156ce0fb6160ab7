//! The CRI interposer: a byte relay on a unix socket in front of the runtime's CRI socket, with
//! the passive observer ([`crate::observe`]) on a copy of each direction.
//!
//! Each caller connection gets its own runtime connection, and bytes are copied both ways
//! unchanged as they arrive ([`relay`]): settings, flow control, pings, GOAWAY, stream limits
//! and every header are the caller's and the runtime's own, so pullwatch is never stricter than
//! the runtime and one caller can never hold another's window. After each piece is forwarded,
//! its connection's [`Feed`] queues a copy for the observer thread; the relay never waits on
//! it. If the runtime socket cannot be reached, the caller's connection is closed at once, as
//! the runtime's own socket would refuse it.
//!
//! Bounded whatever callers do: at most `--cri-proxy-max-connections` connections (more are
//! closed at once, counted), a runtime socket that leads back to a pullwatch is refused with a
//! growing back-off (never a spin), and running out of file descriptors is told apart from the
//! runtime being down.

mod config;
pub(crate) mod loop_guard;
mod metrics;
pub(crate) mod relay;
pub(crate) mod socket;

pub(crate) use config::{ProxyArgs, ProxyConfig};
use metrics::ConnectionResult;
pub(crate) use metrics::ProxyMetrics;

use crate::observe::budget::{self, MemoryBudget};
use crate::observe::feed::{Feed, Observers};
use crate::observe::{Recording, wire};
use crate::telemetry::events::{Throttle, WARN_EVERY};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Label value of the interposer in `pullwatch_runtime_up`.
pub(crate) const SOURCE: &str = "cri_proxy";

/// The first back-off after a loop was found, doubled at each new finding up to [`LOOP_MAX`].
const LOOP_FIRST: Duration = Duration::from_millis(100);
const LOOP_MAX: Duration = Duration::from_secs(30);

/// The running interposer.
pub(crate) struct CriProxy {
    metrics: ProxyMetrics,
    observers: Observers,
    runtime_socket: PathBuf,
    connect_timeout: Duration,
    max_connections: usize,
    /// Caller connections relayed now.
    relayed: AtomicUsize,
    /// `pullwatch_interposer_connections_open`'s one series, created (at 0) with the interposer.
    open: prometheus::IntGauge,
    loops: LoopBackoff,
    /// This process's command name, to know another pullwatch at the runtime socket.
    comm: Option<String>,
    warn_over_limit: Throttle,
    warn_unreachable: Throttle,
    warn_fds: Throttle,
}

/// Counts a relayed connection while it lives (also when its task is cut at the end of the
/// shutdown grace).
struct OpenConnection<'a>(&'a CriProxy);

impl<'a> OpenConnection<'a> {
    fn new(proxy: &'a CriProxy) -> Self {
        proxy.open.inc();
        Self(proxy)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.dec();
        self.0.relayed.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Refusal of the runtime socket after it was found to lead back to a pullwatch: closed at once
/// for a back-off that doubles at each new finding, so a loop made after start (a symlink, a
/// bind mount, two instances pointed at each other) costs a handful of connections, not a spin.
#[derive(Debug)]
struct LoopBackoff {
    state: std::sync::Mutex<(Option<Instant>, Duration)>,
    warn: Throttle,
}

impl LoopBackoff {
    fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((None, Duration::ZERO)),
            warn: Throttle::new(WARN_EVERY),
        }
    }

    /// Whether connects are held back now.
    fn holding(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0.is_some_and(|until| Instant::now() < until)
    }

    /// A loop was found: hold connects back for the next, longer, interval.
    fn found(&self) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let delay = (s.1 * 2).clamp(LOOP_FIRST, LOOP_MAX);
        *s = (Some(Instant::now() + delay), delay);
        delay
    }

    /// A connect reached a real runtime: the back-off starts over.
    fn cleared(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.is_some() {
            *s = (None, Duration::ZERO);
        }
    }
}

/// Why a caller's connection is not relayed.
enum Refused {
    Unreachable(std::io::Error),
    OutOfFds(std::io::Error),
    Loop(&'static str),
}

/// The command name of process `pid`.
fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

impl CriProxy {
    /// An interposer relaying to `config.runtime_socket`, counting its connections in
    /// `metrics` and recording what it observes into `recording` through its own observer
    /// thread.
    pub(crate) fn new(
        config: &ProxyConfig,
        metrics: ProxyMetrics,
        recording: Arc<Recording>,
    ) -> std::io::Result<Self> {
        let budget = MemoryBudget::new(budget::TOTAL, budget::FLOOR, config.max_connections);
        Ok(Self {
            observers: Observers::start(recording, budget)?,
            open: metrics.connections_open.with(&()),
            metrics,
            runtime_socket: config.runtime_socket.clone(),
            connect_timeout: config.connect_timeout,
            max_connections: config.max_connections,
            relayed: AtomicUsize::new(0),
            loops: LoopBackoff::new(),
            comm: comm(std::process::id()),
            warn_over_limit: Throttle::new(WARN_EVERY),
            warn_unreachable: Throttle::new(WARN_EVERY),
            warn_fds: Throttle::new(WARN_EVERY),
        })
    }

    fn count(&self, result: ConnectionResult) {
        self.metrics.connections.inc(&metrics::ByResult { result });
    }

    /// Opens the runtime connection for one caller connection.
    async fn connect(&self) -> Result<UnixStream, Refused> {
        if self.loops.holding() {
            return Err(Refused::Loop("held back after a loop was found"));
        }
        let connected = tokio::time::timeout(
            self.connect_timeout,
            UnixStream::connect(&self.runtime_socket),
        )
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {:?}", self.connect_timeout),
            ))
        });
        let stream = match connected {
            Ok(s) => s,
            // EMFILE, ENFILE: ours to fix, not the runtime's.
            Err(e) if matches!(e.raw_os_error(), Some(23 | 24)) => {
                return Err(Refused::OutOfFds(e));
            }
            Err(e) => return Err(Refused::Unreachable(e)),
        };
        if let Some(pid) = stream.peer_cred().ok().and_then(|c| c.pid()) {
            let pid = u32::try_from(pid).unwrap_or(0);
            if pid == std::process::id() {
                return Err(Refused::Loop("leads back to this pullwatch"));
            }
            if self.comm.is_some() && comm(pid) == self.comm {
                return Err(Refused::Loop("leads to another pullwatch"));
            }
        }
        self.loops.cleared();
        Ok(stream)
    }

    /// Counts and reports a refused caller connection (the caller's side is then closed).
    fn refused(&self, why: Refused) {
        let runtime = self.runtime_socket.display();
        match why {
            Refused::Unreachable(e) => {
                self.metrics.health.set_up(false);
                self.count(ConnectionResult::RuntimeUnreachable);
                if let Some(suppressed) = self.warn_unreachable.allow() {
                    tracing::warn!(%runtime, error = %e, suppressed, "runtime socket unreachable; closing the caller's connection");
                }
            }
            Refused::OutOfFds(e) => {
                self.count(ConnectionResult::OutOfFds);
                if let Some(suppressed) = self.warn_fds.allow() {
                    tracing::error!(%runtime, error = %e, suppressed, "no file descriptor left to connect to the runtime (pullwatch's limit, not the runtime); closing the caller's connection");
                }
            }
            Refused::Loop(how) => {
                self.count(ConnectionResult::SelfLoop);
                let hold = self.loops.found();
                if let Some(suppressed) = self.loops.warn.allow() {
                    tracing::error!(%runtime, how, suppressed, hold_ms = hold.as_millis() as u64, "the runtime socket leads to a pullwatch, not a runtime; refusing connections for a while");
                }
            }
        }
    }

    /// Relays and observes one caller connection. After `stop` flips, the connection is closed
    /// as soon as it has no call open (or when the shutdown grace ends, see [`Self::serve`]).
    async fn connection(self: Arc<Self>, caller: UnixStream, stop: CancellationToken) {
        let _open = OpenConnection::new(&self);
        let runtime = match self.connect().await {
            Ok(r) => r,
            Err(why) => return self.refused(why), // dropping `caller` closes it
        };
        self.metrics.health.set_up(true);
        self.count(ConnectionResult::Relayed);
        let feed = self.observers.feed();
        let drained = async {
            stop.cancelled().await;
            feed.idle().await;
        };
        let first = tokio::select! {
            first = relay::relay(caller, runtime, &feed) => first,
            () = drained => relay::Side::Caller,
        };
        feed.closed(observed_side(first));
    }

    /// Accepts connections on `socket` until `shutdown` resolves. Then it closes and removes the
    /// socket (new connections fail at once, as with pullwatch stopped, instead of waiting in
    /// the backlog), lets open calls finish for up to `grace`, and closes what is left.
    pub(crate) async fn serve(
        self: Arc<Self>,
        socket: socket::BoundSocket,
        shutdown: impl std::future::Future<Output = ()>,
        grace: Duration,
    ) {
        let listener: &UnixListener = &socket.listener;
        // Listening: the interposer works (whether the runtime answers is pullwatch_runtime_up).
        self.metrics.health.set_source_up(true);
        let stop = CancellationToken::new();
        let mut conns = JoinSet::new();
        let accept_failed = Throttle::new(WARN_EVERY);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if self.relayed.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
                            self.relayed.fetch_sub(1, Ordering::AcqRel);
                            self.count(ConnectionResult::OverLimit);
                            if let Some(suppressed) = self.warn_over_limit.allow() {
                                tracing::warn!(max = self.max_connections, suppressed, "caller connection over --cri-proxy-max-connections closed");
                            }
                            drop(stream);
                            continue;
                        }
                        conns.spawn(self.clone().connection(stream, stop.clone()));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        if let Some(suppressed) = accept_failed.allow() {
                            tracing::error!(error = %e, suppressed, "interposer: accepting a connection failed");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(socket);
        stop.cancel();
        tracing::info!(
            connections = conns.len(),
            "interposer stopped accepting; letting open calls finish"
        );
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                ?grace,
                connections = conns.len(),
                "open calls did not finish within the grace period; closing their connections"
            );
            conns.shutdown().await;
        }
    }
}

/// The relay's side as the observer names it.
fn observed_side(side: relay::Side) -> wire::Side {
    match side {
        relay::Side::Caller => wire::Side::Caller,
        relay::Side::Runtime => wire::Side::Runtime,
    }
}

/// The relay hands each forwarded piece to its connection's feed, which queues a copy.
impl relay::Tap for Feed {
    fn bytes(&self, side: relay::Side, bytes: &[u8]) {
        Feed::bytes(self, observed_side(side), bytes);
    }
}
