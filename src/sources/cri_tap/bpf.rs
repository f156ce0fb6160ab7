//! The tap's kernel side as user space sees it: the BPF object build.rs compiled from
//! `bpf/tap.bpf.c`, loaded with aya and attached to the raw syscall exit tracepoint
//! (BTF-enabled: no tracefs needed), its maps (which process, sockets and connections to
//! follow; counters), and the records its ring buffer carries ([`Record`]).
//!
//! Why aya: a pure-Rust loader of a clang-built object (CO-RE relocations against the running
//! kernel's BTF included) on stable Rust, with no C library to build or ship; libbpf-rs would
//! link libbpf and libelf into the binary for the same job.

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

/// The object build.rs compiled (empty when clang was missing at build time).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tap.bpf.o"));

/// Why the programs could not be loaded and attached: one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The binary was built without clang.
    #[error(
        "this pullwatch was built without the tap's BPF programs (clang was missing at build time)"
    )]
    NotBuilt,
    /// The architecture has no syscall numbers here.
    #[error("the tap supports x86_64 and aarch64 only")]
    Architecture,
    /// No BTF for the running kernel (`/sys/kernel/btf/vmlinux`).
    #[error("no BTF for the running kernel (/sys/kernel/btf/vmlinux): {0}")]
    Btf(#[source] aya::BtfError),
    /// The kernel refused the object, a map or a program (too old, no CAP_BPF/CAP_PERFMON,
    /// seccomp, an LSM).
    #[error("the kernel refused the tap's BPF programs: {0}")]
    Load(String),
}

/// Syscall numbers of the target architecture.
struct Syscalls {
    read: i64,
    write: i64,
    recvfrom: i64,
    sendto: i64,
    readv: i64,
    writev: i64,
    recvmsg: i64,
    sendmsg: i64,
    accept: i64,
    accept4: i64,
    close: i64,
}

#[cfg(target_arch = "x86_64")]
const SYSCALLS: Option<Syscalls> = Some(Syscalls {
    read: 0,
    write: 1,
    recvfrom: 45,
    sendto: 44,
    readv: 19,
    writev: 20,
    recvmsg: 47,
    sendmsg: 46,
    accept: 43,
    accept4: 288,
    close: 3,
});

#[cfg(target_arch = "aarch64")]
const SYSCALLS: Option<Syscalls> = Some(Syscalls {
    read: 63,
    write: 64,
    recvfrom: 207,
    sendto: 206,
    readv: 65,
    writev: 66,
    recvmsg: 212,
    sendmsg: 211,
    accept: 202,
    accept4: 242,
    close: 57,
});

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALLS: Option<Syscalls> = None;

/// Counters of the kernel side (the C side's `enum stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stat {
    /// OPEN/CLOSE/EOF records the ring had no room for.
    EventsLost = 0,
    /// Bytes the ring had no room for.
    RingFull = 1,
    /// Bytes the kernel could not copy from the runtime's memory.
    Unreadable = 2,
    /// Bytes of a syscall past what one syscall's records carry (256 KiB).
    TooLarge = 3,
    /// Bytes of readv/writev/recvmsg/sendmsg (not copied).
    Vectored = 4,
    /// Connections accepted from pullwatch itself, not followed.
    Own = 5,
    /// Connections not followed: the connection table was full.
    Untracked = 6,
}

impl Stat {
    /// Every counter.
    pub(super) const ALL: [Stat; 7] = [
        Stat::EventsLost,
        Stat::RingFull,
        Stat::Unreadable,
        Stat::TooLarge,
        Stat::Vectored,
        Stat::Own,
        Stat::Untracked,
    ];
}

/// The loaded, attached programs and their maps.
pub(super) struct Programs {
    /// Keeps the programs attached while it lives.
    _ebpf: Ebpf,
    conns: HashMap<MapData, u64, [u64; 3]>,
    listeners: HashMap<MapData, u64, u32>,
    tgids: HashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
}

/// (tgid, fd) as the maps key it.
fn key(tgid: u32, fd: u32) -> u64 {
    (u64::from(tgid) << 32) | u64::from(fd)
}

fn load_err(e: impl std::error::Error + 'static) -> LoadError {
    LoadError::Load(crate::causes::Causes(&e).to_string())
}

impl Programs {
    /// Loads the object for an agent whose process is `self_tgid` (its own connections to the
    /// runtime are not followed) with a ring of `ring_bytes`, and attaches it; returns the
    /// ring buffer to read.
    pub(super) fn load(
        self_tgid: u32,
        ring_bytes: u32,
    ) -> Result<(Self, RingBuf<MapData>), LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NotBuilt);
        }
        let nr = SYSCALLS.ok_or(LoadError::Architecture)?;
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        let mut interesting = [0u64; 8];
        for nr in [
            nr.read,
            nr.write,
            nr.recvfrom,
            nr.sendto,
            nr.readv,
            nr.writev,
            nr.recvmsg,
            nr.sendmsg,
            nr.accept,
            nr.accept4,
            nr.close,
        ] {
            let nr = usize::try_from(nr).map_err(|_| LoadError::Architecture)?;
            *interesting
                .get_mut(nr / 64)
                .ok_or(LoadError::Architecture)? |= 1 << (nr % 64);
        }
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            .override_global("self_tgid", &self_tgid, true)
            .override_global("interesting", &interesting, true)
            .map_max_entries("events", ring_bytes);
        for (name, value) in [
            ("nr_read", &nr.read),
            ("nr_write", &nr.write),
            ("nr_recvfrom", &nr.recvfrom),
            ("nr_sendto", &nr.sendto),
            ("nr_readv", &nr.readv),
            ("nr_writev", &nr.writev),
            ("nr_recvmsg", &nr.recvmsg),
            ("nr_sendmsg", &nr.sendmsg),
            ("nr_accept", &nr.accept),
            ("nr_accept4", &nr.accept4),
            ("nr_close", &nr.close),
        ] {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader.load(OBJECT).map_err(load_err)?;
        let p: &mut BtfTracePoint = ebpf
            .program_mut("on_exit")
            .ok_or_else(|| LoadError::Load("no program on_exit in the object".into()))?
            .try_into()
            .map_err(load_err)?;
        p.load("sys_exit", &btf).map_err(load_err)?;
        p.attach().map_err(load_err)?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| LoadError::Load(format!("no map {name} in the object")))
        };
        let ring = RingBuf::try_from(take("events")?).map_err(load_err)?;
        let programs = Self {
            conns: HashMap::try_from(take("conns")?).map_err(load_err)?,
            listeners: HashMap::try_from(take("listeners")?).map_err(load_err)?,
            tgids: HashMap::try_from(take("tgids")?).map_err(load_err)?,
            stats: PerCpuArray::try_from(take("stats")?).map_err(load_err)?,
            _ebpf: ebpf,
        };
        Ok((programs, ring))
    }

    /// Follows process `tgid` (the runtime).
    pub(super) fn follow_process(&mut self, tgid: u32) -> Result<(), LoadError> {
        self.tgids.insert(tgid, 1, 0).map_err(load_err)
    }

    /// Stops following process `tgid`, its listeners and its connections.
    pub(super) fn forget_process(&mut self, tgid: u32) {
        let _ = self.tgids.remove(&tgid);
        let mine = |k: &u64| (k >> 32) as u32 == tgid;
        let listeners: Vec<u64> = self.listeners.keys().flatten().filter(mine).collect();
        for k in listeners {
            let _ = self.listeners.remove(&k);
        }
        let conns: Vec<u64> = self.conns.keys().flatten().filter(mine).collect();
        for k in conns {
            let _ = self.conns.remove(&k);
        }
    }

    /// Follows the connections accepted on descriptor `fd` of `tgid` (a CRI listening socket).
    pub(super) fn follow_listener(&mut self, tgid: u32, fd: u32) -> Result<(), LoadError> {
        self.listeners.insert(key(tgid, fd), 1, 0).map_err(load_err)
    }

    /// Follows the connection on descriptor `fd` of `tgid` as `id` (it was open before the tap
    /// attached), from stream positions 0.
    pub(super) fn follow_connection(
        &mut self,
        tgid: u32,
        fd: u32,
        id: u64,
    ) -> Result<(), LoadError> {
        self.conns
            .insert(key(tgid, fd), [id, 0, 0], 0)
            .map_err(load_err)
    }

    /// The ids of the connections the kernel side follows now.
    pub(super) fn followed(&self) -> std::collections::HashSet<u64> {
        self.conns.iter().flatten().map(|(_, v)| v[0]).collect()
    }

    /// The counter `stat`, summed over CPUs.
    pub(super) fn stat(&self, stat: Stat) -> u64 {
        self.stats
            .get(&(stat as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// What the kernel side reports, one ring record each.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    /// The runtime accepted connection `conn` on a followed listener (descriptor `fd`).
    Open {
        /// Connection id.
        conn: u64,
        /// When (CLOCK_MONOTONIC, ns).
        ts: u64,
        /// Its descriptor in the runtime.
        fd: u32,
    },
    /// The runtime closed connection `conn`.
    Close {
        /// Connection id.
        conn: u64,
        /// When.
        ts: u64,
    },
    /// The runtime read the end of connection `conn`'s stream: the caller closed its side.
    Eof {
        /// Connection id.
        conn: u64,
        /// When.
        ts: u64,
    },
    /// Bytes the runtime read (`runtime_wrote` false) or wrote on connection `conn`.
    Data {
        /// Connection id.
        conn: u64,
        /// When the syscall returned.
        ts: u64,
        /// Whether the runtime wrote them (else it read them).
        runtime_wrote: bool,
        /// Stream offset of the first byte.
        pos: u64,
        /// The syscall's whole size.
        total: u32,
        /// The record's place in its syscall (0: the syscall starts here).
        chunk: u8,
        /// The bytes.
        bytes: &'a [u8],
    },
}

/// Size of the C side's `struct header`.
const HEADER: usize = 40;

impl<'a> Record<'a> {
    /// Parses one ring record; `None` if it is malformed (never from the programs above).
    pub(super) fn parse(b: &'a [u8]) -> Option<Self> {
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let (ts, conn, pos) = (u64_at(0)?, u64_at(8)?, u64_at(16)?);
        let (len, total) = (u32_at(24)?, u32_at(28)?);
        let (kind, dir, chunk) = (*b.get(36)?, *b.get(37)?, *b.get(38)?);
        Some(match kind {
            1 => Record::Data {
                conn,
                ts,
                runtime_wrote: dir == 1,
                pos,
                total,
                chunk,
                bytes: b.get(HEADER..HEADER + usize::try_from(len).ok()?)?,
            },
            2 => Record::Open {
                conn,
                ts,
                fd: total,
            },
            3 => Record::Close { conn, ts },
            4 => Record::Eof { conn, ts },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, dir: u8, chunk: u8, pos: u64, len: u32, total: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(7u64.to_ne_bytes());
        b.extend(42u64.to_ne_bytes());
        b.extend(pos.to_ne_bytes());
        b.extend(len.to_ne_bytes());
        b.extend(total.to_ne_bytes());
        b.extend(1234u32.to_ne_bytes());
        b.extend([kind, dir, chunk, 0]);
        b
    }

    #[test]
    fn records_parse_as_the_c_side_writes_them() {
        let mut d = header(1, 1, 2, 100, 3, 40_000);
        d.extend(b"abc");
        assert_eq!(
            Record::parse(&d),
            Some(Record::Data {
                conn: 42,
                ts: 7,
                runtime_wrote: true,
                pos: 100,
                total: 40_000,
                chunk: 2,
                bytes: b"abc"
            })
        );
        assert_eq!(
            Record::parse(&header(2, 0, 0, 0, 0, 9)),
            Some(Record::Open {
                conn: 42,
                ts: 7,
                fd: 9
            })
        );
        assert_eq!(
            Record::parse(&header(4, 0, 0, 0, 0, 9)),
            Some(Record::Eof { conn: 42, ts: 7 })
        );
        // Truncated, unknown kind, a length past the record.
        assert_eq!(Record::parse(&d[..30]), None);
        assert_eq!(Record::parse(&header(9, 0, 0, 0, 0, 0)), None);
        assert_eq!(Record::parse(&header(1, 0, 0, 0, 5, 5)), None);
    }

    #[test]
    fn the_object_was_built_with_clang() {
        if OBJECT.is_empty() {
            eprintln!("skipped: built without clang (the tap is then off, and says so)");
            return;
        }
        assert_eq!(&OBJECT[..4], b"\x7fELF");
    }
}
