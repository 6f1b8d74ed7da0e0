//! The child side of a container's root: a writable overlay of the image, the spec's mounts,
//! the standard /dev nodes and links, the switch into the new root, then sysctls, read-only
//! and masked paths. Everything it uses is prepared before the fork ([`RootfsPlan`]).
//!
//! Until the switch, every path below the new root is resolved inside it
//! ([`scoped_path::open_in_root`], runc's securejoin semantics) and mounted on through
//! `/proc/self/fd/N`: an image's symlink (`/var/run -> /run`, `up -> ../../..`) can never send a
//! mount, a created directory or a device node into the guest's own root. Bind sources below the
//! pod share are opened without following any symlink.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use super::mounts::PlannedMount;
use super::scoped_path::{self, FdPath, Leaf};
use super::steps::Step;
use crate::child_report::{errno, fail, fail_item};

/// Everything the init process needs to build its root.
pub struct RootfsPlan {
    /// Mount point of the new root (the overlay goes here).
    pub root: CString,
    /// `lowerdir=<image>,upperdir=..,workdir=..`.
    pub overlay_data: CString,
    pub mounts: Vec<PlannedMount>,
    /// Character devices bound from the guest's /dev: (source, target relative to the new
    /// root, e.g. `dev/null`).
    pub devices: Vec<(CString, CString)>,
    /// Symbolic links to make: (link text, path relative to the new root, e.g. `dev/ptmx`).
    pub symlinks: Vec<(CString, CString)>,
    /// Inside the new root: (/proc/sys path, value).
    pub sysctls: Vec<(CString, CString)>,
    pub readonly_paths: Vec<CString>,
    pub masked_paths: Vec<CString>,
    pub readonly_root: bool,
    /// Set when the container has a uts namespace of its own.
    pub hostname: Option<CString>,
}

/// Reports `step` failed on `item` with the errno `err` (from a function that returns it
/// rather than leaving it in errno), and exits.
fn fail_with(report: RawFd, step: Step, item: usize, err: i32) -> ! {
    // SAFETY: writes the calling thread's errno, which fail_item reads.
    unsafe { *libc::__errno_location() = err };
    fail_item(report, step.index(), item)
}

fn close(fd: RawFd) {
    if fd >= 0 {
        // SAFETY: closes a descriptor this child opened.
        unsafe { libc::close(fd) };
    }
}

/// Before the switch: private mounts, the overlay, the spec's mounts, /dev, then the switch.
pub fn build_root(plan: &RootfsPlan, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: mount/open/symlinkat on C strings and descriptors prepared before the fork or
    // opened here.
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
        // Opened after the overlay mount, so that it names the overlay's root.
        let root = libc::open(
            plan.root.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if root < 0 {
            fail(report, Step::MountRootfs.index());
        }
        for (i, m) in plan.mounts.iter().enumerate() {
            mount_one(root, m, i, report);
        }
        for (i, (source, target)) in plan.devices.iter().enumerate() {
            let fd = scoped_path::open_in_root(root, target.to_bytes(), Some(Leaf::File))
                .unwrap_or_else(|e| fail_with(report, Step::BindDevice, i, e));
            if libc::mount(
                source.as_ptr(),
                FdPath::new(fd).as_c_str().as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ) != 0
            {
                fail_item(report, Step::BindDevice.index(), i);
            }
            close(fd);
        }
        for (text, path) in &plan.symlinks {
            make_symlink(root, text, path);
        }
        switch_root(root, report);
    }
}

/// `text` as a symlink at `path` (relative to `root`), its directory resolved in the root.
/// Failures are ignored, as runc does for the /dev links.
fn make_symlink(root: RawFd, text: &CStr, path: &CStr) {
    let bytes = path.to_bytes_with_nul();
    let (dir, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(slash) => (&bytes[..slash], &bytes[slash + 1..]),
        None => (&b"."[..], bytes),
    };
    let Ok(name) = CStr::from_bytes_with_nul(name) else {
        return;
    };
    if let Ok(fd) = scoped_path::open_in_root(root, dir, None) {
        // SAFETY: symlinkat on NUL-terminated strings in a directory descriptor.
        unsafe { libc::symlinkat(text.as_ptr(), fd, name.as_ptr()) };
        close(fd);
    }
}

/// Makes the target (directory, or empty file for a file bind) inside `root` and mounts `m`
/// on it; then the remount and propagation change, on the mount just made.
fn mount_one(root: RawFd, m: &PlannedMount, index: usize, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    let mut file_target = m.file_target;
    let source_fd = match &m.scoped_source {
        Some(scoped) => match scoped_path::open_beneath_no_symlinks(&scoped.base, &scoped.path) {
            Ok(fd) => {
                file_target = !scoped_path::is_dir(fd);
                fd
            }
            Err(e) => fail_with(report, Step::MountSource, index, e),
        },
        None => -1,
    };
    let leaf = if file_target { Leaf::File } else { Leaf::Dir };
    let target = scoped_path::open_in_root(root, m.target.to_bytes(), Some(leaf))
        .unwrap_or_else(|e| fail_with(report, Step::MountTarget, index, e));
    let source_path = FdPath::new(source_fd);
    let source = if source_fd >= 0 {
        source_path.as_c_str()
    } else {
        m.source.as_c_str()
    };
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
    // SAFETY: mount on C strings prepared before the fork or formatted on the stack.
    unsafe {
        let target_path = FdPath::new(target);
        if libc::mount(
            source.as_ptr(),
            target_path.as_c_str().as_ptr(),
            fstype,
            m.flags,
            data,
        ) != 0
        {
            fail_item(report, Step::Mount.index(), index);
        }
    }
    close(target);
    close(source_fd);
    if m.remount_flags == 0 && m.propagation == 0 {
        return;
    }
    // The descriptor opened before names the directory below the new mount: open it again.
    let top = scoped_path::open_in_root(root, m.target.to_bytes(), None)
        .unwrap_or_else(|e| fail_with(report, Step::MountTarget, index, e));
    let top_path = FdPath::new(top);
    let top_path = top_path.as_c_str().as_ptr();
    // SAFETY: mount on a path formatted on the stack.
    unsafe {
        if m.remount_flags != 0
            && libc::mount(null, top_path, null, m.remount_flags, null.cast()) != 0
        {
            fail_item(report, Step::Remount.index(), index);
        }
        if m.propagation != 0 && libc::mount(null, top_path, null, m.propagation, null.cast()) != 0
        {
            fail_item(report, Step::Propagation.index(), index);
        }
    }
    close(top);
}

/// pivot_root into the new root (`root`, the overlay's root) with runc's `pivot_root(".",
/// ".")`, which needs no directory for the old root inside the image; on the initramfs (which
/// cannot be pivoted away from) move the new root over / and chroot, as runc's --no-pivot does.
fn switch_root(root: RawFd, report: RawFd) {
    let null = std::ptr::null::<libc::c_char>();
    let step = Step::RootSwitch.index();
    // SAFETY: open/fchdir/pivot_root/umount/mount/chroot on descriptors opened here and
    // literal C strings.
    unsafe {
        let old_root = libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if old_root < 0 || libc::fchdir(root) != 0 {
            fail(report, step);
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0 {
            // The old root is now mounted on top of the new one: detach it (everything is
            // private since MakePrivate, so nothing propagates back to the guest).
            if libc::fchdir(old_root) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                fail(report, step);
            }
        } else if errno() == libc::EINVAL {
            // The working directory is the new root.
            if libc::mount(
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
        close(old_root);
        close(root);
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
