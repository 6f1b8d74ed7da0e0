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

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::child_report::{self, fail, fail_item, StepFailure};

/// What pause is made of.
pub struct PauseSpec {
    pub flags: CloneFlags,
    /// Applied when `flags` has a new uts namespace.
    pub hostname: Vec<u8>,
    /// The pod's sysctls as (/proc/sys path, value), written inside the new namespaces.
    pub sysctls: Vec<(CString, CString)>,
}

const STEPS: [&str; 5] = [
    "unshare",
    "sethostname",
    "fork pause",
    "sysctl",
    "bringing up lo",
];

/// Forks the helper; returns the helper's pid and pause's pid (both in the guest's root pid
/// namespace). Call it inside `Reaper::spawn_tracked` with the helper's pid.
pub fn spawn(spec: &PauseSpec) -> Result<(Pid, Result<Pid, StepFailure>), nix::Error> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the child runs `helper_main`, which only makes async-signal-safe system calls on
    // data prepared before the fork and never returns.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            child_report::close_other_fds(&mut [write_end.as_raw_fd()]);
            helper_main(spec, write_end.as_raw_fd())
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            Ok((child, child_report::read(read_end, &STEPS)))
        }
    }
}

fn helper_main(spec: &PauseSpec, fd: RawFd) -> ! {
    // SAFETY: unshare(2), sethostname(2), open/write/close with valid arguments prepared before
    // the fork; async-signal-safe.
    unsafe {
        if libc::unshare(spec.flags.bits()) != 0 {
            fail(fd, 0);
        }
        if spec.flags.contains(CloneFlags::CLONE_NEWNET) {
            if let Err(errno) = crate::loopback::bring_up() {
                *libc::__errno_location() = errno;
                fail(fd, 4);
            }
        }
        if spec.flags.contains(CloneFlags::CLONE_NEWUTS)
            && libc::sethostname(spec.hostname.as_ptr().cast(), spec.hostname.len()) != 0
        {
            fail(fd, 1);
        }
        for (i, (path, value)) in spec.sysctls.iter().enumerate() {
            let file = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            let bytes = value.as_bytes();
            if file < 0 || libc::write(file, bytes.as_ptr().cast(), bytes.len()) < 0 {
                fail_item(fd, 3, i);
            }
            libc::close(file);
        }
    }
    // SAFETY: fork(2) from the single-threaded helper; the child runs `pause_main`.
    let pause = unsafe { libc::fork() };
    if pause < 0 {
        fail(fd, 2);
    }
    if pause == 0 {
        pause_main(fd);
    }
    child_report::report_pid(fd, pause);
    // SAFETY: closing our write end so the agent sees the report's end; then we wait for pause
    // and leave with its status, so the reaper learns when pause is gone.
    unsafe { libc::close(fd) };
    child_report::exit_like(pause)
}

extern "C" fn on_sigchld(_: libc::c_int) {}

/// pause: sleeps, and as PID 1 of its pid namespace reaps every zombie handed to it.
fn pause_main(fd: RawFd) -> ! {
    // SAFETY: only async-signal-safe calls: close, prctl, sigaction, sigsuspend, waitpid.
    unsafe {
        libc::close(fd);
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
