//! Process calls of [`Sandboxes`]: exec, wait, signal, terminal resize, stdin close, and the
//! OOM event long poll. A process is a container's init (exec id "") or one of its execs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nutshell_protocol::agent::ExecProcessRequest;

use super::{check_name, lock, pod_cgroup, Sandbox, SandboxError, Sandboxes};
use crate::container::process::{oom_kill_count, ExitInfo, ExitSlot};
use crate::container::{self, Container, Status};
use crate::stdio::{self, ProcessStdio};

/// How often GetOomEvent looks at the containers' memory.events.
const OOM_POLL_INTERVAL: Duration = Duration::from_millis(50);

fn process_of<'a>(
    c: &'a Container,
    id: &str,
    exec_id: &str,
) -> Result<&'a container::process::Process, SandboxError> {
    let process = if exec_id.is_empty() {
        c.init.as_ref()
    } else {
        c.execs.get(exec_id)
    };
    process.ok_or_else(|| {
        if exec_id.is_empty() {
            SandboxError::WrongState {
                id: id.into(),
                state: "created",
                wanted: "it has not been started",
            }
        } else {
            SandboxError::NoExec {
                id: id.into(),
                exec_id: exec_id.into(),
            }
        }
    })
}

fn container_of<'a>(sandbox: &'a Sandbox, id: &str) -> Result<&'a Container, SandboxError> {
    sandbox
        .containers
        .get(id)
        .ok_or_else(|| SandboxError::NoContainer(id.into()))
}

impl Sandboxes {
    /// The exit slot, pid and stdio of a process.
    fn process_handles(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<ExitSlot>, Pid, Arc<ProcessStdio>), SandboxError> {
        let slot = self.sandbox_of(id)?;
        let sandbox = lock(&slot);
        let p = process_of(container_of(&sandbox, id)?, id, exec_id)?;
        Ok((p.exit.clone(), p.pid, p.stdio.clone()))
    }

    /// Starts a process that joins every namespace and the cgroup of a running container.
    pub fn exec_process(&self, req: &ExecProcessRequest) -> Result<u32, SandboxError> {
        let id = req.container_id.as_str();
        check_name("exec_id", &req.exec_id)?;
        let slot = self.sandbox_of(id)?;
        let mut sandbox = lock(&slot);
        let c = sandbox
            .containers
            .get_mut(id)
            .ok_or_else(|| SandboxError::NoContainer(id.into()))?;
        let (Some(init), Some(cgroup)) = (c.running_pid(), c.cgroup.clone()) else {
            return Err(SandboxError::WrongState {
                id: id.into(),
                state: c.status().name(),
                wanted: "exec needs a running container",
            });
        };
        if c.execs.contains_key(&req.exec_id) {
            return Err(SandboxError::ExecExists {
                id: id.into(),
                exec_id: req.exec_id.clone(),
            });
        }
        let container_error = |source| SandboxError::Container {
            id: id.into(),
            source,
        };
        let terminal = serde_json::from_slice::<oci_spec::runtime::Process>(&req.process_json)
            .ok()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let (agent_side, child_side) =
            stdio::create(terminal, req.stdin).map_err(|source| SandboxError::Stdio {
                id: id.into(),
                source,
            })?;
        let plan = container::plan_exec(&c.spec, init, &req.process_json, child_side.fds())
            .map_err(container_error)?;
        self.stdio.register(id, &req.exec_id, agent_side.clone());
        let process = self.launch(id, "exec", &plan, &cgroup, agent_side, child_side);
        match process {
            Ok(process) => {
                let pid = process.pid.as_raw() as u32;
                c.execs.insert(req.exec_id.clone(), process);
                Ok(pid)
            }
            Err(e) => {
                self.stdio.remove_process(id, &req.exec_id);
                Err(e)
            }
        }
    }

    /// Blocks (up to `limit`) until the process exits; how it ended.
    pub fn wait_process(
        &self,
        id: &str,
        exec_id: &str,
        limit: Duration,
    ) -> Result<ExitInfo, SandboxError> {
        let (exit, _, _) = self.process_handles(id, exec_id)?;
        // Without the sandbox lock: other calls go on while this one waits.
        exit.wait(limit).ok_or(SandboxError::Timeout {
            what: "the process's exit",
            waited: limit,
        })
    }

    /// Sends `signal` to a process (with `all`, to every process of the container).
    pub fn signal_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), SandboxError> {
        let signal = Signal::try_from(signal).map_err(|_| SandboxError::Invalid {
            field: "signal",
            value: signal.to_string(),
            reason: "not a signal number".into(),
        })?;
        let slot = self.sandbox_of(id)?;
        let sandbox = lock(&slot);
        let c = container_of(&sandbox, id)?;
        let p = process_of(c, id, exec_id)?;
        if !p.is_running() {
            return Err(SandboxError::WrongState {
                id: id.into(),
                state: if exec_id.is_empty() {
                    Status::Stopped.name()
                } else {
                    "exited (that exec)"
                },
                wanted: "only a running process takes signals",
            });
        }
        let mut targets = vec![p.pid];
        if all {
            if let Some(dir) = &c.cgroup {
                targets.extend(pod_cgroup::pids(dir).into_iter().map(Pid::from_raw));
            }
        }
        for target in targets {
            let _ = kill(target, signal);
        }
        Ok(())
    }

    /// ResizeTty: the window size of a terminal process.
    pub fn resize_tty(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), SandboxError> {
        let (_, _, stdio) = self.process_handles(id, exec_id)?;
        let dimension = |field, value: u32| {
            u16::try_from(value).map_err(|_| SandboxError::Invalid {
                field,
                value: value.to_string(),
                reason: "must fit 16 bits".into(),
            })
        };
        stdio
            .resize(dimension("rows", rows)?, dimension("cols", cols)?)
            .map_err(|source| SandboxError::Stdio {
                id: id.into(),
                source,
            })
    }

    /// CloseStdin: EOF on the process's stdin.
    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), SandboxError> {
        let (_, _, stdio) = self.process_handles(id, exec_id)?;
        stdio.close_stdin();
        Ok(())
    }

    /// Long poll: the id of the next container of sandbox `sandbox_id` with an OOM kill not
    /// reported yet, waiting up to `limit`.
    pub fn next_oom_event(
        &self,
        sandbox_id: &str,
        limit: Duration,
    ) -> Result<String, SandboxError> {
        let start = Instant::now();
        loop {
            let slot = self.get(sandbox_id)?;
            {
                let mut sandbox = lock(&slot);
                let counts: Vec<(String, u64)> = sandbox
                    .containers
                    .iter()
                    .filter_map(|(id, c)| Some((id.clone(), oom_kill_count(c.cgroup.as_ref()?))))
                    .collect();
                for (id, count) in counts {
                    let reported = sandbox.oom_reported.entry(id.clone()).or_insert(0);
                    if count > *reported {
                        *reported += 1;
                        return Ok(id);
                    }
                }
            }
            if start.elapsed() >= limit {
                return Err(SandboxError::Timeout {
                    what: "an OOM kill",
                    waited: limit,
                });
            }
            std::thread::sleep(OOM_POLL_INTERVAL);
        }
    }
}
