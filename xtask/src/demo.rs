//! The demo: boot one pod guest with nutshell-vmm, talk to its agent over hybrid vsock, and
//! shut it down cleanly. Where /dev/kvm cannot boot Linux it runs in the nested test ground.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_tests::pod_guest::{Vmm, VmmLaunch};

use crate::artifacts;

/// Per-call deadline for agent requests.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a guest may take to answer its first call.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

pub fn run() -> Result<()> {
    let image = artifacts::build_all()?;
    artifacts::run_on_kvm_host(&image, &["demo-guest"], Duration::from_secs(300))
}

/// Runs on the KVM host: boot, talk, shut down.
pub fn boot_and_talk() -> Result<()> {
    let image = artifacts::from_env()?;
    let launch = VmmLaunch {
        vcpus: 2,
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).context("cannot start nutshell-vmm")?;
    let agent = vmm.agent(AGENT_TIMEOUT).map_err(anyhow::Error::msg)?;
    let ready = vmm.started.elapsed();
    let version = agent.version(CALL_TIMEOUT)?;
    println!(
        "agent ready after {:.0} ms: nutshell-agent {} (protocol {}), guest kernel {}",
        ready.as_secs_f64() * 1000.0,
        version.agent_version,
        version.protocol_version,
        version.kernel_release
    );
    let details = agent.guest_details(CALL_TIMEOUT)?;
    println!(
        "guest: {} online CPUs, {} KiB memory",
        details.online_cpus, details.mem_total_kib
    );
    println!(
        "cgroup v2 controllers: {}",
        details.cgroup_controllers.join(" ")
    );
    for ns in &details.namespaces {
        let result = if ns.unshare_ok {
            "ok".to_string()
        } else {
            format!("FAILED: {}", ns.error)
        };
        println!("namespace {:<6} unshare {result}", ns.kind);
    }
    agent.shutdown(CALL_TIMEOUT)?;
    let exit = vmm
        .wait(Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    println!(
        "nutshell-vmm exited with {} after {:.0} ms",
        exit.status,
        vmm.started.elapsed().as_secs_f64() * 1000.0
    );
    if !exit.status.success() {
        bail!("nutshell-vmm did not exit cleanly: {}", exit.stderr);
    }
    Ok(())
}
