//! Seeded fuzz tests: the test plays a hostile guest driver. It posts thousands of malformed
//! descriptor chains, and well-formed chains carrying hostile FUSE requests, on both queues. The
//! device must return every chain it can name (a head outside the queue has no used-ring entry
//! to go to) with a used length it can stand by, never panic or hang, keep serving real requests,
//! and never touch anything outside the shared directory.
//!
//! What the device promises for a chain (learnt from `worker.rs` and fuse-backend-rs 0.14):
//! - a chain with any buffer outside guest memory, or with less than a FUSE in-header to read,
//!   is returned with used length 0 and nothing written;
//! - otherwise the used length is the length of the reply written at the start of the writable
//!   buffers (so at most their total), or 0 where the request has no reply (FORGET,
//!   BATCH_FORGET, INTERRUPT, DESTROY) or fuse-backend-rs gave up on it (a body it could not
//!   decode, a reply that does not fit: a Linux guest reads the reply's own header, not the used
//!   length, and never sends such requests);
//! - a reply names the request's `unique`, gives its own length, and an error of 0 or a negated
//!   errno, alone: an unknown opcode gets ENOSYS, a request longer than the server takes ENOMEM.
//!
//! After every batch the worker thread must be alive and serve INIT, then LOOKUP, OPEN, READ
//! and RELEASE of a file the host just wrote, and FORGET on the high-priority queue; and nothing
//! beside the share (`outside/`, reached by links and names in the share) may have changed.
//!
//! These tests found a bug of fuse-backend-rs 0.14 that let a guest read a host file outside the
//! share (READ or WRITE flags that `fcntl(F_SETFL)` refuses closed the handle's host fd but kept
//! the handle); the device now serves the passthrough through `guarded_passthrough`, and the fuzzer
//! sends every flag, O_DIRECT, O_NOATIME, O_PATH and O_ASYNC included.
//!
//! The generator is a fixed-seed xorshift64, so a run replays exactly; every assertion names the
//! seed and the batch, and the seed is printed at the start of each test.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::mem::size_of;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;

use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, ForgetIn, InHeader, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, ROOT_ID,
};
use fuse_backend_rs::api::server::MAX_BUFFER_SIZE;
use virtio_queue::desc::split::VirtqUsedElem;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use self::requests::{fuzz_request, opcode, unknown, Known};

use super::tests::{name, new_device, read_obj, test_mem, Driver, TempDir};
use super::worker::{HIPRIO_QUEUE, REQUEST_QUEUE};
use super::{Fs, VirtioDevice, QUEUE_SIZES};
use crate::devices::virtio::fuzz_support::{
    fuzz_heads, fuzz_table, post_batch, split_desc, split_len, walk_chain, worker_alive, Buf,
    FuzzQueue, Layout, Rng, Walk, INDIRECT, NEXT, WRITE,
};
use crate::vstate::memory::GuestMemoryMmap;

const SEED: u64 = 0x2545_f491_4f6c_dd1d;
/// End of [`test_mem`].
const MEM_END: u64 = 0x100_0000;
/// Every writable buffer inside memory goes between `REPLY_BASE` and `SCRATCH`, above the
/// harness's rings (below 0x2_0000) and request buffers (0x10_0000 to 0x14_0000).
const REPLY_BASE: u64 = 0x20_0000;
/// Requests and indirect tables, which the device only reads.
const SCRATCH: u64 = 0x80_0000;
const IN_HDR: u32 = size_of::<InHeader>() as u32;
const OUT_HDR: u32 = size_of::<OutHeader>() as u32;
const LAYOUT: Layout = Layout {
    mem_end: MEM_END,
    scratch: SCRATCH,
    hdr: IN_HDR,
    max_data: 0x2000,
    replies: Some(REPLY_BASE..SCRATCH),
};
/// The longest request fuse-backend-rs serves (`MAX_BUFFER_SIZE` plus its private
/// `BUFFER_HEADER_SIZE`); a longer one gets ENOMEM.
const MAX_REQUEST: u32 = MAX_BUFFER_SIZE + 0x1000;

const CHAIN_BATCHES: usize = 64;
const CHAIN_BATCH: usize = 128;
const REQUEST_BATCHES: usize = 120;
/// Requests per batch on the request queue (7 descriptors at most each); fewer on the
/// high-priority queue, whose table has 128 entries.
const REQUEST_BATCH: usize = 96;
/// Request `i` of a batch: its readable buffers from `SCRATCH + i * SLOT`, its writable ones
/// from `REPLY_BASE + i * SLOT`, its indirect table at `TABLES + i * 0x100`.
const SLOT: u64 = 0x8000;
const TABLES: u64 = SCRATCH + REQUEST_BATCH as u64 * SLOT;
/// The file the proof requests read; no fuzzed name reaches it.
const PROBE: &str = "probe.txt";

mod requests;

// ---- the shared directory and what lies beside it ----

/// `dir/share` (the shared directory, with links that point out of it) beside `dir/outside`,
/// which the guest must never reach.
struct Sandbox {
    dir: TempDir,
    share: PathBuf,
    /// The absolute path of `outside/marker`, as a fuzzed name.
    marker: Vec<u8>,
}

impl Sandbox {
    fn new() -> Self {
        let dir = TempDir::new();
        let share = dir.path().join("share");
        let outside = dir.path().join("outside");
        fs::create_dir_all(share.join("sub")).unwrap();
        fs::create_dir_all(outside.join("nested")).unwrap();
        fs::write(share.join("hello.txt"), b"hello\n").unwrap();
        fs::write(share.join("sub/inner.txt"), b"inner\n").unwrap();
        let marker = outside.join("marker");
        fs::write(&marker, b"do not touch\n").unwrap();
        symlink(&marker, share.join("abs-link")).unwrap();
        symlink("../outside/marker", share.join("up-link")).unwrap();
        symlink("../outside", share.join("dir-link")).unwrap();
        let marker = marker.into_os_string().into_encoded_bytes();
        Sandbox { dir, share, marker }
    }

    /// Everything under the sandbox but the share, with the metadata any change shows in (ctime
    /// moves with every write, chmod, chown, link or xattr change).
    fn outside_state(&self) -> Vec<String> {
        let mut state = Vec::new();
        let mut todo = vec![self.dir.path().to_owned()];
        while let Some(path) = todo.pop() {
            let meta = fs::symlink_metadata(&path).unwrap();
            let mut line = format!(
                "{} {:o} {}:{} n{} s{} m{}.{} c{}.{}",
                path.display(),
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.nlink(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec()
            );
            if meta.is_file() {
                line += &format!(" {:?}", fs::read(&path).unwrap());
            } else if meta.is_dir() {
                let mut names: Vec<_> = fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                names.sort();
                line += &format!(" {names:?}");
                todo.extend(names.into_iter().filter(|p| *p != self.share));
            }
            state.push(line);
        }
        state
    }

    /// Writes the probe file afresh (whatever the fuzzer made of the share's root) and returns
    /// its content. Whatever holds the name is removed first and the file created with
    /// `O_EXCL`, so that no link the guest left is followed on the host.
    fn write_probe(&self, batch: &str) -> Vec<u8> {
        fs::set_permissions(&self.share, fs::Permissions::from_mode(0o755)).unwrap();
        let path = self.share.join(PROBE);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path).unwrap(),
            Ok(_) => fs::remove_file(&path).unwrap(),
            Err(_) => {}
        }
        let content = format!("probe after {batch}\n").into_bytes();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        file.write_all(&content).unwrap();
        content
    }
}

impl Drop for Sandbox {
    /// Opens up every directory the guest left in the share (without following links), so that
    /// the `TempDir` can remove it all whatever modes the guest set, even when not run as root.
    fn drop(&mut self) {
        let mut todo = vec![self.share.clone()];
        while let Some(dir) = todo.pop() {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let is_dir = |e: &fs::DirEntry| e.file_type().is_ok_and(|t| t.is_dir());
            todo.extend(entries.flatten().filter(is_dir).map(|e| e.path()));
        }
    }
}

/// Writes a random request at `addr` of the scratch area (as much as fits in memory).
fn write_request(mem: &GuestMemoryMmap, rng: &mut Rng, known: &Known, addr: u64) {
    let unique = rng.next();
    let (_, bytes) = fuzz_request(rng, known, unique);
    let room = (MEM_END - addr).min(bytes.len() as u64) as usize;
    mem.write_slice(&bytes[..room], GuestAddress(addr)).unwrap();
}

// ---- the harness ----

/// Queue `q` of the harness's driver, as [`FuzzQueue`] drives it.
struct FsQueue<'d, 'a> {
    drv: &'d mut Driver<'a>,
    q: usize,
}

impl FuzzQueue for FsQueue<'_, '_> {
    fn queue(&self) -> &MockSplitQueue<'_, GuestMemoryMmap> {
        &self.drv.queues[self.q]
    }

    fn size(&self) -> u16 {
        QUEUE_SIZES[self.q]
    }

    fn push(&mut self, head: u16) {
        self.drv.push_avail(self.q, head);
    }

    fn notify(&mut self) {
        self.drv.events[self.q].write(1).unwrap();
    }

    fn try_used(&mut self) -> Option<VirtqUsedElem> {
        self.drv.try_used(self.q)
    }
}

/// The first `len` bytes of the buffers `bufs`.
fn gather(mem: &GuestMemoryMmap, bufs: &[Buf], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bufs {
        let n = b.len.min(len - out.len() as u32) as usize;
        let mut chunk = vec![0u8; n];
        mem.read_slice(&mut chunk, GuestAddress(b.addr)).unwrap();
        out.extend(chunk);
    }
    out
}

/// A test's device, guest driver and shared directory (dropped in this order: the device stops
/// before the directory goes).
struct Setup<'a> {
    dev: Fs,
    drv: Driver<'a>,
    sandbox: Sandbox,
    known: Known,
    /// [`Sandbox::outside_state`] before the guest came.
    outside: Vec<String>,
}

impl<'a> Setup<'a> {
    fn new(mem: &'a GuestMemoryMmap, test: &str) -> Self {
        LAYOUT.start(mem, SEED, test);
        let sandbox = Sandbox::new();
        let outside = sandbox.outside_state();
        let known = Known::new(sandbox.marker.clone());
        let mut dev = new_device(&sandbox.share);
        let (drv, ctx, _irq) = Driver::new(mem);
        dev.activate(ctx).unwrap();
        Setup {
            dev,
            drv,
            sandbox,
            known,
            outside,
        }
    }

    /// After a batch: the worker lives, serves real requests on both queues (INIT, then a
    /// lookup, open and read of a file the host just wrote), and nothing outside the share
    /// changed.
    fn check_device(&mut self, ctx: &str) {
        assert!(
            worker_alive(self.dev.worker.as_ref()),
            "{ctx}: the worker thread died"
        );
        let content = self.sandbox.write_probe(ctx);
        let drv = &mut self.drv;
        drv.context = ctx.to_owned();
        drv.init();
        let reply = drv.call(Opcode::Lookup, ROOT_ID, &name(PROBE));
        let entry: EntryOut = read_obj(&reply.unwrap_or_else(|e| panic!("{ctx}: LOOKUP: {e}")));
        assert_eq!(entry.attr.size, content.len() as u64, "{ctx}");
        let open = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        let reply = drv.call(Opcode::Open, entry.nodeid, open.as_slice());
        let opened: OpenOut = read_obj(&reply.unwrap_or_else(|e| panic!("{ctx}: OPEN: {e}")));
        let read = ReadIn {
            fh: opened.fh,
            size: 1024,
            ..Default::default()
        };
        let data = drv.call(Opcode::Read, entry.nodeid, read.as_slice());
        assert_eq!(data, Ok(content), "{ctx}: READ of {PROBE}");
        let release = ReleaseIn {
            fh: opened.fh,
            ..Default::default()
        };
        let reply = drv.call(Opcode::Release, entry.nodeid, release.as_slice());
        assert_eq!(reply, Ok(Vec::new()), "{ctx}: RELEASE");
        let forget = ForgetIn { nlookup: 1 };
        let (len, _) = drv.send(
            HIPRIO_QUEUE,
            Opcode::Forget,
            entry.nodeid,
            forget.as_slice(),
        );
        assert_eq!(len, 0, "{ctx}: FORGET");
        assert!(
            self.sandbox.outside_state() == self.outside,
            "{ctx}: something outside the share changed:\nbefore {:#?}\nafter {:#?}",
            self.outside,
            self.sandbox.outside_state()
        );
    }
}

// ---- malformed descriptor chains ----

/// How the fuzzed chains of a test ended.
#[derive(Debug, Default)]
struct ChainTally {
    /// A buffer outside memory: returned unused.
    unusable: usize,
    /// Less than an in-header to read: returned unused.
    short: usize,
    /// Served, with a reply.
    replied: usize,
    /// Served, without a reply.
    silent: usize,
    /// Heads outside the queue.
    outside: usize,
    /// Not posted: the device would read memory that changes during the batch (the rings, the
    /// reply area) or write outside the reply area.
    unstable: usize,
}

/// Checks what the device did with the fuzzed chain `walk` against the promises in the module
/// docs.
fn check_chain(walk: &Walk, elem: &VirtqUsedElem, tally: &mut ChainTally, ctx: &str) {
    let used = u64::from(elem.len());
    if !walk.usable(&LAYOUT) {
        assert_eq!(used, 0, "{ctx}: a buffer is outside memory: {walk:?}");
        tally.unusable += 1;
    } else if walk.total(false) < u64::from(IN_HDR) {
        assert_eq!(used, 0, "{ctx}: no in-header to read: {walk:?}");
        tally.short += 1;
    } else if used == 0 {
        tally.silent += 1;
    } else {
        let room = walk.total(true);
        assert!(
            used >= u64::from(OUT_HDR) && used <= room,
            "{ctx}: used length {used} for {room} writable bytes: {walk:?}"
        );
        tally.replied += 1;
    }
}

#[test]
fn fuzzed_chains_are_returned_and_device_keeps_working() {
    let mem = test_mem();
    let mut s = Setup::new(&mem, "fs fuzz chains");
    let mut rng = Rng(SEED);
    let mut tally = ChainTally::default();
    for batch in 0..CHAIN_BATCHES {
        let q = if batch % 4 == 3 {
            HIPRIO_QUEUE
        } else {
            REQUEST_QUEUE
        };
        let ctx = format!("seed {SEED:#x}, chain batch {batch} on queue {q}");
        let known = &s.known;
        let mut fill = |rng: &mut Rng, addr: u64| write_request(&mem, rng, known, addr);
        let mut fq = FsQueue { drv: &mut s.drv, q };
        fuzz_table(&mut rng, &mem, &LAYOUT, &mut fq, &mut fill);
        let (size, table) = (fq.size(), fq.table());
        let mut heads = Vec::new();
        let mut walks = Vec::new();
        for head in fuzz_heads(&mut rng, size, CHAIN_BATCH) {
            let walk = walk_chain(&mem, table.start, size, head);
            if !LAYOUT.stable(&walk, &table) {
                tally.unstable += 1;
                continue;
            }
            if head < size {
                walks.push((head, walk));
            } else {
                tally.outside += 1;
            }
            heads.push(head);
        }
        let used = post_batch(&mut fq, &heads, &ctx);
        for ((head, walk), elem) in walks.iter().zip(&used) {
            check_chain(walk, elem, &mut tally, &format!("{ctx}, head {head}"));
        }
        s.check_device(&ctx);
    }
    eprintln!("fs fuzz chains: {tally:?}");
    let ChainTally {
        unusable,
        short,
        replied,
        silent,
        outside,
        unstable,
    } = tally;
    assert!(
        [unusable, short, replied, silent, outside]
            .iter()
            .all(|&n| n > 0)
            && unstable < 200,
        "seed {SEED:#x}: the chains missed a case: {tally:?}"
    );
}

// ---- hostile requests in well-formed chains ----

/// A well-formed chain carrying a fuzzed request.
struct Posted {
    head: u16,
    header: InHeader,
    /// Bytes of the request the chain holds (fewer than it has, now and then).
    readable: u32,
    reply: Vec<Buf>,
}

/// Lays out request `i` of a batch: the request in its slot of the scratch area, split over 1 to
/// 3 readable buffers (some possibly empty) and cut short now and then, then 0 to 3 writable
/// buffers of a random total size (too small for any reply, now and then) in its slot of the
/// reply area; in the descriptor table from `*next` on, or through an indirect table. Returns
/// `None` when the table is full.
fn lay_out_request(
    rng: &mut Rng,
    fq: &mut FsQueue<'_, '_>,
    known: &Known,
    i: usize,
    next: &mut u16,
    unique: u64,
) -> Option<Posted> {
    let mem = fq.drv.mem;
    let (header, mut bytes) = fuzz_request(rng, known, unique);
    if rng.chance(10) {
        bytes.truncate(rng.below(bytes.len() as u64) as usize);
    }
    let mut descs = Vec::new();
    let mut addr = SCRATCH + i as u64 * SLOT;
    let mut at = 0;
    let pieces = 1 + rng.below(3) as usize;
    for len in split_len(rng, bytes.len() as u32, pieces) {
        let piece = &bytes[at..at + len as usize];
        mem.write_slice(piece, GuestAddress(addr)).unwrap();
        descs.push((addr, len, 0));
        (at, addr) = (at + piece.len(), addr + u64::from(len) + 16);
    }
    let room = match rng.chance(30) {
        true => rng.pick(&[0, 1, 15, 16, 17, 24, 40, 100]),
        false => rng.pick(&[144, 4096, 0x4000, 0x7000]),
    };
    let writable = match room == 0 && rng.chance(50) {
        true => Vec::new(),
        false => {
            let n = 1 + rng.below(3) as usize;
            split_len(rng, room, n)
        }
    };
    let mut reply = Vec::new();
    let mut addr = REPLY_BASE + i as u64 * SLOT;
    for len in writable {
        reply.push(Buf {
            addr,
            len,
            write: true,
        });
        descs.push((addr, len, WRITE));
        addr += u64::from(len) + 16;
    }
    let count = descs.len() as u16;
    let indirect = rng.chance(25);
    let first = *next;
    *next += if indirect { 1 } else { count };
    if *next > fq.size() {
        return None;
    }
    let link = |k: u16, base: u16| {
        let (addr, len, flags) = descs[usize::from(k)];
        match k + 1 < count {
            true => split_desc(addr, len, flags | NEXT, base + k + 1),
            false => split_desc(addr, len, flags, 0),
        }
    };
    if indirect {
        let table = TABLES + i as u64 * 0x100;
        for k in 0..count {
            let entry = GuestAddress(table + 16 * u64::from(k));
            mem.write_obj(link(k, 0), entry).unwrap();
        }
        fq.store(first, split_desc(table, 16 * u32::from(count), INDIRECT, 0));
    } else {
        for k in 0..count {
            fq.store(first + k, link(k, first));
        }
    }
    Some(Posted {
        head: first,
        header,
        readable: bytes.len() as u32,
        reply,
    })
}

/// How the fuzzed requests of a test ended.
#[derive(Debug, Default)]
struct RequestTally {
    /// No in-header, or no room for a reply header: returned unused.
    cannot: usize,
    /// Requests without a reply.
    no_reply: usize,
    /// Requests fuse-backend-rs gave up on.
    dropped: usize,
    errors: usize,
    /// Requests served without an error, by opcode.
    ok: BTreeMap<u32, usize>,
}

/// Checks the device's reply to `p` against the promises in the module docs, and learns the
/// inodes and handles it gave out.
fn check_reply(
    mem: &GuestMemoryMmap,
    p: &Posted,
    elem: &VirtqUsedElem,
    s: &mut Setup<'_>,
    tally: &mut RequestTally,
    ctx: &str,
) {
    let used = elem.len();
    let room: u32 = p.reply.iter().map(|b| b.len).sum();
    let (op, too_long) = (p.header.opcode, p.header.len > MAX_REQUEST);
    if let (Some(Opcode::Destroy), true, false) = (opcode(op), p.readable >= IN_HDR, too_long) {
        s.known.forget_all();
    }
    assert!(used <= room, "{ctx}: used length {used}, {room} writable");
    if p.readable < IN_HDR || room < OUT_HDR {
        assert_eq!(used, 0, "{ctx}: no in-header or no room for a reply");
        tally.cannot += 1;
        return;
    }
    let silent = match opcode(op) {
        Some(Opcode::Forget | Opcode::BatchForget) => true,
        Some(Opcode::Interrupt | Opcode::Destroy) => !too_long,
        _ => false,
    };
    if silent {
        assert_eq!(used, 0, "{ctx}: a reply to a request that has none");
        tally.no_reply += 1;
        return;
    }
    if used == 0 {
        assert!(!too_long && !unknown(op), "{ctx}: no reply");
        tally.dropped += 1;
        return;
    }
    let reply = gather(mem, &p.reply, used);
    let out: OutHeader = read_obj(&reply);
    assert_eq!(
        (out.unique, out.len),
        (p.header.unique, used),
        "{ctx}: reply header {out:?}"
    );
    assert!((-4095..=0).contains(&out.error), "{ctx}: {out:?}");
    if too_long {
        assert_eq!(out.error, -libc::ENOMEM, "{ctx}: {out:?}");
    } else if unknown(op) {
        assert_eq!(out.error, -libc::ENOSYS, "{ctx}: {out:?}");
    }
    if out.error == 0 {
        s.known.learn(&p.header, &reply[OUT_HDR as usize..]);
        *tally.ok.entry(op).or_default() += 1;
    } else {
        assert_eq!(used, OUT_HDR, "{ctx}: an error reply with a body: {out:?}");
        tally.errors += 1;
    }
}

#[test]
fn hostile_requests_get_sane_replies_and_device_keeps_working() {
    let mem = test_mem();
    let mut s = Setup::new(&mem, "fs fuzz requests");
    let mut rng = Rng(SEED);
    let mut tally = RequestTally::default();
    let mut unique = 1 << 32;
    for batch in 0..REQUEST_BATCHES {
        let (q, count) = if batch % 5 == 4 {
            (HIPRIO_QUEUE, 16)
        } else {
            (REQUEST_QUEUE, REQUEST_BATCH)
        };
        let ctx = format!("seed {SEED:#x}, request batch {batch} on queue {q}");
        let mut fq = FsQueue { drv: &mut s.drv, q };
        let size = fq.size();
        let (mut next, mut heads, mut posted) = (0, Vec::new(), Vec::new());
        for i in 0..count {
            if rng.chance(3) {
                heads.push(size + rng.below16(u16::MAX - size));
            }
            unique += 1;
            let Some(p) = lay_out_request(&mut rng, &mut fq, &s.known, i, &mut next, unique) else {
                break;
            };
            heads.push(p.head);
            posted.push(p);
        }
        let used = post_batch(&mut fq, &heads, &ctx);
        for (i, (p, elem)) in posted.iter().zip(&used).enumerate() {
            let (op, head) = (p.header.opcode, p.head);
            let ctx = format!("{ctx}, request {i} (opcode {op}, head {head})");
            check_reply(&mem, p, elem, &mut s, &mut tally, &ctx);
        }
        s.check_device(&ctx);
    }
    eprintln!("fs fuzz requests: {tally:?}");
    let t = &tally;
    let served = [
        Opcode::Lookup,
        Opcode::Create,
        Opcode::Open,
        Opcode::Read,
        Opcode::Write,
    ]
    .map(|o| o as u32)
    .iter()
    .all(|o| t.ok.contains_key(o));
    assert!(
        [t.cannot, t.no_reply, t.dropped, t.errors]
            .iter()
            .all(|&n| n > 0)
            && served,
        "seed {SEED:#x}: the requests missed a case: {tally:?}"
    );
}
