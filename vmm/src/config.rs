//! The typed configuration of one microVM, checked before anything is created.

use std::path::{Path, PathBuf};

use crate::arch::x86_64::{layout, mptable};
use crate::devices::legacy::console_log;
use crate::devices::virtio::fs::{self, FsConfig};
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
    /// The cap of a regular-file `serial_log`, past which it is rotated to `PATH.1`.
    pub serial_log_max_bytes: u64,
    pub vsock: Option<VsockConfig>,
    /// Host directories shared over virtio-fs, one device each; tags are unique.
    pub fs: Vec<FsConfig>,
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
            serial_log_max_bytes: console_log::DEFAULT_MAX_BYTES,
            vsock: None,
            fs: Vec::new(),
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
    #[error("virtio-fs tag {tag:?}: {reason}")]
    FsTag { tag: String, reason: String },
    #[error("virtio-fs tag {0:?} is given twice")]
    FsTagDuplicate(String),
    #[error("virtio-fs {tag:?}: shared directory {}: no such directory", path.display())]
    FsSharedDirMissing { tag: String, path: PathBuf },
    #[error("too many devices: {count} virtio devices, at most {max} fit")]
    TooManyDevices { count: usize, max: usize },
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
        for (i, share) in self.fs.iter().enumerate() {
            if let Some(reason) = fs::tag_problem(&share.tag) {
                return Err(ConfigError::FsTag {
                    tag: share.tag.clone(),
                    reason,
                });
            }
            if self.fs[..i].iter().any(|other| other.tag == share.tag) {
                return Err(ConfigError::FsTagDuplicate(share.tag.clone()));
            }
            if !share.shared_dir.is_dir() {
                return Err(ConfigError::FsSharedDirMissing {
                    tag: share.tag.clone(),
                    path: share.shared_dir.clone(),
                });
            }
        }
        let devices = usize::from(self.vsock.is_some()) + self.fs.len();
        let max = layout::virtio_device_limit();
        if devices > max {
            return Err(ConfigError::TooManyDevices {
                count: devices,
                max,
            });
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

    fn share(tag: &str, dir: &str) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            shared_dir: dir.into(),
        }
    }

    #[test]
    fn fs_shares_are_checked_by_name() {
        let tmp = std::env::temp_dir();
        let tmp = tmp.to_str().unwrap();
        let mut c = config();
        c.fs = vec![share("data", tmp), share("other", "/")];
        c.validate().unwrap();

        c.fs = vec![share("data", "/nonexistent/share")];
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::FsSharedDirMissing { .. }));
        assert!(err.to_string().contains("/nonexistent/share"), "{err}");
        // A file is not a directory.
        let exe = std::env::current_exe().unwrap();
        c.fs = vec![share("data", exe.to_str().unwrap())];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::FsSharedDirMissing { .. })
        ));

        c.fs = vec![share("", tmp)];
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let long = "t".repeat(37);
        c.fs = vec![share(&long, tmp)];
        let err = c.validate().unwrap_err();
        assert!(
            err.to_string().contains(&long) && err.to_string().contains("37 bytes"),
            "{err}"
        );
        c.fs = vec![share(&"t".repeat(36), tmp)];
        c.validate().unwrap();
        c.fs = vec![share("a b", tmp)];
        assert!(matches!(c.validate(), Err(ConfigError::FsTag { .. })));
        c.fs = vec![share("data", tmp), share("data", "/")];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::FsTagDuplicate(t)) if t == "data"
        ));
        c.fs = (0..40).map(|i| share(&format!("t{i}"), tmp)).collect();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices { count: 40, .. })
        ));
    }
}
