//! The pod's VM as the shim keeps it: booted for the first container (standalone or CRI
//! sandbox), watched by a thread that reaps the VMM, and taken down with the sandbox. The
//! VMM runs in a host cgroup sized from its VM ([`spec::host_cgroup_path`], unless the
//! config's `host_cgroups` is off), made before the VMM starts and removed after its end.
//! The VMM's pid and the cgroup's record are kept in the pod directory, and the pod
//! directory's path in the bundle, so the `delete` subcommand can clean up after a shim that
//! died.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nutshell_protocol::agent::DestroySandboxRequest;
use nutshell_protocol::AgentClient;
use nutshell_runtime::host_cgroup::{self, HostCgroup};
use nutshell_runtime::pod::host_cgroup_record;
use nutshell_runtime::pod_dirs::PodDirs;
use nutshell_runtime::vm::VmSpec;
use nutshell_runtime::{host_mounts, vm};
use oci_spec::runtime::Spec;

use crate::config::ShimConfig;
use crate::error::{Result, ShimError};
use crate::mounts;
use crate::spec;

/// How long the agent may take to answer after the VMM started (nested guests are slow).
const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline of one ordinary agent call.
pub const CALL: Duration = Duration::from_secs(30);
/// How long the VMM gets to power off after the agent's Shutdown.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);
/// `sun_path` of a Unix socket holds 107 bytes and a NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The file in a container's bundle naming its pod directory.
const POD_LINK_FILE: &str = "nutshell-pod";

/// Where a pod's files are: `<state_dir>/<namespace>/pods/<name>` (see
/// [`PodDirs::for_sandbox`] for the name).
pub fn pod_dirs(config: &ShimConfig, namespace: &str, sandbox_id: &str) -> PodDirs {
    PodDirs::for_sandbox(&config.state_dir.join(namespace), sandbox_id)
}

/// Records in `bundle` which pod directory the container uses.
pub fn link_bundle(bundle: &Path, dirs: &PodDirs) -> Result<()> {
    let path = bundle.join(POD_LINK_FILE);
    std::fs::write(&path, dirs.root.as_os_str().as_encoded_bytes())
        .map_err(ShimError::io("write", &path))
}

/// The pod directory recorded in `bundle`, if any.
pub fn linked_pod(bundle: &Path) -> Option<PodDirs> {
    let text = std::fs::read_to_string(bundle.join(POD_LINK_FILE)).ok()?;
    Some(PodDirs {
        root: PathBuf::from(text.trim()),
    })
}

fn vmm_pid_file(dirs: &PodDirs) -> PathBuf {
    dirs.root.join("vmm.pid")
}

fn vmm_log(dirs: &PodDirs) -> PathBuf {
    dirs.root.join("vmm.log")
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// The VMM's end, once the monitor thread reaped it.
type VmmExit = Arc<(Mutex<Option<ExitStatus>>, Condvar)>;

/// A running pod VM with its agent's sandbox.
pub struct PodVm {
    pub dirs: PodDirs,
    pub sandbox_id: String,
    pub agent: AgentClient,
    vmm_pid: i32,
    vmm_exit: VmmExit,
    cgroup: Option<HostCgroup>,
}

impl PodVm {
    /// Boots the pod's VM and creates its sandbox from the first container's `spec`.
    /// `on_exit` runs on the monitor thread when the VMM ends, for whatever reason.
    pub fn boot(
        config: &ShimConfig,
        namespace: &str,
        sandbox_id: &str,
        first: &Spec,
        on_exit: Box<dyn FnOnce(ExitStatus) + Send>,
    ) -> Result<PodVm> {
        let dirs = pod_dirs(config, namespace, sandbox_id);
        let socket_len = dirs.vsock().as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(ShimError::InvalidArgument(format!(
                "the VM socket {} would be {socket_len} bytes, more than a Unix socket path \
                 takes: choose a shorter state_dir",
                dirs.vsock().display()
            )));
        }
        if dirs.root.exists() {
            log::warn!("cleaning up the leftovers of pod {}", dirs.root.display());
            let problems = cleanup_dead(&dirs);
            if !problems.is_empty() {
                return Err(ShimError::AlreadyExists(format!(
                    "pod directory {} is in use: {}",
                    dirs.root.display(),
                    problems.join("; ")
                )));
            }
        }
        // The share is sealed nodev,nosuid before the guest can write it.
        if let Err(e) = host_mounts::seal_share(&dirs.share()) {
            remove_files(&dirs);
            return Err(e.into());
        }
        let (memory, cpu) = spec::pod_size(first);
        let vm_spec = config.vm_spec(memory, cpu);
        log::info!(
            "pod {sandbox_id}: booting {} MiB, {} vCPU(s) from {}",
            vm_spec.mem_mib,
            vm_spec.vcpus,
            vm_spec.kernel.display()
        );
        let cgroup = match create_host_cgroup(config, &dirs, first, namespace, sandbox_id, &vm_spec)
        {
            Ok(cgroup) => cgroup,
            Err(e) => {
                remove_files(&dirs);
                return Err(e);
            }
        };
        let mut child = match vm::spawn(&vm_spec, &dirs, &vmm_log(&dirs), cgroup.as_ref()) {
            Ok(child) => child,
            Err(e) => {
                remove_cgroup(cgroup.as_ref(), sandbox_id);
                remove_files(&dirs);
                return Err(e.into());
            }
        };
        let vmm_pid = child.id() as i32;
        let _ = std::fs::write(vmm_pid_file(&dirs), vmm_pid.to_string());
        let vmm_exit: VmmExit = Arc::new((Mutex::new(None), Condvar::new()));
        let exit = vmm_exit.clone();
        std::thread::spawn(move || {
            let status = child.wait().unwrap_or_else(|e| {
                log::warn!("waiting for the VMM: {e}");
                std::os::unix::process::ExitStatusExt::from_raw(255 << 8)
            });
            let (lock, cond) = &*exit;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
            cond.notify_all();
            on_exit(status);
        });
        let booting = Booting {
            dirs: &dirs,
            sandbox_id,
            vmm_exit: &vmm_exit,
        };
        match booting.connect_and_create(first, namespace) {
            Ok(agent) => Ok(PodVm {
                dirs,
                sandbox_id: sandbox_id.to_string(),
                agent,
                vmm_pid,
                vmm_exit,
                cgroup,
            }),
            Err(e) => {
                stop_vmm(vmm_pid, &vmm_exit);
                remove_cgroup(cgroup.as_ref(), sandbox_id);
                for p in remove_files(&dirs) {
                    log::warn!("pod {sandbox_id}: {p}");
                }
                Err(e)
            }
        }
    }

    /// The VMM's exit status, once it ended.
    pub fn vmm_status(&self) -> Option<ExitStatus> {
        status_of(&self.vmm_exit)
    }

    /// Takes the pod down: the sandbox, the VM (powered off, killed after a grace period), its
    /// host cgroup, every mount of the share and the pod directory. Best effort; returns what
    /// failed.
    pub fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.vmm_status().is_none() {
            let mut req = DestroySandboxRequest::new();
            req.sandbox_id = self.sandbox_id.clone();
            if let Err(e) = self.agent.destroy_sandbox(&req, CALL) {
                problems.push(ShimError::agent("DestroySandbox", e).to_string());
            }
            if self.agent.shutdown(Duration::from_secs(5)).is_ok() {
                wait_exit(&self.vmm_exit, POWER_OFF_GRACE);
            }
        }
        stop_vmm(self.vmm_pid, &self.vmm_exit);
        if let Some(cgroup) = &self.cgroup {
            problems.extend(cgroup.remove());
        }
        problems.extend(remove_files(&self.dirs));
        problems
    }
}

fn status_of(exit: &VmmExit) -> Option<ExitStatus> {
    *exit.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits up to `timeout` for the VMM's end; whether it ended.
fn wait_exit(exit: &VmmExit, timeout: Duration) -> bool {
    let (lock, cond) = &**exit;
    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let (guard, _) = cond
        .wait_timeout_while(guard, timeout, |status| status.is_none())
        .unwrap_or_else(|p| p.into_inner());
    guard.is_some()
}

/// Kills our VMM child unless it ended, and waits until the monitor reaped it.
fn stop_vmm(pid: i32, exit: &VmmExit) {
    if status_of(exit).is_none() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait_exit(exit, Duration::from_secs(10));
    }
}

/// The host cgroup of the pod's VMM, created and recorded in the pod directory (`None` when
/// the config turns host cgroups off).
fn create_host_cgroup(
    config: &ShimConfig,
    dirs: &PodDirs,
    first: &Spec,
    namespace: &str,
    sandbox_id: &str,
    vm_spec: &VmSpec,
) -> Result<Option<HostCgroup>> {
    if !config.host_cgroups {
        return Ok(None);
    }
    let path = spec::host_cgroup_path(first, namespace, sandbox_id)?;
    let mut cgroup = HostCgroup::plan(&path, config.host_limits(vm_spec))?;
    cgroup.create_recorded(&host_cgroup_record(dirs))?;
    let limits = cgroup.limits();
    log::info!(
        "pod {sandbox_id}: host cgroup {} ({} MiB, cpu {}/{} µs)",
        path.display(),
        limits.memory_bytes >> 20,
        limits.cpu_quota_us,
        limits.cpu_period_us
    );
    Ok(Some(cgroup))
}

/// Removes the host cgroup of a VMM that is gone, logging what fails.
fn remove_cgroup(cgroup: Option<&HostCgroup>, sandbox_id: &str) {
    for problem in cgroup.map(HostCgroup::remove).unwrap_or_default() {
        log::warn!("pod {sandbox_id}: {problem}");
    }
}

fn remove_files(dirs: &PodDirs) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = host_mounts::unmount_all_below(&dirs.root) {
        problems.push(e.to_string());
    }
    if let Err(e) = mounts::remove_pod_dir(dirs) {
        problems.push(e);
    }
    problems
}

/// A pod between the VMM's start and the agent's sandbox.
struct Booting<'a> {
    dirs: &'a PodDirs,
    sandbox_id: &'a str,
    vmm_exit: &'a VmmExit,
}

impl Booting<'_> {
    fn connect_and_create(&self, first: &Spec, namespace: &str) -> Result<AgentClient> {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        let agent = loop {
            if let Some(status) = status_of(self.vmm_exit) {
                return Err(ShimError::Other(format!(
                    "the VMM exited ({status}) before the agent answered; its log ends with:\n{}\n\
                     the console ends with:\n{}",
                    tail(&vmm_log(self.dirs), 1500),
                    tail(&self.dirs.console(), 1500)
                )));
            }
            match vm::agent(self.dirs, Duration::from_secs(2)) {
                Ok(agent) => break agent,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ShimError::Other(format!(
                        "no agent after {AGENT_TIMEOUT:?}: {e}; the console ends with:\n{}",
                        tail(&self.dirs.console(), 1500)
                    )))
                }
                Err(_) => {}
            }
        };
        let req = spec::sandbox_request(first, self.sandbox_id, namespace);
        agent
            .create_sandbox(&req, CALL)
            .map_err(|e| ShimError::agent(format!("CreateSandbox {}", self.sandbox_id), e))?;
        Ok(agent)
    }
}

/// Whether `pid` is the VMM of the pod in `dirs` (its command line names the pod's socket).
fn is_pod_vmm(pid: i32, dirs: &PodDirs) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let socket = dirs.vsock();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == socket.as_os_str().as_encoded_bytes())
}

/// Cleans up a pod whose shim is gone: kills its VMM (found through `vmm.pid`), removes its
/// host cgroup (as recorded in the pod directory), unmounts everything below the pod
/// directory and removes it. Returns what it could not do.
pub fn cleanup_dead(dirs: &PodDirs) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(pid) = std::fs::read_to_string(vmm_pid_file(dirs))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        if is_pod_vmm(pid, dirs) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while nutshell_runtime::state::process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if nutshell_runtime::state::process_alive(pid) {
                problems.push(format!("the VMM (pid {pid}) does not die"));
            }
        }
    }
    problems.extend(host_cgroup::remove_recorded(&host_cgroup_record(dirs)));
    problems.extend(remove_files(dirs));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_sandbox_ids_leave_room_in_the_socket_path() {
        let a = "a".repeat(64);
        let config = ShimConfig::from_env(|_| None);
        let socket = pod_dirs(&config, "k8s.io", &a).vsock();
        assert!(
            socket.as_os_str().len() + "_65535".len() <= MAX_SOCKET_PATH - 16,
            "{} leaves room for a longer state_dir or namespace",
            socket.display()
        );
    }
}
