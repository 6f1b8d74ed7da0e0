//! `nutshell ps` and `nutshell logs`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_runtime::pod_dirs::PodDirs;
use nutshell_runtime::state::{process_alive, PodState};

use crate::Cli;

/// The phase to show: a live phase whose supervisor or VMM is gone is a crash `ps` reports.
fn shown_phase(state: &PodState) -> String {
    match state.crashed_unrecorded() {
        Some(why) => format!("crashed ({why})"),
        None => state.phase.name().into(),
    }
}

pub fn ps(cli: &Cli) -> Result<()> {
    println!("{:<24} {:<26} {:<8} CONTAINERS", "POD", "PHASE", "VMM");
    for (name, dirs) in PodDirs::all(&cli.state_dir) {
        let Ok(state) = PodState::load(&dirs.state()) else {
            println!("{name:<24} {:<26}", "unreadable state");
            continue;
        };
        let containers: Vec<String> = state
            .containers
            .iter()
            .map(|c| match (c.status.as_str(), c.exit_code) {
                ("exited", Some(code)) => format!(
                    "{}:exited({code}){}",
                    c.name,
                    if c.oom_killed { ",OOMKilled" } else { "" }
                ),
                (status, _) if c.restarts > 0 => {
                    format!("{}:{status}(restarts {})", c.name, c.restarts)
                }
                (status, _) => format!("{}:{status}", c.name),
            })
            .collect();
        let vmm = state
            .vmm_pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{name:<24} {:<26} {vmm:<8} {}",
            shown_phase(&state),
            containers.join(" ")
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct LogsArgs {
    pod: String,
    /// Default: the pod's only container.
    container: Option<String>,
    /// Keep printing new output until the pod ends.
    #[arg(short, long)]
    follow: bool,
}

pub fn logs(cli: &Cli, args: &LogsArgs) -> Result<()> {
    let dirs = PodDirs::new(&cli.state_dir, &args.pod);
    let state = PodState::load(&dirs.state()).with_context(|| format!("no pod {:?}", args.pod))?;
    let container = match &args.container {
        Some(name) => {
            if !state.containers.iter().any(|c| &c.name == name) {
                bail!("pod {:?} has no container {name:?}", args.pod);
            }
            name.clone()
        }
        None if state.containers.len() == 1 => state.containers[0].name.clone(),
        None => bail!(
            "pod {:?} has several containers; name one of: {}",
            args.pod,
            state
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let path = dirs.log(&container);
    let mut offset = 0u64;
    let mut out = std::io::stdout().lock();
    // After the pod ended, one more read takes what was written in between.
    let mut last_round = false;
    loop {
        if let Ok(mut file) = std::fs::File::open(&path) {
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            offset += bytes.len() as u64;
            out.write_all(&bytes)?;
            out.flush()?;
        }
        if !args.follow || last_round {
            return Ok(());
        }
        last_round = !PodState::load(&dirs.state())
            .map(|s| s.phase.is_live() && s.supervisor_pid.is_some_and(process_alive))
            .unwrap_or(false);
        std::thread::sleep(Duration::from_millis(200));
    }
}
