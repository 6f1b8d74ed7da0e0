//! The hostile FUSE requests of the fuzz tests: any opcode, a `len` that may lie, inodes and file
//! handles that may not exist, names that try to leave the share, random offsets and sizes, and
//! bodies cut short or padded with junk.

use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{
    BatchForgetIn, CreateIn, EntryOut, FallocateIn, ForgetIn, ForgetOne, GetxattrIn, InHeader,
    InitIn, LinkIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, ReadIn, ReleaseIn, Rename2In,
    RenameIn, SetattrIn, SetxattrIn, WriteIn, KERNEL_VERSION, ROOT_ID,
};
use vm_memory::ByteValued;

use super::{IN_HDR, MAX_REQUEST};
use crate::devices::virtio::fs::tests::read_obj;
use crate::devices::virtio::fuzz_support::Rng;

use Opcode::*;

/// Every opcode fuse-backend-rs knows (7 and 19 are holes in the numbering).
const OPCODES: [Opcode; 47] = [
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Symlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Statfs,
    Release,
    Fsync,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Flush,
    Init,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Getlk,
    Setlk,
    Setlkw,
    Access,
    Create,
    Interrupt,
    Bmap,
    Destroy,
    Ioctl,
    Poll,
    NotifyReply,
    BatchForget,
    Fallocate,
    Readdirplus,
    Rename2,
    Lseek,
    CopyFileRange,
    SetupMapping,
    RemoveMapping,
];
/// How many inodes and handles [`Known`] remembers.
const MEMORY: usize = 64;

pub(super) fn opcode(op: u32) -> Option<Opcode> {
    OPCODES.iter().copied().find(|&o| o as u32 == op)
}

/// Whether fuse-backend-rs's server has no handler for `op` (it answers ENOSYS).
pub(super) fn unknown(op: u32) -> bool {
    matches!(opcode(op), None | Some(CopyFileRange))
}

/// What the fuzzer names beside junk: a path out of the share, and the inodes and open handles
/// the device gave out lately (so that requests reach past the inode and handle lookups).
pub(super) struct Known {
    marker: Vec<u8>,
    nodes: Vec<u64>,
    handles: Vec<(u64, u64)>,
}

impl Known {
    /// `marker`: the absolute path of a file outside the share.
    pub(super) fn new(marker: Vec<u8>) -> Self {
        Known {
            marker,
            nodes: Vec::new(),
            handles: Vec::new(),
        }
    }

    /// Forgets every inode and handle (after a DESTROY).
    pub(super) fn forget_all(&mut self) {
        self.nodes.clear();
        self.handles.clear();
    }

    /// Learns the inode or handle in `body`, the body of a successful reply to `header`.
    pub(super) fn learn(&mut self, header: &InHeader, body: &[u8]) {
        const ENTRY: usize = size_of::<EntryOut>();
        let node = (body.len() >= ENTRY).then(|| read_obj::<EntryOut>(body).nodeid);
        match opcode(header.opcode) {
            Some(Lookup | Mkdir | Mknod | Symlink | Link) => remember(&mut self.nodes, node),
            Some(Create) if body.len() >= ENTRY + size_of::<OpenOut>() => {
                let fh = read_obj::<OpenOut>(&body[ENTRY..]).fh;
                remember(&mut self.nodes, node);
                remember(&mut self.handles, node.map(|n| (n, fh)));
            }
            Some(Open | Opendir) if body.len() >= size_of::<OpenOut>() => {
                let fh = read_obj::<OpenOut>(body).fh;
                remember(&mut self.handles, Some((header.nodeid, fh)));
            }
            _ => {}
        }
    }
}

/// A request being made: clean or hostile.
struct Gen<'k> {
    known: &'k Known,
    clean: bool,
}

fn remember<T>(list: &mut Vec<T>, item: Option<T>) {
    if let Some(item) = item {
        if list.len() == MEMORY {
            list.remove(0);
        }
        list.push(item);
    }
}

/// Up to `max` bytes, half of them zero.
fn noise(rng: &mut Rng, max: u64) -> Vec<u8> {
    (0..rng.below(max + 1))
        .map(|_| if rng.chance(50) { 0 } else { rng.next() as u8 })
        .collect()
}

fn put<T: ByteValued>(bytes: &mut Vec<u8>, value: T) {
    bytes.extend_from_slice(value.as_slice());
}

/// A name: an entry of the share, a way out of it, or junk (with '/', '.' and NUL bytes). The
/// probe file is never named.
fn fuzz_name(rng: &mut Rng, g: &Gen<'_>) -> Vec<u8> {
    const NAMES: [&[u8]; 16] = [
        b"hello.txt",
        b"sub",
        b"inner.txt",
        b"abs-link",
        b"up-link",
        b"dir-link",
        b".",
        b"..",
        b"",
        b"new",
        b"new.d",
        b"outside",
        b"../outside",
        b"../outside/marker",
        b"sub/../hello.txt",
        b"a\0b",
    ];
    let good: [&[u8]; 6] = [
        b"hello.txt",
        b"new",
        b"new2",
        b"new.d",
        b"sub",
        b"inner.txt",
    ];
    match rng.below(10) {
        _ if g.clean => rng.pick(&good).to_vec(),
        0..=2 => rng.pick(&good).to_vec(),
        3..=5 => rng.pick(&NAMES).to_vec(),
        6 => g.known.marker.clone(),
        7 => vec![b'x'; rng.pick(&[255, 256, 4096])],
        _ => (0..rng.below(12))
            .map(|_| {
                let any = rng.next() as u8;
                rng.pick(&[b'/', b'.', 0, b'a', any])
            })
            .collect(),
    }
}

/// Appends a name as a request carries it, NUL-terminated but now and then not.
fn fuzz_cstr(rng: &mut Rng, g: &Gen<'_>, bytes: &mut Vec<u8>) {
    bytes.extend(fuzz_name(rng, g));
    if g.clean || rng.chance(95) {
        bytes.push(0);
    }
}

/// An inode the device gave out, the root, 0, a small number (inodes are numbered from 2), or
/// junk.
fn fuzz_nodeid(rng: &mut Rng, g: &Gen<'_>) -> u64 {
    let known = &g.known.nodes;
    match rng.below(10) {
        0..=5 if !known.is_empty() && rng.chance(60) => rng.pick(known),
        0..=5 => ROOT_ID,
        _ if g.clean => ROOT_ID,
        6 => 2 + rng.below(64),
        7 => 0,
        8 => u64::MAX - rng.below(2),
        _ => rng.next(),
    }
}

fn fuzz_offset(rng: &mut Rng) -> u64 {
    let (small, any) = (rng.below(0x3000), rng.next());
    rng.pick(&[0, small, 4096, i64::MAX as u64, u64::MAX, any])
}

fn fuzz_size(rng: &mut Rng) -> u32 {
    let (small, any) = (rng.below32(0x3000), rng.next() as u32);
    rng.pick(&[0, 1, small, small, 4096, 0x2_0000, 1 << 20, u32::MAX, any])
}

fn fuzz_open_flags(rng: &mut Rng) -> u32 {
    let any = rng.next() as i32;
    let flags = [
        libc::O_RDONLY,
        libc::O_RDWR,
        libc::O_RDWR,
        libc::O_WRONLY | libc::O_APPEND,
        libc::O_RDWR | libc::O_TRUNC,
        libc::O_DIRECTORY,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        libc::O_TMPFILE | libc::O_RDWR,
        libc::O_NONBLOCK | libc::O_RDWR,
        any,
    ];
    rng.pick(&flags) as u32
}

/// Mostly one of the opcodes a guest uses all the time, or any valid one; else one that does not
/// exist (7, 19 and 47 are holes the server does not serve, 50 and above are past the last).
fn fuzz_opcode(rng: &mut Rng, clean: bool) -> u32 {
    let common = [
        Lookup,
        Lookup,
        Lookup,
        Getattr,
        Setattr,
        Open,
        Open,
        Read,
        Read,
        Write,
        Write,
        Create,
        Create,
        Mkdir,
        Mknod,
        Symlink,
        Link,
        Rename,
        Rename2,
        Unlink,
        Rmdir,
        Release,
        Opendir,
        Readdir,
        Readdirplus,
        Readlink,
        Getxattr,
        Setxattr,
        Listxattr,
        Fallocate,
        Lseek,
        Forget,
    ];
    match rng.below(10) {
        _ if clean => rng.pick(&common) as u32,
        0..=4 => rng.pick(&common) as u32,
        5..=7 => rng.pick(&OPCODES) as u32,
        8 => rng.pick(&[0, 7, 19, 47, 50, 4096, 1 << 20, 26 << 24, u32::MAX]),
        _ => rng.next() as u32,
    }
}

/// The body of a request with `op` (file handle `fh` where it takes one). Two kinds of values
/// are kept sane, as the test runs as root on a developer's machine and fuse-backend-rs serves
/// them to the letter: MKNOD makes no device nodes (a random number could name a host disk), and
/// FALLOCATE stays below 1 MiB (it really reserves host disk). GETXATTR/LISTXATTR sizes go up to
/// u32::MAX: the device cuts them to 64 KiB before fuse-backend-rs reserves host memory for them.
fn fuzz_body(rng: &mut Rng, g: &Gen<'_>, op: Option<Opcode>, fh: u64) -> Vec<u8> {
    let mut b = Vec::new();
    let any = rng.next();
    match op {
        Some(Lookup | Unlink | Rmdir | Removexattr) => fuzz_cstr(rng, g, &mut b),
        Some(Forget) => put(&mut b, ForgetIn { nlookup: any }),
        Some(Setattr) => {
            let size = rng.pick(&[0, 5, 4096, 1 << 40, u64::MAX]);
            let (valid, mode, mtime) = (any as u32 & 0xfff, rng.next() as u32, rng.below(1 << 33));
            let (uid, gid) = (rng.pick(&[0, 1000, any as u32]), (any >> 32) as u32);
            let (atime, padding) = (any, 0);
            let attr = SetattrIn {
                valid,
                fh,
                size,
                atime,
                mtime,
                mode,
                uid,
                gid,
                padding,
                ..Default::default()
            };
            put(&mut b, attr);
        }
        Some(Symlink) => {
            fuzz_cstr(rng, g, &mut b);
            fuzz_cstr(rng, g, &mut b);
        }
        Some(Mknod) => {
            let kind = rng.pick(&[libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK, 0]);
            let (mode, rdev, umask) = (kind | (any as u32 & 0o7777), rng.next() as u32, 0o022);
            put(
                &mut b,
                MknodIn {
                    mode,
                    rdev,
                    umask,
                    padding: 0,
                },
            );
            fuzz_cstr(rng, g, &mut b);
        }
        Some(Mkdir) => {
            put(
                &mut b,
                MkdirIn {
                    mode: any as u32,
                    umask: (any >> 32) as u32 & 0o777,
                },
            );
            fuzz_cstr(rng, g, &mut b);
        }
        Some(Rename | Rename2) => {
            let newdir = fuzz_nodeid(rng, g);
            if let Some(Rename) = op {
                put(&mut b, RenameIn { newdir });
            } else {
                let flags = rng.pick(&[0, 1, 2, 4, any as u32]);
                put(
                    &mut b,
                    Rename2In {
                        newdir,
                        flags,
                        padding: 0,
                    },
                );
            }
            fuzz_cstr(rng, g, &mut b);
            fuzz_cstr(rng, g, &mut b);
        }
        Some(Link) => {
            put(
                &mut b,
                LinkIn {
                    oldnodeid: fuzz_nodeid(rng, g),
                },
            );
            fuzz_cstr(rng, g, &mut b);
        }
        Some(Open | Opendir) => {
            put(
                &mut b,
                OpenIn {
                    flags: fuzz_open_flags(rng),
                    fuse_flags: any as u32,
                },
            );
        }
        Some(Create) => {
            let (flags, mode, umask) = (fuzz_open_flags(rng), any as u32, 0o022);
            put(
                &mut b,
                CreateIn {
                    flags,
                    mode,
                    umask,
                    fuse_flags: (any >> 32) as u32,
                },
            );
            fuzz_cstr(rng, g, &mut b);
        }
        Some(Read | Readdir | Readdirplus) => {
            let (offset, size, read_flags) = (fuzz_offset(rng), fuzz_size(rng), any as u32 & 3);
            let flags = (any >> 32) as u32;
            let read = ReadIn {
                fh,
                offset,
                size,
                read_flags,
                lock_owner: any,
                flags,
                padding: 0,
            };
            put(&mut b, read);
        }
        Some(Write) => {
            let data = noise(rng, 4096);
            let honest = data.len() as u32;
            let size = rng.pick(&[honest, honest, honest, 0, honest + 1, u32::MAX, any as u32]);
            let (offset, fuse_flags) = (fuzz_offset(rng), any as u32 & 7);
            let flags = (any >> 32) as u32;
            let write = WriteIn {
                fh,
                offset,
                size,
                fuse_flags,
                lock_owner: any,
                flags,
                padding: 0,
            };
            put(&mut b, write);
            b.extend(data);
        }
        Some(Release | Releasedir) => {
            let (flags, release_flags) = (any as u32, (any >> 32) as u32 & 3);
            put(
                &mut b,
                ReleaseIn {
                    fh,
                    flags,
                    release_flags,
                    lock_owner: any,
                },
            );
        }
        Some(Setxattr) => {
            let value = noise(rng, 300);
            let honest = value.len() as u32;
            let size = rng.pick(&[honest, honest, honest + 1, u32::MAX]);
            put(
                &mut b,
                SetxattrIn {
                    size,
                    flags: any as u32 & 3,
                },
            );
            b.extend(fuzz_xattr(rng));
            b.extend(value);
        }
        Some(Getxattr | Listxattr) => {
            let size = rng.pick(&[0, 1, 64, 4096, 1 << 16, 1 << 20, u32::MAX]);
            put(&mut b, GetxattrIn { size, padding: 0 });
            if let Some(Getxattr) = op {
                b.extend(fuzz_xattr(rng));
            }
        }
        Some(Init) => {
            let major = rng.pick(&[KERNEL_VERSION, KERNEL_VERSION, 6, 8, 0, u32::MAX]);
            let (minor, max_readahead, flags) = (rng.below32(40), any as u32, (any >> 32) as u32);
            put(
                &mut b,
                InitIn {
                    major,
                    minor,
                    max_readahead,
                    flags,
                },
            );
            b.extend(noise(rng, 48));
        }
        Some(BatchForget) => {
            let count = rng.pick(&[0, 1, 3, u32::MAX, any as u32]);
            put(&mut b, BatchForgetIn { count, dummy: 0 });
            for _ in 0..count.min(4) {
                let nodeid = fuzz_nodeid(rng, g);
                put(
                    &mut b,
                    ForgetOne {
                        nodeid,
                        nlookup: rng.next(),
                    },
                );
            }
        }
        Some(Fallocate) => {
            let (small, length) = (rng.below(1 << 20), rng.below(1 << 20));
            let offset = rng.pick(&[0, small, i64::MAX as u64, u64::MAX]);
            let mode = rng.pick(&[0, 1, 3, 0x10, any as u32 & 0x7f]);
            put(
                &mut b,
                FallocateIn {
                    fh,
                    offset,
                    length,
                    mode,
                    padding: 0,
                },
            );
        }
        // Everything else gets bytes, after a file handle now and then: enough for any of the
        // fixed-size bodies, or too few.
        _ => {
            if rng.chance(50) {
                put(&mut b, fh);
            }
            b.extend(noise(rng, 64));
        }
    }
    if g.clean {
    } else if rng.chance(10) {
        b.truncate(rng.below(b.len() as u64 + 1) as usize);
    } else if rng.chance(5) {
        b.extend(noise(rng, 32));
    }
    b
}

/// An xattr name with its NUL, or without.
fn fuzz_xattr(rng: &mut Rng) -> Vec<u8> {
    let names: [&[u8]; 6] = [
        b"user.fuzz\0",
        b"trusted.overlay.opaque\0",
        b"security.capability\0",
        b"system.posix_acl_access\0",
        b"\0",
        b"user.no-nul",
    ];
    rng.pick(&names).to_vec()
}

/// A request: its in-header (`len` honest mostly, else too short, too long or junk; uid and gid
/// root mostly) and body, on an open handle of the device's half the time. Half of them are
/// clean (a common opcode, an honest length, a whole body, good names, an inode the device gave
/// out or the root, root's uid and gid), so that the others find files and handles to act on.
pub(super) fn fuzz_request(rng: &mut Rng, known: &Known, unique: u64) -> (InHeader, Vec<u8>) {
    let g = &Gen {
        known,
        clean: rng.chance(50),
    };
    let op = fuzz_opcode(rng, g.clean);
    let (nodeid, fh) = match rng.below(4) {
        // Mostly a handle on something else than the root directory, if there is one.
        0 | 1 if !known.handles.is_empty() => {
            let handle = rng.pick(&known.handles);
            match handle.0 {
                ROOT_ID => rng.pick(&known.handles),
                _ => handle,
            }
        }
        _ => {
            let fh = match rng.below(4) {
                0 | 1 => rng.below(32),
                2 => u64::MAX,
                _ => rng.next(),
            };
            (fuzz_nodeid(rng, g), fh)
        }
    };
    let body = fuzz_body(rng, g, opcode(op), fh);
    let honest = IN_HDR + body.len() as u32;
    let any = if g.clean { 0 } else { rng.next() };
    let len = if g.clean || rng.chance(80) {
        honest
    } else {
        let near = rng.pick(&[
            0,
            IN_HDR - 1,
            IN_HDR,
            honest - 1,
            honest + 1,
            honest + 0x1000,
        ]);
        rng.pick(&[near, near, near, MAX_REQUEST + 1, u32::MAX, any as u32])
    };
    let header = InHeader {
        len,
        opcode: op,
        unique,
        nodeid,
        uid: rng.pick(&[0, 0, 0, 1000, any as u32]),
        gid: rng.pick(&[0, 0, 0, 1000, (any >> 32) as u32]),
        pid: rng.next() as u32,
        padding: 0,
    };
    let mut bytes = header.as_slice().to_vec();
    bytes.extend(body);
    (header, bytes)
}
