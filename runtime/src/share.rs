//! The pod's virtio-fs share on the host: each container's rootfs (an overlay of its image's
//! layers, so starting a container costs one mount whatever the image size), the volumes, and
//! the pod's /etc files. The guest reaches nothing else of the host.
//!
//! Volumes:
//! * hostPath: bound into the share (read-only there when every mount of it is read-only, so
//!   even the guest kernel cannot write it);
//! * emptyDir: a directory of the share; with `medium: Memory` not on the host at all: a guest
//!   tmpfs of `sizeLimit` bytes that the agent mounts at CreateSandbox (the request's
//!   `tmpfs_volumes`, see [`sandbox_request`]) at
//!   [`nutshell_protocol::guest_tmpfs_volume_path`], and that containers bind from there, so
//!   the pod's containers share it in guest memory, charged to the writer's guest cgroup as on
//!   a node (a subPath in it is checked here and made by the agent);
//! * configMap/secret: their host directory bound read-only, so host-side updates show.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nutshell_podspec::model::{HostPathType, StorageMedium, VolumeSource};
use nutshell_podspec::{MountSource, PendingMount, PodFiles, PodPlan, PodVolume};
use nutshell_protocol::agent::{CreateSandboxRequest, GuestTmpfsVolume};

use crate::host_mounts::{bind_beneath, overlay_beneath};
use crate::pod_dirs::PodDirs;
use crate::share_path::{open_below, Beneath, Leaf};
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
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for dir in [&upper, &work] {
        mkdir(dir)?;
    }
    let target = in_share(dirs, &dirs.rootfs(container), Leaf::Dir)?;
    overlay_beneath(lower, &upper, &work, &target)
}

/// `path` in the share, made when missing, reached without following the guest's symlinks.
fn in_share(dirs: &PodDirs, path: &Path, leaf: Leaf) -> Result<Beneath, RuntimeError> {
    open_below(&dirs.share(), path, leaf, true)
}

/// Whether `volume` lives in guest memory (emptyDir `medium: Memory`) rather than the share.
pub fn is_guest_tmpfs(volume: &PodVolume) -> bool {
    matches!(
        volume.source,
        VolumeSource::EmptyDir {
            medium: StorageMedium::Memory,
            ..
        }
    )
}

/// The pod's guest tmpfs volumes as the agent takes them (no sizeLimit: tmpfs's default).
pub fn guest_tmpfs_volumes(volumes: &[PodVolume]) -> Vec<GuestTmpfsVolume> {
    volumes
        .iter()
        .filter_map(|volume| match volume.source {
            VolumeSource::EmptyDir {
                medium: StorageMedium::Memory,
                size_limit_bytes,
            } => {
                let mut tmpfs = GuestTmpfsVolume::new();
                tmpfs.name = volume.name.clone();
                tmpfs.size_limit_bytes = size_limit_bytes.unwrap_or(0);
                Some(tmpfs)
            }
            _ => None,
        })
        .collect()
}

/// The agent's `CreateSandbox` request for `plan`: the sandbox and its guest tmpfs volumes.
pub fn sandbox_request(plan: &PodPlan) -> CreateSandboxRequest {
    let mut req = plan.sandbox.to_request();
    req.tmpfs_volumes = guest_tmpfs_volumes(&plan.volumes);
    req
}

/// Makes `volume` available under the share (a guest tmpfs needs nothing of the host);
/// `read_only` when every mount of it is.
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
            let leaf = if is_file { Leaf::File } else { Leaf::Dir };
            bind_beneath(source, &in_share(dirs, &target, leaf)?, read_only)
        }
        VolumeSource::EmptyDir {
            medium: StorageMedium::Memory,
            ..
        } => Ok(()),
        VolumeSource::EmptyDir {
            medium: StorageMedium::Default,
            ..
        } => {
            let dir = in_share(dirs, &target, Leaf::Dir)?;
            fs::set_permissions(dir.fd_path(), fs::Permissions::from_mode(0o777))
                .map_err(RuntimeError::io("chmod", &target))
        }
        VolumeSource::ConfigMap { .. } | VolumeSource::Secret { .. } => {
            let source = volume
                .host_dir
                .as_ref()
                .ok_or_else(|| RuntimeError::Volume {
                    volume: volume.name.clone(),
                    reason: "no host directory was resolved for it".into(),
                })?;
            bind_beneath(source, &in_share(dirs, &target, Leaf::Dir)?, true)
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
        let file = in_share(dirs, &path, Leaf::File)?;
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(file.fd_path())
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(RuntimeError::io("write", &path))?;
    }
    Ok(())
}

/// A subPath of a guest tmpfs volume must be relative, without `..` (the agent makes it,
/// refusing symlinks on the way).
fn check_tmpfs_sub_path(volume: &str, sub: &str) -> Result<(), RuntimeError> {
    if Path::new(sub)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(RuntimeError::Volume {
            volume: volume.to_string(),
            reason: format!("subPath {sub:?} must be relative, without '..'"),
        });
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
    // An existing file or directory, else (as the kubelet does) a new directory; never
    // through a symlink, whatever the guest swaps in meanwhile.
    let at = dirs.volume(volume).join(sub_path);
    open_below(&dirs.share(), &at, Leaf::Dir, false)
        .or_else(|_| open_below(&dirs.share(), &at, Leaf::File, false))
        .or_else(|_| open_below(&dirs.share(), &at, Leaf::Dir, true))
        .map_err(|e| bad(format!("subPath {sub:?}: {e}")))?;
    Ok(())
}

/// The guest path a pending mount of a container's spec binds: below the share, or for a
/// guest tmpfs volume of sandbox `sandbox_id`, below its guest path (the agent makes a
/// missing subPath there without following symlinks).
pub fn guest_source(
    dirs: &PodDirs,
    sandbox_id: &str,
    volumes: &[PodVolume],
    mount: &PendingMount,
) -> Result<PathBuf, RuntimeError> {
    match &mount.source {
        MountSource::Volume { volume, sub_path }
            if volumes
                .iter()
                .any(|v| v.name == *volume && is_guest_tmpfs(v)) =>
        {
            let root = nutshell_protocol::guest_tmpfs_volume_path(sandbox_id, volume).ok_or_else(
                || RuntimeError::Volume {
                    volume: volume.clone(),
                    reason: format!(
                        "sandbox id {sandbox_id:?} and volume name must be {}",
                        nutshell_protocol::ID_RULE
                    ),
                },
            )?;
            let mut path = PathBuf::from(root);
            if let Some(sub) = sub_path {
                check_tmpfs_sub_path(volume, sub)?;
                path.push(sub);
            }
            Ok(path)
        }
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
        fs::create_dir_all(dirs.share()).unwrap();
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
            guest_source(&dirs, "web", &[], &mount("a/b")).unwrap(),
            Path::new("/run/nutshell-share/volumes/data/a/b")
        );
        assert!(
            dirs.volume("data").join("a/b").is_dir(),
            "made like the kubelet does"
        );
        for bad in ["../x", "/etc", "link/passwd"] {
            let err = guest_source(&dirs, "web", &[], &mount(bad))
                .unwrap_err()
                .to_string();
            assert!(err.contains("data"), "{bad}: {err}");
        }
    }

    const MEMORY_POD: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: app
    image: busybox
    command: [sh]
    volumeMounts:
    - {name: mem, mountPath: /mem}
    - {name: scratch, mountPath: /scratch}
  - name: sidecar
    image: busybox
    command: [sh]
    volumeMounts:
    - {name: mem, mountPath: /mem, readOnly: true}
    - {name: mem, mountPath: /deep, subPath: a/b}
    - {name: cache, mountPath: /cache}
  volumes:
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
  - {name: cache, emptyDir: {medium: Memory}}
  - {name: scratch, emptyDir: {}}
"#;

    fn memory_plan() -> PodPlan {
        let pod = nutshell_podspec::parse_pod(MEMORY_POD).unwrap();
        let options = nutshell_podspec::ConvertOptions::new(256 << 20);
        nutshell_podspec::plan_pod(&pod, &options, |_| Default::default()).unwrap()
    }

    #[test]
    fn memory_empty_dirs_go_to_the_agent_as_guest_tmpfs() {
        let plan = memory_plan();
        let req = sandbox_request(&plan);
        let volumes: Vec<(&str, u64)> = req
            .tmpfs_volumes
            .iter()
            .map(|v| (v.name.as_str(), v.size_limit_bytes))
            .collect();
        assert_eq!(volumes, [("mem", 8 << 20), ("cache", 0)]);
        let mut rest = req.clone();
        rest.tmpfs_volumes.clear();
        assert_eq!(
            rest,
            plan.sandbox.to_request(),
            "the rest is the sandbox plan's"
        );
    }

    #[test]
    fn memory_empty_dirs_are_bound_from_the_guest_and_not_on_the_host() {
        let (_tmp, dirs) = pod_dirs();
        let mut plan = memory_plan();
        for volume in &plan.volumes {
            provide_volume(&dirs, volume, false).unwrap();
        }
        assert!(!dirs.volume("mem").exists() && !dirs.volume("cache").exists());
        assert!(
            dirs.volume("scratch").is_dir(),
            "a disk emptyDir stays in the share"
        );
        let (sandbox_id, volumes) = (plan.sandbox.sandbox_id.clone(), plan.volumes.clone());
        for container in &mut plan.containers {
            container
                .resolve_mounts(|m| guest_source(&dirs, &sandbox_id, &volumes, m))
                .unwrap();
        }
        let binds = |c: &nutshell_podspec::ContainerPlan| -> Vec<(String, String, bool)> {
            c.spec
                .mounts()
                .iter()
                .flatten()
                .filter(|m| m.typ().as_deref() == Some("bind"))
                .filter(|m| !m.destination().starts_with("/etc"))
                .map(|m| {
                    let options = m.options().clone().unwrap_or_default();
                    (
                        m.destination().display().to_string(),
                        m.source().as_ref().unwrap().display().to_string(),
                        options.iter().any(|o| o == "ro"),
                    )
                })
                .collect()
        };
        let tmpfs = |tail: &str| format!("/run/nutshell-volumes/web/{tail}");
        assert_eq!(
            binds(&plan.containers[0]),
            [
                ("/mem".into(), tmpfs("mem"), false),
                (
                    "/scratch".into(),
                    "/run/nutshell-share/volumes/scratch".into(),
                    false
                ),
            ]
        );
        assert_eq!(
            binds(&plan.containers[1]),
            [
                ("/mem".into(), tmpfs("mem"), true),
                ("/deep".into(), tmpfs("mem/a/b"), false),
                ("/cache".into(), tmpfs("cache"), false),
            ]
        );
        assert!(
            !dirs.volume("mem").exists(),
            "the subPath is the agent's to make"
        );
        let bad = PendingMount {
            destination: "/x".into(),
            source: MountSource::Volume {
                volume: "mem".into(),
                sub_path: Some("../scratch".into()),
            },
            read_only: false,
        };
        let err = guest_source(&dirs, "web", &volumes, &bad).unwrap_err();
        assert!(err.to_string().contains("\"mem\""), "{err}");
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
