//! `nutshell-agent`: PID 1 of the pod guest (see `--help`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use nutshell_agent::api::AgentService;
use nutshell_agent::config::{self, AgentConfig, Command, LOG_LEVEL_ENV, USAGE};
use nutshell_agent::probe::SystemPaths;
use nutshell_agent::reaper::{self, Reaper};
use nutshell_agent::stdio::{self, server::StdioAddress};
use nutshell_agent::{init, logger, power, server, AGENT_VERSION};
use nutshell_protocol::STDIO_VSOCK_PORT;

/// Longest wait for in-flight replies (the `Shutdown` reply) to go out
/// before powering off anyway.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let is_pid1 = std::process::id() == 1;
    match run(is_pid1) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // As PID 1 this exit panics the kernel, which (panic=-1) resets
            // the VM; the message and the panic line stay on the console.
            eprintln!("nutshell-agent: fatal: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(is_pid1: bool) -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command_line = match config::parse_command_line(&args, is_pid1)? {
        Command::PrintHelp => {
            print!("{USAGE}");
            return Ok(());
        }
        Command::PrintVersion => {
            println!("nutshell-agent {AGENT_VERSION}");
            return Ok(());
        }
        Command::Run(command_line) => command_line,
    };
    let ignored = command_line.ignored.clone();
    let log_level_env = std::env::var(LOG_LEVEL_ENV).ok();
    let config = AgentConfig::new(command_line, is_pid1, log_level_env.as_deref());
    logger::init(config.log_level);
    if !ignored.is_empty() {
        log::debug!("ignoring arguments {ignored:?}");
    }

    // Before any thread exists, so that every thread inherits the mask.
    reaper::block_sigchld()?;
    let reaper = Reaper::new(config.reap_scope);

    if let Some(init_config) = &config.init {
        let controllers = init::run(init_config).context("guest init")?;
        for (controller, error) in &controllers.failed {
            log::warn!("cgroup controller {controller} not enabled for children: {error}");
        }
    }
    reaper.spawn_sigchld_thread()?;

    let (service, shutdown_requests) = AgentService::new(reaper, SystemPaths::default());
    let stdio_address = StdioAddress::for_agent(&config.listen_address, STDIO_VSOCK_PORT);
    stdio::server::start(&stdio_address, service.stdio_hub())?;
    let server = server::start(&config.listen_address, service)?;
    println!(
        "nutshell-agent {AGENT_VERSION} ready on {}",
        server::describe_listen_address(server.address())
    );

    shutdown_requests.wait();
    if !server.stop(SERVER_STOP_GRACE) {
        log::warn!("ttrpc server did not stop within {SERVER_STOP_GRACE:?}; powering off anyway");
    }
    power::power_off(config.power_off)?;
    Ok(())
}
