//! `nutshell inspect`: the pod seen across the VM boundary, read live from the guest. A table
//! of pause and every container with the inode of each namespace, marked shared (with pause)
//! or private, like `lsns` with `/proc/PID/ns`; then the pod's cgroup tree with each
//! container's limits, like `systemd-cgls`. `--json` prints the same as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_protocol::agent::{InspectSandboxRequest, ProcessNamespaces};
use nutshell_runtime::pod::CALL;
use nutshell_runtime::pod_dirs::PodDirs;
use nutshell_runtime::state::PodState;
use nutshell_runtime::vm;
use serde::Serialize;

use crate::Cli;

/// Namespace kinds in the table's order.
const KINDS: [&str; 6] = ["net", "uts", "ipc", "pid", "mnt", "cgroup"];

#[derive(clap::Args)]
pub struct InspectArgs {
    pod: String,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Namespace {
    inode: u64,
    /// "shared" with pause, "private", or "node" (the guest's root namespace).
    sharing: &'static str,
}

#[derive(Serialize)]
struct ProcessView {
    name: String,
    pid: u32,
    namespaces: BTreeMap<String, Namespace>,
}

#[derive(Serialize)]
struct CgroupView {
    path: String,
    owner: String,
    memory_max: String,
    cpu_max: String,
    cpu_weight: String,
    pids_max: String,
    memory_current: u64,
    procs: Vec<u32>,
}

#[derive(Serialize)]
struct PodView {
    pod: String,
    processes: Vec<ProcessView>,
    cgroups: Vec<CgroupView>,
}

fn view_of(
    ns: &ProcessNamespaces,
    pause: &ProcessNamespaces,
    root: &ProcessNamespaces,
) -> ProcessView {
    let namespaces = KINDS
        .iter()
        .filter_map(|kind| {
            let inode = *ns.inodes.get(*kind)?;
            let sharing = if root.inodes.get(*kind) == Some(&inode) {
                "node"
            } else if ns.name != "pause" && pause.inodes.get(*kind) == Some(&inode) {
                "shared"
            } else {
                "private"
            };
            Some((kind.to_string(), Namespace { inode, sharing }))
        })
        .collect();
    ProcessView {
        name: ns.name.clone(),
        pid: ns.pid,
        namespaces,
    }
}

pub fn inspect(cli: &Cli, args: &InspectArgs) -> Result<()> {
    let dirs = PodDirs::new(&cli.state_dir, &args.pod);
    let state = PodState::load(&dirs.state()).with_context(|| format!("no pod {:?}", args.pod))?;
    if !state.phase.is_live() {
        bail!(
            "pod {:?} is {}: nothing to read in a guest",
            args.pod,
            state.phase.name()
        );
    }
    let agent = vm::agent(&dirs, Duration::from_secs(10))?;
    let mut req = InspectSandboxRequest::new();
    req.sandbox_id = args.pod.clone();
    let reply = agent.inspect_sandbox(&req, CALL).map_err(|e| {
        anyhow::anyhow!(
            "InspectSandbox: {}",
            e.status_message()
                .map(str::to_owned)
                .unwrap_or(e.to_string())
        )
    })?;
    let pause = reply.pause.clone().unwrap_or_default();
    let root = reply.guest_root.clone().unwrap_or_default();
    let mut processes = vec![view_of(&pause, &pause, &root)];
    processes.extend(reply.containers.iter().map(|c| view_of(c, &pause, &root)));
    let view = PodView {
        pod: args.pod.clone(),
        processes,
        cgroups: reply
            .cgroups
            .iter()
            .map(|c| CgroupView {
                path: c.path.clone(),
                owner: c.owner.clone(),
                memory_max: c.memory_max.clone(),
                cpu_max: c.cpu_max.clone(),
                cpu_weight: c.cpu_weight.clone(),
                pids_max: c.pids_max.clone(),
                memory_current: c.memory_current,
                procs: c.procs.clone(),
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    print!("{:<16} {:>6}", "PROCESS", "PID");
    for kind in KINDS {
        print!("  {:<20}", kind.to_uppercase());
    }
    println!();
    for p in &view.processes {
        print!("{:<16} {:>6}", p.name, p.pid);
        for kind in KINDS {
            let cell = p
                .namespaces
                .get(kind)
                .map(|n| format!("{} {}", n.inode, n.sharing))
                .unwrap_or_else(|| "-".into());
            print!("  {cell:<20}");
        }
        println!();
    }
    println!();
    println!("cgroups (/sys/fs/cgroup in the guest):");
    for (i, c) in view.cgroups.iter().enumerate() {
        let branch = if i == 0 {
            ""
        } else if i + 1 == view.cgroups.len() {
            "└─ "
        } else {
            "├─ "
        };
        let label = if c.owner.is_empty() {
            c.path.clone()
        } else {
            c.owner.clone()
        };
        println!(
            "{branch}{label}  memory.max={} cpu.max=\"{}\" cpu.weight={} pids.max={} memory.current={} procs={:?}",
            c.memory_max, c.cpu_max, c.cpu_weight, c.pids_max, c.memory_current, c.procs
        );
    }
    Ok(())
}
