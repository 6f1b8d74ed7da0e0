//! Where one pod's host-side files live: `<state root>/pods/<pod>/`.
//!
//! ```text
//! state.json        the pod's recorded state (state.rs)
//! plan.json         what `run` decided: specs, volumes, VM size (read by the supervisor)
//! vsock.sock        the VMM's hybrid vsock socket (agent and stdio streams)
//! console.log       the guest's serial console (rotated to console.log.1 at 1 MiB)
//! supervisor.log    the supervisor's own log
//! logs/<ctr>.log    each container's output, as `nutshell logs` reads it
//! share/            the virtio-fs share, the only host directory the guest can reach:
//!   containers/<ctr>/rootfs   the container's rootfs (an overlay of the image layers)
//!   volumes/<name>            hostPath/configMap/secret binds, emptyDir directories
//!   pod/hosts, pod/hostname   the pod's /etc files
//! scratch/<ctr>/{upper,work}  the overlay's writable layer, outside the share
//! ```

use std::path::{Path, PathBuf};

/// Default state root (`--state-dir` / `NUTSHELL_STATE_DIR` override it).
pub const DEFAULT_STATE_ROOT: &str = "/run/nutshell";
/// Where the agent mounts the share inside the guest.
pub const GUEST_SHARE: &str = nutshell_protocol::GUEST_SHARE_MOUNT_POINT;
/// The virtio-fs tag of the share.
pub const SHARE_TAG: &str = "nutshell";

/// The files of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDirs {
    pub root: PathBuf,
}

/// Sandbox ids up to this length name their pod directory as they are.
pub const MAX_POD_DIR_NAME: usize = 32;

fn sandbox_dir_name(sandbox_id: &str) -> String {
    if sandbox_id.len() <= MAX_POD_DIR_NAME {
        return sandbox_id.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(sandbox_id.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = sandbox_id.chars().take(12).collect();
    format!("{prefix}-{hex}")
}

impl PodDirs {
    pub fn new(state_root: &Path, pod: &str) -> PodDirs {
        PodDirs {
            root: state_root.join("pods").join(pod),
        }
    }

    /// The directory of a sandbox known by an id of any length (the shim's pods): named by
    /// the id, or for an id longer than [`MAX_POD_DIR_NAME`] (CRI's are 64 characters) by its
    /// first 12 characters and 16 hex digits of its SHA-256, so the VM's socket path stays well
    /// inside a Unix socket's 107 bytes.
    pub fn for_sandbox(state_root: &Path, sandbox_id: &str) -> PodDirs {
        PodDirs::new(state_root, &sandbox_dir_name(sandbox_id))
    }

    /// Every pod directory under `state_root`.
    pub fn all(state_root: &Path) -> Vec<(String, PodDirs)> {
        let mut pods: Vec<(String, PodDirs)> = std::fs::read_dir(state_root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((name.clone(), PodDirs::new(state_root, &name)))
            })
            .collect();
        pods.sort_by(|a, b| a.0.cmp(&b.0));
        pods
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn plan(&self) -> PathBuf {
        self.root.join("plan.json")
    }
    pub fn vsock(&self) -> PathBuf {
        self.root.join("vsock.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.root.join("console.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, container: &str) -> PathBuf {
        self.logs().join(format!("{container}.log"))
    }
    pub fn share(&self) -> PathBuf {
        self.root.join("share")
    }
    pub fn rootfs(&self, container: &str) -> PathBuf {
        self.share()
            .join("containers")
            .join(container)
            .join("rootfs")
    }
    /// The rootfs as the guest sees it.
    pub fn guest_rootfs(container: &str) -> String {
        format!("{GUEST_SHARE}/containers/{container}/rootfs")
    }
    pub fn volume(&self, name: &str) -> PathBuf {
        self.share().join("volumes").join(name)
    }
    /// A volume (or a path in it) as the guest sees it.
    pub fn guest_volume(name: &str, sub_path: Option<&str>) -> String {
        match sub_path {
            Some(sub) => format!("{GUEST_SHARE}/volumes/{name}/{sub}"),
            None => format!("{GUEST_SHARE}/volumes/{name}"),
        }
    }
    pub fn pod_file(&self, file: &str) -> PathBuf {
        self.share().join("pod").join(file)
    }
    pub fn guest_pod_file(file: &str) -> String {
        format!("{GUEST_SHARE}/pod/{file}")
    }
    pub fn scratch(&self, container: &str) -> PathBuf {
        self.root.join("scratch").join(container)
    }
    /// Everything of one container in the share: its rootfs and the host files its spec
    /// mounts (the containerd shim binds them there).
    pub fn container_share(&self, container: &str) -> PathBuf {
        self.share().join("containers").join(container)
    }
    /// The `n`th host mount source of a container, bound into the share.
    pub fn container_mount(&self, container: &str, n: usize) -> PathBuf {
        self.container_share(container)
            .join("mounts")
            .join(n.to_string())
    }
    /// [`PodDirs::container_mount`] as the guest sees it.
    pub fn guest_container_mount(container: &str, n: usize) -> String {
        format!("{GUEST_SHARE}/containers/{container}/mounts/{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_sandbox_ids_get_short_pod_directories() {
        assert_eq!(sandbox_dir_name("my-pod"), "my-pod");
        let (a, b) = ("a".repeat(64), format!("{}b", "a".repeat(63)));
        let (name_a, name_b) = (sandbox_dir_name(&a), sandbox_dir_name(&b));
        assert_eq!(name_a.len(), 29, "{name_a}");
        assert!(name_a.starts_with("aaaaaaaaaaaa-"));
        assert_ne!(name_a, name_b, "ids that share a prefix stay apart");
        assert_eq!(
            name_a,
            sandbox_dir_name(&a),
            "the same id, the same directory"
        );
        assert!(PodDirs::for_sandbox(Path::new("/s"), &a)
            .root
            .ends_with(&name_a));
    }

    #[test]
    fn host_and_guest_paths_line_up() {
        let dirs = PodDirs::new(Path::new("/run/nutshell"), "web");
        assert_eq!(
            dirs.rootfs("app"),
            Path::new("/run/nutshell/pods/web/share/containers/app/rootfs")
        );
        let host_tail = dirs.rootfs("app");
        let host_tail = host_tail.strip_prefix(dirs.share()).unwrap();
        let guest = PodDirs::guest_rootfs("app");
        assert_eq!(
            Path::new(&guest).strip_prefix(GUEST_SHARE).unwrap(),
            host_tail
        );
        let mount = dirs.container_mount("app", 2);
        assert_eq!(
            Path::new(&PodDirs::guest_container_mount("app", 2))
                .strip_prefix(GUEST_SHARE)
                .unwrap(),
            mount.strip_prefix(dirs.share()).unwrap()
        );
        assert_eq!(
            PodDirs::guest_volume("data", Some("sub/dir")),
            "/run/nutshell-share/volumes/data/sub/dir"
        );
    }

    #[test]
    fn pods_are_listed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for pod in ["b", "a"] {
            std::fs::create_dir_all(PodDirs::new(dir.path(), pod).root).unwrap();
        }
        let names: Vec<String> = PodDirs::all(dir.path()).into_iter().map(|p| p.0).collect();
        assert_eq!(names, ["a", "b"]);
    }
}
