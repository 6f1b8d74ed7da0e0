//! The task service's state and the container lifecycle: Create (boots the pod's VM for the
//! first container), Start (with stdio attached and a waiter per process), Kill, Delete (takes
//! the VM down with the pod's owner), and the VM's unexpected end.
//!
//! Task pids: every task reports this shim's pid, as Kata's shim does. A container's processes
//! live in the guest, where host pids mean nothing, and CRI builds an app container's
//! namespace paths from its sandbox task's pid: they all name this shim, and
//! [`crate::spec::guest_spec`] turns them into the pod's namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containerd_shim::api::{CreateTaskRequest, DeleteResponse};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::ExitSignal;
use nutshell_protocol::agent::{
    CreateContainerRequest, ExecProcessRequest, GetOomEventRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, WaitProcessRequest,
};
use nutshell_runtime::host_mounts;
use nutshell_runtime::pod_dirs::PodDirs;
use oci_spec::runtime::Spec;

use crate::config::ShimConfig;
use crate::error::{Result, ShimError};
use crate::events::Events;
use crate::mounts;
use crate::pod::{self, PodVm, CALL};
use crate::process::{Container, Exit, Process, Status};
use crate::spec::{self, Role};
use crate::stdio::{Attached, StdioPaths};

/// Longest WaitProcess call; a process may run for days, the call is simply made again.
const WAIT_CALL: Duration = Duration::from_secs(24 * 3600);
/// Exit status of a process lost with its VM, or deleted before it started (128 + SIGKILL).
pub const KILLED: u32 = 137;

/// The task service: cheap to clone, shared by the ttrpc handlers and the waiter threads.
#[derive(Clone)]
pub struct Service {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub namespace: String,
    pub shim_pid: u32,
    pub events: Events,
    pub exit: Arc<ExitSignal>,
    /// Creates one at a time: the first boots the VM the others need.
    create_lock: Mutex<()>,
    pod: Mutex<Option<Arc<PodVm>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Service {
    pub fn new(namespace: &str, events: Events, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                shim_pid: std::process::id(),
                events,
                exit,
                create_lock: Mutex::new(()),
                pod: Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn shim_pid(&self) -> u32 {
        self.inner.shim_pid
    }

    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let p = c
            .process(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of {id} not found")))?;
        Ok((c, p))
    }

    pub fn pod(&self) -> Result<Arc<PodVm>> {
        lock(&self.inner.pod)
            .clone()
            .ok_or_else(|| ShimError::NotFound("this shim runs no pod".into()))
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.inner.containers).is_empty()
    }

    /// Records `p`'s exit and announces it (TaskOOM first when the OOM killer ended it and
    /// the OOM watcher has not announced it yet): queued before any waiter wakes, so TaskExit
    /// precedes the TaskDelete a waiter's client causes.
    pub fn finish(&self, p: &Process, exit: Exit, oom_killed: bool) {
        let events = &self.inner.events;
        let pid = self.inner.shim_pid;
        p.set_exited(exit, |oom_announced| {
            if oom_killed && !oom_announced {
                events.send(TaskOOM {
                    container_id: p.container_id.clone(),
                    ..Default::default()
                });
            }
            events.send(TaskExit {
                container_id: p.container_id.clone(),
                id: p.event_id().to_string(),
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            });
        });
    }

    pub fn create(&self, req: &CreateTaskRequest) -> Result<u32> {
        let _one_at_a_time = lock(&self.inner.create_lock);
        let id = req.id.clone();
        if lock(&self.inner.containers).contains_key(&id) {
            return Err(ShimError::AlreadyExists(format!("container {id} exists")));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::load(&bundle)?;
        let role = Role::of(&spec, &id);
        log::info!("create {id} ({role:?})");
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let bundle_rootfs = bundle.join("rootfs");
        mounts::mount_rootfs(&req.rootfs, &bundle_rootfs)?;
        let rootfs_mounted = !req.rootfs.is_empty();
        if let Err(e) = self.create_in_pod(req, &spec, &role, &bundle_rootfs) {
            if rootfs_mounted {
                let _ = host_mounts::unmount_all_below(&bundle_rootfs);
            }
            return Err(e);
        }
        let container = Arc::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            role,
            rootfs_mounted,
            init: Arc::new(Process::new(&id, "", stdio, None)),
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.inner.containers).insert(id.clone(), container);
        self.inner.events.send(TaskCreate {
            container_id: id,
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            checkpoint: req.checkpoint.clone(),
            pid: self.inner.shim_pid,
            ..Default::default()
        });
        Ok(self.inner.shim_pid)
    }

    /// The pod side of Create: the VM for the pod's owner, the container in the agent for
    /// everyone else. Undoes what it did on failure.
    fn create_in_pod(
        &self,
        req: &CreateTaskRequest,
        spec: &Spec,
        role: &Role,
        bundle_rootfs: &Path,
    ) -> Result<()> {
        let id = req.id.as_str();
        let booted = if role.owns_pod() {
            if let Ok(pod) = self.pod() {
                return Err(ShimError::AlreadyExists(format!(
                    "this shim already runs pod {}",
                    pod.sandbox_id
                )));
            }
            let config = ShimConfig::load(req.options.as_ref())?;
            let weak = Arc::downgrade(&self.inner);
            let on_exit = Box::new(move |status: ExitStatus| {
                if let Some(inner) = weak.upgrade() {
                    Service { inner }.vm_exited(status);
                }
            });
            let pod = PodVm::boot(
                &config,
                &self.inner.namespace,
                role.pod_id(id),
                spec,
                on_exit,
            )?;
            let pod = Arc::new(pod);
            self.spawn_oom_watcher(&pod);
            *lock(&self.inner.pod) = Some(pod);
            true
        } else {
            false
        };
        let pod = self.pod()?;
        let result = self.create_container(req, spec, role, bundle_rootfs, &pod);
        if result.is_err() && booted {
            *lock(&self.inner.pod) = None;
            for p in pod.teardown() {
                log::warn!("pod {}: {p}", pod.sandbox_id);
            }
        }
        result
    }

    fn create_container(
        &self,
        req: &CreateTaskRequest,
        spec: &Spec,
        role: &Role,
        bundle_rootfs: &Path,
        pod: &PodVm,
    ) -> Result<()> {
        let id = req.id.as_str();
        if role.pod_id(id) != pod.sandbox_id {
            return Err(ShimError::NotFound(format!(
                "sandbox {} is not in this shim (it runs {})",
                role.pod_id(id),
                pod.sandbox_id
            )));
        }
        pod::link_bundle(Path::new(&req.bundle), &pod.dirs)?;
        if matches!(role, Role::Sandbox { .. }) {
            // pause is the agent's sandbox, made at boot.
            return Ok(());
        }
        let guest_rootfs = PodDirs::guest_rootfs(id);
        let result = (|| {
            let guest = spec::guest_spec(spec, id, role, &guest_rootfs)?;
            mounts::provide(&pod.dirs, id, bundle_rootfs, &guest.binds)?;
            let mut create = CreateContainerRequest::new();
            create.sandbox_id = pod.sandbox_id.clone();
            create.container_id = id.to_string();
            create.oci_spec_json = serde_json::to_vec(&guest.spec)
                .map_err(|e| ShimError::Other(format!("spec of {id}: {e}")))?;
            create.rootfs = guest_rootfs.clone();
            create.stdin = !req.stdin.is_empty();
            pod.agent
                .create_container(&create, CALL)
                .map_err(|e| ShimError::agent(format!("CreateContainer {id}"), e))?;
            Ok(())
        })();
        if result.is_err() {
            for p in mounts::release(&pod.dirs, id, None) {
                log::warn!("container {id}: {p}");
            }
        }
        result
    }

    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (c, p) = self.process(id, exec_id)?;
        let (status, _) = p.status();
        if status != Status::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "{}/{exec_id} is {status:?}, not created",
                c.id
            )));
        }
        let pid = self.inner.shim_pid;
        if matches!(c.role, Role::Sandbox { .. }) && exec_id.is_empty() {
            p.set_running();
            self.send_started(&p);
            return Ok(pid);
        }
        let pod = self.pod()?;
        if exec_id.is_empty() {
            let mut req = StartContainerRequest::new();
            req.container_id = c.id.clone();
            pod.agent
                .start_container(&req, CALL)
                .map_err(|e| ShimError::agent(format!("StartContainer {id}"), e))?;
        } else {
            let mut req = ExecProcessRequest::new();
            req.container_id = c.id.clone();
            req.exec_id = exec_id.to_string();
            req.process_json = p.exec_spec.clone().unwrap_or_default();
            req.stdin = !p.stdio.stdin.is_empty();
            pod.agent
                .exec_process(&req, CALL)
                .map_err(|e| ShimError::agent(format!("ExecProcess {id}/{exec_id}"), e))?;
        }
        // Output is held in the guest until its stream attaches: attaching now loses nothing.
        let attached = Attached::attach(
            &pod.dirs.vsock(),
            &c.id,
            exec_id,
            &p.stdio,
            p.stdin_closed.clone(),
        );
        let (attached, failure) = match attached {
            Ok(a) => (Some(a), None),
            Err(e) => {
                let _ = pod.agent.signal_process(&signal(&p, 9, false), CALL);
                (None, Some(e))
            }
        };
        p.set_running();
        self.send_started(&p);
        self.spawn_waiter(pod, p, attached);
        match failure {
            Some(e) => Err(e),
            None => Ok(pid),
        }
    }

    fn send_started(&self, p: &Process) {
        let pid = self.inner.shim_pid;
        if p.exec_id.is_empty() {
            self.inner.events.send(TaskStart {
                container_id: p.container_id.clone(),
                pid,
                ..Default::default()
            });
        } else {
            self.inner.events.send(TaskExecStarted {
                container_id: p.container_id.clone(),
                exec_id: p.exec_id.clone(),
                pid,
                ..Default::default()
            });
        }
    }

    /// A thread that long-polls the agent's OOM kills in the pod (`GetOomEvent`) and publishes
    /// TaskOOM for each, as runc's shim does from memory.events: an OOM kill of any process of
    /// a running container. It ends with the VM (or this service).
    fn spawn_oom_watcher(&self, pod: &Arc<PodVm>) {
        let (weak, pod) = (Arc::downgrade(&self.inner), pod.clone());
        std::thread::spawn(move || {
            let mut req = GetOomEventRequest::new();
            req.sandbox_id = pod.sandbox_id.clone();
            loop {
                let began = Instant::now();
                let event = match pod.agent.get_oom_event(&req, WAIT_CALL) {
                    Ok(event) => event,
                    Err(_) if began.elapsed() >= WAIT_CALL => continue,
                    Err(e) => {
                        log::info!("OOM watcher ends: {}", ShimError::agent("GetOomEvent", e));
                        return;
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                let container = lock(&inner.containers).get(&event.container_id).cloned();
                let Some(container) = container else { continue };
                let events = &inner.events;
                container.init.announce_oom(|| {
                    events.send(TaskOOM {
                        container_id: container.id.clone(),
                        ..Default::default()
                    })
                });
            }
        });
    }

    /// A thread that waits for `p` in the guest, lets its output drain, then reports the exit.
    fn spawn_waiter(&self, pod: Arc<PodVm>, p: Arc<Process>, attached: Option<Attached>) {
        let service = self.clone();
        std::thread::spawn(move || {
            let mut req = WaitProcessRequest::new();
            req.container_id = p.container_id.clone();
            req.exec_id = p.exec_id.clone();
            let (status, oom_killed) = loop {
                let began = Instant::now();
                match pod.agent.wait_process(&req, WAIT_CALL) {
                    Ok(exit) => break (exit.exit_code as u32, exit.oom_killed),
                    Err(_) if began.elapsed() >= WAIT_CALL => continue,
                    Err(e) => {
                        log::warn!(
                            "waiting for {}/{}: {}",
                            p.container_id,
                            p.exec_id,
                            ShimError::agent("WaitProcess", e)
                        );
                        break (KILLED, false);
                    }
                }
            };
            if let Some(attached) = attached {
                attached.finish();
            }
            service.finish(&p, Exit::now(status), oom_killed);
        });
    }

    pub fn kill(&self, id: &str, exec_id: &str, sig: u32, all: bool) -> Result<()> {
        let (c, p) = self.process(id, exec_id)?;
        let (status, _) = p.status();
        let finished = || ShimError::NotFound(format!("{id}/{exec_id}: process already finished"));
        if matches!(c.role, Role::Sandbox { .. }) && exec_id.is_empty() {
            // pause: the agent's sandbox lives until the sandbox task is deleted.
            if status == Status::Stopped {
                return Err(finished());
            }
            self.finish(&p, Exit::now(128 + sig), false);
            return Ok(());
        }
        match status {
            Status::Stopped if !all => return Err(finished()),
            Status::Created => {
                self.finish(&p, Exit::now(128 + sig), false);
                return Ok(());
            }
            _ => {}
        }
        let pod = self.pod()?;
        match pod.agent.signal_process(&signal(&p, sig, all), CALL) {
            Ok(_) => Ok(()),
            Err(e) => match ShimError::agent(format!("SignalProcess {id}/{exec_id}"), e) {
                ShimError::Agent {
                    code: Some(containerd_shim::protos::ttrpc::Code::NOT_FOUND),
                    ..
                } => Err(finished()),
                _ if status == Status::Stopped => Ok(()),
                other => Err(other),
            },
        }
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let c = self.container(id)?;
        let p = c
            .process(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of {id} not found")))?;
        if p.status().0 == Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "{id}/{exec_id} is running: kill it first"
            )));
        }
        // Never started: nothing ran, so there is no exit to announce; waiters are released.
        p.set_exited(Exit::now(KILLED), |_| {});
        let exit = p.wait();
        let response = DeleteResponse {
            pid: self.inner.shim_pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        };
        if !exec_id.is_empty() {
            lock(&c.execs).remove(exec_id);
            return Ok(response);
        }
        log::info!("delete {id}");
        let pod = lock(&self.inner.pod).clone();
        let bundle_rootfs = c.bundle.join("rootfs");
        let bundle_rootfs = c.rootfs_mounted.then_some(bundle_rootfs.as_path());
        match &pod {
            Some(pod) => {
                if !matches!(c.role, Role::Sandbox { .. }) && pod.vmm_status().is_none() {
                    let mut req = RemoveContainerRequest::new();
                    req.container_id = id.to_string();
                    if let Err(e) = pod.agent.remove_container(&req, CALL) {
                        log::warn!("{}", ShimError::agent(format!("RemoveContainer {id}"), e));
                    }
                }
                for problem in mounts::release(&pod.dirs, id, bundle_rootfs) {
                    log::warn!("container {id}: {problem}");
                }
            }
            None => {
                if let Some(rootfs) = bundle_rootfs {
                    let _ = host_mounts::unmount_all_below(rootfs);
                }
            }
        }
        lock(&self.inner.containers).remove(id);
        if c.role.owns_pod() {
            if let Some(pod) = lock(&self.inner.pod).take() {
                for problem in pod.teardown() {
                    log::warn!("pod {}: {problem}", pod.sandbox_id);
                }
            }
        }
        self.inner.events.send(TaskDelete {
            container_id: id.to_string(),
            id: id.to_string(),
            pid: response.pid,
            exit_status: response.exit_status,
            exited_at: response.exited_at.clone(),
            ..Default::default()
        });
        Ok(response)
    }

    /// The VMM ended: processes its waiters do not cover (created ones, and pause) exit too.
    /// Running ones exit through their waiters, whose WaitProcess fails with the socket.
    fn vm_exited(&self, status: ExitStatus) {
        log::info!("the VMM exited: {status}");
        let containers: Vec<Arc<Container>> =
            lock(&self.inner.containers).values().cloned().collect();
        for c in containers {
            for p in c.processes() {
                let (st, _) = p.status();
                let pause = matches!(c.role, Role::Sandbox { .. }) && p.exec_id.is_empty();
                if st == Status::Created || (pause && st == Status::Running) {
                    self.finish(&p, Exit::now(KILLED), false);
                }
            }
        }
    }

    /// Shutdown: the shim exits once it holds no container.
    pub fn shutdown(&self) {
        if !self.is_empty() {
            return;
        }
        if let Some(pod) = lock(&self.inner.pod).take() {
            for problem in pod.teardown() {
                log::warn!("pod {}: {problem}", pod.sandbox_id);
            }
        }
        self.inner.exit.signal();
    }
}

fn signal(p: &Process, sig: u32, all: bool) -> SignalProcessRequest {
    let mut req = SignalProcessRequest::new();
    req.container_id = p.container_id.clone();
    req.exec_id = p.exec_id.clone();
    req.signal = sig;
    req.all = all;
    req
}
