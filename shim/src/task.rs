//! containerd's task API v2 (`containerd.task.v2.Task`) on top of [`Service`]: request in,
//! [`ShimError`] mapped to a ttrpc status out.

use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest,
    PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::api::ProcessInfo;
use containerd_shim::protos::cgroups_v2::metrics::Metrics;
use containerd_shim::protos::events::task::TaskExecAdded;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use nutshell_protocol::agent::{
    ListProcessesRequest, ResizeTtyRequest, StatsContainerRequest, UpdateContainerRequest,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{Result, ShimError};
use crate::pod::CALL;
use crate::process::Process;
use crate::service::Service;
use crate::spec::Role;
use crate::stats;
use crate::stdio::StdioPaths;

fn is_sandbox(role: &Role) -> bool {
    matches!(role, Role::Sandbox { .. })
}

impl Service {
    fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let (status, exit) = p.status();
        Ok(StateResponse {
            id: p.event_id().to_string(),
            bundle: c.bundle.display().to_string(),
            pid: self.shim_pid(),
            status: status.task_status().into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if is_sandbox(&c.role) {
            return Err(ShimError::Unimplemented(
                "exec in a sandbox (pause) container".into(),
            ));
        }
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument(
                "an exec needs an exec id".into(),
            ));
        }
        let process_json = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| ShimError::InvalidArgument("exec without a process spec".into()))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {} of {} exists",
                    req.exec_id, req.id
                )));
            }
            let p = Process::new(&req.id, &req.exec_id, stdio, Some(process_json));
            execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        self.events().send(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let c = self.container(id)?;
        if is_sandbox(&c.role) {
            return Ok(vec![ProcessInfo {
                pid: self.shim_pid(),
                ..Default::default()
            }]);
        }
        let mut req = ListProcessesRequest::new();
        req.container_id = id.to_string();
        let list = self
            .pod()?
            .agent
            .list_processes(&req, CALL)
            .map_err(|e| ShimError::agent(format!("ListProcesses {id}"), e))?;
        Ok(list
            .processes
            .iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                ..Default::default()
            })
            .collect())
    }

    fn resize(&self, req: &ResizePtyRequest) -> Result<()> {
        self.process(&req.id, &req.exec_id)?;
        let mut resize = ResizeTtyRequest::new();
        resize.container_id = req.id.clone();
        resize.exec_id = req.exec_id.clone();
        resize.rows = req.height;
        resize.cols = req.width;
        self.pod()?
            .agent
            .resize_tty(&resize, CALL)
            .map_err(|e| ShimError::agent(format!("ResizeTty {}", req.id), e))?;
        Ok(())
    }

    fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if is_sandbox(&c.role) {
            // Pod-level limits are the guest's size, fixed at boot.
            return Ok(());
        }
        let Some(resources) = req.resources.as_ref() else {
            return Ok(());
        };
        let mut update = UpdateContainerRequest::new();
        update.container_id = req.id.clone();
        // containerd marshals the OCI LinuxResources as JSON in the Any.
        update.resources_json = resources.value.clone();
        self.pod()?
            .agent
            .update_container(&update, CALL)
            .map_err(|e| ShimError::agent(format!("UpdateContainer {}", req.id), e))?;
        Ok(())
    }

    fn stats(&self, id: &str) -> Result<StatsResponse> {
        let c = self.container(id)?;
        let metrics = if is_sandbox(&c.role) {
            Metrics::new()
        } else {
            let mut req = StatsContainerRequest::new();
            req.container_id = id.to_string();
            let answer = self
                .pod()?
                .agent
                .stats_container(&req, CALL)
                .map_err(|e| ShimError::agent(format!("StatsContainer {id}"), e))?;
            stats::metrics(&answer)
        };
        Ok(StatsResponse {
            stats: Some(stats::to_any(&metrics)).into(),
            ..Default::default()
        })
    }
}

fn unimplemented(what: &str) -> TtrpcResult<Empty> {
    Err(ShimError::Unimplemented(format!("{what} is not supported by nutshell")).into())
}

impl Task for Service {
    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(Service::state(self, &req)?)
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = Service::create(self, &req)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = Service::start(self, &req.id, &req.exec_id)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(Service::delete(self, &req.id, &req.exec_id)?)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(PidsResponse {
            processes: Service::pids(self, &req.id)?,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> TtrpcResult<Empty> {
        unimplemented("pause")
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> TtrpcResult<Empty> {
        unimplemented("resume")
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        unimplemented("checkpoint")
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        Service::kill(self, &req.id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        Service::exec(self, &req)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.resize(&req)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            p.stdin_closed.store(true, Ordering::SeqCst);
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        Service::update(self, &req)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let exit = p.wait();
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(Service::stats(self, &req.id)?)
    }

    fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: self.shim_pid(),
            task_pid: self.shim_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        Service::shutdown(self);
        Ok(Empty::new())
    }
}
