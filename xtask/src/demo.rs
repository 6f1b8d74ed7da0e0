//! The demo: the seed's pod (`examples/demo-pod.yaml`: an httpd app and a sidecar) run by the
//! `nutshell` CLI from the locally built busybox image, the sidecar fetching from the app over
//! localhost, then `nutshell inspect` on it and `nutshell rm`. Where /dev/kvm cannot boot Linux
//! it runs in the nested test ground. `demo-guest` is the lower-level boot-and-talk check.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_tests::pod_guest::{scratch_dir, GuestImage, Vmm, VmmLaunch};

use crate::artifacts;
use crate::nutshell_cli::NutshellCli;

/// Per-call deadline for agent requests.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a guest may take to answer its first call.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

pub fn run() -> Result<()> {
    let image = artifacts::build_all()?;
    GuestImage::build_test().context("the busybox test image")?;
    artifacts::run_on_kvm_host(&image, &["demo-pod"], Duration::from_secs(300))
}

/// Runs on the KVM host: the demo pod through the CLI.
pub fn demo_pod() -> Result<()> {
    let image = artifacts::from_env()?;
    let root = nutshell_tests::ground::repo_root();
    let dir = scratch_dir("demo").context("scratch directory")?;
    let cli = NutshellCli::new(image, &dir);
    let nutshell = |args: &[&str]| cli.run(args).map(|_| ());
    let layout = root.join("build/test-image/oci");
    let manifest = root.join("examples/demo-pod.yaml");
    nutshell(&["image", "import", layout.to_str().unwrap()])?;
    let result = (|| {
        nutshell(&["run", manifest.to_str().unwrap()])?;
        nutshell(&[
            "exec", "demo", "sidecar", "--", "sh", "-c",
            "for i in $(seq 100); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1",
        ])?;
        nutshell(&["ps"])?;
        nutshell(&["inspect", "demo"])?;
        nutshell(&["logs", "demo", "sidecar"])
    })();
    let removed = nutshell(&["rm", "-f", "demo"]);
    let _ = std::fs::remove_dir_all(&dir);
    result.and(removed)
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
