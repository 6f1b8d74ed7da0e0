//! Containers of a pod: from an OCI runtime spec to a [`launch::LaunchPlan`], and the
//! container's state. The sandbox module owns the registry and the locking.
//!
//! Namespaces per spec entry (`linux.namespaces`): network, ipc, uts without a path or with
//! path "pod" join pause's; "node" stays in the guest's root namespace. pid without a path is
//! the container's own (it is PID 1 there); "pod" joins pause's (shareProcessNamespace).
//! mount is always the container's own: its mounts vanish with it.

pub mod launch;
pub mod resources;
pub mod stats;

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use launch::{LaunchPlan, PlannedMount};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("malformed OCI spec: {0}")]
    Spec(String),
    #[error("rootfs {0}: not a directory in the guest")]
    MissingRootfs(PathBuf),
    #[error("process args[0] {0:?} not found in the container's PATH")]
    NoProgram(String),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    /// `helper` is tracked by the reaper and mirrors `pid`'s exit.
    Running {
        helper: Pid,
        pid: Pid,
    },
    Stopped {
        exit_code: i32,
    },
}

pub struct Container {
    pub spec: Spec,
    pub rootfs: PathBuf,
    /// Per-container scratch: overlay upper/work and the mount point of the new root.
    pub bundle: PathBuf,
    pub cgroup: Option<PathBuf>,
    pub state: State,
}

pub fn parse_spec(json: &[u8]) -> Result<Spec, ContainerError> {
    let spec: Spec =
        serde_json::from_slice(json).map_err(|e| ContainerError::Spec(e.to_string()))?;
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    if args.is_empty() {
        return Err(ContainerError::Spec("process.args is empty".into()));
    }
    Ok(spec)
}

fn cstring(s: impl Into<Vec<u8>>) -> Result<CString, ContainerError> {
    CString::new(s).map_err(|_| ContainerError::Spec("a string contains a NUL byte".into()))
}

fn path_cstring(p: &Path) -> Result<CString, ContainerError> {
    cstring(p.as_os_str().as_encoded_bytes())
}

/// Finds args[0] in the rootfs the way execvp would (PATH from the spec's env).
fn resolve_program(rootfs: &Path, arg0: &str, env: &[String]) -> Result<String, ContainerError> {
    if arg0.contains('/') {
        return Ok(arg0.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| format!("{}/{arg0}", dir.trim_end_matches('/')))
        .find(|candidate| {
            let inside = rootfs.join(candidate.trim_start_matches('/'));
            inside.symlink_metadata().is_ok()
        })
        .ok_or_else(|| ContainerError::NoProgram(arg0.to_string()))
}

/// How a container gets its namespaces: pause's to join, as (kind, CLONE_NEW* flag), and
/// whether it has a pid namespace of its own.
#[derive(Debug)]
pub struct NamespacePlan {
    pub join: Vec<(&'static str, libc::c_int)>,
    pub own_pid: bool,
}

/// The namespace plan of a spec (see the module documentation).
pub fn joined_namespaces(spec: &Spec) -> Result<NamespacePlan, ContainerError> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut join = Vec::new();
    let mut own_pid = false;
    for ns in &namespaces {
        let path = ns.path().as_ref().map(|p| p.to_string_lossy().into_owned());
        let (kind, flag) = match ns.typ() {
            LinuxNamespaceType::Network => ("net", libc::CLONE_NEWNET),
            LinuxNamespaceType::Ipc => ("ipc", libc::CLONE_NEWIPC),
            LinuxNamespaceType::Uts => ("uts", libc::CLONE_NEWUTS),
            LinuxNamespaceType::Pid => ("pid", libc::CLONE_NEWPID),
            _ => continue,
        };
        match (kind, path.as_deref()) {
            ("pid", None) => own_pid = true,
            (_, None | Some("pod")) => join.push((kind, flag)),
            (_, Some("node")) => {}
            (_, Some(other)) => {
                return Err(ContainerError::Unsupported(format!(
                    "{kind} namespace path {other:?} (this agent takes \"pod\" or \"node\")"
                )))
            }
        }
    }
    Ok(NamespacePlan { join, own_pid })
}

/// Writes `resources` into the cgroup `dir` (all validated first).
pub fn apply_resources(
    dir: &Path,
    resources: &oci_spec::runtime::LinuxResources,
) -> Result<(), ContainerError> {
    for (file, value) in resources::to_writes(resources)? {
        let path = dir.join(file);
        std::fs::write(&path, &value).map_err(|source| ContainerError::Open { path, source })?;
    }
    Ok(())
}

/// Builds everything the children need to start `container` in the pod of `pause`.
pub fn plan(container: &Container, pause: Pid) -> Result<LaunchPlan, ContainerError> {
    if !container.rootfs.is_dir() {
        return Err(ContainerError::MissingRootfs(container.rootfs.clone()));
    }
    let process = container.spec.process().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let program = resolve_program(&container.rootfs, &args[0], &env)?;

    let NamespacePlan {
        join: join_kinds,
        own_pid,
    } = joined_namespaces(&container.spec)?;
    let mut join = Vec::new();
    for (kind, flag) in join_kinds {
        let path = PathBuf::from(format!("/proc/{pause}/ns/{kind}"));
        let file = File::open(&path).map_err(|source| ContainerError::Open { path, source })?;
        join.push((file.into(), flag));
    }
    let mut unshare = libc::CLONE_NEWNS;
    if own_pid {
        unshare |= libc::CLONE_NEWPID;
    }

    let root = container.bundle.join("root");
    let (upper, work) = (
        container.bundle.join("upper"),
        container.bundle.join("work"),
    );
    for dir in [&root, &upper, &work] {
        std::fs::create_dir_all(dir).map_err(|source| ContainerError::Open {
            path: dir.clone(),
            source,
        })?;
    }
    let overlay_data = format!(
        "lowerdir={},upperdir={},workdir={}",
        container.rootfs.display(),
        upper.display(),
        work.display()
    );
    let at = |rel: &str| path_cstring(&root.join(rel));
    let mount = |source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str| {
        Ok::<_, ContainerError>(PlannedMount {
            source: cstring(source)?,
            target: at(target)?,
            fstype: cstring(fstype)?,
            flags,
            data: cstring(data)?,
        })
    };
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts = vec![
        mount("proc", "proc", "proc", nodev, "")?,
        mount(
            "tmpfs",
            "dev",
            "tmpfs",
            libc::MS_NOSUID,
            "mode=755,size=65536k",
        )?,
        mount(
            "devpts",
            "dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        )?,
        mount("shm", "dev/shm", "tmpfs", nodev, "mode=1777,size=65536k")?,
        mount("mqueue", "dev/mqueue", "mqueue", nodev, "")?,
        mount("sysfs", "sys", "sysfs", nodev | libc::MS_RDONLY, "")?,
    ];
    let mut devices = Vec::new();
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        devices.push((cstring(format!("/dev/{dev}"))?, at(&format!("dev/{dev}"))?));
    }
    let cwd = process.cwd().to_string_lossy().into_owned();
    Ok(LaunchPlan {
        join,
        unshare,
        overlay_target: path_cstring(&root)?,
        overlay_data: cstring(overlay_data)?,
        mounts,
        devices,
        put_old: at(".oldroot")?,
        cwd: cstring(if cwd.is_empty() { "/".to_string() } else { cwd })?,
        program: cstring(program)?,
        argv: args
            .iter()
            .map(|a| cstring(a.as_str()))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|e| cstring(e.as_str()))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str) -> Spec {
        let json = format!(
            r#"{{"ociVersion":"1.0.2","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}},
               "linux":{{"namespaces":[{namespaces}]}}}}"#
        );
        parse_spec(json.as_bytes()).unwrap()
    }

    #[test]
    fn cri_defaults_join_pod_net_ipc_uts_with_own_pid() {
        let s = spec(
            r#"{"type":"network","path":"pod"},{"type":"ipc"},{"type":"uts"},{"type":"pid"},{"type":"mount"}"#,
        );
        let plan = joined_namespaces(&s).unwrap();
        let kinds: Vec<&str> = plan.join.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["net", "ipc", "uts"]);
        assert!(plan.own_pid);
    }

    #[test]
    fn shared_pid_and_node_modes() {
        let s = spec(r#"{"type":"network","path":"node"},{"type":"pid","path":"pod"}"#);
        let plan = joined_namespaces(&s).unwrap();
        let kinds: Vec<&str> = plan.join.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, ["pid"]);
        assert!(!plan.own_pid);
        let s = spec(r#"{"type":"pid","path":"/proc/7/ns/pid"}"#);
        assert!(joined_namespaces(&s)
            .unwrap_err()
            .to_string()
            .contains("/proc/7/ns/pid"));
    }

    #[test]
    fn resources_survive_parsing() {
        let json = br#"{"ociVersion":"1.1.0","process":{"args":["sleep"],"cwd":"/","user":{"uid":0,"gid":0}},
            "root":{"path":"rootfs"},"linux":{"resources":{"memory":{"limit":67108864},
            "cpu":{"quota":50000,"period":100000}},"namespaces":[{"type":"pid"}]}}"#;
        let spec = parse_spec(json).unwrap();
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .unwrap();
        let writes = resources::to_writes(&resources).unwrap();
        assert!(
            writes.contains(&("memory.max", "67108864".to_string())),
            "{writes:?}"
        );
    }

    #[test]
    fn bad_specs_are_named() {
        assert!(parse_spec(b"{not json")
            .unwrap_err()
            .to_string()
            .contains("malformed OCI spec"));
        let empty =
            br#"{"ociVersion":"1.0.2","process":{"args":[],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"r"}}"#;
        assert!(parse_spec(empty)
            .unwrap_err()
            .to_string()
            .contains("process.args"));
    }

    #[test]
    fn programs_resolve_on_the_spec_path() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/sh"), b"").unwrap();
        assert_eq!(resolve_program(root.path(), "sh", &[]).unwrap(), "/bin/sh");
        assert_eq!(resolve_program(root.path(), "/x/y", &[]).unwrap(), "/x/y");
        assert!(resolve_program(root.path(), "nope", &["PATH=/bin".into()]).is_err());
    }
}
