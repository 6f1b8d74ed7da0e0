//! How forked children of the agent report back before they exec or settle: 16-byte records
//! on a CLOEXEC pipe. `[0, pid, 0, 0]` names a process the child started; `[1, step, errno,
//! item]` says which step failed (item: which entry of a list, or -1). A successful execve
//! closes the pipe without a word.
//!
//! Everything here that runs in a child makes only async-signal-safe system calls.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;

/// A failed step, its errno and which item of the step's list failed, as read back by the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepFailure {
    pub step: &'static str,
    pub errno: i32,
    pub item: Option<usize>,
}

impl StepFailure {
    pub fn new(step: &'static str, errno: i32) -> StepFailure {
        StepFailure {
            step,
            errno,
            item: None,
        }
    }
}

const RECORD_LEN: usize = 16;

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn write_record(fd: RawFd, words: [i32; 4]) {
    let mut buf = [0u8; RECORD_LEN];
    for (i, w) in words.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    // SAFETY: write(2) of a stack buffer to a pipe; async-signal-safe.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// In a child: reports the pid of a process it started.
pub fn report_pid(fd: RawFd, pid: libc::pid_t) {
    write_record(fd, [0, pid, 0, 0]);
}

/// In a child: reports that `step` failed with the current errno, and exits.
pub fn fail(fd: RawFd, step: usize) -> ! {
    fail_item(fd, step, usize::MAX)
}

/// In a child: reports that `step` failed on entry `item` of its list, and exits.
pub fn fail_item(fd: RawFd, step: usize, item: usize) -> ! {
    let item = i32::try_from(item).unwrap_or(-1);
    write_record(fd, [1, step as i32, errno(), item]);
    // SAFETY: _exit(2) in a forked child: no destructors, no atexit handlers.
    unsafe { libc::_exit(127) }
}

/// In a freshly forked child: closes every descriptor except 0, 1, 2 and `keep`, so that it
/// holds no copy of pipes and sockets of other processes (a stdio pipe reaches EOF only when
/// every write end is closed).
pub fn close_other_fds(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for &fd in keep.iter() {
        let Ok(fd) = libc::c_uint::try_from(fd) else {
            continue;
        };
        if fd >= first {
            if fd > first {
                // SAFETY: close_range(2) on a range of descriptors this child owns.
                unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0) };
            }
            first = fd + 1;
        }
    }
    // SAFETY: as above, up to the highest possible descriptor.
    unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
}

/// In a helper child: waits for `pid` and exits with its status (128 + signal when killed), so
/// that whoever tracks the helper learns how `pid` ended.
pub fn exit_like(pid: libc::pid_t) -> ! {
    // SAFETY: waitpid(2) and _exit(2) in a forked, single-threaded child.
    unsafe {
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && errno() == libc::EINTR {}
        libc::_exit(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        });
    }
}

/// In the agent: reads records until the pipe closes. The reported pid, or the failed step
/// (named from `steps`) and its errno.
pub fn read(fd: OwnedFd, steps: &[&'static str]) -> Result<Pid, StepFailure> {
    let mut buf = [0u8; 2 * RECORD_LEN];
    let mut filled = 0;
    while filled < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(StepFailure::new("report", e as i32)),
        }
    }
    let word = |i: usize| i32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut pid = None;
    for record in 0..filled / RECORD_LEN {
        let base = record * RECORD_LEN;
        if word(base) == 0 {
            pid = Some(Pid::from_raw(word(base + 4)));
        } else {
            let step = steps
                .get(word(base + 4) as usize)
                .copied()
                .unwrap_or("unknown step");
            return Err(StepFailure {
                step,
                errno: word(base + 8),
                item: usize::try_from(word(base + 12)).ok(),
            });
        }
    }
    pid.ok_or(StepFailure::new("report", libc::EPIPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let (r, w) = nix::unistd::pipe().unwrap();
        report_pid(w.as_raw_fd(), 42);
        drop(w);
        assert_eq!(read(r, &["a"]), Ok(Pid::from_raw(42)));
        let (r, w) = nix::unistd::pipe().unwrap();
        report_pid(w.as_raw_fd(), 42);
        write_record(w.as_raw_fd(), [1, 1, libc::ENOENT, 3]);
        drop(w);
        let failure = read(r, &["a", "b"]).unwrap_err();
        assert_eq!(
            (failure.step, failure.errno, failure.item),
            ("b", libc::ENOENT, Some(3))
        );
        let (r, w) = nix::unistd::pipe().unwrap();
        write_record(w.as_raw_fd(), [1, 0, libc::EPERM, -1]);
        drop(w);
        assert_eq!(read(r, &["a"]), Err(StepFailure::new("a", libc::EPERM)));
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert_eq!(
            read(r, &["a"]),
            Err(StepFailure::new("report", libc::EPIPE))
        );
    }
}
