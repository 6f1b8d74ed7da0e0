//! `cargo xtask bench`: VMM start to agent ready over N boots, and the VMM's own memory,
//! for nutshell-vmm and, in the same run on the same kernel and initramfs, QEMU `-M microvm`.
//!
//! "Ready" is measured the same way for both: the agent's ready line on the serial console.
//! For nutshell-vmm the first successful agent call over hybrid vsock is reported as well.
//! Memory is the VMM process's RSS without the guest RAM mapping.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nutshell_tests::pod_guest::{GuestImage, Vmm, VmmLaunch};
use nutshell_vmm::config::DEFAULT_CMDLINE;

use crate::artifacts;
use crate::demo::{AGENT_TIMEOUT, CALL_TIMEOUT};

const GUEST_MEM_MIB: u64 = 256;
const READY_MARKER: &str = "ready";

pub fn run(args: &[String]) -> Result<()> {
    let image = artifacts::build_all()?;
    let mut inner = vec!["bench-inner"];
    inner.extend(args.iter().map(String::as_str));
    artifacts::run_on_kvm_host(&image, &inner, Duration::from_secs(900))
}

fn boots_arg(args: &[String]) -> Result<usize> {
    match args.iter().position(|a| a == "--boots") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .context("--boots needs a positive number"),
        None => Ok(10),
    }
}

/// Reads `child`'s stdout on a thread and reports when a line contains the ready marker.
fn watch_ready(child: &mut Child) -> Result<mpsc::Receiver<Instant>> {
    let stdout = child.stdout.take().context("child stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(READY_MARKER) {
                let _ = tx.send(Instant::now());
                sent = true;
            }
        }
    });
    Ok(rx)
}

/// RSS of `pid` in KiB, without mappings the size of guest RAM.
fn rss_without_guest_kib(pid: u32, guest_kib: u64) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).with_context(|| {
        format!("cannot read /proc/{pid}/smaps (the kernel needs CONFIG_PROC_PAGE_MONITOR)")
    })?;
    let (mut total, mut size) = (0u64, 0u64);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Size:") => size = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("Rss:") => {
                let rss: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let is_guest_ram = size >= guest_kib && size <= guest_kib + 4096;
                if !is_guest_ram {
                    total += rss;
                }
            }
            _ => {}
        }
    }
    Ok(total)
}

struct Sample {
    ready_ms: f64,
    rss_kib: u64,
}

fn nutshell_boot(image: &GuestImage) -> Result<(Sample, f64)> {
    let launch = VmmLaunch {
        mem_mib: GUEST_MEM_MIB,
        serial_log: Some("/dev/stdout".into()),
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn_with(image, &launch, Stdio::piped())?;
    let ready = watch_ready(&mut vmm.child)?;
    let agent = vmm.agent(AGENT_TIMEOUT).map_err(anyhow::Error::msg)?;
    agent.version(CALL_TIMEOUT)?;
    let vsock_ms = vmm.started.elapsed().as_secs_f64() * 1000.0;
    let serial_at = ready
        .recv_timeout(Duration::from_secs(10))
        .context("nutshell guest printed no ready line")?;
    let rss_kib = match rss_without_guest_kib(vmm.child.id(), GUEST_MEM_MIB * 1024) {
        Ok(rss) => rss,
        Err(e) => {
            let exit = vmm
                .wait(Duration::from_secs(5))
                .map_err(anyhow::Error::msg)?;
            bail!(
                "{e:#}: nutshell-vmm ended early ({}): {}",
                exit.status,
                exit.stderr
            );
        }
    };
    agent.shutdown(CALL_TIMEOUT)?;
    let exit = vmm
        .wait(Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    if !exit.status.success() {
        bail!("nutshell-vmm exited with {}: {}", exit.status, exit.stderr);
    }
    let ready_ms = serial_at.duration_since(vmm.started).as_secs_f64() * 1000.0;
    Ok((Sample { ready_ms, rss_kib }, vsock_ms))
}

fn qemu_boot(image: &GuestImage, cid: u32) -> Result<Sample> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host",
        ])
        .args(["-m", &GUEST_MEM_MIB.to_string(), "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(image.vmlinux())
        .arg("-initrd")
        .arg(&image.initramfs)
        .args(["-append", DEFAULT_CMDLINE])
        .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let ready = watch_ready(&mut child)?;
    let result = ready.recv_timeout(Duration::from_secs(60));
    let rss = result
        .is_ok()
        .then(|| rss_without_guest_kib(child.id(), GUEST_MEM_MIB * 1024));
    let _ = child.kill();
    let output = child.wait_with_output().context("cannot wait for QEMU")?;
    let Ok(at) = result else {
        bail!(
            "QEMU guest printed no ready line ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    };
    let rss = rss.context("QEMU RSS")??;
    Ok(Sample {
        ready_ms: at.duration_since(start).as_secs_f64() * 1000.0,
        rss_kib: rss,
    })
}

fn stats(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    (median, values[0], values[values.len() - 1])
}

/// Runs on the KVM host.
pub fn inner(args: &[String]) -> Result<()> {
    let boots = boots_arg(args)?;
    let image = artifacts::from_env()?;
    let (mut ours, mut vsock, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..boots {
        // Interleaved, so that drift on the host affects both alike.
        let (sample, vsock_ms) = nutshell_boot(&image)?;
        ours.push(sample);
        vsock.push(vsock_ms);
        peer.push(qemu_boot(&image, 100 + i as u32)?);
    }

    let mut ours_ready: Vec<f64> = ours.iter().map(|s| s.ready_ms).collect();
    let mut peer_ready: Vec<f64> = peer.iter().map(|s| s.ready_ms).collect();
    let mut ours_rss: Vec<f64> = ours.iter().map(|s| s.rss_kib as f64).collect();
    let mut peer_rss: Vec<f64> = peer.iter().map(|s| s.rss_kib as f64).collect();
    let (om, omin, omax) = stats(&mut ours_ready);
    let (qm, qmin, qmax) = stats(&mut peer_ready);
    let (vm, vmin, vmax) = stats(&mut vsock);
    let (orss, _, _) = stats(&mut ours_rss);
    let (qrss, _, _) = stats(&mut peer_rss);
    println!("boot to agent ready over {boots} boots, {GUEST_MEM_MIB} MiB, 1 vCPU, same vmlinux + initramfs:");
    println!("  nutshell-vmm  serial ready  median {om:8.1} ms  min {omin:8.1}  max {omax:8.1}");
    println!("  nutshell-vmm  vsock version median {vm:8.1} ms  min {vmin:8.1}  max {vmax:8.1}");
    println!("  qemu microvm  serial ready  median {qm:8.1} ms  min {qmin:8.1}  max {qmax:8.1}");
    println!(
        "  ratio nutshell/qemu (median serial ready): {:.2}",
        om / qm
    );
    println!("VMM RSS without guest RAM (median):");
    println!(
        "  nutshell-vmm {:8.0} KiB   qemu {:8.0} KiB   ratio {:.2}",
        orss,
        qrss,
        orss / qrss
    );
    Ok(())
}
