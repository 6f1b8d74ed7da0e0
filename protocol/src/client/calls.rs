//! Typed wrappers of the sandbox, container and process calls, and the
//! stdio stream attach helper.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use protobuf::Message;

use super::{call_context, hybrid_vsock_handshake, AgentClient, ClientError};
use crate::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateContainerResponse, CreateSandboxRequest,
    CreateSandboxResponse, DestroySandboxRequest, Empty, ExecProcessRequest, ExecProcessResponse,
    GetOomEventRequest, InspectSandboxRequest, InspectSandboxResponse, ListProcessesRequest,
    ListProcessesResponse, OomEvent, RemoveContainerRequest, ResizeTtyRequest,
    SignalProcessRequest, StartContainerRequest, StartContainerResponse, StatsContainerRequest,
    StatsContainerResponse, StdioAttach, StdioStream, UpdateContainerRequest, WaitProcessRequest,
    WaitProcessResponse,
};
use crate::{StdioAttachStatus, STDIO_VSOCK_PORT};

/// Largest StdioAttach message accepted by [`encode_stdio_attach`]'s peers.
pub const MAX_STDIO_ATTACH_LEN: usize = 64 * 1024;

macro_rules! typed_call {
    ($(#[$doc:meta])* $name:ident, $method:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        pub fn $name(&self, req: &$req, timeout: Duration) -> Result<$resp, ClientError> {
            self.stub
                .$name(call_context(timeout), req)
                .map_err(|source| ClientError::Call { method: $method, source })
        }
    };
}

impl AgentClient {
    typed_call!(
        /// Starts the pause process and the pod's namespaces and cgroup.
        create_sandbox, "CreateSandbox", CreateSandboxRequest => CreateSandboxResponse);
    typed_call!(
        /// Kills everything of the sandbox and removes its cgroups and mounts.
        destroy_sandbox, "DestroySandbox", DestroySandboxRequest => Empty);
    typed_call!(
        /// Namespaces, cgroups and processes of a sandbox.
        inspect_sandbox, "InspectSandbox", InspectSandboxRequest => InspectSandboxResponse);
    typed_call!(
        /// Creates a container from an OCI runtime spec (JSON).
        create_container, "CreateContainer", CreateContainerRequest => CreateContainerResponse);
    typed_call!(
        /// Starts (or restarts) a created or exited container.
        start_container, "StartContainer", StartContainerRequest => StartContainerResponse);
    typed_call!(
        /// Removes a stopped container.
        remove_container, "RemoveContainer", RemoveContainerRequest => Empty);
    typed_call!(
        /// Applies OCI linux resources live.
        update_container, "UpdateContainer", UpdateContainerRequest => Empty);
    typed_call!(
        /// cgroup v2 figures of a container.
        stats_container, "StatsContainer", StatsContainerRequest => StatsContainerResponse);
    typed_call!(
        /// Processes of a container's cgroup.
        list_processes, "ListProcesses", ListProcessesRequest => ListProcessesResponse);
    typed_call!(
        /// Runs a process in every namespace and the cgroup of a container.
        exec_process, "ExecProcess", ExecProcessRequest => ExecProcessResponse);
    typed_call!(
        /// Sends a signal to a process (or all of a container's).
        signal_process, "SignalProcess", SignalProcessRequest => Empty);
    typed_call!(
        /// Waits for a process to exit; `timeout` is the caller's patience.
        wait_process, "WaitProcess", WaitProcessRequest => WaitProcessResponse);
    typed_call!(
        /// Resizes a process's terminal.
        resize_tty, "ResizeTty", ResizeTtyRequest => Empty);
    typed_call!(
        /// Closes the stdin of a process (EOF for the process).
        close_stdin, "CloseStdin", CloseStdinRequest => Empty);
    typed_call!(
        /// Waits for the next OOM kill in a sandbox; `timeout` is the caller's patience.
        get_oom_event, "GetOomEvent", GetOomEventRequest => OomEvent);
}

/// Opens one stdio stream of a process: hybrid vsock handshake to
/// [`STDIO_VSOCK_PORT`] through `uds_path`, then the length-prefixed
/// [`StdioAttach`], then the agent's one-byte [`StdioAttachStatus`]. The returned stream
/// is wired to the process and carries raw bytes from then on.
pub fn attach_stdio(
    uds_path: &Path,
    container_id: &str,
    exec_id: &str,
    stream: StdioStream,
    timeout: Duration,
) -> Result<UnixStream, ClientError> {
    let mut sock = hybrid_vsock_handshake(uds_path, STDIO_VSOCK_PORT, timeout)?;
    write_stdio_attach(&mut sock, container_id, exec_id, stream)?;
    let refused = |reason: String| ClientError::StdioRefused {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
        stream,
        reason,
    };
    let mut status = [0u8; 1];
    sock.set_read_timeout(Some(timeout))
        .and_then(|()| sock.read_exact(&mut status))
        .and_then(|()| sock.set_read_timeout(None))
        .map_err(|e| refused(format!("no attach answer from the agent: {e}")))?;
    match StdioAttachStatus::from_byte(status[0]) {
        Some(StdioAttachStatus::Attached) => Ok(sock),
        Some(other) => Err(refused(other.describe().to_owned())),
        None => Err(refused(format!("unknown attach answer {}", status[0]))),
    }
}

/// Writes the u32 big-endian length and the [`StdioAttach`] message.
pub fn write_stdio_attach<W: Write>(
    out: &mut W,
    container_id: &str,
    exec_id: &str,
    stream: StdioStream,
) -> Result<(), ClientError> {
    let frame = encode_stdio_attach(container_id, exec_id, stream)?;
    out.write_all(&frame).map_err(ClientError::StdioAttach)
}

/// The attach frame: u32 big-endian length, then the protobuf bytes.
pub fn encode_stdio_attach(
    container_id: &str,
    exec_id: &str,
    stream: StdioStream,
) -> Result<Vec<u8>, ClientError> {
    let mut msg = StdioAttach::new();
    msg.container_id = container_id.to_owned();
    msg.exec_id = exec_id.to_owned();
    msg.stream = stream.into();
    let body = msg
        .write_to_bytes()
        .map_err(|e| ClientError::StdioAttach(std::io::Error::other(e)))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l as usize <= MAX_STDIO_ATTACH_LEN)
        .ok_or_else(|| {
            ClientError::StdioAttach(std::io::Error::other(format!(
                "StdioAttach of {} bytes is too long",
                body.len()
            )))
        })?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}
