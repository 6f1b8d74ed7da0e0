//! Containers of a pod: from an OCI runtime spec to a [`launch::LaunchPlan`] for the init
//! process or an exec, and the container's processes. The sandbox module owns the registry
//! and the locking; [`namespaces`] documents where each namespace comes from.

pub mod capabilities;
pub mod launch;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod process_setup;
pub mod resources;
pub mod rootfs_setup;
pub mod scoped_path;
pub mod seccomp;
pub mod stats;
pub mod steps;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::{Process as OciProcess, Spec};

use crate::stdio::ChildStdio;
use launch::LaunchPlan;
use namespaces::{NamespacePlan, NamespaceSource};
use process::Process;
use process_setup::{ChildStdioFds, ProcessPlan};
use rootfs_setup::RootfsPlan;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("malformed OCI spec: {0}")]
    Spec(String),
    #[error("rootfs {0}: not a directory in the guest")]
    MissingRootfs(PathBuf),
    #[error("process args[0] {0:?} not found in the container's PATH")]
    NoProgram(String),
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("namespace source container {0:?} is not running")]
    TargetNotRunning(String),
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

pub struct Container {
    pub spec: Spec,
    pub rootfs: PathBuf,
    /// Per-container scratch: overlay upper/work and the mount point of the new root.
    pub bundle: PathBuf,
    pub cgroup: Option<PathBuf>,
    /// Whether the init's stdin is wired (CreateContainerRequest.stdin).
    pub stdin: bool,
    pub namespaces: NamespacePlan,
    /// The child's stdio of the next start (made at create, so streams can attach early).
    pub pending_stdio: Option<ChildStdio>,
    /// The current (or last) init process.
    pub init: Option<Process>,
    pub execs: HashMap<String, Process>,
}

impl Container {
    pub fn status(&self) -> Status {
        match &self.init {
            None => Status::Created,
            Some(p) if p.is_running() => Status::Running,
            Some(_) => Status::Stopped,
        }
    }

    /// The running init's pid.
    pub fn running_pid(&self) -> Option<Pid> {
        self.init.as_ref().filter(|p| p.is_running()).map(|p| p.pid)
    }

    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }
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

fn open_namespace(pid: Pid, kind: &str) -> Result<OwnedFd, ContainerError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    File::open(&path)
        .map(OwnedFd::from)
        .map_err(|source| ContainerError::Open { path, source })
}

/// The namespaces to join and the flags to unshare for `plan`: pause is `pause`, other
/// containers' init pids come from `init_pid_of`.
pub fn resolve_namespaces(
    plan: &NamespacePlan,
    pause: Pid,
    init_pid_of: impl Fn(&str) -> Option<Pid>,
) -> Result<(Vec<(OwnedFd, libc::c_int)>, libc::c_int), ContainerError> {
    let mut join = Vec::new();
    let mut unshare = libc::CLONE_NEWNS;
    for (kind, flag, source) in plan.shared_kinds() {
        match source {
            NamespaceSource::Own => unshare |= flag,
            NamespaceSource::Node => {}
            NamespaceSource::Pod => join.push((open_namespace(pause, kind)?, flag)),
            NamespaceSource::Container(id) => {
                let pid =
                    init_pid_of(id).ok_or_else(|| ContainerError::TargetNotRunning(id.clone()))?;
                join.push((open_namespace(pid, kind)?, flag));
            }
            NamespaceSource::Path(path) => {
                let file = File::open(path).map_err(|source| ContainerError::Open {
                    path: path.clone(),
                    source,
                })?;
                join.push((file.into(), flag));
            }
        }
    }
    Ok((join, unshare))
}

/// The root of `container`: overlay, the spec's mounts, /dev, masked and read-only paths.
fn plan_rootfs(container: &Container) -> Result<RootfsPlan, ContainerError> {
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
    let spec = &container.spec;
    let planned_mounts = mounts::plan_mounts(&root, spec)?;
    // Relative to the new root: the child resolves them inside it.
    let mut devices = Vec::new();
    let mut symlinks = Vec::new();
    if planned_mounts.iter().any(|m| m.destination == "/dev") {
        for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
            devices.push((
                cstring(format!("/dev/{dev}"))?,
                cstring(format!("dev/{dev}"))?,
            ));
        }
        for (text, link) in [
            ("pts/ptmx", "dev/ptmx"),
            ("/proc/self/fd", "dev/fd"),
            ("/proc/self/fd/0", "dev/stdin"),
            ("/proc/self/fd/1", "dev/stdout"),
            ("/proc/self/fd/2", "dev/stderr"),
            ("/proc/kcore", "dev/core"),
        ] {
            symlinks.push((cstring(text)?, cstring(link)?));
        }
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let own_uts = container.namespaces.uts == NamespaceSource::Own;
    Ok(RootfsPlan {
        root: path_cstring(&root)?,
        overlay_data: cstring(overlay_data)?,
        mounts: planned_mounts,
        devices,
        symlinks,
        sysctls: mounts::plan_sysctls(linux.sysctl().iter().flatten())?,
        readonly_paths: mounts::plan_paths(
            "linux.readonlyPaths",
            linux.readonly_paths().as_deref().unwrap_or_default(),
        )?,
        masked_paths: mounts::plan_paths(
            "linux.maskedPaths",
            linux.masked_paths().as_deref().unwrap_or_default(),
        )?,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        hostname: match (own_uts, spec.hostname()) {
            (true, Some(name)) if !name.is_empty() => Some(cstring(name.as_str())?),
            _ => None,
        },
    })
}

fn plan_oci_process(spec: &Spec, process: &OciProcess) -> Result<ProcessPlan, ContainerError> {
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    process_setup::plan_process(process, seccomp)
}

/// Checks the spec's process (user, rlimits, capabilities, seccomp profile...) at create
/// time, so a bad spec fails CreateContainer rather than the later start.
pub fn check_process(spec: &Spec) -> Result<(), ContainerError> {
    let process = spec.process().clone().unwrap_or_default();
    plan_oci_process(spec, &process).map(|_| ())
}

/// Everything the children need to start the init of `container`.
pub fn plan_init(
    container: &Container,
    join: Vec<(OwnedFd, libc::c_int)>,
    unshare: libc::c_int,
    stdio: ChildStdioFds,
) -> Result<LaunchPlan, ContainerError> {
    if !container.rootfs.is_dir() {
        return Err(ContainerError::MissingRootfs(container.rootfs.clone()));
    }
    let oci_process = container.spec.process().clone().unwrap_or_default();
    let process = plan_oci_process(&container.spec, &oci_process)?;
    if !process_setup::program_exists(&container.rootfs, &process) {
        return Err(ContainerError::NoProgram(process.program_name.clone()));
    }
    Ok(LaunchPlan {
        join,
        unshare,
        unshare_after_placement: if container.namespaces.own_cgroup {
            libc::CLONE_NEWCGROUP
        } else {
            0
        },
        rootfs: Some(plan_rootfs(container)?),
        process,
        stdio,
    })
}

/// The namespace kinds an exec joins, in order: mnt last (it changes the root), pid before
/// the fork that puts the process in it.
pub const EXEC_JOIN_ORDER: [(&str, libc::c_int); 6] = [
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

/// Everything the children need to start an exec (an OCI process as JSON) in the container
/// whose init is `init`.
pub fn plan_exec(
    spec: &Spec,
    init: Pid,
    process_json: &[u8],
    stdio: ChildStdioFds,
) -> Result<LaunchPlan, ContainerError> {
    let oci_process: OciProcess = serde_json::from_slice(process_json)
        .map_err(|e| ContainerError::Spec(format!("exec process: {e}")))?;
    let process = plan_oci_process(spec, &oci_process)?;
    let join = EXEC_JOIN_ORDER
        .iter()
        .map(|(kind, flag)| Ok((open_namespace(init, kind)?, *flag)))
        .collect::<Result<Vec<_>, ContainerError>>()?;
    Ok(LaunchPlan {
        join,
        unshare: 0,
        unshare_after_placement: 0,
        rootfs: None,
        process,
        stdio,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn node_namespaces_join_nothing_and_own_pid_unshares() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
                "root":{"path":"r"},"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"node"}]}}"#,
        )
        .unwrap();
        let plan = namespaces::plan_namespaces(&spec).unwrap();
        let (join, unshare) = resolve_namespaces(&plan, Pid::this(), |_| None).unwrap();
        assert!(join.is_empty());
        assert_eq!(unshare, libc::CLONE_NEWNS | libc::CLONE_NEWPID);
        let target: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
                "root":{"path":"r"},"linux":{"namespaces":[{"type":"pid","path":"container:app"}]}}"#,
        )
        .unwrap();
        let plan = namespaces::plan_namespaces(&target).unwrap();
        let err = resolve_namespaces(&plan, Pid::this(), |_| None).unwrap_err();
        assert!(err.to_string().contains("\"app\" is not running"), "{err}");
        let (join, unshare) =
            resolve_namespaces(&plan, Pid::this(), |_| Some(Pid::this())).unwrap();
        assert_eq!(join.len(), 1);
        assert_eq!(unshare, libc::CLONE_NEWNS);
    }
}
