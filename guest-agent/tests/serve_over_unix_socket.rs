//! The agent's ttrpc server, end to end on a Unix socket, driven by the
//! protocol crate's host client: what runs in the guest minus init and vsock.

use std::fs;
use std::path::Path;
use std::time::Duration;

use nutshell_agent::api::AgentService;
use nutshell_agent::probe::SystemPaths;
use nutshell_agent::reaper::{ReapScope, Reaper};
use nutshell_agent::{server, AGENT_VERSION};
use nutshell_protocol::{AgentClient, PROTOCOL_VERSION};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn write_fixture(root: &Path, relative: &str, content: &str) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

#[test]
fn version_guest_details_and_shutdown_over_ttrpc() {
    let dir = tempfile::tempdir().unwrap();
    let paths = SystemPaths {
        proc_dir: dir.path().join("proc"),
        sys_dir: dir.path().join("sys"),
    };
    write_fixture(&paths.proc_dir, "meminfo", "MemTotal:  262144 kB\n");
    write_fixture(&paths.sys_dir, "devices/system/cpu/online", "0-3\n");
    write_fixture(
        &paths.sys_dir,
        "fs/cgroup/cgroup.controllers",
        "cpuset cpu io memory pids\n",
    );
    write_fixture(
        &paths.sys_dir,
        "fs/cgroup/cgroup.subtree_control",
        "cpuset cpu io memory pids\n",
    );

    let socket = dir.path().join("agent.sock");
    let (service, shutdown_requests) =
        AgentService::new(Reaper::new(ReapScope::TrackedOnly), paths);
    let agent = server::start(&format!("unix://{}", socket.display()), service).unwrap();
    let client = AgentClient::connect_unix(&socket).unwrap();

    let version = client.version(CALL_TIMEOUT).unwrap();
    assert_eq!(version.agent_version, AGENT_VERSION);
    assert_eq!(version.protocol_version, PROTOCOL_VERSION);
    assert!(!version.kernel_release.is_empty());

    let details = client.guest_details(CALL_TIMEOUT).unwrap();
    assert_eq!(details.online_cpus, 4);
    assert_eq!(details.mem_total_kib, 262_144);
    assert_eq!(
        details.cgroup_controllers,
        ["cpuset", "cpu", "io", "memory", "pids"]
    );
    assert_eq!(details.cgroup_subtree_control, details.cgroup_controllers);
    let kinds: Vec<_> = details
        .namespaces
        .iter()
        .map(|ns| ns.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["uts", "ipc", "pid", "net", "mnt", "user", "cgroup", "time"]
    );
    for ns in &details.namespaces {
        eprintln!(
            "namespace {:6} unshare_ok={} {}",
            ns.kind, ns.unshare_ok, ns.error
        );
        assert_eq!(ns.unshare_ok, ns.error.is_empty(), "{ns:?}");
    }

    assert!(!shutdown_requests.wait_timeout(Duration::ZERO));
    client.shutdown(CALL_TIMEOUT).unwrap();
    assert!(shutdown_requests.wait_timeout(CALL_TIMEOUT));
    assert!(
        agent.stop(Duration::from_secs(5)),
        "server must stop promptly"
    );
}
