//! Muxer tests over real Unix sockets, without queues or a worker thread: the test dispatches
//! epoll events itself and plays the guest by calling `process_guest_pkt` / `next_rx_pkt`.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EpollEvent;

use super::*;
use crate::devices::virtio::vsock::packet::{
    OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_SEND,
};
use crate::devices::virtio::vsock::tests::{
    assert_eof, host_client, read_line, read_n as read_exact_n, TempDir,
};

const GUEST_CID: u64 = 3;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

fn new_muxer(dir: &TempDir) -> (Muxer, PathBuf) {
    let path = dir.path().join("v.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let muxer = Muxer::new(GUEST_CID, path.clone(), listener, Duration::from_secs(2)).unwrap();
    (muxer, path)
}

/// Dispatches the events epoll reports within `timeout_ms`.
fn pump(m: &mut Muxer, timeout_ms: i32) {
    let mut events = [EpollEvent::default(); 16];
    let n = m.epoll().wait(timeout_ms, &mut events).unwrap();
    for e in &events[..n] {
        m.handle_event(e.data(), e.event_set(), Instant::now());
    }
}

/// Pumps until the muxer has something for the guest, and returns it.
fn expect_rx(m: &mut Muxer) -> (VsockHeader, Vec<u8>) {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut buf = Vec::new();
        if let Some(hdr) = m.next_rx_pkt(4096, &mut buf, Instant::now()) {
            return (hdr, buf);
        }
        assert!(Instant::now() < deadline, "no packet for the guest");
        pump(m, 20);
    }
}

fn no_rx(m: &mut Muxer) {
    let mut buf = Vec::new();
    assert_eq!(m.next_rx_pkt(4096, &mut buf, Instant::now()), None);
}

fn guest(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
    VsockHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

fn send(m: &mut Muxer, mut hdr: VsockHeader, data: &[u8]) {
    hdr.len = data.len() as u32;
    m.process_guest_pkt(&hdr, data, Instant::now());
}

fn host_connect(m: &mut Muxer, path: &std::path::Path, port: u32) -> (UnixStream, VsockHeader) {
    let mut host = host_client(path);
    host.write_all(format!("CONNECT {port}\n").as_bytes())
        .unwrap();
    let (req, _) = expect_rx(m);
    assert_eq!(req.op, OP_REQUEST);
    (host, req)
}

#[test]
fn connect_line_parsing() {
    assert_eq!(parse_connect_line(b"CONNECT 1024").unwrap(), 1024);
    assert_eq!(parse_connect_line(b"CONNECT 0\r").unwrap(), 0);
    assert_eq!(parse_connect_line(b"CONNECT 4294967295").unwrap(), u32::MAX);
    for bad in [
        &b"CONNECT abc"[..],
        b"connect 1",
        b"CONNECT",
        b"CONNECT ",
        b"CONNECT -1",
        b"CONNECT +1",
        b"CONNECT 4294967296",
        b"CONNECT 12 34",
        b"\xff\xfe",
        b"",
    ] {
        assert!(
            matches!(parse_connect_line(bad), Err(ConnectLineError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn host_connect_handshake_and_data() {
    let dir = TempDir::new();
    let (mut m, path) = new_muxer(&dir);
    let mut host = host_client(&path);
    // Bytes after the newline belong to the stream and must survive the handshake.
    host.write_all(b"CONNECT 1024\nearly").unwrap();
    let (req, _) = expect_rx(&mut m);
    assert_eq!(
        (req.op, req.dst_port, req.type_),
        (OP_REQUEST, 1024, TYPE_STREAM)
    );
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert!(req.src_port >= 1024);
    no_rx(&mut m);

    send(&mut m, guest(OP_RESPONSE, 1024, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    let (rw, data) = expect_rx(&mut m);
    assert_eq!(
        (rw.op, rw.src_port, rw.dst_port),
        (OP_RW, req.src_port, 1024)
    );
    assert_eq!(data, b"early");

    send(&mut m, guest(OP_RW, 1024, req.src_port), b"from guest");
    assert_eq!(read_exact_n(&mut host, 10), b"from guest");

    // A second host client gets a different host port.
    let (_host2, req2) = host_connect(&mut m, &path, 1024);
    assert_ne!(req2.src_port, req.src_port);
    assert_eq!(m.connection_count(), 2);
}

#[test]
fn malformed_connect_closes_only_that_client() {
    let dir = TempDir::new();
    let (mut m, path) = new_muxer(&dir);
    let (mut good, req) = host_connect(&mut m, &path, 7);

    let bad_inputs: [&[u8]; 3] = [b"HELLO 1\n", &[b'C'; 40], b"CONNECT x\n"];
    for input in bad_inputs {
        let mut bad = host_client(&path);
        bad.write_all(input).unwrap();
        pump(&mut m, 100);
        assert_eof(&mut bad);
    }
    // No newline before EOF.
    let mut bad = host_client(&path);
    bad.write_all(b"CONNECT 12").unwrap();
    bad.shutdown(std::net::Shutdown::Write).unwrap();
    pump(&mut m, 100);
    assert_eof(&mut bad);
    no_rx(&mut m);

    // The good client is unaffected.
    send(&mut m, guest(OP_RESPONSE, 7, req.src_port), &[]);
    assert_eq!(read_line(&mut good), format!("OK {}", req.src_port));
    assert_eq!(m.connection_count(), 1);
}

#[test]
fn silent_client_and_unanswered_request_time_out() {
    let dir = TempDir::new();
    let (mut m, path) = new_muxer(&dir);
    let mut silent = host_client(&path);
    pump(&mut m, 100);
    let (mut host, req) = host_connect(&mut m, &path, 9);
    assert!(m.next_deadline().is_some());
    m.handle_timeouts(Instant::now() + Duration::from_secs(3));
    assert_eof(&mut silent);
    let (rst, _) = expect_rx(&mut m);
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (OP_RST, req.src_port, 9)
    );
    assert_eof(&mut host);
    assert_eq!(m.connection_count(), 0);
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn guest_rst_closes_host_client() {
    let dir = TempDir::new();
    let (mut m, path) = new_muxer(&dir);
    let (mut host, req) = host_connect(&mut m, &path, 1234);
    send(&mut m, guest(OP_RST, 1234, req.src_port), &[]);
    assert_eof(&mut host);
    assert_eq!(m.connection_count(), 0);
    no_rx(&mut m);
}

#[test]
fn guest_connect_forwards_to_port_socket() {
    let dir = TempDir::new();
    let (mut m, path) = new_muxer(&dir);
    let mut port_path = path.clone().into_os_string();
    port_path.push("_5000");
    let service = UnixListener::bind(&port_path).unwrap();

    send(&mut m, guest(OP_REQUEST, 2000, 5000), &[]);
    let (resp, _) = expect_rx(&mut m);
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 2000)
    );
    let (mut svc, _) = service.accept().unwrap();
    svc.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    svc.write_all(b"hi").unwrap();
    let (rw, data) = expect_rx(&mut m);
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"hi"[..]));
    send(&mut m, guest(OP_RW, 2000, 5000), b"yo");
    assert_eq!(read_exact_n(&mut svc, 2), b"yo");

    // The service closes its end: the guest hears SHUTDOWN(SEND), may still send, then closes.
    svc.shutdown(std::net::Shutdown::Write).unwrap();
    let (sd, _) = expect_rx(&mut m);
    assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    send(&mut m, guest(OP_RW, 2000, 5000), b"bye");
    assert_eq!(read_exact_n(&mut svc, 3), b"bye");
    let mut close = guest(OP_SHUTDOWN, 2000, 5000);
    close.flags = SHUTDOWN_BOTH;
    send(&mut m, close, &[]);
    let (rst, _) = expect_rx(&mut m);
    assert_eq!(rst.op, OP_RST);
    assert_eof(&mut svc);
    assert_eq!(m.connection_count(), 0);

    // Nobody listens on port 5001.
    send(&mut m, guest(OP_REQUEST, 2001, 5001), &[]);
    let (rst, _) = expect_rx(&mut m);
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 2001));
    assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, GUEST_CID));
}

#[test]
fn foreign_and_unknown_packets() {
    let dir = TempDir::new();
    let (mut m, _path) = new_muxer(&dir);
    let mut wrong_src = guest(OP_REQUEST, 1, 2);
    wrong_src.src_cid = 4;
    send(&mut m, wrong_src, &[]);
    let mut wrong_dst = guest(OP_REQUEST, 1, 2);
    wrong_dst.dst_cid = 7;
    send(&mut m, wrong_dst, &[]);
    send(&mut m, guest(OP_RST, 1, 2), &[]);
    no_rx(&mut m);

    let mut dgram = guest(OP_REQUEST, 1, 2);
    dgram.type_ = 2;
    send(&mut m, dgram, &[]);
    let (rst, _) = expect_rx(&mut m);
    assert_eq!((rst.op, rst.type_), (OP_RST, 2));

    send(&mut m, guest(OP_RW, 1, 2), b"stray");
    let (rst, _) = expect_rx(&mut m);
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 2, 1));

    // The RST backlog is bounded.
    for _ in 0..MAX_PENDING_RSTS + 10 {
        send(&mut m, guest(OP_RW, 1, 2), b"x");
    }
    assert_eq!(m.rx_backlog(), MAX_PENDING_RSTS);
}
