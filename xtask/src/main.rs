//! `cargo xtask <command>`: build orchestration for nutshell.
//!
//! - `build`: guest kernel (cached by content hash), guest initramfs, release binaries.
//! - `kernel [guest|test-host|all]`: just the kernels.
//! - `demo`: build, then on a KVM host (nested when needed) run the seed's pod
//!   (`examples/demo-pod.yaml`) with the `nutshell` CLI and `nutshell inspect` it;
//!   `demo-guest` is the bare boot-and-talk check of one guest.
//! - `test`: build, then every test of the workspace (unit and end-to-end).
//! - `bench [--boots N]`: boot latency and VMM memory, beside QEMU on the same kernel.
//! - `bench-images [--rounds N]`: pod start from a small and a 500 MB image (after unpack).
//! - `bench-cri [--pods N]`: RunPodSandbox and two StartContainer through containerd's CRI,
//!   runtime handler `nutshell` beside `runc`, and each pod's host memory.

mod artifacts;
mod bench;
mod bench_cri;
mod bench_images;
mod demo;
mod nutshell_cli;

use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .map(|(c, r)| (c.as_str(), r))
        .unwrap_or(("help", &[]));
    match cmd {
        "kernel" => {
            let flavors: &[&str] = match rest.first().map(String::as_str) {
                None | Some("guest") => &["guest"],
                Some("test-host") => &["test-host"],
                Some("all") => &["guest", "test-host"],
                Some(other) => bail!("unknown kernel flavor '{other}' (guest, test-host or all)"),
            };
            for flavor in flavors {
                println!("{}", artifacts::kernel(flavor)?.display());
            }
            Ok(())
        }
        "build" => artifacts::build_all().map(|_| ()),
        "demo" => demo::run(),
        "demo-guest" => demo::boot_and_talk(),
        "demo-pod" => demo::demo_pod(),
        "test" => test(rest),
        "bench" => bench::run(rest),
        "bench-inner" => bench::inner(rest),
        "bench-images" => bench_images::run(rest),
        "bench-images-inner" => bench_images::inner(rest),
        "bench-cri" => bench_cri::run(rest),
        "bench-cri-inner" => bench_cri::inner(rest),
        _ => {
            eprintln!("usage: cargo xtask <build|kernel [guest|test-host|all]|demo|test|bench [--boots N]|bench-images|bench-cri [--pods N]>");
            Ok(())
        }
    }
}

/// README's test command: builds everything, then runs every test of the workspace.
fn test(extra: &[String]) -> Result<()> {
    let image = artifacts::build_all()?;
    artifacts::kernel("test-host")?;
    let status = Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .envs(image.env())
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}
