//! Paths resolved inside a directory, for the container's init between fork and execve:
//! async-signal-safe (system calls on stack buffers, no allocation, no locks).
//!
//! - [`open_in_root`]: runc's securejoin semantics for mount targets. The path is resolved with
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` below the rootfs: symlinks are followed,
//!   but an absolute link target or `..` stays inside the rootfs (`/var/run -> /run` lands on
//!   the rootfs's `/run`, never the guest's). Missing components are made one at a time with
//!   `mkdirat` on the parent resolved in the root (an empty file for the last one of a file
//!   bind); a dangling symlink on the way is followed by rewriting the path with its text, as
//!   the kernel would.
//! - [`open_beneath_no_symlinks`]: a bind source below a directory other containers can write
//!   (the pod share): `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, so a
//!   component swapped for a symlink fails (ELOOP) instead of being followed.
//! - [`FdPath`]: `/proc/self/fd/N` in a fixed buffer, to mount on or from an opened descriptor.
//!
//! Descriptors come back as raw `O_PATH | O_CLOEXEC` descriptors the caller closes; errors as
//! errno values.

use std::ffi::CStr;
use std::os::fd::RawFd;

/// Longest path (with its NUL) the walk handles: PATH_MAX.
pub const PATH_BUF: usize = libc::PATH_MAX as usize;
/// Longest path component (with its NUL): NAME_MAX.
const NAME_BUF: usize = 256;
/// Symlinks a walk follows by rewriting at most, like the kernel's MAXSYMLINKS.
const MAX_LINKS: usize = 40;
/// Retries of a component that is created, then gone again (a race), and of openat2's EAGAIN.
const MAX_RETRIES: usize = 8;

/// What a missing last component becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

/// The calling thread's errno (async-signal-safe: no allocation).
fn errno() -> i32 {
    crate::child_report::errno()
}

/// openat2(2) with O_PATH | O_CLOEXEC; EAGAIN (a concurrent rename or mount seen while
/// resolving `..`) and EINTR are retried.
fn openat2(dir: RawFd, path: &CStr, resolve: u64) -> Result<RawFd, i32> {
    // SAFETY: open_how is plain old data (three u64); zero is valid for every field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    let mut tries = 0;
    loop {
        // SAFETY: openat2 with a NUL-terminated path and an open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            return Ok(fd as RawFd);
        }
        let e = errno();
        tries += 1;
        if !(e == libc::EAGAIN || e == libc::EINTR) || tries >= MAX_RETRIES {
            return Err(e);
        }
    }
}

fn close(fd: RawFd) {
    // SAFETY: closes a descriptor this module opened and nothing else holds.
    unsafe { libc::close(fd) };
}

/// `buf[..=len]` as a C string; `buf[len]` must be 0.
fn c_str(buf: &[u8], len: usize) -> &CStr {
    CStr::from_bytes_until_nul(&buf[..=len]).unwrap_or(c"")
}

/// Resolves `buf[..len]` (relative, NUL at `buf[len]`) in `root`.
fn resolve(root: RawFd, buf: &[u8], len: usize) -> Result<RawFd, i32> {
    openat2(
        root,
        c_str(buf, len),
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Copies `parts` one after the other into `out` (NUL-terminated); its length, or
/// ENAMETOOLONG.
fn join_into(out: &mut [u8; PATH_BUF], parts: &[&[u8]]) -> Result<usize, i32> {
    let mut len = 0;
    for part in parts {
        if len + part.len() >= PATH_BUF {
            return Err(libc::ENAMETOOLONG);
        }
        out[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    out[len] = 0;
    Ok(len)
}

/// `path` below `root` without its leading slashes; `.` for the root itself.
fn relative(path: &[u8]) -> &[u8] {
    let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
    match &path[start..] {
        [] => b".",
        rest => rest,
    }
}

/// Opens `path` (absolute or relative, both meaning below `root`) inside `root` with the
/// semantics of a chroot to `root`: symlinks followed, absolute links and `..` kept inside,
/// magic links (/proc/self/...) refused with ELOOP. With `create`, missing components are made
/// (directories, and a `Leaf::File` last component as an empty 0644 file), each directly in
/// its parent resolved inside `root`: nothing is ever created outside it.
pub fn open_in_root(root: RawFd, path: &[u8], create: Option<Leaf>) -> Result<RawFd, i32> {
    let mut buf = [0u8; PATH_BUF];
    let mut len = join_into(&mut buf, &[relative(path)])?;
    let mut restarts = 0;
    loop {
        match resolve(root, &buf, len) {
            Ok(fd) => return Ok(fd),
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let Some(leaf) = create else {
            return Err(libc::ENOENT);
        };
        restarts += 1;
        if restarts > MAX_LINKS {
            return Err(libc::ELOOP);
        }
        len = create_missing(root, &mut buf, len, leaf)?;
    }
}

/// A descriptor closed when dropped (-1: none).
struct Guard(RawFd);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0 >= 0 {
            close(self.0);
        }
    }
}

/// Creates the first missing component of `buf[..len]` and every one after it, each in its
/// parent resolved in `root`. A dangling symlink met on the way is replaced in the path by
/// its text (resolved again by the caller). Returns the length of the (possibly rewritten)
/// path.
fn create_missing(
    root: RawFd,
    buf: &mut [u8; PATH_BUF],
    len: usize,
    leaf: Leaf,
) -> Result<usize, i32> {
    // The deepest existing prefix; -1 while that is the root itself.
    let mut parent = Guard(-1);
    let mut start = 0;
    let mut retries = 0;
    loop {
        while start < len && buf[start] == b'/' {
            start += 1;
        }
        if start >= len {
            return Ok(len);
        }
        let end = buf[start..len]
            .iter()
            .position(|&b| b == b'/')
            .map_or(len, |i| start + i);
        let saved = buf[end];
        buf[end] = 0;
        let resolved = resolve(root, &buf[..], end);
        buf[end] = saved;
        match resolved {
            Ok(fd) => {
                parent = Guard(fd);
                start = end;
                retries = 0;
                continue;
            }
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // buf[start..end] is missing in `parent`: make it.
        let mut name = [0u8; NAME_BUF];
        let name = component(&mut name, &buf[start..end])?;
        let dir = if parent.0 >= 0 { parent.0 } else { root };
        let last = buf[end..len].iter().all(|&b| b == b'/');
        let made = if last && leaf == Leaf::File {
            // SAFETY: openat on a NUL-terminated name in a directory descriptor.
            let fd = unsafe {
                libc::openat(
                    dir,
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644 as libc::c_uint,
                )
            };
            drop(Guard(fd));
            fd >= 0
        } else {
            // SAFETY: mkdirat on a NUL-terminated name in a directory descriptor.
            unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) == 0 }
        };
        let err = if made { 0 } else { errno() };
        if made || (err == libc::EEXIST && !is_symlink(dir, name)) {
            // Made (or made by someone else meanwhile): resolve this prefix again.
            retries += 1;
            if retries > MAX_RETRIES {
                return Err(libc::ENOENT);
            }
            continue;
        }
        if err != libc::EEXIST {
            return Err(err);
        }
        // A dangling symlink: the path becomes its text followed by the rest.
        return follow_link(dir, name, buf, start, end, len);
    }
}

/// `bytes` (one path component) as a C string in `out`.
fn component<'a>(out: &'a mut [u8; NAME_BUF], bytes: &[u8]) -> Result<&'a CStr, i32> {
    if bytes.len() >= NAME_BUF {
        return Err(libc::ENAMETOOLONG);
    }
    out[..bytes.len()].copy_from_slice(bytes);
    out[bytes.len()] = 0;
    CStr::from_bytes_until_nul(&out[..]).map_err(|_| libc::EINVAL)
}

/// Whether `name` in `dir` is a symlink (not followed).
fn is_symlink(dir: RawFd, name: &CStr) -> bool {
    // SAFETY: fstatat into a stack struct, on a NUL-terminated name.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
            && st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// Rewrites `buf` (`buf[start..end]` is the symlink `name` in `dir`) to the link's text
/// followed by `buf[end..len]`: an absolute text restarts at the root, a relative one from
/// `buf[..start]`, the directory holding the link (`..` in the text is resolved physically
/// by openat2, as the kernel does for the link itself).
fn follow_link(
    dir: RawFd,
    name: &CStr,
    buf: &mut [u8; PATH_BUF],
    start: usize,
    end: usize,
    len: usize,
) -> Result<usize, i32> {
    let mut text = [0u8; PATH_BUF];
    // SAFETY: readlinkat into a stack buffer of the size passed.
    let n =
        unsafe { libc::readlinkat(dir, name.as_ptr(), text.as_mut_ptr().cast(), text.len() - 1) };
    if n <= 0 {
        return Err(if n == 0 { libc::ENOENT } else { errno() });
    }
    let text = &text[..n as usize];
    let mut out = [0u8; PATH_BUF];
    let new_len = if text[0] == b'/' {
        join_into(&mut out, &[relative(text), &buf[end..len]])?
    } else {
        join_into(&mut out, &[&buf[..start], text, &buf[end..len]])?
    };
    buf[..=new_len].copy_from_slice(&out[..=new_len]);
    Ok(new_len)
}

/// Opens `path` below the directory `base` with no symlink at all on the way, the last
/// component included (ELOOP), and without leaving `base` through `..` (EXDEV). `base`
/// itself is opened normally: it is the guest's own path (the share's mount point).
pub fn open_beneath_no_symlinks(base: &CStr, path: &CStr) -> Result<RawFd, i32> {
    // SAFETY: open on a NUL-terminated path.
    let base_fd = unsafe {
        libc::open(
            base.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if base_fd < 0 {
        return Err(errno());
    }
    let fd = openat2(
        base_fd,
        path,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    );
    close(base_fd);
    fd
}

/// Whether an opened descriptor is a directory (false when fstat fails).
pub fn is_dir(fd: RawFd) -> bool {
    // SAFETY: fstat into a stack struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// `/proc/self/fd/<fd>` as a C string in a fixed buffer: mount(2) follows the magic link to
/// the very file the descriptor names.
pub struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    pub fn new(fd: RawFd) -> FdPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let mut n = fd.max(0) as u32;
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..count {
            buf[PREFIX.len() + i] = digits[count - 1 - i];
        }
        FdPath { buf }
    }

    pub fn as_c_str(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"")
    }
}

#[cfg(test)]
#[path = "scoped_path_tests.rs"]
mod tests;
