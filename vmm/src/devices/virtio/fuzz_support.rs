//! The device-independent half of the seeded fuzz tests (`vsock/fuzz_tests.rs`,
//! `fs/fuzz_tests.rs`): a reproducible generator, random descriptors and descriptor tables, the
//! posting of a batch of random heads, and a model of how virtio-queue walks a chain, so that a
//! test knows which chains the device can use at all.
//!
//! Each test plays a hostile guest driver; the queue it fuzzes is reached through [`FuzzQueue`].

use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::devices::virtio::device::DeviceWorker;
use crate::vstate::memory::GuestMemoryMmap;

pub(crate) const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub(crate) const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub(crate) const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
/// Size of a split descriptor.
pub(crate) const DESC_SIZE: u64 = 16;
/// How long a test waits for the device before it fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

/// xorshift64: small, fast and reproducible.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (`n > 0`); the modulo bias does not matter here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(crate) fn below32(&mut self, n: u32) -> u32 {
        // The result is below `n`.
        self.below(u64::from(n)) as u32
    }

    pub(crate) fn below16(&mut self, n: u16) -> u16 {
        // The result is below `n`.
        self.below(u64::from(n)) as u16
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

pub(crate) fn split_desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// `n` lengths summing to `total`, some of them possibly zero.
pub(crate) fn split_len(rng: &mut Rng, total: u32, n: usize) -> Vec<u32> {
    let mut cuts: Vec<u32> = (1..n).map(|_| rng.below32(total + 1)).collect();
    cuts.extend([0, total]);
    cuts.sort_unstable();
    cuts.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Calls `f` until it has a value, for at most [`TIMEOUT`]; `what` names the wait if it fails.
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: timed out");
        thread::sleep(Duration::from_micros(200));
    }
}

/// Whether a device's worker thread was started and still runs.
pub(crate) fn worker_alive(worker: Option<&DeviceWorker>) -> bool {
    worker.is_some_and(|w| !w.thread.is_finished())
}

/// Where a fuzz test puts things in guest memory (one region, from 0 to `mem_end`), and the
/// lengths its random descriptors favour.
pub(crate) struct Layout {
    pub(crate) mem_end: u64,
    /// Start of the scratch area (up to `mem_end`): indirect tables and filled buffers.
    pub(crate) scratch: u64,
    /// Length of the device's request header.
    pub(crate) hdr: u32,
    /// A large but valid payload length.
    pub(crate) max_data: u32,
    /// For a device that writes into chains: the area, below `scratch`, where every writable
    /// buffer inside memory is moved, so that replies never land on the rings, the harness's
    /// buffers, descriptor tables or requests. `None` leaves buffers where they fall.
    pub(crate) replies: Option<Range<u64>>,
}

impl Layout {
    /// Whether `addr..addr + len` is all inside guest memory (a zero-length buffer must start
    /// inside it too, as virtio-queue and fuse-backend-rs look its region up).
    pub(crate) fn in_mem(&self, addr: u64, len: u64) -> bool {
        addr < self.mem_end && addr.checked_add(len).is_some_and(|end| end <= self.mem_end)
    }

    pub(crate) fn in_scratch(&self, addr: u64, len: u64) -> bool {
        addr >= self.scratch && self.in_mem(addr, len)
    }

    /// Checks that `mem` is what the layout assumes, and prints the seed.
    pub(crate) fn start(&self, mem: &GuestMemoryMmap, seed: u64, test: &str) {
        assert_eq!(mem.last_addr(), GuestAddress(self.mem_end - 1), "{test}");
        if let Some(replies) = &self.replies {
            assert!(replies.start < replies.end && replies.end <= self.scratch);
        }
        eprintln!("{test}: seed {seed:#x}");
    }

    /// Where the descriptor `(addr, len, flags)` may point (see [`Layout::replies`]): an indirect
    /// table inside memory is moved into the scratch area (which it may not leave but past the
    /// end of memory), a writable buffer inside memory into the reply area (or, if longer than
    /// it, across the end of memory, where the device must refuse it).
    fn confine(&self, replies: &Range<u64>, addr: u64, len: u32, flags: u16) -> u64 {
        if flags & INDIRECT != 0 {
            if addr < self.scratch {
                let room = self.mem_end - self.scratch;
                return self.scratch + ((addr % room) & !(DESC_SIZE - 1));
            }
            return addr;
        }
        if flags & WRITE == 0 || !self.in_mem(addr, u64::from(len)) {
            return addr;
        }
        match (replies.end - replies.start).checked_sub(u64::from(len)) {
            Some(slack) => replies.start + addr % (slack + 1),
            None => self.mem_end - 1,
        }
    }

    /// Whether the device, serving the chain `walk` found, only reads memory that stays as it is
    /// during a batch (the queue's descriptor table `table` and the scratch area) and can only
    /// write into the reply area: then `walk` is what the device will see.
    pub(crate) fn stable(&self, walk: &Walk, table: &Range<u64>) -> bool {
        let read_ok = |&at: &u64| {
            !self.in_mem(at, DESC_SIZE)
                || self.in_scratch(at, DESC_SIZE)
                || (table.start <= at && at + DESC_SIZE <= table.end)
        };
        let usable = walk.usable(self);
        let write_ok = |b: &Buf| {
            !usable
                || !b.write
                || self
                    .replies
                    .as_ref()
                    .is_some_and(|r| r.start <= b.addr && b.addr + u64::from(b.len) <= r.end)
        };
        walk.reads.iter().all(read_ok) && walk.bufs.iter().all(write_ok)
    }
}

// ---- random descriptors ----

/// An address in the scratch area, anywhere in memory, just below the end of memory, far outside
/// it, or near `u64::MAX`.
fn fuzz_addr(rng: &mut Rng, layout: &Layout) -> u64 {
    let (end, hdr) = (layout.mem_end, u64::from(layout.hdr));
    match rng.below(10) {
        0..=4 => layout.scratch + rng.below(end - layout.scratch),
        5 => rng.below(end),
        6 => end - 1 - rng.below(2 * hdr),
        7 => end + rng.below(1 << 40),
        8 => rng.next(),
        _ => u64::MAX - rng.below(2 * hdr),
    }
}

fn fuzz_len(rng: &mut Rng, layout: &Layout) -> u32 {
    let hdr = layout.hdr;
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => hdr - 1,
        3 => hdr,
        4 => hdr + rng.below32(64),
        5 => rng.below32(2 * layout.max_data),
        6 => u32::MAX,
        7 => u32::MAX - rng.below32(hdr),
        8 => rng.next() as u32,
        _ => 16 * rng.below32(9),
    }
}

/// NEXT, WRITE and INDIRECT in any combination, now and then with undefined bits.
fn fuzz_flags(rng: &mut Rng) -> u16 {
    let mut flags = 0;
    if rng.chance(50) {
        flags |= NEXT;
    }
    if rng.chance(15) {
        flags |= WRITE;
    }
    if rng.chance(10) {
        flags |= INDIRECT;
    }
    if rng.chance(3) {
        flags |= rng.next() as u16;
    }
    flags
}

/// The `next` of entry `idx` in a table of `size`: itself, a neighbour (cycles), anywhere in the
/// table, or past its end.
fn fuzz_next(rng: &mut Rng, idx: u16, size: u16) -> u16 {
    match rng.below(6) {
        0 => idx,
        1 => idx.wrapping_add(1),
        2 => idx.wrapping_sub(1),
        3 => (u64::from(size) + rng.below(u64::from(u16::MAX - size) + 1)) as u16,
        4 => u16::MAX,
        _ => rng.below16(size.max(1)),
    }
}

/// Writes a random request of the fuzzed device at an address of the scratch area (with room
/// for a header at least; it must not write past the end of memory).
pub(crate) type Fill<'f> = dyn FnMut(&mut Rng, u64) + 'f;

/// A random descriptor for entry `idx` of a table of `size`. Where its buffer starts in the
/// scratch area, `fill` usually writes a random request there; an INDIRECT descriptor usually
/// points at a random table written into the scratch area (`nested` stops that recursion, and an
/// INDIRECT flag inside it is itself an error the device must survive).
pub(crate) fn fuzz_desc(
    rng: &mut Rng,
    mem: &GuestMemoryMmap,
    layout: &Layout,
    idx: u16,
    size: u16,
    nested: bool,
    fill: &mut Fill<'_>,
) -> RawDescriptor {
    let mut addr = fuzz_addr(rng, layout);
    let mut len = fuzz_len(rng, layout);
    let flags = fuzz_flags(rng);
    let next = fuzz_next(rng, idx, size);
    if let Some(replies) = &layout.replies {
        addr = layout.confine(replies, addr, len, flags);
    }
    if flags & INDIRECT != 0 && !nested && rng.chance(60) {
        let entries = rng.below16(9);
        addr = layout.scratch + 16 * rng.below((layout.mem_end - layout.scratch) / 16 - 8);
        len = 16 * u32::from(entries);
        if rng.chance(20) {
            len += 1 + rng.below32(15);
        }
        for i in 0..entries {
            let entry = fuzz_desc(rng, mem, layout, i, entries, true, fill);
            mem.write_obj(entry, GuestAddress(addr + 16 * u64::from(i)))
                .unwrap();
        }
    } else if layout.in_scratch(addr, u64::from(layout.hdr)) && rng.chance(60) {
        fill(rng, addr);
    }
    split_desc(addr, len, flags, next)
}

/// The guest side of one queue, as the fuzzer drives it.
pub(crate) trait FuzzQueue {
    /// The mock queue, for its descriptor table.
    fn queue(&self) -> &MockSplitQueue<'_, GuestMemoryMmap>;
    fn size(&self) -> u16;
    /// Puts `head` in the next slot of the avail ring and publishes it.
    fn push(&mut self, head: u16);
    /// Notifies the device.
    fn notify(&mut self);
    /// The next entry of the used ring, if the device added one.
    fn try_used(&mut self) -> Option<VirtqUsedElem>;

    /// Guest addresses of the descriptor table.
    fn table(&self) -> Range<u64> {
        let start = self.queue().desc_table_addr().0;
        start..start + DESC_SIZE * u64::from(self.size())
    }

    fn store(&mut self, idx: u16, desc: RawDescriptor) {
        self.queue().desc_table().store(idx, desc).unwrap();
    }
}

/// Fills the whole descriptor table of `q` at random.
pub(crate) fn fuzz_table(
    rng: &mut Rng,
    mem: &GuestMemoryMmap,
    layout: &Layout,
    q: &mut dyn FuzzQueue,
    fill: &mut Fill<'_>,
) {
    let size = q.size();
    for idx in 0..size {
        let desc = fuzz_desc(rng, mem, layout, idx, size, false, fill);
        q.store(idx, desc);
    }
}

/// `count` random heads for a queue of `size`, a few of them outside it.
pub(crate) fn fuzz_heads(rng: &mut Rng, size: u16, count: usize) -> Vec<u16> {
    (0..count)
        .map(|_| {
            if rng.chance(3) {
                size + rng.below16(u16::MAX - size)
            } else {
                rng.below16(size)
            }
        })
        .collect()
}

/// Posts `heads` in order, notifies once, and returns the used entries of the heads inside the
/// queue, checking that they come back in order and that nothing else comes back (a head
/// outside the queue has no used-ring entry to go to).
pub(crate) fn post_batch(q: &mut dyn FuzzQueue, heads: &[u16], ctx: &str) -> Vec<VirtqUsedElem> {
    for &head in heads {
        q.push(head);
    }
    q.notify();
    let size = q.size();
    let mut used = Vec::new();
    for (i, &head) in heads.iter().filter(|&&h| h < size).enumerate() {
        let elem = wait_for(&format!("{ctx}: used entry {i}"), || q.try_used());
        assert_eq!(elem.id(), u32::from(head), "{ctx}: used entry {i}");
        used.push(elem);
    }
    let extra = q.try_used();
    assert!(
        extra.is_none(),
        "{ctx}: more used entries than heads inside the queue: {extra:?}"
    );
    used
}

// ---- what virtio-queue makes of a chain ----

/// A buffer of a chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buf {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) write: bool,
}

/// The buffers virtio-queue 0.17 yields for a chain, and the address of every descriptor it
/// reads on the way.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    pub(crate) bufs: Vec<Buf>,
    pub(crate) reads: Vec<u64>,
}

impl Walk {
    /// Whether every buffer is inside guest memory: otherwise the device can map none of them.
    pub(crate) fn usable(&self, layout: &Layout) -> bool {
        self.bufs
            .iter()
            .all(|b| layout.in_mem(b.addr, u64::from(b.len)))
    }

    /// Total length of the device-readable (`write == false`) or -writable buffers.
    pub(crate) fn total(&self, write: bool) -> u64 {
        self.bufs
            .iter()
            .filter(|b| b.write == write)
            .map(|b| u64::from(b.len))
            .sum()
    }
}

/// Walks the chain at `head` of the descriptor table at `table` (`size` entries) as
/// `virtio_queue::DescriptorChain` does, reading memory now. Like it, the walk ends silently
/// after `size` descriptors (a loop), at a `next` past the table, at a descriptor it cannot
/// read, at a bad indirect table (nested, or a length not a multiple of 16 or above 2^16
/// entries), or before the buffers pass 4 GiB in total.
pub(crate) fn walk_chain(mem: &GuestMemoryMmap, table: u64, size: u16, head: u16) -> Walk {
    let mut walk = Walk::default();
    let (mut table, mut size, mut next, mut ttl) = (table, size, head, size);
    let mut indirect = false;
    let mut yielded = 0u32;
    while ttl > 0 && next < size {
        let Some(at) = table.checked_add(u64::from(next) * DESC_SIZE) else {
            break;
        };
        walk.reads.push(at);
        let Ok(desc) = mem.read_obj::<SplitDescriptor>(GuestAddress(at)) else {
            break;
        };
        if desc.refers_to_indirect_table() {
            let entries = desc.len() / DESC_SIZE as u32;
            if indirect || desc.len() % DESC_SIZE as u32 != 0 || entries > u32::from(u16::MAX) {
                break;
            }
            // At most u16::MAX, checked above.
            (table, size, next, ttl) = (desc.addr().0, entries as u16, 0, entries as u16);
            indirect = true;
            continue;
        }
        let Some(total) = yielded.checked_add(desc.len()) else {
            break;
        };
        yielded = total;
        walk.bufs.push(Buf {
            addr: desc.addr().0,
            len: desc.len(),
            write: desc.is_write_only(),
        });
        if desc.has_next() {
            next = desc.next();
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    walk
}
