//! The spec's `mounts`, `maskedPaths`, `readonlyPaths` and `linux.sysctl` turned into C strings
//! the init process uses after the fork. Pure: the only file system access is checking whether
//! a bind source is a file (its target must then be a file too).

use std::ffi::CString;
use std::path::Path;

use oci_spec::runtime::{Mount, Spec};

use super::{cstring, path_cstring, ContainerError};

/// A mount the init process makes below the new root, before switching into it.
#[derive(Debug)]
pub struct PlannedMount {
    /// The spec's destination, for error messages.
    pub destination: String,
    pub source: CString,
    /// Absolute path below the new root's mount point.
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

/// One spec mount to a [`PlannedMount`] below `root`.
pub fn plan_mount(root: &Path, mount: &Mount) -> Result<PlannedMount, ContainerError> {
    let destination = mount.destination().to_string_lossy().into_owned();
    if !destination.starts_with('/') || destination.split('/').any(|part| part == "..") {
        return Err(ContainerError::Spec(format!(
            "mount destination {destination:?} must be absolute without \"..\""
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
    if is_bind {
        flags |= libc::MS_BIND;
        fstype.clear();
        if !source.starts_with('/') {
            return Err(ContainerError::Spec(format!(
                "bind mount source {source:?} for {destination:?} must be an absolute guest path"
            )));
        }
        let meta = std::fs::metadata(&source).map_err(|e| {
            ContainerError::Spec(format!(
                "bind mount source {source:?} for {destination:?}: {e}"
            ))
        })?;
        file_target = !meta.is_dir();
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
        target: path_cstring(&root.join(destination.trim_start_matches('/')))?,
        destination,
        source: cstring(source)?,
        fstype: cstring(fstype)?,
        flags,
        data: cstring(options.data.join(","))?,
        propagation: options.propagation,
        remount_flags,
        file_target,
    })
}

/// The spec's mounts below `root` (the defaults when it lists none).
pub fn plan_mounts(root: &Path, spec: &Spec) -> Result<Vec<PlannedMount>, ContainerError> {
    let mounts = match spec.mounts() {
        Some(m) if !m.is_empty() => m.clone(),
        _ => default_mounts(),
    };
    mounts.iter().map(|m| plan_mount(root, m)).collect()
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
        let targets: Vec<String> = planned
            .iter()
            .map(|m| m.target.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            targets,
            [
                "/new/proc",
                "/new/dev",
                "/new/dev/pts",
                "/new/dev/shm",
                "/new/dev/mqueue",
                "/new/sys"
            ]
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
        let p = plan_mount(Path::new("/r"), &m).unwrap();
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
        let p = plan_mount(Path::new("/r"), &m).unwrap();
        assert!(p.file_target);
        assert_eq!(p.flags, libc::MS_BIND | libc::MS_REC);
        assert!(p.remount_flags & libc::MS_RDONLY != 0);
        let missing: Mount = serde_json::from_str(
            r#"{"destination":"/x","type":"bind","source":"/no/such/dir","options":["bind"]}"#,
        )
        .unwrap();
        assert!(plan_mount(Path::new("/r"), &missing)
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
}
