//! The typed configuration of one microVM, checked before anything is created.

use std::path::{Path, PathBuf};

use crate::arch::x86_64::{layout, mptable};
use crate::devices::virtio::vsock::VsockConfig;

/// The guest command line the VMM uses unless told otherwise: a quiet console (every byte on
/// the UART is a VM exit), a triple-fault reboot so that a panic is told apart from the
/// agent's clean power-off, and no probing of absent legacy hardware.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 quiet reboot=t panic=-1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

/// Everything needed to build one microVM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// vmlinux with a PVH note, or bzImage.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub mem_mib: u64,
    pub vcpus: u32,
    /// The kernel command line; the VMM appends its device entries.
    pub cmdline: String,
    /// Where the guest console goes; `None` discards it (the last 4 KiB are still kept for
    /// error reports).
    pub serial_log: Option<PathBuf>,
    pub vsock: Option<VsockConfig>,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            mem_mib: 256,
            vcpus: 1,
            cmdline: DEFAULT_CMDLINE.to_string(),
            serial_log: None,
            vsock: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("kernel {0}: no such file")]
    KernelMissing(PathBuf),
    #[error("initrd {0}: no such file")]
    InitrdMissing(PathBuf),
    #[error("memory {mib} MiB is below the minimum of {min} MiB")]
    MemoryTooSmall { mib: u64, min: u64 },
    #[error("memory {mib} MiB is more than this host can address")]
    MemoryTooLarge { mib: u64 },
    #[error("vCPU count must be at least 1")]
    NoVcpus,
    #[error("{requested} vCPUs requested, but at most {max} are supported ({why})")]
    TooManyVcpus {
        requested: u32,
        max: u32,
        why: &'static str,
    },
    #[error("vsock socket {0}: the path already exists (another VM, or a stale socket to remove)")]
    UdsPathExists(PathBuf),
    #[error("vsock guest CID {0} is reserved (use 3 or above)")]
    ReservedCid(u64),
    #[error("serial log {0}: its directory does not exist")]
    SerialLogDir(PathBuf),
}

fn is_file(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file()).unwrap_or(false)
}

impl VmConfig {
    /// Checks everything that can be checked without creating anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_file(&self.kernel) {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !is_file(initrd) {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        if self.mem_mib < layout::MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall {
                mib: self.mem_mib,
                min: layout::MIN_MEM_MIB,
            });
        }
        if self.mem_mib > (1 << 30) {
            return Err(ConfigError::MemoryTooLarge { mib: self.mem_mib });
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > u32::from(mptable::MAX_VCPUS) {
            return Err(ConfigError::TooManyVcpus {
                requested: self.vcpus,
                max: u32::from(mptable::MAX_VCPUS),
                why: "the MP table limit",
            });
        }
        if let Some(vsock) = &self.vsock {
            if vsock.uds_path.symlink_metadata().is_ok() {
                return Err(ConfigError::UdsPathExists(vsock.uds_path.clone()));
            }
            if vsock.guest_cid < 3 {
                return Err(ConfigError::ReservedCid(vsock.guest_cid));
            }
        }
        if let Some(log) = &self.serial_log {
            let dir = log.parent().filter(|p| !p.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(ConfigError::SerialLogDir(log.clone()));
            }
        }
        Ok(())
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        let exe = std::env::current_exe().unwrap();
        VmConfig::new(exe)
    }

    #[test]
    fn accepts_defaults() {
        config().validate().unwrap();
    }

    #[test]
    fn rejects_bad_input_by_name() {
        let mut c = config();
        c.kernel = "/nonexistent/vmlinux".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/vmlinux"));
        let mut c = config();
        c.mem_mib = 16;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryTooSmall { mib: 16, .. })
        ));
        let mut c = config();
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::NoVcpus)));
        let mut c = config();
        c.vcpus = 4096;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyVcpus { .. })
        ));
        let mut c = config();
        c.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: std::env::current_exe().unwrap(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::UdsPathExists(_))));
        let mut c = config();
        c.serial_log = Some("/nonexistent-dir/console.log".into());
        assert!(matches!(c.validate(), Err(ConfigError::SerialLogDir(_))));
    }
}
