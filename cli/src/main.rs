//! `nutshell`: runs a Kubernetes `v1/Pod` manifest in a microVM, one VM per pod.
//!
//! ```text
//! nutshell image import PATH [--name NAME]    OCI layout (dir or tar) or docker-archive tar
//! nutshell image ls
//! nutshell run POD.yaml [--config-dir DIR]    start the pod (returns once it runs)
//! nutshell ps
//! nutshell logs POD [CONTAINER] [-f]
//! nutshell exec [-i] [-t] POD CONTAINER -- CMD...
//! nutshell inspect POD [--json]               namespaces and cgroups, read live from the guest
//! nutshell stop POD
//! nutshell rm [-f] POD
//! ```
//!
//! State lives under `/run/nutshell` (`--state-dir`, `NUTSHELL_STATE_DIR`), images under
//! `/var/lib/nutshell/images` (`--image-store`, `NUTSHELL_IMAGE_STORE`). The VM's kernel,
//! initramfs and VMM come from `--kernel`/`--initrd`/`--vmm` or `NUTSHELL_KERNEL`,
//! `NUTSHELL_INITRD`, `NUTSHELL_VMM`.

mod exec;
mod images;
mod inspect;
mod lifecycle;
mod show;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nutshell", version, about = "Kubernetes pods in microVMs")]
pub struct Cli {
    /// Where pods keep their state.
    #[arg(long, env = "NUTSHELL_STATE_DIR", default_value = nutshell_runtime::pod_dirs::DEFAULT_STATE_ROOT, global = true)]
    state_dir: PathBuf,
    /// The image cache.
    #[arg(
        long,
        env = "NUTSHELL_IMAGE_STORE",
        default_value = "/var/lib/nutshell/images",
        global = true
    )]
    image_store: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Images in the local store.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Starts a pod from a v1/Pod manifest.
    Run(lifecycle::RunArgs),
    /// Keeps one pod (started by `run`; not for direct use).
    #[command(hide = true)]
    Supervise { pod: String },
    /// Lists pods.
    Ps,
    /// Prints a container's output.
    Logs(show::LogsArgs),
    /// Runs a command in a running container.
    Exec(exec::ExecArgs),
    /// Namespaces and cgroups of a pod, read live from the guest.
    Inspect(inspect::InspectArgs),
    /// Stops a pod: every container, the VM, the share.
    Stop { pod: String },
    /// Removes a stopped pod (with -f, stops it first).
    Rm {
        #[arg(short, long)]
        force: bool,
        pod: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nutshell: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Image(command) => images::run(cli, command).map(|()| 0),
        Command::Run(args) => lifecycle::run(cli, args),
        Command::Supervise { pod } => lifecycle::supervise(cli, pod),
        Command::Ps => show::ps(cli).map(|()| 0),
        Command::Logs(args) => show::logs(cli, args).map(|()| 0),
        Command::Exec(args) => exec::exec(cli, args),
        Command::Inspect(args) => inspect::inspect(cli, args).map(|()| 0),
        Command::Stop { pod } => lifecycle::stop(cli, pod).map(|()| 0),
        Command::Rm { force, pod } => lifecycle::rm(cli, pod, *force).map(|()| 0),
    }
}
