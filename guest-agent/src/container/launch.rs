//! Starting a container's init process or an exec: the child side of runc's `create`/`exec`.
//! Everything the children use is prepared before the fork ([`LaunchPlan`]); the children then
//! only make system calls.
//!
//! helper (tracked by the agent's reaper): closes every descriptor it does not need, setns into
//! the namespaces to join (an exec: all of its container's, mnt last), unshares the new ones,
//! waits for the agent to place it in the container's cgroup, unshares a cgroup namespace if
//! asked, forks the process (which lands in a joined or new pid namespace), reports its pid,
//! waits for it and leaves with its status.
//! process: stdio and session; for an init, its root ([`super::rootfs_setup`]); then the OCI
//! process setup and execve ([`super::process_setup`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;

use super::process_setup::{self, ChildStdioFds, ProcessPlan};
use super::rootfs_setup::{self, RootfsPlan};
use super::steps::{Step, STEP_NAMES};
use crate::child_report::{self, fail, fail_item, StepFailure};

/// Everything the children need, built before the fork.
pub struct LaunchPlan {
    /// Namespaces to join (opened /proc/<pid>/ns/* files) and the CLONE_NEW* flag of each, in
    /// order.
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// CLONE_NEW* flags to unshare before the cgroup placement (mnt, pid...).
    pub unshare: libc::c_int,
    /// CLONE_NEW* flags to unshare after it (cgroup).
    pub unshare_after_placement: libc::c_int,
    /// The container's root, for an init; None for an exec.
    pub rootfs: Option<RootfsPlan>,
    pub process: ProcessPlan,
    pub stdio: ChildStdioFds,
}

/// The two ends the agent keeps: the report pipe's read end and the "go" pipe's write end.
pub struct LaunchPipes {
    pub report: OwnedFd,
    pub go: OwnedFd,
}

/// Forks the helper. The caller places the helper's pid in the container's cgroup, then calls
/// [`release`], then [`read_report`].
pub fn spawn(plan: &LaunchPlan) -> Result<(Pid, LaunchPipes), nix::Error> {
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut keep: Vec<RawFd> = vec![
        report_write.as_raw_fd(),
        go_read.as_raw_fd(),
        plan.stdio.stdin,
        plan.stdio.stdout,
        plan.stdio.stderr,
    ];
    keep.extend(plan.join.iter().map(|(fd, _)| fd.as_raw_fd()));
    // SAFETY: the child runs `helper_main`, which makes only system calls on memory prepared
    // before the fork and never returns.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => helper_main(
            plan,
            &mut keep,
            report_write.as_raw_fd(),
            go_read.as_raw_fd(),
        ),
        nix::unistd::ForkResult::Parent { child } => Ok((
            child,
            LaunchPipes {
                report: report_read,
                go: go_write,
            },
        )),
    }
}

/// Lets the helper go on once it sits in its cgroup.
pub fn release(pipes: &LaunchPipes) -> nix::Result<()> {
    nix::unistd::write(&pipes.go, &[1]).map(|_| ())
}

/// The process's pid, or the failed step. The helper reports the pid; the process's successful
/// execve closes the report pipe (CLOEXEC) without a word, a failure writes one.
pub fn read_report(pipes: LaunchPipes) -> Result<Pid, StepFailure> {
    drop(pipes.go);
    child_report::read(pipes.report, &STEP_NAMES)
}

fn helper_main(plan: &LaunchPlan, keep: &mut [RawFd], report: RawFd, go: RawFd) -> ! {
    child_report::close_other_fds(keep);
    // SAFETY: setns/unshare/read/fork/close on descriptors and memory prepared before the fork.
    let process = unsafe {
        for (i, (fd, flag)) in plan.join.iter().enumerate() {
            if libc::setns(fd.as_raw_fd(), *flag) != 0 {
                fail_item(report, Step::Setns.index(), i);
            }
        }
        if plan.unshare != 0 && libc::unshare(plan.unshare) != 0 {
            fail(report, Step::Unshare.index());
        }
        let mut byte = 0u8;
        if libc::read(go, (&mut byte as *mut u8).cast(), 1) != 1 {
            fail(report, Step::CgroupPlacement.index());
        }
        libc::close(go);
        if plan.unshare_after_placement != 0 && libc::unshare(plan.unshare_after_placement) != 0 {
            fail(report, Step::Unshare.index());
        }
        for (fd, _) in &plan.join {
            libc::close(fd.as_raw_fd());
        }
        let process = libc::fork();
        if process < 0 {
            fail(report, Step::Fork.index());
        }
        if process == 0 {
            process_main(plan, report);
        }
        child_report::report_pid(report, process);
        for fd in [
            report,
            plan.stdio.stdin,
            plan.stdio.stdout,
            plan.stdio.stderr,
        ] {
            libc::close(fd);
        }
        process
    };
    child_report::exit_like(process)
}

fn process_main(plan: &LaunchPlan, report: RawFd) -> ! {
    process_setup::setup_stdio(plan.stdio, report);
    if let Some(rootfs) = &plan.rootfs {
        rootfs_setup::build_root(rootfs, report);
        rootfs_setup::harden_root(rootfs, report);
    }
    process_setup::finish_and_exec(&plan.process, report)
}
