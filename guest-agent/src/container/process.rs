//! A started process of a container (its init or an exec): pids, stdio, and how it ended. A
//! watcher thread per process takes the helper's exit from the reaper as soon as it happens,
//! so WaitProcess never holds a sandbox lock and exit times are exact.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::unistd::Pid;

use crate::reaper::{ChildExit, Reaper};
use crate::stdio::ProcessStdio;

/// How a process ended, as WaitProcess reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal.
    pub exit_code: i32,
    /// The signal that killed it, 0 if it exited.
    pub signal: i32,
    pub oom_killed: bool,
    pub exited_at_ns: i64,
}

impl ExitInfo {
    /// From the helper's exit (which mirrors the process's: code, or 128 + signal) and the
    /// cgroup's OOM kill count before and after.
    pub fn from_helper(exit: ChildExit, oom_kills_before: u64, oom_kills_after: u64) -> ExitInfo {
        let (exit_code, signal) = match exit {
            ChildExit::Exited(code) if code > 128 && code < 128 + 65 => (code, code - 128),
            ChildExit::Exited(code) => (code, 0),
            ChildExit::Signaled { signal, .. } => (128 + signal, signal),
        };
        let exited_at_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        ExitInfo {
            exit_code,
            signal,
            oom_killed: signal == libc::SIGKILL && oom_kills_after > oom_kills_before,
            exited_at_ns,
        }
    }
}

/// Where a process's exit lands; waiters block on it.
#[derive(Default)]
pub struct ExitSlot {
    exit: Mutex<Option<ExitInfo>>,
    changed: Condvar,
}

impl ExitSlot {
    pub fn get(&self) -> Option<ExitInfo> {
        *self.exit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, info: ExitInfo) {
        *self.exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(info);
        self.changed.notify_all();
    }

    /// The exit, waiting up to `timeout` for it.
    pub fn wait(&self, timeout: Duration) -> Option<ExitInfo> {
        let guard = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |exit| exit.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

/// A started process.
pub struct Process {
    /// Tracked by the reaper; mirrors `pid`'s exit.
    pub helper: Pid,
    /// In the guest's root pid namespace.
    pub pid: Pid,
    pub exit: Arc<ExitSlot>,
    pub stdio: Arc<ProcessStdio>,
}

impl Process {
    pub fn is_running(&self) -> bool {
        self.exit.get().is_none()
    }
}

/// memory.events' oom_kill count of a cgroup (0 when unreadable).
pub fn oom_kill_count(cgroup: &std::path::Path) -> u64 {
    std::fs::read_to_string(cgroup.join("memory.events"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts the thread that waits for `helper` and fills `slot`.
pub fn watch_exit(reaper: Reaper, helper: Pid, cgroup: PathBuf, slot: Arc<ExitSlot>) {
    let oom_kills_before = oom_kill_count(&cgroup);
    let watch = move || loop {
        match reaper.wait_for(helper, Duration::from_secs(3600)) {
            Ok(exit) => {
                slot.set(ExitInfo::from_helper(
                    exit,
                    oom_kills_before,
                    oom_kill_count(&cgroup),
                ));
                return;
            }
            Err(crate::reaper::ReaperError::Timeout { .. }) => continue,
            Err(e) => {
                log::error!("lost track of process helper {helper}: {e}");
                slot.set(ExitInfo::from_helper(ChildExit::Exited(255), 0, 0));
                return;
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name(format!("exit-{helper}"))
        .spawn(watch)
    {
        log::error!("cannot start the exit watcher of {helper}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_and_signals_are_told_apart() {
        let e = ExitInfo::from_helper(ChildExit::Exited(3), 0, 0);
        assert_eq!((e.exit_code, e.signal, e.oom_killed), (3, 0, false));
        let e = ExitInfo::from_helper(ChildExit::Exited(137), 0, 1);
        assert_eq!((e.exit_code, e.signal, e.oom_killed), (137, 9, true));
        let e = ExitInfo::from_helper(ChildExit::Exited(143), 2, 2);
        assert_eq!((e.exit_code, e.signal, e.oom_killed), (143, 15, false));
        let e = ExitInfo::from_helper(
            ChildExit::Signaled {
                signal: 9,
                core_dumped: false,
            },
            0,
            0,
        );
        assert_eq!((e.exit_code, e.signal, e.oom_killed), (137, 9, false));
        assert!(e.exited_at_ns > 0);
    }

    #[test]
    fn waiters_see_the_exit() {
        let slot = Arc::new(ExitSlot::default());
        assert_eq!(slot.wait(Duration::from_millis(10)), None);
        let setter = {
            let slot = slot.clone();
            std::thread::spawn(move || slot.set(ExitInfo::from_helper(ChildExit::Exited(0), 0, 0)))
        };
        assert_eq!(slot.wait(Duration::from_secs(5)).unwrap().exit_code, 0);
        setter.join().unwrap();
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kill_count(dir.path()), 2);
        assert_eq!(oom_kill_count(&dir.path().join("none")), 0);
    }
}
