//! The file system the device serves: fuse-backend-rs's passthrough behind two guards against a
//! hostile guest.
//!
//! **Handle flags are pinned at OPEN/CREATE.** fuse-backend-rs 0.14's passthrough `read` and
//! `write` wrap the handle's host descriptor in a `File` and, when the request's flags differ
//! from the handle's, call `fcntl(F_SETFL)` *before* protecting the `File` from being dropped.
//! When the kernel refuses the change (O_DIRECT on a directory or on tmpfs, anything on an
//! O_PATH descriptor, O_NOATIME on a file the VMM does not own) the early return closes the
//! handle's descriptor while the handle stays valid. The next descriptor the VMM opens takes the
//! same number, and the guest's handle then reads or writes that file: found by the fuzz tests,
//! shown there to read a host file outside the share. The guest's per-request flags only carry
//! what `fcntl(F_SETFL)` can change (O_APPEND, O_NONBLOCK, O_DIRECT, O_NOATIME, O_ASYNC), none of
//! which the passthrough needs after open: it reads and writes at explicit offsets. So this
//! layer records the flags each handle was opened with and hands exactly those to `read` and
//! `write`; the passthrough then never calls `fcntl`. A handle it does not know gets EBADF.
//! (`write`'s `seal_size` check has the same flaw; the device leaves `seal_size` off.)
//!
//! **Xattr buffers are capped.** The passthrough reserves the guest's `size` for GETXATTR and
//! LISTXATTR up front (up to 4 GiB); Linux never asks for more than `XATTR_SIZE_MAX` (64 KiB),
//! which is also the most a value or a list can be, so larger requests are cut to that.
//!
//! Everything else is delegated unchanged.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use super::Passthrough;

type Inode = u64;
type Handle = u64;

/// The most an xattr value or name list can be (`XATTR_SIZE_MAX`, linux/limits.h).
const XATTR_SIZE_MAX: u32 = 65536;

/// The passthrough behind the guards. See the module docs.
pub struct GuardedPassthrough {
    inner: Arc<Passthrough>,
    /// Each open file handle and the flags the passthrough recorded for it at open.
    handles: Mutex<HashMap<Handle, u32>>,
}

impl GuardedPassthrough {
    pub fn new(inner: Arc<Passthrough>) -> Self {
        GuardedPassthrough {
            inner,
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<Handle, u32>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin(&self, handle: Option<Handle>, flags: u32) {
        if let Some(handle) = handle {
            self.handles().insert(handle, flags);
        }
    }

    /// The flags `handle` was opened with, or EBADF.
    fn pinned(&self, handle: Handle) -> io::Result<u32> {
        self.handles()
            .get(&handle)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

impl FileSystem for GuardedPassthrough {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        // The passthrough drops every handle.
        self.inner.destroy();
        self.handles().clear();
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.pin(opened.0, flags);
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        let flags = args.flags;
        let created = self.inner.create(ctx, parent, name, args)?;
        self.pin(created.1, flags);
        Ok(created)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.pinned(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let flags = self.pinned(handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let released =
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        self.handles().remove(&handle);
        released
    }

    // Everything below is plain delegation.

    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner
            .getxattr(ctx, inode, name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_SIZE_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use fuse_backend_rs::abi::fuse_abi::{Opcode, OpenIn, OpenOut, ReadIn, ROOT_ID};
    use vm_memory::ByteValued;

    use super::super::tests::{new_device, read_obj, share_tree, test_mem, Driver, TempDir};
    use crate::devices::virtio::device::VirtioDevice;

    /// The exploit the fuzz tests found, step by step: a READ whose flags `fcntl(F_SETFL)`
    /// refuses (O_DIRECT on a directory), then the VMM opens a file outside the share (it takes
    /// the lowest free descriptor), then the guest reads through its handle again. It must still
    /// be its own directory.
    #[test]
    fn refused_read_flags_leave_the_handle_on_its_own_file() {
        let dir = TempDir::new();
        let share = share_tree(&dir);
        let mut dev = new_device(&share);
        let mem = test_mem();
        let (mut driver, ctx, _interrupt) = Driver::new(&mem);
        dev.activate(ctx).unwrap();
        driver.init();

        let open = OpenIn {
            flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
            fuse_flags: 0,
        };
        let opened: OpenOut =
            read_obj(&driver.call(Opcode::Open, ROOT_ID, open.as_slice()).unwrap());
        let read = |flags: i32| ReadIn {
            fh: opened.fh,
            offset: 0,
            size: 64,
            flags: flags as u32,
            ..Default::default()
        };
        let hostile = driver.call(Opcode::Read, ROOT_ID, read(libc::O_DIRECT).as_slice());
        assert_eq!(hostile, Err(libc::EISDIR));
        let outside = std::fs::File::open(dir.path().join("secret")).unwrap();
        let again = driver.call(Opcode::Read, ROOT_ID, read(0).as_slice());
        assert_eq!(
            again,
            Err(libc::EISDIR),
            "the handle now reads another file"
        );
        drop(outside);
        // A handle the passthrough never gave out is refused before it gets there.
        let unknown = ReadIn {
            fh: opened.fh + 1000,
            ..read(0)
        };
        assert_eq!(
            driver.call(Opcode::Read, ROOT_ID, unknown.as_slice()),
            Err(libc::EBADF)
        );
    }
}
