//! The VMM's seccomp filter: the kernel interfaces a VMM never needs are taken away before the
//! VM is built, so that a guest that found a bug in a device model (the VMM runs as root) cannot
//! turn it into a new process, a kernel module, a mount, a BPF program or a network socket.
//!
//! Three stacked filters, for every thread of the process (TSYNC; later threads inherit them):
//! - ABI: a syscall of another architecture or of the x32 ABI kills the process (the deny list
//!   below names x86_64 numbers only);
//! - deny list: process creation (`clone` without `CLONE_THREAD` or with a namespace flag, `fork`,
//!   `vfork`, `execve`), other processes' memory (`ptrace`, `process_vm_*`, `pidfd_getfd`),
//!   modules and kexec, BPF, perf, userfaultfd, io_uring, keyrings, mounts and namespaces, file
//!   handles (the `open_by_handle_at` escape), clocks and host identity, raw I/O ports, and any
//!   socket that is not AF_UNIX: each kills the process;
//! - `clone3` fails with ENOSYS (its flags are behind a pointer, out of a filter's reach), so
//!   glibc creates threads with `clone`, whose flags the deny list checks.
//!
//! This is a deny list: everything else the VMM, the virtio-fs passthrough and the standard
//! library use stays allowed. Firecracker goes further with a per-thread allow list; that is the
//! next step, once the syscalls of every device path are measured.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SyscallFilterError {
    #[error("building the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
}

/// Syscalls that kill the VMM whatever their arguments.
const DENIED: &[libc::c_long] = &[
    // New programs and processes (threads are made with clone, checked below).
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    // Other processes' memory and descriptors.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    // The kernel itself.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_lookup_dcookie,
    libc::SYS_personality,
    libc::SYS_uselib,
    // Mounts and namespaces.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    // Files by handle: open_by_handle_at reaches any inode of a mounted filesystem (the
    // passthrough runs without inode file handles, so it never calls either).
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    // Host identity and clocks.
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    // Raw hardware access.
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_modify_ldt,
];

/// `clone` flags that make a new namespace.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// `AUDIT_ARCH_X86_64` (linux/audit.h).
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Syscall numbers at or above this are the x32 ABI.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// Classic BPF opcodes (linux/bpf_common.h): BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K,
/// BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, SyscallFilterError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(SyscallFilterError::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SyscallFilterError> {
    SeccompRule::new(conditions).map_err(SyscallFilterError::Build)
}

/// The deny-list filter (second of the three).
fn deny_filter() -> Result<BpfProgram, SyscallFilterError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    // clone: without CLONE_THREAD (a new process), or with any namespace flag.
    let thread = libc::CLONE_THREAD as u64;
    let mut clone_rules = vec![rule(vec![condition(
        0,
        SeccompCmpOp::MaskedEq(thread),
        0,
    )?])?];
    for flag in NAMESPACE_FLAGS {
        let flag = *flag as u64;
        clone_rules.push(rule(vec![condition(
            0,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    // socket and socketpair: any domain but AF_UNIX.
    let not_unix = || -> Result<Vec<SeccompRule>, SyscallFilterError> {
        Ok(vec![rule(vec![condition(
            0,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )?])?])
    };
    rules.insert(libc::SYS_socket, not_unix()?);
    rules.insert(libc::SYS_socketpair, not_unix()?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    )
    .map_err(SyscallFilterError::Build)?;
    BpfProgram::try_from(filter).map_err(SyscallFilterError::Build)
}

/// `clone3` fails with ENOSYS (third filter).
fn clone3_filter() -> Result<BpfProgram, SyscallFilterError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .map_err(SyscallFilterError::Build)?;
    BpfProgram::try_from(filter).map_err(SyscallFilterError::Build)
}

fn stmt(code: u16, k: u32) -> sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Only native x86_64 syscalls (first filter).
fn abi_filter() -> BpfProgram {
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, kill),
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, kill),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The three filters, in the order they are installed.
pub fn filters() -> Result<Vec<BpfProgram>, SyscallFilterError> {
    Ok(vec![abi_filter(), deny_filter()?, clone3_filter()?])
}

/// Installs the filters on every thread of this process (sets no_new_privs). Cannot be undone.
pub fn install() -> Result<(), SyscallFilterError> {
    for program in filters()? {
        seccompiler::apply_filter_all_threads(&program).map_err(SyscallFilterError::Install)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "syscall_filter_tests.rs"]
mod tests;
