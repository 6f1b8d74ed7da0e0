//! Direct mode: the host's /dev/kvm is real, so the command runs here, supervised the same way.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::process::{pump, ChildGuard, Echo, Scratch, Waited};
use super::{base_env, Detection, ExitStatus, GroundCommand, GroundError, GroundOutcome, Mode};

pub(crate) fn run(
    cmd: &GroundCommand,
    detection: &Detection,
) -> Result<GroundOutcome, GroundError> {
    let scratch = Scratch::create()?;
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).map_err(|source| GroundError::Io {
        action: "create",
        path: work.clone(),
        source,
    })?;
    super::announce(cmd, detection, scratch.path());

    let mut command = Command::new(&cmd.program);
    command
        .args(&cmd.args)
        .env_clear()
        .envs(base_env(Mode::Direct, &work))
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &cmd.cwd {
        command.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = ChildGuard::spawn(&mut command, &cmd.display())?;
    let prefix = cmd
        .echo
        .then(|| cmd.echo_prefix.clone().unwrap_or_else(|| "[kvm] ".into()));
    let (stdout, stderr) = child.take_pipes();
    let out = pump("stdout", stdout, Echo::Stdout, prefix.clone(), None);
    let err = pump("stderr", stderr, Echo::Stderr, prefix, None);

    let waited = child.wait_until(started + cmd.deadline)?;
    let command_time = started.elapsed();
    // Whatever happened, the group dies here, so that the pipes reach their end.
    child.kill();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = match waited {
        Waited::Exited(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        },
        Waited::DeadlinePassed => {
            return Err(GroundError::DeadlineExceeded {
                command: cmd.display(),
                mode: Mode::Direct,
                deadline: cmd.deadline,
                scratch: scratch.path().to_owned(),
                console_tail: "(none in direct mode)".into(),
            })
        }
        Waited::Cancelled => {
            return Err(GroundError::Interrupted {
                command: cmd.display(),
                mode: Mode::Direct,
                scratch: scratch.path().to_owned(),
            })
        }
    };
    Ok(GroundOutcome {
        mode: Mode::Direct,
        status,
        stdout,
        stderr,
        l1_boot: None,
        command_time,
        l1_console_tail: String::new(),
    })
}
