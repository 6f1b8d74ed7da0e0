//! End to end (issue 4, first slice): pod sandboxes in a real guest. pause holds the pod's
//! net, uts, ipc and pid namespaces (or the guest's, in NODE mode), lives in the pod cgroup,
//! and DestroySandbox takes it all away. One ground run, one VM for all cases.

use std::time::Duration;

use nutshell_protocol::agent::{
    CreateSandboxRequest, DestroySandboxRequest, InspectSandboxRequest, NamespaceMode,
    NamespaceOptions, ProcessNamespaces,
};
use nutshell_protocol::{AgentClient, ClientError};
use nutshell_tests::ground::Group;
use nutshell_tests::pod_guest::{GuestImage, Vmm, VmmLaunch};

const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
const CALL: Duration = Duration::from_secs(30);

#[test]
fn pod_sandbox() {
    Group::new("pod_sandbox")
        .deadline(Duration::from_secs(300))
        .host_env(|| GuestImage::locate().env())
        .run(&[("sandbox_lifecycle_and_modes", sandbox_lifecycle_and_modes)]);
}

fn request(id: &str, uid: &str, modes: [NamespaceMode; 3]) -> CreateSandboxRequest {
    let mut options = NamespaceOptions::new();
    options.network = modes[0].into();
    options.pid = modes[1].into();
    options.ipc = modes[2].into();
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = id.into();
    req.pod_uid = uid.into();
    req.pod_name = "web".into();
    req.hostname = "web-pod".into();
    req.namespace_options = Some(options).into();
    req
}

fn inspect(
    agent: &AgentClient,
    id: &str,
) -> Result<nutshell_protocol::agent::InspectSandboxResponse, ClientError> {
    let mut req = InspectSandboxRequest::new();
    req.sandbox_id = id.into();
    agent.inspect_sandbox(&req, CALL)
}

fn destroy(agent: &AgentClient, id: &str) {
    let mut req = DestroySandboxRequest::new();
    req.sandbox_id = id.into();
    agent.destroy_sandbox(&req, CALL).expect("DestroySandbox");
}

fn inode(ns: &ProcessNamespaces, kind: &str) -> u64 {
    *ns.inodes
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} inode for {}", ns.name))
}

fn expect_code(result: Result<impl std::fmt::Debug, ClientError>, code: ttrpc::Code, needle: &str) {
    let err = result.expect_err("the call should fail");
    assert_eq!(err.code(), Some(code), "{err:?}");
    let message = err.status_message().unwrap_or_default();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

fn sandbox_lifecycle_and_modes() {
    use NamespaceMode::*;
    let image = GuestImage::locate();
    let mut vmm = Vmm::spawn(&image, &VmmLaunch::default()).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));

    // The CRI defaults: the pod's own net, ipc, uts; pause PID 1 of its own pid namespace.
    let created = agent
        .create_sandbox(&request("sb1", "uid-1", [POD, CONTAINER, POD]), CALL)
        .expect("CreateSandbox");
    assert!(created.pause_pid > 1);
    let view = inspect(&agent, "sb1").expect("InspectSandbox");
    let (pause, root) = (view.pause.unwrap(), view.guest_root.unwrap());
    assert_eq!(pause.pid, created.pause_pid);
    for kind in ["net", "uts", "ipc", "pid"] {
        assert_ne!(
            inode(&pause, kind),
            inode(&root, kind),
            "pause shares the guest's {kind} namespace"
        );
    }
    assert_eq!(
        inode(&pause, "mnt"),
        inode(&root, "mnt"),
        "pause needs no mount namespace"
    );
    let paths: Vec<&str> = view.cgroups.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["kubepods/poduid-1", "kubepods/poduid-1/pause"]);
    assert_eq!(
        view.cgroups[1].procs,
        [created.pause_pid],
        "pause is in its cgroup"
    );

    // Bad input: each gets its own code and a message naming the problem; the agent stays up.
    expect_code(
        agent.create_sandbox(&request("sb1", "uid-9", [POD, CONTAINER, POD]), CALL),
        ttrpc::Code::ALREADY_EXISTS,
        "sb1",
    );
    expect_code(
        agent.create_sandbox(&request("a/b", "uid-9", [POD, CONTAINER, POD]), CALL),
        ttrpc::Code::INVALID_ARGUMENT,
        "sandbox_id",
    );
    expect_code(
        agent.create_sandbox(&request("sb9", "uid-9", [CONTAINER, CONTAINER, POD]), CALL),
        ttrpc::Code::INVALID_ARGUMENT,
        "namespace_options.network",
    );
    expect_code(inspect(&agent, "nope"), ttrpc::Code::NOT_FOUND, "nope");

    // NODE: hostNetwork/hostPID/hostIPC are the guest's root namespaces; uts stays the pod's.
    agent
        .create_sandbox(&request("sb2", "uid-2", [NODE, NODE, NODE]), CALL)
        .expect("CreateSandbox in NODE mode");
    let node = inspect(&agent, "sb2")
        .expect("InspectSandbox")
        .pause
        .unwrap();
    for kind in ["net", "ipc", "pid"] {
        assert_eq!(
            inode(&node, kind),
            inode(&root, kind),
            "NODE {kind} is not the guest's"
        );
    }
    assert_ne!(inode(&node, "uts"), inode(&root, "uts"));

    // Destroy: the sandbox is gone, destroying again is fine, and the same pod uid can be
    // created again (its cgroup directory was removed).
    destroy(&agent, "sb1");
    destroy(&agent, "sb1");
    destroy(&agent, "sb2");
    expect_code(inspect(&agent, "sb1"), ttrpc::Code::NOT_FOUND, "sb1");
    agent
        .create_sandbox(&request("sb1", "uid-1", [POD, CONTAINER, POD]), CALL)
        .expect("CreateSandbox again after destroy");
    destroy(&agent, "sb1");

    vmm.shut_down(&agent);
}
