//! Tests of the device: identity and config space, activation, FUSE requests served by the real
//! worker thread with the test playing the guest driver through mock split queues, and the
//! confinement of the passthrough to the shared directory.

use std::ffi::CStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fuse_backend_rs::abi::fuse_abi::{
    EntryOut, ForgetIn, InHeader, InitIn, InitOut, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
    KERNEL_VERSION, ROOT_ID,
};
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{HIPRIO_QUEUE, REQUEST_QUEUE};
use super::*;
use crate::devices::virtio::device::{Interrupt, VIRTIO_MMIO_INT_VRING};
use crate::devices::virtio::fuzz_support::wait_for;
use crate::vstate::memory::GuestMemoryMmap;

/// Queue `i` starts at `QUEUE_BASE[i]`; its used ring is moved to `+ USED_RING_OFFSET[i]`
/// (`MockSplitQueue` lays its own over the avail ring, see the vsock tests).
const QUEUE_BASE: [u64; 2] = [0, 0x1_0000];
const USED_RING_OFFSET: [u64; 2] = [0x1000, 0x8000];
/// Request `n` is written at `BUF_BASE + n * BUF_STRIDE`, its reply buffer 4 KiB after it.
const BUF_BASE: u64 = 0x10_0000;
const BUF_STRIDE: u64 = 0x2000;
const REPLY_LEN: u32 = 0x1000;

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("nutshell-fs-{}-{n}", std::process::id()));
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

/// `dir/share` with `hello.txt`, `sub/`, and links that point out of it, beside `dir/secret`
/// outside the share.
pub(super) fn share_tree(dir: &TempDir) -> PathBuf {
    let share = dir.path().join("share");
    fs::create_dir_all(share.join("sub")).unwrap();
    fs::write(share.join("hello.txt"), b"hello from the host\n").unwrap();
    fs::write(dir.path().join("secret"), b"outside\n").unwrap();
    symlink(dir.path().join("secret"), share.join("abs-link")).unwrap();
    symlink("/", share.join("root-link")).unwrap();
    symlink("../secret", share.join("up-link")).unwrap();
    share
}

pub(super) fn new_device(share: &Path) -> Fs {
    Fs::new(FsConfig {
        tag: "shared".into(),
        shared_dir: share.to_owned(),
    })
    .unwrap()
}

pub(super) fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// The guest side: posts FUSE requests and reads the replies.
pub(super) struct Driver<'a> {
    pub(super) mem: &'a GuestMemoryMmap,
    pub(super) queues: [MockSplitQueue<'a, GuestMemoryMmap>; 2],
    pub(super) events: [EventFd; 2],
    avail: [u16; 2],
    seen: [u16; 2],
    pub(super) next_unique: u64,
    /// Names the test situation in the driver's assertion messages.
    pub(super) context: String,
}

impl<'a> Driver<'a> {
    pub(super) fn new(mem: &'a GuestMemoryMmap) -> (Self, ActivateContext, Arc<Interrupt>) {
        let mock =
            |i: usize| MockSplitQueue::create(mem, GuestAddress(QUEUE_BASE[i]), QUEUE_SIZES[i]);
        let queues = [mock(0), mock(1)];
        let ready: Vec<Queue> = queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let mut queue: Queue = q.create_queue().unwrap();
                let used = q.start().0 + USED_RING_OFFSET[i];
                queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
                queue
            })
            .collect();
        let events: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let driver = Driver {
            mem,
            queues,
            events: [
                events[0].try_clone().unwrap(),
                events[1].try_clone().unwrap(),
            ],
            avail: [0; 2],
            seen: [0; 2],
            next_unique: 1,
            context: String::new(),
        };
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            queues: ready,
            queue_events: events,
        };
        (driver, ctx, interrupt)
    }

    /// Sends one request on queue `q` (header and body in one readable descriptor, a 4 KiB
    /// writable one for the reply) and waits until the device used it. Returns the used
    /// length and the reply buffer.
    pub(super) fn send(
        &mut self,
        q: usize,
        opcode: Opcode,
        nodeid: u64,
        body: &[u8],
    ) -> (u32, Vec<u8>) {
        let unique = self.next_unique;
        self.next_unique += 1;
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        };
        let slot = self.avail[q] % 16;
        let base = BUF_BASE + (q as u64 * 16 + u64::from(slot)) * BUF_STRIDE;
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(body);
        self.mem.write_slice(&request, GuestAddress(base)).unwrap();
        let reply = base + 0x1000;
        self.mem
            .write_slice(&[0xaa; REPLY_LEN as usize], GuestAddress(reply))
            .unwrap();
        let idx = slot * 2;
        let descs = [
            SplitDescriptor::new(
                base,
                request.len() as u32,
                VRING_DESC_F_NEXT as u16,
                idx + 1,
            ),
            SplitDescriptor::new(reply, REPLY_LEN, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (i, desc) in descs.into_iter().enumerate() {
            self.queues[q]
                .desc_table()
                .store(idx + i as u16, RawDescriptor::from(desc))
                .unwrap();
        }
        self.push_avail(q, idx);
        self.events[q].write(1).unwrap();

        let elem = self.wait_used(q);
        assert_eq!(elem.id(), u32::from(idx), "{}", self.context);
        let mut out = vec![0u8; REPLY_LEN as usize];
        self.mem.read_slice(&mut out, GuestAddress(reply)).unwrap();
        (elem.len(), out)
    }

    /// A request that has a reply: checks the reply header and returns the body.
    pub(super) fn call(
        &mut self,
        opcode: Opcode,
        nodeid: u64,
        body: &[u8],
    ) -> Result<Vec<u8>, i32> {
        let unique = self.next_unique;
        let (len, reply) = self.send(REQUEST_QUEUE, opcode, nodeid, body);
        let header = OutHeader::from_slice(&reply[..std::mem::size_of::<OutHeader>()]).unwrap();
        let ctx = &self.context;
        assert_eq!(header.unique, unique, "{ctx}: {opcode:?}");
        assert_eq!(
            header.len, len,
            "{ctx}: {opcode:?}: used length is the reply length"
        );
        if header.error != 0 {
            return Err(-header.error);
        }
        Ok(reply[std::mem::size_of::<OutHeader>()..len as usize].to_vec())
    }

    /// FUSE_INIT as Linux sends it; checks that the device speaks our major version.
    pub(super) fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: KERNEL_VERSION,
            minor: 31,
            max_readahead: 0x2_0000,
            flags: 0,
        };
        let reply = self.call(Opcode::Init, 0, init.as_slice());
        let ctx = &self.context;
        let out: InitOut = read_obj(&reply.unwrap_or_else(|e| panic!("{ctx}: INIT: {e}")));
        assert_eq!(out.major, KERNEL_VERSION, "{ctx}");
        out
    }

    /// Puts `head` in the next slot of queue `q`'s avail ring and publishes it.
    pub(super) fn push_avail(&mut self, q: usize, head: u16) {
        let pos = self.avail[q];
        let ring_slot = usize::from(pos % QUEUE_SIZES[q]);
        self.queues[q]
            .avail()
            .ring()
            .ref_at(ring_slot)
            .unwrap()
            .store(head);
        self.avail[q] = pos.wrapping_add(1);
        self.queues[q].avail().idx().store(self.avail[q]);
    }

    fn used_idx(&self, q: usize) -> u16 {
        let used = self.queues[q].start().unchecked_add(USED_RING_OFFSET[q]);
        self.mem.read_obj(used.unchecked_add(2)).unwrap()
    }

    /// The next entry of queue `q`'s used ring, if the device added one.
    pub(super) fn try_used(&mut self, q: usize) -> Option<VirtqUsedElem> {
        if self.used_idx(q) == self.seen[q] {
            return None;
        }
        let slot = u64::from(self.seen[q] % QUEUE_SIZES[q]);
        let addr = self.queues[q]
            .start()
            .unchecked_add(USED_RING_OFFSET[q] + 4 + 8 * slot);
        self.seen[q] = self.seen[q].wrapping_add(1);
        Some(self.mem.read_obj(addr).unwrap())
    }

    fn wait_used(&mut self, q: usize) -> VirtqUsedElem {
        let what = format!("{}: waiting for a used buffer", self.context);
        wait_for(&what, || self.try_used(q))
    }
}

pub(super) fn name(s: &str) -> Vec<u8> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

pub(super) fn read_obj<T: ByteValued>(bytes: &[u8]) -> T {
    *T::from_slice(&bytes[..std::mem::size_of::<T>()]).unwrap()
}

#[test]
fn device_identity_and_config_space() {
    let dir = TempDir::new();
    let mut dev = new_device(dir.path());
    assert_eq!(dev.device_type(), 26);
    assert_eq!(
        dev.queue_max_sizes(),
        &[HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE]
    );
    assert_eq!(dev.device_features(), VIRTIO_F_VERSION_1);
    dev.ack_features(VIRTIO_F_VERSION_1 | 1 << 28);
    assert_eq!(dev.acked_features, VIRTIO_F_VERSION_1);

    let mut cfg = [0xffu8; 44];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], b"shared");
    assert!(cfg[6..36].iter().all(|&b| b == 0), "tag is NUL-padded");
    assert_eq!(&cfg[36..40], &1u32.to_le_bytes(), "one request queue");
    assert_eq!(&cfg[40..], &[0; 4], "past the end reads as zero");
    let mut queues = [0u8; 4];
    dev.read_config(36, &mut queues);
    assert_eq!(u32::from_le_bytes(queues), NUM_REQUEST_QUEUES);
    dev.write_config(0, b"other");
    let mut tag = [0u8; 6];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag, b"shared", "the config space is read-only");
    dev.read_config(u64::MAX, &mut tag);
    assert_eq!(tag, [0; 6]);

    // The whole 36 bytes when the tag fills them.
    let long = "x".repeat(TAG_MAX_LEN);
    let dev = Fs::new(FsConfig {
        tag: long.clone(),
        shared_dir: dir.path().to_owned(),
    })
    .unwrap();
    let mut cfg = [0u8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..36], long.as_bytes());
    assert_eq!(&cfg[36..], &1u32.to_le_bytes());
}

#[test]
fn new_rejects_bad_tags_and_directories_by_name() {
    let dir = TempDir::new();
    let config = |tag: &str, path: &Path| FsConfig {
        tag: tag.into(),
        shared_dir: path.to_owned(),
    };
    let err = Fs::new(config("", dir.path())).unwrap_err();
    assert!(matches!(err, FsError::InvalidTag { .. }), "{err}");
    let err = Fs::new(config(&"x".repeat(37), dir.path())).unwrap_err();
    assert!(err.to_string().contains("37 bytes"), "{err}");
    let missing = dir.path().join("missing");
    let err = Fs::new(config("data", &missing)).unwrap_err();
    assert!(matches!(err, FsError::SharedDir { .. }), "{err}");
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = Fs::new(config("data", &file)).unwrap_err();
    assert!(matches!(err, FsError::NotADirectory { .. }), "{err}");
}

#[test]
fn activation_needs_both_queues() {
    let dir = TempDir::new();
    let mut dev = new_device(dir.path());
    let mem = test_mem();
    let (_driver, mut ctx, _irq) = Driver::new(&mem);
    ctx.queues.pop();
    assert!(matches!(
        dev.activate(ctx),
        Err(ActivateError::QueueCount { expected: 2, .. })
    ));
}

#[test]
fn fuse_requests_round_trip_through_the_queues() {
    let dir = TempDir::new();
    let share = share_tree(&dir);
    let mut dev = new_device(&share);
    let mem = test_mem();
    let (mut driver, ctx, interrupt) = Driver::new(&mem);
    dev.activate(ctx).unwrap();

    let out = driver.init();
    assert!(out.max_write > 0);
    assert_ne!(
        interrupt.status() & VIRTIO_MMIO_INT_VRING,
        0,
        "guest interrupted"
    );

    let entry: EntryOut = read_obj(
        &driver
            .call(Opcode::Lookup, ROOT_ID, &name("hello.txt"))
            .unwrap(),
    );
    assert_ne!(entry.nodeid, ROOT_ID);
    assert_eq!(entry.attr.size, 20);
    assert_eq!(entry.entry_valid, ENTRY_TIMEOUT.as_secs());
    assert_eq!(entry.attr_valid, ATTR_TIMEOUT.as_secs());
    assert_eq!(
        driver.call(Opcode::Lookup, ROOT_ID, &name("missing")),
        Err(libc::ENOENT)
    );

    // Open and read: the file's bytes land in the guest's reply buffer.
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let opened: OpenOut = read_obj(
        &driver
            .call(Opcode::Open, entry.nodeid, open.as_slice())
            .unwrap(),
    );
    let read = ReadIn {
        fh: opened.fh,
        offset: 6,
        size: 100,
        ..Default::default()
    };
    let data = driver
        .call(Opcode::Read, entry.nodeid, read.as_slice())
        .unwrap();
    assert_eq!(data, b"from the host\n");

    // FORGET goes on the high-priority queue and has no reply.
    let forget = ForgetIn { nlookup: 1 };
    let (len, _) = driver.send(
        HIPRIO_QUEUE,
        Opcode::Forget,
        entry.nodeid,
        forget.as_slice(),
    );
    assert_eq!(len, 0);

    // `..` of the share's root is the root; the symlinks are returned as links.
    let up: EntryOut = read_obj(&driver.call(Opcode::Lookup, ROOT_ID, &name("..")).unwrap());
    assert_eq!(up.nodeid, ROOT_ID);
    let link: EntryOut = read_obj(
        &driver
            .call(Opcode::Lookup, ROOT_ID, &name("abs-link"))
            .unwrap(),
    );
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        driver.call(Opcode::Lookup, link.nodeid, &name("secret")),
        Err(libc::ENOTDIR),
        "a lookup through a link never follows it on the host"
    );

    // A malformed request (a header only, no body) is used without a reply and the queue
    // goes on.
    let (len, _) = driver.send(REQUEST_QUEUE, Opcode::Init, 0, &[]);
    assert_eq!(len, 0);
    assert!(driver.call(Opcode::Lookup, ROOT_ID, &name("sub")).is_ok());

    // Reset stops the worker; a new activation serves a new driver (in fresh memory, as the
    // rings of a rebooted guest start from zero).
    dev.reset();
    let mem = test_mem();
    let (mut driver, ctx, _irq) = Driver::new(&mem);
    dev.activate(ctx).unwrap();
    driver.init();
    assert!(driver
        .call(Opcode::Lookup, ROOT_ID, &name("hello.txt"))
        .is_ok());
}

fn lookup(fs: &ServedFs, parent: u64, name: &CStr) -> std::io::Result<u64> {
    fs.lookup(&Context::default(), parent, name)
        .map(|e| e.inode)
}

#[test]
fn names_never_leave_the_share() {
    let dir = TempDir::new();
    let share = share_tree(&dir);
    let dev = new_device(&share);
    let fs = &*dev.fs;
    let ctx = Context::default();

    // `..` at the root is the root itself; from a subdirectory it is the root again.
    assert_eq!(lookup(fs, ROOT_ID, c"..").unwrap(), ROOT_ID);
    let sub = lookup(fs, ROOT_ID, c"sub").unwrap();
    assert_eq!(lookup(fs, sub, c"..").unwrap(), ROOT_ID);
    let sub_up = lookup(fs, sub, c"..").unwrap();
    assert_eq!(lookup(fs, sub_up, c"..").unwrap(), ROOT_ID);
    // Whatever `..` gives, the file beside the share is not under it.
    assert_eq!(
        lookup(fs, lookup(fs, ROOT_ID, c"..").unwrap(), c"secret")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    // A name is one component.
    assert_eq!(
        lookup(fs, ROOT_ID, c"../secret")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        lookup(fs, ROOT_ID, c"sub/..").unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );

    // Links are links: their targets come back as text for the guest to resolve in its own
    // view, and nothing is looked up through them on the host.
    for (link, target) in [
        (c"abs-link", dir.path().join("secret")),
        (c"root-link", PathBuf::from("/")),
        (c"up-link", PathBuf::from("../secret")),
    ] {
        let inode = lookup(fs, ROOT_ID, link).unwrap();
        let (attr, _) = fs.getattr(&ctx, inode, None).unwrap();
        assert_eq!(attr.st_mode & libc::S_IFMT, libc::S_IFLNK, "{link:?}");
        let text = fs.readlink(&ctx, inode).unwrap();
        assert_eq!(Path::new(std::str::from_utf8(&text).unwrap()), target);
        let through = lookup(fs, inode, c"etc").unwrap_err();
        assert_eq!(through.raw_os_error(), Some(libc::ENOTDIR), "{link:?}");
    }

    // Calls that make or remove names refuse `.` and `..`.
    let err = fs.mkdir(&ctx, ROOT_ID, c"..", 0o755, 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = fs.unlink(&ctx, ROOT_ID, c"..").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = fs.rmdir(&ctx, sub, c"..").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = fs
        .rename(&ctx, ROOT_ID, c"hello.txt", ROOT_ID, c"..", 0)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    let err = fs.symlink(&ctx, c"/etc", ROOT_ID, c"..").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert!(dir.path().join("secret").exists());
}
