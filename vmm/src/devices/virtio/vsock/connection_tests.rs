//! Connection state machine tests over an in-memory host stream.

use super::*;

const GUEST_CID: u64 = 3;

/// An in-memory host stream: `input` is what the host client wrote, `output` what it gets.
#[derive(Default)]
struct MockStream {
    input: VecDeque<u8>,
    input_eof: bool,
    output: Vec<u8>,
    /// Bytes the stream still accepts before WouldBlock (None: unlimited).
    write_room: Option<usize>,
    write_shut: bool,
}

impl Read for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.input_eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.input.len());
        for (d, s) in buf.iter_mut().zip(self.input.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}

impl Write for MockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.write_room {
            Some(0) => return Err(ErrorKind::WouldBlock.into()),
            Some(room) => room.min(buf.len()),
            None => buf.len(),
        };
        if let Some(room) = self.write_room.as_mut() {
            *room -= n;
        }
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HostStream for MockStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}

fn guest_pkt(op: u16, len: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1024,
        dst_port: 5000,
        len,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc,
        fwd_cnt,
    }
}

fn next(c: &mut Connection<MockStream>, buf: &mut Vec<u8>) -> Option<VsockHeader> {
    c.next_rx_pkt(4096, buf, Instant::now())
}

fn local_conn(now: Instant) -> Connection<MockStream> {
    Connection::new_local(
        MockStream::default(),
        GUEST_CID,
        5000,
        1024,
        now,
        Duration::from_secs(2),
    )
}

#[test]
fn request_response_rw_shutdown_rst() {
    let now = Instant::now();
    let mut buf = Vec::new();
    let mut c = local_conn(now);
    assert_eq!(c.state(), ConnState::LocalInit);
    // A RESPONSE before the REQUEST left is a guess, and ignored.
    c.recv_pkt(&guest_pkt(OP_RESPONSE, 0, 0, 8192, 0), &[], now);
    assert_eq!(c.state(), ConnState::LocalInit);
    let req = next(&mut c, &mut buf).unwrap();
    assert_eq!(
        (req.op, req.src_port, req.dst_port),
        (OP_REQUEST, 5000, 1024)
    );
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    assert!(next(&mut c, &mut buf).is_none());

    c.recv_pkt(&guest_pkt(OP_RESPONSE, 0, 0, 8192, 0), &[], now);
    assert_eq!(c.state(), ConnState::Established);
    assert_eq!(c.deadline(), None);
    assert_eq!(c.stream().output, b"OK 5000\n");

    // guest -> host
    c.recv_pkt(&guest_pkt(OP_RW, 5, 0, 8192, 0), b"hello", now);
    assert_eq!(c.stream().output, b"OK 5000\nhello");
    // host -> guest
    c.stream.input.extend(b"world");
    c.host_readable();
    assert!(c.has_pending_rx());
    let rw = next(&mut c, &mut buf).unwrap();
    assert_eq!((rw.op, rw.len, rw.fwd_cnt), (OP_RW, 5, 5));
    assert_eq!(buf, b"world");
    assert!(next(&mut c, &mut buf).is_none());
    assert!(!c.has_pending_rx(), "WouldBlock clears readability");

    // Guest stops sending: the host sees EOF on its read side.
    c.recv_pkt(&guest_pkt(OP_SHUTDOWN, 0, SHUTDOWN_SEND, 8192, 5), &[], now);
    assert!(c.stream().write_shut);
    assert_eq!(c.state(), ConnState::Established);
    // Host closes too: neither side will send again, so the connection is reset.
    c.stream.input_eof = true;
    c.host_readable();
    let rst = next(&mut c, &mut buf).unwrap();
    assert_eq!(rst.op, OP_RST);
    assert!(c.is_closed());
    assert!(next(&mut c, &mut buf).is_none());
}

#[test]
fn guest_close_gets_rst_and_guest_rst_closes() {
    let now = Instant::now();
    let mut buf = Vec::new();
    let req = guest_pkt(OP_REQUEST, 0, 0, 4096, 0);
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RESPONSE);
    c.recv_pkt(&guest_pkt(OP_SHUTDOWN, 0, SHUTDOWN_BOTH, 4096, 0), &[], now);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
    assert!(c.is_closed());

    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    c.recv_pkt(&guest_pkt(OP_RST, 0, 0, 0, 0), &[], now);
    assert!(c.is_closed());
    assert!(next(&mut c, &mut buf).is_none(), "no reply to a RST");
}

#[test]
fn guest_rst_or_timeout_while_connecting() {
    let now = Instant::now();
    let mut buf = Vec::new();
    let mut c = local_conn(now);
    next(&mut c, &mut buf).unwrap();
    c.recv_pkt(&guest_pkt(OP_RST, 0, 0, 0, 0), &[], now);
    assert!(c.is_closed());

    // Unanswered REQUEST: reset at the deadline.
    let mut c = local_conn(now);
    next(&mut c, &mut buf).unwrap();
    c.on_timeout(now + Duration::from_secs(1));
    assert!(!c.is_closed());
    c.on_timeout(now + Duration::from_secs(2));
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
    assert!(c.is_closed());

    // Timed out before the REQUEST even left: closes silently.
    let mut c = local_conn(now);
    c.on_timeout(now + Duration::from_secs(3));
    assert!(c.is_closed());
    assert!(next(&mut c, &mut buf).is_none());
}

#[test]
fn never_exceeds_peer_credit() {
    let now = Instant::now();
    let mut buf = Vec::new();
    // The guest has a 10-byte buffer.
    let req = guest_pkt(OP_REQUEST, 0, 0, 10, 0);
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    next(&mut c, &mut buf).unwrap();
    c.stream.input.extend(&[7u8; 100]);
    c.host_readable();
    let rw = next(&mut c, &mut buf).unwrap();
    assert_eq!((rw.op, rw.len), (OP_RW, 10));
    assert_eq!(c.peer_credit(), 0);
    // Out of credit: one CREDIT_REQUEST, then nothing until the guest frees space.
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_CREDIT_REQUEST);
    assert!(next(&mut c, &mut buf).is_none());
    assert!(!c.has_pending_rx());
    // A credit update that frees nothing changes nothing.
    c.recv_pkt(&guest_pkt(OP_CREDIT_UPDATE, 0, 0, 10, 0), &[], now);
    assert!(next(&mut c, &mut buf).is_none());
    // The guest consumed 4 bytes.
    c.recv_pkt(&guest_pkt(OP_CREDIT_UPDATE, 0, 0, 10, 4), &[], now);
    assert!(c.has_pending_rx());
    let rw = next(&mut c, &mut buf).unwrap();
    assert_eq!(rw.len, 4);
    // Also bounded by the rx buffer size.
    c.recv_pkt(&guest_pkt(OP_CREDIT_UPDATE, 0, 0, 1000, 14), &[], now);
    let rw = c.next_rx_pkt(3, &mut buf, now).unwrap();
    assert_eq!((rw.len, buf.len()), (3, 3));
    let mut sent = 10 + 4 + 3;
    while let Some(p) = next(&mut c, &mut buf) {
        assert_eq!(p.op, OP_RW);
        sent += p.len;
    }
    assert_eq!(sent, 100);
}

#[test]
fn credit_update_emitted_and_credit_request_answered() {
    let now = Instant::now();
    let mut buf = Vec::new();
    let req = guest_pkt(OP_REQUEST, 0, 0, 4096, 0);
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    next(&mut c, &mut buf).unwrap();

    c.recv_pkt(&guest_pkt(OP_CREDIT_REQUEST, 0, 0, 4096, 0), &[], now);
    let up = next(&mut c, &mut buf).unwrap();
    assert_eq!(
        (up.op, up.buf_alloc, up.fwd_cnt),
        (OP_CREDIT_UPDATE, CONN_BUF_ALLOC, 0)
    );

    // The host is slow: data piles up, no update while the guest believes it has room.
    c.stream.write_room = Some(0);
    let chunk = vec![1u8; MAX_PKT_DATA];
    for _ in 0..3 {
        c.recv_pkt(
            &guest_pkt(OP_RW, chunk.len() as u32, 0, 4096, 0),
            &chunk,
            now,
        );
    }
    assert!(next(&mut c, &mut buf).is_none());
    // The host drains: the guest's view (192 KiB of 256 used) is low, so an update goes out.
    c.stream.write_room = None;
    c.host_writable(now);
    let up = next(&mut c, &mut buf).unwrap();
    assert_eq!(
        (up.op, up.fwd_cnt),
        (OP_CREDIT_UPDATE, 3 * MAX_PKT_DATA as u32)
    );
    assert!(next(&mut c, &mut buf).is_none());

    // Small writes with plenty of room left need no update.
    c.recv_pkt(&guest_pkt(OP_RW, 10, 0, 4096, 0), &[2u8; 10], now);
    assert!(next(&mut c, &mut buf).is_none());

    // Overrunning the advertised buffer resets the connection.
    c.stream.write_room = Some(0);
    for _ in 0..5 {
        c.recv_pkt(
            &guest_pkt(OP_RW, chunk.len() as u32, 0, 4096, 0),
            &chunk,
            now,
        );
    }
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
    assert!(c.is_closed());
}

#[test]
fn close_waits_for_flush_then_times_out() {
    let now = Instant::now();
    let mut buf = Vec::new();
    let req = guest_pkt(OP_REQUEST, 0, 0, 4096, 0);
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    next(&mut c, &mut buf).unwrap();
    c.stream.write_room = Some(2);
    c.recv_pkt(&guest_pkt(OP_RW, 5, 0, 4096, 0), b"abcde", now);
    c.recv_pkt(&guest_pkt(OP_SHUTDOWN, 0, SHUTDOWN_BOTH, 4096, 0), &[], now);
    assert!(next(&mut c, &mut buf).is_none(), "still flushing");
    assert!(!c.stream().write_shut);
    c.stream.write_room = Some(2);
    c.host_writable(now);
    assert!(next(&mut c, &mut buf).is_none());
    c.on_timeout(now + CLOSE_TIMEOUT);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
    assert_eq!(c.stream().output, b"abcd");

    // Flushed in time: SHUTDOWN reaches the host, then RST.
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    next(&mut c, &mut buf).unwrap();
    c.stream.write_room = Some(0);
    c.recv_pkt(&guest_pkt(OP_RW, 3, 0, 4096, 0), b"xyz", now);
    c.recv_pkt(&guest_pkt(OP_SHUTDOWN, 0, SHUTDOWN_BOTH, 4096, 0), &[], now);
    c.stream.write_room = None;
    c.host_writable(now);
    assert!(c.stream().write_shut);
    assert_eq!(c.stream().output, b"xyz");
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
}

#[test]
fn protocol_violations_reset() {
    let now = Instant::now();
    let mut buf = Vec::new();
    // Data before the RESPONSE.
    let mut c = local_conn(now);
    next(&mut c, &mut buf).unwrap();
    c.recv_pkt(&guest_pkt(OP_RW, 1, 0, 4096, 0), b"x", now);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
    // Data after SHUTDOWN(SEND).
    let req = guest_pkt(OP_REQUEST, 0, 0, 4096, 0);
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    next(&mut c, &mut buf).unwrap();
    c.recv_pkt(&guest_pkt(OP_SHUTDOWN, 0, SHUTDOWN_SEND, 4096, 0), &[], now);
    c.recv_pkt(&guest_pkt(OP_RW, 1, 0, 4096, 0), b"x", now);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
    // Unknown op.
    let mut c = Connection::new_peer(MockStream::default(), GUEST_CID, &req);
    c.recv_pkt(&guest_pkt(42, 0, 0, 4096, 0), &[], now);
    assert_eq!(next(&mut c, &mut buf).unwrap().op, OP_RST);
}
