//! A pod seen from the host in the end-to-end tests: one sandbox of a booted guest, with its
//! container, exec and stdio calls as one-liners that panic with the call's error.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nutshell_protocol::agent::{
    CloseStdinRequest, CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest,
    ExecProcessRequest, InspectSandboxRequest, InspectSandboxResponse, NamespaceMode,
    NamespaceOptions, ProcessNamespaces, RemoveContainerRequest, ResizeTtyRequest,
    SignalProcessRequest, StartContainerRequest, StdioStream, WaitProcessRequest,
    WaitProcessResponse,
};
use nutshell_protocol::client::attach_stdio;
use nutshell_protocol::{AgentClient, ClientError};

use crate::oci::{exec_process_json, ContainerSpec};
use crate::pod_guest::TEST_IMAGE_ROOTFS;

/// Deadline of one agent call.
pub const CALL: Duration = Duration::from_secs(30);
/// Deadline of a WaitProcess (a container may run for a while).
const WAIT: Duration = Duration::from_secs(120);

/// One sandbox of the guest behind `agent`; `uds` is the VMM's hybrid vsock socket.
pub struct Pod<'a> {
    pub agent: &'a AgentClient,
    pub uds: PathBuf,
    pub id: String,
}

/// A process's collected output, once its streams closed.
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Output streams being read on threads of their own.
pub struct Collector {
    stdout: JoinHandle<Vec<u8>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Collector {
    /// Everything the process wrote, once the agent closed the streams.
    pub fn finish(self) -> Output {
        Output {
            stdout: self.stdout.join().expect("stdout reader"),
            stderr: self
                .stderr
                .map(|h| h.join().expect("stderr reader"))
                .unwrap_or_default(),
        }
    }
}

fn read_all(mut stream: UnixStream) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("read stdio stream");
        bytes
    })
}

impl<'a> Pod<'a> {
    /// Creates sandbox `id` (pod uid `uid-<id>`, hostname `hostname`) with `options`.
    pub fn create_sandbox(
        agent: &'a AgentClient,
        uds: PathBuf,
        id: &str,
        hostname: &str,
        options: NamespaceOptions,
    ) -> Pod<'a> {
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = id.into();
        req.pod_uid = format!("uid-{id}");
        req.hostname = hostname.into();
        req.namespace_options = Some(options).into();
        agent
            .create_sandbox(&req, CALL)
            .unwrap_or_else(|e| panic!("CreateSandbox {id}: {e}"));
        Pod {
            agent,
            uds,
            id: id.into(),
        }
    }

    /// Namespace options with the given pid mode and everything else POD.
    pub fn options(pid: NamespaceMode) -> NamespaceOptions {
        let mut options = NamespaceOptions::new();
        options.pid = pid.into();
        options
    }

    pub fn try_create(&self, id: &str, spec_json: Vec<u8>, stdin: bool) -> Result<(), ClientError> {
        self.try_create_with_rootfs(id, spec_json, TEST_IMAGE_ROOTFS, stdin)
    }

    /// Like [`Pod::try_create`], with the image rootfs at `rootfs` (a guest path).
    pub fn try_create_with_rootfs(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        rootfs: &str,
        stdin: bool,
    ) -> Result<(), ClientError> {
        let mut req = CreateContainerRequest::new();
        req.sandbox_id = self.id.clone();
        req.container_id = id.into();
        req.oci_spec_json = spec_json;
        req.rootfs = rootfs.into();
        req.stdin = stdin;
        self.agent.create_container(&req, CALL).map(|_| ())
    }

    /// Runs container `id` of `spec_json` with its image rootfs at `rootfs` (a guest path) to
    /// its end, then removes it: its exit and output.
    pub fn run_with_rootfs(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        rootfs: &str,
    ) -> (WaitProcessResponse, Output) {
        self.try_create_with_rootfs(id, spec_json, rootfs, false)
            .unwrap_or_else(|e| panic!("CreateContainer {id} (rootfs {rootfs}): {e}"));
        let output = self.collect(id, "", false);
        self.start(id);
        let exit = self.wait(id, "");
        let output = output.finish();
        self.remove(id);
        (exit, output)
    }

    pub fn create(&self, id: &str, spec: &ContainerSpec) {
        self.try_create(id, spec.json(), false)
            .unwrap_or_else(|e| panic!("CreateContainer {id}: {e}"));
    }

    pub fn try_start(&self, id: &str) -> Result<u32, ClientError> {
        let mut req = StartContainerRequest::new();
        req.container_id = id.into();
        self.agent.start_container(&req, CALL).map(|r| r.pid)
    }

    pub fn start(&self, id: &str) -> u32 {
        self.try_start(id)
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"))
    }

    /// WaitProcess of the init (`exec_id` "") or an exec.
    pub fn wait(&self, id: &str, exec_id: &str) -> WaitProcessResponse {
        let mut req = WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.agent
            .wait_process(&req, WAIT)
            .unwrap_or_else(|e| panic!("WaitProcess {id}/{exec_id}: {e}"))
    }

    pub fn try_remove(&self, id: &str) -> Result<(), ClientError> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = id.into();
        self.agent.remove_container(&req, CALL).map(|_| ())
    }

    pub fn remove(&self, id: &str) {
        self.try_remove(id)
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// Sends `signal` to the init (or, with `all`, every process) of container `id`.
    pub fn signal(&self, id: &str, signal: u32, all: bool) {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.signal = signal;
        req.all = all;
        self.agent
            .signal_process(&req, CALL)
            .unwrap_or_else(|e| panic!("SignalProcess {id}: {e}"));
    }

    pub fn inspect(&self) -> InspectSandboxResponse {
        let mut req = InspectSandboxRequest::new();
        req.sandbox_id = self.id.clone();
        self.agent
            .inspect_sandbox(&req, CALL)
            .unwrap_or_else(|e| panic!("InspectSandbox {}: {e}", self.id))
    }

    /// Pause's or a container's namespaces in the inspect view.
    pub fn namespaces(&self, name: &str) -> ProcessNamespaces {
        let view = self.inspect();
        if name == "pause" {
            return view.pause.into_option().expect("pause in the view");
        }
        view.containers
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} not in the inspect view"))
    }

    pub fn destroy(&self) {
        let mut req = DestroySandboxRequest::new();
        req.sandbox_id = self.id.clone();
        self.agent
            .destroy_sandbox(&req, CALL)
            .unwrap_or_else(|e| panic!("DestroySandbox {}: {e}", self.id));
    }

    /// Opens one stdio stream of a process.
    pub fn attach(&self, id: &str, exec_id: &str, stream: StdioStream) -> UnixStream {
        attach_stdio(&self.uds, id, exec_id, stream, CALL)
            .unwrap_or_else(|e| panic!("attach {stream:?} of {id}/{exec_id}: {e}"))
    }

    /// Attaches stdout (and stderr unless `terminal`) and reads them on threads.
    pub fn collect(&self, id: &str, exec_id: &str, terminal: bool) -> Collector {
        Collector {
            stdout: read_all(self.attach(id, exec_id, StdioStream::STDOUT)),
            stderr: (!terminal).then(|| read_all(self.attach(id, exec_id, StdioStream::STDERR))),
        }
    }

    /// Runs `sh -c script` as container `id` to its end, then removes it: its exit and output.
    pub fn run(&self, id: &str, script: &str) -> (WaitProcessResponse, Output) {
        self.run_spec(id, &ContainerSpec::cri(&["sh", "-c", script]))
    }

    /// Runs container `id` of `spec` to its end, then removes it: its exit and output.
    pub fn run_spec(&self, id: &str, spec: &ContainerSpec) -> (WaitProcessResponse, Output) {
        self.run_json(id, spec.json())
    }

    pub fn run_json(&self, id: &str, spec_json: Vec<u8>) -> (WaitProcessResponse, Output) {
        self.try_create(id, spec_json, false)
            .unwrap_or_else(|e| panic!("CreateContainer {id}: {e}"));
        let output = self.collect(id, "", false);
        self.start(id);
        let exit = self.wait(id, "");
        let output = output.finish();
        self.remove(id);
        (exit, output)
    }

    /// Runs `sh -c script` as container `id`; panics with its output unless it exits 0.
    pub fn check(&self, id: &str, script: &str) -> String {
        let (exit, output) = self.run(id, script);
        assert_eq!(
            exit.exit_code,
            0,
            "{id}: `{script}` failed\nstdout: {}\nstderr: {}",
            output.stdout_text(),
            output.stderr_text()
        );
        output.stdout_text()
    }

    pub fn try_exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdin: bool,
    ) -> Result<u32, ClientError> {
        let mut req = ExecProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.process_json = process_json;
        req.stdin = stdin;
        self.agent.exec_process(&req, CALL).map(|r| r.pid)
    }

    /// Execs `args` in running container `id` to its end: its exit and output.
    pub fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> (WaitProcessResponse, Output) {
        self.try_exec(id, exec_id, exec_process_json(args, false), false)
            .unwrap_or_else(|e| panic!("ExecProcess {id}/{exec_id}: {e}"));
        let output = self.collect(id, exec_id, false);
        let exit = self.wait(id, exec_id);
        (exit, output.finish())
    }

    /// Writes `bytes` to the process's stdin stream, then shuts the stream down (EOF after
    /// the last byte).
    pub fn feed_stdin(&self, id: &str, exec_id: &str, bytes: &[u8]) {
        let mut stdin = self.attach(id, exec_id, StdioStream::STDIN);
        stdin.write_all(bytes).expect("write stdin");
        stdin
            .shutdown(std::net::Shutdown::Write)
            .expect("shut down the stdin stream");
    }

    /// CloseStdin: EOF to a process whose stdin no stream is attached to.
    pub fn close_stdin(&self, id: &str, exec_id: &str) {
        let mut req = CloseStdinRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.agent
            .close_stdin(&req, CALL)
            .unwrap_or_else(|e| panic!("CloseStdin {id}/{exec_id}: {e}"));
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<(), ClientError> {
        let mut req = ResizeTtyRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.rows = rows;
        req.cols = cols;
        self.agent.resize_tty(&req, CALL).map(|_| ())
    }
}

/// The inode of namespace `kind` in an inspect entry.
pub fn inode(ns: &ProcessNamespaces, kind: &str) -> u64 {
    *ns.inodes
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} inode for {:?}", ns.name))
}

/// Asserts that `result` failed with `code` and a message containing `needle`.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    code: ttrpc::Code,
    needle: &str,
) {
    let err = result.expect_err("the call should fail");
    assert_eq!(err.code(), Some(code), "{err:?}");
    let message = err.status_message().unwrap_or_default();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}
