//! What a guest boot needs (kernel, initramfs, VMM), built on this side of the ground.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_tests::ground::{self, GroundCommand};
use nutshell_tests::pod_guest::GuestImage;

/// Builds (or finds in the cache) a kernel flavor and links it as build/kernel/<flavor>.
pub fn kernel(flavor: &str) -> Result<PathBuf> {
    let kernel = ground::kernel(flavor)?;
    let link_dir = ground::repo_root().join("build/kernel");
    std::fs::create_dir_all(&link_dir)?;
    let link = link_dir.join(flavor);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&kernel.dir, &link)
        .with_context(|| format!("cannot link {}", link.display()))?;
    Ok(kernel.dir)
}

/// Builds the guest kernel, initramfs and VMM, and prints what was built.
pub fn build_all() -> Result<GuestImage> {
    kernel("guest")?;
    let image = GuestImage::build()?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!(
        "guest kernel:    {} ({} bytes)",
        image.vmlinux().display(),
        size(&image.vmlinux())
    );
    println!(
        "guest initramfs: {} ({} bytes)",
        image.initramfs.display(),
        size(&image.initramfs)
    );
    println!(
        "vmm:             {} ({} bytes)",
        image.vmm.display(),
        size(&image.vmm)
    );
    Ok(image)
}

/// The image named by the environment, for inner commands on the KVM host.
pub fn from_env() -> Result<GuestImage> {
    GuestImage::from_env()?.context("NUTSHELL_GUEST_* is not set (run through `cargo xtask`)")
}

/// Runs this xtask again with `args` on a KVM host (nested where needed), with the image in
/// its environment.
pub fn run_on_kvm_host(image: &GuestImage, args: &[&str], deadline: Duration) -> Result<()> {
    kernel("test-host")?;
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut cmd = GroundCommand::new(exe)
        .args(args.iter().copied())
        .deadline(deadline);
    for (key, value) in image.env() {
        cmd = cmd.env(key, value);
    }
    let outcome = ground::run(cmd)?;
    if !outcome.status.success() {
        bail!(
            "`xtask {}` failed on the KVM host ({})",
            args.join(" "),
            outcome.status
        );
    }
    Ok(())
}
