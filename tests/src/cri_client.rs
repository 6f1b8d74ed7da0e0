//! A synchronous client of containerd's CRI (runtime API v1, `k8s-cri` over tonic) for the
//! CRI end to end (`tests/tests/containerd_cri.rs`) and the CRI benchmark
//! (`cargo xtask bench-cri`): [`Cri`] starts a standalone [`Containerd`] with the CRI images
//! imported and calls its CRI socket from a tokio runtime of its own; every call that fails
//! panics with the call, the gRPC status and the end of containerd's log.
//!
//! Also here: the pod and container configs kubelet would send (pod-shared net and ipc, a pid
//! namespace per container) and the host processes of a pod ([`pod_shim`], [`pod_vmm`],
//! [`descendants`], [`rss_kib`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatus, PodSandboxStatusRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use nutshell_runtime::pod_dirs::PodDirs;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{processes_with, Containerd, CRI_NAMESPACE, IMAGE};

/// The seed's app: httpd on the pod's loopback, serving one page.
pub const APP_SCRIPT: &str = "mkdir -p /www && echo hello-from-app > /www/index.html \
    && exec httpd -f -p 127.0.0.1:8080 -h /www";
/// The seed's sidecar: sleeps.
pub const SIDECAR_SCRIPT: &str = "exec sleep 3600";

/// A CRI client on a tokio runtime of its own, called synchronously.
/// A running seed pod: its CRI config and the ids of its sandbox and containers.
pub struct SeedPod {
    pub config: PodSandboxConfig,
    pub pod: String,
    pub app: String,
    pub sidecar: String,
}

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    pub ctd: Containerd,
}

impl Cri {
    /// A containerd for `what`, its CRI images imported, and a client of its CRI service.
    pub fn start(what: &str) -> Cri {
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
    pub fn call<T, F, Fut>(&mut self, what: &str, f: F) -> T
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

    /// Runs one CRI call; its answer or its status.
    pub fn try_call<T, F, Fut>(&mut self, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt
            .block_on(f(self.client.clone()))
            .map(tonic::Response::into_inner)
    }

    /// Where the pods' container logs go (one directory per handler below it).
    pub fn logs_dir(&self) -> PathBuf {
        self.ctd.dir.join("logs")
    }

    /// RunPodSandbox; the pod's id.
    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> String {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let what = format!("RunPodSandbox ({handler})");
        self.call(&what, |mut c| async move { c.run_pod_sandbox(req).await })
            .pod_sandbox_id
    }

    /// Creates and starts a container; its id.
    pub fn start_container(
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

    /// The seed's pod `name` with `handler`: its sandbox, then the httpd app (with a memory
    /// limit of `app_memory` bytes) and the sleeping sidecar, both started.
    pub fn run_seed_pod(&mut self, name: &str, handler: &str, app_memory: i64) -> SeedPod {
        let config = pod_config(name, handler, &self.logs_dir());
        let pod = self.run_pod(&config, handler);
        let app = self.start_container(
            &pod,
            &config,
            container_config("app", 0, APP_SCRIPT, app_memory),
        );
        let sidecar = self.start_container(
            &pod,
            &config,
            container_config("sidecar", 0, SIDECAR_SCRIPT, 0),
        );
        SeedPod {
            config,
            pod,
            app,
            sidecar,
        }
    }

    /// ExecSync of `sh -c script` in `container`: (exit code, stdout, stderr).
    pub fn exec(&mut self, container: &str, script: &str) -> (i32, String, String) {
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
    pub fn exec_ok(&mut self, container: &str, script: &str) -> String {
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

    pub fn container_status(&mut self, id: &str) -> ContainerStatus {
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

    pub fn pod_status(&mut self, pod: &str) -> PodSandboxStatus {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: false,
        };
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(req).await
        })
        .status
        .expect("PodSandboxStatus without a status")
    }

    /// The host pid containerd's CRI reports for a container (verbose status): runc's
    /// container init, or the nutshell shim.
    pub fn container_pid(&mut self, id: &str) -> Option<i32> {
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        let info = self
            .call("ContainerStatus (verbose)", |mut c| async move {
                c.container_status(req).await
            })
            .info;
        info_pid(&info)
    }

    /// Like [`Cri::container_pid`], for the pod's sandbox container.
    pub fn pod_pid(&mut self, pod: &str) -> Option<i32> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: true,
        };
        let info = self
            .call("PodSandboxStatus (verbose)", |mut c| async move {
                c.pod_sandbox_status(req).await
            })
            .info;
        info_pid(&info)
    }

    /// Waits up to `timeout` for the container to exit; its status.
    pub fn wait_exited(&mut self, id: &str, timeout: Duration) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id);
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within {timeout:?}: {status:?}\n\
                 --- containerd.log ---\n{}",
                self.ctd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn stop_container(&mut self, id: &str) {
        let req = StopContainerRequest {
            container_id: id.to_string(),
            // pid 1 of a pid namespace ignores SIGTERM without a handler: SIGKILL after 2 s.
            timeout: 2,
        };
        self.call("StopContainer", |mut c| async move {
            c.stop_container(req).await
        });
    }

    pub fn remove_container(&mut self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(req).await
        });
    }

    /// StopPodSandbox and RemovePodSandbox.
    pub fn stop_and_remove_pod(&mut self, pod: &str) {
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
    }

    /// StopPodSandbox and RemovePodSandbox, then nothing of the pod may be left.
    pub fn remove_pod(&mut self, pod: &str) {
        self.stop_and_remove_pod(pod);
        self.ctd.assert_clean(Duration::from_secs(60));
        let cgroup = host_cgroup(Path::new("/sys/fs/cgroup"), pod, 4);
        assert!(cgroup.is_none(), "the pod's host cgroup stayed: {cgroup:?}");
    }
}

/// The cgroup directory below `dir` (at most `depth` levels) whose name ends with `id`.
pub fn host_cgroup(dir: &Path, id: &str, depth: usize) -> Option<PathBuf> {
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

/// `pid` of the JSON that containerd's CRI puts under `info` of a verbose status.
fn info_pid(info: &HashMap<String, String>) -> Option<i32> {
    let value: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    value["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// The pod's namespaces (kubelet gives the same options to the sandbox and each container).
pub fn namespace_options() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The pod `<name>-<handler>`, its logs in `<logs>/<handler>` (made here, as kubelet does).
pub fn pod_config(name: &str, handler: &str, logs: &Path) -> PodSandboxConfig {
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

/// A container of the busybox test image running `sh -c script`; `memory` 0: no limit.
pub fn container_config(name: &str, attempt: u32, script: &str, memory: i64) -> ContainerConfig {
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

/// The shim of `pod` (containerd starts one per sandbox, `-id <sandbox id>`, for runc and
/// nutshell alike): its pid.
pub fn pod_shim(pod: &str) -> Option<i32> {
    processes_with(&format!("-id {pod}"))
        .into_iter()
        .find(|(_, cmdline)| {
            let argv0 = cmdline.split(' ').next().unwrap_or_default();
            Path::new(argv0)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
        })
        .map(|(pid, _)| pid)
}

/// The `nutshell-vmm` of a nutshell pod: the pid its shim keeps in `vmm.pid` of the pod
/// directory, if that process is a `nutshell-vmm` whose command line names the directory.
pub fn pod_vmm(ctd: &Containerd, pod: &str) -> Result<i32, String> {
    let pod_dir = PodDirs::for_sandbox(&ctd.shim_state().join(&ctd.namespace), pod).root;
    let pid_file = pod_dir.join("vmm.pid");
    let text =
        std::fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|e| format!("{}: {text:?}: {e}", pid_file.display()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .map_err(|e| format!("the VMM {pid} of {}: {e}", pid_file.display()))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let is_vmm = exe.file_name().is_some_and(|n| n == "nutshell-vmm");
    if !is_vmm || !cmdline.contains(pod_dir.to_str().unwrap_or_default()) {
        return Err(format!(
            "pid {pid} of {} is not the pod's nutshell-vmm: {} {cmdline}",
            pid_file.display(),
            exe.display()
        ));
    }
    Ok(pid)
}

/// VmRSS of `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The processes below `pid` (children, their children, ...), not `pid` itself.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if let Some(ppid) = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<i32>().ok())
        {
            parents.push((child, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// The command name of `pid` (`/proc/<pid>/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// The parent of `pid`, if it still runs.
pub fn parent(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_and_rss_of_a_child_and_grandchild() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        std::thread::sleep(Duration::from_millis(300));
        let me = std::process::id() as i32;
        let below = descendants(me);
        let sh = child.id() as i32;
        for pid in &below {
            if parent(*pid) == Some(sh) {
                assert_eq!(comm(*pid), "sleep");
                // SAFETY: kill(2) of the sleep this test started (a child of its sh).
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(below.contains(&sh), "{below:?} lacks {sh}");
        assert!(below.len() >= 2, "sh and its sleep: {below:?}");
        assert_eq!(parent(sh), None, "sh was reaped");
        assert!(rss_kib(me) > 0);
    }
}
