//! Guest details, probed when asked (not at boot): online CPUs, memory,
//! cgroup v2 controllers and which namespace types can be created.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{fork, ForkResult, Pid};
use thiserror::Error;

use crate::cgroups::{read_controller_list, CONTROLLERS_FILE, SUBTREE_CONTROL_FILE};
use crate::reaper::{ChildExit, Reaper, ReaperError};

/// How long a namespace probe child may take before it is killed.
pub const NAMESPACE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A namespace type and the `unshare(2)` flag that creates one.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceKind {
    /// Short name as in `/proc/<pid>/ns/<name>`.
    pub name: &'static str,
    pub clone_flag: libc::c_int,
}

/// Every namespace type reported by `GuestDetails`.
pub const NAMESPACE_KINDS: [NamespaceKind; 8] = [
    NamespaceKind {
        name: "uts",
        clone_flag: libc::CLONE_NEWUTS,
    },
    NamespaceKind {
        name: "ipc",
        clone_flag: libc::CLONE_NEWIPC,
    },
    NamespaceKind {
        name: "pid",
        clone_flag: libc::CLONE_NEWPID,
    },
    NamespaceKind {
        name: "net",
        clone_flag: libc::CLONE_NEWNET,
    },
    NamespaceKind {
        name: "mnt",
        clone_flag: libc::CLONE_NEWNS,
    },
    NamespaceKind {
        name: "user",
        clone_flag: libc::CLONE_NEWUSER,
    },
    NamespaceKind {
        name: "cgroup",
        clone_flag: libc::CLONE_NEWCGROUP,
    },
    NamespaceKind {
        name: "time",
        clone_flag: libc::CLONE_NEWTIME,
    },
];

/// Whether a namespace type could be created, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSupport {
    pub kind: &'static str,
    pub outcome: Result<(), String>,
}

/// Everything `GuestDetails` reports, before conversion to protobuf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetails {
    pub online_cpus: u32,
    pub mem_total_kib: u64,
    pub cgroup_controllers: Vec<String>,
    pub cgroup_subtree_control: Vec<String>,
    pub namespaces: Vec<NamespaceSupport>,
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// Roots of the pseudo filesystems the probe reads; tests point them at
/// fixture directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPaths {
    pub proc_dir: PathBuf,
    pub sys_dir: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        SystemPaths {
            proc_dir: PathBuf::from("/proc"),
            sys_dir: PathBuf::from("/sys"),
        }
    }
}

impl SystemPaths {
    pub fn cpu_online_file(&self) -> PathBuf {
        self.sys_dir.join("devices/system/cpu/online")
    }

    pub fn meminfo_file(&self) -> PathBuf {
        self.proc_dir.join("meminfo")
    }

    pub fn cgroup2_root(&self) -> PathBuf {
        self.sys_dir.join("fs/cgroup")
    }
}

/// Collects all guest details; namespace probes fork one child per type.
pub fn collect_guest_details(
    paths: &SystemPaths,
    reaper: &Reaper,
) -> Result<GuestDetails, ProbeError> {
    let cpu_online = paths.cpu_online_file();
    let online_cpus =
        parse_cpu_list(&read_file(&cpu_online)?).map_err(|reason| ProbeError::Parse {
            path: cpu_online,
            reason,
        })?;

    let meminfo = paths.meminfo_file();
    let mem_total_kib =
        parse_mem_total_kib(&read_file(&meminfo)?).ok_or_else(|| ProbeError::Parse {
            path: meminfo,
            reason: "no `MemTotal: <n> kB` line".into(),
        })?;

    let cgroup_root = paths.cgroup2_root();
    Ok(GuestDetails {
        online_cpus,
        mem_total_kib,
        cgroup_controllers: read_cgroup_list(&cgroup_root, CONTROLLERS_FILE)?,
        cgroup_subtree_control: read_cgroup_list(&cgroup_root, SUBTREE_CONTROL_FILE)?,
        namespaces: probe_namespaces(reaper, NAMESPACE_PROBE_TIMEOUT),
    })
}

fn read_file(path: &Path) -> Result<String, ProbeError> {
    fs::read_to_string(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A missing file means "no cgroup v2 hierarchy there" (empty list); other
/// errors are reported.
fn read_cgroup_list(cgroup_root: &Path, file: &str) -> Result<Vec<String>, ProbeError> {
    match read_controller_list(cgroup_root, file) {
        Ok(list) => Ok(list),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ProbeError::Read {
            path: cgroup_root.join(file),
            source,
        }),
    }
}

/// Counts the CPUs of a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(list: &str) -> Result<u32, String> {
    let list = list.trim();
    if list.is_empty() {
        return Err("empty CPU list".into());
    }
    let parse = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("bad CPU number {n:?} in {list:?}"))
    };
    let mut count = 0u32;
    for range in list.split(',') {
        let (first, last) = match range.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => {
                let cpu = parse(range)?;
                (cpu, cpu)
            }
        };
        if last < first {
            return Err(format!("descending CPU range {range:?} in {list:?}"));
        }
        count += last - first + 1;
    }
    Ok(count)
}

/// Extracts `MemTotal` (KiB) from the content of `/proc/meminfo`.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let value = line.strip_prefix("MemTotal:")?.trim();
        value.strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Tries `unshare` for every [`NAMESPACE_KINDS`] entry, each in a forked
/// child (a multi-threaded process cannot unshare a user namespace, and the
/// agent's own namespaces must stay untouched).
pub fn probe_namespaces(reaper: &Reaper, timeout: Duration) -> Vec<NamespaceSupport> {
    let children: Vec<_> = NAMESPACE_KINDS
        .iter()
        .map(|kind| {
            (
                kind,
                reaper.spawn_tracked(|| fork_unshare_child(kind.clone_flag)),
            )
        })
        .collect();
    children
        .into_iter()
        .map(|(kind, spawned)| {
            let outcome = match spawned {
                Ok((pid, ())) => wait_for_probe(reaper, pid, timeout),
                Err(err) => Err(format!("fork failed: {err}")),
            };
            NamespaceSupport {
                kind: kind.name,
                outcome,
            }
        })
        .collect()
}

/// Forks a child that exits with 0 if `unshare(clone_flag)` succeeds and
/// with the errno otherwise.
fn fork_unshare_child(clone_flag: libc::c_int) -> Result<(Pid, ()), Errno> {
    // SAFETY: the agent is multi-threaded, so the child may only use
    // async-signal-safe functions: it calls `unshare` and `_exit` (plain
    // system calls) and reads errno, nothing else (no allocation, no locks).
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok((child, ())),
        ForkResult::Child => {
            // SAFETY: `unshare` takes a flag word and touches no memory.
            let code = if unsafe { libc::unshare(clone_flag) } == 0 {
                0
            } else {
                errno_exit_code(io::Error::last_os_error().raw_os_error())
            };
            // SAFETY: `_exit` ends the child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Exit code carrying an errno (1..=255); 255 when it does not fit.
fn errno_exit_code(errno: Option<i32>) -> i32 {
    errno
        .filter(|errno| (1..=254).contains(errno))
        .unwrap_or(255)
}

fn wait_for_probe(reaper: &Reaper, pid: Pid, timeout: Duration) -> Result<(), String> {
    match reaper.wait_for(pid, timeout) {
        Ok(exit) => outcome_from_exit(exit),
        Err(ReaperError::Timeout { .. }) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = reaper.wait_for(pid, Duration::from_secs(1));
            Err(format!("probe child did not exit within {timeout:?}"))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// Turns the exit of a probe child into the reported outcome.
pub fn outcome_from_exit(exit: ChildExit) -> Result<(), String> {
    match exit {
        ChildExit::Exited(0) => Ok(()),
        ChildExit::Exited(255) => Err("unshare failed with an unknown error".into()),
        ChildExit::Exited(errno) => Err(format!("unshare: {}", Errno::from_raw(errno))),
        ChildExit::Signaled { signal, .. } => Err(format!("probe child killed by signal {signal}")),
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|uts| uts.release().to_string_lossy().into_owned())
        .unwrap_or_else(|err| format!("unknown ({err})"))
}

#[cfg(test)]
mod tests;
