//! pause: the process that holds a pod's shared namespaces.
//!
//! It is the agent itself, forked, not a shell or another binary. A helper child unshares the
//! pod's namespaces (net, uts, ipc as asked; always a new pid namespace unless the pod uses the
//! guest's), sets the hostname, and forks pause, which is PID 1 of the new pid namespace and
//! reaps the zombies that land on it. The helper reports pause's pid over a pipe and then waits
//! for it, so the agent's reaper tracks the helper and sees pause's end through it.
//!
//! Between fork and exit the children only make async-signal-safe system calls on memory
//! prepared before the fork.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// What pause is made of.
pub struct PauseSpec {
    pub flags: CloneFlags,
    /// Applied when `flags` has a new uts namespace.
    pub hostname: Vec<u8>,
}

/// Failure of a step in the child, reported back through the pipe: (step, errno).
#[derive(Debug, PartialEq, Eq)]
pub struct ChildFailure {
    pub step: &'static str,
    pub errno: i32,
}

const STEPS: [&str; 4] = ["unshare", "sethostname", "fork pause", "report"];

/// Forks the helper; returns the helper's pid and pause's pid (both in the guest's root pid
/// namespace). Call it inside `Reaper::spawn_tracked` with the helper's pid.
pub fn spawn(spec: &PauseSpec) -> Result<(Pid, Result<Pid, ChildFailure>), nix::Error> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child runs `helper_main`, which only makes async-signal-safe system calls on
    // data prepared before the fork and never returns.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            helper_main(spec, &write_end)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            Ok((child, read_report(read_end)))
        }
    }
}

/// Reads the helper's 12-byte report: tag 0 + pause pid, or tag 1 + step + errno.
fn read_report(read_end: OwnedFd) -> Result<Pid, ChildFailure> {
    let mut buf = [0u8; 12];
    let mut filled = 0;
    while filled < buf.len() {
        match nix::unistd::read(read_end.as_raw_fd(), &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(ChildFailure {
                    step: "report",
                    errno: e as i32,
                })
            }
        }
    }
    let word = |i: usize| i32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    match (filled, word(0)) {
        (12, 0) => Ok(Pid::from_raw(word(4))),
        (12, 1) => Err(ChildFailure {
            step: STEPS
                .get(word(4) as usize)
                .copied()
                .unwrap_or("unknown step"),
            errno: word(8),
        }),
        _ => Err(ChildFailure {
            step: "report",
            errno: libc::EPIPE,
        }),
    }
}

fn report(fd: &OwnedFd, words: [i32; 3]) {
    let mut buf = [0u8; 12];
    for (i, w) in words.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    // SAFETY: write(2) of a stack buffer to a pipe we own; async-signal-safe.
    unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
}

fn fail(fd: &OwnedFd, step: usize, errno: i32) -> ! {
    report(fd, [1, step as i32, errno]);
    // SAFETY: _exit(2) never returns and runs no destructors (we are a forked child).
    unsafe { libc::_exit(1) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn helper_main(spec: &PauseSpec, fd: &OwnedFd) -> ! {
    // SAFETY: unshare(2) and sethostname(2) with valid arguments; async-signal-safe.
    unsafe {
        if libc::unshare(spec.flags.bits()) != 0 {
            fail(fd, 0, errno());
        }
        if spec.flags.contains(CloneFlags::CLONE_NEWUTS)
            && libc::sethostname(spec.hostname.as_ptr().cast(), spec.hostname.len()) != 0
        {
            fail(fd, 1, errno());
        }
    }
    // SAFETY: fork(2) from the single-threaded helper; the child runs `pause_main`.
    let pause = unsafe { libc::fork() };
    if pause < 0 {
        fail(fd, 2, errno());
    }
    if pause == 0 {
        pause_main(fd);
    }
    report(fd, [0, pause, 0]);
    // SAFETY: closing our write end so the agent sees the report's end; then we wait for pause
    // and leave with its status, so the reaper learns when pause is gone.
    unsafe {
        libc::close(fd.as_raw_fd());
        let mut status = 0;
        while libc::waitpid(pause, &mut status, 0) < 0 && errno() == libc::EINTR {}
        libc::_exit(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        });
    }
}

extern "C" fn on_sigchld(_: libc::c_int) {}

/// pause: sleeps, and as PID 1 of its pid namespace reaps every zombie handed to it.
fn pause_main(fd: &OwnedFd) -> ! {
    // SAFETY: only async-signal-safe calls: close, prctl, sigaction, sigsuspend, waitpid.
    unsafe {
        libc::close(fd.as_raw_fd());
        libc::prctl(
            libc::PR_SET_NAME,
            c"pause".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigchld as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigsuspend(&empty);
        }
    }
}
