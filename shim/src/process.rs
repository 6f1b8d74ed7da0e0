//! The shim's record of each task: a container's init process and its execs, with their
//! status, exit and stdio, and a condition variable that `Wait` blocks on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status as TaskStatus;

use crate::spec::Role;
use crate::stdio::StdioPaths;

/// Where a process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn task_status(self) -> TaskStatus {
        match self {
            Status::Created => TaskStatus::CREATED,
            Status::Running => TaskStatus::RUNNING,
            Status::Stopped => TaskStatus::STOPPED,
        }
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        timestamp(self.at)
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = since.as_secs() as i64;
    ts.nanos = since.subsec_nanos() as i32;
    ts
}

#[derive(Debug)]
struct State {
    status: Status,
    exit: Option<Exit>,
    /// A TaskOOM for this container was published during this process's life.
    oom_announced: bool,
}

/// One process: a container's init (`exec_id` empty) or an exec.
pub struct Process {
    pub container_id: String,
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// An exec's OCI Process (JSON), from the Exec call.
    pub exec_spec: Option<Vec<u8>>,
    /// Set by CloseIO (or the exit): the stdin copier ends after draining the FIFO.
    pub stdin_closed: Arc<AtomicBool>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        exec_spec: Option<Vec<u8>>,
    ) -> Process {
        Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            exec_spec,
            stdin_closed: Arc::new(AtomicBool::new(false)),
            state: Mutex::new(State {
                status: Status::Created,
                exit: None,
                oom_announced: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id containerd's events use for the process: the exec id, or the container id.
    pub fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }

    pub fn status(&self) -> (Status, Option<Exit>) {
        let state = self.lock();
        (state.status, state.exit)
    }

    /// Moves a created process to running; false if it was not in the created state.
    pub fn set_running(&self) -> bool {
        let mut state = self.lock();
        if state.status != Status::Created {
            return false;
        }
        state.status = Status::Running;
        true
    }

    /// Records the exit (the first one wins), runs `announce` (under the process's lock, so
    /// that nobody sees the exit before it is announced), then wakes every waiter; whether it
    /// was the first.
    pub fn set_exited(&self, exit: Exit, announce: impl FnOnce(bool)) -> bool {
        let mut state = self.lock();
        if state.status == Status::Stopped {
            return false;
        }
        announce(state.oom_announced);
        state.status = Status::Stopped;
        state.exit = Some(exit);
        self.changed.notify_all();
        true
    }

    /// Runs `announce` (a TaskOOM) unless the process exited, under the same lock as
    /// [`Process::set_exited`], so the announcement precedes the exit's and the exit knows of
    /// it (`set_exited` passes it to its own `announce`); whether it ran.
    pub fn announce_oom(&self, announce: impl FnOnce()) -> bool {
        let mut state = self.lock();
        if state.status == Status::Stopped {
            return false;
        }
        announce();
        state.oom_announced = true;
        true
    }

    /// Blocks until the process exited.
    pub fn wait(&self) -> Exit {
        let mut state = self.lock();
        loop {
            if let Some(exit) = state.exit {
                return exit;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One container of the pod.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub role: Role,
    /// The shim mounted `<bundle>/rootfs` (containerd passed rootfs mounts).
    pub rootfs_mounted: bool,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    /// The init process (empty `exec_id`) or the exec `exec_id`.
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            Some(self.init.clone())
        } else {
            self.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(exec_id)
                .cloned()
        }
    }

    /// Every process: the init first.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.init.clone()];
        all.extend(
            self.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_returns_at_once_for_an_exited_process_and_wakes_waiters() {
        let p = Arc::new(Process::new("c", "", StdioPaths::default(), None));
        assert_eq!(p.event_id(), "c");
        assert!(p.set_running());
        assert!(!p.set_running());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        let mut announced = 0;
        assert!(p.set_exited(Exit::now(3), |_| announced += 1));
        assert!(
            !p.set_exited(Exit::now(137), |_| announced += 1),
            "the first exit wins"
        );
        assert_eq!(announced, 1);
        assert_eq!(waiter.join().unwrap().status, 3);
        assert_eq!(p.wait().status, 3);
        assert_eq!(p.status().0, Status::Stopped);
        let exec = Process::new("c", "e1", StdioPaths::default(), Some(b"{}".to_vec()));
        assert_eq!(exec.event_id(), "e1");
    }

    #[test]
    fn an_oom_announced_while_running_is_known_to_the_exit() {
        let p = Process::new("c", "", StdioPaths::default(), None);
        assert!(p.set_running());
        let mut ooms = 0;
        assert!(p.announce_oom(|| ooms += 1));
        let mut seen = None;
        assert!(p.set_exited(Exit::now(137), |announced| seen = Some(announced)));
        assert_eq!((ooms, seen), (1, Some(true)));
        assert!(!p.announce_oom(|| ooms += 1), "none after the exit");
        assert_eq!(ooms, 1);
    }
}
