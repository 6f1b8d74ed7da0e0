//! The steps of starting a container process, as children report their failure (see
//! [`crate::child_report`]): the index of a [`Step`] goes over the pipe, its name comes back.

/// Everything a helper, a container's init or an exec does between fork and execve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Step {
    Setns,
    Unshare,
    CgroupPlacement,
    Fork,
    Stdio,
    MakePrivate,
    MountRootfs,
    MountSource,
    MountTarget,
    Mount,
    Remount,
    Propagation,
    BindDevice,
    RootSwitch,
    Sysctl,
    ReadonlyPath,
    MaskedPath,
    ReadonlyRoot,
    Hostname,
    Chdir,
    OomScoreAdj,
    Rlimit,
    Umask,
    Seccomp,
    CapabilityBounding,
    KeepCapabilities,
    Groups,
    Gid,
    Uid,
    Capabilities,
    AmbientCapabilities,
    NoNewPrivileges,
    Execve,
}

/// Names of the steps, by index.
pub const STEP_NAMES: [&str; 33] = [
    "setns",
    "unshare",
    "cgroup placement",
    "fork",
    "stdio setup",
    "making / private",
    "rootfs overlay mount",
    "opening the bind source below the pod share (no symlink may be on its way)",
    "resolving the mount target inside the rootfs (symlinks stay inside; no magic links)",
    "mount",
    "bind remount",
    "mount propagation",
    "device bind",
    "root switch (pivot_root)",
    "sysctl",
    "read-only path",
    "masked path",
    "read-only root",
    "sethostname",
    "chdir to cwd",
    "oom_score_adj",
    "setrlimit",
    "umask",
    "seccomp",
    "capability bounding set",
    "PR_SET_KEEPCAPS",
    "setgroups",
    "setgid",
    "setuid",
    "capset",
    "ambient capabilities",
    "no_new_privileges",
    "execve",
];

impl Step {
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_its_name() {
        assert_eq!(STEP_NAMES[Step::Setns.index()], "setns");
        assert_eq!(STEP_NAMES[Step::Execve.index()], "execve");
        assert_eq!(Step::Execve.index() + 1, STEP_NAMES.len());
        assert_eq!(STEP_NAMES[Step::Capabilities.index()], "capset");
        assert_eq!(STEP_NAMES[Step::Mount.index()], "mount");
    }
}
