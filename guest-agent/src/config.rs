//! Command line, and how the agent behaves depending on whether it is PID 1.
//!
//! As PID 1 (in the guest) the agent mounts, reaps every child and powers
//! the VM off on `Shutdown`. Anywhere else it mounts nothing, only reaps its own
//! children and just exits on `Shutdown`: safe on a developer host.

use log::LevelFilter;
use nutshell_protocol::AGENT_VSOCK_PORT;
use thiserror::Error;

use crate::init::InitConfig;
use crate::power::PowerOffAction;
use crate::reaper::ReapScope;
use crate::server::vsock_listen_address;

/// Environment variable with the log level. The kernel hands unknown
/// `KEY=value` boot parameters to init as environment, so
/// `NUTSHELL_AGENT_LOG=debug` on the guest command line works.
pub const LOG_LEVEL_ENV: &str = "NUTSHELL_AGENT_LOG";

pub const USAGE: &str = "\
Usage: nutshell-agent [OPTIONS]

nutshell guest agent. As PID 1 of the pod VM it mounts /proc, /sys, /dev,
/dev/pts, /dev/shm, /run and /sys/fs/cgroup (and the virtio-fs share that
nutshell.virtiofs=<tag> on the kernel command line names, at
/run/nutshell-share), enables all cgroup v2 controllers, reaps zombies and
serves the Agent ttrpc API on vsock port 1024.
Run as any other PID it mounts nothing and Shutdown only exits the agent.

Options:
  --listen <ADDRESS>    ttrpc address to serve on [default: vsock://-1:1024]
                        e.g. unix:///tmp/agent.sock on a developer host
  --log-level <LEVEL>   off, error, warn, info, debug or trace [default: warn,
                        or $NUTSHELL_AGENT_LOG]
  -V, --version         print the version and exit
  -h, --help            print this help and exit
";

/// Kernel command-line parameter naming the virtio-fs tag the agent mounts at boot, at
/// [`crate::init::SHARED_FS_MOUNT_POINT`]. The kernel keeps dotted parameters from init's
/// arguments and environment (it takes them for module parameters), so the agent reads it
/// from `/proc/cmdline`.
pub const VIRTIOFS_PARAM: &str = "nutshell.virtiofs";

/// What the agent takes from the kernel command line (`/proc/cmdline`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelParams {
    /// `nutshell.virtiofs=<tag>`: the virtio-fs share to mount (the last one given wins).
    pub virtiofs_tag: Option<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KernelParamError {
    #[error("{VIRTIOFS_PARAM}= on the kernel command line needs a tag")]
    EmptyVirtiofsTag,
}

/// Parses the kernel command line (the contents of `/proc/cmdline`). Everything after `--`
/// belongs to init's arguments and is not looked at.
pub fn parse_kernel_params(cmdline: &str) -> Result<KernelParams, KernelParamError> {
    let mut params = KernelParams::default();
    for word in cmdline.split_whitespace() {
        if word == "--" {
            break;
        }
        if let Some(tag) = word
            .strip_prefix(VIRTIOFS_PARAM)
            .and_then(|rest| rest.strip_prefix('='))
        {
            if tag.is_empty() {
                return Err(KernelParamError::EmptyVirtiofsTag);
            }
            params.virtiofs_tag = Some(tag.to_owned());
        }
    }
    Ok(params)
}

/// Options given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandLine {
    pub listen_address: Option<String>,
    pub log_level: Option<LevelFilter>,
    /// Arguments ignored in lenient mode (see [`parse_command_line`]).
    pub ignored: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(CommandLine),
    PrintHelp,
    PrintVersion,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("unknown argument {0:?} (see --help)")]
    UnknownArgument(String),
    #[error("{0} needs a value (see --help)")]
    MissingValue(&'static str),
    #[error("invalid log level {0:?}: use off, error, warn, info, debug or trace")]
    InvalidLogLevel(String),
}

pub fn parse_log_level(level: &str) -> Result<LevelFilter, UsageError> {
    level
        .parse()
        .map_err(|_| UsageError::InvalidLogLevel(level.to_owned()))
}

/// Parses the arguments (without the program name). `lenient` collects
/// unknown arguments in [`CommandLine::ignored`] instead of failing: as PID 1
/// the agent gets the kernel's unknown boot parameters as arguments.
pub fn parse_command_line(args: &[String], lenient: bool) -> Result<Command, UsageError> {
    let mut command_line = CommandLine::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |option: &'static str| {
            inline_value
                .clone()
                .or_else(|| args.next().cloned())
                .ok_or(UsageError::MissingValue(option))
        };
        match name {
            "-h" | "--help" => return Ok(Command::PrintHelp),
            "-V" | "--version" => return Ok(Command::PrintVersion),
            "--listen" => command_line.listen_address = Some(value("--listen")?),
            "--log-level" => {
                command_line.log_level = Some(parse_log_level(&value("--log-level")?)?)
            }
            _ if lenient => command_line.ignored.push(arg.clone()),
            _ => return Err(UsageError::UnknownArgument(arg.clone())),
        }
    }
    Ok(Command::Run(command_line))
}

/// Everything the agent's `main` needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub listen_address: String,
    pub log_level: LevelFilter,
    /// Boot steps; `Some` only for PID 1.
    pub init: Option<InitConfig>,
    pub reap_scope: ReapScope,
    pub power_off: PowerOffAction,
}

impl AgentConfig {
    /// Derives the configuration from the command line, whether the agent is
    /// PID 1, and the value of [`LOG_LEVEL_ENV`] (a bad value is ignored).
    pub fn new(command_line: CommandLine, is_pid1: bool, log_level_env: Option<&str>) -> Self {
        let log_level = command_line
            .log_level
            .or_else(|| log_level_env.and_then(|level| parse_log_level(level).ok()))
            .unwrap_or(LevelFilter::Warn);
        let listen_address = command_line
            .listen_address
            .unwrap_or_else(|| vsock_listen_address(AGENT_VSOCK_PORT));
        if is_pid1 {
            AgentConfig {
                listen_address,
                log_level,
                init: Some(InitConfig::guest()),
                reap_scope: ReapScope::AllChildren,
                power_off: PowerOffAction::PowerOffVm,
            }
        } else {
            AgentConfig {
                listen_address,
                log_level,
                init: None,
                reap_scope: ReapScope::TrackedOnly,
                power_off: PowerOffAction::ExitAgent,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(
            parse_command_line(&args(&["--help"]), false),
            Ok(Command::PrintHelp)
        );
        assert_eq!(
            parse_command_line(&args(&["-V"]), false),
            Ok(Command::PrintVersion)
        );
    }

    #[test]
    fn options_take_separate_or_inline_values() {
        let parsed = parse_command_line(
            &args(&["--listen", "unix:///a.sock", "--log-level=debug"]),
            false,
        );
        assert_eq!(
            parsed,
            Ok(Command::Run(CommandLine {
                listen_address: Some("unix:///a.sock".into()),
                log_level: Some(LevelFilter::Debug),
                ignored: Vec::new(),
            }))
        );
        assert_eq!(
            parse_command_line(&args(&["--listen"]), false),
            Err(UsageError::MissingValue("--listen"))
        );
        assert!(matches!(
            parse_command_line(&args(&["--log-level", "loud"]), false),
            Err(UsageError::InvalidLogLevel(_))
        ));
    }

    #[test]
    fn unknown_arguments_fail_unless_lenient() {
        assert_eq!(
            parse_command_line(&args(&["i8042.nopnp"]), false),
            Err(UsageError::UnknownArgument("i8042.nopnp".into()))
        );
        let Ok(Command::Run(parsed)) = parse_command_line(&args(&["i8042.nopnp", "splash"]), true)
        else {
            panic!("lenient parsing must succeed");
        };
        assert_eq!(parsed.ignored, ["i8042.nopnp", "splash"]);
    }

    #[test]
    fn kernel_params_name_the_virtiofs_tag() {
        let parse = |cmdline| parse_kernel_params(cmdline);
        assert_eq!(parse("console=ttyS0 quiet\n"), Ok(KernelParams::default()));
        assert_eq!(
            parse("console=ttyS0 nutshell.virtiofs=shared panic=-1\n")
                .unwrap()
                .virtiofs_tag
                .as_deref(),
            Some("shared")
        );
        assert_eq!(
            parse("nutshell.virtiofs=a nutshell.virtiofs=b")
                .unwrap()
                .virtiofs_tag
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            parse("nutshell.virtiofs= quiet"),
            Err(KernelParamError::EmptyVirtiofsTag)
        );
        // Other parameters that merely start alike, and init's own arguments, are not it.
        assert_eq!(
            parse("nutshell.virtiofsx=a nutshell.virtiofs -- nutshell.virtiofs=c"),
            Ok(KernelParams::default())
        );
    }

    #[test]
    fn pid1_gets_guest_init_and_vm_power_off() {
        let config = AgentConfig::new(CommandLine::default(), true, None);
        assert_eq!(config.listen_address, "vsock://-1:1024");
        assert_eq!(config.init, Some(InitConfig::guest()));
        assert_eq!(config.reap_scope, ReapScope::AllChildren);
        assert_eq!(config.power_off, PowerOffAction::PowerOffVm);
        assert_eq!(config.log_level, LevelFilter::Warn);
    }

    #[test]
    fn other_pids_never_mount_nor_reset() {
        let config = AgentConfig::new(CommandLine::default(), false, Some("info"));
        assert_eq!(config.init, None);
        assert_eq!(config.reap_scope, ReapScope::TrackedOnly);
        assert_eq!(config.power_off, PowerOffAction::ExitAgent);
        assert_eq!(config.log_level, LevelFilter::Info);
    }

    #[test]
    fn command_line_log_level_beats_environment() {
        let command_line = CommandLine {
            log_level: Some(LevelFilter::Error),
            ..CommandLine::default()
        };
        let config = AgentConfig::new(command_line, false, Some("trace"));
        assert_eq!(config.log_level, LevelFilter::Error);
        let config = AgentConfig::new(CommandLine::default(), false, Some("bogus"));
        assert_eq!(config.log_level, LevelFilter::Warn);
    }
}
