//! Running the `nutshell` CLI from xtask commands (demo, image benchmark) with its own state
//! and image directories and the guest artifacts of this build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nutshell_tests::pod_guest::GuestImage;

pub struct NutshellCli {
    image: GuestImage,
    dir: PathBuf,
}

impl NutshellCli {
    /// The CLI with state and images under `dir`.
    pub fn new(image: GuestImage, dir: &Path) -> NutshellCli {
        NutshellCli {
            image,
            dir: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.image.cli());
        cmd.args(args)
            .env("NUTSHELL_STATE_DIR", self.dir.join("state"))
            .env("NUTSHELL_IMAGE_STORE", self.dir.join("images"))
            .env("NUTSHELL_KERNEL", self.image.vmlinux())
            .env("NUTSHELL_INITRD", &self.image.initramfs)
            .env("NUTSHELL_VMM", &self.image.vmm);
        cmd
    }

    /// Runs `nutshell args` with its output on ours; how long it took.
    pub fn run(&self, args: &[&str]) -> Result<Duration> {
        println!("$ nutshell {}", args.join(" "));
        let started = Instant::now();
        let status = self.command(args).status().context("cannot run nutshell")?;
        if !status.success() {
            bail!("nutshell {} failed ({status})", args.join(" "));
        }
        Ok(started.elapsed())
    }

    /// Like [`NutshellCli::run`], with stdout captured: how long it took and what it printed.
    pub fn quiet(&self, args: &[&str]) -> Result<(Duration, String)> {
        let started = Instant::now();
        let output = self.command(args).output().context("cannot run nutshell")?;
        if !output.status.success() {
            bail!(
                "nutshell {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok((
            started.elapsed(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }
}
