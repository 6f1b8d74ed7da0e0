//! `linux.seccomp` of a spec to a classic BPF program for seccomp(2), x86_64 only.
//!
//! The program, in order:
//! 1. `seccomp_data.arch` is not AUDIT_ARCH_X86_64 (i386 through int 0x80, ...), or the call
//!    number has the x32 bit (0x40000000) and is not -1 (as libseccomp): the *foreign* action.
//!    The rules name x86_64 numbers only, so they cannot be applied to those ABIs: the foreign
//!    action is the default action, except when that one lets the call run (SCMP_ACT_ALLOW,
//!    SCMP_ACT_LOG), where it is SECCOMP_RET_KILL_PROCESS (libseccomp kills on an architecture
//!    outside the filter), so an allow-by-default profile cannot be bypassed through another
//!    ABI. `architectures` is only logged: native x86_64 is always filtered, SCMP_ARCH_X86 and
//!    SCMP_ARCH_X32 get the foreign action, other architectures cannot occur on this machine.
//! 2. Call numbers whose only rule is unconditional, grouped by action: runs of
//!    `jeq nr, ret, next` ending in one `ret action`.
//! 3. One block per call number with argument conditions: `jeq nr, 0, skip` (or `jeq nr, 1, 0;
//!    ja skip` past a block longer than 255 instructions), then the call's rules in profile
//!    order, each its conditions and a `ret action` (a failed condition jumps to the next rule:
//!    first full match wins), then `ret default`.
//! 4. `ret default`.
//!
//! As runc does with libseccomp: a call name unknown on x86_64 is skipped; a rule with the
//! default action is redundant and skipped; the conditions of a rule are ANDed, except when two of
//! them test the same argument, where each condition is a rule of its own (ORed); an errno
//! (`errnoRet`, `defaultErrnoRet` for the default action) defaults to EPERM, also as the data of
//! SCMP_ACT_TRACE; SCMP_ACT_KILL is SECCOMP_RET_KILL_THREAD. SCMP_ACT_NOTIFY is unsupported.
//!
//! Flags: the agent installs the program with `seccomp(SECCOMP_SET_MODE_FILTER, 0, ..)` in the
//! single-threaded child before execve, so SECCOMP_FILTER_FLAG_TSYNC changes nothing and is
//! accepted; the other flags are unsupported.

use log::debug;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use super::ContainerError;

#[path = "seccomp_syscalls.rs"]
mod syscalls;

/// AUDIT_ARCH_X86_64: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Call numbers of the x32 ABI have this bit (__X32_SYSCALL_BIT).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on the length of a program.
const MAX_INSNS: usize = libc::BPF_MAXINSNS as usize;
/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;
/// Largest errno (or SCMP_ACT_TRACE data): the SECCOMP_RET_DATA bits.
const MAX_RET_DATA: u32 = libc::SECCOMP_RET_DATA;
/// Call numbers of one run of unconditional rules (so `jeq` reaches the run's `ret`).
const RUN_LEN: usize = 255;

/// Compiles a seccomp profile to BPF.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<libc::sock_filter>, ContainerError> {
    check_flags(profile)?;
    for arch in profile.architectures().iter().flatten() {
        if !matches!(
            arch,
            Arch::ScmpArchNative | Arch::ScmpArchX86_64 | Arch::ScmpArchX86 | Arch::ScmpArchX32
        ) {
            debug!("linux.seccomp.architectures: {arch} ignored on x86_64");
        }
    }
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "linux.seccomp.defaultAction",
        "linux.seccomp.defaultErrnoRet",
    )?;
    let calls = collect_rules(profile, default)?;
    assemble(&calls, default)
}

fn check_flags(profile: &LinuxSeccomp) -> Result<(), ContainerError> {
    for flag in profile.flags().iter().flatten() {
        match flag {
            // The filter is installed by the single-threaded child: nothing to synchronize.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {}
            other => {
                return Err(ContainerError::Unsupported(format!(
                    "linux.seccomp.flags: {other} is not supported (filters are installed \
                     without flags)"
                )))
            }
        }
    }
    Ok(())
}

/// The SECCOMP_RET_* value of an action. `field`/`errno_field` name the action and its errno.
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    field: &str,
    errno_field: &str,
) -> Result<u32, ContainerError> {
    use LinuxSeccompAction::*;
    if let Some(errno) = errno_ret {
        if !matches!(action, ScmpActErrno | ScmpActTrace) {
            return Err(ContainerError::Spec(format!(
                "{errno_field}: {errno} given, but {action} takes no errno"
            )));
        }
        if errno > MAX_RET_DATA {
            return Err(ContainerError::Spec(format!(
                "{errno_field}: {errno} is above {MAX_RET_DATA}"
            )));
        }
    }
    let data = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match action {
        ScmpActAllow => libc::SECCOMP_RET_ALLOW,
        ScmpActErrno => libc::SECCOMP_RET_ERRNO | data,
        ScmpActKill | ScmpActKillThread => libc::SECCOMP_RET_KILL_THREAD,
        ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        ScmpActTrap => libc::SECCOMP_RET_TRAP,
        ScmpActTrace => libc::SECCOMP_RET_TRACE | data,
        ScmpActLog => libc::SECCOMP_RET_LOG,
        ScmpActNotify => {
            return Err(ContainerError::Unsupported(format!(
                "{field}: {action} (a seccomp agent) is not supported"
            )))
        }
    })
}

/// One rule of a call: its return value when all `conditions` hold.
#[derive(Debug)]
struct Rule {
    action: u32,
    conditions: Vec<LinuxSeccompArg>,
}

/// The rules of each call number, call numbers in order of first appearance.
fn collect_rules(
    profile: &LinuxSeccomp,
    default: u32,
) -> Result<Vec<(u32, Vec<Rule>)>, ContainerError> {
    let mut calls: Vec<(u32, Vec<Rule>)> = Vec::new();
    for (i, syscall) in profile.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let ret = action(
            syscall.action(),
            syscall.errno_ret(),
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
        )?;
        let args = syscall.args().clone().unwrap_or_default();
        let mut seen = [false; 6];
        let mut repeated = false;
        for (j, arg) in args.iter().enumerate() {
            let Some(seen) = seen.get_mut(arg.index()) else {
                return Err(ContainerError::Spec(format!(
                    "{field}.args[{j}].index: {} is not an argument index (0 to 5)",
                    arg.index()
                )));
            };
            repeated |= std::mem::replace(seen, true);
        }
        let mut numbers = Vec::new();
        for (j, name) in syscall.names().iter().enumerate() {
            if name.is_empty() {
                return Err(ContainerError::Spec(format!(
                    "{field}.names[{j}]: empty syscall name"
                )));
            }
            match syscalls::number(name) {
                // The table holds numbers below 0x40000000.
                Some(nr) => numbers.push(nr as u32),
                None => debug!("{field}.names[{j}]: unknown syscall {name:?} on x86_64 skipped"),
            }
        }
        if ret == default {
            debug!("{field}: the default action, skipped");
            continue;
        }
        // runc: conditions on distinct arguments are ANDed; if an argument is tested twice,
        // each condition is a rule of its own.
        let condition_sets: Vec<Vec<LinuxSeccompArg>> = if repeated {
            args.iter().map(|arg| vec![*arg]).collect()
        } else {
            vec![args]
        };
        for nr in numbers {
            let at = match calls.iter().position(|(known, _)| *known == nr) {
                Some(at) => at,
                None => {
                    calls.push((nr, Vec::new()));
                    calls.len() - 1
                }
            };
            calls[at]
                .1
                .extend(condition_sets.iter().map(|conditions| Rule {
                    action: ret,
                    conditions: conditions.clone(),
                }));
        }
    }
    Ok(calls)
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        // BPF opcodes fit in 16 bits.
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    jump(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, k, jt, jf)
}

fn load(offset: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(action: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, action)
}

fn too_long(len: usize) -> ContainerError {
    ContainerError::Unsupported(format!(
        "linux.seccomp: the profile compiles to {len} or more BPF instructions, above the \
         kernel's limit of {MAX_INSNS}"
    ))
}

fn assemble(
    calls: &[(u32, Vec<Rule>)],
    default: u32,
) -> Result<Vec<libc::sock_filter>, ContainerError> {
    let foreign = match default & libc::SECCOMP_RET_ACTION_FULL {
        libc::SECCOMP_RET_ALLOW | libc::SECCOMP_RET_LOG => libc::SECCOMP_RET_KILL_PROCESS,
        _ => default,
    };
    let mut program = vec![
        load(ARCH_OFFSET),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        ret(foreign),
        load(NR_OFFSET),
        jump(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            2,
        ),
        // -1 (no call, as a tracer sets it to skip one) is not x32: to the default action.
        jeq(u32::MAX, 1, 0),
        ret(foreign),
    ];

    // Calls with one unconditional rule (rules after an unconditional one never match).
    let mut unconditional: Vec<(u32, Vec<u32>)> = Vec::new();
    let mut conditional = Vec::new();
    for (nr, rules) in calls {
        match rules.first() {
            Some(first) if first.conditions.is_empty() => {
                match unconditional
                    .iter_mut()
                    .find(|(action, _)| *action == first.action)
                {
                    Some((_, numbers)) => numbers.push(*nr),
                    None => unconditional.push((first.action, vec![*nr])),
                }
            }
            Some(_) => conditional.push((*nr, rules)),
            None => {}
        }
    }
    for (action, numbers) in &unconditional {
        for run in numbers.chunks(RUN_LEN) {
            let last = run.len() - 1;
            for (i, nr) in run.iter().enumerate() {
                // To the run's `ret` (the last one skips it when not equal); RUN_LEN fits u8.
                let (jt, jf) = if i == last {
                    (0, 1)
                } else {
                    ((last - i) as u8, 0)
                };
                program.push(jeq(*nr, jt, jf));
            }
            program.push(ret(*action));
        }
        if program.len() > MAX_INSNS {
            return Err(too_long(program.len()));
        }
    }
    for (nr, rules) in conditional {
        let block = call_block(rules, default)?;
        match u8::try_from(block.len()) {
            Ok(skip) => program.push(jeq(nr, 0, skip)),
            Err(_) => {
                program.push(jeq(nr, 1, 0));
                // The block is shorter than MAX_INSNS here, or the program fails below.
                program.push(stmt(libc::BPF_JMP | libc::BPF_JA, block.len() as u32));
            }
        }
        program.extend(block);
        if program.len() > MAX_INSNS {
            return Err(too_long(program.len()));
        }
    }
    program.push(ret(default));
    if program.len() > MAX_INSNS {
        return Err(too_long(program.len()));
    }
    Ok(program)
}

/// The rules of one call in order, then `ret default` (when the last rule has conditions).
fn call_block(rules: &[Rule], default: u32) -> Result<Vec<libc::sock_filter>, ContainerError> {
    let mut block = Vec::new();
    for rule in rules {
        let mut code = RuleCode::default();
        for arg in &rule.conditions {
            code.condition(arg);
        }
        block.extend(code.finish(rule.action)?);
        if rule.conditions.is_empty() {
            return Ok(block);
        }
        if block.len() > MAX_INSNS {
            return Err(too_long(block.len()));
        }
    }
    block.push(ret(default));
    Ok(block)
}

/// Where a conditional jump of a rule goes: ahead by some instructions, or to the next rule.
#[derive(Clone, Copy)]
enum To {
    Skip(u8),
    Fail,
}

/// The code of one rule: its conditions, then `ret action`; a failed condition jumps past it.
#[derive(Default)]
struct RuleCode {
    insns: Vec<libc::sock_filter>,
    /// Jumps to patch to the end: (instruction, true branch).
    fails: Vec<(usize, bool)>,
}

impl RuleCode {
    fn push(&mut self, insn: libc::sock_filter) {
        self.insns.push(insn);
    }

    fn jump(&mut self, op: u32, k: u32, jt: To, jf: To) {
        let at = self.insns.len();
        let mut offset = |to: To, true_branch: bool| match to {
            To::Skip(n) => n,
            To::Fail => {
                self.fails.push((at, true_branch));
                0
            }
        };
        let (jt, jf) = (offset(jt, true), offset(jf, false));
        self.insns
            .push(jump(libc::BPF_JMP | op | libc::BPF_K, k, jt, jf));
    }

    /// Appends the test of one 64-bit argument: passing falls through, failing jumps to the end.
    fn condition(&mut self, arg: &LinuxSeccompArg) {
        use LinuxSeccompOperator::*;
        use To::{Fail, Skip};
        // The index was checked (0 to 5). Little endian: the low half first.
        let low = ARGS_OFFSET + 8 * arg.index() as u32;
        let high = low + 4;
        let split = |v: u64| ((v >> 32) as u32, v as u32);
        let (hi, lo) = split(arg.value());
        let (eq, gt, ge) = (libc::BPF_JEQ, libc::BPF_JGT, libc::BPF_JGE);
        match arg.op() {
            ScmpCmpEq => {
                self.push(load(high));
                self.jump(eq, hi, Skip(0), Fail);
                self.push(load(low));
                self.jump(eq, lo, Skip(0), Fail);
            }
            ScmpCmpNe => {
                self.push(load(high));
                self.jump(eq, hi, Skip(0), Skip(2));
                self.push(load(low));
                self.jump(eq, lo, Fail, Skip(0));
            }
            ScmpCmpGt | ScmpCmpGe => {
                self.push(load(high));
                self.jump(gt, hi, Skip(3), Skip(0));
                self.jump(eq, hi, Skip(0), Fail);
                self.push(load(low));
                let op = if arg.op() == ScmpCmpGt { gt } else { ge };
                self.jump(op, lo, Skip(0), Fail);
            }
            ScmpCmpLt | ScmpCmpLe => {
                self.push(load(high));
                self.jump(gt, hi, Fail, Skip(0));
                self.jump(eq, hi, Skip(0), Skip(2));
                self.push(load(low));
                // low < v fails when low >= v; low <= v fails when low > v.
                let op = if arg.op() == ScmpCmpLt { ge } else { gt };
                self.jump(op, lo, Fail, Skip(0));
            }
            ScmpCmpMaskedEq => {
                // OCI (as libseccomp): `value` is the mask, `valueTwo` the expected bits.
                let (want_hi, want_lo) = split(arg.value_two().unwrap_or(0));
                let and = libc::BPF_ALU | libc::BPF_AND | libc::BPF_K;
                self.push(load(high));
                self.push(stmt(and, hi));
                self.jump(eq, want_hi, Skip(0), Fail);
                self.push(load(low));
                self.push(stmt(and, lo));
                self.jump(eq, want_lo, Skip(0), Fail);
            }
        }
    }

    fn finish(mut self, action: u32) -> Result<Vec<libc::sock_filter>, ContainerError> {
        self.insns.push(ret(action));
        let end = self.insns.len();
        for (at, true_branch) in self.fails {
            // At most 6 conditions of 6 instructions: always short.
            let offset = u8::try_from(end - at - 1).map_err(|_| too_long(end))?;
            let insn = &mut self.insns[at];
            if true_branch {
                insn.jt = offset;
            } else {
                insn.jf = offset;
            }
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
