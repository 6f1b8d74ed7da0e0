//! Paths in a pod's share, which the guest can change at any moment: it writes the share
//! through virtio-fs, so any directory below it may turn into a symlink to a host path between
//! our check and our use. Whatever the host creates, mounts or unmounts there is reached by a
//! walk from a trusted directory (the share, which only the host names) one component at a
//! time with `O_NOFOLLOW`, and then used through its file descriptor (`/proc/self/fd/N`), so a
//! symlink anywhere on the way is an error, never a way out. runc resolves its mount targets
//! the same way.

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

use crate::RuntimeError;

/// What the last component must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

/// A directory or file below a trusted root, held open: the same object however the guest
/// renames things afterwards.
#[derive(Debug)]
pub struct Beneath {
    fd: OwnedFd,
    root: PathBuf,
    rel: PathBuf,
    leaf: Leaf,
    /// The path as it was when opened, for messages.
    shown: PathBuf,
}

impl Beneath {
    /// A path that names exactly the opened object (its `/proc/self/fd` link), for mount(2).
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The path as it was when opened.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// The same path walked again, e.g. to reach what was just mounted on it (a descriptor
    /// opened before a mount names the directory below the mount).
    pub fn reopen(&self) -> Result<Beneath, RuntimeError> {
        open_beneath(&self.root, &self.rel, self.leaf, false)
    }
}

impl fmt::Display for Beneath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shown.display().fmt(f)
    }
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::SharePath {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The components of `rel`, which must be relative and plain (no `..`, no `.`, no root).
fn plain_components(rel: &Path) -> Result<Vec<&OsStr>, RuntimeError> {
    rel.components()
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(unsafe_path(rel, "must be relative, without '.' or '..'")),
        })
        .collect()
}

const DIR_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens the directory `name` in `dir` without following a symlink, making it when missing
/// and `create` is set.
fn step_dir(
    dir: &OwnedFd,
    name: &OsStr,
    create: bool,
    shown: &Path,
) -> Result<OwnedFd, RuntimeError> {
    loop {
        match openat(Some(dir.as_raw_fd()), name, DIR_FLAGS, Mode::empty()) {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { owned(fd) }),
            Err(Errno::ENOENT) if create => {
                match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => continue,
                    Err(errno) => {
                        return Err(unsafe_path(shown, format!("cannot create: {errno}")))
                    }
                }
            }
            Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
                return Err(unsafe_path(shown, "is a symlink or not a directory"))
            }
            Err(errno) => return Err(unsafe_path(shown, errno.to_string())),
        }
    }
}

/// Opens `name` in `dir`, anything but a directory or a symlink (a file, or a socket or device
/// node that a hostPath binds; O_PATH opens nothing), creating an empty file when missing and
/// `create` is set.
fn step_file(
    dir: &OwnedFd,
    name: &OsStr,
    create: bool,
    shown: &Path,
) -> Result<OwnedFd, RuntimeError> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(Some(dir.as_raw_fd()), name, flags, Mode::empty()) {
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(fd) => unsafe { owned(fd) },
        Err(Errno::ENOENT) if create => {
            let make = OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_WRONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC;
            match openat(
                Some(dir.as_raw_fd()),
                name,
                make,
                Mode::from_bits_truncate(0o644),
            ) {
                // SAFETY: openat returned a new descriptor that nothing else owns.
                Ok(made) => drop(unsafe { owned(made) }),
                Err(Errno::EEXIST) => {}
                Err(errno) => return Err(unsafe_path(shown, format!("cannot create: {errno}"))),
            }
            return step_file(dir, name, false, shown);
        }
        Err(errno) => return Err(unsafe_path(shown, errno.to_string())),
    };
    let stat = fstat(fd.as_raw_fd()).map_err(|errno| unsafe_path(shown, errno.to_string()))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
    if kind == SFlag::S_IFLNK {
        return Err(unsafe_path(shown, "is a symlink"));
    }
    if kind == SFlag::S_IFDIR {
        return Err(unsafe_path(shown, "is a directory, a file was expected"));
    }
    Ok(fd)
}

/// # Safety
/// `fd` must be an open descriptor owned by nobody else.
unsafe fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: the caller hands over sole ownership of `fd`.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Opens `root/rel` without following any symlink below `root` (`root` itself is trusted),
/// making missing directories on the way when `create` is set, and the last component as
/// `leaf` (an empty file for [`Leaf::File`]).
pub fn open_beneath(
    root: &Path,
    rel: &Path,
    leaf: Leaf,
    create: bool,
) -> Result<Beneath, RuntimeError> {
    let names = plain_components(rel)?;
    let shown = root.join(rel);
    let held = |fd| Beneath {
        fd,
        root: root.to_path_buf(),
        rel: rel.to_path_buf(),
        leaf,
        shown: shown.clone(),
    };
    let raw = open(root, DIR_FLAGS & !OFlag::O_NOFOLLOW, Mode::empty())
        .map_err(|errno| unsafe_path(root, errno.to_string()))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let mut dir = unsafe { owned(raw) };
    let Some((last, parents)) = names.split_last() else {
        return match leaf {
            Leaf::Dir => Ok(held(dir)),
            Leaf::File => Err(unsafe_path(root, "is a directory, a file was expected")),
        };
    };
    let mut at = root.to_path_buf();
    for name in parents {
        at.push(name);
        dir = step_dir(&dir, name, create, &at)?;
    }
    let fd = match leaf {
        Leaf::Dir => step_dir(&dir, last, create, &shown)?,
        Leaf::File => step_file(&dir, last, create, &shown)?,
    };
    Ok(held(fd))
}

/// [`open_beneath`] for an absolute `path` that must lie below `root`.
pub fn open_below(
    root: &Path,
    path: &Path,
    leaf: Leaf,
    create: bool,
) -> Result<Beneath, RuntimeError> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| unsafe_path(path, format!("is not below {}", root.display())))?;
    open_beneath(root, rel, leaf, create)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_paths_are_walked_and_made() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let made = open_beneath(root, Path::new("a/b/c"), Leaf::Dir, true).unwrap();
        assert!(root.join("a/b/c").is_dir());
        assert_eq!(made.path(), root.join("a/b/c"));
        assert_eq!(
            std::fs::read_link(made.fd_path()).unwrap(),
            root.join("a/b/c")
        );
        open_beneath(root, Path::new("a/f"), Leaf::File, true).unwrap();
        assert!(root.join("a/f").is_file());
        assert!(open_beneath(root, Path::new("a/missing"), Leaf::Dir, false).is_err());
    }

    #[test]
    fn symlinks_and_dots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("abs")).unwrap();
        symlink("d", root.join("rel")).unwrap();
        std::fs::write(outside.join("f"), "host").unwrap();
        for (rel, leaf) in [
            ("abs", Leaf::Dir),
            ("abs/new", Leaf::Dir),
            ("abs/f", Leaf::File),
            ("rel/x", Leaf::Dir),
            ("d/../abs", Leaf::Dir),
            ("/etc", Leaf::Dir),
        ] {
            let err = open_beneath(&root, Path::new(rel), leaf, true)
                .expect_err(rel)
                .to_string();
            assert!(
                err.contains("symlink") || err.contains(".."),
                "{rel}: {err}"
            );
        }
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing was made outside"
        );
    }

    #[test]
    fn a_fifo_is_a_mount_point_but_a_directory_is_no_file() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        open_beneath(dir.path(), Path::new("p"), Leaf::File, false).expect("O_PATH, no block");
        let err = open_beneath(dir.path(), Path::new("d"), Leaf::File, true).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    /// A real race: one thread swaps a directory and a symlink to the outside (atomically,
    /// with RENAME_EXCHANGE) as fast as it can, while directories are made through the
    /// swapping name. Every walk ends inside or fails; nothing ever appears outside.
    #[test]
    fn a_swapping_symlink_never_leads_outside() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("vol/x")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("vol/x.link")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, vol) = (stop.clone(), root.join("vol"));
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    nix::fcntl::renameat2(
                        None,
                        &vol.join("x"),
                        None,
                        &vol.join("x.link"),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .expect("RENAME_EXCHANGE");
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut inside, mut refused) = (0, 0);
        for i in 0..3000 {
            match open_beneath(&root, Path::new(&format!("vol/x/d{i}")), Leaf::Dir, true) {
                Ok(_) => inside += 1,
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 100, "the swapper ran ({swaps} swaps)");
        assert!(
            inside > 0 && refused > 0,
            "both outcomes seen: {inside} made, {refused} refused"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "a directory was made outside the root"
        );
    }
}
