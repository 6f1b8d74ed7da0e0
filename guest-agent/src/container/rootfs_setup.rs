//! The child side of a container's root: a writable overlay of the image, the spec's mounts,
//! the standard /dev nodes and links, the switch into the new root, then sysctls, read-only
//! and masked paths. Everything it uses is prepared before the fork ([`RootfsPlan`]).

use std::ffi::CString;
use std::os::fd::RawFd;

use super::mounts::PlannedMount;
use super::steps::Step;
use crate::child_report::{errno, fail, fail_item};

/// Everything the init process needs to build its root.
pub struct RootfsPlan {
    /// Mount point of the new root (the overlay goes here).
    pub root: CString,
    /// `lowerdir=<image>,upperdir=..,workdir=..`.
    pub overlay_data: CString,
    pub mounts: Vec<PlannedMount>,
    /// Character devices bound from the guest's /dev: (source, target below the new root).
    pub devices: Vec<(CString, CString)>,
    /// Symbolic links to make: (link text, path below the new root).
    pub symlinks: Vec<(CString, CString)>,
    /// Where pivot_root puts the old root, below the new root.
    pub put_old: CString,
    /// Inside the new root: (/proc/sys path, value).
    pub sysctls: Vec<(CString, CString)>,
    pub readonly_paths: Vec<CString>,
    pub masked_paths: Vec<CString>,
    pub readonly_root: bool,
    /// Set when the container has a uts namespace of its own.
    pub hostname: Option<CString>,
}

/// Before the switch: private mounts, the overlay, the spec's mounts, /dev, then the switch.
pub fn build_root(plan: &RootfsPlan, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: mount/mkdir/open/symlink on C strings prepared before the fork.
    unsafe {
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            null.cast(),
        ) != 0
        {
            fail(report, Step::MakePrivate.index());
        }
        if libc::mount(
            c"overlay".as_ptr(),
            plan.root.as_ptr(),
            c"overlay".as_ptr(),
            0,
            plan.overlay_data.as_ptr().cast(),
        ) != 0
        {
            fail(report, Step::MountRootfs.index());
        }
        for (i, m) in plan.mounts.iter().enumerate() {
            mount_one(m, i, report);
        }
        for (i, (source, target)) in plan.devices.iter().enumerate() {
            let fd = libc::open(
                target.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            if fd >= 0 {
                libc::close(fd);
            }
            if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ) != 0
            {
                fail_item(report, Step::BindDevice.index(), i);
            }
        }
        for (text, path) in &plan.symlinks {
            libc::symlink(text.as_ptr(), path.as_ptr());
        }
    }
    switch_root(plan, report);
}

/// Makes the target (directory, or empty file for a file bind) and mounts `m`.
fn mount_one(m: &PlannedMount, index: usize, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: mkdir/open/mount on C strings prepared before the fork.
    unsafe {
        if m.file_target {
            let fd = libc::open(
                m.target.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                libc::close(fd);
            }
        } else {
            make_dirs(&m.target);
        }
        let data = if m.data.is_empty() {
            null.cast()
        } else {
            m.data.as_ptr().cast()
        };
        let fstype = if m.fstype.is_empty() {
            null
        } else {
            m.fstype.as_ptr()
        };
        if libc::mount(m.source.as_ptr(), m.target.as_ptr(), fstype, m.flags, data) != 0 {
            fail_item(report, Step::Mount.index(), index);
        }
        if m.remount_flags != 0
            && libc::mount(null, m.target.as_ptr(), null, m.remount_flags, null.cast()) != 0
        {
            fail_item(report, Step::Remount.index(), index);
        }
        if m.propagation != 0
            && libc::mount(null, m.target.as_ptr(), null, m.propagation, null.cast()) != 0
        {
            fail_item(report, Step::Propagation.index(), index);
        }
    }
}

/// mkdir -p, in place on a copy of the path's bytes (no allocation: fixed buffer).
fn make_dirs(path: &CString) {
    let bytes = path.as_bytes_with_nul();
    let mut buf = [0u8; 4096];
    if bytes.len() > buf.len() {
        return;
    }
    buf[..bytes.len()].copy_from_slice(bytes);
    for i in 1..bytes.len() - 1 {
        if buf[i] == b'/' {
            buf[i] = 0;
            // SAFETY: buf holds a NUL-terminated prefix of the path.
            unsafe { libc::mkdir(buf.as_ptr().cast(), 0o755) };
            buf[i] = b'/';
        }
    }
    // SAFETY: the whole NUL-terminated path.
    unsafe { libc::mkdir(buf.as_ptr().cast(), 0o755) };
}

/// pivot_root into the new root; on the initramfs (which cannot be pivoted away from) move
/// the new root over / and chroot, as runc's --no-pivot does.
fn switch_root(plan: &RootfsPlan, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    let step = Step::RootSwitch.index();
    // SAFETY: mkdir/pivot_root/chdir/umount/mount/chroot on prepared C strings.
    unsafe {
        libc::mkdir(plan.put_old.as_ptr(), 0o700);
        if libc::syscall(
            libc::SYS_pivot_root,
            plan.root.as_ptr(),
            plan.put_old.as_ptr(),
        ) == 0
        {
            if libc::chdir(c"/".as_ptr()) != 0
                || libc::umount2(c"/.oldroot".as_ptr(), libc::MNT_DETACH) != 0
            {
                fail(report, step);
            }
            libc::rmdir(c"/.oldroot".as_ptr());
        } else if errno() == libc::EINVAL {
            libc::rmdir(plan.put_old.as_ptr());
            if libc::chdir(plan.root.as_ptr()) != 0
                || libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    null,
                    libc::MS_MOVE,
                    null.cast(),
                ) != 0
                || libc::chroot(c".".as_ptr()) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                fail(report, step);
            }
        } else {
            fail(report, step);
        }
    }
}

/// After the switch: sysctls, read-only paths, masked paths, read-only root, hostname.
pub fn harden_root(plan: &RootfsPlan, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: open/write/mount/sethostname on C strings prepared before the fork.
    unsafe {
        for (i, (path, value)) in plan.sysctls.iter().enumerate() {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            let bytes = value.as_bytes();
            if fd < 0 || libc::write(fd, bytes.as_ptr().cast(), bytes.len()) < 0 {
                fail_item(report, Step::Sysctl.index(), i);
            }
            libc::close(fd);
        }
        for (i, path) in plan.readonly_paths.iter().enumerate() {
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                null.cast(),
            ) != 0
            {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail_item(report, Step::ReadonlyPath.index(), i);
            }
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            if libc::mount(null, path.as_ptr(), null, flags, null.cast()) != 0 {
                fail_item(report, Step::ReadonlyPath.index(), i);
            }
        }
        for (i, path) in plan.masked_paths.iter().enumerate() {
            if libc::mount(
                c"/dev/null".as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ) == 0
            {
                continue;
            }
            match errno() {
                libc::ENOENT => continue,
                // A directory: an empty read-only tmpfs over it.
                libc::ENOTDIR | libc::EISDIR => {
                    if libc::mount(
                        c"tmpfs".as_ptr(),
                        path.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY,
                        c"size=0".as_ptr().cast(),
                    ) != 0
                    {
                        fail_item(report, Step::MaskedPath.index(), i);
                    }
                }
                _ => fail_item(report, Step::MaskedPath.index(), i),
            }
        }
        if plan.readonly_root
            && libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                null.cast(),
            ) != 0
        {
            fail(report, Step::ReadonlyRoot.index());
        }
        if let Some(name) = &plan.hostname {
            let bytes = name.as_bytes();
            if libc::sethostname(bytes.as_ptr().cast(), bytes.len()) != 0 {
                fail(report, Step::Hostname.index());
            }
        }
    }
}
