//! A sandbox's guest tmpfs volumes (`GuestTmpfsVolume`: emptyDir with `medium: Memory`).
//!
//! Each is a tmpfs at `/run/nutshell-volumes/<sandbox id>/<name>`
//! ([`nutshell_protocol::guest_tmpfs_volume_path`]) in the agent's (root) mount namespace,
//! mounted at CreateSandbox before any container exists, so every container that binds it
//! from there shares the same files; they live in guest memory and never reach the host.
//! Options: `mode=0777` as the kubelet leaves an emptyDir (world-writable, no sticky bit, so
//! containers running as any user can use it), `nosuid,nodev` as Docker and containerd mount
//! their tmpfs volumes, and `size=` from the sizeLimit (none: tmpfs's default, half of the
//! guest's memory). Pages written are charged to the writer's memory cgroup, as on a node.
//!
//! A bind source below a volume (a subPath) is created as directories (mode 0777, like the
//! volume's root) when a container is created or started, as the kubelet creates a missing
//! subPath; no symlink on the way is followed, so a subPath stays inside its volume.
//! DestroySandbox unmounts every volume (not lazily: after its containers are dead nothing
//! may hold it) and removes the directories; anything left is an error.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode};
use nutshell_protocol::agent::GuestTmpfsVolume;
use oci_spec::runtime::Spec;

use super::SandboxError;

/// The tmpfs root's mode, and that of subPath directories made in it.
const VOLUME_MODE: u32 = 0o777;
/// How long an unmount may keep answering EBUSY (a dying process still holding a file).
const UNMOUNT_RETRY: Duration = Duration::from_millis(10);
const UNMOUNT_TRIES: u32 = 200;

/// One tmpfs volume of a sandbox, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmpfsVolume {
    pub name: String,
    pub path: PathBuf,
    /// The mount's data (`mode=0777[,size=N]`).
    pub data: String,
}

fn volume_error(
    volume: &TmpfsVolume,
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> SandboxError {
    let name = volume.name.clone();
    let path = path.to_path_buf();
    move |source| SandboxError::Volume {
        name,
        what,
        path,
        source,
    }
}

/// The tmpfs mount data for a size limit in bytes (0: tmpfs's default size).
pub fn mount_data(size_limit_bytes: u64) -> String {
    match size_limit_bytes {
        0 => format!("mode={VOLUME_MODE:o}"),
        size => format!("mode={VOLUME_MODE:o},size={size}"),
    }
}

/// The mount flags of every tmpfs volume.
pub fn mount_flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// Checks a request's volumes: names are ids and unique.
pub fn plan(
    sandbox_id: &str,
    volumes: &[GuestTmpfsVolume],
) -> Result<Vec<TmpfsVolume>, SandboxError> {
    let mut planned: Vec<TmpfsVolume> = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let invalid = |reason: String| SandboxError::Invalid {
            field: "tmpfs_volumes.name",
            value: volume.name.clone(),
            reason,
        };
        let path = nutshell_protocol::guest_tmpfs_volume_path(sandbox_id, &volume.name)
            .ok_or_else(|| invalid(format!("must be {}", nutshell_protocol::ID_RULE)))?;
        if planned.iter().any(|p| p.name == volume.name) {
            return Err(invalid("given twice".into()));
        }
        planned.push(TmpfsVolume {
            name: volume.name.clone(),
            path: PathBuf::from(path),
            data: mount_data(volume.size_limit_bytes),
        });
    }
    Ok(planned)
}

/// The directory holding every tmpfs volume of a sandbox.
pub fn sandbox_dir(sandbox_id: &str) -> PathBuf {
    Path::new(nutshell_protocol::GUEST_TMPFS_VOLUMES_DIR).join(sandbox_id)
}

/// Creates the mount point and mounts the tmpfs on it.
pub fn mount(volume: &TmpfsVolume) -> Result<(), SandboxError> {
    fs::create_dir_all(&volume.path).map_err(volume_error(
        volume,
        "create the mount point",
        &volume.path,
    ))?;
    nix::mount::mount(
        Some("tmpfs"),
        &volume.path,
        Some("tmpfs"),
        mount_flags(),
        Some(volume.data.as_str()),
    )
    .map_err(|errno| {
        volume_error(volume, "mount a tmpfs on", &volume.path)(std::io::Error::from(errno))
    })
}

/// Unmounts the volume (if mounted) and removes its mount point (if there). The directory
/// must be empty once the tmpfs is gone: nothing of the volume may be left.
pub fn unmount(volume: &TmpfsVolume) -> Result<(), SandboxError> {
    let mut tries = 0;
    loop {
        match umount2(&volume.path, MntFlags::empty()) {
            // Unmounted, or never mounted (a create that failed half way), or never made.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(Errno::EBUSY) if tries < UNMOUNT_TRIES => {
                tries += 1;
                std::thread::sleep(UNMOUNT_RETRY);
            }
            Err(errno) => {
                return Err(volume_error(volume, "unmount", &volume.path)(
                    std::io::Error::from(errno),
                ))
            }
        }
    }
    match fs::remove_dir(&volume.path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(volume_error(volume, "remove the mount point", &volume.path)(e))
        }
        _ => Ok(()),
    }
}

/// Removes a sandbox's (empty) volume directory, once its volumes are unmounted.
pub fn remove_sandbox_dir(sandbox_id: &str) -> Result<(), SandboxError> {
    let dir = sandbox_dir(sandbox_id);
    match fs::remove_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SandboxError::Io {
            what: "remove the tmpfs volume directory",
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Makes every bind source of `spec` that lies below one of `volumes` exist: missing
/// components become directories; `..`, `.` and symlinks are refused.
pub fn prepare_bind_sources(volumes: &[TmpfsVolume], spec: &Spec) -> Result<(), SandboxError> {
    for mount in spec.mounts().as_deref().unwrap_or_default() {
        let Some(source) = mount.source() else {
            continue;
        };
        for volume in volumes {
            if let Ok(rest) = source.strip_prefix(&volume.path) {
                prepare_sub_path(volume, &volume.path, rest)?;
            }
        }
    }
    Ok(())
}

/// Creates `sub` below `root` (the volume's mount point) one component at a time, each
/// reached from its parent's descriptor with `O_NOFOLLOW`: other containers write the volume,
/// so a component swapped for a symlink meanwhile is refused, never followed.
fn prepare_sub_path(volume: &TmpfsVolume, root: &Path, sub: &Path) -> Result<(), SandboxError> {
    let invalid = |reason: String| SandboxError::Invalid {
        field: "oci_spec_json mounts[].source",
        value: root.join(sub).display().to_string(),
        reason: format!("tmpfs volume {:?}: {reason}", volume.name),
    };
    // `components` drops `.` in the middle and repeated slashes; `..` stays and is refused.
    if sub.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(invalid("a subPath must be relative, without '..'".into()));
    }
    let open_dir = |dir: Option<&OwnedFd>, name: &Path| {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dir.map(|d| d.as_raw_fd()), name, flags, Mode::empty())?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok::<_, Errno>(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut dir = open_dir(None, root).map_err(|e| volume_error(volume, "open", root)(e.into()))?;
    let names: Vec<&Path> = sub.iter().map(Path::new).collect();
    let mut at = root.to_path_buf();
    for (i, name) in names.iter().enumerate() {
        at.push(name);
        dir = match open_dir(Some(&dir), name) {
            Ok(next) => next,
            Err(Errno::ENOENT) => {
                match mkdirat(
                    Some(dir.as_raw_fd()),
                    *name,
                    Mode::from_bits_truncate(VOLUME_MODE),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(volume_error(volume, "create the subPath directory", &at)(
                            e.into(),
                        ))
                    }
                }
                let made = open_dir(Some(&dir), name)
                    .map_err(|_| invalid(format!("{} changed while it was made", at.display())))?;
                // mkdirat's mode went through the umask.
                fchmod(made.as_raw_fd(), Mode::from_bits_truncate(VOLUME_MODE))
                    .map_err(|e| volume_error(volume, "chmod", &at)(e.into()))?;
                made
            }
            // The last component may be an existing file (a subPath naming a file).
            Err(Errno::ENOTDIR) if i + 1 == names.len() && !is_symlink(&dir, name) => return Ok(()),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(invalid(format!(
                    "goes through the symlink {}",
                    at.display()
                )))
            }
            Err(e) => return Err(volume_error(volume, "look up", &at)(e.into())),
        };
    }
    Ok(())
}

/// Whether `name` in `dir` is a symlink (not following it).
fn is_symlink(dir: &OwnedFd, name: &Path) -> bool {
    fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn request(name: &str, size: u64) -> GuestTmpfsVolume {
        let mut v = GuestTmpfsVolume::new();
        v.name = name.into();
        v.size_limit_bytes = size;
        v
    }

    #[test]
    fn mount_data_follows_the_size_limit() {
        assert_eq!(mount_data(0), "mode=777");
        assert_eq!(mount_data(8 << 20), "mode=777,size=8388608");
        assert_eq!(mount_flags(), MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
    }

    #[test]
    fn volumes_are_planned_under_the_sandbox() {
        let planned = plan("demo", &[request("mem", 8 << 20), request("cache", 0)]).unwrap();
        assert_eq!(
            planned[0],
            TmpfsVolume {
                name: "mem".into(),
                path: "/run/nutshell-volumes/demo/mem".into(),
                data: "mode=777,size=8388608".into(),
            }
        );
        assert_eq!(planned[1].data, "mode=777");
        assert_eq!(sandbox_dir("demo"), Path::new("/run/nutshell-volumes/demo"));
    }

    #[test]
    fn bad_or_repeated_names_are_named() {
        for bad in ["", "..", "a/b", "a b"] {
            let err = plan("demo", &[request(bad, 0)]).unwrap_err();
            assert!(
                matches!(err, SandboxError::Invalid { .. }),
                "{bad:?}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.contains("tmpfs_volumes.name") && text.contains(&format!("{bad:?}")),
                "{text}"
            );
        }
        let err = plan("demo", &[request("mem", 0), request("mem", 1)]).unwrap_err();
        assert!(err.to_string().contains("\"mem\""), "{err}");
    }

    fn spec_with_bind(source: &Path) -> Spec {
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": source, "options": ["rbind", "rw"]}
            ]
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn sub_paths_are_made_inside_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = TmpfsVolume {
            name: "mem".into(),
            path: tmp.path().join("mem"),
            data: mount_data(0),
        };
        fs::create_dir(&volume.path).unwrap();
        let volumes = [volume.clone()];
        prepare_bind_sources(&volumes, &spec_with_bind(&volume.path)).unwrap();
        prepare_bind_sources(&volumes, &spec_with_bind(&volume.path.join("a/./b"))).unwrap();
        let made = volume.path.join("a/b");
        assert!(made.is_dir());
        assert_eq!(
            fs::metadata(&made).unwrap().permissions().mode() & 0o7777,
            0o777
        );
        // A source elsewhere is none of the volume's business.
        prepare_bind_sources(&volumes, &spec_with_bind(&tmp.path().join("other/x"))).unwrap();
        assert!(!tmp.path().join("other").exists());

        // A subPath may name an existing file, but not go through one.
        fs::write(volume.path.join("f"), "x").unwrap();
        prepare_bind_sources(&volumes, &spec_with_bind(&volume.path.join("f"))).unwrap();
        assert!(prepare_bind_sources(&volumes, &spec_with_bind(&volume.path.join("f/x"))).is_err());

        std::os::unix::fs::symlink("/etc", volume.path.join("link")).unwrap();
        for bad in ["link/x", "link", "a/../../escape"] {
            let source = PathBuf::from(format!("{}/{bad}", volume.path.display()));
            let err = prepare_bind_sources(&volumes, &spec_with_bind(&source)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("\"mem\""), "{bad}: {text}");
        }
        assert!(!tmp.path().join("escape").exists());
    }

    /// Mounts a real tmpfs, in a private mount namespace of a thread of its own so that
    /// nothing reaches the machine running the test, even when it fails.
    #[test]
    fn a_tmpfs_is_mounted_with_its_size_and_taken_down() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs: run it as root"
        );
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .expect("a mount namespace of the test's own");
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            nix::mount::mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let volume = TmpfsVolume {
                name: "mem".into(),
                path: tmp.path().join("demo/mem"),
                data: mount_data(8 << 20),
            };
            mount(&volume).unwrap();
            let fs = nix::sys::statvfs::statvfs(&volume.path).unwrap();
            assert_eq!(fs.blocks() * fs.fragment_size(), 8 << 20);
            let mode = fs::metadata(&volume.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o7777, 0o777);
            let source = volume.path.join("deep/dir");
            prepare_bind_sources(std::slice::from_ref(&volume), &spec_with_bind(&source)).unwrap();
            fs::write(source.join("file"), "x").unwrap();
            unmount(&volume).unwrap();
            assert!(!volume.path.exists(), "the mount point is removed");
            // Again (a DestroySandbox retried): nothing to do.
            unmount(&volume).unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn unmounting_what_was_never_mounted_removes_the_mount_point() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "umount2 answers EPERM before EINVAL to non-root: run this test as root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let volume = TmpfsVolume {
            name: "mem".into(),
            path: tmp.path().join("mem"),
            data: mount_data(0),
        };
        // Never made: nothing to do.
        unmount(&volume).unwrap();
        fs::create_dir(&volume.path).unwrap();
        unmount(&volume).unwrap();
        assert!(!volume.path.exists());
        // A file where only the tmpfs should have been is left behind: an error naming it.
        fs::create_dir(&volume.path).unwrap();
        fs::write(volume.path.join("stray"), "x").unwrap();
        let err = unmount(&volume).unwrap_err().to_string();
        assert!(err.contains("\"mem\""), "{err}");
    }
}
