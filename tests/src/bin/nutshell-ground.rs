//! `nutshell-ground [--direct|--nested] [--deadline SECS] [--mem MiB] [--cpus N] -- CMD ARGS...`
//!
//! Runs CMD with this environment on a KVM host (directly, or inside a nested L1 under QEMU TCG),
//! streams its stdout and stderr live, and exits with its
//! status: its code, or 128+N for signal N. The runner's own failures exit 125, a passed
//! deadline 124, and an interruption (SIGINT, SIGTERM, SIGHUP) 130 after L1 has been killed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nutshell_tests::ground::{self, GroundCommand, GroundError, Mode};

const USAGE: &str =
    "usage: nutshell-ground [--direct|--nested] [--deadline SECS] [--mem MiB] [--cpus N] -- CMD ARGS...";

fn main() -> ExitCode {
    if let Err(e) = watch_signals() {
        eprintln!("nutshell-ground: {e:#}");
        return ExitCode::from(125);
    }
    let cmd = match parse(std::env::args_os().skip(1).collect()) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!("nutshell-ground: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match ground::run(cmd) {
        Ok(outcome) => ExitCode::from(u8::try_from(outcome.status.shell_code()).unwrap_or(125)),
        Err(e) => {
            eprintln!("nutshell-ground: {e}");
            ExitCode::from(match e {
                GroundError::DeadlineExceeded { .. } => 124,
                GroundError::Interrupted { .. } => 130,
                _ => 125,
            })
        }
    }
}

fn parse(args: Vec<std::ffi::OsString>) -> Result<GroundCommand> {
    let mut args = args.into_iter();
    let mut mode = None;
    let mut deadline = None;
    let mut mem = None;
    let mut cpus = None;
    let value = |flag: &str, args: &mut dyn Iterator<Item = std::ffi::OsString>| {
        let v = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let v = v
            .into_string()
            .ok()
            .with_context(|| format!("{flag}: not UTF-8"))?;
        v.parse::<u64>()
            .with_context(|| format!("{flag} {v:?} is not a whole number"))
    };
    let program = loop {
        let Some(arg) = args.next() else {
            bail!("no command given")
        };
        match arg.to_str() {
            Some("--") => break args.next().context("no command after --")?,
            Some("--direct") => mode = Some(Mode::Direct),
            Some("--nested") => mode = Some(Mode::Nested),
            Some("--deadline") => deadline = Some(value("--deadline", &mut args)?),
            Some("--mem") => mem = Some(value("--mem", &mut args)?),
            Some("--cpus") => cpus = Some(value("--cpus", &mut args)?),
            Some("-h" | "--help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Some(flag) if flag.starts_with('-') => bail!("unknown option {flag}"),
            _ => break arg,
        }
    };
    let mut cmd = GroundCommand::new(program).args(args);
    if let Some(mode) = mode {
        cmd = cmd.mode(mode);
    }
    if let Some(secs) = deadline {
        cmd = cmd.deadline(Duration::from_secs(secs));
    }
    if let Some(mib) = mem {
        cmd = cmd.memory_mib(u32::try_from(mib).context("--mem is too large")?);
    }
    if let Some(n) = cpus {
        cmd = cmd.cpus(u32::try_from(n).context("--cpus is too large")?);
    }
    // The command gets our whole environment, less what steers the ground itself.
    for (key, value) in std::env::vars_os() {
        if key != ground::MODE_ENV && key != ground::ON_KVM_HOST_ENV {
            cmd = cmd.env(key, value);
        }
    }
    Ok(cmd)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in every thread and turns their arrival into
/// [`ground::cancel_all`], so that the run kills L1 and removes its scratch directory.
/// (Children get an empty signal mask back when they are spawned.)
fn watch_signals() -> Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises; sigaddset and pthread_sigmask
    // only read and write the set we pass, and are called before any other thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "cannot block SIGINT/SIGTERM: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal = 0;
            // SAFETY: `set` is an initialised signal set and `signal` a valid out-pointer.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                eprintln!("nutshell-ground: signal {signal}: killing the run");
                ground::cancel_all();
            }
        })
        .context("spawn the signal thread")?;
    Ok(())
}
