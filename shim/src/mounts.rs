//! A container's host mounts: the rootfs containerd hands over (the snapshotter's mounts, put
//! on `<bundle>/rootfs` as runc's shim does), its view in the share, and the host files its
//! spec binds. Taking them down reads `/proc/self/mountinfo`, so the `delete` subcommand can
//! clean up after a shim that died.

use std::path::Path;

use containerd_shim::protos::api::Mount as TaskMount;
use nix::mount::{mount, MsFlags};
use nutshell_runtime::host_mounts;
use nutshell_runtime::pod_dirs::PodDirs;
use nutshell_runtime::share_path::{open_below, Beneath, Leaf};

use crate::error::{Result, ShimError};
use crate::spec::HostBind;

/// mount(2) takes at most a page of data.
const MAX_MOUNT_DATA: usize = 4095;

/// fstab-style options split into flags and data (as containerd's `mount.Mount` does).
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let (set, clear) = match option.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "defaults" | "async" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

/// Mounts containerd's rootfs `mounts` on `target`, in order; nothing to do when there are
/// none (the bundle's rootfs is already there).
pub fn mount_rootfs(mounts: &[TaskMount], target: &Path) -> Result<()> {
    for m in mounts {
        let (flags, data) = parse_options(&m.options);
        if data.len() > MAX_MOUNT_DATA {
            return Err(ShimError::InvalidArgument(format!(
                "the {} rootfs mount's options are {} bytes, more than mount(2) takes \
                 (an image with very many layers)",
                m.type_,
                data.len()
            )));
        }
        let fstype = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        let data = (!data.is_empty()).then_some(data.as_str());
        let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
        mount(source, target, fstype, flags, data).map_err(|errno| ShimError::Mount {
            what: "mount the rootfs on",
            target: target.to_path_buf(),
            errno,
        })?;
        if ro_bind {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|errno| ShimError::Mount {
                what: "make read-only the rootfs on",
                target: target.to_path_buf(),
                errno,
            })?;
        }
    }
    Ok(())
}

/// A mount point of the same kind as `source` (directory, else an empty file) at `target` in
/// the share, made and opened without following the guest's symlinks.
fn mount_point_like(dirs: &PodDirs, source: &Path, target: &Path) -> Result<Beneath> {
    let meta = std::fs::metadata(source).map_err(ShimError::io("find", source))?;
    let leaf = if meta.is_dir() { Leaf::Dir } else { Leaf::File };
    Ok(open_below(&dirs.share(), target, leaf, true)?)
}

/// Puts container `id`'s rootfs (`rootfs`, on the host) and its host binds into the share.
/// The guest is running and writes the share: every mount point is reached without following
/// a symlink, and every bind is `nodev,nosuid` (see `nutshell_runtime::host_mounts`).
pub fn provide(dirs: &PodDirs, id: &str, rootfs: &Path, binds: &[HostBind]) -> Result<()> {
    let target = mount_point_like(dirs, rootfs, &dirs.rootfs(id))?;
    host_mounts::bind_beneath(rootfs, &target, false)?;
    for b in binds {
        let target = mount_point_like(dirs, &b.source, &dirs.container_mount(id, b.index))?;
        host_mounts::bind_beneath(&b.source, &target, b.read_only)?;
    }
    Ok(())
}

/// Takes container `id`'s mounts out of the share and removes its directory there; with
/// `bundle_rootfs`, unmounts that too. Best effort: returns what it could not do.
pub fn release(dirs: &PodDirs, id: &str, bundle_rootfs: Option<&Path>) -> Vec<String> {
    let mut problems = Vec::new();
    let share = dirs.container_share(id);
    if let Err(e) = host_mounts::unmount_all_within(&dirs.share(), &share) {
        problems.push(e.to_string());
    }
    if let Some(rootfs) = bundle_rootfs {
        if let Err(e) = host_mounts::unmount_all_below(rootfs) {
            problems.push(e.to_string());
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    match still_mounted_below(&share) {
        Ok(false) => {
            if let Err(e) = remove_unmounted(&share) {
                problems.push(format!("cannot remove {}: {e}", share.display()));
            }
        }
        Ok(true) => problems.push(format!("{} still has mounts", share.display())),
        Err(e) => problems.push(e.to_string()),
    }
    problems
}

/// Removes a pod directory once nothing is mounted below it: the share as mount points only
/// (see [`remove_mount_points`]), then the pod's own files.
pub fn remove_pod_dir(dirs: &PodDirs) -> std::result::Result<(), String> {
    match still_mounted_below(&dirs.root) {
        Ok(false) => {}
        Ok(true) => return Err(format!("{} still has mounts", dirs.root.display())),
        Err(e) => return Err(e.to_string()),
    }
    remove_unmounted(&dirs.root).map_err(|e| format!("cannot remove {}: {e}", dirs.root.display()))
}

fn still_mounted_below(dir: &Path) -> Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(ShimError::io("read", "/proc/self/mountinfo"))?;
    Ok(!host_mounts::mounts_below(&mountinfo, dir).is_empty())
}

/// Removes a tree in which nothing is mounted any more. What the guest left in the share (its
/// files, its symlinks) goes too: `remove_dir_all` never follows a symlink.
fn remove_unmounted(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_are_data() {
        let (flags, data) = parse_options(&strings(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l1:/l2",
        ]));
        assert_eq!(flags, MsFlags::empty());
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2");
        let (flags, data) = parse_options(&strings(&["rbind", "ro", "nosuid"]));
        assert_eq!(
            flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert!(data.is_empty());
        assert_eq!(parse_options(&strings(&["ro", "rw"])).0, MsFlags::empty());
    }

    #[test]
    fn rootfs_and_binds_come_and_go() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let layer = root.join("layer");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::write(layer.join("bin/sh"), "sh").unwrap();
        for d in ["upper", "work", "bundle/rootfs"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let overlay = TaskMount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", root.join("work").display()),
                format!("upperdir={}", root.join("upper").display()),
                format!("lowerdir={}", layer.display()),
            ],
            ..Default::default()
        };
        let bundle_rootfs = root.join("bundle/rootfs");
        mount_rootfs(&[overlay], &bundle_rootfs).expect("overlay (the tests run as root)");
        let hosts = root.join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
        let dirs = PodDirs::new(&root.join("state"), "pod");
        host_mounts::seal_share(&dirs.share()).unwrap();
        let binds = [HostBind {
            index: 0,
            source: hosts.clone(),
            read_only: true,
        }];
        provide(&dirs, "c1", &bundle_rootfs, &binds).unwrap();
        assert_eq!(
            std::fs::read_to_string(dirs.rootfs("c1").join("bin/sh")).unwrap(),
            "sh"
        );
        let bound = dirs.container_mount("c1", 0);
        assert_eq!(
            std::fs::read_to_string(&bound).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert!(std::fs::write(&bound, "x").is_err(), "read-only bind");
        assert!(release(&dirs, "c1", Some(&bundle_rootfs)).is_empty());
        assert!(!dirs.container_share("c1").exists());
        assert!(!bundle_rootfs.join("bin").exists());
        assert!(
            remove_pod_dir(&dirs).is_err(),
            "the sealed share is still mounted"
        );
        host_mounts::unmount_all_below(&dirs.root).unwrap();
        remove_pod_dir(&dirs).unwrap();
        assert!(!dirs.root.exists());
        assert_eq!(host_mounts::unmount_all_below(root).unwrap(), 0);
    }
}
