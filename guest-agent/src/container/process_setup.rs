//! The OCI `process` of a container's init or of an exec: everything the child does after its
//! namespaces and root are in place, up to execve. Built before the fork ([`ProcessPlan`]); the
//! child side ([`setup_stdio`], [`finish_and_exec`]) makes only system calls on that memory.
//!
//! Order (runc's): stdio and session; chdir; oom_score_adj and rlimits while still privileged;
//! seccomp here when no_new_privileges is off (loading it needs CAP_SYS_ADMIN); the bounding set;
//! setgroups/setgid/setuid keeping capabilities; capset; ambient set; no_new_privileges;
//! seccomp here when no_new_privileges is on; execve of the first program candidate that exists.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::Path;

use oci_spec::runtime::{PosixRlimitType, Process};

use super::capabilities::{self, CapabilityMasks};
use super::steps::Step;
use super::{cstring, seccomp, ContainerError};
use crate::child_report::{errno, fail, fail_item};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// What the child needs for its process, prepared before the fork.
pub struct ProcessPlan {
    /// args[0] as the spec gave it (for messages).
    pub program_name: String,
    /// Paths execve tries in order (args[0], or args[0] on each PATH entry).
    pub candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub umask: Option<libc::mode_t>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    pub capabilities: Option<CapabilityMasks>,
    pub last_capability: u32,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<CString>,
    pub seccomp: Option<Vec<libc::sock_filter>>,
    pub terminal: bool,
}

/// The child's stdin, stdout and stderr descriptors (held open by the agent until the fork).
#[derive(Clone, Copy, Debug)]
pub struct ChildStdioFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// stdin/stdout/stderr are a pty's follower: becomes its controlling terminal.
    pub terminal: bool,
}

fn rlimit_resource(typ: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType::*;
    match typ {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// The paths execve tries for `arg0`: itself when it has a slash, else each PATH entry.
pub fn program_candidates(arg0: &str, env: &[String]) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| format!("{}/{arg0}", dir.trim_end_matches('/')))
        .collect()
}

/// Builds the plan of an OCI process. `seccomp` is the spec's `linux.seccomp`.
pub fn plan_process(
    process: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
) -> Result<ProcessPlan, ContainerError> {
    let args = process.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(ContainerError::Spec("process.args is empty".into()));
    };
    let env = process.env().clone().unwrap_or_default();
    let cwd = process.cwd().to_string_lossy().into_owned();
    if !cwd.is_empty() && !cwd.starts_with('/') {
        return Err(ContainerError::Spec(format!(
            "process.cwd {cwd:?} must be absolute"
        )));
    }
    let user = process.user();
    let mut rlimits = Vec::new();
    for rlimit in process.rlimits().iter().flatten() {
        if rlimit.soft() > rlimit.hard() {
            // The spec's own spelling (RLIMIT_NOFILE), as the user wrote it.
            let name = serde_json::to_value(rlimit.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{:?}", rlimit.typ()));
            return Err(ContainerError::Spec(format!(
                "process.rlimits {name}: soft {} above hard {}",
                rlimit.soft(),
                rlimit.hard()
            )));
        }
        rlimits.push((
            rlimit_resource(rlimit.typ()),
            libc::rlimit {
                rlim_cur: rlimit.soft(),
                rlim_max: rlimit.hard(),
            },
        ));
    }
    let capabilities = process
        .capabilities()
        .as_ref()
        .map(capabilities::masks)
        .transpose()?;
    let oom_score_adj = match process.oom_score_adj() {
        Some(adj) if !(-1000..=1000).contains(&adj) => {
            return Err(ContainerError::Spec(format!(
                "process.oomScoreAdj {adj} is outside -1000..1000"
            )))
        }
        Some(adj) => Some(cstring(adj.to_string())?),
        None => None,
    };
    Ok(ProcessPlan {
        program_name: arg0.clone(),
        candidates: program_candidates(arg0, &env)
            .into_iter()
            .map(cstring)
            .collect::<Result<_, _>>()?,
        argv: args
            .iter()
            .map(|a| cstring(a.as_str()))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|e| cstring(e.as_str()))
            .collect::<Result<_, _>>()?,
        cwd: cstring(if cwd.is_empty() { "/".to_string() } else { cwd })?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        capabilities,
        last_capability: capabilities::last_capability(),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        oom_score_adj,
        seccomp: seccomp.map(seccomp::compile).transpose()?,
        terminal: process.terminal().unwrap_or(false),
    })
}

/// Whether `arg0` can be found in the image at `rootfs` (checked before starting, for a clear
/// error; the child still searches its own view).
pub fn program_exists(rootfs: &Path, plan: &ProcessPlan) -> bool {
    plan.candidates.iter().any(|c| {
        let rel = c.to_string_lossy();
        rootfs
            .join(rel.trim_start_matches('/'))
            .symlink_metadata()
            .is_ok()
    })
}

/// In the child: stdio onto 0, 1, 2, a new session, the controlling terminal.
pub fn setup_stdio(stdio: ChildStdioFds, report: RawFd) {
    // SAFETY: dup2/setsid/ioctl on descriptors the agent kept open across the fork.
    unsafe {
        for (fd, target) in [(stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)] {
            if libc::dup2(fd, target) < 0 {
                fail(report, Step::Stdio.index());
            }
        }
        if libc::setsid() < 0 {
            fail(report, Step::Stdio.index());
        }
        if stdio.terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(report, Step::Stdio.index());
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn load_seccomp(filter: &[libc::sock_filter], report: RawFd) {
    let program = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(2) with a filter program that lives until execve.
    let loaded = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &program as *const libc::sock_fprog,
        )
    };
    if loaded != 0 {
        fail(report, Step::Seccomp.index());
    }
}

fn apply_capabilities(plan: &ProcessPlan, caps: &CapabilityMasks, report: RawFd) {
    // SAFETY: prctl/capset with valid arguments.
    unsafe {
        for cap in 0..=plan.last_capability.min(63) {
            if caps.bounding & (1 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                && errno() != libc::EINVAL
            {
                fail_item(report, Step::CapabilityBounding.index(), cap as usize);
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            fail(report, Step::KeepCapabilities.index());
        }
    }
    set_identity(plan, report);
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let word = |mask: u64, i: u32| (mask >> (32 * i)) as u32;
    let data: [CapData; 2] = [0, 1].map(|i| CapData {
        effective: word(caps.effective, i),
        permitted: word(caps.permitted, i),
        inheritable: word(caps.inheritable, i),
    });
    // SAFETY: capset(2) with a v3 header and two data words; prctl with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
            fail(report, Step::Capabilities.index());
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        for cap in 0..=plan.last_capability.min(63) {
            if caps.ambient & (1 << cap) != 0
                && libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                ) != 0
            {
                fail_item(report, Step::AmbientCapabilities.index(), cap as usize);
            }
        }
    }
}

fn set_identity(plan: &ProcessPlan, report: RawFd) {
    // SAFETY: setgroups/setresgid/setresuid with memory prepared before the fork.
    unsafe {
        if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) != 0 {
            fail(report, Step::Groups.index());
        }
        if libc::setresgid(plan.gid, plan.gid, plan.gid) != 0 {
            fail(report, Step::Gid.index());
        }
        if libc::setresuid(plan.uid, plan.uid, plan.uid) != 0 {
            fail(report, Step::Uid.index());
        }
    }
}

/// In the child, with namespaces, root and stdio in place: the rest of the process setup and
/// execve. Reports the failing step on `report` (CLOEXEC, so a successful execve closes it).
pub fn finish_and_exec(plan: &ProcessPlan, report: RawFd) -> ! {
    // SAFETY: system calls on memory prepared before the fork.
    unsafe {
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail(report, Step::Chdir.index());
        }
        if let Some(adj) = &plan.oom_score_adj {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            let bytes = adj.as_bytes();
            if fd < 0 || libc::write(fd, bytes.as_ptr().cast(), bytes.len()) < 0 {
                fail(report, Step::OomScoreAdj.index());
            }
            libc::close(fd);
        }
        for (i, (resource, limit)) in plan.rlimits.iter().enumerate() {
            if libc::setrlimit(*resource, limit) != 0 {
                fail_item(report, Step::Rlimit.index(), i);
            }
        }
        if let Some(mask) = plan.umask {
            libc::umask(mask);
        }
    }
    if let (Some(filter), false) = (&plan.seccomp, plan.no_new_privileges) {
        load_seccomp(filter, report);
    }
    match &plan.capabilities {
        Some(caps) => apply_capabilities(plan, caps, report),
        None => set_identity(plan, report),
    }
    if plan.no_new_privileges {
        // SAFETY: prctl with valid arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            fail(report, Step::NoNewPrivileges.index());
        }
        if let Some(filter) = &plan.seccomp {
            load_seccomp(filter, report);
        }
    }
    exec_first_candidate(plan, report)
}

fn exec_first_candidate(plan: &ProcessPlan, report: RawFd) -> ! {
    let null = std::ptr::null::<libc::c_char>();
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(null);
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(null);
    let mut first_error = libc::ENOENT;
    for candidate in &plan.candidates {
        // SAFETY: execve with NUL-terminated argument vectors built above.
        unsafe { libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = errno();
        // Like execvp: go on past missing entries; keep the first other error.
        if e != libc::ENOENT && e != libc::ENOTDIR && first_error == libc::ENOENT {
            first_error = e;
        }
    }
    // SAFETY: setting errno for the report.
    unsafe { *libc::__errno_location() = first_error };
    fail(report, Step::Execve.index())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn candidates_follow_path() {
        assert_eq!(program_candidates("/bin/sh", &[]), ["/bin/sh"]);
        assert_eq!(
            program_candidates("sh", &["PATH=/a:/b/".into()]),
            ["/a/sh", "/b/sh"]
        );
        assert_eq!(program_candidates("sh", &[]).len(), 6);
    }

    #[test]
    fn a_cri_process_plans() {
        let plan = plan_process(
            &process(
                r#"{"args":["sleep","1"],"cwd":"/tmp","env":["PATH=/bin"],
                    "user":{"uid":1000,"gid":1000,"additionalGids":[10,20]},
                    "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}],
                    "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],
                                    "permitted":["CAP_KILL"],"inheritable":[],"ambient":[]},
                    "noNewPrivileges":true,"oomScoreAdj":-998}"#,
            ),
            None,
        )
        .unwrap();
        assert_eq!(plan.candidates, [c"/bin/sleep".to_owned()]);
        assert_eq!(plan.cwd.to_str().unwrap(), "/tmp");
        assert_eq!(
            (plan.uid, plan.gid, plan.groups.clone()),
            (1000, 1000, vec![10, 20])
        );
        assert_eq!(plan.rlimits[0].0, libc::RLIMIT_NOFILE);
        assert_eq!(plan.rlimits[0].1.rlim_cur, 512);
        assert_eq!(plan.capabilities.unwrap().effective, 1 << 5);
        assert!(plan.no_new_privileges);
        assert_eq!(plan.oom_score_adj.unwrap().to_str().unwrap(), "-998");
    }

    #[test]
    fn bad_processes_are_named() {
        for (json, needle) in [
            (
                r#"{"args":[],"cwd":"/","user":{"uid":0,"gid":0}}"#,
                "process.args",
            ),
            (
                r#"{"args":["a"],"cwd":"rel","user":{"uid":0,"gid":0}}"#,
                "process.cwd",
            ),
            (
                r#"{"args":["a"],"cwd":"/","user":{"uid":0,"gid":0},"oomScoreAdj":5000}"#,
                "oomScoreAdj",
            ),
            (
                r#"{"args":["a"],"cwd":"/","user":{"uid":0,"gid":0},
                    "rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":2}]}"#,
                "soft 2 above hard 1",
            ),
        ] {
            let Err(err) = plan_process(&process(json), None) else {
                panic!("{json} should be refused");
            };
            let err = err.to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
