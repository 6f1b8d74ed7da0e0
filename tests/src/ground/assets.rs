//! What a run needs from the repository and the host: kernels (built by kernel-config/build.sh),
//! initramfs archives (rootfs/build-initramfs.sh), QEMU and a static busybox.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::GroundError;

/// The workspace root: `NUTSHELL_REPO`, or the parent of this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("NUTSHELL_REPO") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("crate dir has a parent")
            .to_owned(),
    }
}

/// A built kernel: the directory `kernel-config/build.sh` printed, and the images in it.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub dir: PathBuf,
    pub bz_image: PathBuf,
    pub vmlinux: PathBuf,
}

/// Builds (or finds in the cache, at once) the `guest` or `test-host` kernel with
/// `kernel-config/build.sh`. A build takes minutes; concurrent callers wait on its lock.
pub fn kernel(flavor: &str) -> Result<Kernel, GroundError> {
    let script = repo_root().join("kernel-config/build.sh");
    let fail = |detail: String| GroundError::KernelBuild {
        flavor: flavor.to_owned(),
        script: script.clone(),
        detail,
    };
    let out = Command::new("bash")
        .arg(&script)
        .arg(flavor)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run bash: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(fail(format!(
            "{}; its stderr ends:\n{}",
            out.status,
            last_lines(&stderr, 30)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    let kernel = Kernel {
        bz_image: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        dir,
    };
    if !kernel.bz_image.is_file() {
        return Err(fail(format!(
            "its last stdout line {:?} is not a directory holding bzImage",
            kernel.dir
        )));
    }
    Ok(kernel)
}

/// The L1 kernel image: `NUTSHELL_L1_KERNEL` (a bzImage) or the `test-host` build.
pub(crate) fn l1_kernel() -> Result<PathBuf, GroundError> {
    match std::env::var_os("NUTSHELL_L1_KERNEL") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if path.is_file() {
                Ok(path)
            } else {
                Err(GroundError::MissingTool {
                    tool: "NUTSHELL_L1_KERNEL",
                    path,
                    problem: "is not a file".into(),
                })
            }
        }
        _ => Ok(kernel("test-host")?.bz_image),
    }
}

/// A static busybox for initramfs archives: `NUTSHELL_BUSYBOX` or /bin/busybox.
pub fn busybox() -> Result<PathBuf, GroundError> {
    let path = std::env::var_os("NUTSHELL_BUSYBOX")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(GroundError::MissingTool {
            tool: "busybox",
            path,
            problem: "does not exist (apt-get install busybox-static, or set NUTSHELL_BUSYBOX)"
                .into(),
        })
    }
}

/// `qemu-system-x86_64`: `NUTSHELL_QEMU` or the first one on PATH.
pub fn qemu() -> Result<PathBuf, GroundError> {
    if let Some(path) = std::env::var_os("NUTSHELL_QEMU").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let name = "qemu-system-x86_64";
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| GroundError::MissingTool {
            tool: "qemu-system-x86_64",
            path: PathBuf::from(name),
            problem: "is not on PATH (apt-get install qemu-system-x86, or set NUTSHELL_QEMU)"
                .into(),
        })
}

/// One `--add SRC:DST` of an initramfs.
#[derive(Clone, Debug)]
pub struct InitramfsFile {
    pub src: PathBuf,
    pub dst: String,
}

/// Builds an uncompressed newc archive with `rootfs/build-initramfs.sh` and returns its path.
pub fn build_initramfs(
    out: &Path,
    init: &Path,
    files: &[InitramfsFile],
    dirs: &[&str],
) -> Result<PathBuf, GroundError> {
    let script = repo_root().join("rootfs/build-initramfs.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg("-o").arg(out).arg("--init").arg(init);
    for file in files {
        let mut spec = OsString::from(&file.src);
        spec.push(":");
        spec.push(&file.dst);
        cmd.arg("--add").arg(spec);
    }
    for dir in dirs {
        cmd.arg("--dir").arg(dir);
    }
    let fail = |detail: String| GroundError::Initramfs {
        out: out.to_owned(),
        script: script.clone(),
        detail,
    };
    let result = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run bash: {e}")))?;
    if !result.status.success() {
        let stderr = String::from_utf8_lossy(&result.stderr);
        return Err(fail(format!(
            "{}: {}",
            result.status,
            last_lines(&stderr, 10)
        )));
    }
    let stdout = String::from_utf8_lossy(&result.stdout);
    Ok(PathBuf::from(stdout.lines().last().unwrap_or("").trim()))
}

pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
