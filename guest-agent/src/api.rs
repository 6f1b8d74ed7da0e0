//! The `nutshell.agent.v1.Agent` service: protobuf in, protobuf out.
//!
//! Handlers stay thin: they call into the module owning the work (`probe`,
//! `sandbox`) and convert results and errors to protobuf and ttrpc statuses
//! ([`sandbox_status`] is the one place where errors get their codes).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use nutshell_protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateContainerResponse, CreateSandboxRequest,
    CreateSandboxResponse, DestroySandboxRequest, Empty, ExecProcessRequest, ExecProcessResponse,
    GetOomEventRequest, GuestDetailsRequest, GuestDetailsResponse, InspectSandboxRequest,
    InspectSandboxResponse, ListProcessesRequest, ListProcessesResponse, NamespaceProbe, OomEvent,
    RemoveContainerRequest, ResizeTtyRequest, ShutdownRequest, SignalProcessRequest,
    StartContainerRequest, StartContainerResponse, StatsContainerRequest, StatsContainerResponse,
    UpdateContainerRequest, VersionRequest, VersionResponse, WaitProcessRequest,
    WaitProcessResponse,
};
use nutshell_protocol::agent_ttrpc::Agent;
use nutshell_protocol::PROTOCOL_VERSION;
use ttrpc::{Code, TtrpcContext};

use crate::container::ContainerError;
use crate::probe::{self, GuestDetails, SystemPaths};
use crate::reaper::Reaper;
use crate::sandbox::{SandboxError, Sandboxes};
use crate::stdio::{StdioError, StdioHub};
use crate::AGENT_VERSION;

/// Receives the `Shutdown` request the service accepted.
pub struct ShutdownRequests {
    receiver: Receiver<()>,
}

impl ShutdownRequests {
    /// Blocks until the service accepted a `Shutdown` call. Its reply may
    /// still be queued: stop the server (which writes it) before powering off.
    pub fn wait(&self) {
        // Err means every sender is gone: no shutdown can come any more,
        // which only happens when the service was dropped; treat as a request.
        let _ = self.receiver.recv();
    }

    /// Like [`ShutdownRequests::wait`], with a limit; true if requested.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        self.receiver.recv_timeout(timeout).is_ok()
    }
}

/// Implementation of the `Agent` ttrpc service.
pub struct AgentService {
    reaper: Reaper,
    sandboxes: Sandboxes,
    stdio: Arc<StdioHub>,
    system_paths: SystemPaths,
    shutdown_sender: SyncSender<()>,
}

impl AgentService {
    pub fn new(reaper: Reaper, system_paths: SystemPaths) -> (AgentService, ShutdownRequests) {
        // One slot: a second Shutdown while the first is pending changes nothing.
        let (shutdown_sender, receiver) = sync_channel(1);
        let stdio = StdioHub::new();
        let sandboxes = Sandboxes::new(
            system_paths.sys_dir.join("fs/cgroup"),
            reaper.clone(),
            stdio.clone(),
        );
        let service = AgentService {
            sandboxes,
            stdio,
            reaper,
            system_paths,
            shutdown_sender,
        };
        (service, ShutdownRequests { receiver })
    }

    /// The stdio of every process, for the stdio stream server.
    pub fn stdio_hub(&self) -> Arc<StdioHub> {
        self.stdio.clone()
    }
}

/// How long a blocking call may take: the caller's deadline (less a margin for the reply), or
/// `default` when it gave none.
fn call_limit(ctx: &TtrpcContext, default: Duration) -> Duration {
    match u64::try_from(ctx.timeout_nano) {
        Ok(nanos) if nanos > 0 => {
            Duration::from_nanos(nanos).saturating_sub(Duration::from_millis(200))
        }
        _ => default,
    }
}

/// Longest WaitProcess / GetOomEvent wait for a caller without a deadline.
const UNBOUNDED_WAIT: Duration = Duration::from_secs(24 * 3600);

/// ttrpc status carrying `err` and all its causes: "a: b: c".
fn rpc_error(code: Code, err: &dyn std::error::Error) -> ttrpc::Error {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        message.push_str(": ");
        message.push_str(&source.to_string());
        cause = source.source();
    }
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// The ttrpc status for a sandbox error: the one place where they are mapped.
fn sandbox_status(err: &SandboxError) -> ttrpc::Error {
    let code = match err {
        SandboxError::Invalid { .. } => Code::INVALID_ARGUMENT,
        SandboxError::Container { source, .. } => match source {
            ContainerError::Spec(_)
            | ContainerError::MissingRootfs(_)
            | ContainerError::NoProgram(_)
            | ContainerError::Unsupported(_) => Code::INVALID_ARGUMENT,
            ContainerError::TargetNotRunning(_) => Code::FAILED_PRECONDITION,
            ContainerError::Open { .. } => Code::INTERNAL,
        },
        SandboxError::AlreadyExists(_)
        | SandboxError::ContainerExists(_)
        | SandboxError::ExecExists { .. } => Code::ALREADY_EXISTS,
        SandboxError::NotFound(_) | SandboxError::NoContainer(_) | SandboxError::NoExec { .. } => {
            Code::NOT_FOUND
        }
        SandboxError::WrongState { .. } => Code::FAILED_PRECONDITION,
        SandboxError::Stdio { source, .. } => match source {
            StdioError::NotATerminal => Code::FAILED_PRECONDITION,
            _ => Code::INTERNAL,
        },
        SandboxError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
        SandboxError::Launch { .. }
        | SandboxError::Io { .. }
        | SandboxError::Volume { .. }
        | SandboxError::Pause(_)
        | SandboxError::PauseStuck { .. } => Code::INTERNAL,
    };
    rpc_error(code, err)
}

fn guest_details_to_proto(details: GuestDetails) -> GuestDetailsResponse {
    let mut response = GuestDetailsResponse::new();
    response.online_cpus = details.online_cpus;
    response.mem_total_kib = details.mem_total_kib;
    response.cgroup_controllers = details.cgroup_controllers;
    response.cgroup_subtree_control = details.cgroup_subtree_control;
    response.namespaces = details
        .namespaces
        .into_iter()
        .map(|support| {
            let mut probe = NamespaceProbe::new();
            probe.kind = support.kind.to_owned();
            match support.outcome {
                Ok(()) => probe.unshare_ok = true,
                Err(error) => probe.error = error,
            }
            probe
        })
        .collect();
    response
}

impl Agent for AgentService {
    fn version(&self, _ctx: &TtrpcContext, _req: VersionRequest) -> ttrpc::Result<VersionResponse> {
        let mut response = VersionResponse::new();
        response.agent_version = AGENT_VERSION.to_owned();
        response.protocol_version = PROTOCOL_VERSION;
        response.kernel_release = probe::kernel_release();
        Ok(response)
    }

    fn guest_details(
        &self,
        _ctx: &TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        probe::collect_guest_details(&self.system_paths, &self.reaper)
            .map(guest_details_to_proto)
            .map_err(|err| rpc_error(Code::INTERNAL, &err))
    }

    fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<CreateSandboxResponse> {
        let pause_pid = self
            .sandboxes
            .create(&req)
            .map_err(|e| sandbox_status(&e))?;
        let mut response = CreateSandboxResponse::new();
        response.pause_pid = pause_pid;
        Ok(response)
    }

    fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandboxes
            .destroy(&req.sandbox_id)
            .map_err(|e| sandbox_status(&e))?;
        Ok(Empty::new())
    }

    fn inspect_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: InspectSandboxRequest,
    ) -> ttrpc::Result<InspectSandboxResponse> {
        self.sandboxes
            .inspect(&req.sandbox_id)
            .map_err(|e| sandbox_status(&e))
    }

    fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.sandboxes
            .create_container(&req)
            .map_err(|e| sandbox_status(&e))?;
        Ok(CreateContainerResponse::new())
    }

    fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let pid = self
            .sandboxes
            .start_container(&req.container_id)
            .map_err(|e| sandbox_status(&e))?;
        let mut response = StartContainerResponse::new();
        response.pid = pid;
        Ok(response)
    }

    fn wait_process(
        &self,
        ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let exit = self
            .sandboxes
            .wait_process(
                &req.container_id,
                &req.exec_id,
                call_limit(ctx, UNBOUNDED_WAIT),
            )
            .map_err(|e| sandbox_status(&e))?;
        let mut response = WaitProcessResponse::new();
        response.exit_code = exit.exit_code;
        response.signal = exit.signal;
        response.oom_killed = exit.oom_killed;
        response.exited_at_ns = exit.exited_at_ns;
        Ok(response)
    }

    fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let pid = self
            .sandboxes
            .exec_process(&req)
            .map_err(|e| sandbox_status(&e))?;
        let mut response = ExecProcessResponse::new();
        response.pid = pid;
        Ok(response)
    }

    fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        self.sandboxes
            .resize_tty(&req.container_id, &req.exec_id, req.rows, req.cols)
            .map_err(|e| sandbox_status(&e))?;
        Ok(Empty::new())
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.sandboxes
            .close_stdin(&req.container_id, &req.exec_id)
            .map_err(|e| sandbox_status(&e))?;
        Ok(Empty::new())
    }

    fn get_oom_event(
        &self,
        ctx: &TtrpcContext,
        req: GetOomEventRequest,
    ) -> ttrpc::Result<OomEvent> {
        let container_id = self
            .sandboxes
            .next_oom_event(&req.sandbox_id, call_limit(ctx, UNBOUNDED_WAIT))
            .map_err(|e| sandbox_status(&e))?;
        let mut event = OomEvent::new();
        event.container_id = container_id;
        Ok(event)
    }

    fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandboxes
            .signal_process(&req.container_id, &req.exec_id, req.signal as i32, req.all)
            .map_err(|e| sandbox_status(&e))?;
        Ok(Empty::new())
    }

    fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandboxes
            .update_container(&req.container_id, &req.resources_json)
            .map_err(|e| sandbox_status(&e))?;
        Ok(Empty::new())
    }

    fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.sandboxes
            .stats_container(&req.container_id)
            .map_err(|e| sandbox_status(&e))
    }

    fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        let mut response = ListProcessesResponse::new();
        response.processes = self
            .sandboxes
            .list_processes(&req.container_id)
            .map_err(|e| sandbox_status(&e))?;
        Ok(response)
    }

    fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.sandboxes
            .remove_container(&req.container_id)
            .map_err(|e| sandbox_status(&e))?;
        Ok(Empty::new())
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        // main() stops the server (which writes this reply out), then powers
        // off (see power.rs).
        // A full slot means a shutdown is already pending: nothing to add.
        let _ = self.shutdown_sender.try_send(());
        log::info!("shutdown requested");
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::NamespaceSupport;

    #[test]
    fn rpc_errors_carry_the_whole_cause_chain() {
        let err = crate::probe::ProbeError::Read {
            path: "/proc/meminfo".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let ttrpc::Error::RpcStatus(status) = rpc_error(Code::INTERNAL, &err) else {
            panic!("expected an RPC status");
        };
        assert_eq!(status.code(), Code::INTERNAL);
        assert_eq!(
            status.message(),
            "cannot read /proc/meminfo: entity not found"
        );
    }

    #[test]
    fn guest_details_convert_to_proto() {
        let details = GuestDetails {
            online_cpus: 2,
            mem_total_kib: 4096,
            cgroup_controllers: vec!["cpu".into(), "memory".into()],
            cgroup_subtree_control: vec!["cpu".into()],
            namespaces: vec![
                NamespaceSupport {
                    kind: "uts",
                    outcome: Ok(()),
                },
                NamespaceSupport {
                    kind: "time",
                    outcome: Err("unshare: EINVAL".into()),
                },
            ],
        };
        let proto = guest_details_to_proto(details);
        assert_eq!(proto.online_cpus, 2);
        assert_eq!(proto.mem_total_kib, 4096);
        assert_eq!(proto.cgroup_controllers, ["cpu", "memory"]);
        assert_eq!(proto.cgroup_subtree_control, ["cpu"]);
        assert_eq!(proto.namespaces.len(), 2);
        assert!(proto.namespaces[0].unshare_ok && proto.namespaces[0].error.is_empty());
        assert_eq!(proto.namespaces[1].kind, "time");
        assert!(!proto.namespaces[1].unshare_ok);
        assert_eq!(proto.namespaces[1].error, "unshare: EINVAL");
    }
}
