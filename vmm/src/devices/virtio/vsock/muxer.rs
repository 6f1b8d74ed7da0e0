//! The connection table of the hybrid-vsock backend: the host Unix listener and its
//! `CONNECT <port>\n` handshake, host port allocation, forwarding of guest connections to
//! `<uds_path>_<port>`, and routing of guest packets to [`Connection`]s.
//!
//! Every host socket is non-blocking and registered edge-triggered in the muxer's epoll; the
//! worker adds its own event fds to the same epoll with tokens below [`LISTENER_TOKEN`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::Connection;
use super::packet::{VsockHeader, HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};
use super::uds::{connect_nonblocking, HostSocket};

/// Epoll token of the listener. Tokens below it belong to the worker.
pub const LISTENER_TOKEN: u64 = 8;
const FIRST_CONN_TOKEN: u64 = 16;
/// Longest accepted `CONNECT <port>\n` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// Connections plus pending handshakes; further host clients are turned away.
const MAX_CONNECTIONS: usize = 1024;
/// RSTs for unknown connections waiting for an rx buffer; more are dropped.
pub const MAX_PENDING_RSTS: usize = 256;
/// Host ports handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const LAST_LOCAL_PORT: u32 = u32::MAX - 1;

/// Why a host client's `CONNECT` line was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectLineError {
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    #[error("host client closed the socket before ending the CONNECT line")]
    Eof,
    #[error("malformed CONNECT line {0:?}, expected \"CONNECT <port>\"")]
    Malformed(String),
    #[error("reading the CONNECT line: {0}")]
    Io(#[source] io::Error),
}

/// Parses one `CONNECT <port>` line (without its newline).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    let malformed = || ConnectLineError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ").ok_or_else(malformed)?.trim();
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    port.parse::<u32>().map_err(|_| malformed())
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

struct Conn {
    inner: Connection<HostSocket>,
    token: u64,
    /// A host port we allocated (host-initiated connection).
    allocated_port: bool,
}

/// A host client that has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// See the module docs.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    connect_timeout: Duration,
    conns: HashMap<ConnKey, Conn>,
    conn_tokens: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    allocated_ports: HashSet<u32>,
    next_local_port: u32,
    next_token: u64,
    /// Connections that may have a packet for the guest, round-robin.
    rx_queue: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    /// RSTs for packets that matched no connection.
    rsts: VecDeque<VsockHeader>,
}

impl Muxer {
    /// `connect_timeout` bounds both the host client's `CONNECT` line and the guest's answer.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        connect_timeout: Duration,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path,
            listener,
            epoll,
            connect_timeout,
            conns: HashMap::new(),
            conn_tokens: HashMap::new(),
            handshakes: HashMap::new(),
            allocated_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
            next_token: FIRST_CONN_TOKEN,
            rx_queue: VecDeque::new(),
            rx_queued: HashSet::new(),
            rsts: VecDeque::new(),
        })
    }

    /// The epoll set holding the listener and every host socket.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Number of live connections (not counting pending handshakes).
    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether [`Self::next_rx_pkt`] may produce a packet.
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_queue.is_empty()
    }

    /// Control packets queued regardless of connections; the worker stops taking tx packets
    /// while this is at [`MAX_PENDING_RSTS`] so that a guest cannot make it grow unbounded.
    pub fn rx_backlog(&self) -> usize {
        self.rsts.len()
    }

    /// The earliest time [`Self::handle_timeouts`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hs = self.handshakes.values().map(|h| h.deadline);
        let conns = self.conns.values().filter_map(|c| c.inner.deadline());
        hs.chain(conns).min()
    }

    /// Dispatches an epoll event with a token at or above [`LISTENER_TOKEN`].
    pub fn handle_event(&mut self, token: u64, events: EventSet, now: Instant) {
        if token == LISTENER_TOKEN {
            self.accept(now);
        } else if self.handshakes.contains_key(&token) {
            self.read_handshake(token, now);
        } else if let Some(&key) = self.conn_tokens.get(&token) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let hangup = EventSet::HANG_UP | EventSet::ERROR;
                if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | hangup) {
                    conn.inner.host_readable();
                }
                if events.intersects(EventSet::OUT | hangup) {
                    conn.inner.host_writable(now);
                }
                self.after_change(key);
            }
        }
    }

    /// Resets connections and drops handshakes whose deadline passed.
    pub fn handle_timeouts(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            log::debug!("vsock: host client sent no CONNECT line in time; closing it");
            self.drop_handshake(token);
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.inner.deadline().is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.inner.on_timeout(now);
            }
            self.after_change(key);
        }
    }

    /// Routes a validated packet from the guest.
    pub fn process_guest_pkt(&mut self, hdr: &VsockHeader, data: &[u8], now: Instant) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            log::debug!(
                "vsock: dropping packet from cid {} to cid {} (guest cid {}, host cid {HOST_CID})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            log::debug!("vsock: unsupported socket type {}; replying RST", hdr.type_);
            if hdr.op != OP_RST {
                self.push_rst(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            if hdr.op == OP_REQUEST {
                log::warn!(
                    "vsock: guest REQUEST for live connection {}:{}; resetting it",
                    key.local_port,
                    key.peer_port
                );
                conn.inner.kill();
            } else {
                conn.inner.recv_pkt(hdr, data, now);
            }
            self.after_change(key);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr),
            OP_RST => {}
            op => {
                log::debug!(
                    "vsock: op {op} for unknown connection {}:{}; replying RST",
                    key.local_port,
                    key.peer_port
                );
                self.push_rst(hdr);
            }
        }
    }

    /// The next packet for the guest, with at most `max_data` payload bytes in `buf`.
    pub fn next_rx_pkt(
        &mut self,
        max_data: usize,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Option<VsockHeader> {
        buf.clear();
        if let Some(rst) = self.rsts.pop_front() {
            return Some(rst);
        }
        // Connections that had nothing to say but still claim to (e.g. the buffer is too small
        // for data); they are requeued afterwards so that this loop ends.
        let mut stalled = Vec::new();
        let mut found = None;
        while let Some(key) = self.rx_queue.pop_front() {
            self.rx_queued.remove(&key);
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let pkt = conn.inner.next_rx_pkt(max_data, buf, now);
            if pkt.is_none() && conn.inner.has_pending_rx() {
                stalled.push(key);
                continue;
            }
            self.after_change(key);
            if pkt.is_some() {
                found = pkt;
                break;
            }
        }
        for key in stalled {
            self.schedule(key);
        }
        found
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            };
            if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: {MAX_CONNECTIONS} connections open; turning a host client away");
                continue;
            }
            let token = self.alloc_token();
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| self.register(&stream, token))
            {
                log::warn!("vsock: setting up an accepted host socket: {e}");
                continue;
            }
            let deadline = now + self.connect_timeout;
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                    deadline,
                },
            );
            self.read_handshake(token, now);
        }
    }

    /// Reads the `CONNECT` line one byte at a time, so that no byte after the newline is taken
    /// from the socket: those belong to the connection.
    fn read_handshake(&mut self, token: u64, now: Instant) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let result = loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(ConnectLineError::Eof),
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&hs.line),
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if hs.line.len() >= MAX_CONNECT_LINE {
                        break Err(ConnectLineError::TooLong);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(ConnectLineError::Io(e)),
            }
        };
        match result {
            Ok(port) => {
                if let Some(hs) = self.handshakes.remove(&token) {
                    self.start_host_connection(token, hs.stream, port, now);
                }
            }
            Err(e) => {
                log::warn!("vsock: host client on {}: {e}", self.uds_path.display());
                self.drop_handshake(token);
            }
        }
    }

    fn start_host_connection(&mut self, token: u64, stream: UnixStream, port: u32, now: Instant) {
        let Some(local_port) = self.alloc_local_port(port) else {
            log::warn!("vsock: no free host port for a connection to guest port {port}");
            self.deregister(&stream);
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let inner = Connection::new_local(
            HostSocket(stream),
            self.guest_cid,
            local_port,
            port,
            now,
            self.connect_timeout,
        );
        self.conns.insert(
            key,
            Conn {
                inner,
                token,
                allocated_port: true,
            },
        );
        self.conn_tokens.insert(token, key);
        self.schedule(key);
    }

    /// A guest REQUEST for host port P: connect to `<uds_path>_P`.
    fn guest_connect(&mut self, req: &VsockHeader) {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", req.dst_port));
        let path = PathBuf::from(path);
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: {MAX_CONNECTIONS} connections open; refusing guest connection");
            self.push_rst(req);
            return;
        }
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!(
                    "vsock: guest connection to host port {}: {}: {e}; replying RST",
                    req.dst_port,
                    path.display()
                );
                self.push_rst(req);
                return;
            }
        };
        let token = self.alloc_token();
        if let Err(e) = self.register(&stream, token) {
            log::warn!("vsock: registering {}: {e}", path.display());
            self.push_rst(req);
            return;
        }
        let key = ConnKey {
            local_port: req.dst_port,
            peer_port: req.src_port,
        };
        let inner = Connection::new_peer(HostSocket(stream), self.guest_cid, req);
        self.conns.insert(
            key,
            Conn {
                inner,
                token,
                allocated_port: false,
            },
        );
        self.conn_tokens.insert(token, key);
        self.schedule(key);
    }

    fn push_rst(&mut self, to: &VsockHeader) {
        if self.rsts.len() >= MAX_PENDING_RSTS {
            log::warn!("vsock: too many RSTs pending for the guest; dropping one");
            return;
        }
        self.rsts.push_back(VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: to.type_,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    /// After a connection changed: drop it if it is closed, else queue it for rx if needed.
    fn after_change(&mut self, key: ConnKey) {
        let closed = self.conns.get(&key).is_some_and(|c| c.inner.is_closed());
        if closed {
            if let Some(conn) = self.conns.remove(&key) {
                self.deregister(&conn.inner.stream().0);
                self.conn_tokens.remove(&conn.token);
                if conn.allocated_port {
                    self.allocated_ports.remove(&key.local_port);
                }
            }
        } else {
            self.schedule(key);
        }
    }

    fn schedule(&mut self, key: ConnKey) {
        let pending = self
            .conns
            .get(&key)
            .is_some_and(|c| c.inner.has_pending_rx());
        if pending && self.rx_queued.insert(key) {
            self.rx_queue.push_back(key);
        }
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=2 * MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = if port >= LAST_LOCAL_PORT {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.allocated_ports.contains(&port) && !self.conns.contains_key(&key) {
                self.allocated_ports.insert(port);
                return Some(port);
            }
        }
        None
    }

    fn alloc_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn register(&self, stream: &UnixStream, token: u64) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(events, token),
        )
    }

    fn deregister(&self, stream: &UnixStream) {
        // Closing the fd right after removes it anyway; an error here changes nothing.
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            stream.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(hs) = self.handshakes.remove(&token) {
            self.deregister(&hs.stream);
        }
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
