//! The pod's cgroup v2 subtree: `<root>/<parent>/pod<uid>/` with one child per container and
//! one for pause. Ancestors are created as needed and get every available controller enabled
//! for their children; on removal only the pod's own cgroups go (kubelet keeps the parents).

use std::path::{Path, PathBuf};

use super::SandboxError;

/// The controllers a pod's children get, where the kernel offers them.
const CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "cpuset", "io"];

fn io_error(what: &'static str, path: &Path, source: std::io::Error) -> SandboxError {
    SandboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Enables every controller of [`CONTROLLERS`] that `dir` offers for its children.
fn enable_controllers(dir: &Path) -> Result<(), SandboxError> {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map_err(|e| io_error("read", &dir.join("cgroup.controllers"), e))?;
    let wanted: Vec<String> = offered
        .split_whitespace()
        .filter(|c| CONTROLLERS.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    std::fs::write(&file, wanted.join(" ")).map_err(|e| io_error("write", &file, e))
}

/// Creates `<root>/<parent>/pod<uid>`, enabling controllers on the way down.
pub fn create_pod(root: &Path, parent: &str, pod_uid: &str) -> Result<PathBuf, SandboxError> {
    let mut dir = root.to_path_buf();
    enable_controllers(&dir)?;
    for part in Path::new(parent).components() {
        dir.push(part);
        if !dir.is_dir() {
            std::fs::create_dir(&dir).map_err(|e| io_error("create", &dir, e))?;
        }
        enable_controllers(&dir)?;
    }
    dir.push(format!("pod{pod_uid}"));
    std::fs::create_dir(&dir).map_err(|e| io_error("create", &dir, e))?;
    enable_controllers(&dir)?;
    Ok(dir)
}

/// Creates the child cgroup `name` of the pod and moves `pid` into it.
pub fn create_child(pod: &Path, name: &str, pid: u32) -> Result<PathBuf, SandboxError> {
    let dir = pod.join(name);
    std::fs::create_dir(&dir).map_err(|e| io_error("create", &dir, e))?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(|e| io_error("write", &procs, e))?;
    Ok(dir)
}

/// Removes a cgroup directory whose processes are gone (retrying briefly while the kernel
/// finishes tearing them down).
pub fn remove(dir: &Path) -> Result<(), SandboxError> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(io_error("remove", dir, e)),
        }
    }
}

/// The pids in a cgroup.
pub fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILLs every process of a cgroup (cgroup.kill; one by one where the kernel lacks it) and
/// waits, up to a second, until it is empty.
pub fn kill_all(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in pids(dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for _ in 0..100 {
        if pids(dir).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The live state of one cgroup, for InspectSandbox.
pub fn node(root: &Path, dir: &Path, owner: &str) -> nutshell_protocol::agent::CgroupNode {
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut node = nutshell_protocol::agent::CgroupNode::new();
    node.path = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    node.owner = owner.to_string();
    node.memory_max = read("memory.max");
    node.memory_swap_max = read("memory.swap.max");
    node.cpu_max = read("cpu.max");
    node.cpu_weight = read("cpu.weight");
    node.pids_max = read("pids.max");
    node.cpuset_cpus = read("cpuset.cpus");
    node.memory_current = read("memory.current").parse().unwrap_or(0);
    node.procs = read("cgroup.procs")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_tree_is_created_with_controllers() {
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| std::fs::write(root.path().join(rel), text).unwrap();
        write("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n");
        // A plain directory does not grow interface files the way cgroupfs does: pre-create
        // the parent's, and expect the pod's missing one to be named in the error.
        std::fs::create_dir(root.path().join("kubepods")).unwrap();
        write("kubepods/cgroup.controllers", "cpu memory\n");
        let err = create_pod(root.path(), "kubepods", "abc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubepods/podabc/cgroup.controllers"), "{err}");
        let read = |rel: &str| std::fs::read_to_string(root.path().join(rel)).unwrap();
        assert_eq!(
            read("cgroup.subtree_control"),
            "+cpuset +cpu +io +memory +pids"
        );
        assert_eq!(read("kubepods/cgroup.subtree_control"), "+cpu +memory");
        assert!(root.path().join("kubepods/podabc").is_dir());
    }
}
