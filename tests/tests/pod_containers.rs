//! End to end (issue 4, second slice): containers of a pod in a real guest, from the test
//! image (busybox + nutshell-probe). Each container joins pause's net, uts and ipc namespaces
//! and has its own mnt and pid namespace (pod-semantics.md); exit codes come back exactly; an
//! exited container starts again; mount targets resolve inside the rootfs through the image's
//! symlinks (runc's securejoin); bad input gets the right error. One VM for all cases.

use std::time::Duration;

use nutshell_protocol::agent::{
    CreateContainerRequest, InspectSandboxResponse, ListProcessesRequest, NamespaceMode,
    StatsContainerRequest, UpdateContainerRequest,
};
use nutshell_tests::ground::Group;
use nutshell_tests::oci::{resources, to_json, ContainerSpec, NsSource};
use nutshell_tests::pod_client::{expect_code, inode, Pod, CALL};
use nutshell_tests::pod_guest::{GuestImage, Vmm, VmmLaunch, TEST_IMAGE_ROOTFS};
use oci_spec::runtime::Mount;

const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn pod_containers() {
    Group::new("pod_containers")
        .deadline(Duration::from_secs(300))
        .host_env(|| GuestImage::locate_test().env_test())
        .run(&[("containers_share_the_pod", containers_share_the_pod)]);
}

/// Exit code of `sh -c script` run as container `id`.
fn run_code(pod: &Pod, id: &str, script: &str) -> i32 {
    pod.run(id, script).0.exit_code
}

fn containers_share_the_pod() {
    let image = GuestImage::locate_test();
    let mut vmm = Vmm::spawn(&image, &VmmLaunch::default()).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let pod = Pod::create_sandbox(
        &agent,
        vmm.uds.clone(),
        "pod",
        "web-pod",
        Pod::options(NamespaceMode::CONTAINER),
    );

    // Exit codes come back exactly; the hostname is the pod's; the container is PID 1 of its
    // own pid namespace and sees only its own processes; its root is the image, writable.
    assert_eq!(run_code(&pod, "exit7", "exit 7"), 7);
    assert_eq!(
        run_code(&pod, "hostname", "test \"$(hostname)\" = web-pod"),
        0
    );
    assert_eq!(
        run_code(
            &pod,
            "pid1",
            "test $$ = 1 && ! cat /proc/[0-9]*/comm | grep -qx -e pause -e sleep -e init"
        ),
        0
    );
    assert_eq!(
        run_code(
            &pod,
            "rootfs",
            "test -x /usr/bin/nutshell-probe && echo hi > /new && test -c /dev/null"
        ),
        0
    );

    // Mount targets resolve inside the rootfs, as runc's securejoin does: the image's Debian
    // symlink /var/run -> /run leads to the container's /run (not the guest's), and a mount
    // through `up -> ../../..` ends at the rootfs's top, never outside it. The read-only bind
    // is remounted on the mount just made.
    let mut spec = ContainerSpec::cri(&[
        "sh",
        "-c",
        "test \"$(readlink /var/run)\" = /run && test \"$(readlink /up)\" = ../../.. && \
         grep -q ^root: /var/run/nutshell-test/passwd && grep -q ^root: /run/nutshell-test/passwd && \
         ! touch /run/nutshell-test/new 2>/dev/null && grep -q ^root: /nutshell-up/passwd && \
         grep -q ^root: /run/secrets-dir/passwd",
    ])
    .spec();
    let guest_dir = format!("{TEST_IMAGE_ROOTFS}/etc");
    let bind = |destination: &str, options: &[&str]| -> Mount {
        serde_json::from_value(serde_json::json!({
            "destination": destination, "type": "bind", "source": guest_dir, "options": options,
        }))
        .expect("a bind mount")
    };
    spec.mounts_mut().get_or_insert_with(Vec::new).extend([
        bind("/var/run/nutshell-test", &["rbind", "ro"]),
        bind("/up/nutshell-up", &["rbind"]),
        bind("/up/var/run/secrets-dir", &["rbind", "rprivate"]),
    ]);
    let (exit, output) = pod.run_json("symlinked-targets", to_json(&spec));
    assert_eq!(
        exit.exit_code,
        0,
        "a mount through an image symlink is not where the container sees it: {} {}",
        output.stdout_text(),
        output.stderr_text()
    );

    // The container's root is a pivot_root, not a chroot: CAP_SYS_CHROOT (in CRI's default
    // set) cannot walk out of it to the guest's root, where the agent is /init.
    let (exit, output) = pod.run_spec(
        "escape",
        &ContainerSpec::cri(&["nutshell-probe", "chroot-escape", "/init"]),
    );
    assert_eq!(
        (exit.exit_code, output.stdout_text().trim()),
        (0, "contained"),
        "chroot escape: {}",
        output.stderr_text()
    );

    // shareProcessNamespace: a container in pause's pid namespace sees pause as PID 1.
    let (exit, _) = pod.run_spec(
        "shared",
        &ContainerSpec::cri(&["sh", "-c", "test $$ != 1 && grep -qx pause /proc/1/comm"])
            .pid(NsSource::Pod),
    );
    assert_eq!(
        exit.exit_code, 0,
        "pause is not PID 1 of the shared pid namespace"
    );
    // ... and each container of a shared pid namespace lists the others' processes.
    pod.create(
        "peer",
        &ContainerSpec::cri(&["sleep", "600"]).pid(NsSource::Pod),
    );
    pod.start("peer");
    let (exit, output) = pod.run_spec(
        "lister",
        &ContainerSpec::cri(&["sh", "-c", "cat /proc/[0-9]*/comm"]).pid(NsSource::Pod),
    );
    let seen = output.stdout_text();
    assert_eq!(exit.exit_code, 0, "{}", output.stderr_text());
    assert!(
        seen.lines().any(|l| l == "pause") && seen.lines().any(|l| l == "sleep"),
        "a container of the shared pid namespace does not see pause and its peer: {seen:?}"
    );
    pod.signal("peer", 9, true);
    pod.wait("peer", "");
    pod.remove("peer");

    // The inode table of pod-semantics.md, row by row, for two running containers.
    let limited = ContainerSpec::cri(&["sleep", "600"])
        .resources(resources(Some(64 << 20), Some((50_000, 100_000))));
    pod.create("app", &limited);
    pod.create("sidecar", &ContainerSpec::cri(&["sleep", "600"]));
    for id in ["app", "sidecar"] {
        pod.start(id);
    }
    let view = pod.inspect();
    let pause = view.pause.clone().unwrap();
    assert_eq!(view.containers.len(), 2, "{:?}", view.containers);
    for c in &view.containers {
        for kind in ["net", "uts", "ipc"] {
            assert_eq!(
                inode(c, kind),
                inode(&pause, kind),
                "{} does not share pause's {kind}",
                c.name
            );
        }
        for kind in ["mnt", "pid"] {
            assert_ne!(
                inode(c, kind),
                inode(&pause, kind),
                "{} shares pause's {kind}",
                c.name
            );
        }
    }
    let (app, sidecar) = (&view.containers[0], &view.containers[1]);
    assert_ne!(inode(app, "mnt"), inode(sidecar, "mnt"));
    assert_ne!(inode(app, "pid"), inode(sidecar, "pid"));
    let cgroup_of = |view: &InspectSandboxResponse, id: &str| {
        view.cgroups
            .iter()
            .find(|c| c.path == format!("kubepods/poduid-pod/{id}"))
            .cloned()
            .unwrap_or_else(|| panic!("no cgroup for {id}: {:?}", view.cgroups))
    };
    // Limits read back as the spec asked (runc's conversions), and change live.
    let app_cgroup = cgroup_of(&view, "app");
    assert_eq!(app_cgroup.memory_max, "67108864");
    assert_eq!(app_cgroup.cpu_max, "50000 100000");
    assert_eq!(cgroup_of(&view, "sidecar").memory_max, "max");
    let mut update = UpdateContainerRequest::new();
    update.container_id = "app".into();
    update.resources_json = to_json(&resources(Some(128 << 20), None));
    agent
        .update_container(&update, CALL)
        .expect("UpdateContainer");
    assert_eq!(cgroup_of(&pod.inspect(), "app").memory_max, "134217728");
    update.resources_json = br#"{"cpu":{"quota":10}}"#.to_vec();
    expect_code(
        agent.update_container(&update, CALL),
        ttrpc::Code::INVALID_ARGUMENT,
        "cpu.quota",
    );

    // Stats and processes come from the container's cgroup.
    let mut stats_req = StatsContainerRequest::new();
    stats_req.container_id = "app".into();
    let stats = agent
        .stats_container(&stats_req, CALL)
        .expect("StatsContainer");
    assert_eq!(stats.memory_max, 128 << 20);
    assert!(
        stats.memory_current > 0 && stats.pids_current >= 1,
        "{stats:?}"
    );
    let mut list = ListProcessesRequest::new();
    list.container_id = "app".into();
    let processes = agent
        .list_processes(&list, CALL)
        .expect("ListProcesses")
        .processes;
    assert!(
        processes.iter().any(|p| p.cmdline == "sleep 600"),
        "{processes:?}"
    );

    // Signals: SIGKILL is reported as 128 + 9. Then the exited container starts again.
    pod.signal("app", 9, true);
    assert_eq!(pod.wait("app", "").exit_code, 137);
    pod.start("app");
    assert_eq!(
        pod.inspect()
            .containers
            .iter()
            .filter(|c| c.pid > 0)
            .count(),
        2
    );

    // Bad input: each gets its code and names the problem; the agent stays up.
    expect_code(
        pod.try_create("app", ContainerSpec::cri(&["true"]).json(), false),
        ttrpc::Code::ALREADY_EXISTS,
        "app",
    );
    expect_code(pod.try_start("ghost"), ttrpc::Code::NOT_FOUND, "ghost");
    expect_code(
        pod.try_remove("sidecar"),
        ttrpc::Code::FAILED_PRECONDITION,
        "running",
    );
    let mut bad = CreateContainerRequest::new();
    bad.sandbox_id = "pod".into();
    bad.container_id = "bad".into();
    bad.oci_spec_json = b"{not json".to_vec();
    bad.rootfs = TEST_IMAGE_ROOTFS.into();
    expect_code(
        agent.create_container(&bad, CALL),
        ttrpc::Code::INVALID_ARGUMENT,
        "malformed OCI spec",
    );
    bad.oci_spec_json = ContainerSpec::cri(&["true"]).json();
    bad.rootfs = "/images/nope".into();
    expect_code(
        agent.create_container(&bad, CALL),
        ttrpc::Code::INVALID_ARGUMENT,
        "/images/nope",
    );

    // DestroySandbox takes the running containers with it.
    pod.destroy();
    expect_code(pod.try_start("sidecar"), ttrpc::Code::NOT_FOUND, "sidecar");

    vmm.shut_down(&agent);
}
