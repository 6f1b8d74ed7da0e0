//! One vsock stream connection between a guest port and a host Unix socket: the state machine
//! and the credit accounting of virtio spec 1.2, 5.10.6.3. Pure logic over a generic stream; the
//! muxer does the epoll bookkeeping and feeds it events.
//!
//! Naming: "local" is the host side (the device), "peer" is the guest. `to_host` holds guest data
//! not yet written to the host stream; it is bounded by the buffer we advertise to the guest.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use super::packet::{
    VsockHeader, HOST_CID, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
    OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};

/// The host side of a connection: a byte stream whose write side can be shut down.
pub trait HostStream: Read + Write {
    fn shutdown_write(&mut self) -> io::Result<()>;
}

/// Receive buffer we advertise to the guest, per connection.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send a CREDIT_UPDATE once the guest believes less than this much of our buffer is free (half
/// of it, so that a sender streaming 64 KiB packets never runs dry while we keep up).
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;
/// How long a closing connection may take to flush its data to the host before it is reset.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Opened by a host client: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows (possibly half-closed in either direction).
    Established,
    /// Reset (sent or received); the muxer drops it, which closes the host stream.
    Closed,
}

/// Control packets waiting for an rx buffer.
#[derive(Debug, Default)]
struct PendingRx {
    rst: bool,
    request: bool,
    response: bool,
    /// SHUTDOWN flags still to send (0: none).
    shutdown: u32,
    credit_update: bool,
    credit_request: bool,
}

impl PendingRx {
    fn any(&self) -> bool {
        self.rst
            || self.request
            || self.response
            || self.shutdown != 0
            || self.credit_update
            || self.credit_request
    }
}

/// One connection. See the module docs.
pub struct Connection<S> {
    stream: S,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: ConnState,
    pending: PendingRx,
    // Towards the guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    credit_requested: bool,
    // From the guest.
    /// Payload bytes received from the guest.
    rx_cnt: u32,
    /// Of those, bytes written to the host stream.
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    last_fwd_cnt_sent: u32,
    /// Bytes for the host that do not count against credit (the `OK <port>` reply).
    host_prefix: Vec<u8>,
    to_host: VecDeque<u8>,
    // Stream and shutdown state.
    host_readable: bool,
    host_eof: bool,
    host_write_shut: bool,
    /// SHUTDOWN flags received from the guest.
    guest_shutdown: u32,
    deadline: Option<Instant>,
}

enum ReadOutcome {
    Packet(VsockHeader),
    /// The state changed (EOF or error); look at the pending control packets again.
    Retry,
    Nothing,
}

impl<S: HostStream> Connection<S> {
    /// A connection a host client asked for with `CONNECT <peer_port>`: queues a REQUEST, which the
    /// guest must answer before `now + timeout`.
    pub fn new_local(
        stream: S,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        now: Instant,
        timeout: Duration,
    ) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            local_port,
            peer_port,
            ConnState::LocalInit,
        );
        c.pending.request = true;
        c.deadline = Some(now + timeout);
        c
    }

    /// A connection the guest asked for with `req` (a REQUEST), already connected on the host
    /// side: queues the RESPONSE.
    pub fn new_peer(stream: S, guest_cid: u64, req: &VsockHeader) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            req.dst_port,
            req.src_port,
            ConnState::Established,
        );
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c.pending.response = true;
        c.host_readable = true;
        c
    }

    fn new(stream: S, guest_cid: u64, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            pending: PendingRx::default(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            credit_requested: false,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            host_prefix: Vec::new(),
            to_host: VecDeque::new(),
            host_readable: false,
            host_eof: false,
            host_write_shut: false,
            guest_shutdown: 0,
            deadline: None,
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == ConnState::Closed
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// When [`Self::on_timeout`] must be called, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// How many payload bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether [`Self::next_rx_pkt`] may produce a packet.
    pub fn has_pending_rx(&self) -> bool {
        if self.state == ConnState::Closed {
            return false;
        }
        self.pending.any()
            || (self.can_read_host() && (self.peer_credit() > 0 || !self.credit_requested))
    }

    /// Handles a packet the guest sent on this connection.
    pub fn recv_pkt(&mut self, hdr: &VsockHeader, data: &[u8], now: Instant) {
        // Until our REQUEST is out, the guest cannot know this connection: ignore guesses.
        if self.state == ConnState::Closed || self.pending.request {
            return;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (_, OP_RST) => {
                self.pending = PendingRx::default();
                self.state = ConnState::Closed;
            }
            (ConnState::LocalInit, OP_RESPONSE) => {
                self.state = ConnState::Established;
                self.deadline = None;
                self.host_readable = true;
                self.host_prefix = format!("OK {}\n", self.local_port).into_bytes();
                self.flush_to_host(now);
            }
            (ConnState::Established, OP_RW) => self.recv_data(data, now),
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            (ConnState::Established, OP_CREDIT_REQUEST) => self.pending.credit_update = true,
            (ConnState::Established, OP_SHUTDOWN) => {
                self.guest_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.check_shutdown(now);
            }
            (state, op) => {
                log::warn!(
                    "vsock: unexpected op {op} on connection {}:{} in state {state:?}; resetting",
                    self.local_port,
                    self.peer_port
                );
                self.kill();
            }
        }
    }

    fn recv_data(&mut self, data: &[u8], now: Instant) {
        let buffered = self.rx_cnt.wrapping_sub(self.fwd_cnt) as usize;
        if self.guest_shutdown & SHUTDOWN_SEND != 0
            || buffered + data.len() > CONN_BUF_ALLOC as usize
        {
            log::warn!(
                "vsock: guest overran its credit (or sent after SHUTDOWN) on connection {}:{}; \
                 resetting",
                self.local_port,
                self.peer_port
            );
            self.kill();
            return;
        }
        self.to_host.extend(data);
        // data.len() <= MAX_PKT_DATA.
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        self.flush_to_host(now);
    }

    /// The host stream became readable (or hung up): try reading again.
    pub fn host_readable(&mut self) {
        self.host_readable = true;
    }

    /// The host stream became writable: write what is buffered.
    pub fn host_writable(&mut self, now: Instant) {
        self.flush_to_host(now);
    }

    /// The deadline passed: a connection request the guest never answered, or a close that did
    /// not finish, is reset.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            log::debug!(
                "vsock: connection {}:{} timed out in state {:?}",
                self.local_port,
                self.peer_port,
                self.state
            );
            self.kill();
        }
    }

    /// Resets the connection: a RST goes to the guest unless it never heard of the connection.
    pub fn kill(&mut self) {
        if self.state == ConnState::Closed {
            return;
        }
        self.deadline = None;
        if self.pending.request {
            // The REQUEST was never delivered: nothing to tell the guest.
            self.pending = PendingRx::default();
            self.state = ConnState::Closed;
        } else {
            self.pending = PendingRx {
                rst: true,
                ..PendingRx::default()
            };
        }
    }

    /// Produces the next packet for the guest, with at most `max_data` payload bytes copied into
    /// `buf`. Control packets go first, then data read from the host stream within the guest's
    /// credit.
    pub fn next_rx_pkt(
        &mut self,
        max_data: usize,
        buf: &mut Vec<u8>,
        now: Instant,
    ) -> Option<VsockHeader> {
        buf.clear();
        loop {
            if self.state == ConnState::Closed {
                return None;
            }
            if self.pending.rst {
                self.pending = PendingRx::default();
                self.state = ConnState::Closed;
                return Some(self.header(OP_RST, 0, 0));
            }
            if self.pending.request {
                self.pending.request = false;
                return Some(self.header(OP_REQUEST, 0, 0));
            }
            if self.pending.response {
                self.pending.response = false;
                return Some(self.header(OP_RESPONSE, 0, 0));
            }
            if self.pending.shutdown != 0 {
                let flags = std::mem::take(&mut self.pending.shutdown);
                return Some(self.header(OP_SHUTDOWN, 0, flags));
            }
            match self.read_host(max_data, buf, now) {
                ReadOutcome::Packet(hdr) => return Some(hdr),
                ReadOutcome::Retry => continue,
                ReadOutcome::Nothing => {}
            }
            if self.pending.credit_update {
                return Some(self.header(OP_CREDIT_UPDATE, 0, 0));
            }
            if self.pending.credit_request {
                self.pending.credit_request = false;
                return Some(self.header(OP_CREDIT_REQUEST, 0, 0));
            }
            return None;
        }
    }

    fn can_read_host(&self) -> bool {
        self.state == ConnState::Established
            && self.host_readable
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
    }

    fn read_host(&mut self, max_data: usize, buf: &mut Vec<u8>, now: Instant) -> ReadOutcome {
        if !self.can_read_host() {
            return ReadOutcome::Nothing;
        }
        let credit = self.peer_credit();
        let n = max_data.min(credit as usize).min(MAX_PKT_DATA);
        if n == 0 {
            if credit == 0 && !self.credit_requested {
                self.credit_requested = true;
                self.pending.credit_request = true;
            }
            return ReadOutcome::Nothing;
        }
        buf.resize(n, 0);
        loop {
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    buf.clear();
                    self.host_eof = true;
                    self.pending.shutdown |= SHUTDOWN_SEND;
                    self.check_shutdown(now);
                    return ReadOutcome::Retry;
                }
                Ok(got) => {
                    let got = got.min(n);
                    buf.truncate(got);
                    // got <= MAX_PKT_DATA.
                    self.tx_cnt = self.tx_cnt.wrapping_add(got as u32);
                    return ReadOutcome::Packet(self.header(OP_RW, got as u32, 0));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    buf.clear();
                    self.host_readable = false;
                    return ReadOutcome::Nothing;
                }
                Err(e) => {
                    buf.clear();
                    log::debug!(
                        "vsock: reading host side of {}:{}: {e}; resetting",
                        self.local_port,
                        self.peer_port
                    );
                    self.kill();
                    return ReadOutcome::Retry;
                }
            }
        }
    }

    fn flush_to_host(&mut self, now: Instant) {
        while !self.host_prefix.is_empty() {
            match self.stream.write(&self.host_prefix) {
                Ok(0) => return self.host_write_failed(None),
                Ok(n) => {
                    self.host_prefix.drain(..n.min(self.host_prefix.len()));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => return self.host_write_failed(Some(e)),
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.host_write_failed(None),
                Ok(n) => {
                    let n = n.min(front.len());
                    self.to_host.drain(..n);
                    // n <= CONN_BUF_ALLOC.
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return self.host_write_failed(Some(e)),
            }
        }
        // Tell the guest about freed buffer space once its view of it runs low.
        let guest_view_used = self.rx_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        let guest_view_free = CONN_BUF_ALLOC.saturating_sub(guest_view_used);
        if self.fwd_cnt != self.last_fwd_cnt_sent && guest_view_free < CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
        self.check_shutdown(now);
    }

    fn host_write_failed(&mut self, err: Option<io::Error>) {
        log::debug!(
            "vsock: writing host side of {}:{}: {}; resetting",
            self.local_port,
            self.peer_port,
            err.map_or_else(|| "wrote 0 bytes".to_string(), |e| e.to_string())
        );
        self.kill();
    }

    /// Applies the shutdown state: the guest's SEND shutdown propagates to the host stream once
    /// our buffer is flushed; once neither side will send any more (or the guest closed both
    /// directions), the connection is reset, which is how Linux expects a close to complete.
    fn check_shutdown(&mut self, now: Instant) {
        if self.state != ConnState::Established || self.pending.rst {
            return;
        }
        let drained = self.host_prefix.is_empty() && self.to_host.is_empty();
        if self.guest_shutdown & SHUTDOWN_SEND != 0 && drained && !self.host_write_shut {
            // An error here only means the host side is already gone.
            let _ = self.stream.shutdown_write();
            self.host_write_shut = true;
        }
        let guest_closed = self.guest_shutdown == SHUTDOWN_BOTH;
        let both_done = self.guest_shutdown & SHUTDOWN_SEND != 0 && self.host_eof;
        if guest_closed || both_done {
            if drained {
                self.kill();
            } else if self.deadline.is_none() {
                self.deadline = Some(now + CLOSE_TIMEOUT);
            }
        }
    }

    /// A header from us to the guest; every packet carries our current credit.
    fn header(&mut self, op: u16, len: u32, flags: u32) -> VsockHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
