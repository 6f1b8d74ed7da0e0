//! PID 1 duties at boot: mount the pseudo filesystems, keep stdio on the
//! console, mount the virtio-fs share the kernel command line names
//! (`nutshell.virtiofs=<tag>`, at [`SHARED_FS_MOUNT_POINT`]), enable every
//! cgroup v2 controller for child cgroups.
//!
//! Everything here is driven by an explicit [`InitConfig`]; the agent builds
//! [`InitConfig::guest`] only when it runs as PID 1, so running it anywhere
//! else mounts nothing.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::{close, dup2};
use thiserror::Error;

use crate::cgroups::{
    parse_controller_list, subtree_control_request, CGROUP2_MOUNT_POINT, CONTROLLERS_FILE,
    SUBTREE_CONTROL_FILE,
};
use crate::config::{parse_kernel_params, KernelParamError};

/// Where the virtio-fs share named by `nutshell.virtiofs=<tag>` is mounted.
pub const SHARED_FS_MOUNT_POINT: &str = nutshell_protocol::GUEST_SHARE_MOUNT_POINT;
/// The kernel command line, once /proc is mounted.
pub const KERNEL_CMDLINE: &str = "/proc/cmdline";

/// One filesystem to mount at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// Guest mounts, in order (parents before children).
pub const GUEST_MOUNTS: [MountSpec; 7] = [
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    // A private devpts instance; /dev/ptmx of devtmpfs resolves to it (the
    // kernel looks up the "pts" directory next to the ptmx node).
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "cgroup2",
        target: CGROUP2_MOUNT_POINT,
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// The virtio-fs step of [`run`]: read `kernel_cmdline` (after the mounts) and, if it names a
/// tag with `nutshell.virtiofs=<tag>`, mount that share at `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFsStep {
    pub kernel_cmdline: PathBuf,
    pub target: PathBuf,
}

/// What [`run`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    /// Where to stage the tmpfs that replaces an initramfs root (see [`crate::root_switch`]);
    /// `None` keeps the root as it is.
    pub root_switch: Option<PathBuf>,
    /// Bring up `lo` of the guest's network namespace (hostNetwork pods use it).
    pub loopback_up: bool,
    /// Mounted in order; mount points are created first.
    pub mounts: Vec<MountSpec>,
    /// Reopened as fds 0-2 when they are not open (no /dev/console in the
    /// initramfs); `None` leaves stdio alone.
    pub console: Option<PathBuf>,
    /// cgroup v2 directory whose controllers are all enabled for children;
    /// `None` skips that step.
    pub cgroup_root: Option<PathBuf>,
    /// The virtio-fs share; `None` skips that step.
    pub shared_fs: Option<SharedFsStep>,
}

impl InitConfig {
    /// Boot sequence of the pod guest (the agent is PID 1).
    pub fn guest() -> InitConfig {
        InitConfig {
            root_switch: Some(PathBuf::from("/.nutshell-root")),
            loopback_up: true,
            mounts: GUEST_MOUNTS.to_vec(),
            console: Some(PathBuf::from("/dev/console")),
            cgroup_root: Some(PathBuf::from(CGROUP2_MOUNT_POINT)),
            shared_fs: Some(SharedFsStep {
                kernel_cmdline: PathBuf::from(KERNEL_CMDLINE),
                target: PathBuf::from(SHARED_FS_MOUNT_POINT),
            }),
        }
    }
}

/// Controllers enabled in `cgroup.subtree_control`, and those that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerReport {
    pub enabled: Vec<String>,
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Error)]
pub enum InitError {
    #[error("cannot bring up lo")]
    Loopback(#[source] Errno),
    #[error("cannot move the root off the initramfs")]
    RootSwitch(#[from] crate::root_switch::RootSwitchError),
    #[error("cannot create mount point {path}")]
    CreateMountPoint {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
    #[error("cannot open console {path} for stdio")]
    Console {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot read the kernel command line {path}")]
    ReadKernelCmdline {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    KernelParams(#[from] KernelParamError),
    #[error(
        "cannot mount the virtio-fs share {tag:?} (nutshell.virtiofs={tag}) on {target} \
         (does the VM have a virtio-fs device with that tag?)"
    )]
    SharedFs {
        tag: String,
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot read {path}")]
    ReadControllers {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Runs the boot steps of `config`. Mount failures are fatal; controllers
/// that cannot be enabled are only reported.
pub fn run(config: &InitConfig) -> Result<ControllerReport, InitError> {
    if let Some(staging) = &config.root_switch {
        if crate::root_switch::root_is_initramfs() {
            crate::root_switch::move_root_to_tmpfs(staging)?;
        }
    }
    for spec in &config.mounts {
        mount_filesystem(spec)?;
    }
    if let Some(console) = &config.console {
        ensure_stdio_open(console)?;
    }
    if let Some(step) = &config.shared_fs {
        mount_shared_fs(step)?;
    }
    if config.loopback_up {
        crate::loopback::bring_up().map_err(|errno| InitError::Loopback(Errno::from_raw(errno)))?;
    }
    match &config.cgroup_root {
        Some(root) => enable_all_controllers(root),
        None => Ok(ControllerReport::default()),
    }
}

fn mount_filesystem(spec: &MountSpec) -> Result<(), InitError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(spec.target)
        .map_err(|source| InitError::CreateMountPoint {
            path: PathBuf::from(spec.target),
            source,
        })?;
    match mount(
        Some(spec.source),
        spec.target,
        Some(spec.fstype),
        spec.flags,
        spec.data,
    ) {
        Ok(()) => Ok(()),
        // The kernel refuses to mount a superblock on top of itself: the
        // filesystem is already there (e.g. a kernel that automounts
        // devtmpfs), which is what we want.
        Err(Errno::EBUSY) => {
            log::debug!("{} already mounted on {}", spec.fstype, spec.target);
            Ok(())
        }
        Err(source) => Err(InitError::Mount {
            fstype: spec.fstype,
            target: spec.target,
            source,
        }),
    }
}

/// Mounts the share `nutshell.virtiofs=<tag>` names, if any. No mount flags: set-id files and
/// device nodes in a container image on the share behave as in a local image (the VM is the
/// boundary).
fn mount_shared_fs(step: &SharedFsStep) -> Result<Option<String>, InitError> {
    let cmdline = fs::read_to_string(&step.kernel_cmdline).map_err(|source| {
        InitError::ReadKernelCmdline {
            path: step.kernel_cmdline.clone(),
            source,
        }
    })?;
    let Some(tag) = parse_kernel_params(&cmdline)?.virtiofs_tag else {
        return Ok(None);
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&step.target)
        .map_err(|source| InitError::CreateMountPoint {
            path: step.target.clone(),
            source,
        })?;
    mount(
        Some(tag.as_str()),
        &step.target,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| InitError::SharedFs {
        tag: tag.clone(),
        target: step.target.clone(),
        source,
    })?;
    log::info!(
        "virtio-fs share {tag:?} mounted on {}",
        step.target.display()
    );
    Ok(Some(tag))
}

fn fd_is_open(fd: RawFd) -> bool {
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// The kernel opens /dev/console as fds 0-2 of init when the initramfs has
/// that node; otherwise they are closed. Fill any gap from `console` (now
/// on devtmpfs) so that output and child stdio have somewhere to go.
fn ensure_stdio_open(console: &Path) -> Result<(), InitError> {
    let missing: Vec<RawFd> = (0..=2).filter(|fd| !fd_is_open(*fd)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let console_error = |source| InitError::Console {
        path: console.to_owned(),
        source,
    };
    let fd =
        open(console, OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty()).map_err(console_error)?;
    for target in missing {
        if target != fd {
            dup2(fd, target).map_err(console_error)?;
        }
    }
    if fd > 2 {
        close(fd).map_err(console_error)?;
    }
    Ok(())
}

/// Enables, for the children of `cgroup_dir`, every controller listed in its
/// `cgroup.controllers`: one write of `+a +b ...`, or one write per
/// controller if the kernel refuses the batch.
pub fn enable_all_controllers(cgroup_dir: &Path) -> Result<ControllerReport, InitError> {
    let controllers_path = cgroup_dir.join(CONTROLLERS_FILE);
    let available = fs::read_to_string(&controllers_path)
        .map(|content| parse_controller_list(&content))
        .map_err(|source| InitError::ReadControllers {
            path: controllers_path,
            source,
        })?;
    let subtree_control = cgroup_dir.join(SUBTREE_CONTROL_FILE);
    if available.is_empty()
        || fs::write(&subtree_control, subtree_control_request(&available)).is_ok()
    {
        return Ok(ControllerReport {
            enabled: available,
            failed: Vec::new(),
        });
    }
    let mut report = ControllerReport::default();
    for controller in available {
        match fs::write(&subtree_control, subtree_control_request(&[&controller])) {
            Ok(()) => report.enabled.push(controller),
            Err(err) => report.failed.push((controller, err.to_string())),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mounts_are_ordered_parents_first() {
        for (index, spec) in GUEST_MOUNTS.iter().enumerate() {
            for later in &GUEST_MOUNTS[index + 1..] {
                assert!(
                    !Path::new(spec.target).starts_with(later.target),
                    "{} must be mounted after {}",
                    spec.target,
                    later.target
                );
            }
        }
        let targets: Vec<_> = GUEST_MOUNTS.iter().map(|spec| spec.target).collect();
        for required in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
            "/sys/fs/cgroup",
        ] {
            assert!(targets.contains(&required), "{required} missing");
        }
    }

    #[test]
    fn devpts_is_a_new_instance_with_open_ptmx() {
        let devpts = GUEST_MOUNTS
            .iter()
            .find(|spec| spec.fstype == "devpts")
            .unwrap();
        let data = devpts.data.unwrap();
        assert!(data.contains("newinstance") && data.contains("ptmxmode=0666"));
    }

    #[test]
    fn config_without_steps_does_nothing() {
        let config = InitConfig {
            root_switch: None,
            loopback_up: false,
            mounts: Vec::new(),
            console: None,
            cgroup_root: None,
            shared_fs: None,
        };
        assert_eq!(run(&config).unwrap(), ControllerReport::default());
    }

    #[test]
    fn guest_mounts_the_share_under_run() {
        let step = InitConfig::guest().shared_fs.unwrap();
        assert_eq!(step.kernel_cmdline, Path::new("/proc/cmdline"));
        assert_eq!(step.target, Path::new("/run/nutshell-share"));
        assert!(GUEST_MOUNTS.iter().any(|m| m.target == "/run"));
    }

    #[test]
    fn shared_fs_step_without_a_tag_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        fs::write(&cmdline, "console=ttyS0 quiet\n").unwrap();
        let step = SharedFsStep {
            kernel_cmdline: cmdline,
            target: dir.path().join("shared"),
        };
        assert_eq!(mount_shared_fs(&step).unwrap(), None);
        assert!(!step.target.exists());
    }

    #[test]
    fn shared_fs_failures_name_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let step = SharedFsStep {
            kernel_cmdline: dir.path().join("missing"),
            target: dir.path().join("shared"),
        };
        let err = mount_shared_fs(&step).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        fs::write(dir.path().join("empty"), "nutshell.virtiofs=\n").unwrap();
        let step = SharedFsStep {
            kernel_cmdline: dir.path().join("empty"),
            ..step
        };
        assert!(matches!(
            mount_shared_fs(&step),
            Err(InitError::KernelParams(KernelParamError::EmptyVirtiofsTag))
        ));

        // No virtio-fs device has this tag here: the mount fails (EINVAL, ENODEV or EPERM)
        // and the error names the tag.
        fs::write(
            dir.path().join("tagged"),
            "quiet nutshell.virtiofs=nutshell-test-no-such-tag\n",
        )
        .unwrap();
        let step = SharedFsStep {
            kernel_cmdline: dir.path().join("tagged"),
            ..step
        };
        let err = mount_shared_fs(&step).unwrap_err();
        assert!(matches!(err, InitError::SharedFs { .. }), "{err}");
        assert!(
            err.to_string().contains("nutshell-test-no-such-tag"),
            "{err}"
        );
    }

    #[test]
    fn all_available_controllers_are_requested_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(CONTROLLERS_FILE),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(dir.path().join(SUBTREE_CONTROL_FILE), "").unwrap();

        let report = enable_all_controllers(dir.path()).unwrap();
        assert_eq!(report.enabled, ["cpuset", "cpu", "io", "memory", "pids"]);
        assert!(report.failed.is_empty());
        assert_eq!(
            fs::read_to_string(dir.path().join(SUBTREE_CONTROL_FILE)).unwrap(),
            "+cpuset +cpu +io +memory +pids"
        );
    }

    #[test]
    fn unwritable_subtree_control_reports_every_controller() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CONTROLLERS_FILE), "cpu memory\n").unwrap();
        // A directory in place of the file makes every write fail.
        fs::create_dir(dir.path().join(SUBTREE_CONTROL_FILE)).unwrap();

        let report = enable_all_controllers(dir.path()).unwrap();
        assert!(report.enabled.is_empty());
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(failed, ["cpu", "memory"]);
    }

    #[test]
    fn missing_controllers_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = enable_all_controllers(dir.path()).unwrap_err();
        assert!(err.to_string().contains(CONTROLLERS_FILE), "{err}");
    }
}
