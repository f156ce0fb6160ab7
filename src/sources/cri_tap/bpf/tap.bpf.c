// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0)
//
// pullwatch's CRI tap: copies the bytes a container runtime reads from and writes to the
// connections accepted on its CRI socket into a ring buffer, per connection and direction,
// each piece with its position in the stream, so user space can run its HTTP/2 observer on
// them and see every loss as a gap. Nothing here changes or delays a byte: the programs only
// read.
//
// Which connections: user space names the runtime's process (`tgids`) and its listening CRI
// socket (`listeners`, by (tgid, fd)) and, when it joins late, the connections already open
// (`conns`). From then on the kernel follows them itself: an accept on a listener adds the new
// connection (unless its peer is pullwatch: `self_tgid`), a close removes it.
//
// One program, on the raw syscall exit tracepoint (BTF-enabled: no tracefs): at a syscall's
// exit its arguments are still in the task's saved registers and its result is known, so no
// program runs at syscall entry, and every other syscall of the node costs one bitmap test.
//
// Built with clang (CO-RE against the running kernel's BTF: only `struct pt_regs` and the
// chain from the current task to a socket's peer are read, each relocated at load).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

typedef unsigned long long u64;
typedef unsigned int u32;
typedef long long s64;
typedef unsigned char u8;

#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long di, si, orig_ax;
} __attribute__((preserve_access_index));
#define ARG1(r) ((r)->di)
#define ARG2(r) ((r)->si)
#define SYSNO(r) ((s64)(r)->orig_ax)
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs {
	unsigned long regs[31];
	unsigned long orig_x0;
	int syscallno;
} __attribute__((preserve_access_index));
#define ARG1(r) ((r)->orig_x0)
#define ARG2(r) ((r)->regs[1])
#define SYSNO(r) ((s64)(r)->syscallno)
#else
#error "pullwatch's tap supports x86_64 and arm64"
#endif

char LICENSE[] SEC("license") = "Dual MIT/GPL";

// One record carries at most CHUNK bytes; one syscall at most MAX_CHUNKS records (256 KiB;
// a Go runtime reads and writes in 32 KiB pieces). Beyond, the bytes are counted as lost.
#define CHUNK 16384
#define MAX_CHUNKS 16
// Records do not wake user space one by one (a context switch per record would cost the node
// more than the copy): user space polls the ring every few milliseconds, and is woken at once
// only when the ring holds this much.
#define WAKEUP_BYTES (256 << 10)

// Set by user space before load.
volatile const u32 self_tgid = 0;
volatile const s64 nr_read = -1, nr_write = -1, nr_recvfrom = -1, nr_sendto = -1;
volatile const s64 nr_readv = -1, nr_writev = -1, nr_recvmsg = -1, nr_sendmsg = -1;
volatile const s64 nr_accept = -1, nr_accept4 = -1, nr_close = -1;
// The syscalls above as a bitmap (bit n of word n / 64): the first test of every exit.
volatile const u64 interesting[8] = {};

// Connection ids the kernel hands out; user space uses ids with the top bit set.
u64 next_conn = 1;

struct conn {
	u64 id;
	u64 pos[2];
};

// (tgid << 32 | fd) -> the connection followed on that descriptor.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, struct conn);
} conns SEC(".maps");

// (tgid << 32 | fd) of the runtime's listening CRI sockets.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, u64);
	__type(value, u32);
} listeners SEC(".maps");

// The runtime's processes.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, u32);
	__type(value, u32);
} tgids SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); // user space sets the size
} events SEC(".maps");

enum event { EV_DATA = 1, EV_OPEN = 2, EV_CLOSE = 3, EV_EOF = 4 };

// Every record starts with this (40 bytes, native byte order).
struct header {
	u64 ts;    // CLOCK_MONOTONIC, ns
	u64 conn;  // connection id
	u64 pos;   // DATA: stream offset of the first byte
	u32 len;   // DATA: bytes in this record
	u32 total; // DATA: bytes of the whole syscall; OPEN/CLOSE: the descriptor
	u32 tgid;
	u8 kind;   // enum event
	u8 dir;    // 0: the runtime read (caller to runtime), 1: it wrote
	u8 chunk;  // DATA: the record's place in its syscall (0: the syscall starts here)
	u8 pad;
};

struct record {
	struct header h;
	u8 data[CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct record);
} scratch SEC(".maps");

// Counters user space reads: see `Stat` in bpf.rs.
enum stat {
	S_EVENTS_LOST = 0,    // OPEN/CLOSE records the ring had no room for
	S_RING_FULL = 1,      // bytes the ring had no room for
	S_UNREADABLE = 2,     // bytes the kernel could not copy from the runtime's memory
	S_TOO_LARGE = 3,      // bytes of a syscall past MAX_CHUNKS * CHUNK
	S_VECTORED = 4,       // bytes of readv/writev/recvmsg/sendmsg (not copied)
	S_OWN = 5,            // connections accepted from pullwatch itself, not followed
	S_UNTRACKED = 6,      // connections not followed: `conns` was full
	S_MAX = 7,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, S_MAX);
	__type(key, u32);
	__type(value, u64);
} stats SEC(".maps");

static __always_inline void count(u32 stat, u64 n)
{
	u64 *v = bpf_map_lookup_elem(&stats, &stat);
	if (v)
		*v += n;
}

// The kernel types on the way from the current task to a socket's peer, relocated at load.
struct upid___pw { int nr; } __attribute__((preserve_access_index));
struct pid___pw { struct upid___pw numbers[1]; } __attribute__((preserve_access_index));
struct sock___pw { struct pid___pw *sk_peer_pid; } __attribute__((preserve_access_index));
struct socket___pw { struct sock___pw *sk; } __attribute__((preserve_access_index));
struct file___pw { void *private_data; } __attribute__((preserve_access_index));
struct fdtable___pw { unsigned int max_fds; struct file___pw **fd; } __attribute__((preserve_access_index));
struct files_struct___pw { struct fdtable___pw *fdt; } __attribute__((preserve_access_index));
struct task_struct___pw { struct files_struct___pw *files; } __attribute__((preserve_access_index));

// The process (thread group) that connected the socket behind descriptor `fd` of the current
// task, in the initial PID namespace; -1 if unknown.
static __always_inline int peer_tgid(u32 fd)
{
	struct task_struct___pw *t = (void *)bpf_get_current_task();
	struct fdtable___pw *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return -1;
	struct file___pw **fds = BPF_CORE_READ(fdt, fd);
	struct file___pw *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return -1;
	struct socket___pw *s = BPF_CORE_READ(f, private_data);
	struct pid___pw *p = BPF_CORE_READ(s, sk, sk_peer_pid);
	if (!p)
		return -1;
	return BPF_CORE_READ(p, numbers[0].nr);
}

static __always_inline u64 wakeup(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP
									   : BPF_RB_NO_WAKEUP;
}

static __always_inline void announce(u8 kind, u64 conn, u32 tgid, u32 fd)
{
	struct header h = {};
	h.ts = bpf_ktime_get_ns();
	h.conn = conn;
	h.kind = kind;
	h.tgid = tgid;
	h.total = fd;
	if (bpf_ringbuf_output(&events, &h, sizeof(h), wakeup()))
		count(S_EVENTS_LOST, 1);
}

// Copies `n` bytes at `buf` (the runtime's memory) into the ring as records of at most CHUNK.
static __always_inline void emit(struct conn *c, u32 tgid, u8 dir, u64 buf, u64 n)
{
	u32 zero = 0;
	struct record *r = bpf_map_lookup_elem(&scratch, &zero);
	u64 pos = __sync_fetch_and_add(&c->pos[dir], n);
	if (!r) {
		count(S_RING_FULL, n);
		return;
	}
	u64 ts = bpf_ktime_get_ns();
	for (int i = 0; i < MAX_CHUNKS; i++) {
		u64 off = (u64)i * CHUNK;
		if (off >= n)
			return;
		u32 size = n - off > CHUNK ? CHUNK : n - off;
		r->h.ts = ts;
		r->h.conn = c->id;
		r->h.pos = pos + off;
		r->h.len = size;
		r->h.total = n;
		r->h.tgid = tgid;
		r->h.kind = EV_DATA;
		r->h.dir = dir;
		r->h.chunk = i;
		if (bpf_probe_read_user(r->data, size, (void *)(buf + off))) {
			count(S_UNREADABLE, size);
			continue;
		}
		if (bpf_ringbuf_output(&events, r, sizeof(struct header) + size, wakeup()))
			count(S_RING_FULL, size);
	}
	if (n > (u64)MAX_CHUNKS * CHUNK)
		count(S_TOO_LARGE, n - (u64)MAX_CHUNKS * CHUNK);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_exit, struct pt_regs *regs, long ret)
{
	// Every syscall of the node exits here: the cheapest test first.
	s64 nr = SYSNO(regs);
	if (nr < 0 || nr >= 512 || !((interesting[(nr >> 6) & 7] >> (nr & 63)) & 1))
		return 0;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!bpf_map_lookup_elem(&tgids, &tgid))
		return 0;
	u32 fd = ARG1(regs);
	u64 key = ((u64)tgid << 32) | fd;
	if (nr == nr_close) {
		if (ret != 0)
			return 0;
		struct conn *c = bpf_map_lookup_elem(&conns, &key);
		if (c) {
			u64 id = c->id;
			bpf_map_delete_elem(&conns, &key);
			announce(EV_CLOSE, id, tgid, fd);
		}
		bpf_map_delete_elem(&listeners, &key);
		return 0;
	}
	if (nr == nr_accept || nr == nr_accept4) {
		if (ret < 0 || !bpf_map_lookup_elem(&listeners, &key))
			return 0;
		u32 new_fd = ret;
		u64 new_key = ((u64)tgid << 32) | new_fd;
		// A descriptor the kernel just handed out was closed before: an entry under it is
		// stale (a connection joined from /proc that closed before user space entered it).
		// Drop it, or the new connection's bytes would be read as the old one's.
		struct conn *stale = bpf_map_lookup_elem(&conns, &new_key);
		if (stale) {
			u64 stale_id = stale->id;
			bpf_map_delete_elem(&conns, &new_key);
			announce(EV_CLOSE, stale_id, tgid, new_fd);
		}
		if (self_tgid && peer_tgid(new_fd) == (int)self_tgid) {
			count(S_OWN, 1);
			return 0;
		}
		struct conn c = {.id = __sync_fetch_and_add(&next_conn, 1)};
		if (bpf_map_update_elem(&conns, &new_key, &c, BPF_ANY)) {
			count(S_UNTRACKED, 1);
			return 0;
		}
		announce(EV_OPEN, c.id, tgid, new_fd);
		return 0;
	}
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return 0;
	int reading = nr == nr_read || nr == nr_recvfrom || nr == nr_readv || nr == nr_recvmsg;
	u8 dir = reading ? 0 : 1;
	if (ret == 0 && reading) {
		// The caller closed its side: the runtime read the end of the stream.
		announce(EV_EOF, c->id, tgid, fd);
		return 0;
	}
	if (ret <= 0)
		return 0;
	if (nr == nr_readv || nr == nr_recvmsg || nr == nr_writev || nr == nr_sendmsg) {
		// Not copied: the position moves on, so user space sees the gap.
		__sync_fetch_and_add(&c->pos[dir], (u64)ret);
		count(S_VECTORED, ret);
		return 0;
	}
	emit(c, tgid, dir, ARG2(regs), ret);
	return 0;
}
