//! How forked children of the agent report back before they exec or settle: 12-byte records
//! on a CLOEXEC pipe. `[0, pid, 0]` names a process the child started; `[1, step, errno]` says
//! which step failed. A successful execve closes the pipe without a word.
//!
//! Everything here that runs in a child makes only async-signal-safe system calls.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::unistd::Pid;

/// A failed step and its errno, as read back by the agent.
pub type StepFailure = (&'static str, i32);

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn write_record(fd: RawFd, words: [i32; 3]) {
    let mut buf = [0u8; 12];
    for (i, w) in words.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    // SAFETY: write(2) of a stack buffer to a pipe; async-signal-safe.
    unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
}

/// In a child: reports the pid of a process it started.
pub fn report_pid(fd: RawFd, pid: libc::pid_t) {
    write_record(fd, [0, pid, 0]);
}

/// In a child: reports that `step` failed with the current errno, and exits.
pub fn fail(fd: RawFd, step: usize) -> ! {
    write_record(fd, [1, step as i32, errno()]);
    // SAFETY: _exit(2) in a forked child: no destructors, no atexit handlers.
    unsafe { libc::_exit(127) }
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
    let mut buf = [0u8; 24];
    let mut filled = 0;
    while filled < buf.len() {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(("report", e as i32)),
        }
    }
    let word = |i: usize| i32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut pid = None;
    for record in 0..filled / 12 {
        let base = record * 12;
        if word(base) == 0 {
            pid = Some(Pid::from_raw(word(base + 4)));
        } else {
            let step = steps
                .get(word(base + 4) as usize)
                .copied()
                .unwrap_or("unknown step");
            return Err((step, word(base + 8)));
        }
    }
    pid.ok_or(("report", libc::EPIPE))
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
        write_record(w.as_raw_fd(), [1, 1, libc::ENOENT]);
        drop(w);
        assert_eq!(read(r, &["a", "b"]), Err(("b", libc::ENOENT)));
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert_eq!(read(r, &["a"]), Err(("report", libc::EPIPE)));
    }
}
