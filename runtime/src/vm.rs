//! Starting a pod's VM: `nutshell-vmm` with the guest kernel and initramfs, the hybrid vsock
//! socket and the virtio-fs share, in its own session so a terminal's Ctrl-C reaches the
//! runtime (which tears down in order) rather than the VMM, and in the pod's host cgroup
//! ([`crate::host_cgroup`], sized by [`VmSpec::host_limits`]) from its first instruction.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nutshell_protocol::{AgentClient, AGENT_VSOCK_PORT};
use serde::{Deserialize, Serialize};

use crate::host_cgroup::{HostCgroup, Limits, Overhead};
use crate::pod_dirs::{PodDirs, SHARE_TAG};
use crate::RuntimeError;

/// What a pod VM is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub vmm: PathBuf,
    /// vmlinux (PVH) or bzImage.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub mem_mib: u64,
    pub vcpus: u32,
    /// The pod's cpu limit (millicores; 0: none). Without one the VMM's host cgroup gets no
    /// cpu quota, as a pod without cpu limits gets none under runc.
    #[serde(default)]
    pub cpu_limit_millicores: u64,
}

impl VmSpec {
    /// Checks that the files exist, naming the one that does not.
    pub fn check(&self) -> Result<(), RuntimeError> {
        for (what, path) in [
            ("the VMM (nutshell-vmm)", &self.vmm),
            ("the guest kernel", &self.kernel),
            ("the guest initramfs", &self.initrd),
        ] {
            if !path.is_file() {
                return Err(RuntimeError::Missing {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The limits of the host cgroup of a VMM running this VM: its memory and, when the pod
    /// has a cpu limit, one core per vCPU, plus the VMM's `overhead`.
    pub fn host_limits(&self, overhead: Overhead) -> Limits {
        let limits = Limits::for_vm(self.mem_mib, self.vcpus, overhead);
        if self.cpu_limit_millicores == 0 {
            limits.without_cpu_quota()
        } else {
            limits
        }
    }
}

/// Guest memory for a pod: its containers' memory limits plus room for the guest kernel and
/// agent, never below `floor_mib`.
pub fn size_memory(limits_bytes: u64, floor_mib: u64) -> u64 {
    const GUEST_OVERHEAD_MIB: u64 = 96;
    (limits_bytes.div_ceil(1 << 20) + GUEST_OVERHEAD_MIB).max(floor_mib)
}

/// vCPUs for a pod: its cpu limits rounded up, at least one.
pub fn size_vcpus(limit_millicores: u64) -> u32 {
    u32::try_from(limit_millicores.div_ceil(1000))
        .unwrap_or(u32::MAX)
        .clamp(1, 32)
}

/// Spawns the VMM of the pod in `dirs`; its stderr goes to `stderr_log`. With a `cgroup`
/// (created), the VMM joins it before it runs.
pub fn spawn(
    spec: &VmSpec,
    dirs: &PodDirs,
    stderr_log: &Path,
    cgroup: Option<&HostCgroup>,
) -> Result<Child, RuntimeError> {
    spec.check()?;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_log)
        .map_err(RuntimeError::io("open", stderr_log))?;
    let mut cmd = Command::new(&spec.vmm);
    cmd.arg("--kernel")
        .arg(&spec.kernel)
        .arg("--initrd")
        .arg(&spec.initrd)
        .args(["--mem-mib", &spec.mem_mib.to_string()])
        .args(["--vcpus", &spec.vcpus.to_string()])
        .arg("--vsock-uds")
        .arg(dirs.vsock())
        .arg("--serial-log")
        .arg(dirs.console())
        .arg("--fs")
        .arg(format!("{SHARE_TAG}={}", dirs.share().display()))
        .args([
            "--cmdline-append",
            &format!("nutshell.virtiofs={SHARE_TAG}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(cgroup) = cgroup {
        cgroup.join_on_exec(&mut cmd)?;
    }
    // SAFETY: setsid(2) in the forked child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| match cgroup {
        // The error may come from joining the cgroup in the child: say so.
        Some(cgroup) => RuntimeError::Io {
            what: "start",
            path: spec.vmm.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "{e} (exec, or joining host cgroup {})",
                    cgroup.path().display()
                ),
            ),
        },
        None => RuntimeError::io("start", &spec.vmm)(e),
    })
}

/// Connects to the agent of the VM behind `dirs`.
pub fn agent(dirs: &PodDirs, timeout: Duration) -> Result<AgentClient, RuntimeError> {
    AgentClient::connect_hybrid_vsock(&dirs.vsock(), AGENT_VSOCK_PORT, timeout)
        .map_err(|e| RuntimeError::Agent(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_size_follows_the_limits() {
        assert_eq!(size_memory(0, 256), 256);
        assert_eq!(size_memory(512 << 20, 256), 608);
        assert_eq!(size_vcpus(0), 1);
        assert_eq!(size_vcpus(1500), 2);
    }

    #[test]
    fn the_host_cgroup_holds_the_vm_and_the_overhead() {
        let spec = VmSpec {
            vmm: PathBuf::from("/bin/true"),
            kernel: PathBuf::from("/bin/true"),
            initrd: PathBuf::from("/bin/true"),
            mem_mib: 608,
            vcpus: 2,
            cpu_limit_millicores: 1500,
        };
        let limits = spec.host_limits(Overhead::default());
        assert_eq!(limits.memory_bytes, (608 + 64) << 20);
        assert_eq!(
            (limits.cpu_quota_us, limits.cpu_period_us),
            (225_000, 100_000)
        );
        let unlimited = VmSpec {
            cpu_limit_millicores: 0,
            ..spec
        };
        assert_eq!(
            unlimited.host_limits(Overhead::default()).cpu_quota_us,
            u64::MAX,
            "no cpu limit, no quota"
        );
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let spec = VmSpec {
            vmm: PathBuf::from("/bin/true"),
            kernel: PathBuf::from("/nope/vmlinux"),
            initrd: PathBuf::from("/bin/true"),
            mem_mib: 256,
            vcpus: 1,
            cpu_limit_millicores: 0,
        };
        let err = spec.check().unwrap_err().to_string();
        assert!(
            err.contains("guest kernel") && err.contains("/nope/vmlinux"),
            "{err}"
        );
    }
}
