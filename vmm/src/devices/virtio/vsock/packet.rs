//! virtio-vsock packets (virtio spec 1.2, 5.10.6): the 44-byte little-endian header, and the
//! validated parsing of descriptor chains into packets (tx) or packet buffers (rx).
//!
//! Everything read from a descriptor chain is guest-controlled: every length, direction and
//! address is checked before use, and a bad chain yields a [`PacketError`], never a panic.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use crate::vstate::memory::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;
/// Largest payload accepted from (or sent to) the guest in one packet.
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl VsockHeader {
    /// Decodes the little-endian wire format.
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        VsockHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes to the little-endian wire format.
    pub fn to_bytes(self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a descriptor chain was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor chain {head}: empty or its head descriptor is unreadable")]
    EmptyChain { head: u16 },
    #[error(
        "descriptor chain {head}: loops, is longer than the queue, or links outside the \
         descriptor table"
    )]
    BrokenChain { head: u16 },
    #[error(
        "descriptor chain {head}: descriptor {pos} is device-{found}, expected device-{expected}"
    )]
    WrongDirection {
        head: u16,
        pos: usize,
        found: &'static str,
        expected: &'static str,
    },
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { head: u16, addr: u64, len: u32 },
    #[error("descriptor chain {head}: {len} bytes, too short for the {HDR_SIZE}-byte header")]
    ShortHeader { head: u16, len: u64 },
    #[error("descriptor chain {head}: header len {len} exceeds the {MAX_PKT_DATA}-byte maximum")]
    DataTooLong { head: u16, len: u32 },
    #[error(
        "descriptor chain {head}: header len {len} exceeds the {available} data bytes present"
    )]
    DataTruncated { head: u16, len: u32, available: u64 },
    #[error("descriptor chain {head}: guest memory access failed: {source}")]
    Memory {
        head: u16,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The validated buffers of one descriptor chain, all of one direction.
#[derive(Debug)]
struct Buffers {
    head: u16,
    segs: Vec<(GuestAddress, u32)>,
    total: u64,
}

type Chain<'a> = virtio_queue::DescriptorChain<&'a GuestMemoryMmap>;

impl Buffers {
    /// Walks `chain`, checking every descriptor's direction and address range, and that the chain
    /// ends properly (the chain iterator stops silently on loops and bad `next` indices; we notice
    /// that because the last descriptor it yielded still has the NEXT flag).
    fn collect(
        mem: &GuestMemoryMmap,
        chain: Chain<'_>,
        writable: bool,
    ) -> Result<Self, PacketError> {
        let head = chain.head_index();
        let mut segs = Vec::new();
        let mut total = 0u64;
        let mut count = 0usize;
        let mut last_has_next = false;
        for (pos, desc) in chain.enumerate() {
            count += 1;
            if desc.is_write_only() != writable {
                let dir = |w: bool| if w { "writable" } else { "readable" };
                return Err(PacketError::WrongDirection {
                    head,
                    pos,
                    found: dir(desc.is_write_only()),
                    expected: dir(writable),
                });
            }
            let (addr, len) = (desc.addr(), desc.len());
            if len > 0 {
                if !GuestMemory::check_range(mem, addr, len as usize) {
                    return Err(PacketError::OutOfRange {
                        head,
                        addr: addr.raw_value(),
                        len,
                    });
                }
                segs.push((addr, len));
            }
            total += u64::from(len);
            last_has_next = desc.has_next();
        }
        if count == 0 {
            return Err(PacketError::EmptyChain { head });
        }
        if last_has_next {
            return Err(PacketError::BrokenChain { head });
        }
        Ok(Buffers { head, segs, total })
    }

    /// Copies bytes between `buf` and the chain, starting `offset` bytes into the chain.
    /// The caller guarantees that `offset + buf.len() <= self.total`.
    fn for_each_range(
        &self,
        mut offset: u64,
        len: usize,
        mut f: impl FnMut(
            GuestAddress,
            std::ops::Range<usize>,
        ) -> Result<(), vm_memory::GuestMemoryError>,
    ) -> Result<(), PacketError> {
        let mut done = 0usize;
        for &(addr, seg_len) in &self.segs {
            if done == len {
                break;
            }
            let seg_len = u64::from(seg_len);
            if offset >= seg_len {
                offset -= seg_len;
                continue;
            }
            // Both values are bounded by a u32 segment length.
            let n = ((seg_len - offset) as usize).min(len - done);
            // Cannot overflow: check_range() accepted addr..addr+seg_len.
            let start = addr.unchecked_add(offset);
            f(start, done..done + n).map_err(|source| PacketError::Memory {
                head: self.head,
                source,
            })?;
            done += n;
            offset = 0;
        }
        Ok(())
    }

    fn read(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> Result<(), PacketError> {
        let len = buf.len();
        self.for_each_range(offset, len, |addr, r| mem.read_slice(&mut buf[r], addr))
    }

    fn write(&self, mem: &GuestMemoryMmap, offset: u64, buf: &[u8]) -> Result<(), PacketError> {
        self.for_each_range(offset, buf.len(), |addr, r| mem.write_slice(&buf[r], addr))
    }
}

/// Parses a tx (driver to device) chain into its header and payload. `data` is cleared and filled
/// with exactly `hdr.len` bytes.
pub fn parse_tx(
    mem: &GuestMemoryMmap,
    chain: Chain<'_>,
    data: &mut Vec<u8>,
) -> Result<VsockHeader, PacketError> {
    data.clear();
    let bufs = Buffers::collect(mem, chain, false)?;
    let head = bufs.head;
    if bufs.total < HDR_SIZE as u64 {
        return Err(PacketError::ShortHeader {
            head,
            len: bufs.total,
        });
    }
    let mut raw = [0u8; HDR_SIZE];
    bufs.read(mem, 0, &mut raw)?;
    let hdr = VsockHeader::from_bytes(&raw);
    if hdr.len as usize > MAX_PKT_DATA {
        return Err(PacketError::DataTooLong { head, len: hdr.len });
    }
    let available = bufs.total - HDR_SIZE as u64;
    if u64::from(hdr.len) > available {
        return Err(PacketError::DataTruncated {
            head,
            len: hdr.len,
            available,
        });
    }
    data.resize(hdr.len as usize, 0);
    bufs.read(mem, HDR_SIZE as u64, data)?;
    Ok(hdr)
}

/// A validated rx (device to driver) buffer, ready to receive one packet.
#[derive(Debug)]
pub struct RxBuffer {
    bufs: Buffers,
}

impl RxBuffer {
    /// Validates an rx chain: all descriptors device-writable, inside guest memory, and room for at
    /// least the header.
    pub fn parse(mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<Self, PacketError> {
        let bufs = Buffers::collect(mem, chain, true)?;
        if bufs.total < HDR_SIZE as u64 {
            return Err(PacketError::ShortHeader {
                head: bufs.head,
                len: bufs.total,
            });
        }
        Ok(RxBuffer { bufs })
    }

    /// The descriptor index of the chain head.
    #[cfg(test)]
    pub fn head(&self) -> u16 {
        self.bufs.head
    }

    /// How many payload bytes fit after the header (at most [`MAX_PKT_DATA`]).
    pub fn data_capacity(&self) -> usize {
        let room = self.bufs.total - HDR_SIZE as u64;
        room.min(MAX_PKT_DATA as u64) as usize
    }

    /// Writes `hdr` and `data` into the buffer; returns the number of bytes written (the used
    /// length). `hdr.len` must equal `data.len()`, which must fit [`Self::data_capacity`].
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        hdr: &VsockHeader,
        data: &[u8],
    ) -> Result<u32, PacketError> {
        debug_assert_eq!(hdr.len as usize, data.len());
        let data = &data[..data.len().min(self.data_capacity())];
        self.bufs.write(mem, 0, &hdr.to_bytes())?;
        self.bufs.write(mem, HDR_SIZE as u64, data)?;
        // At most HDR_SIZE + MAX_PKT_DATA, which fits a u32.
        Ok((HDR_SIZE + data.len()) as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    pub(crate) fn test_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    pub(crate) fn sample_hdr(op: u16, len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 5678,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    #[test]
    fn header_roundtrip() {
        let h = VsockHeader {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 1,
            len: 5,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x40000,
            fwd_cnt: 99,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[28..30], &[1, 0]);
        assert_eq!(VsockHeader::from_bytes(&b), h);
    }

    #[test]
    fn tx_split_header_and_data() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let hdr = sample_hdr(OP_RW, 5);
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x20_0000)).unwrap();
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 44, 0), desc(0x20_0000, 5, 0)])
            .unwrap();
        let mut data = Vec::new();
        let got = parse_tx(&mem, chain, &mut data).unwrap();
        assert_eq!(got, hdr);
        assert_eq!(data, b"hello");
    }

    #[test]
    fn tx_single_descriptor_and_header_split_across_descriptors() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let hdr = sample_hdr(OP_RW, 3);
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        mem.write_slice(&bytes, GuestAddress(0x10_0000)).unwrap();
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 47, 0)]).unwrap();
        let mut data = Vec::new();
        assert_eq!(parse_tx(&mem, chain, &mut data).unwrap(), hdr);
        assert_eq!(data, b"abc");

        // The same bytes cut in the middle of the header.
        mem.write_slice(&bytes[..20], GuestAddress(0x30_0000))
            .unwrap();
        mem.write_slice(&bytes[20..], GuestAddress(0x40_0000))
            .unwrap();
        let chain = vq
            .build_desc_chain(&[desc(0x30_0000, 20, 0), desc(0x40_0000, 27, 0)])
            .unwrap();
        assert_eq!(parse_tx(&mem, chain, &mut data).unwrap(), hdr);
        assert_eq!(data, b"abc");
    }

    #[test]
    fn tx_short_header_rejected() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 20, 0)]).unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, PacketError::ShortHeader { len: 20, .. }),
            "{err}"
        );
    }

    #[test]
    fn tx_len_too_big_rejected() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        // len larger than the data present.
        let hdr = sample_hdr(OP_RW, 100);
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 44, 0), desc(0x20_0000, 10, 0)])
            .unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                PacketError::DataTruncated {
                    len: 100,
                    available: 10,
                    ..
                }
            ),
            "{err}"
        );
        // len larger than the maximum, even though the descriptor is big enough.
        let hdr = sample_hdr(OP_RW, MAX_PKT_DATA as u32 + 1);
        mem.write_slice(&hdr.to_bytes(), GuestAddress(0x10_0000))
            .unwrap();
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 44, 0), desc(0x20_0000, 0x20000, 0)])
            .unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PacketError::DataTooLong { .. }), "{err}");
    }

    #[test]
    fn out_of_range_address_rejected() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 44, 0), desc(0xfff_ff00, 0x1000, 0)])
            .unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PacketError::OutOfRange { .. }), "{err}");
        // Straddling the end of memory, on rx.
        let chain = vq
            .build_desc_chain(&[desc(0xff_fff0, 0x100, VRING_DESC_F_WRITE)])
            .unwrap();
        let err = RxBuffer::parse(&mem, chain).unwrap_err();
        assert!(matches!(err, PacketError::OutOfRange { .. }), "{err}");
    }

    #[test]
    fn looping_chain_rejected() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let next = VRING_DESC_F_NEXT as u16;
        // 0 -> 1 -> 0 -> ...
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 44, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x20_0000, 4, next, 0)),
        ];
        let chain = vq.build_multiple_desc_chains(&descs).unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PacketError::BrokenChain { .. }), "{err}");
        // A `next` index beyond the queue size.
        let descs = [RawDescriptor::from(SplitDescriptor::new(
            0x10_0000, 44, next, 200,
        ))];
        let chain = vq.build_multiple_desc_chains(&descs).unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PacketError::BrokenChain { .. }), "{err}");
    }

    #[test]
    fn wrong_direction_rejected() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        // tx with a device-writable data descriptor.
        let chain = vq
            .build_desc_chain(&[
                desc(0x10_0000, 44, 0),
                desc(0x20_0000, 10, VRING_DESC_F_WRITE),
            ])
            .unwrap();
        let err = parse_tx(&mem, chain, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, PacketError::WrongDirection { pos: 1, .. }),
            "{err}"
        );
        // rx with a device-readable descriptor.
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 100, 0)]).unwrap();
        let err = RxBuffer::parse(&mem, chain).unwrap_err();
        assert!(
            matches!(err, PacketError::WrongDirection { pos: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn rx_write_scatters_over_descriptors() {
        let mem = test_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let w = VRING_DESC_F_WRITE;
        let chain = vq
            .build_desc_chain(&[desc(0x10_0000, 30, w), desc(0x20_0000, 30, w)])
            .unwrap();
        let rx = RxBuffer::parse(&mem, chain).unwrap();
        assert_eq!(rx.head(), 0);
        assert_eq!(rx.data_capacity(), 16);
        let hdr = sample_hdr(OP_RW, 10);
        assert_eq!(rx.write(&mem, &hdr, b"0123456789").unwrap(), 54);
        let mut first = [0u8; 30];
        let mut second = [0u8; 24];
        mem.read_slice(&mut first, GuestAddress(0x10_0000)).unwrap();
        mem.read_slice(&mut second, GuestAddress(0x20_0000))
            .unwrap();
        let mut all = first.to_vec();
        all.extend_from_slice(&second);
        let mut raw = [0u8; HDR_SIZE];
        raw.copy_from_slice(&all[..HDR_SIZE]);
        assert_eq!(VsockHeader::from_bytes(&raw), hdr);
        assert_eq!(&all[HDR_SIZE..], b"0123456789");

        // Too small for a header.
        let chain = vq.build_desc_chain(&[desc(0x10_0000, 43, w)]).unwrap();
        assert!(matches!(
            RxBuffer::parse(&mem, chain),
            Err(PacketError::ShortHeader { len: 43, .. })
        ));
    }
}
