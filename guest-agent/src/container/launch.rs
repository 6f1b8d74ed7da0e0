//! Starting a container's init process: the child side of runc's `create`, reduced to what the
//! guest needs. Everything the children use is prepared before the fork ([`LaunchPlan`]); the
//! children then only make system calls.
//!
//! helper (tracked by the agent's reaper): setns into the pod's namespaces, unshare mnt and pid,
//! wait for the agent to place it in the container's cgroup, fork the init process, report its
//! pid, wait for it and leave with its status.
//! init (PID 1 of the container's pid namespace): private mounts, a writable overlay of the
//! rootfs, /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (read-only), pivot_root, then
//! execve of the spec's process.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;

use crate::child_report::{self, errno, fail, StepFailure};

/// A mount the init process makes inside the new root (target relative to the root).
pub struct PlannedMount {
    pub source: CString,
    pub target: CString,
    pub fstype: CString,
    pub flags: libc::c_ulong,
    pub data: CString,
}

/// Everything the children need, built before the fork.
pub struct LaunchPlan {
    /// Namespaces to join (opened /proc/<pause>/ns/* files) and the CLONE_NEW* flag of each.
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// CLONE_NEW* flags to unshare (mnt, and pid unless joined).
    pub unshare: libc::c_int,
    pub overlay_target: CString,
    pub overlay_data: CString,
    pub mounts: Vec<PlannedMount>,
    /// Character devices bound from the guest's /dev: (source, target inside the new root).
    pub devices: Vec<(CString, CString)>,
    pub put_old: CString,
    pub cwd: CString,
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

/// A failed step in a child: (step index into [`STEPS`], errno).
pub const STEPS: [&str; 12] = [
    "setns",
    "unshare",
    "cgroup placement",
    "fork init",
    "make / private",
    "mount rootfs overlay",
    "mount",
    "bind device",
    "pivot_root",
    "chdir",
    "execve",
    "report",
];

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
    // SAFETY: the child runs `helper_main`, which makes only system calls on memory prepared
    // before the fork and never returns.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            helper_main(plan, report_write.as_raw_fd(), go_read.as_raw_fd())
        }
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

/// The init's pid, or the failed step and errno. The helper reports the pid; the init's
/// successful execve closes the report pipe (CLOEXEC) without a word, a failure writes one.
pub fn read_report(pipes: LaunchPipes) -> Result<Pid, StepFailure> {
    drop(pipes.go);
    child_report::read(pipes.report, &STEPS)
}

fn helper_main(plan: &LaunchPlan, report: RawFd, go: RawFd) -> ! {
    // SAFETY: setns/unshare/read/fork/close on descriptors and memory prepared before the fork.
    let init = unsafe {
        for (fd, flag) in &plan.join {
            if libc::setns(fd.as_raw_fd(), *flag) != 0 {
                fail(report, 0);
            }
        }
        if libc::unshare(plan.unshare) != 0 {
            fail(report, 1);
        }
        let mut byte = 0u8;
        if libc::read(go, (&mut byte as *mut u8).cast(), 1) != 1 {
            fail(report, 2);
        }
        let init = libc::fork();
        if init < 0 {
            fail(report, 3);
        }
        if init == 0 {
            init_main(plan, report);
        }
        child_report::report_pid(report, init);
        libc::close(report);
        init
    };
    child_report::exit_like(init)
}

fn init_main(plan: &LaunchPlan, report: RawFd) -> ! {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: mount/pivot_root/chdir/execve on C strings prepared before the fork.
    unsafe {
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            null.cast(),
        ) != 0
        {
            fail(report, 4);
        }
        if libc::mount(
            c"overlay".as_ptr(),
            plan.overlay_target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            plan.overlay_data.as_ptr().cast(),
        ) != 0
        {
            fail(report, 5);
        }
        for m in &plan.mounts {
            libc::mkdir(m.target.as_ptr(), 0o755);
            if libc::mount(
                m.source.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                m.data.as_ptr().cast(),
            ) != 0
            {
                fail(report, 6);
            }
        }
        for (source, target) in &plan.devices {
            let fd = libc::open(
                target.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            if fd >= 0 {
                libc::close(fd);
            }
            if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                null,
                libc::MS_BIND,
                null.cast(),
            ) != 0
            {
                fail(report, 7);
            }
        }
        libc::mkdir(plan.put_old.as_ptr(), 0o700);
        if libc::syscall(
            libc::SYS_pivot_root,
            plan.overlay_target.as_ptr(),
            plan.put_old.as_ptr(),
        ) == 0
        {
            if libc::chdir(c"/".as_ptr()) != 0
                || libc::umount2(c"/.oldroot".as_ptr(), libc::MNT_DETACH) != 0
            {
                fail(report, 8);
            }
            libc::rmdir(c"/.oldroot".as_ptr());
        } else if errno() == libc::EINVAL {
            // The guest's root is the initramfs (rootfs), which cannot be pivoted away from:
            // move the new root over / and chroot into it, as runc's --no-pivot does.
            libc::rmdir(plan.put_old.as_ptr());
            if libc::chdir(plan.overlay_target.as_ptr()) != 0
                || libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    null,
                    libc::MS_MOVE,
                    null.cast(),
                ) != 0
                || libc::chroot(c".".as_ptr()) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                fail(report, 8);
            }
        } else {
            fail(report, 8);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(report, 9);
        }
        let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(null);
        let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(null);
        libc::execve(plan.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(report, 10)
    }
}
