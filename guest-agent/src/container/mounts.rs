//! The spec's `mounts`, `maskedPaths`, `readonlyPaths` and `linux.sysctl` turned into C strings
//! the init process uses after the fork. The only file system access is checking bind sources:
//! whether each is a file (its target must then be a file too), and that a source below the pod
//! share has no symlink on its way (the child checks again when it opens it).
//!
//! Targets are kept relative to the new root: the child resolves them inside it
//! ([`super::scoped_path::open_in_root`]), so an image's symlinks (`/var/run -> /run`) lead where
//! they would in the container, never out of its rootfs.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use oci_spec::runtime::{Mount, Spec};

use super::scoped_path;
use super::{cstring, path_cstring, ContainerError};

/// Directories whose content other containers of the pod can change: a bind source below one
/// is opened without following any symlink (a volume's subPath swapped for a link to the
/// guest's `/` between the host's check and the bind must not be followed).
pub const SCOPED_SOURCE_ROOTS: [&str; 2] = [
    nutshell_protocol::GUEST_SHARE_MOUNT_POINT,
    nutshell_protocol::GUEST_TMPFS_VOLUMES_DIR,
];

/// A bind source below one of [`SCOPED_SOURCE_ROOTS`]: the root (opened normally) and the
/// rest (opened below it with no symlink).
#[derive(Debug)]
pub struct ScopedSource {
    pub base: CString,
    /// Relative, `.` for the base itself.
    pub path: CString,
}

/// A mount the init process makes below the new root, before switching into it.
#[derive(Debug)]
pub struct PlannedMount {
    /// The spec's destination, for error messages.
    pub destination: String,
    pub source: CString,
    /// Set for a bind source below the pod share: mounted from the descriptor the child opens
    /// with no symlink on the way, instead of `source`.
    pub scoped_source: Option<ScopedSource>,
    /// The destination relative to the new root (`dev/pts`), resolved inside it by the child.
    pub target: CString,
    pub fstype: CString,
    pub flags: libc::c_ulong,
    pub data: CString,
    /// Propagation change (MS_PRIVATE, MS_SLAVE...) applied after the mount, or 0.
    pub propagation: libc::c_ulong,
    /// A bind mount with flags (ro, nosuid...) is remounted with these after binding; 0 for
    /// no remount.
    pub remount_flags: libc::c_ulong,
    /// The target is created as an empty file instead of a directory.
    pub file_target: bool,
}

/// Parsed mount options: flags, propagation flags and the rest as fs data.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: libc::c_ulong,
    pub propagation: libc::c_ulong,
    pub data: Vec<String>,
}

/// Splits OCI/fstab mount options into mount(2) flags and data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut parsed = MountOptions::default();
    for option in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match option.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "private" => {
                parsed.propagation |= libc::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                parsed.propagation |= libc::MS_PRIVATE | libc::MS_REC;
                continue;
            }
            "slave" => {
                parsed.propagation |= libc::MS_SLAVE;
                continue;
            }
            "rslave" => {
                parsed.propagation |= libc::MS_SLAVE | libc::MS_REC;
                continue;
            }
            "shared" => {
                parsed.propagation |= libc::MS_SHARED;
                continue;
            }
            "rshared" => {
                parsed.propagation |= libc::MS_SHARED | libc::MS_REC;
                continue;
            }
            "unbindable" => {
                parsed.propagation |= libc::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                parsed.propagation |= libc::MS_UNBINDABLE | libc::MS_REC;
                continue;
            }
            other => {
                parsed.data.push(other.to_string());
                continue;
            }
        };
        parsed.flags = (parsed.flags | set) & !clear;
    }
    parsed
}

/// The mounts a container gets when its spec lists none (containerd's defaults).
pub fn default_mounts() -> Vec<Mount> {
    let json = r#"[
      {"destination":"/proc","type":"proc","source":"proc","options":["nosuid","noexec","nodev"]},
      {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
      {"destination":"/dev/pts","type":"devpts","source":"devpts","options":["nosuid","noexec","newinstance","ptmxmode=0666","mode=0620","gid=5"]},
      {"destination":"/dev/shm","type":"tmpfs","source":"shm","options":["nosuid","noexec","nodev","mode=1777","size=65536k"]},
      {"destination":"/dev/mqueue","type":"mqueue","source":"mqueue","options":["nosuid","noexec","nodev"]},
      {"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]}
    ]"#;
    serde_json::from_str(json).expect("the default mount list is valid")
}

/// One spec mount to a [`PlannedMount`].
pub fn plan_mount(mount: &Mount) -> Result<PlannedMount, ContainerError> {
    plan_mount_with(mount, &SCOPED_SOURCE_ROOTS.map(Path::new))
}

/// [`plan_mount`] with `scoped_roots` as the directories whose bind sources are opened without
/// following symlinks.
pub fn plan_mount_with(
    mount: &Mount,
    scoped_roots: &[&Path],
) -> Result<PlannedMount, ContainerError> {
    let destination = mount.destination().to_string_lossy().into_owned();
    if !destination.starts_with('/') || destination.split('/').any(|part| part == "..") {
        return Err(ContainerError::Spec(format!(
            "mount destination {destination:?} must be absolute without \"..\""
        )));
    }
    let in_root = destination.trim_matches('/');
    if in_root.is_empty() {
        return Err(ContainerError::Spec(format!(
            "mount destination {destination:?} would cover the container's whole root"
        )));
    }
    let options = parse_options(mount.options().as_deref().unwrap_or_default());
    let mut fstype = mount.typ().clone().unwrap_or_default();
    let mut source = mount
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| fstype.clone());
    let is_bind = fstype == "bind" || options.flags & libc::MS_BIND != 0;
    // cgroup v1 mounts in a spec mean "the cgroup hierarchy": the guest has only v2.
    if fstype == "cgroup" {
        fstype = "cgroup2".into();
        source = "cgroup2".into();
    }
    let mut flags = options.flags;
    let bind_remount = is_bind && flags & !(libc::MS_BIND | libc::MS_REC) != 0;
    let mut file_target = false;
    let mut scoped_source = None;
    if is_bind {
        flags |= libc::MS_BIND;
        fstype.clear();
        if !source.starts_with('/') || source.split('/').any(|part| part == "..") {
            return Err(ContainerError::Spec(format!(
                "bind mount source {source:?} for {destination:?} must be an absolute guest \
                 path without \"..\""
            )));
        }
        let scoped = scoped_roots
            .iter()
            .find_map(|base| Some((*base, Path::new(&source).strip_prefix(base).ok()?)));
        if let Some((base, rest)) = scoped {
            let planned = plan_scoped_source(base, rest).map_err(|why| {
                ContainerError::Spec(format!(
                    "bind mount source {source:?} for {destination:?}: {why}"
                ))
            })?;
            file_target = planned.1;
            scoped_source = Some(planned.0);
        } else {
            let meta = std::fs::metadata(&source).map_err(|e| {
                ContainerError::Spec(format!(
                    "bind mount source {source:?} for {destination:?}: {e}"
                ))
            })?;
            file_target = !meta.is_dir();
        }
    }
    let (flags, remount_flags) = if bind_remount {
        (
            libc::MS_BIND | (flags & libc::MS_REC),
            libc::MS_BIND | libc::MS_REMOUNT | (flags & !(libc::MS_BIND | libc::MS_REC)),
        )
    } else {
        (flags, 0)
    };
    Ok(PlannedMount {
        target: cstring(in_root)?,
        destination,
        source: cstring(source)?,
        scoped_source,
        fstype: cstring(fstype)?,
        flags,
        data: cstring(options.data.join(","))?,
        propagation: options.propagation,
        remount_flags,
        file_target,
    })
}

/// A source `rest` below `base`: checked now as the child will open it (no `..`, no symlink
/// anywhere); whether it is a file.
fn plan_scoped_source(base: &Path, rest: &Path) -> Result<(ScopedSource, bool), String> {
    if rest
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("must not contain \"..\" below {}", base.display()));
    }
    let rel = match rest.as_os_str().as_bytes() {
        [] => OsStr::new("."),
        _ => rest.as_os_str(),
    };
    let scoped = ScopedSource {
        base: path_cstring(base).map_err(|e| e.to_string())?,
        path: path_cstring(Path::new(rel)).map_err(|e| e.to_string())?,
    };
    match scoped_path::open_beneath_no_symlinks(&scoped.base, &scoped.path) {
        Ok(fd) => {
            // SAFETY: a descriptor just opened, owned here and closed on drop.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let file = !scoped_path::is_dir(std::os::fd::AsRawFd::as_raw_fd(&fd));
            Ok((scoped, file))
        }
        Err(libc::ELOOP) => Err(format!(
            "goes through a symlink below {} (sources there are never followed through symlinks)",
            base.display()
        )),
        Err(errno) => Err(nix::errno::Errno::from_raw(errno).to_string()),
    }
}

/// The spec's mounts (the defaults when it lists none). `_root` (the new root's mount point) is
/// not needed any more: targets are resolved inside it by the child; kept for callers.
pub fn plan_mounts(_root: &Path, spec: &Spec) -> Result<Vec<PlannedMount>, ContainerError> {
    let mounts = match spec.mounts() {
        Some(m) if !m.is_empty() => m.clone(),
        _ => default_mounts(),
    };
    mounts.iter().map(plan_mount).collect()
}

/// Absolute paths of the spec (masked or read-only) as C strings, checked.
pub fn plan_paths(field: &str, paths: &[String]) -> Result<Vec<CString>, ContainerError> {
    paths
        .iter()
        .map(|p| {
            if !p.starts_with('/') || p.split('/').any(|part| part == "..") {
                return Err(ContainerError::Spec(format!(
                    "{field} entry {p:?} must be absolute without \"..\""
                )));
            }
            cstring(p.as_str())
        })
        .collect()
}

/// `linux.sysctl` as (/proc/sys path, value) pairs, checked.
pub fn plan_sysctls<'a>(
    sysctls: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<(CString, CString)>, ContainerError> {
    let mut planned = Vec::new();
    for (key, value) in sysctls {
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            && !key
                .split(['.', '/'])
                .any(|part| part.is_empty() || part == "..");
        if !valid {
            return Err(ContainerError::Spec(format!("invalid sysctl name {key:?}")));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        planned.push((cstring(path)?, cstring(value.as_str())?));
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_options(&strings(&[
            "nosuid", "noexec", "mode=755", "ro", "rslave", "size=1k",
        ]));
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_RDONLY);
        assert_eq!(o.propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(o.data, ["mode=755", "size=1k"]);
        assert_eq!(parse_options(&strings(&["ro", "rw"])).flags, 0);
    }

    #[test]
    fn defaults_cover_the_standard_file_systems() {
        let spec: Spec =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","root":{"path":"r"},"mounts":[]}"#)
                .unwrap();
        let planned = plan_mounts(Path::new("/new"), &spec).unwrap();
        // Relative: the child resolves them inside the new root.
        let targets: Vec<String> = planned
            .iter()
            .map(|m| m.target.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            targets,
            ["proc", "dev", "dev/pts", "dev/shm", "dev/mqueue", "sys"]
        );
        let sys = &planned[5];
        assert_eq!(sys.fstype.to_str().unwrap(), "sysfs");
        assert!(sys.flags & libc::MS_RDONLY != 0);
    }

    #[test]
    fn cgroup_becomes_cgroup2_and_binds_remount() {
        let m: Mount = serde_json::from_str(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro","nosuid"]}"#,
        )
        .unwrap();
        let p = plan_mount(&m).unwrap();
        assert_eq!(p.fstype.to_str().unwrap(), "cgroup2");
        assert_eq!(p.remount_flags, 0);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        let m: Mount = serde_json::from_str(&format!(
            r#"{{"destination":"/etc/hosts","type":"bind","source":"{}","options":["rbind","ro"]}}"#,
            file.display()
        ))
        .unwrap();
        let p = plan_mount(&m).unwrap();
        assert!(p.file_target);
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC);
        assert!(p.remount_flags & libc::MS_RDONLY != 0);
        let missing: Mount = serde_json::from_str(
            r#"{"destination":"/x","type":"bind","source":"/no/such/dir","options":["bind"]}"#,
        )
        .unwrap();
        assert!(plan_mount(&missing)
            .unwrap_err()
            .to_string()
            .contains("/no/such/dir"));
    }

    #[test]
    fn paths_and_sysctls_are_checked() {
        assert!(plan_paths("maskedPaths", &strings(&["/proc/kcore"])).is_ok());
        assert!(plan_paths("maskedPaths", &strings(&["proc/kcore"])).is_err());
        assert!(plan_paths("readonlyPaths", &strings(&["/proc/../etc"])).is_err());
        let key = "net.ipv4.ip_forward".to_string();
        let value = "1".to_string();
        let planned = plan_sysctls([(&key, &value)]).unwrap();
        assert_eq!(
            planned[0].0.to_str().unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        let bad = "kernel..x".to_string();
        assert!(plan_sysctls([(&bad, &value)]).is_err());
    }

    fn bind(destination: &str, source: &Path) -> Mount {
        serde_json::from_str(&format!(
            r#"{{"destination":"{destination}","type":"bind","source":"{}","options":["rbind","ro"]}}"#,
            source.display()
        ))
        .unwrap()
    }

    #[test]
    fn sources_below_the_share_are_scoped() {
        let share = tempfile::tempdir().unwrap();
        let base = share.path();
        std::fs::create_dir_all(base.join("vol/sub")).unwrap();
        std::fs::write(base.join("vol/key"), "").unwrap();
        std::os::unix::fs::symlink("/", base.join("vol/swapped")).unwrap();
        let plan = |source: &Path| plan_mount_with(&bind("/data", source), &[base]);
        let dir = plan(&base.join("vol/sub")).unwrap();
        let scoped = dir.scoped_source.as_ref().unwrap();
        assert_eq!(scoped.base.as_bytes(), base.as_os_str().as_bytes());
        assert_eq!(scoped.path.to_str().unwrap(), "vol/sub");
        assert!(!dir.file_target);
        assert_eq!(dir.target.to_str().unwrap(), "data");
        assert!(plan(&base.join("vol/key")).unwrap().file_target);
        assert_eq!(
            plan(base).unwrap().scoped_source.unwrap().path.to_str(),
            Ok(".")
        );
        let err = plan(&base.join("vol/swapped")).unwrap_err().to_string();
        assert!(err.contains("goes through a symlink"), "{err}");
        let err = plan(&base.join("vol/swapped/etc")).unwrap_err().to_string();
        assert!(err.contains("goes through a symlink"), "{err}");
        let err = plan(&base.join("vol/../vol/sub")).unwrap_err().to_string();
        assert!(err.contains("without \"..\""), "{err}");
        // Elsewhere: a plain source, followed as before.
        let other = tempfile::tempdir().unwrap();
        let plain = plan_mount_with(&bind("/data", other.path()), &[base]).unwrap();
        assert!(plain.scoped_source.is_none());
        assert!(plan_mount(&bind("/", other.path()))
            .unwrap_err()
            .to_string()
            .contains("whole root"));
    }
}
