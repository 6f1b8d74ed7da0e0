//! The host mounts of a pod's share: overlays for container rootfs and binds for volumes, and
//! taking all of them down again. Teardown reads `/proc/self/mountinfo` rather than a list kept
//! in memory, so `stop` from another process, or cleanup after a crash, finds every mount.
//!
//! The guest writes the share, so every mount point in it is reached without following a
//! symlink ([`crate::share_path`]) and mounted or unmounted through its descriptor. Every mount
//! in the share is `nodev,nosuid`: a device node that the guest makes (virtio-fs passes mknod
//! through) or that an image carries opens nothing on the host when the VMM serves it.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::share_path::{open_below, Beneath, Leaf};
use crate::RuntimeError;

/// Flags of every mount in a pod's share.
const SHARE_FLAGS: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

fn mount_error(
    what: &'static str,
    target: &Path,
) -> impl FnOnce(nix::errno::Errno) -> RuntimeError {
    let target = target.to_path_buf();
    move |errno| RuntimeError::Mount {
        what,
        target,
        errno,
    }
}

/// overlayfs on the opened `target` in the share (`nodev,nosuid`): `lower` top layer first,
/// writes to `upper` (with `work` beside it); both outside the share.
pub fn overlay_beneath(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Beneath,
) -> Result<(), RuntimeError> {
    let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &target.fd_path(),
        Some("overlay"),
        SHARE_FLAGS,
        Some(data.as_str()),
    )
    .map_err(mount_error("mount the rootfs overlay on", target.path()))
}

/// Binds `source` (a host path the pod may use) on the opened `target` in the share,
/// recursively, then makes the bind `nodev,nosuid`, and read-only when asked.
pub fn bind_beneath(source: &Path, target: &Beneath, read_only: bool) -> Result<(), RuntimeError> {
    mount(
        Some(source),
        &target.fd_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_error("bind a volume on", target.path()))?;
    let flags = if read_only {
        SHARE_FLAGS | MsFlags::MS_RDONLY
    } else {
        SHARE_FLAGS
    };
    // The old descriptor names the directory below the bind: walk to the bind itself.
    let top = target.reopen()?;
    mount(
        None::<&str>,
        &top.fd_path(),
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(mount_error(
        "set nodev,nosuid (and ro) on the bind on",
        target.path(),
    ))
}

/// Makes `share` (a directory only the host names) a bind of itself with `nodev,nosuid`, so
/// whatever the guest makes in it, outside any other mount, has them too; taking this mount
/// down detaches everything below it at once.
pub fn seal_share(share: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(share).map_err(RuntimeError::io("create", share))?;
    mount(
        Some(share),
        share,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(mount_error("bind the share on itself at", share))?;
    mount(
        None::<&str>,
        share,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | SHARE_FLAGS,
        None::<&str>,
    )
    .map_err(mount_error("set nodev,nosuid on the share", share))
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points in `mountinfo` at or below `root`, deepest first.
pub fn mounts_below(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|point| point.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Unmounts everything at or below `root` (a directory only the host names); returns how many
/// mounts were taken down.
pub fn unmount_all_below(root: &Path) -> Result<usize, RuntimeError> {
    unmount_all_within(root, root)
}

/// Unmounts everything at or below `below`, reaching each mount point from `trusted` (which
/// holds `below`) without following a symlink: the guest may have moved things in the share.
/// Lazily, so a busy mount still goes. Returns how many mounts were taken down.
pub fn unmount_all_within(trusted: &Path, below: &Path) -> Result<usize, RuntimeError> {
    let mut taken = 0;
    let mut last_error = None;
    // A failed walk (the guest moved a directory) is retried after the mounts above it went;
    // the share's own bind, last of all, takes whatever is still below it along.
    for _ in 0..3 {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(RuntimeError::io("read", Path::new("/proc/self/mountinfo")))?;
        let points = mounts_below(&mountinfo, below);
        if points.is_empty() {
            return Ok(taken);
        }
        for point in &points {
            match unmount_one(trusted, point) {
                Ok(()) => taken += 1,
                Err(e) => last_error = Some(e),
            }
        }
    }
    match last_error {
        Some(e) => Err(e),
        None => Ok(taken),
    }
}

/// Lazily unmounts the mount at `point`, reached from `trusted` without following a symlink.
fn unmount_one(trusted: &Path, point: &Path) -> Result<(), RuntimeError> {
    let at = open_below(trusted, point, Leaf::Dir, false)
        .or_else(|_| open_below(trusted, point, Leaf::File, false))?;
    match umount2(&at.fd_path(), MntFlags::MNT_DETACH) {
        // EINVAL: not a mount (any more).
        Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(errno) => Err(RuntimeError::Mount {
            what: "unmount",
            target: point.to_path_buf(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw - ext4 /dev/sda1 rw
30 22 0:40 / /run/nutshell/pods/web/share/containers/app/rootfs rw - overlay overlay rw
31 22 0:41 / /run/nutshell/pods/web/share/volumes/my\\040data rw - tmpfs tmpfs rw
32 22 0:42 / /run/nutshell/pods/webber/share rw - tmpfs tmpfs rw
33 30 0:43 / /run/nutshell/pods/web/share/containers/app/rootfs/proc rw - proc proc rw
";

    #[test]
    fn mounts_below_a_pod_are_found_deepest_first() {
        let found = mounts_below(MOUNTINFO, Path::new("/run/nutshell/pods/web"));
        assert_eq!(
            found,
            [
                PathBuf::from("/run/nutshell/pods/web/share/containers/app/rootfs/proc"),
                PathBuf::from("/run/nutshell/pods/web/share/containers/app/rootfs"),
                PathBuf::from("/run/nutshell/pods/web/share/volumes/my data"),
            ]
        );
    }

    #[test]
    fn binds_and_overlays_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["lower1", "lower2", "upper", "work", "merged", "src", "ro"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        std::fs::write(root.join("lower1/a"), "top").unwrap();
        std::fs::write(root.join("lower2/a"), "bottom").unwrap();
        std::fs::write(root.join("lower2/b"), "b").unwrap();
        let at = |d: &str| open_below(root, &root.join(d), Leaf::Dir, false).unwrap();
        overlay_beneath(
            &[root.join("lower1"), root.join("lower2")],
            &root.join("upper"),
            &root.join("work"),
            &at("merged"),
        )
        .expect("overlay (the tests run as root)");
        assert_eq!(
            std::fs::read_to_string(root.join("merged/a")).unwrap(),
            "top"
        );
        std::fs::write(root.join("merged/c"), "new").unwrap();
        assert!(root.join("upper/c").exists());
        bind_beneath(&root.join("src"), &at("ro"), true).unwrap();
        assert!(
            std::fs::write(root.join("ro/x"), "x").is_err(),
            "read-only bind"
        );
        assert_eq!(unmount_all_below(root).unwrap(), 2);
        assert!(!root.join("merged/a").exists());
        assert_eq!(unmount_all_below(root).unwrap(), 0);
    }

    /// The guest's moves in the share lead no mount or unmount outside it, and a device node
    /// made in it opens nothing.
    #[test]
    fn the_sealed_share_survives_a_guest_moving_things() {
        use crate::share_path::open_beneath;
        let dir = tempfile::tempdir().unwrap();
        let (pod, outside, source) = (
            dir.path().join("pod"),
            dir.path().join("outside"),
            dir.path().join("source"),
        );
        let share = pod.join("share");
        for d in [&outside, &source] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(source.join("f"), "volume").unwrap();
        seal_share(&share).unwrap();
        let target =
            open_beneath(&share, Path::new("containers/c/rootfs"), Leaf::Dir, true).unwrap();
        bind_beneath(&source, &target, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(share.join("containers/c/rootfs/f")).unwrap(),
            "volume"
        );
        assert!(std::fs::write(share.join("containers/c/rootfs/g"), "x").is_err());
        // A device node made in the share (as virtio-fs's mknod would) opens nothing.
        nix::sys::stat::mknod(
            &share.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let err = std::fs::File::open(share.join("null")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "nodev: {err}");
        // The guest moves the container's directory away and puts a symlink to the outside
        // in its place: a new mount there is refused, and teardown still takes all down.
        std::fs::rename(share.join("containers/c"), share.join("containers/moved")).unwrap();
        std::os::unix::fs::symlink(&outside, share.join("containers/c")).unwrap();
        let err =
            open_beneath(&share, Path::new("containers/c/rootfs"), Leaf::Dir, true).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(unmount_all_below(&pod).unwrap(), 2);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts_below(&mountinfo, &pod).is_empty(), "{mountinfo}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
