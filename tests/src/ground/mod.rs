//! The test ground: run a command, usually a test binary, "on a KVM host".
//!
//! Where the host's /dev/kvm can boot Linux (real VT-x/SVM), the command runs directly. Where it
//! cannot (here and in CI it is `kvm_pvm`, a software hypervisor), the command runs inside an "L1"
//! Linux booted under QEMU TCG with `-cpu max`, which emulates SVM with nested paging: L1's own
//! /dev/kvm boots the pod guests. L1 sees the host's root filesystem read-only over virtio-9p, so
//! every host binary runs there as it is; see `l1-init.sh` for what is writable inside.
//!
//! Every run has a scratch directory `/tmp/nutshell-ground-XXXXXX`, removed when the run ends. The
//! command gets a writable directory inside it as `NUTSHELL_GROUND_SCRATCH`, at the same path in
//! both modes (nested, L1 mounts it over 9p at its host path, while the rest of L1's /tmp is its
//! own tmpfs).

mod assets;
mod channels;
mod detect;
mod direct;
mod group;
mod nested;
mod process;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use assets::{build_initramfs, busybox, kernel, qemu, repo_root, InitramfsFile, Kernel};
pub use detect::{detect, direct_unusable, host_tsc_khz, Detection, Mode, MODE_ENV};
pub use group::{group, on_kvm_host, Group, ON_KVM_HOST_ENV};
pub use process::cancel_all;

/// Set for the command: the run's writable scratch directory (same path on the host and in L1).
pub const SCRATCH_ENV: &str = "NUTSHELL_GROUND_SCRATCH";
/// Set for the command: `direct` or `nested`.
pub const RUN_MODE_ENV: &str = "NUTSHELL_GROUND_MODE";

/// A command to run on a KVM host. Build it with [`GroundCommand::new`] and the setters.
#[derive(Clone, Debug)]
pub struct GroundCommand {
    /// The program; without a slash it is looked up on the command's PATH.
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Variables set for the command, on top of PATH and HOME (the caller's) and the ground's own
    /// ([`ON_KVM_HOST_ENV`], [`SCRATCH_ENV`], [`RUN_MODE_ENV`]). Nothing else is inherited.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory; `None` is the caller's. Host /tmp, /run, /var/tmp and /var/lib are
    /// L1's own tmpfs, so a directory under them does not exist inside L1.
    pub cwd: Option<PathBuf>,
    /// Wall-clock limit from the spawn of L1 (or of the command, in direct mode) to its end.
    pub deadline: Duration,
    /// L1's memory in MiB (nested mode).
    pub memory_mib: u32,
    /// L1's vCPUs (nested mode), one TCG thread each.
    pub cpus: u32,
    /// Forces a mode; `None` lets [`detect`] decide.
    pub mode: Option<Mode>,
    /// Echo the command's stdout and stderr live to ours, line by line.
    pub echo: bool,
    /// The echo's line prefix; `None` is `[L1] ` nested and `[kvm] ` direct.
    pub echo_prefix: Option<String>,
}

impl GroundCommand {
    /// `program` with no arguments, a 10-minute deadline, 4 GiB and 2 vCPUs for L1, echo on.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            deadline: Duration::from_secs(600),
            memory_mib: 4096,
            cpus: 2,
            mode: None,
            echo: true,
            echo_prefix: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    pub fn echo_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.echo_prefix = Some(prefix.into());
        self
    }

    /// The program and its arguments, for messages.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                let a = a.to_string_lossy();
                if a.is_empty() || a.contains(char::is_whitespace) {
                    format!("'{a}'")
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn validate(&self) -> Result<(), GroundError> {
        let invalid = |problem: String| GroundError::InvalidCommand {
            command: self.display(),
            problem,
        };
        let has_nul = |s: &OsString| s.as_encoded_bytes().contains(&0);
        if self.program.is_empty() {
            return Err(invalid("the program is empty".into()));
        }
        if has_nul(&self.program) || self.args.iter().any(has_nul) {
            return Err(invalid(
                "the program or an argument contains a NUL byte".into(),
            ));
        }
        for (key, value) in &self.env {
            let k = key.as_encoded_bytes();
            if k.is_empty() || k.contains(&b'=') || k.contains(&0) || has_nul(value) {
                return Err(invalid(format!(
                    "environment variable {key:?} is empty or holds '=' or NUL"
                )));
            }
        }
        if self.cpus == 0 || self.cpus > 64 {
            return Err(invalid(format!("{} L1 vCPUs (1 to 64)", self.cpus)));
        }
        if self.memory_mib < 256 {
            return Err(invalid(format!(
                "{} MiB of L1 memory (256 at least)",
                self.memory_mib
            )));
        }
        Ok(())
    }
}

/// How the command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    /// Killed by this signal. Nested, the status crosses a POSIX shell, which folds a signal death
    /// into 128+N: codes 129 to 192 come back as signals.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    /// The status as a shell would report it (128+N for a signal).
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }

    fn from_shell(code: i32) -> Self {
        if (129..=192).contains(&code) {
            ExitStatus::Signal(code - 128)
        } else {
            ExitStatus::Code(code)
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// The result of a command that ran to its end (whatever its status).
#[derive(Clone, Debug)]
pub struct GroundOutcome {
    pub mode: Mode,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From the spawn of QEMU until L1's init was about to run the command; `None` in direct mode.
    pub l1_boot: Option<Duration>,
    /// How long the command ran.
    pub command_time: Duration,
    /// The end of L1's console (its kernel's messages: OOM kills, oopses); empty in direct mode.
    pub l1_console_tail: String,
}

impl GroundOutcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Why a command could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum GroundError {
    #[error("{variable}={value:?} is not a ground mode (expected direct or nested)")]
    InvalidMode {
        variable: &'static str,
        value: String,
    },
    #[error("cannot run `{command}` on the ground: {problem}")]
    InvalidCommand { command: String, problem: String },
    #[error(
        "no KVM host for `{command}`: direct mode is impossible ({direct}), and nested mode is \
         impossible ({nested})"
    )]
    NoKvmHost {
        command: String,
        direct: String,
        nested: String,
    },
    #[error("{tool} {path:?} {problem}")]
    MissingTool {
        tool: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("building the {flavor} kernel with {script:?} failed: {detail}")]
    KernelBuild {
        flavor: String,
        script: PathBuf,
        detail: String,
    },
    #[error("building the initramfs {out:?} with {script:?} failed: {detail}")]
    Initramfs {
        out: PathBuf,
        script: PathBuf,
        detail: String,
    },
    #[error("cannot read the host TSC frequency (L1's tsc_early_khz=) from {path:?}: {problem}")]
    TscFrequency { path: PathBuf, problem: String },
    #[error("cannot create a scratch directory under {parent:?}: {source}")]
    Scratch {
        parent: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {action} {path:?}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "`{command}` ({mode} mode) passed its deadline of {} s and was killed (scratch \
         {scratch:?}); L1 console tail:\n{console_tail}", deadline.as_secs_f64()
    )]
    DeadlineExceeded {
        command: String,
        mode: Mode,
        deadline: Duration,
        scratch: PathBuf,
        console_tail: String,
    },
    #[error(
        "`{command}` ({mode} mode) was interrupted by a signal and killed (scratch {scratch:?})"
    )]
    Interrupted {
        command: String,
        mode: Mode,
        scratch: PathBuf,
    },
    #[error("L1 could not set up `{command}`: {problem}; L1 console tail:\n{console_tail}")]
    L1Setup {
        command: String,
        problem: String,
        console_tail: String,
    },
    #[error(
        "L1 ended ({qemu_status}) before `{command}` reported an exit status; L1 console \
         tail:\n{console_tail}\nQEMU output:\n{qemu_output}"
    )]
    L1Failed {
        command: String,
        qemu_status: String,
        console_tail: String,
        qemu_output: String,
    },
}

/// Runs `cmd` on a KVM host: directly where /dev/kvm can boot Linux, otherwise in a nested L1.
///
/// Prints (to stderr) the mode and scratch directory first, then how long L1 took to boot and how
/// long the command ran. The command's output is echoed live (see [`GroundCommand::echo`]) and
/// returned in full. A run never leaves a process or its scratch directory behind: QEMU and the
/// command die with the calling thread (`PR_SET_PDEATHSIG`), at the deadline, on [`cancel_all`],
/// and when the run returns.
pub fn run(cmd: GroundCommand) -> Result<GroundOutcome, GroundError> {
    cmd.validate()?;
    let detection = detect(cmd.mode)?;
    let outcome = match detection.mode {
        Mode::Direct => direct::run(&cmd, &detection)?,
        Mode::Nested => {
            let prepared = nested::prepare().map_err(|e| match &detection.direct_unusable {
                Some(direct) => GroundError::NoKvmHost {
                    command: cmd.display(),
                    direct: direct.clone(),
                    nested: e.to_string(),
                },
                None => e,
            })?;
            nested::run(&cmd, &detection, &prepared)?
        }
    };
    match outcome.l1_boot {
        Some(boot) => eprintln!("nutshell-ground: L1 boot: {:.3} s", boot.as_secs_f64()),
        None => eprintln!("nutshell-ground: L1 boot: none (direct mode)"),
    }
    eprintln!(
        "nutshell-ground: command time: {:.3} s ({})",
        outcome.command_time.as_secs_f64(),
        outcome.status
    );
    Ok(outcome)
}

/// The environment every command gets, before `cmd.env`.
fn base_env(mode: Mode, work: &std::path::Path) -> Vec<(OsString, OsString)> {
    let mut env = Vec::new();
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.push(("PATH".into(), path));
    if let Some(home) = std::env::var_os("HOME") {
        env.push(("HOME".into(), home));
    }
    env.push((ON_KVM_HOST_ENV.into(), "1".into()));
    env.push((RUN_MODE_ENV.into(), mode.to_string().into()));
    env.push((SCRATCH_ENV.into(), work.into()));
    env
}

/// The run's first line: where and why it runs, and its scratch directory.
fn announce(cmd: &GroundCommand, detection: &Detection, scratch: &std::path::Path) {
    eprintln!(
        "nutshell-ground: {} mode ({}): `{}`, scratch {}",
        detection.mode,
        detection.reason,
        cmd.display(),
        scratch.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes_map_to_signals() {
        assert_eq!(ExitStatus::from_shell(0), ExitStatus::Code(0));
        assert_eq!(ExitStatus::from_shell(101), ExitStatus::Code(101));
        assert_eq!(ExitStatus::from_shell(128), ExitStatus::Code(128));
        assert_eq!(ExitStatus::from_shell(137), ExitStatus::Signal(9));
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
        assert!(ExitStatus::Code(0).success() && !ExitStatus::Signal(15).success());
    }

    #[test]
    fn rejects_what_cannot_cross_to_l1() {
        assert!(GroundCommand::new("true").validate().is_ok());
        let bad = [
            GroundCommand::new(""),
            GroundCommand::new("a\0b"),
            GroundCommand::new("true").env("A=B", "c"),
            GroundCommand::new("true").cpus(0),
            GroundCommand::new("true").memory_mib(64),
        ];
        for cmd in bad {
            let err = cmd.validate().expect_err("invalid command accepted");
            assert!(matches!(err, GroundError::InvalidCommand { .. }), "{err}");
        }
    }

    #[test]
    fn displays_commands_readably() {
        let cmd = GroundCommand::new("sh").args(["-c", "echo hi", ""]);
        assert_eq!(cmd.display(), "sh -c 'echo hi' ''");
    }
}
