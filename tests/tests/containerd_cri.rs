//! End to end (issue 6, acceptance 2 to 5): a Rust CRI client (`k8s-cri`, runtime API v1)
//! drives Debian's containerd 1.6, started standalone by the test (own root, state, socket and
//! config, `restrict_oom_score_adj`, a CNI bridge of Debian's plugins, the busybox test image
//! imported as the app image and, with `sleep` as its command, as the sandbox image).
//!
//! The seed's pod (an httpd app, a sleeping sidecar) runs with the runtime handler `runc`, the
//! baseline, and `nutshell`, through the same containerd, one after the other:
//! RunPodSandbox, CreateContainer + StartContainer for both, ExecSync from the sidecar to the
//! app over localhost, the namespaces each container sees (net, uts and ipc shared; pid and
//! mnt private), ContainerStats, PodSandboxStatus, UpdateContainerResources read back in the
//! container's cgroup, StopContainer and the container made and started again (CRI's restart),
//! a container past its memory limit reported OOMKilled, then StopPodSandbox and
//! RemovePodSandbox, after which no shim, VMM, mount, socket or pod directory is left. The two
//! runtimes' observations are compared side by side.
//!
//! Acceptance 5 (nutshell only, runc has no VMM): `kill -9` of a running pod's `nutshell-vmm`;
//! containerd sees both containers exit, and StopPodSandbox and RemovePodSandbox still leave
//! nothing behind. The CRI client is the library's (`nutshell_tests::cri_client`), which
//! `cargo xtask bench-cri` shares.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerState, ContainerStatsRequest, LinuxContainerResources, PodSandboxState,
    UpdateContainerResourcesRequest,
};
use nutshell_tests::containerd::{build_shim, ENV_SHIM};
use nutshell_tests::cri_client::{
    container_config, host_cgroup, pod_config, pod_vmm, Cri, SeedPod, APP_SCRIPT, SIDECAR_SCRIPT,
};
use nutshell_tests::ground::Group;
use nutshell_tests::pod_guest::GuestImage;

const PAGE: &str = "hello-from-app\n";
/// The sidecar fetches the app's page over the pod's loopback (retrying while httpd starts).
const FETCH: &str =
    "for i in $(seq 300); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1";
/// The memory limit of the container's own cgroup: at the path /proc/self/cgroup names below
/// the cgroup mount (a cgroup namespace of its own: `/`), else at the mount's root (runc binds
/// the container's cgroup there when there is no cgroup namespace).
const MEMORY_MAX: &str = "f=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max; \
    [ -e \"$f\" ] || f=/sys/fs/cgroup/memory.max; cat \"$f\" || \
    { cat /proc/self/cgroup; ls /sys/fs/cgroup; cat /sys/fs/cgroup/cgroup.controllers; exit 1; } >&2";
const APP_MEMORY: i64 = 128 << 20;
const UPDATED_MEMORY: i64 = 96 << 20;
const HOG_MEMORY: i64 = 32 << 20;
/// nutshell first: the acceptance target; runc, the baseline, after it.
const HANDLERS: [&str; 2] = ["nutshell", "runc"];

#[test]
fn containerd_cri() {
    Group::new("containerd_cri")
        .deadline(Duration::from_secs(900))
        .host_env(|| {
            // Builds the busybox test image (build/test-image/oci) on this side as well.
            GuestImage::locate_test();
            let mut env = GuestImage::locate().env();
            env.push((ENV_SHIM.into(), build_shim().into()));
            env
        })
        .run(&[
            ("seed_pod_runc_and_nutshell", seed_pod_runc_and_nutshell),
            ("update_stop_and_restart", update_stop_and_restart),
            ("oom_killed_is_reported", oom_killed_is_reported),
            ("vmm_killed", vmm_killed),
        ]);
}

/// What one runtime showed of the seed's pod.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    page: String,
    /// For net, uts, ipc, pid and mnt: whether app and sidecar share it.
    shared: BTreeMap<&'static str, bool>,
    hostname: String,
}

/// The seed's pod with `handler`, start to removal.
fn seed_pod(cri: &mut Cri, handler: &str) -> Observed {
    let SeedPod {
        pod, app, sidecar, ..
    } = cri.run_seed_pod("seed", handler, APP_MEMORY);
    let page = cri.exec_ok(&sidecar, FETCH);
    let mut shared = BTreeMap::new();
    for kind in ["net", "uts", "ipc", "pid", "mnt"] {
        let script = format!("readlink /proc/self/ns/{kind}");
        let in_app = cri.exec_ok(&app, &script);
        let in_sidecar = cri.exec_ok(&sidecar, &script);
        assert!(in_app.starts_with(kind), "{kind}: {in_app:?}");
        shared.insert(kind, in_app == in_sidecar);
    }
    let hostname = cri.exec_ok(&sidecar, "hostname").trim().to_string();
    let req = ContainerStatsRequest {
        container_id: app.clone(),
    };
    let stats = cri
        .call(&format!("ContainerStats ({handler})"), |mut c| async move {
            c.container_stats(req).await
        })
        .stats
        .expect("ContainerStats without stats");
    let memory = stats.memory.expect("ContainerStats without memory");
    let working_set = memory.working_set_bytes.map_or(0, |v| v.value);
    assert!(working_set > 0, "app's working set ({handler}): {memory:?}");
    let status = cri.pod_status(&pod);
    assert_eq!(
        status.state,
        PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    assert!(
        status.network.as_ref().is_some_and(|n| !n.ip.is_empty()),
        "the pod has an address from the CNI bridge: {status:?}"
    );
    assert_eq!(status.runtime_handler, handler);
    for id in [&app, &sidecar] {
        cri.stop_container(id);
        let exited = cri.wait_exited(id, Duration::from_secs(30));
        assert_ne!(exited.reason, "OOMKilled", "{exited:?}");
    }
    cri.remove_pod(&pod);
    Observed {
        page,
        shared,
        hostname,
    }
}

/// Acceptance 2 (seed pod) and 4 (runc side by side): the same script, the same results.
fn seed_pod_runc_and_nutshell() {
    let mut cri = Cri::start("cri-seed");
    let mut observed = BTreeMap::new();
    for handler in HANDLERS {
        let seen = seed_pod(&mut cri, handler);
        assert_eq!(
            seen.page, PAGE,
            "{handler}: the sidecar fetched the app's page"
        );
        let expected: BTreeMap<&str, bool> = [
            ("net", true),
            ("uts", true),
            ("ipc", true),
            ("pid", false),
            ("mnt", false),
        ]
        .into_iter()
        .collect();
        assert_eq!(seen.shared, expected, "{handler}: namespaces app/sidecar");
        assert_eq!(
            seen.hostname,
            format!("seed-{handler}"),
            "{handler}: hostname"
        );
        observed.insert(handler, seen);
    }
    assert_eq!(
        observed["runc"].shared, observed["nutshell"].shared,
        "runc and nutshell share the same namespaces"
    );
}

/// UpdateContainerResources shows in the container's cgroup; a stopped container made and
/// started again (CRI's restart) serves again.
fn update_stop_and_restart() {
    let mut cri = Cri::start("cri-update");
    // Read-back problems are collected, so that the stop and restart run for both runtimes.
    let mut problems = Vec::new();
    for handler in HANDLERS {
        let logs = cri.logs_dir();
        let config = pod_config("update", handler, &logs);
        let pod = cri.run_pod(&config, handler);
        let app = cri.start_container(
            &pod,
            &config,
            container_config("app", 0, APP_SCRIPT, APP_MEMORY),
        );
        let mut read_back = |cri: &mut Cri, expected: i64, when: &str| {
            let (code, stdout, stderr) = if handler == "runc" {
                // runc's containers in the nested ground (whose root is an initramfs) see no
                // cgroup files at /sys/fs/cgroup: read the limit on the host, in the cgroup
                // named after the container.
                match host_cgroup(Path::new("/sys/fs/cgroup"), &app, 4) {
                    Some(dir) => match std::fs::read_to_string(dir.join("memory.max")) {
                        Ok(text) => (0, text, String::new()),
                        Err(e) => (1, String::new(), format!("{}: {e}", dir.display())),
                    },
                    None => (1, String::new(), format!("no host cgroup named {app}")),
                }
            } else {
                cri.exec(&app, MEMORY_MAX)
            };
            if code != 0 || stdout.trim() != expected.to_string() {
                let mounts = cri.exec(&app, "cat /proc/self/mounts").1;
                problems.push(format!(
                    "{handler}: memory.max {when}: exit {code}, stdout {stdout:?} \
                     (expected {expected}), stderr {stderr:?}; mounts:\n{mounts}"
                ));
            }
        };
        read_back(&mut cri, APP_MEMORY, "at start");
        let req = UpdateContainerResourcesRequest {
            container_id: app.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: UPDATED_MEMORY,
                ..Default::default()
            }),
            ..Default::default()
        };
        cri.call(
            &format!("UpdateContainerResources ({handler})"),
            |mut c| async move { c.update_container_resources(req).await },
        );
        read_back(&mut cri, UPDATED_MEMORY, "after UpdateContainerResources");
        cri.stop_container(&app);
        let exited = cri.wait_exited(&app, Duration::from_secs(30));
        assert_ne!(exited.exit_code, 0, "{handler}: httpd stopped: {exited:?}");
        cri.remove_container(&app);
        let again = cri.start_container(
            &pod,
            &config,
            container_config("app", 1, APP_SCRIPT, APP_MEMORY),
        );
        let sidecar = cri.start_container(
            &pod,
            &config,
            container_config("sidecar", 0, SIDECAR_SCRIPT, 0),
        );
        assert_eq!(
            cri.exec_ok(&sidecar, FETCH),
            PAGE,
            "{handler}: after restart"
        );
        cri.stop_container(&again);
        cri.stop_container(&sidecar);
        cri.remove_pod(&pod);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Acceptance 3: a container past its memory limit is reported OOMKilled.
fn oom_killed_is_reported() {
    let mut cri = Cri::start("cri-oom");
    for handler in HANDLERS {
        let logs = cri.logs_dir();
        let config = pod_config("oom", handler, &logs);
        let pod = cri.run_pod(&config, handler);
        // dd (the container's init) fills a 128 MiB buffer from /dev/zero, past the limit.
        let hog = cri.start_container(
            &pod,
            &config,
            container_config(
                "hog",
                0,
                "exec dd if=/dev/zero of=/dev/null bs=128M count=1",
                HOG_MEMORY,
            ),
        );
        let exited = cri.wait_exited(&hog, Duration::from_secs(120));
        assert_eq!(
            exited.reason,
            "OOMKilled",
            "{handler}: the hog's status: {exited:?}\n--- containerd.log ---\n{}",
            cri.ctd.log_tail()
        );
        assert_eq!(exited.exit_code, 137, "{handler}: {exited:?}");
        // An OOM kill of another process (an exec) while the init lives on: TaskOOM comes
        // from the shim's OOM watcher, and CRI marks the running container OOMKilled.
        let survivor = cri.start_container(
            &pod,
            &config,
            container_config("survivor", 0, "exec sleep 3600", HOG_MEMORY),
        );
        let (code, _, _) = cri.exec(&survivor, "dd if=/dev/zero of=/dev/null bs=128M count=1");
        assert_ne!(code, 0, "{handler}: the exec's dd outgrew the limit");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let status = cri.container_status(&survivor);
            if status.reason == "OOMKilled" || Instant::now() >= deadline {
                break status;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(
            (status.state, status.reason.as_str()),
            (ContainerState::ContainerRunning as i32, "OOMKilled"),
            "{handler}: the survivor after its exec's OOM kill: {status:?}"
        );
        cri.remove_pod(&pod);
    }
}

/// Acceptance 5 (nutshell only: runc has no VMM): `kill -9` of a running pod's `nutshell-vmm`.
/// containerd sees both containers exit (137: the shim's waiters lose the agent with the VM),
/// the sandbox is no longer ready, and StopPodSandbox and RemovePodSandbox still leave no
/// shim, VMM, mount, socket or pod directory behind.
fn vmm_killed() {
    let mut cri = Cri::start("cri-vmm-killed");
    let handler = "nutshell";
    let SeedPod {
        pod, app, sidecar, ..
    } = cri.run_seed_pod("killed", handler, APP_MEMORY);
    assert_eq!(cri.exec_ok(&sidecar, FETCH), PAGE, "the pod serves");
    let vmm = pod_vmm(&cri.ctd, &pod).unwrap_or_else(|e| panic!("the pod's VMM: {e}"));
    println!("kill -9 of the pod's nutshell-vmm (pid {vmm})");
    // SAFETY: kill(2) of a pid that pod_vmm just found to be this pod's nutshell-vmm.
    let rc = unsafe { libc::kill(vmm, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {vmm}: {}", std::io::Error::last_os_error());
    let killed = Instant::now();
    for (name, id) in [("app", &app), ("sidecar", &sidecar)] {
        let exited = cri.wait_exited(id, Duration::from_secs(60));
        println!(
            "{name} exited {:.1} s after the VMM's kill: exit code {}, reason {:?}, \
             message {:?}",
            killed.elapsed().as_secs_f64(),
            exited.exit_code,
            exited.reason,
            exited.message
        );
        assert_eq!(exited.exit_code, 137, "{name}: {exited:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = cri.pod_status(&pod);
        if status.state == PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox is still ready a minute after its VMM's kill: {status:?}\n\
             --- containerd.log ---\n{}",
            cri.ctd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cri.remove_pod(&pod);
}
