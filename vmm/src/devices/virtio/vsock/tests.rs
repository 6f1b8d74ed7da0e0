//! End-to-end tests of the device: the real worker thread and sockets, with the test playing the
//! guest driver through mock split queues in guest memory.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{
    VsockHeader, HDR_SIZE, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::*;
use crate::devices::virtio::device::{Interrupt, VIRTIO_MMIO_INT_VRING};
use crate::vstate::memory::GuestMemoryMmap;

pub(super) const GUEST_CID: u64 = 3;
pub(super) const TIMEOUT: Duration = Duration::from_secs(5);
/// rx buffer `i` (descriptor `i`) lives at `RX_BASE + i * RX_STRIDE`.
const RX_BASE: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x2000;
const RX_BUF_LEN: u32 = 4096 + HDR_SIZE as u32;
const TX_BASE: u64 = 0x40_0000;
const TX_STRIDE: u64 = 0x2_0000;
/// Where each queue's used ring goes, relative to its descriptor table (see [`Driver`]).
const USED_RING_OFFSET: u64 = 0x2000;

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("nutshell-vsock-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The guest side: fills the rx queue, posts tx packets, and reads used buffers. It manages the
/// avail rings itself so that descriptors can be recycled and the rings wrap.
///
/// `MockSplitQueue` (virtio-queue 0.17 and 0.18) lays its used ring over the second half of its
/// avail ring (`SplitQueueRing::end` adds the element count, not the byte size), so each queue's
/// used ring is moved to `start + USED_RING_OFFSET` and read directly from memory here.
pub(super) struct Driver<'a> {
    pub(super) mem: &'a GuestMemoryMmap,
    pub(super) rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub(super) txq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    /// rx descriptor indices not currently owned by the device.
    pub(super) rx_free: Vec<u16>,
    pub(super) rx_avail: u16,
    pub(super) rx_seen: u16,
    pub(super) tx_avail: u16,
    pub(super) tx_seen: u16,
}

impl<'a> Driver<'a> {
    /// Returns the driver and the activation context for the device.
    pub(super) fn new(mem: &'a GuestMemoryMmap) -> (Self, ActivateContext, Arc<Interrupt>) {
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x4000), QUEUE_SIZE);
        let evq = MockSplitQueue::create(mem, GuestAddress(0x8000), QUEUE_SIZE);
        let queues: Vec<Queue> = [&rxq, &txq, &evq]
            .iter()
            .map(|q| {
                let mut queue: Queue = q.create_queue().unwrap();
                let used = q.start().0 + USED_RING_OFFSET;
                queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
                queue
            })
            .collect();
        let events: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let driver = Driver {
            mem,
            rxq,
            txq,
            rx_evt: events[0].try_clone().unwrap(),
            tx_evt: events[1].try_clone().unwrap(),
            rx_free: (0..QUEUE_SIZE).rev().collect(),
            rx_avail: 0,
            rx_seen: 0,
            tx_avail: 0,
            tx_seen: 0,
        };
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            queues,
            queue_events: events,
        };
        (driver, ctx, interrupt)
    }

    /// Posts `n` single-descriptor rx buffers of 4 KiB + header, as Linux does.
    pub(super) fn add_rx(&mut self, n: u16) {
        for _ in 0..n {
            let idx = self.rx_free.pop().expect("all rx descriptors posted");
            let addr = RX_BASE + u64::from(idx) * RX_STRIDE;
            let desc = SplitDescriptor::new(addr, RX_BUF_LEN, VRING_DESC_F_WRITE as u16, 0);
            self.rxq
                .desc_table()
                .store(idx, RawDescriptor::from(desc))
                .unwrap();
            push_avail(&self.rxq, &mut self.rx_avail, idx);
        }
        self.rx_evt.write(1).unwrap();
    }

    fn rx_used(&self) -> u16 {
        used_idx(self.mem, &self.rxq)
    }

    /// Waits for the next packet the device put in an rx buffer (the buffer is not reposted).
    pub(super) fn recv(&mut self) -> (VsockHeader, Vec<u8>) {
        let elem = wait_used(self.mem, &self.rxq, &mut self.rx_seen);
        self.take_rx(elem)
    }

    /// Reads the packet in the [`Self::add_rx`] buffer that `elem` returned, and frees it.
    pub(super) fn take_rx(&mut self, elem: VirtqUsedElem) -> (VsockHeader, Vec<u8>) {
        let idx = u16::try_from(elem.id()).unwrap();
        self.rx_free.push(idx);
        let len = elem.len() as usize;
        assert!(len >= HDR_SIZE, "rx used length {len}");
        let mut raw = vec![0u8; len];
        let addr = RX_BASE + u64::from(idx) * RX_STRIDE;
        self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
        let mut hdr = [0u8; HDR_SIZE];
        hdr.copy_from_slice(&raw[..HDR_SIZE]);
        let hdr = VsockHeader::from_bytes(&hdr);
        assert_eq!(hdr.len as usize, len - HDR_SIZE);
        (hdr, raw[HDR_SIZE..].to_vec())
    }

    /// Posts raw tx descriptors at table index `first` (their `next` fields as given) and waits
    /// until the chain is used.
    fn send_descs(&mut self, descs: &[RawDescriptor], first: u16) -> VirtqUsedElem {
        for (i, desc) in descs.iter().enumerate() {
            let idx = first + u16::try_from(i).unwrap();
            self.txq.desc_table().store(idx, *desc).unwrap();
        }
        push_avail(&self.txq, &mut self.tx_avail, first);
        self.tx_evt.write(1).unwrap();
        wait_used(self.mem, &self.txq, &mut self.tx_seen)
    }

    /// Sends a packet as Linux does: header and payload in separate descriptors.
    pub(super) fn send(&mut self, mut hdr: VsockHeader, data: &[u8]) {
        hdr.len = data.len() as u32;
        let slot = self.tx_avail % 32;
        let base = TX_BASE + u64::from(slot) * TX_STRIDE;
        let idx = slot * 2;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        let descs = if data.is_empty() {
            vec![SplitDescriptor::new(base, HDR_SIZE as u32, 0, 0)]
        } else {
            self.mem
                .write_slice(data, GuestAddress(base + 0x1000))
                .unwrap();
            vec![
                SplitDescriptor::new(base, HDR_SIZE as u32, next, idx + 1),
                SplitDescriptor::new(base + 0x1000, data.len() as u32, 0, 0),
            ]
        };
        let raw: Vec<RawDescriptor> = descs.into_iter().map(RawDescriptor::from).collect();
        let used = self.send_descs(&raw, idx);
        assert_eq!((u32::from(idx), used.len()), (used.id(), 0));
    }
}

pub(super) fn push_avail(vq: &MockSplitQueue<'_, GuestMemoryMmap>, pos: &mut u16, head: u16) {
    let slot = usize::from(*pos % QUEUE_SIZE);
    vq.avail().ring().ref_at(slot).unwrap().store(head);
    *pos = pos.wrapping_add(1);
    vq.avail().idx().store(*pos);
}

pub(super) fn used_idx(mem: &GuestMemoryMmap, vq: &MockSplitQueue<'_, GuestMemoryMmap>) -> u16 {
    let used = vq.start().unchecked_add(USED_RING_OFFSET);
    mem.read_obj(used.unchecked_add(2)).unwrap()
}

pub(super) fn wait_used(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    seen: &mut u16,
) -> VirtqUsedElem {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if used_idx(mem, vq) != *seen {
            let slot = u64::from(*seen % QUEUE_SIZE);
            let addr = vq.start().unchecked_add(USED_RING_OFFSET + 4 + 8 * slot);
            let elem: VirtqUsedElem = mem.read_obj(addr).unwrap();
            *seen = seen.wrapping_add(1);
            return elem;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a used buffer"
        );
        thread::sleep(Duration::from_micros(200));
    }
}

pub(super) fn guest(op: u16, src_port: u32, dst_port: u32) -> VsockHeader {
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

pub(super) fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

pub(super) fn new_device(dir: &TempDir) -> Vsock {
    Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: dir.path().join("vsock.sock"),
    })
    .unwrap()
}

pub(super) fn host_client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

pub(super) fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

pub(super) fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// The device closed the socket: EOF, or ECONNRESET when it left input unread.
pub(super) fn assert_eof(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the device to close the socket, got {other:?}"),
    }
}

#[test]
fn device_identity_and_config() {
    let dir = TempDir::new();
    let mut dev = new_device(&dir);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.device_features(), VIRTIO_F_VERSION_1);
    dev.ack_features(VIRTIO_F_VERSION_1 | 1);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    dev.write_config(0, &[9]);
    let mut b = [0u8; 2];
    dev.read_config(0, &mut b);
    assert_eq!(b, [3, 0]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
    // Wrong number of queues.
    let mem = test_mem();
    let (_driver, mut ctx, _irq) = Driver::new(&mem);
    ctx.queues.pop();
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount { expected: 3, .. })
    ));
}

#[test]
fn new_rejects_existing_path_and_bad_cid_and_drop_removes_socket() {
    let dir = TempDir::new();
    let path = dir.path().join("taken");
    fs::write(&path, b"keep me").unwrap();
    let err = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: path.clone(),
    })
    .unwrap_err();
    assert!(
        matches!(&err, VsockError::UdsPathExists { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("taken"));
    assert_eq!(fs::read(&path).unwrap(), b"keep me");

    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        let err = Vsock::new(VsockConfig {
            guest_cid: cid,
            uds_path: dir.path().join("x"),
        })
        .unwrap_err();
        assert!(matches!(err, VsockError::InvalidCid { .. }), "{cid}: {err}");
    }
    let err = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: dir.path().join("missing-dir/s"),
    })
    .unwrap_err();
    assert!(matches!(err, VsockError::Bind { .. }), "{err}");

    let dev = new_device(&dir);
    let sock = dev.uds_path().to_path_buf();
    assert!(sock.exists());
    drop(dev);
    assert!(!sock.exists());
}

#[test]
fn host_initiated_connection_end_to_end() {
    let dir = TempDir::new();
    let mem = test_mem();
    let mut dev = new_device(&dir);
    let (mut drv, ctx, irq) = Driver::new(&mem);
    dev.activate(ctx).unwrap();
    drv.add_rx(8);

    let mut host = host_client(dev.uds_path());
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = drv.recv();
    assert_eq!(
        (req.op, req.type_, req.dst_port),
        (OP_REQUEST, TYPE_STREAM, 1024)
    );
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert!(req.src_port >= 1024);
    assert_eq!(req.buf_alloc, 256 * 1024);
    assert_ne!(irq.status() & VIRTIO_MMIO_INT_VRING, 0);

    drv.send(guest(OP_RESPONSE, 1024, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));

    host.write_all(b"ping").unwrap();
    let (rw, data) = drv.recv();
    assert_eq!(
        (rw.op, rw.src_port, rw.dst_port),
        (OP_RW, req.src_port, 1024)
    );
    assert_eq!(data, b"ping");

    drv.send(guest(OP_RW, 1024, req.src_port), b"pong");
    assert_eq!(read_n(&mut host, 4), b"pong");

    // Bigger than one rx buffer: arrives in several RW packets.
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    host.write_all(&big).unwrap();
    drv.add_rx(8);
    let mut got = Vec::new();
    while got.len() < big.len() {
        let (rw, data) = drv.recv();
        assert_eq!(rw.op, OP_RW);
        assert!(data.len() <= 4096);
        got.extend(data);
    }
    assert_eq!(got, big);

    // The host half-closes: the guest hears SHUTDOWN(SEND), then closes; the host sees EOF.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (sd, _) = drv.recv();
    assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    let mut close = guest(OP_SHUTDOWN, 1024, req.src_port);
    close.flags = SHUTDOWN_BOTH;
    drv.send(close, &[]);
    let (rst, _) = drv.recv();
    assert_eq!(rst.op, OP_RST);
    assert_eof(&mut host);

    let path = dev.uds_path().to_path_buf();
    drop(dev);
    assert!(!path.exists());
}

#[test]
fn guest_initiated_backpressure_and_bad_packets() {
    let dir = TempDir::new();
    let mem = test_mem();
    let mut dev = new_device(&dir);
    let mut port_path = dev.uds_path().as_os_str().to_owned();
    port_path.push("_5000");
    let service = UnixListener::bind(&port_path).unwrap();
    let (mut drv, ctx, _irq) = Driver::new(&mem);
    dev.activate(ctx).unwrap();

    // A malformed tx packet is returned unused and changes nothing.
    let short = SplitDescriptor::new(TX_BASE, 10, 0, 0);
    let used = drv.send_descs(&[RawDescriptor::from(short)], 200);
    assert_eq!((used.id(), used.len()), (200, 0));

    // Exactly one rx buffer, for the RESPONSE.
    drv.add_rx(1);
    drv.send(guest(OP_REQUEST, 2000, 5000), &[]);
    let (resp, _) = drv.recv();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 2000)
    );
    let (mut svc, _) = service.accept().unwrap();
    svc.set_read_timeout(Some(TIMEOUT)).unwrap();

    // No rx buffers: host data waits in the socket.
    svc.write_all(b"hi").unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(drv.rx_used(), 1);
    drv.add_rx(1);
    let (rw, data) = drv.recv();
    assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"hi"[..]));

    drv.add_rx(4);
    drv.send(guest(OP_RW, 2000, 5000), b"yo");
    assert_eq!(read_n(&mut svc, 2), b"yo");

    // Nobody listens on host port 5001.
    drv.send(guest(OP_REQUEST, 2001, 5001), &[]);
    let (rst, _) = drv.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 5001, 2001));

    // Host connection refused by the guest.
    let mut host = host_client(dev.uds_path());
    host.write_all(b"CONNECT 77\n").unwrap();
    let (req, _) = drv.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 77));
    drv.send(guest(OP_RST, 77, req.src_port), &[]);
    assert_eof(&mut host);

    // Guest RST on the forwarded connection closes the service's socket.
    drv.send(guest(OP_RST, 2000, 5000), &[]);
    assert_eof(&mut svc);
}

#[test]
fn reset_closes_connections_and_reactivation_works() {
    let dir = TempDir::new();
    let mem = test_mem();
    let mut dev = new_device(&dir);
    let (mut drv, ctx, _irq) = Driver::new(&mem);
    dev.activate(ctx).unwrap();
    drv.add_rx(2);
    let mut host = host_client(dev.uds_path());
    host.write_all(b"CONNECT 5\n").unwrap();
    let (req, _) = drv.recv();
    drv.send(guest(OP_RESPONSE, 5, req.src_port), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));

    dev.reset();
    assert_eof(&mut host);

    let mem2 = test_mem();
    let (mut drv2, ctx2, _irq2) = Driver::new(&mem2);
    dev.activate(ctx2).unwrap();
    drv2.add_rx(1);
    let mut host2 = host_client(dev.uds_path());
    host2.write_all(b"CONNECT 6\n").unwrap();
    let (req2, _) = drv2.recv();
    assert_eq!((req2.op, req2.dst_port), (OP_REQUEST, 6));
}

/// Pattern byte `i` of a bulk transfer.
fn pattern(i: usize, salt: u8) -> u8 {
    (i % 251) as u8 ^ salt
}

#[test]
fn bulk_transfer_respects_credit_both_ways() {
    const TOTAL: usize = 1 << 20;
    const GUEST_BUF: u32 = 64 * 1024;
    let dir = TempDir::new();
    let mem = test_mem();
    let mut dev = new_device(&dir);
    let mut port_path = dev.uds_path().as_os_str().to_owned();
    port_path.push("_6000");
    let service = UnixListener::bind(&port_path).unwrap();
    let (mut drv, ctx, _irq) = Driver::new(&mem);
    dev.activate(ctx).unwrap();
    drv.add_rx(64);

    // The guest connects with a 64 KiB receive buffer.
    let mut fwd_cnt = 0u32;
    let pkt = |op: u16, fwd_cnt: u32| VsockHeader {
        buf_alloc: GUEST_BUF,
        fwd_cnt,
        ..guest(op, 3000, 6000)
    };
    drv.send(pkt(OP_REQUEST, 0), &[]);
    let (resp, _) = drv.recv();
    drv.add_rx(1);
    assert_eq!(resp.op, OP_RESPONSE);
    let (svc, _) = service.accept().unwrap();

    // Host to guest: the device must stay within the guest's credit, which the guest returns
    // with CREDIT_UPDATEs as it consumes data.
    let mut writer = svc.try_clone().unwrap();
    let write_thread = thread::spawn(move || {
        let data: Vec<u8> = (0..TOTAL).map(|i| pattern(i, 0)).collect();
        writer.write_all(&data).unwrap();
    });
    let mut got = 0usize;
    while got < TOTAL {
        let (hdr, data) = drv.recv();
        drv.add_rx(1);
        match hdr.op {
            OP_RW => {
                for (i, b) in data.iter().enumerate() {
                    assert_eq!(*b, pattern(got + i, 0), "byte {}", got + i);
                }
                got += data.len();
                let in_flight = got as u32 - fwd_cnt;
                assert!(in_flight <= GUEST_BUF, "device overran guest credit");
                if in_flight >= GUEST_BUF / 2 {
                    fwd_cnt = got as u32;
                    drv.send(pkt(OP_CREDIT_UPDATE, fwd_cnt), &[]);
                }
            }
            OP_CREDIT_REQUEST => {
                fwd_cnt = got as u32;
                drv.send(pkt(OP_CREDIT_UPDATE, fwd_cnt), &[]);
            }
            op => panic!("unexpected op {op}"),
        }
    }
    write_thread.join().unwrap();

    // Guest to host in 64 KiB packets, within the device's advertised buffer.
    let mut reader = svc;
    reader.set_read_timeout(Some(TIMEOUT)).unwrap();
    let read_thread = thread::spawn(move || {
        let mut data = vec![0u8; TOTAL];
        reader.read_exact(&mut data).unwrap();
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b, pattern(i, 0x5a), "byte {i}");
        }
    });
    let all: Vec<u8> = (0..TOTAL).map(|i| pattern(i, 0x5a)).collect();
    let (mut sent, mut dev_fwd, mut dev_buf) = (0usize, resp.fwd_cnt, resp.buf_alloc);
    while sent < TOTAL {
        let chunk = (TOTAL - sent).min(64 * 1024);
        while sent as u32 - dev_fwd + chunk as u32 > dev_buf {
            let (hdr, _) = drv.recv();
            drv.add_rx(1);
            match hdr.op {
                OP_CREDIT_UPDATE => (dev_fwd, dev_buf) = (hdr.fwd_cnt, hdr.buf_alloc),
                // Left over from the first half, when the device ran out of guest credit.
                OP_CREDIT_REQUEST => drv.send(pkt(OP_CREDIT_UPDATE, fwd_cnt), &[]),
                op => panic!("unexpected op {op}"),
            }
        }
        drv.send(pkt(OP_RW, fwd_cnt), &all[sent..sent + chunk]);
        sent += chunk;
    }
    read_thread.join().unwrap();
}
