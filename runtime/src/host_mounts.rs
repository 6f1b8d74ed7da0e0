//! The host mounts of a pod's share: overlays for container rootfs and binds for volumes, and
//! taking all of them down again. Teardown reads `/proc/self/mountinfo` rather than a list kept
//! in memory, so `stop` from another process, or cleanup after a crash, finds every mount.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::RuntimeError;

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

/// overlayfs at `target`: `lower` top layer first, writes to `upper` (with `work` beside it).
pub fn mount_overlay(
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
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
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(mount_error("mount the rootfs overlay on", target))
}

/// Binds `source` at `target` (recursively), read-only when asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), RuntimeError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_error("bind a volume on", target))?;
    if read_only {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(mount_error("make read-only the volume on", target))?;
    }
    Ok(())
}

/// A tmpfs of at most `size_bytes` at `target`.
pub fn mount_tmpfs(target: &Path, size_bytes: Option<u64>) -> Result<(), RuntimeError> {
    let data = match size_bytes {
        Some(size) => format!("mode=0777,size={size}"),
        None => "mode=0777".to_string(),
    };
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(mount_error("mount a memory emptyDir on", target))
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

/// Unmounts everything at or below `root` (lazily, so a busy mount still goes); returns how
/// many mounts were taken down.
pub fn unmount_all_below(root: &Path) -> Result<usize, RuntimeError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(RuntimeError::io("read", Path::new("/proc/self/mountinfo")))?;
    let points = mounts_below(&mountinfo, root);
    for point in &points {
        match umount2(point, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => {
                return Err(RuntimeError::Mount {
                    what: "unmount",
                    target: point.clone(),
                    errno,
                })
            }
        }
    }
    Ok(points.len())
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
        mount_overlay(
            &[root.join("lower1"), root.join("lower2")],
            &root.join("upper"),
            &root.join("work"),
            &root.join("merged"),
        )
        .expect("overlay (the tests run as root)");
        assert_eq!(
            std::fs::read_to_string(root.join("merged/a")).unwrap(),
            "top"
        );
        std::fs::write(root.join("merged/c"), "new").unwrap();
        assert!(root.join("upper/c").exists());
        bind(&root.join("src"), &root.join("ro"), true).unwrap();
        assert!(
            std::fs::write(root.join("ro/x"), "x").is_err(),
            "read-only bind"
        );
        assert_eq!(unmount_all_below(root).unwrap(), 2);
        assert!(!root.join("merged/a").exists());
        assert_eq!(unmount_all_below(root).unwrap(), 0);
    }
}
