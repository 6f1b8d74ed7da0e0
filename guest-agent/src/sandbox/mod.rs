//! Pod sandboxes in the guest: the pod cgroup and pause, which holds the shared namespaces.
//!
//! Namespace modes for the sandbox (CRI `NamespaceMode`; behind the VM boundary the node is
//! the guest):
//! - network, ipc: POD gives pause a new namespace that the pod's containers join; NODE keeps
//!   the guest's root namespace (hostNetwork/hostIPC). CONTAINER and TARGET are per-container
//!   modes and are rejected for a sandbox.
//! - pid: pause always gets a new pid namespace, in which it is PID 1 and reaps zombies, except
//!   with NODE (hostPID). Whether containers join it (POD, shareProcessNamespace) or get their
//!   own (CONTAINER) is decided per container (see [`crate::container::namespaces`]).
//! - uts: always a new namespace holding the pod's hostname.
//!
//! The pod's sysctls are written by pause's helper inside the new namespaces. The pod's guest
//! tmpfs volumes (emptyDir `medium: Memory`) are mounted in the agent's mount namespace before
//! any container exists and unmounted when the sandbox goes ([`tmpfs_volumes`]).
//!
//! Each sandbox has its own lock; the registry lock is held only to look an id up or to insert
//! or remove one. Container calls live in [`containers`], process calls in [`processes`].

mod containers;
mod dns;
mod pause;
mod pod_cgroup;
mod processes;
mod tmpfs_volumes;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nutshell_protocol::agent::{
    CreateSandboxRequest, InspectSandboxResponse, NamespaceMode, ProcessNamespaces,
};

use crate::child_report::StepFailure;
use crate::container::{Container, ContainerError};
use crate::reaper::Reaper;
use crate::stdio::{StdioError, StdioHub};

/// Namespace kinds reported by InspectSandbox.
pub const NAMESPACE_KINDS: [&str; 8] =
    ["net", "uts", "ipc", "pid", "mnt", "user", "cgroup", "time"];
const DEFAULT_CGROUP_PARENT: &str = "kubepods";
const PAUSE_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-container scratch (overlay upper and work dirs, the new root's mount point).
const BUNDLE_ROOT: &str = "/run/nutshell";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("sandbox {0:?} already exists")]
    AlreadyExists(String),
    #[error("no sandbox {0:?}")]
    NotFound(String),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tmpfs volume {name:?}: cannot {what} {path}")]
    Volume {
        name: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start pause: {} failed: {}", .0.step, nix::errno::Errno::from_raw(.0.errno))]
    Pause(StepFailure),
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
    #[error("exec {exec_id:?} already exists in container {id:?}")]
    ExecExists { id: String, exec_id: String },
    #[error("no exec {exec_id:?} in container {id:?}")]
    NoExec { id: String, exec_id: String },
    #[error("container {id:?}")]
    Container {
        id: String,
        #[source]
        source: ContainerError,
    },
    #[error("container {id:?}: stdio")]
    Stdio {
        id: String,
        #[source]
        source: StdioError,
    },
    #[error("cannot start {what} of container {id:?}: {failure}")]
    Launch {
        id: String,
        what: &'static str,
        failure: String,
    },
    #[error("{what} did not happen within {waited:?}")]
    Timeout {
        what: &'static str,
        waited: Duration,
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
    /// The pod's resolv.conf (CreateSandbox dns), mounted into every container.
    resolv_conf: Option<PathBuf>,
    /// The guest tmpfs volumes whose mount point may exist, in mount order.
    tmpfs_volumes: Vec<tmpfs_volumes::TmpfsVolume>,
    /// OOM kills reported by GetOomEvent so far, per container.
    oom_reported: HashMap<String, u64>,
}

/// Every sandbox of this guest.
pub struct Sandboxes {
    cgroup_root: PathBuf,
    reaper: Reaper,
    stdio: Arc<StdioHub>,
    sandboxes: Mutex<HashMap<String, Arc<Mutex<Sandbox>>>>,
    /// Container id to the id of its sandbox.
    container_index: Mutex<HashMap<String, String>>,
}

fn lock(slot: &Mutex<Sandbox>) -> MutexGuard<'_, Sandbox> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_name(field: &'static str, value: &str) -> Result<(), SandboxError> {
    if nutshell_protocol::is_valid_id(value) {
        Ok(())
    } else {
        Err(SandboxError::Invalid {
            field,
            value: value.to_string(),
            reason: format!("must be {}", nutshell_protocol::ID_RULE),
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
                    reason: "a sandbox takes POD or NODE".into(),
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
                reason: "TARGET is a container mode".into(),
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
    pub fn new(cgroup_root: impl Into<PathBuf>, reaper: Reaper, stdio: Arc<StdioHub>) -> Self {
        Sandboxes {
            cgroup_root: cgroup_root.into(),
            reaper,
            stdio,
            sandboxes: Mutex::new(HashMap::new()),
            container_index: Mutex::new(HashMap::new()),
        }
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<String, Arc<Mutex<Sandbox>>>> {
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

    fn index(&self) -> MutexGuard<'_, HashMap<String, String>> {
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
                reason: "must be 1-64 bytes (or give pod_name)".into(),
            });
        }
        let sysctls = crate::container::mounts::plan_sysctls(&req.sysctls).map_err(|e| {
            SandboxError::Invalid {
                field: "sysctls",
                value: format!("{:?}", req.sysctls),
                reason: e.to_string(),
            }
        })?;
        dns::validate(&req.dns).map_err(|reason| SandboxError::Invalid {
            field: "dns",
            value: format!("{:?}", req.dns),
            reason,
        })?;
        let tmpfs = tmpfs_volumes::plan(&req.sandbox_id, &req.tmpfs_volumes)?;
        let pod_resources = if req.resources_json.is_empty() {
            None
        } else {
            let resources: oci_spec::runtime::LinuxResources =
                serde_json::from_slice(&req.resources_json).map_err(|e| SandboxError::Invalid {
                    field: "resources_json",
                    value: String::from_utf8_lossy(&req.resources_json).into_owned(),
                    reason: e.to_string(),
                })?;
            Some(resources)
        };
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
                resolv_conf: None,
                tmpfs_volumes: Vec::new(),
                oom_reported: HashMap::new(),
            }));
            registry.insert(req.sandbox_id.clone(), slot.clone());
            slot
        };
        let mut sandbox = lock(&slot);
        let spec = pause::PauseSpec {
            flags,
            hostname: hostname.into_bytes(),
            sysctls,
        };
        let made = self
            .start(&mut sandbox, &spec, &parent, &req.pod_uid)
            .and_then(|pid| {
                self.finish_pod(&mut sandbox, req, pod_resources.as_ref(), tmpfs)?;
                Ok(pid)
            });
        match made {
            Ok(pid) => Ok(pid),
            Err(e) => {
                // Whatever was made goes again; the id is free for a retry.
                let _ = self.teardown(&req.sandbox_id, &mut sandbox);
                self.registry().remove(&req.sandbox_id);
                Err(e)
            }
        }
    }

    fn start(
        &self,
        sandbox: &mut Sandbox,
        spec: &pause::PauseSpec,
        parent: &str,
        pod_uid: &str,
    ) -> Result<u32, SandboxError> {
        sandbox.pod_cgroup = pod_cgroup::create_pod(&self.cgroup_root, parent, pod_uid)?;
        let (helper, pause) = self
            .reaper
            .spawn_tracked(|| pause::spawn(spec))
            .map_err(|e| SandboxError::Pause(StepFailure::new("fork", e as i32)))?;
        sandbox.helper = helper;
        let pause = pause.map_err(SandboxError::Pause)?;
        sandbox.pause = pause;
        sandbox.pause_cgroup = Some(pod_cgroup::create_child(
            &sandbox.pod_cgroup,
            "pause",
            pause.as_raw() as u32,
        )?);
        Ok(pause.as_raw() as u32)
    }

    /// The pod-wide parts after pause: the pod cgroup's limits, the resolv.conf and the tmpfs
    /// volumes.
    fn finish_pod(
        &self,
        sandbox: &mut Sandbox,
        req: &CreateSandboxRequest,
        resources: Option<&oci_spec::runtime::LinuxResources>,
        tmpfs: Vec<tmpfs_volumes::TmpfsVolume>,
    ) -> Result<(), SandboxError> {
        if let Some(resources) = resources {
            crate::container::apply_resources(&sandbox.pod_cgroup, resources).map_err(|e| {
                SandboxError::Invalid {
                    field: "resources_json",
                    value: String::from_utf8_lossy(&req.resources_json).into_owned(),
                    reason: e.to_string(),
                }
            })?;
        }
        if let Some(text) = dns::resolv_conf(&req.dns) {
            let dir = PathBuf::from(BUNDLE_ROOT).join(&req.sandbox_id);
            let path = dir.join("resolv.conf");
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|source| SandboxError::Io {
                    what: "writing the pod's resolv.conf",
                    path: path.clone(),
                    source,
                })?;
            sandbox.resolv_conf = Some(path);
        }
        for volume in tmpfs {
            // Recorded first: teardown removes a mount point whose mount failed.
            sandbox.tmpfs_volumes.push(volume.clone());
            tmpfs_volumes::mount(&volume)?;
        }
        Ok(())
    }

    /// Stops every container, kills pause, removes the cgroups, the tmpfs volumes and scratch.
    /// Safe to call on a half-made sandbox.
    fn teardown(&self, id: &str, sandbox: &mut Sandbox) -> Result<(), SandboxError> {
        let ids: Vec<String> = sandbox.containers.keys().cloned().collect();
        for container_id in ids {
            if let Some(mut c) = sandbox.containers.remove(&container_id) {
                self.stop_and_clean(&container_id, &mut c)?;
            }
            self.index().remove(&container_id);
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
            pod_cgroup::kill_all(&dir);
            pod_cgroup::remove(&dir)?;
        }
        if !sandbox.pod_cgroup.as_os_str().is_empty() {
            pod_cgroup::remove(&sandbox.pod_cgroup)?;
            sandbox.pod_cgroup = PathBuf::new();
        }
        // Every process that could use them is gone: nothing may keep them busy.
        while let Some(volume) = sandbox.tmpfs_volumes.last() {
            tmpfs_volumes::unmount(volume)?;
            sandbox.tmpfs_volumes.pop();
        }
        tmpfs_volumes::remove_sandbox_dir(id)?;
        let _ = std::fs::remove_dir_all(PathBuf::from(BUNDLE_ROOT).join(id));
        Ok(())
    }

    /// Kills every process of the sandbox and removes its cgroups and scratch. Unknown ids are
    /// fine (already destroyed).
    pub fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        let Ok(slot) = self.get(id) else {
            return Ok(());
        };
        let mut sandbox = lock(&slot);
        self.teardown(id, &mut sandbox)?;
        self.registry().remove(id);
        Ok(())
    }

    /// Namespace inodes of pause, every container and the guest root, and the cgroup tree.
    pub fn inspect(&self, id: &str) -> Result<InspectSandboxResponse, SandboxError> {
        let slot = self.get(id)?;
        let sandbox = lock(&slot);
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
            let mut entry = match c.running_pid() {
                Some(pid) => namespaces_of(id, pid.as_raw() as u32),
                None => ProcessNamespaces::new(),
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
