//! A pod's recorded state (`state.json`): written by `run` and the supervisor, read by `ps`,
//! `logs`, `exec`, `inspect`, `stop` and `rm`. Writes go to a temporary file first and are
//! renamed over the old one, so a reader never sees half a file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// Where the pod is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodPhase {
    /// Images, share and VM being prepared.
    Starting,
    Running,
    /// Every container ended and the restart policy starts none again.
    Completed,
    /// Torn down by `stop` (or Ctrl-C during `run`).
    Stopped,
    /// The VMM ended on its own; `detail` says how.
    Crashed,
    /// Starting failed; `detail` says why.
    Failed,
}

impl PodPhase {
    pub fn name(self) -> &'static str {
        match self {
            PodPhase::Starting => "starting",
            PodPhase::Running => "running",
            PodPhase::Completed => "completed",
            PodPhase::Stopped => "stopped",
            PodPhase::Crashed => "crashed",
            PodPhase::Failed => "failed",
        }
    }

    /// A phase in which the supervisor and the VM are expected to be alive.
    pub fn is_live(self) -> bool {
        matches!(self, PodPhase::Starting | PodPhase::Running)
    }
}

/// One container of the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    /// "created", "running" or "exited".
    pub status: String,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub restarts: u32,
}

/// The pod as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    pub name: String,
    pub uid: String,
    pub phase: PodPhase,
    /// Why the pod failed or crashed.
    pub detail: Option<String>,
    pub supervisor_pid: Option<i32>,
    pub vmm_pid: Option<i32>,
    /// Image ids (config digests) the pod holds references to.
    pub images: Vec<String>,
    pub containers: Vec<ContainerState>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

impl PodState {
    pub fn load(path: &Path) -> Result<PodState, RuntimeError> {
        let text = std::fs::read(path).map_err(RuntimeError::io("read", path))?;
        serde_json::from_slice(&text).map_err(|e| RuntimeError::State {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), RuntimeError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("the state serializes");
        std::fs::write(&tmp, text).map_err(RuntimeError::io("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(RuntimeError::io("rename into place", path))
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerState> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// Why a pod recorded in a live phase has crashed although its supervisor has not recorded
    /// it yet (or never will): its supervisor or its VMM is gone. `None` when it is not live or
    /// both are running. `ps` shows it and `rm` accepts such a pod without `-f`.
    pub fn crashed_unrecorded(&self) -> Option<&'static str> {
        if !self.phase.is_live() {
            return None;
        }
        if !self.supervisor_pid.is_some_and(process_alive) {
            return Some("supervisor gone");
        }
        if self.vmm_pid.is_some_and(|p| !process_alive(p)) {
            return Some("VMM gone");
        }
        None
    }
}

/// Whether process `pid` is alive (and not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let state = PodState {
            name: "web".into(),
            uid: "web".into(),
            phase: PodPhase::Running,
            detail: None,
            supervisor_pid: Some(42),
            vmm_pid: Some(43),
            images: vec!["sha256:ab".into()],
            containers: vec![ContainerState {
                name: "app".into(),
                image: "busybox".into(),
                status: "running".into(),
                exit_code: None,
                oom_killed: false,
                restarts: 0,
            }],
            created_at: 1,
        };
        state.save(&path).unwrap();
        assert_eq!(PodState::load(&path).unwrap(), state);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{").unwrap();
        let err = PodState::load(&path).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
