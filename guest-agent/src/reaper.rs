//! Child reaping for PID 1, without stealing exit statuses.
//!
//! As PID 1 the agent inherits every orphan of the guest and must `wait` for
//! them or they stay zombies. But the agent also waits for its own children
//! (namespace probes now; container processes for `WaitProcess` later), and a
//! blanket `waitpid(-1)` would swallow their statuses.
//!
//! The [`Reaper`] solves this with one table of *tracked* children:
//! * children the agent cares about are created through
//!   [`Reaper::spawn_tracked`], which forks while holding the table lock, so
//!   the pid is registered before any reaping pass can observe its exit;
//! * every reaping pass runs `waitpid(.., WNOHANG)` under the same lock and
//!   stores the status of tracked pids; untracked pids (orphans) are dropped;
//! * [`Reaper::wait_for`] / [`Reaper::take_exit`] hand the stored status out
//!   exactly once.
//!
//! Rule for later code: never call `waitpid`/`Child::wait` on a child directly;
//! spawn it through `spawn_tracked` and wait through the reaper.
//!
//! Passes are triggered by SIGCHLD on a dedicated thread
//! ([`Reaper::spawn_sigchld_thread`], which needs SIGCHLD blocked in every
//! thread: call [`block_sigchld`] first thing in `main`). Waiters also run a
//! pass themselves while they wait, so a missed signal only delays them.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use thiserror::Error;

/// Longest a waiter sleeps before running a reaping pass itself.
const WAITER_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildExit {
    /// The child called `exit(code)`.
    Exited(i32),
    /// The child was killed by a signal.
    Signaled { signal: i32, core_dumped: bool },
}

impl ChildExit {
    /// Shell-style status: the exit code, or 128 + signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ChildExit::Exited(code) => code,
            ChildExit::Signaled { signal, .. } => 128 + signal,
        }
    }

    fn from_wait_status(status: WaitStatus) -> Option<(Pid, ChildExit)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid, ChildExit::Exited(code))),
            WaitStatus::Signaled(pid, signal, core_dumped) => Some((
                pid,
                ChildExit::Signaled {
                    signal: signal as i32,
                    core_dumped,
                },
            )),
            _ => None,
        }
    }
}

/// Which children a reaping pass collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapScope {
    /// `waitpid(-1)`: every child, orphans included. For PID 1.
    AllChildren,
    /// `waitpid(pid)` per tracked child only. For an agent running as an
    /// ordinary process (developer host, tests) that must not touch children
    /// it does not own.
    TrackedOnly,
}

#[derive(Debug, Error)]
pub enum ReaperError {
    #[error(
        "pid {0} is not a tracked child (never spawned through the reaper, or already waited for)"
    )]
    NotTracked(Pid),
    #[error("child {pid} still running after {waited:?}")]
    Timeout { pid: Pid, waited: Duration },
    #[error("cannot block SIGCHLD")]
    BlockSigchld(#[source] Errno),
    #[error("cannot start the SIGCHLD thread")]
    SpawnThread(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackedChild {
    Running,
    Exited(ChildExit),
}

#[derive(Debug, Default)]
struct ChildTable {
    tracked: HashMap<Pid, TrackedChild>,
    /// Orphans reaped and dropped; kept for diagnostics.
    untracked_reaped: u64,
}

struct Shared {
    scope: ReapScope,
    table: Mutex<ChildTable>,
    child_exited: Condvar,
}

/// Records exit statuses of tracked children by pid; reaps everything else.
/// Cheap to clone: clones share one table.
#[derive(Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

impl Reaper {
    pub fn new(scope: ReapScope) -> Reaper {
        Reaper {
            shared: Arc::new(Shared {
                scope,
                table: Mutex::new(ChildTable::default()),
                child_exited: Condvar::new(),
            }),
        }
    }

    pub fn scope(&self) -> ReapScope {
        self.shared.scope
    }

    fn lock(&self) -> MutexGuard<'_, ChildTable> {
        // A panicking holder cannot leave the table inconsistent (every
        // update is a single insert/remove), so poisoning is ignored.
        self.shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `spawn` (fork, `Command::spawn`, clone...) with the table locked
    /// and tracks the pid it returns, so no reaping pass can collect the
    /// child before it is registered. `spawn` must not wait for children.
    pub fn spawn_tracked<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(Pid, T), E>,
    ) -> Result<(Pid, T), E> {
        let mut table = self.lock();
        let (pid, spawned) = spawn()?;
        table.tracked.insert(pid, TrackedChild::Running);
        Ok((pid, spawned))
    }

    /// Collects every child that has exited, without blocking. Returns how
    /// many statuses were collected.
    pub fn reap_pending(&self) -> usize {
        let mut table = self.lock();
        let collected = match self.shared.scope {
            ReapScope::AllChildren => reap_any_child(&mut table),
            ReapScope::TrackedOnly => reap_tracked_children(&mut table),
        };
        if collected > 0 {
            self.shared.child_exited.notify_all();
        }
        collected
    }

    /// Hands out (once) the exit of a tracked child that has exited.
    pub fn take_exit(&self, pid: Pid) -> Result<Option<ChildExit>, ReaperError> {
        take_if_exited(&mut self.lock(), pid)
    }

    /// Waits until tracked child `pid` exits and hands out its exit (once).
    pub fn wait_for(&self, pid: Pid, timeout: Duration) -> Result<ChildExit, ReaperError> {
        let start = Instant::now();
        loop {
            self.reap_pending();
            let mut table = self.lock();
            if let Some(exit) = take_if_exited(&mut table, pid)? {
                return Ok(exit);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(ReaperError::Timeout { pid, waited });
            }
            let nap = WAITER_POLL_INTERVAL.min(timeout - waited);
            table = self
                .shared
                .child_exited
                .wait_timeout(table, nap)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            if let Some(exit) = take_if_exited(&mut table, pid)? {
                return Ok(exit);
            }
        }
    }

    /// Stops tracking `pid`: its exit will be dropped like an orphan's.
    pub fn forget(&self, pid: Pid) {
        self.lock().tracked.remove(&pid);
    }

    /// Number of orphans reaped and dropped so far.
    pub fn untracked_reaped(&self) -> u64 {
        self.lock().untracked_reaped
    }

    /// Starts the thread that runs a reaping pass on every SIGCHLD.
    /// [`block_sigchld`] must have run before any thread was started.
    pub fn spawn_sigchld_thread(&self) -> Result<JoinHandle<()>, ReaperError> {
        let reaper = self.clone();
        thread::Builder::new()
            .name("sigchld-reaper".into())
            .spawn(move || {
                let sigchld = sigchld_set();
                loop {
                    // Signals coalesce: one SIGCHLD may stand for many
                    // exits, hence a full pass each time.
                    match sigchld.wait() {
                        Ok(_) => {
                            reaper.reap_pending();
                        }
                        Err(err) => {
                            log::error!("sigwait(SIGCHLD) failed: {err}");
                            thread::sleep(WAITER_POLL_INTERVAL);
                        }
                    }
                }
            })
            .map_err(ReaperError::SpawnThread)
    }
}

fn sigchld_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks SIGCHLD in the calling thread; threads started afterwards inherit
/// the mask, so call it in `main` before starting any. Children started with
/// `std::process::Command` get a clean signal mask again.
pub fn block_sigchld() -> Result<(), ReaperError> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&sigchld_set()), None)
        .map_err(ReaperError::BlockSigchld)
}

fn take_if_exited(table: &mut ChildTable, pid: Pid) -> Result<Option<ChildExit>, ReaperError> {
    match table.tracked.get(&pid) {
        None => Err(ReaperError::NotTracked(pid)),
        Some(TrackedChild::Running) => Ok(None),
        Some(TrackedChild::Exited(exit)) => {
            let exit = *exit;
            table.tracked.remove(&pid);
            Ok(Some(exit))
        }
    }
}

/// Stores `exit` if `pid` is tracked; counts it as an orphan otherwise.
fn record_exit(table: &mut ChildTable, pid: Pid, exit: ChildExit) {
    match table.tracked.get_mut(&pid) {
        Some(state) => *state = TrackedChild::Exited(exit),
        None => {
            table.untracked_reaped += 1;
            log::debug!("reaped orphan {pid}: {exit:?}");
        }
    }
}

fn reap_any_child(table: &mut ChildTable) -> usize {
    let mut collected = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return collected,
            Ok(status) => {
                if let Some((pid, exit)) = ChildExit::from_wait_status(status) {
                    record_exit(table, pid, exit);
                    collected += 1;
                }
            }
            Err(Errno::EINTR) => {}
            Err(err) => {
                log::error!("waitpid(-1) failed: {err}");
                return collected;
            }
        }
    }
}

fn reap_tracked_children(table: &mut ChildTable) -> usize {
    let running: Vec<Pid> = table
        .tracked
        .iter()
        .filter(|(_, state)| **state == TrackedChild::Running)
        .map(|(pid, _)| *pid)
        .collect();
    let mut collected = 0;
    for pid in running {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                if let Some((pid, exit)) = ChildExit::from_wait_status(status) {
                    record_exit(table, pid, exit);
                    collected += 1;
                }
            }
            Err(Errno::ECHILD) => {
                // Someone else waited for it: its status is lost for good.
                log::warn!("tracked child {pid} was reaped behind the reaper's back");
                table.tracked.remove(&pid);
            }
            Err(err) => log::error!("waitpid({pid}) failed: {err}"),
        }
    }
    collected
}

#[cfg(test)]
mod tests;
