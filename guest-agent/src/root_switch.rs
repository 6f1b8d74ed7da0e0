//! Moving the guest's root off the initramfs at boot, as `switch_root` does.
//!
//! The kernel unpacks the initramfs into rootfs, the root of the mount tree. pivot_root(2)
//! refuses to move a root that has no parent mount, so containers could only be put in their
//! root with MS_MOVE and chroot (runc's `--no-pivot`), which a process with CAP_SYS_CHROOT can
//! leave. PID 1 therefore moves everything onto a tmpfs, mounts that tmpfs over `/` and
//! chroots into it before anything else runs; from then on the current root has a parent and
//! every container gets a real pivot_root. Files are moved one by one (copy, then unlink), so
//! the initramfs pages are freed as the copy goes and memory peaks at one file's size.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AtFlags;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, fchownat, Gid, Uid};

/// statfs magic numbers of the file systems rootfs can be.
const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Debug, thiserror::Error)]
pub enum RootSwitchError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} {path}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootSwitchError {
    let path = path.to_path_buf();
    move |source| RootSwitchError::Io { what, path, source }
}

fn sys_err(what: &'static str, path: &Path) -> impl FnOnce(nix::errno::Errno) -> RootSwitchError {
    let path = path.to_path_buf();
    move |source| RootSwitchError::Sys { what, path, source }
}

/// Whether `/` is still the initramfs (ramfs or tmpfs rootfs, and no `root=` mounted over).
pub fn root_is_initramfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(stat) => {
            let magic = stat.filesystem_type().0;
            (magic == RAMFS_MAGIC || magic == TMPFS_MAGIC) && is_mount_tree_root()
        }
        Err(_) => false,
    }
}

/// `/` is the root of the mount tree when `/..` is `/` on the same device: true for rootfs and
/// for a chroot alike, so this is only asked together with the file system type, before any
/// switch.
fn is_mount_tree_root() -> bool {
    match (fs::metadata("/"), fs::metadata("/..")) {
        (Ok(root), Ok(parent)) => root.dev() == parent.dev() && root.ino() == parent.ino(),
        _ => false,
    }
}

/// Moves the whole initramfs into a tmpfs at `staging` (a directory it creates at the top
/// of `/`), mounts that over `/` and chroots into it. The caller's working directory becomes
/// the new `/`.
pub fn move_root_to_tmpfs(staging: &Path) -> Result<(), RootSwitchError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(staging)
        .map_err(io_err("create", staging))?;
    mount(
        Some("rootfs"),
        staging,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys_err("mount a tmpfs on", staging))?;
    let skip = staging
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    for entry in fs::read_dir("/").map_err(io_err("read", Path::new("/")))? {
        let entry = entry.map_err(io_err("read", Path::new("/")))?;
        if entry.file_name() == skip {
            continue;
        }
        move_entry(&entry.path(), &staging.join(entry.file_name()))?;
    }
    chdir(staging).map_err(sys_err("chdir to", staging))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys_err("move over / the tmpfs", staging))?;
    chroot(".").map_err(sys_err("chroot into", staging))?;
    chdir("/").map_err(sys_err("chdir to", Path::new("/")))?;
    Ok(())
}

/// Moves one entry (recursively) from `from` to `to`: same type, mode and owner.
fn move_entry(from: &Path, to: &Path) -> Result<(), RootSwitchError> {
    let meta = fs::symlink_metadata(from).map_err(io_err("stat", from))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        fs::DirBuilder::new()
            .mode(meta.mode() & 0o7777)
            .create(to)
            .map_err(io_err("create", to))?;
        for entry in fs::read_dir(from).map_err(io_err("read", from))? {
            let entry = entry.map_err(io_err("read", from))?;
            move_entry(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::remove_dir(from).map_err(io_err("remove", from))?;
    } else if kind.is_symlink() {
        let target = fs::read_link(from).map_err(io_err("read link", from))?;
        std::os::unix::fs::symlink(&target, to).map_err(io_err("create link", to))?;
        fs::remove_file(from).map_err(io_err("remove", from))?;
    } else if kind.is_file() {
        fs::copy(from, to).map_err(io_err("copy to the tmpfs", from))?;
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_err("chmod", to))?;
        fs::remove_file(from).map_err(io_err("remove", from))?;
    } else {
        // Device nodes, fifos and sockets: made again with the same type and number.
        let sflag = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
        let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
        mknod(to, sflag, mode, meta.rdev()).map_err(sys_err("mknod", to))?;
        fs::remove_file(from).map_err(io_err("remove", from))?;
    }
    fchownat(
        None,
        to,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys_err("chown", to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_moves_whole_with_modes_links_and_owners() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        let src = from.path().join("tree");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::write(src.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("bin/tool", src.join("link")).unwrap();
        fs::create_dir(src.join("empty")).unwrap();
        let dst = to.path().join("tree");
        move_entry(&src, &dst).unwrap();
        assert!(!src.exists(), "the source is removed as it moves");
        assert_eq!(fs::read(dst.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        let mode = fs::metadata(dst.join("bin/tool")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        assert_eq!(
            fs::read_link(dst.join("link")).unwrap(),
            Path::new("bin/tool")
        );
        assert!(dst.join("empty").is_dir());
    }

    #[test]
    fn errors_name_the_path() {
        let err = move_entry(Path::new("/nonexistent/x"), Path::new("/tmp/y")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
    }
}
