//! The host side of a nutshell pod, shared by the `nutshell` CLI and the containerd shim:
//!
//! * [`pod_dirs`]: where a pod's files live on the host, and where the guest sees the share;
//! * [`state`]: the pod's recorded state (`state.json`);
//! * [`host_mounts`], [`share`]: the virtio-fs share: container rootfs overlays, volumes and
//!   the pod's /etc files, and taking them down;
//! * [`share_path`]: walking the guest-writable share without following its symlinks;
//! * [`vm`]: starting the VMM and reaching its agent;
//! * [`host_cgroup`]: the host cgroup the VMM runs in, sized from the pod;
//! * [`pod`]: a pod from its plan to running containers, and its teardown;
//! * [`supervisor`]: the process that keeps a pod: logs, waits, restarts, stop.

pub mod host_cgroup;
pub mod host_mounts;
pub mod pod;
pub mod pod_dirs;
pub mod share;
pub mod share_path;
pub mod state;
pub mod supervisor;
pub mod vm;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what} {target}: {errno}")]
    Mount {
        what: &'static str,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("{what} {path}: no such file")]
    Missing { what: &'static str, path: PathBuf },
    #[error("pod state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("{path}: {reason} (paths in the pod's share are never followed through a symlink)")]
    SharePath { path: PathBuf, reason: String },
    #[error("volume {volume:?}: {reason}")]
    Volume { volume: String, reason: String },
    #[error("image: {0}")]
    Image(#[from] nutshell_image::ImageError),
    #[error("{0}")]
    PodSpec(#[from] nutshell_podspec::PodSpecError),
    #[error("guest agent: {0}")]
    Agent(String),
    #[error("pod {pod:?}: {reason}")]
    Pod { pod: String, reason: String },
    /// A host cgroup's `file` (or directory, or path) and what went wrong with it.
    #[error("host cgroup {file}: {problem}")]
    HostCgroup { file: PathBuf, problem: String },
}

impl RuntimeError {
    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { what, path, source }
    }

    /// An agent call's failure, with the call named.
    pub fn agent(call: &str, err: nutshell_protocol::ClientError) -> RuntimeError {
        let status = err.status_message().map(str::to_owned);
        RuntimeError::Agent(match status {
            Some(message) => format!("{call}: {message}"),
            None => format!("{call}: {err}"),
        })
    }
}
