//! End to end (issue 4, the seed's pod): an httpd app and a sidecar in one pod. The sidecar
//! reaches the app over 127.0.0.1, reads its SysV shm segment, SysV message and POSIX message
//! queue, and sees the same hostname; the pod's DNS, sysctls and cgroup limits hold; NODE and
//! TARGET namespace modes join what they name. DestroySandbox leaves no process, cgroup or
//! mount behind, as seen from a privileged observer in the guest's root pid namespace.

use std::collections::HashMap;
use std::time::Duration;

use nutshell_protocol::agent::{
    CreateSandboxRequest, DnsConfig, InspectSandboxRequest, NamespaceMode, NamespaceOptions,
};
use nutshell_tests::ground::Group;
use nutshell_tests::oci::{resources, to_json, ContainerSpec, NsSource};
use nutshell_tests::pod_client::{expect_code, inode, Pod, CALL};
use nutshell_tests::pod_guest::{GuestImage, Vmm, VmmLaunch};
use serde_json::{json, Value};

const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn seed_pod() {
    Group::new("seed_pod")
        .deadline(Duration::from_secs(300))
        .host_env(|| GuestImage::locate_test().env_test())
        .run(&[("seed_pod_and_teardown", seed_pod_and_teardown)]);
}

/// The app: writes its page and the IPC objects, then serves on 127.0.0.1:8080.
const APP: &str = "mkdir -p /www && echo hello-from-app > /www/index.html \
    && nutshell-probe shm-create 4242 shared-shm \
    && nutshell-probe msg-send 4343 shared-msg \
    && nutshell-probe mq-send /seedq shared-mq \
    && exec httpd -f -p 127.0.0.1:8080 -h /www";

/// What the sidecar checks, as an exec (CRI ExecSync).
const SIDECAR_CHECKS: &str = "set -e
    for i in $(seq 100); do wget -qO /tmp/page http://127.0.0.1:8080/ && break; sleep 0.1; done
    test \"$(cat /tmp/page)\" = hello-from-app
    test \"$(nutshell-probe shm-read 4242)\" = shared-shm
    test \"$(nutshell-probe msg-recv 4343)\" = shared-msg
    test \"$(nutshell-probe mq-recv /seedq)\" = shared-mq
    test \"$(hostname)\" = seed-pod
    grep -qx 'nameserver 10.96.0.10' /etc/resolv.conf
    grep -qx 'search default.svc.cluster.local' /etc/resolv.conf
    test \"$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)\" = 80
    echo ok";

fn seed_sandbox() -> CreateSandboxRequest {
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "seed".into();
    req.pod_uid = "uid-seed".into();
    req.pod_name = "seed".into();
    req.pod_namespace = "default".into();
    req.hostname = "seed-pod".into();
    let mut dns = DnsConfig::new();
    dns.servers = vec!["10.96.0.10".into()];
    dns.searches = vec!["default.svc.cluster.local".into()];
    dns.options = vec!["ndots:5".into()];
    req.dns = Some(dns).into();
    req.sysctls = HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]);
    req.cgroup_parent = "kubepods/burstable".into();
    req.resources_json = to_json(&resources(Some(256 << 20), None));
    let mut options = NamespaceOptions::new();
    options.pid = NamespaceMode::CONTAINER.into();
    req.namespace_options = Some(options).into();
    req
}

/// Every capability: the observer reads /proc/1 of the agent (needs CAP_SYS_PTRACE).
fn privileged(args: &[&str]) -> Vec<u8> {
    let mut spec: Value =
        serde_json::from_slice(&ContainerSpec::cri(args).pid(NsSource::Node).json())
            .expect("spec JSON");
    let caps = nutshell_protocol::LINUX_CAPABILITIES.to_vec();
    spec["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    serde_json::to_vec(&spec).expect("spec JSON")
}

fn seed_pod_and_teardown() {
    let image = GuestImage::locate_test();
    let launch = VmmLaunch {
        mem_mib: 512,
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    agent
        .create_sandbox(&seed_sandbox(), CALL)
        .expect("CreateSandbox seed");
    let seed = Pod {
        agent: &agent,
        uds: vmm.uds.clone(),
        id: "seed".into(),
    };

    seed.create("app", &ContainerSpec::cri(&["sh", "-c", APP]));
    seed.create("sidecar", &ContainerSpec::cri(&["sleep", "600"]));
    seed.start("app");
    seed.start("sidecar");
    let (exit, output) = seed.exec("sidecar", "check", &["sh", "-c", SIDECAR_CHECKS]);
    assert_eq!(
        (exit.exit_code, output.stdout_text().trim()),
        (0, "ok"),
        "sidecar checks (set -e stopped at the failing line)\nstderr: {}",
        output.stderr_text()
    );

    // The pod cgroup sits under the requested parent and carries the pod's limit.
    let view = seed.inspect();
    let pod_cgroup = view
        .cgroups
        .iter()
        .find(|c| c.path == "kubepods/burstable/poduid-seed")
        .unwrap_or_else(|| panic!("no pod cgroup: {:?}", view.cgroups));
    assert_eq!(pod_cgroup.memory_max, "268435456");

    // TARGET: a container in app's pid namespace sees httpd as PID 1. NODE: the guest's root
    // namespaces, where the agent is PID 1 and the network is not the pod's.
    let app = seed.namespaces("app");
    let pause = seed.namespaces("pause");
    let (exit, output) = seed.run_spec(
        "target",
        &ContainerSpec::cri(&[
            "sh",
            "-c",
            "grep -qx httpd /proc/1/comm && nutshell-probe ns",
        ])
        .pid(NsSource::Container("app".into())),
    );
    assert_eq!(exit.exit_code, 0, "TARGET: {}", output.stderr_text());
    assert!(
        output
            .stdout_text()
            .contains(&format!("pid {}\n", inode(&app, "pid"))),
        "TARGET container is not in app's pid namespace: {}",
        output.stdout_text()
    );
    let (exit, output) = seed.run_spec(
        "node",
        &ContainerSpec::cri(&[
            "sh",
            "-c",
            "grep -qx init /proc/1/comm && nutshell-probe ns",
        ])
        .pid(NsSource::Node)
        .network(NsSource::Node),
    );
    assert_eq!(exit.exit_code, 0, "NODE: {}", output.stderr_text());
    assert!(
        !output
            .stdout_text()
            .contains(&format!("net {}\n", inode(&pause, "net"))),
        "NODE network is the pod's: {}",
        output.stdout_text()
    );
    expect_code(
        seed.try_create(
            "orphan",
            ContainerSpec::cri(&["true"])
                .pid(NsSource::Container("ghost".into()))
                .json(),
            false,
        )
        .and_then(|()| seed.try_start("orphan").map(|_| ())),
        ttrpc::Code::FAILED_PRECONDITION,
        "ghost",
    );

    // DestroySandbox: nothing of the seed pod is left, seen from the guest's root pid
    // namespace by an observer pod.
    seed.destroy();
    let mut inspect = InspectSandboxRequest::new();
    inspect.sandbox_id = "seed".into();
    expect_code(
        agent.inspect_sandbox(&inspect, CALL),
        ttrpc::Code::NOT_FOUND,
        "seed",
    );
    let observer = Pod::create_sandbox(
        &agent,
        vmm.uds.clone(),
        "observer",
        "observer",
        Pod::options(NamespaceMode::CONTAINER),
    );
    let leftovers = "set -e
        test \"$(cat /proc/[0-9]*/comm | grep -cx pause)\" = 1
        ! grep -qx -e httpd -e sleep /proc/[0-9]*/comm
        ! test -e /sys/fs/cgroup/kubepods/burstable/poduid-seed
        ! grep -q -e /run/nutshell/seed -e /images/busybox/rootfs /proc/1/mountinfo
        ! test -e /proc/1/root/run/nutshell/seed
        echo clean";
    observer
        .try_create("look", privileged(&["sh", "-c", leftovers]), false)
        .expect("create the observer");
    let output = observer.collect("look", "", false);
    observer.start("look");
    let exit = observer.wait("look", "");
    let output = output.finish();
    assert_eq!(
        (exit.exit_code, output.stdout_text().trim()),
        (0, "clean"),
        "DestroySandbox left something (set -e stopped at the failing line)\nstderr: {}",
        output.stderr_text()
    );
    observer.remove("look");
    observer.destroy();

    vmm.shut_down(&agent);
}
