//! Container calls of [`Sandboxes`]: create, start (and restart), update, stats, list,
//! remove; and the launch of any container process (init or exec) into its cgroup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nutshell_protocol::agent::{CreateContainerRequest, ProcessEntry, StatsContainerResponse};

use super::{
    check_name, lock, pod_cgroup, SandboxError, Sandboxes, BUNDLE_ROOT, PAUSE_EXIT_TIMEOUT,
};
use crate::child_report::StepFailure;
use crate::container::launch::{self, LaunchPlan};
use crate::container::process::{self, ExitSlot, Process};
use crate::container::steps::{Step, STEP_NAMES};
use crate::container::{self, namespaces, Container, ContainerError, Status};
use crate::stdio::{self, ChildStdio, ProcessStdio};

/// What a failed step was working on, for the error message.
fn describe_failure(failure: &StepFailure, plan: &LaunchPlan) -> String {
    let errno = nix::errno::Errno::from_raw(failure.errno);
    let item = failure.item;
    let step = |s: Step| STEP_NAMES[s.index()] == failure.step;
    let subject = if step(Step::Execve) {
        Some(format!("{:?}", plan.process.program_name))
    } else if [
        Step::Mount,
        Step::Remount,
        Step::Propagation,
        Step::MountSource,
        Step::MountTarget,
    ]
    .into_iter()
    .any(step)
    {
        item.and_then(|i| plan.rootfs.as_ref()?.mounts.get(i))
            .map(|m| format!("{} ({})", m.destination, m.fstype.to_string_lossy()))
    } else if step(Step::Sysctl) {
        item.and_then(|i| plan.rootfs.as_ref()?.sysctls.get(i))
            .map(|(path, _)| path.to_string_lossy().into_owned())
    } else if step(Step::MaskedPath) {
        item.and_then(|i| plan.rootfs.as_ref()?.masked_paths.get(i))
            .map(|p| p.to_string_lossy().into_owned())
    } else if step(Step::ReadonlyPath) {
        item.and_then(|i| plan.rootfs.as_ref()?.readonly_paths.get(i))
            .map(|p| p.to_string_lossy().into_owned())
    } else if step(Step::Chdir) {
        Some(plan.process.cwd.to_string_lossy().into_owned())
    } else {
        item.map(|i| format!("entry {i}"))
    };
    match subject {
        Some(subject) => format!("{} of {subject} failed: {errno}", failure.step),
        None => format!("{} failed: {errno}", failure.step),
    }
}

impl Sandboxes {
    /// Forks `plan`'s helper, places it in `cgroup`, lets the process start and waits for its
    /// execve (or failure). The helper then leaves the cgroup (it only mirrors the exit).
    pub(super) fn launch(
        &self,
        id: &str,
        what: &'static str,
        plan: &LaunchPlan,
        cgroup: &Path,
        stdio: Arc<ProcessStdio>,
        child_stdio: ChildStdio,
    ) -> Result<Process, SandboxError> {
        let launch_error = |failure: String| SandboxError::Launch {
            id: id.into(),
            what,
            failure,
        };
        let (helper, pipes) = self
            .reaper
            .spawn_tracked(|| launch::spawn(plan))
            .map_err(|e| launch_error(format!("fork failed: {e}")))?;
        drop(child_stdio);
        let placed = std::fs::write(cgroup.join("cgroup.procs"), helper.as_raw().to_string())
            .map_err(|e| launch_error(format!("placing it in {}: {e}", cgroup.display())))
            .and_then(|()| {
                launch::release(&pipes).map_err(|e| launch_error(format!("release: {e}")))
            });
        let started = placed.and_then(|()| {
            launch::read_report(pipes).map_err(|f| launch_error(describe_failure(&f, plan)))
        });
        match started {
            Ok(pid) => {
                // The helper only mirrors the exit: out of the container's cgroup it does not
                // show in ListProcesses nor count against pids.max.
                let _ = std::fs::write(
                    self.cgroup_root.join("cgroup.procs"),
                    helper.as_raw().to_string(),
                );
                let exit = Arc::new(ExitSlot::default());
                process::watch_exit(
                    self.reaper.clone(),
                    helper,
                    cgroup.to_path_buf(),
                    exit.clone(),
                );
                Ok(Process {
                    helper,
                    pid,
                    exit,
                    stdio,
                })
            }
            Err(e) => {
                let _ = kill(helper, Signal::SIGKILL);
                let _ = self.reaper.wait_for(helper, PAUSE_EXIT_TIMEOUT);
                Err(e)
            }
        }
    }

    /// Registers a container and its stdio; nothing runs until [`Sandboxes::start_container`].
    pub fn create_container(&self, req: &CreateContainerRequest) -> Result<(), SandboxError> {
        check_name("container_id", &req.container_id)?;
        let id = req.container_id.clone();
        let container_error = |source| SandboxError::Container {
            id: id.clone(),
            source,
        };
        let mut spec = container::parse_spec(&req.oci_spec_json).map_err(container_error)?;
        container::check_process(&spec).map_err(container_error)?;
        let namespaces = namespaces::plan_namespaces(&spec).map_err(container_error)?;
        let rootfs = PathBuf::from(&req.rootfs);
        if !rootfs.is_dir() {
            return Err(container_error(ContainerError::MissingRootfs(rootfs)));
        }
        let slot = self.get(&req.sandbox_id)?;
        let mut sandbox = lock(&slot);
        if let Some(file) = &sandbox.resolv_conf {
            super::dns::add_mount(&mut spec, file);
        }
        super::tmpfs_volumes::prepare_bind_sources(&sandbox.tmpfs_volumes, &spec)?;
        {
            let mut index = self.index();
            if index.contains_key(&id) {
                return Err(SandboxError::ContainerExists(id));
            }
            index.insert(id.clone(), req.sandbox_id.clone());
        }
        let mut c = Container {
            spec,
            rootfs,
            bundle: PathBuf::from(BUNDLE_ROOT).join(&req.sandbox_id).join(&id),
            cgroup: None,
            stdin: req.stdin,
            namespaces,
            pending_stdio: None,
            init: None,
            execs: HashMap::new(),
        };
        if let Err(e) = self.prepare_stdio(&id, &mut c) {
            self.index().remove(&id);
            return Err(e);
        }
        sandbox.containers.insert(id, c);
        Ok(())
    }

    /// Makes the init's stdio for the next start, so its streams can attach before it.
    fn prepare_stdio(&self, id: &str, c: &mut Container) -> Result<(), SandboxError> {
        let (agent_side, child_side) =
            stdio::create(c.terminal(), c.stdin).map_err(|source| SandboxError::Stdio {
                id: id.into(),
                source,
            })?;
        self.stdio.register(id, "", agent_side);
        c.pending_stdio = Some(child_side);
        Ok(())
    }

    /// Starts (or starts again, after it exited) the container's init process.
    pub fn start_container(&self, id: &str) -> Result<u32, SandboxError> {
        let slot = self.sandbox_of(id)?;
        let mut sandbox = lock(&slot);
        let pause = sandbox.pause;
        let pod_cgroup = sandbox.pod_cgroup.clone();
        let container_error = |source| SandboxError::Container {
            id: id.into(),
            source,
        };
        let (join, unshare) = {
            let c = sandbox
                .containers
                .get(id)
                .ok_or_else(|| SandboxError::NoContainer(id.to_string()))?;
            if c.status() == Status::Running {
                return Err(SandboxError::WrongState {
                    id: id.into(),
                    state: "running",
                    wanted: "start needs a created or exited container",
                });
            }
            // A subPath the previous run removed is made again, as the kubelet does at each
            // start.
            super::tmpfs_volumes::prepare_bind_sources(&sandbox.tmpfs_volumes, &c.spec)?;
            let others = &sandbox.containers;
            container::resolve_namespaces(&c.namespaces, pause, |other| {
                others.get(other).and_then(Container::running_pid)
            })
            .map_err(container_error)?
        };
        let c = sandbox
            .containers
            .get_mut(id)
            .ok_or_else(|| SandboxError::NoContainer(id.to_string()))?;
        if c.pending_stdio.is_none() {
            self.prepare_stdio(id, c)?;
        }
        // A restart is a fresh container on the same rootfs: a new writable layer.
        let _ = std::fs::remove_dir_all(&c.bundle);
        let child_stdio = c.pending_stdio.take().expect("prepared above");
        let plan = container::plan_init(c, join, unshare, child_stdio.fds());
        let plan = match plan {
            Ok(plan) => plan,
            Err(source) => {
                c.pending_stdio = Some(child_stdio);
                return Err(container_error(source));
            }
        };
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
            container::apply_resources(&cgroup, resources).map_err(container_error)?;
        }
        let stdio = self
            .stdio
            .get(id, "")
            .ok_or_else(|| SandboxError::NoContainer(id.to_string()))?;
        let process = self.launch(id, "init process", &plan, &cgroup, stdio, child_stdio)?;
        let pid = process.pid.as_raw() as u32;
        c.init = Some(process);
        c.execs.clear();
        Ok(pid)
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
        let dir = self.cgroup_of(id)?;
        container::apply_resources(&dir, &resources).map_err(container_error)
    }

    /// The cgroup directory of a container that has been started.
    fn cgroup_of(&self, id: &str) -> Result<PathBuf, SandboxError> {
        let slot = self.sandbox_of(id)?;
        let sandbox = lock(&slot);
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
    pub fn stats_container(&self, id: &str) -> Result<StatsContainerResponse, SandboxError> {
        Ok(container::stats::read(&self.cgroup_of(id)?))
    }

    /// The processes in a container's cgroup.
    pub fn list_processes(&self, id: &str) -> Result<Vec<ProcessEntry>, SandboxError> {
        Ok(container::stats::processes(&self.cgroup_of(id)?))
    }

    /// Removes a container that is not running.
    pub fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        let slot = self.sandbox_of(id)?;
        let mut sandbox = lock(&slot);
        if let Some(Status::Running) = sandbox.containers.get(id).map(Container::status) {
            return Err(SandboxError::WrongState {
                id: id.into(),
                state: "running",
                wanted: "kill it before removing it",
            });
        }
        if let Some(mut c) = sandbox.containers.remove(id) {
            self.stop_and_clean(id, &mut c)?;
        }
        sandbox.oom_reported.remove(id);
        self.index().remove(id);
        Ok(())
    }

    /// Kills every process of a container, waits for them, removes its cgroup and scratch.
    pub(super) fn stop_and_clean(&self, id: &str, c: &mut Container) -> Result<(), SandboxError> {
        let processes: Vec<&Process> = c.init.iter().chain(c.execs.values()).collect();
        if let Some(dir) = &c.cgroup {
            pod_cgroup::kill_all(dir);
        }
        for p in &processes {
            if p.is_running() {
                let _ = kill(p.pid, Signal::SIGKILL);
            }
        }
        for p in processes {
            if p.exit.wait(PAUSE_EXIT_TIMEOUT).is_none() {
                return Err(SandboxError::WrongState {
                    id: id.into(),
                    state: "still running",
                    wanted: "a process did not die after SIGKILL",
                });
            }
        }
        if let Some(dir) = c.cgroup.take() {
            pod_cgroup::remove(&dir)?;
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.stdio.remove_container(id);
        Ok(())
    }
}
