//! Pod sandboxes in the guest: the pod cgroup and pause, which holds the shared namespaces.
//!
//! Namespace modes for the sandbox (CRI `NamespaceMode`; behind the VM boundary the node is
//! the guest):
//! - network, ipc: POD gives pause a new namespace that the pod's containers join; NODE keeps
//!   the guest's root namespace (hostNetwork/hostIPC). CONTAINER and TARGET are per-container
//!   modes and are rejected for a sandbox.
//! - pid: pause always gets a new pid namespace, in which it is PID 1 and reaps zombies, except
//!   with NODE (hostPID). Whether containers join it (POD, shareProcessNamespace) or get their
//!   own (CONTAINER) is decided per container.
//! - uts: always a new namespace holding the pod's hostname.
//!
//! Each sandbox has its own lock; the registry lock is held only to look an id up or to insert
//! or remove one.

mod pause;
mod pod_cgroup;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nutshell_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, InspectSandboxResponse, NamespaceMode,
    ProcessNamespaces,
};

use crate::container::{self, launch, Container, ContainerError, State};
use crate::reaper::Reaper;

/// Namespace kinds reported by InspectSandbox.
pub const NAMESPACE_KINDS: [&str; 8] =
    ["net", "uts", "ipc", "pid", "mnt", "user", "cgroup", "time"];
const DEFAULT_CGROUP_PARENT: &str = "kubepods";
const PAUSE_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-container scratch (overlay upper and work dirs, the new root's mount point).
const BUNDLE_ROOT: &str = "/run/nutshell";
/// WaitProcess blocks at most this long per call; the caller's own deadline is usually shorter.
const WAIT_LIMIT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("sandbox {0:?} already exists")]
    AlreadyExists(String),
    #[error("no sandbox {0:?}")]
    NotFound(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start pause: {step} failed: {}", nix::errno::Errno::from_raw(*errno))]
    Pause { step: &'static str, errno: i32 },
    #[error("pause {pid} did not exit after SIGKILL within {PAUSE_EXIT_TIMEOUT:?}")]
    PauseStuck { pid: i32 },
    #[error("container {0:?} already exists")]
    ContainerExists(String),
    #[error("no container {0:?}")]
    NoContainer(String),
    #[error("container {id:?} is {state}: {wanted}")]
    WrongState {
        id: String,
        state: &'static str,
        wanted: &'static str,
    },
    #[error("exec processes are not implemented yet (exec_id {0:?})")]
    NoExec(String),
    #[error("container {id:?}: {source}")]
    Container {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("cannot start container {id:?}: {step} failed: {}", nix::errno::Errno::from_raw(*errno))]
    Launch {
        id: String,
        step: &'static str,
        errno: i32,
    },
}

/// One pod sandbox.
struct Sandbox {
    /// The helper that waits for pause (tracked by the reaper), and pause itself.
    helper: Pid,
    pause: Pid,
    pod_cgroup: PathBuf,
    pause_cgroup: Option<PathBuf>,
    containers: HashMap<String, Container>,
}

/// Every sandbox of this guest.
pub struct Sandboxes {
    cgroup_root: PathBuf,
    reaper: Reaper,
    sandboxes: Mutex<HashMap<String, Arc<Mutex<Sandbox>>>>,
    /// Container id to the id of its sandbox.
    container_index: Mutex<HashMap<String, String>>,
}

fn check_name(field: &'static str, value: &str) -> Result<(), SandboxError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value != "."
        && value != "..";
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Invalid {
            field,
            value: value.to_string(),
            reason: "must be 1-128 of [A-Za-z0-9._-]",
        })
    }
}

/// The clone flags of pause for a request (see the module documentation).
pub fn pause_flags(req: &CreateSandboxRequest) -> Result<CloneFlags, SandboxError> {
    let options = req.namespace_options.as_ref().cloned().unwrap_or_default();
    let mut flags = CloneFlags::CLONE_NEWUTS;
    for (field, mode, flag) in [
        (
            "namespace_options.network",
            options.network.enum_value_or_default(),
            CloneFlags::CLONE_NEWNET,
        ),
        (
            "namespace_options.ipc",
            options.ipc.enum_value_or_default(),
            CloneFlags::CLONE_NEWIPC,
        ),
    ] {
        match mode {
            NamespaceMode::POD => flags |= flag,
            NamespaceMode::NODE => {}
            other => {
                return Err(SandboxError::Invalid {
                    field,
                    value: format!("{other:?}"),
                    reason: "a sandbox takes POD or NODE",
                })
            }
        }
    }
    match options.pid.enum_value_or_default() {
        NamespaceMode::NODE => {}
        NamespaceMode::TARGET => {
            return Err(SandboxError::Invalid {
                field: "namespace_options.pid",
                value: "TARGET".into(),
                reason: "TARGET is a container mode",
            })
        }
        _ => flags |= CloneFlags::CLONE_NEWPID,
    }
    Ok(flags)
}

fn cgroup_parent(req: &CreateSandboxRequest) -> Result<String, SandboxError> {
    let parent = if req.cgroup_parent.is_empty() {
        DEFAULT_CGROUP_PARENT
    } else {
        req.cgroup_parent.trim_matches('/')
    };
    for part in parent.split('/') {
        check_name("cgroup_parent", part)?;
    }
    Ok(parent.to_string())
}

/// Inode of each namespace of `pid`, read from /proc/<pid>/ns.
pub fn namespaces_of(name: &str, pid: u32) -> ProcessNamespaces {
    let mut entry = ProcessNamespaces::new();
    entry.name = name.to_string();
    entry.pid = pid;
    for kind in NAMESPACE_KINDS {
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/ns/{kind}")) {
            entry.inodes.insert(kind.to_string(), meta.ino());
        }
    }
    entry
}

impl Sandboxes {
    pub fn new(cgroup_root: impl Into<PathBuf>, reaper: Reaper) -> Self {
        Sandboxes {
            cgroup_root: cgroup_root.into(),
            reaper,
            sandboxes: Mutex::new(HashMap::new()),
            container_index: Mutex::new(HashMap::new()),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Sandbox>>>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<Arc<Mutex<Sandbox>>, SandboxError> {
        self.registry()
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }

    /// Creates the pod cgroup and starts pause; returns pause's pid.
    pub fn create(&self, req: &CreateSandboxRequest) -> Result<u32, SandboxError> {
        check_name("sandbox_id", &req.sandbox_id)?;
        check_name("pod_uid", &req.pod_uid)?;
        let flags = pause_flags(req)?;
        let parent = cgroup_parent(req)?;
        let hostname = if req.hostname.is_empty() {
            req.pod_name.clone()
        } else {
            req.hostname.clone()
        };
        if hostname.is_empty() || hostname.len() > 64 {
            return Err(SandboxError::Invalid {
                field: "hostname",
                value: hostname,
                reason: "must be 1-64 bytes (or give pod_name)",
            });
        }
        // Reserve the id first, so two racing creates cannot both proceed.
        let slot = {
            let mut registry = self.registry();
            if registry.contains_key(&req.sandbox_id) {
                return Err(SandboxError::AlreadyExists(req.sandbox_id.clone()));
            }
            let slot = Arc::new(Mutex::new(Sandbox {
                helper: Pid::from_raw(0),
                pause: Pid::from_raw(0),
                pod_cgroup: PathBuf::new(),
                pause_cgroup: None,
                containers: HashMap::new(),
            }));
            registry.insert(req.sandbox_id.clone(), slot.clone());
            slot
        };
        let mut sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.start(
            &mut sandbox,
            flags,
            &parent,
            &req.pod_uid,
            hostname.into_bytes(),
        );
        match result {
            Ok(pid) => Ok(pid),
            Err(e) => {
                // Whatever was made goes again; the id is free for a retry.
                let _ = self.teardown(&mut sandbox);
                self.registry().remove(&req.sandbox_id);
                Err(e)
            }
        }
    }

    fn start(
        &self,
        sandbox: &mut Sandbox,
        flags: CloneFlags,
        parent: &str,
        pod_uid: &str,
        hostname: Vec<u8>,
    ) -> Result<u32, SandboxError> {
        sandbox.pod_cgroup = pod_cgroup::create_pod(&self.cgroup_root, parent, pod_uid)?;
        let spec = pause::PauseSpec { flags, hostname };
        let (helper, pause) = self
            .reaper
            .spawn_tracked(|| pause::spawn(&spec))
            .map_err(|e| SandboxError::Pause {
                step: "fork",
                errno: e as i32,
            })?;
        sandbox.helper = helper;
        let pause = pause.map_err(|(step, errno)| SandboxError::Pause { step, errno })?;
        sandbox.pause = pause;
        sandbox.pause_cgroup = Some(pod_cgroup::create_child(
            &sandbox.pod_cgroup,
            "pause",
            pause.as_raw() as u32,
        )?);
        Ok(pause.as_raw() as u32)
    }

    /// Kills pause, waits for it, removes the cgroups. Safe to call on a half-made sandbox.
    fn teardown(&self, sandbox: &mut Sandbox) -> Result<(), SandboxError> {
        let ids: Vec<String> = sandbox.containers.keys().cloned().collect();
        for id in ids {
            if let Some(mut c) = sandbox.containers.remove(&id) {
                self.stop_and_clean(&id, &mut c)?;
            }
            self.index().remove(&id);
        }
        if sandbox.pause.as_raw() > 0 {
            let _ = kill(sandbox.pause, Signal::SIGKILL);
        }
        if sandbox.helper.as_raw() > 0 {
            self.reaper
                .wait_for(sandbox.helper, PAUSE_EXIT_TIMEOUT)
                .map_err(|_| SandboxError::PauseStuck {
                    pid: sandbox.pause.as_raw(),
                })?;
            sandbox.helper = Pid::from_raw(0);
            sandbox.pause = Pid::from_raw(0);
        }
        if let Some(dir) = sandbox.pause_cgroup.take() {
            pod_cgroup::remove(&dir)?;
        }
        if !sandbox.pod_cgroup.as_os_str().is_empty() {
            pod_cgroup::remove(&sandbox.pod_cgroup)?;
            sandbox.pod_cgroup = PathBuf::new();
        }
        Ok(())
    }

    /// Kills every process of the sandbox and removes its cgroups. Unknown ids are fine
    /// (already destroyed).
    pub fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let Ok(slot) = self.get(id) else {
            return Ok(());
        };
        let mut sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        self.teardown(&mut sandbox)?;
        self.registry().remove(id);
        Ok(())
    }

    /// Namespace inodes of pause and the guest root, and the pod's cgroup tree.
    pub fn inspect(&self, id: &str) -> Result<InspectSandboxResponse, SandboxError> {
        let slot = self.get(id)?;
        let sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let mut response = InspectSandboxResponse::new();
        response.pause = Some(namespaces_of("pause", sandbox.pause.as_raw() as u32)).into();
        response.guest_root = Some(namespaces_of("guest", 1)).into();
        response
            .cgroups
            .push(pod_cgroup::node(&self.cgroup_root, &sandbox.pod_cgroup, ""));
        if let Some(dir) = &sandbox.pause_cgroup {
            response
                .cgroups
                .push(pod_cgroup::node(&self.cgroup_root, dir, "pause"));
        }
        let mut ids: Vec<&String> = sandbox.containers.keys().collect();
        ids.sort();
        for id in ids {
            let c = &sandbox.containers[id];
            let pid = match c.state {
                State::Running { pid, .. } => pid.as_raw() as u32,
                _ => 0,
            };
            let mut entry = if pid > 0 {
                namespaces_of(id, pid)
            } else {
                ProcessNamespaces::new()
            };
            entry.name = id.clone();
            response.containers.push(entry);
            if let Some(dir) = &c.cgroup {
                response
                    .cgroups
                    .push(pod_cgroup::node(&self.cgroup_root, dir, id));
            }
        }
        Ok(response)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.container_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The sandbox holding container `id`.
    fn sandbox_of(&self, id: &str) -> Result<Arc<Mutex<Sandbox>>, SandboxError> {
        let sandbox_id = self
            .index()
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NoContainer(id.to_string()))?;
        self.get(&sandbox_id)
    }

    /// Registers a container; nothing runs until [`Sandboxes::start_container`].
    pub fn create_container(&self, req: &CreateContainerRequest) -> Result<(), SandboxError> {
        check_name("container_id", &req.container_id)?;
        let spec = container::parse_spec(&req.oci_spec_json).map_err(|source| {
            SandboxError::Container {
                id: req.container_id.clone(),
                source,
            }
        })?;
        let rootfs = PathBuf::from(&req.rootfs);
        if !rootfs.is_dir() {
            return Err(SandboxError::Container {
                id: req.container_id.clone(),
                source: ContainerError::MissingRootfs(rootfs),
            });
        }
        let slot = self.get(&req.sandbox_id)?;
        let mut sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut index = self.index();
            if index.contains_key(&req.container_id) {
                return Err(SandboxError::ContainerExists(req.container_id.clone()));
            }
            index.insert(req.container_id.clone(), req.sandbox_id.clone());
        }
        let bundle = PathBuf::from(BUNDLE_ROOT)
            .join(&req.sandbox_id)
            .join(&req.container_id);
        sandbox.containers.insert(
            req.container_id.clone(),
            Container {
                spec,
                rootfs,
                bundle,
                cgroup: None,
                state: State::Created,
            },
        );
        Ok(())
    }

    /// Starts (or starts again, after it exited) the container's init process.
    pub fn start_container(&self, id: &str) -> Result<u32, SandboxError> {
        let slot = self.sandbox_of(id)?;
        let mut sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let (pause, pod_cgroup) = (sandbox.pause, sandbox.pod_cgroup.clone());
        let c = sandbox
            .containers
            .get_mut(id)
            .ok_or_else(|| SandboxError::NoContainer(id.to_string()))?;
        if let State::Running { .. } = c.state {
            return Err(SandboxError::WrongState {
                id: id.into(),
                state: "running",
                wanted: "start needs a created or exited container",
            });
        }
        // A restart is a fresh container on the same rootfs: a new writable layer.
        let _ = std::fs::remove_dir_all(&c.bundle);
        let plan = container::plan(c, pause).map_err(|source| SandboxError::Container {
            id: id.into(),
            source,
        })?;
        let cgroup = match &c.cgroup {
            Some(dir) => dir.clone(),
            None => {
                let dir = pod_cgroup.join(id);
                std::fs::create_dir(&dir).map_err(|source| SandboxError::Io {
                    what: "create",
                    path: dir.clone(),
                    source,
                })?;
                c.cgroup = Some(dir.clone());
                dir
            }
        };
        if let Some(resources) = c.spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            container::apply_resources(&cgroup, resources).map_err(|source| {
                SandboxError::Container {
                    id: id.into(),
                    source,
                }
            })?;
        }
        let launch_error = |step: &'static str, errno: i32| SandboxError::Launch {
            id: id.into(),
            step,
            errno,
        };
        let (helper, pipes) = self
            .reaper
            .spawn_tracked(|| launch::spawn(&plan))
            .map_err(|e| launch_error("fork", e as i32))?;
        let placed = std::fs::write(cgroup.join("cgroup.procs"), helper.as_raw().to_string())
            .map_err(|e| launch_error("cgroup placement", e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|()| launch::release(&pipes).map_err(|e| launch_error("release", e as i32)));
        let started = placed.and_then(|()| {
            launch::read_report(pipes).map_err(|(step, errno)| launch_error(step, errno))
        });
        match started {
            Ok(pid) => {
                c.state = State::Running { helper, pid };
                Ok(pid.as_raw() as u32)
            }
            Err(e) => {
                let _ = kill(helper, Signal::SIGKILL);
                let _ = self.reaper.wait_for(helper, PAUSE_EXIT_TIMEOUT);
                Err(e)
            }
        }
    }

    /// Blocks until the container's init exits; its exit code (128 + signal if killed).
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<i32, SandboxError> {
        if !exec_id.is_empty() {
            return Err(SandboxError::NoExec(exec_id.into()));
        }
        let slot = self.sandbox_of(id)?;
        let helper = {
            let sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
            match sandbox.containers.get(id).map(|c| c.state) {
                None => return Err(SandboxError::NoContainer(id.into())),
                Some(State::Stopped { exit_code }) => return Ok(exit_code),
                Some(State::Created) => {
                    return Err(SandboxError::WrongState {
                        id: id.into(),
                        state: "created",
                        wanted: "it has not been started",
                    })
                }
                Some(State::Running { helper, .. }) => helper,
            }
        };
        // Without the sandbox lock: other calls go on while this one waits.
        let exit = self.reaper.wait_for(helper, WAIT_LIMIT);
        let mut sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let c = sandbox
            .containers
            .get_mut(id)
            .ok_or_else(|| SandboxError::NoContainer(id.into()))?;
        match (exit, c.state) {
            (_, State::Stopped { exit_code }) => Ok(exit_code),
            (Ok(exit), State::Running { helper: h, .. }) if h == helper => {
                let exit_code = exit.shell_code();
                c.state = State::Stopped { exit_code };
                Ok(exit_code)
            }
            _ => Err(SandboxError::WrongState {
                id: id.into(),
                state: "changing",
                wanted: "it was restarted or removed while waiting",
            }),
        }
    }

    /// Sends `signal` to the init process (or, with `all`, to every process of the container).
    pub fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), SandboxError> {
        if !exec_id.is_empty() {
            return Err(SandboxError::NoExec(exec_id.into()));
        }
        let signal = Signal::try_from(signal).map_err(|_| SandboxError::Invalid {
            field: "signal",
            value: signal.to_string(),
            reason: "not a signal number",
        })?;
        let slot = self.sandbox_of(id)?;
        let sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let c = sandbox
            .containers
            .get(id)
            .ok_or_else(|| SandboxError::NoContainer(id.into()))?;
        let State::Running { pid, .. } = c.state else {
            return Err(SandboxError::WrongState {
                id: id.into(),
                state: "not running",
                wanted: "only a running container takes signals",
            });
        };
        let mut targets = vec![pid];
        if all {
            if let Some(dir) = &c.cgroup {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                targets.extend(
                    procs
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .map(Pid::from_raw),
                );
            }
        }
        for target in targets {
            let _ = kill(target, signal);
        }
        Ok(())
    }

    /// Changes the container's limits live (OCI LinuxResources as JSON).
    pub fn update_container(&self, id: &str, resources_json: &[u8]) -> Result<(), SandboxError> {
        let container_error = |source| SandboxError::Container {
            id: id.into(),
            source,
        };
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json)
                .map_err(|e| container_error(ContainerError::Spec(format!("resources: {e}"))))?;
        let slot = self.sandbox_of(id)?;
        let sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let c = sandbox
            .containers
            .get(id)
            .ok_or_else(|| SandboxError::NoContainer(id.into()))?;
        let dir = c.cgroup.as_ref().ok_or(SandboxError::WrongState {
            id: id.into(),
            state: "created",
            wanted: "limits apply once it has been started",
        })?;
        container::apply_resources(dir, &resources).map_err(container_error)
    }

    /// The cgroup directory of a container that has been started.
    fn cgroup_of(&self, id: &str) -> Result<PathBuf, SandboxError> {
        let slot = self.sandbox_of(id)?;
        let sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let c = sandbox
            .containers
            .get(id)
            .ok_or_else(|| SandboxError::NoContainer(id.into()))?;
        c.cgroup.clone().ok_or(SandboxError::WrongState {
            id: id.into(),
            state: "created",
            wanted: "it has no cgroup until it is started",
        })
    }

    /// cgroup v2 figures of a container.
    pub fn stats_container(
        &self,
        id: &str,
    ) -> Result<nutshell_protocol::agent::StatsContainerResponse, SandboxError> {
        Ok(container::stats::read(&self.cgroup_of(id)?))
    }

    /// The processes in a container's cgroup.
    pub fn list_processes(
        &self,
        id: &str,
    ) -> Result<Vec<nutshell_protocol::agent::ProcessEntry>, SandboxError> {
        Ok(container::stats::processes(&self.cgroup_of(id)?))
    }

    /// Removes a container that is not running.
    pub fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        let slot = self.sandbox_of(id)?;
        let mut sandbox = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(State::Running { .. }) = sandbox.containers.get(id).map(|c| c.state) {
            return Err(SandboxError::WrongState {
                id: id.into(),
                state: "running",
                wanted: "kill it before removing it",
            });
        }
        if let Some(mut c) = sandbox.containers.remove(id) {
            self.stop_and_clean(id, &mut c)?;
        }
        self.index().remove(id);
        Ok(())
    }

    /// Kills a container's processes, waits for its init, removes its cgroup and scratch.
    fn stop_and_clean(&self, id: &str, c: &mut Container) -> Result<(), SandboxError> {
        if let State::Running { helper, pid } = c.state {
            let _ = kill(pid, Signal::SIGKILL);
            let exit = self
                .reaper
                .wait_for(helper, PAUSE_EXIT_TIMEOUT)
                .map_err(|_| SandboxError::WrongState {
                    id: id.into(),
                    state: "still running",
                    wanted: "its init did not die after SIGKILL",
                })?;
            c.state = State::Stopped {
                exit_code: exit.shell_code(),
            };
        }
        if let Some(dir) = c.cgroup.take() {
            pod_cgroup::remove(&dir)?;
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nutshell_protocol::agent::NamespaceOptions;

    fn request(
        network: NamespaceMode,
        pid: NamespaceMode,
        ipc: NamespaceMode,
    ) -> CreateSandboxRequest {
        let mut options = NamespaceOptions::new();
        options.network = network.into();
        options.pid = pid.into();
        options.ipc = ipc.into();
        let mut req = CreateSandboxRequest::new();
        req.namespace_options = Some(options).into();
        req
    }

    #[test]
    fn pause_flags_for_every_mode() {
        use NamespaceMode::*;
        let f = pause_flags(&request(POD, CONTAINER, POD)).unwrap();
        assert!(f.contains(
            CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWPID
        ));
        let f = pause_flags(&request(POD, POD, POD)).unwrap();
        assert!(f.contains(CloneFlags::CLONE_NEWPID));
        let f = pause_flags(&request(NODE, NODE, NODE)).unwrap();
        assert_eq!(f, CloneFlags::CLONE_NEWUTS);
        assert!(pause_flags(&request(CONTAINER, POD, POD)).is_err());
        assert!(pause_flags(&request(POD, POD, TARGET)).is_err());
        assert!(pause_flags(&request(POD, TARGET, POD)).is_err());
        // No options at all: the CRI defaults (POD network/ipc, CONTAINER pid).
        let f = pause_flags(&CreateSandboxRequest::new()).unwrap();
        assert!(f.contains(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWPID));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("sandbox_id", "pod-1_a.b").is_ok());
        for bad in ["", "..", "a/b", "a b"] {
            let err = check_name("sandbox_id", bad).unwrap_err().to_string();
            assert!(err.contains("sandbox_id"), "{err}");
        }
        let mut req = CreateSandboxRequest::new();
        req.cgroup_parent = "kubepods/../etc".into();
        assert!(cgroup_parent(&req).is_err());
        req.cgroup_parent = "/kubepods/burstable/".into();
        assert_eq!(cgroup_parent(&req).unwrap(), "kubepods/burstable");
    }
}
