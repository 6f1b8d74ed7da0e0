//! The pod's virtio-fs share on the host: each container's rootfs (an overlay of its image's
//! layers, so starting a container costs one mount whatever the image size), the volumes, and
//! the pod's /etc files. The guest reaches nothing else of the host.
//!
//! Volumes:
//! * hostPath: bound into the share (read-only there when every mount of it is read-only, so
//!   even the guest kernel cannot write it);
//! * emptyDir: a directory of the share; with `medium: Memory` a tmpfs of `sizeLimit` bytes,
//!   mounted into the share so the pod's containers share it (it is host memory, charged to
//!   the pod's host cgroup, not guest memory);
//! * configMap/secret: their host directory bound read-only, so host-side updates show.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nutshell_podspec::model::{HostPathType, StorageMedium, VolumeSource};
use nutshell_podspec::{MountSource, PendingMount, PodFiles, PodVolume};

use crate::host_mounts::{bind, mount_overlay, mount_tmpfs};
use crate::pod_dirs::PodDirs;
use crate::RuntimeError;

fn mkdir(path: &Path) -> Result<(), RuntimeError> {
    fs::create_dir_all(path).map_err(RuntimeError::io("create", path))
}

/// Mounts the rootfs of `container`: `lower` (top layer first) under a writable layer kept
/// outside the share.
pub fn mount_rootfs(
    dirs: &PodDirs,
    container: &str,
    lower: &[PathBuf],
) -> Result<(), RuntimeError> {
    let scratch = dirs.scratch(container);
    let (upper, work, target) = (
        scratch.join("upper"),
        scratch.join("work"),
        dirs.rootfs(container),
    );
    for dir in [&upper, &work, &target] {
        mkdir(dir)?;
    }
    mount_overlay(lower, &upper, &work, &target)
}

/// Makes `volume` available under the share; `read_only` when every mount of it is.
pub fn provide_volume(
    dirs: &PodDirs,
    volume: &PodVolume,
    read_only: bool,
) -> Result<(), RuntimeError> {
    let target = dirs.volume(&volume.name);
    match &volume.source {
        VolumeSource::HostPath { path, kind } => {
            let source = Path::new(path);
            let is_file = prepare_host_path(&volume.name, source, *kind)?;
            if is_file {
                mkdir(target.parent().expect("volumes/<name> has a parent"))?;
                fs::write(&target, b"").map_err(RuntimeError::io("create", &target))?;
            } else {
                mkdir(&target)?;
            }
            bind(source, &target, read_only)
        }
        VolumeSource::EmptyDir {
            medium,
            size_limit_bytes,
        } => {
            mkdir(&target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o777))
                .map_err(RuntimeError::io("chmod", &target))?;
            match medium {
                StorageMedium::Default => Ok(()),
                StorageMedium::Memory => mount_tmpfs(&target, *size_limit_bytes),
            }
        }
        VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. } => {
            let source = volume
                .host_dir
                .as_ref()
                .ok_or_else(|| RuntimeError::Volume {
                    volume: volume.name.clone(),
                    reason: "no host directory was resolved for it".into(),
                })?;
            mkdir(&target)?;
            bind(source, &target, true)
        }
    }
}

/// Checks (or creates) a hostPath as its `type` says; whether it is a file.
fn prepare_host_path(volume: &str, path: &Path, kind: HostPathType) -> Result<bool, RuntimeError> {
    let bad = |reason: String| RuntimeError::Volume {
        volume: volume.to_string(),
        reason,
    };
    if !path.is_absolute() {
        return Err(bad(format!("hostPath {} is not absolute", path.display())));
    }
    match kind {
        HostPathType::DirectoryOrCreate if !path.exists() => fs::create_dir_all(path)
            .map_err(|e| bad(format!("cannot create {}: {e}", path.display())))?,
        HostPathType::FileOrCreate if !path.exists() => fs::write(path, b"")
            .map_err(|e| bad(format!("cannot create {}: {e}", path.display())))?,
        _ => {}
    }
    let meta = fs::metadata(path).map_err(|e| bad(format!("hostPath {}: {e}", path.display())))?;
    let wanted = match kind {
        HostPathType::Directory | HostPathType::DirectoryOrCreate => {
            Some(("a directory", meta.is_dir()))
        }
        HostPathType::File | HostPathType::FileOrCreate => Some(("a file", meta.is_file())),
        _ => None,
    };
    if let Some((what, true_or_false)) = wanted {
        if !true_or_false {
            return Err(bad(format!("hostPath {} is not {what}", path.display())));
        }
    }
    Ok(!meta.is_dir())
}

/// Writes the pod's /etc files into the share.
pub fn write_pod_files(dirs: &PodDirs, files: &PodFiles) -> Result<(), RuntimeError> {
    for (name, text) in [("hosts", &files.hosts), ("hostname", &files.hostname)] {
        let path = dirs.pod_file(name);
        mkdir(path.parent().expect("pod/<file> has a parent"))?;
        fs::write(&path, text).map_err(RuntimeError::io("write", &path))?;
    }
    Ok(())
}

/// A subPath must stay inside its volume: relative, no `..`, and no symlink on the way (the
/// guest would resolve one against its own root).
fn check_sub_path(dirs: &PodDirs, volume: &str, sub: &str) -> Result<(), RuntimeError> {
    let bad = |reason: String| RuntimeError::Volume {
        volume: volume.to_string(),
        reason,
    };
    let sub_path = Path::new(sub);
    if sub_path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(bad(format!(
            "subPath {sub:?} must be relative, without '..'"
        )));
    }
    let mut at = dirs.volume(volume);
    for component in sub_path.components() {
        at.push(component);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(bad(format!(
                    "subPath {sub:?} goes through the symlink {}",
                    at.display()
                )))
            }
            Ok(_) => {}
            // The kubelet creates a missing subPath as a directory.
            Err(_) => mkdir(&at)?,
        }
    }
    Ok(())
}

/// The guest path a pending mount of a container's spec binds.
pub fn guest_source(dirs: &PodDirs, mount: &PendingMount) -> Result<PathBuf, RuntimeError> {
    match &mount.source {
        MountSource::Volume { volume, sub_path } => {
            if let Some(sub) = sub_path {
                check_sub_path(dirs, volume, sub)?;
            }
            Ok(PathBuf::from(PodDirs::guest_volume(
                volume,
                sub_path.as_deref(),
            )))
        }
        MountSource::PodFile(file) => Ok(PathBuf::from(PodDirs::guest_pod_file(file.file_name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_dirs() -> (tempfile::TempDir, PodDirs) {
        let dir = tempfile::tempdir().unwrap();
        let dirs = PodDirs::new(dir.path(), "web");
        (dir, dirs)
    }

    #[test]
    fn sub_paths_stay_inside_their_volume() {
        let (_tmp, dirs) = pod_dirs();
        fs::create_dir_all(dirs.volume("data")).unwrap();
        std::os::unix::fs::symlink("/etc", dirs.volume("data").join("link")).unwrap();
        let mount = |sub: &str| PendingMount {
            destination: "/d".into(),
            source: MountSource::Volume {
                volume: "data".into(),
                sub_path: Some(sub.into()),
            },
            read_only: false,
        };
        assert_eq!(
            guest_source(&dirs, &mount("a/b")).unwrap(),
            Path::new("/run/nutshell-share/volumes/data/a/b")
        );
        assert!(
            dirs.volume("data").join("a/b").is_dir(),
            "made like the kubelet does"
        );
        for bad in ["../x", "/etc", "link/passwd"] {
            let err = guest_source(&dirs, &mount(bad)).unwrap_err().to_string();
            assert!(err.contains("data"), "{bad}: {err}");
        }
    }

    #[test]
    fn host_path_types_are_checked() {
        let (tmp, _dirs) = pod_dirs();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert!(prepare_host_path("v", &file, HostPathType::File).unwrap());
        let err = prepare_host_path("v", &file, HostPathType::Directory).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let made = tmp.path().join("made/here");
        assert!(!prepare_host_path("v", &made, HostPathType::DirectoryOrCreate).unwrap());
        assert!(made.is_dir());
        let err = prepare_host_path("v", &tmp.path().join("missing"), HostPathType::Unchecked);
        assert!(err.unwrap_err().to_string().contains("missing"));
    }
}
