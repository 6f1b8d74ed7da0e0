//! Tests of [`super`]: a small BPF interpreter runs compiled programs on synthetic
//! `seccomp_data`, and a forked child installs one in the kernel.

use super::*;
use serde_json::{json, Value};

const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

fn nr(name: &str) -> u32 {
    syscalls::number(name).unwrap() as u32
}

fn profile(value: Value) -> LinuxSeccomp {
    serde_json::from_value(value).unwrap()
}

/// Compiles and checks what the kernel checks: length, jumps inside, a `ret` at the end.
fn program(value: Value) -> Vec<libc::sock_filter> {
    let program = compile(&profile(value)).unwrap();
    assert!(program.len() <= MAX_INSNS);
    for (pc, insn) in program.iter().enumerate() {
        let code = u32::from(insn.code);
        if code & 0x07 == libc::BPF_JMP {
            let far = if code == libc::BPF_JMP | libc::BPF_JA {
                insn.k as usize
            } else {
                usize::from(insn.jt.max(insn.jf))
            };
            assert!(pc + 1 + far < program.len(), "jump out at {pc}");
        }
    }
    let last = program.last().unwrap();
    assert_eq!(u32::from(last.code), libc::BPF_RET | libc::BPF_K);
    program
}

/// Runs a program on a `seccomp_data` of `nr`, `arch` and `args`.
fn run_on(program: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, arg) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
    }
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let insn = program[pc];
        pc += 1;
        let cond = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match u32::from(insn.code) {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                let k = insn.k as usize;
                assert!(k.is_multiple_of(4) && k + 4 <= data.len(), "load of {k}");
                a = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
            }
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= insn.k,
            c if c == libc::BPF_JMP | libc::BPF_JA => pc += insn.k as usize,
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += cond(a == insn.k),
            c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => pc += cond(a > insn.k),
            c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => pc += cond(a >= insn.k),
            c if c == libc::BPF_RET | libc::BPF_K => return insn.k,
            c => panic!("opcode {c:#x} at {}", pc - 1),
        }
    }
}

fn run(program: &[libc::sock_filter], name: &str, args: [u64; 6]) -> u32 {
    run_on(program, nr(name), AUDIT_ARCH_X86_64, args)
}

#[test]
fn default_allow_with_errno_rules() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
        ]
    }));
    assert_eq!(run(&p, "mkdir", [0; 6]), errno(libc::ENOSYS));
    assert_eq!(run(&p, "mkdirat", [0; 6]), errno(libc::ENOSYS));
    assert_eq!(run(&p, "rmdir", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&p, "read", [0; 6]), ALLOW);
    assert_eq!(run(&p, "write", [0; 6]), ALLOW);
    // Header (7), a run of two calls and its ret, a run of one, the final ret (the rule with
    // the default action adds nothing).
    assert_eq!(p.len(), 7 + 3 + 2 + 1);
}

#[test]
fn default_errno_with_allow_list() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ]
    }));
    for name in ["read", "write", "exit_group"] {
        assert_eq!(run(&p, name, [0; 6]), ALLOW, "{name}");
    }
    assert_eq!(run(&p, "ptrace", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&p, "open", [0; 6]), errno(libc::EPERM));
    assert_eq!(run(&p, "clone3", [0; 6]), errno(libc::ENOSYS));
    // Without defaultErrnoRet: EPERM; with another one.
    let p = program(json!({"defaultAction": "SCMP_ACT_ERRNO"}));
    assert_eq!(run(&p, "open", [0; 6]), errno(libc::EPERM));
    let p = program(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13}));
    assert_eq!(run(&p, "open", [0; 6]), errno(libc::EACCES));
}

#[test]
fn actions() {
    let cases = [
        ("SCMP_ACT_KILL", libc::SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", libc::SECCOMP_RET_KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", libc::SECCOMP_RET_KILL_PROCESS),
        ("SCMP_ACT_TRAP", libc::SECCOMP_RET_TRAP),
        (
            "SCMP_ACT_TRACE",
            libc::SECCOMP_RET_TRACE | libc::EPERM as u32,
        ),
        ("SCMP_ACT_LOG", libc::SECCOMP_RET_LOG),
        ("SCMP_ACT_ERRNO", errno(libc::EPERM)),
    ];
    for (name, ret) in cases {
        let p = program(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["kill"], "action": name}]
        }));
        assert_eq!(run(&p, "kill", [0; 6]), ret, "{name}");
        let p = program(json!({"defaultAction": name}));
        assert_eq!(run(&p, "kill", [0; 6]), ret, "default {name}");
    }
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["kill"], "action": "SCMP_ACT_TRACE", "errnoRet": 7}]
    }));
    assert_eq!(run(&p, "kill", [0; 6]), libc::SECCOMP_RET_TRACE | 7);
}

/// A reference for the operators on 64-bit values.
fn holds(op: LinuxSeccompOperator, arg: u64, value: u64, two: u64) -> bool {
    use LinuxSeccompOperator::*;
    match op {
        ScmpCmpNe => arg != value,
        ScmpCmpLt => arg < value,
        ScmpCmpLe => arg <= value,
        ScmpCmpEq => arg == value,
        ScmpCmpGe => arg >= value,
        ScmpCmpGt => arg > value,
        ScmpCmpMaskedEq => arg & value == two,
    }
}

#[test]
fn argument_conditions_on_64_bit_values() {
    use LinuxSeccompOperator::*;
    let value: u64 = 0x0000_0002_8000_0010;
    let two: u64 = 0x0000_0002_0000_0010;
    let mut samples = vec![
        0,
        1,
        u64::MAX,
        0xffff_ffff,
        1 << 32,
        two,
        value,
        two | 0xff00,
    ];
    for high in [1u64, 2, 3, u64::from(u32::MAX)] {
        for low in [0u64, 0xf, 0x10, 0x11, 0x8000_000f, 0x8000_0010, 0x8000_0011] {
            samples.push(high << 32 | low);
        }
    }
    let ops = [
        ScmpCmpNe,
        ScmpCmpLt,
        ScmpCmpLe,
        ScmpCmpEq,
        ScmpCmpGe,
        ScmpCmpGt,
        ScmpCmpMaskedEq,
    ];
    for op in ops {
        // On argument 3, so the other arguments must not matter.
        let p = program(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{
                "names": ["mmap"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 3, "value": value, "valueTwo": two, "op": op}]
            }]
        }));
        for &arg in &samples {
            let args = [!arg, arg, !arg, arg, !arg, !arg];
            let want = if holds(op, arg, value, two) {
                errno(libc::EPERM)
            } else {
                ALLOW
            };
            assert_eq!(run(&p, "mmap", args), want, "{op:?} on {arg:#x}");
            assert_eq!(run(&p, "munmap", args), ALLOW);
        }
    }
}

#[test]
fn rules_and_conditions_combine() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            // Two arguments: ANDed.
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [
                {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
                {"index": 2, "value": 9, "op": "SCMP_CMP_EQ"},
            ]},
            // Then a second rule on the same call, after the first in order.
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2, "args": [
                {"index": 0, "value": 16, "op": "SCMP_CMP_EQ"},
            ]},
            // Argument 0 twice: ORed, as runc does.
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 3, "args": [
                {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 131080, "op": "SCMP_CMP_EQ"},
            ]},
            // Unconditional, then conditional: the first wins.
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 4},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5, "args": [
                {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"},
            ]},
        ]
    }));
    assert_eq!(run(&p, "socket", [16, 0, 9, 0, 0, 0]), errno(1));
    assert_eq!(run(&p, "socket", [16, 0, 0, 0, 0, 0]), errno(2));
    assert_eq!(run(&p, "socket", [2, 0, 9, 0, 0, 0]), ALLOW);
    assert_eq!(run(&p, "personality", [8, 0, 0, 0, 0, 0]), errno(3));
    assert_eq!(run(&p, "personality", [131080, 0, 0, 0, 0, 0]), errno(3));
    assert_eq!(run(&p, "personality", [0, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&p, "kill", [0, 9, 0, 0, 0, 0]), errno(4));
}

#[test]
fn rules_with_the_default_action_are_skipped() {
    // libseccomp refuses them, runc skips them: mkdir stays allowed.
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        ]
    }));
    assert_eq!(run(&p, "mkdir", [0; 6]), ALLOW);
    assert_eq!(run(&p, "rmdir", [0; 6]), errno(libc::EPERM));
    assert_eq!(p.len(), 7 + 2 + 1);
}

#[test]
fn other_abis_get_the_foreign_action() {
    let allow_list = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_AARCH64"],
        "syscalls": [{"names": ["mkdir", "getpid"], "action": "SCMP_ACT_ALLOW"}]
    });
    let p = program(allow_list);
    assert_eq!(run(&p, "mkdir", [0; 6]), ALLOW);
    assert_eq!(
        run_on(&p, u32::MAX, AUDIT_ARCH_X86_64, [0; 6]),
        errno(libc::EPERM)
    );
    // i386's getpid is 20, x86_64's mkdir number on i386 is its own call.
    assert_eq!(
        run_on(&p, nr("mkdir"), AUDIT_ARCH_I386, [0; 6]),
        errno(libc::EPERM)
    );
    assert_eq!(run_on(&p, 20, AUDIT_ARCH_I386, [0; 6]), errno(libc::EPERM));
    let x32_mkdir = X32_SYSCALL_BIT | nr("mkdir");
    assert_eq!(
        run_on(&p, x32_mkdir, AUDIT_ARCH_X86_64, [0; 6]),
        errno(libc::EPERM)
    );

    // Allow by default: another ABI must not slip past the rules.
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
    }));
    assert_eq!(run(&p, "getpid", [0; 6]), ALLOW);
    let kill = libc::SECCOMP_RET_KILL_PROCESS;
    assert_eq!(run_on(&p, 39, AUDIT_ARCH_I386, [0; 6]), kill);
    assert_eq!(run_on(&p, x32_mkdir, AUDIT_ARCH_X86_64, [0; 6]), kill);
    // -1 is no call, not an x32 one.
    assert_eq!(run_on(&p, u32::MAX, AUDIT_ARCH_X86_64, [0; 6]), ALLOW);
}

#[test]
fn unknown_names_are_skipped() {
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["no_such_call", "mkdir", "socketcall"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["also_unknown"], "action": "SCMP_ACT_KILL"},
        ]
    }));
    assert_eq!(run(&p, "mkdir", [0; 6]), errno(libc::EPERM));
    assert_eq!(p.len(), 7 + 2 + 1);
}

fn error(value: Value) -> String {
    match compile(&profile(value)) {
        Ok(_) => panic!("compiled"),
        Err(e @ ContainerError::Spec(_)) => format!("spec: {e}"),
        Err(e @ ContainerError::Unsupported(_)) => format!("unsupported: {e}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn malformed_and_unsupported_profiles() {
    let message = error(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["mkdir", ""], "action": "SCMP_ACT_ERRNO"},
        ]
    }));
    assert!(message.starts_with("spec:"), "{message}");
    assert!(
        message.contains("linux.seccomp.syscalls[1].names[1]"),
        "{message}"
    );

    let message = error(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mmap"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]
    }));
    assert!(
        message.contains("syscalls[0].args[0].index: 6"),
        "{message}"
    );

    let message = error(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mmap"], "action": "SCMP_ACT_KILL", "errnoRet": 1}]
    }));
    assert!(message.contains("syscalls[0].errnoRet: 1"), "{message}");
    let message = error(json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536}));
    assert!(
        message.contains("linux.seccomp.defaultErrnoRet: 65536"),
        "{message}"
    );
    let message = error(json!({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}));
    assert!(message.starts_with("spec:"), "{message}");

    let message = error(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(message.starts_with("unsupported:"), "{message}");
    assert!(message.contains("SCMP_ACT_NOTIFY"), "{message}");
    let message = error(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/run/agent.sock",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    assert!(
        message.contains("syscalls[0].action: SCMP_ACT_NOTIFY"),
        "{message}"
    );

    let message = error(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"]
    }));
    assert!(message.starts_with("unsupported:"), "{message}");
    assert!(message.contains("SECCOMP_FILTER_FLAG_LOG"), "{message}");
    let p = program(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC"]
    }));
    assert_eq!(run(&p, "read", [0; 6]), ALLOW);
}

/// 250 conditional rules on distinct calls, 100 on one call (a block over 255 instructions,
/// reached past with `ja`), and a run of more than 255 unconditional calls.
fn long_profile() -> Value {
    let names: Vec<&str> = syscalls::LIBC
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !["ioctl", "mkdir", "mkdirat", "exit_group"].contains(name))
        .collect();
    let mut rules: Vec<Value> = names
        .iter()
        .take(250)
        .map(|name| {
            json!({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "args": [
                {"index": 5, "value": 0x1234_5678_9abc_def0_u64, "op": "SCMP_CMP_EQ"}]})
        })
        .collect();
    rules.extend((0..100u64).map(|i| {
        json!({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": i + 1, "args": [
            {"index": 1, "value": 0xdead_0000_0000_u64 + i, "op": "SCMP_CMP_EQ"}]})
    }));
    rules.push(json!({"names": names, "action": "SCMP_ACT_LOG"}));
    json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
}

#[test]
fn long_programs_assemble() {
    let p = program(long_profile());
    assert!(p.len() > 2000, "{}", p.len());
    let ja = u32::from((libc::BPF_JMP | libc::BPF_JA) as u16);
    assert!(p.iter().any(|insn| u32::from(insn.code) == ja));
    let magic = [0, 0, 0, 0, 0, 0x1234_5678_9abc_def0];
    let conditional: Vec<&str> = syscalls::LIBC.iter().map(|(name, _)| *name).collect();
    for name in [conditional[0], conditional[100], "read", "getpid"] {
        assert_eq!(run(&p, name, magic), errno(1), "{name}");
    }
    assert_eq!(run(&p, "read", [0; 6]), libc::SECCOMP_RET_LOG);
    for (arg, want) in [
        (0, errno(1)),
        (0x31, errno(50)),
        (0x63, errno(100)),
        (0x64, ALLOW),
    ] {
        let args = [0, 0xdead_0000_0000 + arg, 0, 0, 0, 0];
        assert_eq!(run(&p, "ioctl", args), want, "ioctl {arg:#x}");
    }
    assert_eq!(run(&p, "ioctl", [0, 0x31, 0, 0, 0, 0]), ALLOW);
    assert_eq!(run(&p, "mkdir", magic), ALLOW);
    assert_eq!(run(&p, "mseal", magic), libc::SECCOMP_RET_LOG);
}

#[test]
fn programs_over_the_kernel_limit_are_refused() {
    let rules: Vec<Value> = (0..1000u64)
        .map(|i| {
            json!({"names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [
                {"index": 1, "value": i, "op": "SCMP_CMP_EQ"}]})
        })
        .collect();
    let message = error(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}));
    assert!(message.starts_with("unsupported:"), "{message}");
    assert!(message.contains("4096"), "{message}");
}

/// Installs `program` in a forked child, which then runs `check` (async-signal-safe calls
/// only) and exits with its value. Returns the child's exit status.
fn in_filtered_child(program: &[libc::sock_filter], check: impl Fn() -> i32) -> i32 {
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the child makes only system calls on memory prepared before the fork, then
    // _exit; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                101
            } else if libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            ) != 0
            {
                102
            } else {
                check()
            };
            libc::_exit(code);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn the_kernel_runs_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| {
        std::ffi::CString::new(dir.path().join(name).into_os_string().into_encoded_bytes()).unwrap()
    };
    let (refused, made) = (path("refused"), path("made"));
    // mkdir/mkdirat with owner rwx in the mode: ENOSYS; a long program around them.
    let mut value = long_profile();
    let rules = value["syscalls"].as_array_mut().unwrap();
    for (name, mode_index) in [("mkdir", 1), ("mkdirat", 2)] {
        let owner_rwx = json!({
            "index": mode_index, "value": 0o700, "valueTwo": 0o700, "op": "SCMP_CMP_MASKED_EQ"
        });
        rules.insert(
            0,
            json!({"names": [name], "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS, "args": [owner_rwx]}),
        );
    }
    let p = program(value);
    assert!(p.len() > 256);
    let status = in_filtered_child(&p, || {
        // SAFETY: mkdir on NUL-terminated paths; errno of this thread.
        unsafe {
            if libc::mkdir(refused.as_ptr(), 0o755) == 0 {
                1
            } else if *libc::__errno_location() != libc::ENOSYS {
                2
            } else if libc::mkdir(made.as_ptr(), 0o055) != 0 {
                3
            } else {
                0
            }
        }
    });
    assert_eq!(status, 0);
    assert!(!dir.path().join("refused").exists());
    assert!(dir.path().join("made").is_dir());
}
