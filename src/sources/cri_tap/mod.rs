//! The kernel tap (`--cri-tap`): the runtime's CRI socket observed in the kernel, so a plain
//! DaemonSet gets the interposer's exact calls with no kubelet change and nothing in kubelet's
//! path.
//!
//! BPF programs on the raw syscall tracepoints ([`bpf`]) copy the bytes the runtime reads from
//! and writes to the connections accepted on its CRI socket into a ring buffer, per connection
//! and direction, each with its position in the stream. The runtime and the connections open
//! before the tap attached are found through /proc ([`runtime`]); the kernel follows the
//! connections accepted after (never pullwatch's own) and those that close. Here, on a thread
//! of its own, each connection's records feed the same observer the interposer uses
//! ([`crate::observe`]): a connection open before the tap is joined late (its reader hunts for
//! a frame boundary, its HPACK decoder knows only what it saw inserted), and bytes lost on the
//! way (a full ring) are a gap the reader resynchronizes after ([`follow`]). What it could not
//! read is counted, and said in the event log, never guessed.

mod bpf;
mod config;
mod follow;
mod metrics;
mod runtime;

pub(crate) use config::{TapArgs, TapConfig};
pub(crate) use metrics::TapMetrics;

use crate::observe::Recording;
use crate::observe::budget::{self, MemoryBudget};
use bpf::{Programs, Record, Stat};
use follow::Followed;
use metrics::{ByLostCause, ByMissedCause, LostCause, MissedCause};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

/// Label value of the tap in the shared source families.
pub(crate) const SOURCE: &str = "cri_tap";

/// Connection ids pullwatch gives connections it joins (the kernel counts up from 1 for the
/// ones it sees accepted).
const JOINED_IDS: u64 = 1 << 63;
/// Connections the tap follows at most (the kernel table's size).
const MAX_CONNECTIONS: usize = 4096;
/// How often the ring is read when the kernel side did not ask for it (times come from the
/// kernel's clock, so reading later changes no duration).
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Why the tap could not start: one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TapError {
    /// The runtime, its socket or its descriptors could not be found.
    #[error("finding the runtime: {0}")]
    Find(#[from] runtime::FindError),
    /// The BPF programs could not be loaded or attached.
    #[error(transparent)]
    Load(#[from] bpf::LoadError),
    /// The tap's thread could not start.
    #[error("starting the tap's thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the tap's thread works with.
struct Tap {
    config: TapConfig,
    metrics: TapMetrics,
    programs: Programs,
    followed: Followed,
    runtime: runtime::Runtime,
    next_joined: u64,
    /// Kernel counters as last read, to count their growth.
    stats: [u64; Stat::ALL.len()],
}

/// Starts the tap on a thread of its own and returns once it follows the runtime's socket (or
/// why it cannot). It runs until `stop` flips.
pub(crate) async fn start(
    config: TapConfig,
    recording: Arc<Recording>,
    metrics: TapMetrics,
    stop: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, TapError> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("cri-tap".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(TapError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match Tap::attach(config, recording, metrics).await {
                    Ok((tap, ring)) => {
                        let _ = started_tx.send(Ok(()));
                        tap.run(ring, stop).await;
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(TapError::Thread)?;
    match started_rx.await {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(TapError::Thread(std::io::Error::other(
            "the tap's thread ended before it attached",
        ))),
    }
}

impl Tap {
    /// Finds the runtime, loads and attaches the programs, and follows the connections open now.
    async fn attach(
        config: TapConfig,
        recording: Arc<Recording>,
        metrics: TapMetrics,
    ) -> Result<(Self, aya::maps::RingBuf<aya::maps::MapData>), TapError> {
        let pid = runtime::peer_of(&config.runtime_socket).await?;
        let found = runtime::descriptors(&config.proc, pid, &config.runtime_socket)?;
        let (programs, ring) = Programs::load(std::process::id(), config.ring_bytes)?;
        let budget = MemoryBudget::new(budget::TOTAL, budget::FLOOR / 4, MAX_CONNECTIONS);
        let mut tap = Self {
            followed: Followed::new(recording, budget),
            programs,
            runtime: found,
            next_joined: JOINED_IDS,
            stats: [0; Stat::ALL.len()],
            metrics,
            config,
        };
        tap.follow_runtime()?;
        Ok((tap, ring))
    }

    /// Tells the kernel side which process, listeners and (joined late) connections to follow.
    fn follow_runtime(&mut self) -> Result<(), bpf::LoadError> {
        let r = self.runtime.clone();
        self.programs.follow_process(r.pid)?;
        for fd in &r.listeners {
            self.programs.follow_listener(r.pid, *fd)?;
        }
        for fd in &r.connections {
            let id = self.next_joined;
            self.next_joined += 1;
            // User space first: the kernel's first record for it must find it.
            self.followed.joined(id);
            self.programs.follow_connection(r.pid, *fd, id)?;
        }
        tracing::info!(
            source = SOURCE,
            pid = r.pid,
            socket = %self.config.runtime_socket.display(),
            listeners = r.listeners.len(),
            joined = r.connections.len(),
            "kernel tap following the runtime's CRI socket"
        );
        self.metrics.health.set_source_up(true);
        Ok(())
    }

    /// The runtime restarted (or its listener changed): follows the new one, when it is there.
    async fn refollow(&mut self) {
        self.programs.forget_process(self.runtime.pid);
        self.followed.clear();
        let found = async {
            let pid = runtime::peer_of(&self.config.runtime_socket).await?;
            runtime::descriptors(&self.config.proc, pid, &self.config.runtime_socket)
        };
        match found.await {
            Ok(r) => {
                self.runtime = r;
                if let Err(e) = self.follow_runtime() {
                    self.metrics.health.set_source_up(false);
                    tracing::error!(source = SOURCE, error = %e, "kernel tap: following the restarted runtime failed");
                }
            }
            Err(e) => {
                self.metrics.health.set_source_up(false);
                tracing::warn!(source = SOURCE, error = %e, "kernel tap: the runtime is gone; looking again");
            }
        }
    }

    /// Reads the ring until `stop` flips; checks the runtime and the kernel's counters now and
    /// then.
    async fn run(mut self, ring: aya::maps::RingBuf<aya::maps::MapData>, stop: CancellationToken) {
        // The AsyncFd owns the ring, which owns its descriptor: the descriptor outlives the
        // registration, which is all the (deprecated, unsafe-free) constructor needs.
        #[allow(deprecated)]
        let ring = AsyncFd::new(ring);
        let mut ring = match ring {
            Ok(r) => r,
            Err(e) => {
                self.metrics.health.set_source_up(false);
                tracing::error!(source = SOURCE, error = %e, "kernel tap: its ring buffer cannot be polled");
                return;
            }
        };
        let mut rescan = tokio::time::interval(self.config.rescan);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The kernel side wakes this thread only when the ring fills up (a wakeup per record
        // would cost a context switch each); otherwise the ring is read every few milliseconds.
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                readable = ring.readable_mut() => {
                    let Ok(mut guard) = readable else { break };
                    self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = poll.tick() => self.drain(ring.get_mut()),
                _ = rescan.tick() => self.rescan().await,
                () = stop.cancelled() => break,
            }
        }
        self.drain(ring.get_mut());
        self.followed.clear();
        self.metrics.health.set_source_up(false);
        tracing::info!(source = SOURCE, "kernel tap stopped");
    }

    /// Applies every record the ring holds.
    fn drain(&mut self, ring: &mut aya::maps::RingBuf<aya::maps::MapData>) {
        while let Some(item) = ring.next() {
            if let Some(record) = Record::parse(&item) {
                self.followed.record(record);
            }
        }
    }

    /// The runtime still there? Connections the kernel stopped following dropped; counters.
    async fn rescan(&mut self) {
        if !runtime::unchanged(&self.config.proc, &self.runtime) {
            tracing::info!(
                source = SOURCE,
                pid = self.runtime.pid,
                "the runtime's CRI socket changed; following it again"
            );
            self.refollow().await;
        }
        self.followed.reconcile(&self.programs.followed());
        self.metrics.connections.set(&(), self.followed.len());
        for (i, stat) in Stat::ALL.iter().enumerate() {
            let now = self.programs.stat(*stat);
            let grown = now.saturating_sub(self.stats[i]);
            self.stats[i] = now;
            if grown == 0 {
                continue;
            }
            let lost = |cause| {
                let labels = ByLostCause { cause };
                self.metrics.lost_bytes.with(&labels).inc_by(grown);
            };
            let missed = |cause| {
                let labels = ByMissedCause { cause };
                self.metrics.missed.with(&labels).inc_by(grown);
            };
            match stat {
                Stat::RingFull => lost(LostCause::RingFull),
                Stat::Unreadable => lost(LostCause::Unreadable),
                Stat::TooLarge => lost(LostCause::TooLarge),
                Stat::Vectored => lost(LostCause::Vectored),
                Stat::EventsLost => missed(MissedCause::EventsLost),
                Stat::Untracked => missed(MissedCause::TableFull),
                Stat::Own => {
                    tracing::debug!(
                        source = SOURCE,
                        connections = grown,
                        "pullwatch's own connections to the runtime, not followed"
                    );
                }
            }
        }
    }
}
