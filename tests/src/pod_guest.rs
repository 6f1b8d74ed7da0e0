//! The pod guest as end-to-end tests and benchmarks boot it: the guest kernel, the guest
//! initramfs (static agent as /init) and `nutshell-vmm`, plus a handle on one running VMM.
//!
//! Artifacts are built on the developer's side of the ground (cargo and the kernel cache are
//! there) and named to the KVM host through `NUTSHELL_GUEST_*` variables.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nutshell_protocol::client::AgentClient;
use nutshell_protocol::AGENT_VSOCK_PORT;

use crate::child_wait::wait_or_kill;
use crate::ground as assets;

pub const ENV_KERNEL_DIR: &str = "NUTSHELL_GUEST_KERNEL_DIR";
pub const ENV_INITRAMFS: &str = "NUTSHELL_GUEST_INITRAMFS";
pub const ENV_VMM: &str = "NUTSHELL_VMM_BIN";
/// The test initramfs: the agent initramfs plus the test container image under
/// [`TEST_IMAGE_ROOTFS`] (`rootfs/build-guest.sh --with-test-image`).
pub const ENV_TEST_INITRAMFS: &str = "NUTSHELL_GUEST_TEST_INITRAMFS";
/// Where the test initramfs carries the busybox + nutshell-probe rootfs.
pub const TEST_IMAGE_ROOTFS: &str = "/images/busybox";

#[derive(Debug, thiserror::Error)]
pub enum GuestImageError {
    #[error("{what}: {reason}")]
    Build { what: &'static str, reason: String },
    #[error("{var} names {path}, which does not exist")]
    Missing { var: &'static str, path: PathBuf },
}

/// Everything a pod-guest boot needs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel_dir: PathBuf,
    pub initramfs: PathBuf,
    pub vmm: PathBuf,
}

fn build_error(what: &'static str) -> impl Fn(String) -> GuestImageError {
    move |reason| GuestImageError::Build { what, reason }
}

/// Runs a build command; returns the last line of its stdout.
fn run_build(cmd: &mut Command, what: &'static str) -> Result<String, GuestImageError> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| build_error(what)(format!("cannot run: {e}")))?;
    if !out.status.success() {
        return Err(build_error(what)(format!("failed with {}", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string())
}

impl GuestImage {
    /// Builds (incrementally, kernel from its cache) the guest kernel, initramfs and VMM.
    pub fn build() -> Result<GuestImage, GuestImageError> {
        let root = assets::repo_root();
        let kernel =
            assets::kernel("guest").map_err(|e| build_error("guest kernel")(e.to_string()))?;
        let initramfs = run_build(
            Command::new(root.join("rootfs/build-guest.sh")).arg(root.join("build/rootfs")),
            "guest initramfs (rootfs/build-guest.sh)",
        )?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run_build(
            Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "nutshell-vmm",
                    "-p",
                    "nutshell-cli",
                    "-p",
                    "nutshell-shim",
                ])
                .current_dir(&root),
            "nutshell-vmm, nutshell and containerd-shim-nutshell-v2 (cargo build --release)",
        )?;
        Ok(GuestImage {
            kernel_dir: kernel.dir,
            initramfs: PathBuf::from(initramfs),
            vmm: root.join("target/release/nutshell-vmm"),
        })
    }

    /// Like [`GuestImage::build`], with the test initramfs (test container image under
    /// [`TEST_IMAGE_ROOTFS`]) as `initramfs`.
    pub fn build_test() -> Result<GuestImage, GuestImageError> {
        let root = assets::repo_root();
        let image_dir = run_build(
            Command::new(root.join("rootfs/build-test-image.sh"))
                .arg(root.join("build/test-image")),
            "test image (rootfs/build-test-image.sh)",
        )?;
        let test_initramfs = run_build(
            Command::new(root.join("rootfs/build-guest.sh"))
                .arg(root.join("build/rootfs"))
                .arg("--with-test-image")
                .arg(image_dir),
            "test initramfs (rootfs/build-guest.sh --with-test-image)",
        )?;
        let mut image = GuestImage::build()?;
        image.initramfs = PathBuf::from(test_initramfs);
        Ok(image)
    }

    /// The image named by the environment, if it is set.
    pub fn from_env() -> Result<Option<GuestImage>, GuestImageError> {
        Self::from_env_with(ENV_INITRAMFS)
    }

    /// The test image named by the environment ([`ENV_TEST_INITRAMFS`]), if it is set.
    pub fn from_env_test() -> Result<Option<GuestImage>, GuestImageError> {
        Self::from_env_with(ENV_TEST_INITRAMFS)
    }

    fn from_env_with(initramfs_var: &'static str) -> Result<Option<GuestImage>, GuestImageError> {
        let (Some(k), Some(i), Some(v)) = (
            std::env::var_os(ENV_KERNEL_DIR),
            std::env::var_os(initramfs_var),
            std::env::var_os(ENV_VMM),
        ) else {
            return Ok(None);
        };
        let image = GuestImage {
            kernel_dir: k.into(),
            initramfs: i.into(),
            vmm: v.into(),
        };
        for (var, path) in [
            (ENV_KERNEL_DIR, image.vmlinux()),
            (initramfs_var, image.initramfs.clone()),
            (ENV_VMM, image.vmm.clone()),
        ] {
            if !path.exists() {
                return Err(GuestImageError::Missing { var, path });
            }
        }
        Ok(Some(image))
    }

    /// From the environment, or built here. Panics with the reason (for tests).
    pub fn locate() -> GuestImage {
        match GuestImage::from_env() {
            Ok(Some(image)) => image,
            Ok(None) => GuestImage::build().unwrap_or_else(|e| panic!("pod guest image: {e}")),
            Err(e) => panic!("pod guest image: {e}"),
        }
    }

    /// The test image from the environment, or built here. Panics with the reason.
    pub fn locate_test() -> GuestImage {
        match GuestImage::from_env_test() {
            Ok(Some(image)) => image,
            Ok(None) => {
                GuestImage::build_test().unwrap_or_else(|e| panic!("test guest image: {e}"))
            }
            Err(e) => panic!("test guest image: {e}"),
        }
    }

    /// The `nutshell` CLI, built beside the VMM.
    pub fn cli(&self) -> PathBuf {
        self.vmm.with_file_name("nutshell")
    }

    pub fn vmlinux(&self) -> PathBuf {
        self.kernel_dir.join("vmlinux")
    }

    pub fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            (ENV_KERNEL_DIR.into(), self.kernel_dir.clone().into()),
            (ENV_INITRAMFS.into(), self.initramfs.clone().into()),
            (ENV_VMM.into(), self.vmm.clone().into()),
        ]
    }

    /// The environment naming this image as the test image (for [`GuestImage::from_env_test`]).
    pub fn env_test(&self) -> Vec<(OsString, OsString)> {
        vec![
            (ENV_KERNEL_DIR.into(), self.kernel_dir.clone().into()),
            (ENV_TEST_INITRAMFS.into(), self.initramfs.clone().into()),
            (ENV_VMM.into(), self.vmm.clone().into()),
        ]
    }
}

/// How to start one VMM.
#[derive(Clone, Debug)]
pub struct VmmLaunch {
    pub vcpus: u32,
    pub mem_mib: u64,
    pub cmdline_append: Option<String>,
    /// Where the guest console goes; default: `console.log` in the run directory.
    pub serial_log: Option<PathBuf>,
    /// `--serial-log-max-kib`: the console log's cap (default: the VMM's).
    pub serial_log_max_kib: Option<u64>,
    /// A virtio-fs share (tag, host directory): `--fs TAG=DIR`, and
    /// `nutshell.virtiofs=TAG` on the command line so that the agent mounts it at
    /// `/run/nutshell-share`.
    pub fs: Option<(String, PathBuf)>,
}

impl Default for VmmLaunch {
    fn default() -> Self {
        VmmLaunch {
            vcpus: 1,
            mem_mib: 256,
            cmdline_append: None,
            serial_log: None,
            serial_log_max_kib: None,
            fs: None,
        }
    }
}

/// A running `nutshell-vmm` in its own scratch directory. Dropping it kills the VMM if it is
/// still running and removes the directory.
pub struct Vmm {
    pub child: Child,
    pub dir: PathBuf,
    pub uds: PathBuf,
    pub console_log: PathBuf,
    pub started: Instant,
}

/// How a VMM process ended.
#[derive(Debug)]
pub struct VmmExit {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Vmm {
    pub fn spawn(image: &GuestImage, launch: &VmmLaunch) -> std::io::Result<Vmm> {
        Self::spawn_with(image, launch, Stdio::null())
    }

    /// Like [`Vmm::spawn`], with the VMM's stdout as given (the benchmark reads the console
    /// from it with `serial_log = /dev/stdout`).
    pub fn spawn_with(
        image: &GuestImage,
        launch: &VmmLaunch,
        stdout: Stdio,
    ) -> std::io::Result<Vmm> {
        let dir = scratch_dir("vmm")?;
        let uds = dir.join("vsock.sock");
        let console_log = launch
            .serial_log
            .clone()
            .unwrap_or_else(|| dir.join("console.log"));
        let mut cmd = Command::new(&image.vmm);
        cmd.arg("--kernel")
            .arg(image.vmlinux())
            .arg("--initrd")
            .arg(&image.initramfs)
            .args(["--mem-mib", &launch.mem_mib.to_string()])
            .args(["--vcpus", &launch.vcpus.to_string()])
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--serial-log")
            .arg(&console_log)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        if let Some(kib) = launch.serial_log_max_kib {
            cmd.args(["--serial-log-max-kib", &kib.to_string()]);
        }
        let mut append: Vec<String> = launch.cmdline_append.iter().cloned().collect();
        if let Some((tag, dir)) = &launch.fs {
            let mut share = OsString::from(format!("{tag}="));
            share.push(dir);
            cmd.arg("--fs").arg(share);
            append.push(format!("nutshell.virtiofs={tag}"));
        }
        if !append.is_empty() {
            cmd.args(["--cmdline-append", &append.join(" ")]);
        }
        let started = Instant::now();
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Vmm {
            child,
            dir,
            uds,
            console_log,
            started,
        })
    }

    /// Connects to the guest agent through the hybrid vsock socket.
    pub fn agent(&self, timeout: Duration) -> Result<AgentClient, String> {
        AgentClient::connect_hybrid_vsock(&self.uds, AGENT_VSOCK_PORT, timeout)
            .map_err(|e| format!("cannot reach the agent: {e}\nconsole:\n{}", self.console()))
    }

    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// Asks the agent to power the guest off and checks that the VMM exits 0 (panics with its
    /// stderr otherwise).
    pub fn shut_down(&mut self, agent: &AgentClient) {
        agent
            .shutdown(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("Shutdown: {e}"));
        let exit = self
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exit.status.code(), Some(0), "stderr: {}", exit.stderr);
    }

    /// Waits for the VMM to exit; kills it at the deadline and says so.
    pub fn wait(&mut self, deadline: Duration) -> Result<VmmExit, String> {
        match wait_or_kill(&mut self.child, deadline) {
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                Ok(VmmExit { status, stderr })
            }
            Ok(None) => Err(format!(
                "nutshell-vmm did not exit within {deadline:?}; killed. console:\n{}",
                self.console()
            )),
            Err(e) => Err(format!("cannot wait for nutshell-vmm: {e}")),
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory under the temporary directory.
pub fn scratch_dir(what: &str) -> std::io::Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("nutshell-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Whether `path` is still there (for leftover checks).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
