//! End to end (issue 6, acceptance 2 to 4): a Rust CRI client (`k8s-cri`, runtime API v1)
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

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatsRequest,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest, VersionRequest,
};
use nutshell_tests::containerd::{build_shim, Containerd, CRI_NAMESPACE, ENV_SHIM, IMAGE};
use nutshell_tests::ground::Group;
use nutshell_tests::pod_guest::GuestImage;
use tonic::transport::{Channel, Endpoint, Uri};

const APP_SCRIPT: &str = "mkdir -p /www && echo hello-from-app > /www/index.html \
    && exec httpd -f -p 127.0.0.1:8080 -h /www";
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
        .deadline(Duration::from_secs(1500))
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
        ]);
}

/// A CRI client on a tokio runtime of its own, called synchronously.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    ctd: Containerd,
}

impl Cri {
    /// A containerd for `what`, its CRI images imported, and a client of its CRI service.
    fn start(what: &str) -> Cri {
        let ctd = Containerd::start(what, CRI_NAMESPACE);
        ctd.import_cri_images();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket = ctd.socket();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://[::]:50051")
                    .timeout(Duration::from_secs(300))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    })),
            )
            .expect("connect to containerd's CRI socket");
        let mut cri = Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
            ctd,
        };
        let version = cri.call("Version", |mut c| async move {
            c.version(VersionRequest::default()).await
        });
        println!("CRI: {version:?}");
        cri
    }

    /// Runs one CRI call; a failure panics with the call, the status and containerd's log.
    fn call<T, F, Fut>(&mut self, what: &str, f: F) -> T
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.try_call(f) {
            Ok(t) => t,
            Err(status) => panic!(
                "CRI {what} failed: {:?}: {}\n--- containerd.log ---\n{}",
                status.code(),
                status.message(),
                self.ctd.log_tail()
            ),
        }
    }

    fn try_call<T, F, Fut>(&mut self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt
            .block_on(f(self.client.clone()))
            .map(tonic::Response::into_inner)
    }

    fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> String {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let what = format!("RunPodSandbox ({handler})");
        self.call(&what, |mut c| async move { c.run_pod_sandbox(req).await })
            .pod_sandbox_id
    }

    /// Creates and starts a container; its id.
    fn start_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> String {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .call(&format!("CreateContainer {name}"), |mut c| async move {
                c.create_container(req).await
            })
            .container_id;
        let req = StartContainerRequest {
            container_id: id.clone(),
        };
        self.call(&format!("StartContainer {name}"), |mut c| async move {
            c.start_container(req).await
        });
        id
    }

    /// ExecSync of `sh -c script` in `container`: (exit code, stdout, stderr).
    fn exec(&mut self, container: &str, script: &str) -> (i32, String, String) {
        let req = ExecSyncRequest {
            container_id: container.to_string(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 120,
        };
        let out = self.call(&format!("ExecSync {script:?}"), |mut c| async move {
            c.exec_sync(req).await
        });
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Cri::exec`]; panics unless it exits 0; its stdout.
    fn exec_ok(&mut self, container: &str, script: &str) -> String {
        let (code, stdout, stderr) = self.exec(container, script);
        assert_eq!(
            code,
            0,
            "ExecSync {script:?} in {container}: stdout {stdout:?}, stderr {stderr:?}\n\
             --- containerd.log ---\n{}",
            self.ctd.log_tail()
        );
        stdout
    }

    fn container_status(&mut self, id: &str) -> k8s_cri::v1::ContainerStatus {
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(req).await
        })
        .status
        .expect("ContainerStatus without a status")
    }

    /// Waits up to `timeout` for the container to exit; its status.
    fn wait_exited(&mut self, id: &str, timeout: Duration) -> k8s_cri::v1::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id);
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within {timeout:?}: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop_container(&mut self, id: &str) {
        let req = StopContainerRequest {
            container_id: id.to_string(),
            // pid 1 of a pid namespace ignores SIGTERM without a handler: SIGKILL after 2 s.
            timeout: 2,
        };
        self.call("StopContainer", |mut c| async move {
            c.stop_container(req).await
        });
    }

    fn remove_container(&mut self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(req).await
        });
    }

    /// StopPodSandbox and RemovePodSandbox, then nothing of the pod may be left.
    fn remove_pod(&mut self, pod: &str) {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(req).await
        });
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(req).await
        });
        self.ctd.assert_clean(Duration::from_secs(60));
    }
}

/// The pod's namespaces (kubelet gives the same options to the sandbox and each container).
fn namespace_options() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn pod_config(name: &str, handler: &str, logs: &std::path::Path) -> PodSandboxConfig {
    let uid = format!("uid-{name}-{handler}");
    // CRI opens container logs in the pod's log directory; kubelet makes it.
    std::fs::create_dir_all(logs.join(handler)).expect("create the pod's log directory");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("{name}-{handler}"),
            uid,
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-{handler}"),
        log_directory: logs.join(handler).display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, attempt: u32, script: &str, memory: i64) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: format!("docker.io/{IMAGE}"),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}-{attempt}.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                memory_limit_in_bytes: memory,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

fn logs_dir(cri: &Cri) -> PathBuf {
    cri.ctd.dir.join("logs")
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
    let logs = logs_dir(cri);
    let config = pod_config("seed", handler, &logs);
    let pod = cri.run_pod(&config, handler);
    let app = cri.start_container(
        &pod,
        &config,
        container_config("app", 0, APP_SCRIPT, APP_MEMORY),
    );
    let sidecar = cri.start_container(
        &pod,
        &config,
        container_config("sidecar", 0, "exec sleep 3600", 0),
    );
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
    let req = PodSandboxStatusRequest {
        pod_sandbox_id: pod.clone(),
        verbose: false,
    };
    let status = cri
        .call(
            &format!("PodSandboxStatus ({handler})"),
            |mut c| async move { c.pod_sandbox_status(req).await },
        )
        .status
        .expect("PodSandboxStatus without a status");
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
        let logs = logs_dir(&cri);
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
            container_config("sidecar", 0, "exec sleep 3600", 0),
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

/// The cgroup directory below `dir` (at most `depth` levels) whose name ends with `id`.
fn host_cgroup(dir: &Path, id: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let subdirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    if let Some(found) = subdirs.iter().find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(id))
    }) {
        return Some(found.clone());
    }
    if depth == 0 {
        return None;
    }
    subdirs
        .iter()
        .find_map(|sub| host_cgroup(sub, id, depth - 1))
}

/// Acceptance 3: a container past its memory limit is reported OOMKilled.
fn oom_killed_is_reported() {
    let mut cri = Cri::start("cri-oom");
    for handler in HANDLERS {
        let logs = logs_dir(&cri);
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
        cri.remove_pod(&pod);
    }
}
