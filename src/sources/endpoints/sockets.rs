//! The runtime's TCP connections and the bytes each has received: the socket inodes in
//! `/proc/<pid>/fd`, matched against the kernel's socket table read with `sock_diag`
//! (`NETLINK_SOCK_DIAG`, `INET_DIAG_INFO`: `tcp_info.bytes_received`). The table is the one of
//! pullwatch's network namespace, so pullwatch must share the runtime's (the DaemonSet runs with
//! `hostNetwork`). A connection that opens and closes between two reads is not in the table
//! any more and its bytes are not seen; containerd keeps its registry connections open for
//! reuse, so this is rare, and each pull's start and end are read at once.

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla,
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A netlink reply that does not come within this long ends the read (as an error).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Sockets read at most per family and read: a node with more is read in part (and said).
const MAX_SOCKETS: usize = 200_000;

/// Why the socket table could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketsError {
    /// The netlink socket failed.
    #[error("sock_diag: {0}")]
    Netlink(#[from] std::io::Error),
    /// The kernel's reply could not be decoded.
    #[error("sock_diag: undecodable reply: {0}")]
    Decode(String),
    /// The kernel answered the dump with an error.
    #[error("sock_diag: the kernel refused the dump: {0}")]
    Refused(String),
}

/// One TCP connection of the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Conn {
    /// Its socket inode.
    pub inode: u64,
    /// The remote address.
    pub remote: SocketAddr,
    /// Bytes received on it so far (`tcpi_bytes_received`).
    pub bytes_received: u64,
}

/// The socket inodes among `pid`'s descriptors (read under `proc`).
pub(super) fn socket_inodes(proc: &Path, pid: u32) -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(proc.join(pid.to_string()).join("fd"))? {
        let Ok(entry) = entry else { continue };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let inode = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok());
        inodes.extend(inode);
    }
    Ok(inodes)
}

/// Reads the kernel's TCP socket table.
#[derive(Debug)]
pub(super) struct SocketTable {
    socket: Socket,
    buf: Vec<u8>,
}

impl SocketTable {
    /// Opens the netlink socket.
    pub(super) fn open() -> Result<Self, SocketsError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_TIMEOUT),
        )
        .map_err(std::io::Error::from)?;
        Ok(Self {
            socket,
            buf: vec![0; 64 * 1024],
        })
    }

    /// The TCP connections (IPv4 and IPv6) whose inode is in `wanted`.
    pub(super) fn connections(&mut self, wanted: &HashSet<u64>) -> Result<Vec<Conn>, SocketsError> {
        let mut out = Vec::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        for family in [AF_INET, AF_INET6] {
            self.dump(family, wanted, &mut out)?;
        }
        Ok(out)
    }

    fn dump(
        &mut self,
        family: u8,
        wanted: &HashSet<u64>,
        out: &mut Vec<Conn>,
    ) -> Result<(), SocketsError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let socket_id = if family == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                // Connections only: a TIME_WAIT socket has no inode (and a busy node has
                // thousands), a listener or a half-open accept is no registry connection.
                states: StateFlags::all()
                    - (StateFlags::TIME_WAIT | StateFlags::SYN_RECV | StateFlags::LISTEN),
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut request = vec![0; packet.buffer_len()];
        packet.serialize(&mut request);
        self.socket.send(&request, 0)?;
        let mut seen = 0usize;
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message =
                    <NetlinkMessage<SockDiagMessage>>::deserialize(&self.buf[offset..size])
                        .map_err(|e| SocketsError::Decode(e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        seen += 1;
                        let inode = u64::from(r.header.inode);
                        if seen <= MAX_SOCKETS && wanted.contains(&inode) {
                            let bytes_received = r.nlas.iter().find_map(|n| match n {
                                Nla::TcpInfo(info) => bytes_received(info),
                                _ => None,
                            });
                            let id = &r.header.socket_id;
                            out.push(Conn {
                                inode,
                                remote: SocketAddr::new(
                                    id.destination_address,
                                    id.destination_port,
                                ),
                                bytes_received: bytes_received.unwrap_or(0),
                            });
                        }
                    }
                    NetlinkPayload::Done(_) => {
                        if seen > MAX_SOCKETS {
                            tracing::warn!(
                                sockets = seen,
                                read = MAX_SOCKETS,
                                "more TCP sockets than pullwatch reads for endpoint attribution; some of the runtime's may be missed"
                            );
                        }
                        return Ok(());
                    }
                    NetlinkPayload::Error(e) => return Err(SocketsError::Refused(e.to_string())),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
}

/// Where `tcpi_bytes_received` sits in the kernel's `struct tcp_info` (since Linux 4.1; the
/// struct only grows at its end).
const BYTES_RECEIVED_AT: usize = 128;

/// `tcpi_bytes_received` of an `INET_DIAG_INFO` payload, if the kernel's struct has it.
fn bytes_received(info: &[u8]) -> Option<u64> {
    let raw = info.get(BYTES_RECEIVED_AT..BYTES_RECEIVED_AT + 8)?;
    Some(u64::from_ne_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// The table reads a connection of this process, with its bytes received.
    #[test]
    fn reads_our_own_connection_and_its_bytes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(&[7u8; 3000]).unwrap();
        let mut got = vec![0; 3000];
        client.read_exact(&mut got).unwrap();
        let inodes = socket_inodes(Path::new("/proc"), std::process::id()).unwrap();
        let mut table = match SocketTable::open() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: sock_diag is not available here: {e}");
                return;
            }
        };
        let conns = table.connections(&inodes).unwrap();
        let mine = conns
            .iter()
            .find(|c| c.remote == addr)
            .expect("the client's connection to the listener");
        assert_eq!(mine.bytes_received, 3000);
        assert!(conns.iter().all(|c| inodes.contains(&c.inode)));
        assert!(table.connections(&HashSet::new()).unwrap().is_empty());
    }
}
