//! Child processes that cannot outlive the runner: spawn with `PR_SET_PDEATHSIG`, kill at a
//! deadline or on cancellation, kill and reap on drop; output pumps that echo live; scratch dirs.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus as StdExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::GroundError;

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Asks every running and future `ground::run` of this process to kill its L1 or command and
/// return [`GroundError::Interrupted`]. Meant for SIGINT/SIGTERM handlers; it cannot be undone.
pub fn cancel_all() {
    CANCELLED.store(true, Ordering::SeqCst);
}

fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// How long the wait loops sleep between polls.
const POLL: Duration = Duration::from_millis(10);

/// A child in its own process group that is SIGKILLed (with its group) and reaped when dropped.
pub(crate) struct ChildGuard {
    child: Option<Child>,
    /// The child's process group, until it has been killed.
    pgid: Option<libc::pid_t>,
    program: String,
}

pub(crate) enum Waited {
    Exited(StdExitStatus),
    DeadlinePassed,
    Cancelled,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group, with SIGKILL as its parent-death signal and an empty
    /// signal mask (the CLI blocks SIGINT/SIGTERM in its own threads, and masks are inherited).
    pub(crate) fn spawn(cmd: &mut Command, program: &str) -> Result<Self, GroundError> {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls (setpgid, prctl, sigprocmask, getppid); it allocates
        // nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| GroundError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        Ok(Self {
            pgid: libc::pid_t::try_from(child.id()).ok(),
            child: Some(child),
            program: program.to_owned(),
        })
    }

    /// The child's stdout and stderr pipes (spawned with `Stdio::piped()`).
    pub(crate) fn take_pipes(&mut self) -> (ChildStdout, ChildStderr) {
        let child = self.child.as_mut().expect("child not reaped yet");
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        (stdout, stderr)
    }

    /// Waits until the child exits, `deadline` passes or [`cancel_all`] is called.
    pub(crate) fn wait_until(&mut self, deadline: Instant) -> Result<Waited, GroundError> {
        let child = self.child.as_mut().expect("child already reaped");
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(Waited::Exited(status));
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(GroundError::Wait {
                        program: self.program.clone(),
                        source,
                    })
                }
            }
            if cancelled() {
                return Ok(Waited::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Waited::DeadlinePassed);
            }
            thread::sleep(POLL.min(deadline - now));
        }
    }

    /// SIGKILLs the child's whole process group (what it left running too) and reaps the child.
    pub(crate) fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill has no memory-safety preconditions. The group id is our child's pid:
            // unreaped, it cannot be reused; just reaped, its group may still hold processes,
            // which keep the id from being reused.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where a pump echoes what it reads.
#[derive(Clone, Copy)]
pub(crate) enum Echo {
    Stdout,
    Stderr,
}

/// The end of a stream, in band: a unique byte string after which a pump stops reading.
pub(crate) struct EndMarker {
    pub(crate) bytes: Vec<u8>,
    /// Called once the marker has been read.
    pub(crate) on_seen: Box<dyn FnOnce() + Send>,
}

/// Reads `source` to its end (or to `end`'s marker, which is dropped), keeps every byte and
/// echoes complete lines with `prefix` as they arrive. The echo goes through `print!`/`eprint!`,
/// so libtest's capture applies to it.
pub(crate) fn pump(
    name: &str,
    mut source: impl Read + Send + 'static,
    echo: Echo,
    prefix: Option<String>,
    mut end: Option<EndMarker>,
) -> JoinHandle<Vec<u8>> {
    let body = move || {
        let mut all = Vec::new();
        let mut line_start = 0;
        let mut buf = [0u8; 8192];
        let mut ended = false;
        while !ended {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let before = all.len();
            all.extend_from_slice(&buf[..n]);
            if let Some(marker) = &end {
                let from = before.saturating_sub(marker.bytes.len());
                let found = all[from..]
                    .windows(marker.bytes.len())
                    .position(|w| w == marker.bytes.as_slice());
                if let Some(pos) = found {
                    all.truncate(from + pos);
                    ended = true;
                }
            }
            if let Some(prefix) = &prefix {
                while let Some(pos) = all[line_start..].iter().position(|&b| b == b'\n') {
                    let end = line_start + pos + 1;
                    emit(echo, prefix, &all[line_start..end]);
                    line_start = end;
                }
            }
        }
        if let Some(prefix) = &prefix {
            if line_start < all.len() {
                let mut rest = all[line_start..].to_vec();
                rest.push(b'\n');
                emit(echo, prefix, &rest);
            }
        }
        if ended {
            if let Some(marker) = end.take() {
                (marker.on_seen)();
            }
        }
        all
    };
    thread::Builder::new()
        .name(format!("ground-{name}"))
        .spawn(body)
        .expect("spawn output pump thread")
}

fn emit(echo: Echo, prefix: &str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    match echo {
        Echo::Stdout => {
            print!("{prefix}{text}");
            let _ = io::stdout().flush();
        }
        Echo::Stderr => eprint!("{prefix}{text}"),
    }
}

/// A fresh directory `/tmp/nutshell-ground-XXXXXX`, removed with everything in it on drop. It
/// names its owner process, so that the next run removes it if its owner was killed (SIGKILL).
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub(crate) fn create() -> Result<Self, GroundError> {
        let parent = Path::new("/tmp");
        let template = parent.join(format!("{SCRATCH_PREFIX}XXXXXX"));
        let template = CString::new(template.as_os_str().as_bytes()).expect("no NUL in template");
        let mut bytes = template.into_bytes_with_nul();
        // SAFETY: `bytes` is a writable, NUL-terminated buffer ending in "XXXXXX", as mkdtemp
        // requires; it rewrites those six bytes in place.
        let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(GroundError::Scratch {
                parent: parent.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        bytes.pop();
        let path = PathBuf::from(String::from_utf8(bytes).expect("mkdtemp keeps ASCII"));
        let scratch = Self { path };
        let me = std::process::id();
        let owner = format!("{me} {}\n", process_start(me).unwrap_or(0));
        let owner_file = scratch.path.join(OWNER_FILE);
        std::fs::write(&owner_file, owner).map_err(|source| GroundError::Io {
            action: "write",
            path: owner_file,
            source,
        })?;
        sweep_stale(parent);
        Ok(scratch)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const SCRATCH_PREFIX: &str = "nutshell-ground-";
/// `PID STARTTIME` of the process that made a scratch directory.
const OWNER_FILE: &str = "owner";

/// Removes the scratch directories of runners that died without cleaning up (SIGKILL).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SCRATCH_PREFIX) {
            continue;
        }
        // No owner file yet: being created right now, leave it.
        let Ok(owner) = std::fs::read_to_string(entry.path().join(OWNER_FILE)) else {
            continue;
        };
        let mut words = owner.split_whitespace().map(|w| w.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (words.next(), words.next()) else {
            continue;
        };
        let alive = u32::try_from(pid)
            .ok()
            .and_then(process_start)
            .is_some_and(|now| now == start || start == 0);
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A process's start time (clock ticks after boot, field 22 of /proc/PID/stat).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_comm) = stat.rsplit_once(')')?;
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub(crate) fn tail_of(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            if all.is_empty() {
                format!("({} is empty)", path.display())
            } else {
                all[start..].join("\n")
            }
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
