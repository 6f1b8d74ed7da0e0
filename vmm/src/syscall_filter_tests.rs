//! The filter, tried in child processes (this test binary run again with [`CASE_ENV`] set): what
//! it must stop kills the child with SIGSYS, and what the VMM needs still works.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use super::*;

const CASE_ENV: &str = "NUTSHELL_SYSCALL_FILTER_CASE";
const TEST: &str = "syscall_filter::tests::each_case_in_a_filtered_child";

/// What a VMM does all day: threads, Unix sockets, files, eventfds, memory maps.
fn vmm_work() {
    let dir = std::env::temp_dir().join(format!("nutshell-filter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let client = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"ping").unwrap();
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    client.join().unwrap();
    std::fs::write(dir.join("f"), b"data").unwrap();
    assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"data");
    std::fs::remove_dir_all(&dir).unwrap();
    let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    evt.write(1).unwrap();
    assert_eq!(evt.read().unwrap(), 1);
    let mem = vec![0u8; 64 << 20];
    assert_eq!(mem.len(), 64 << 20);
}

/// In the child: installs the filter, then does `case`; returns only if the case survived.
fn run_case(case: &str) {
    install().expect("install the filter");
    // SAFETY (all blocks below): raw syscalls with valid or null arguments, in a throwaway child;
    // the filter is expected to kill the process before most of them return.
    match case {
        "vmm_work" => vmm_work(),
        "clone3" => {
            let rc = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((rc, errno), (-1, Some(libc::ENOSYS)));
        }
        "execve" => {
            let prog = c"/bin/true";
            let argv = [prog.as_ptr(), std::ptr::null()];
            unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
        }
        "spawn" => {
            let _ = Command::new("/bin/true").status();
        }
        "fork" => {
            let _ = unsafe { libc::syscall(libc::SYS_fork) };
        }
        "inet_socket" => {
            let _ = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }
        "netlink_socket" => {
            let _ = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
        }
        "x32_getpid" => {
            let _ = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        }
        "unshare" => {
            let _ = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        }
        "mount" => {
            let _ = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
        }
        "bpf" => {
            let _ = unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) };
        }
        "ptrace" => {
            let _ = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        }
        "open_by_handle_at" => {
            let _ = unsafe {
                libc::syscall(libc::SYS_open_by_handle_at, -1, std::ptr::null::<u8>(), 0)
            };
        }
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn each_case_in_a_filtered_child() {
    if let Ok(case) = std::env::var(CASE_ENV) {
        run_case(&case);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let cases = [
        ("vmm_work", false),
        ("clone3", false),
        ("execve", true),
        ("spawn", true),
        ("fork", true),
        ("inet_socket", true),
        ("netlink_socket", true),
        ("x32_getpid", true),
        ("unshare", true),
        ("mount", true),
        ("bpf", true),
        ("ptrace", true),
        ("open_by_handle_at", true),
    ];
    for (case, killed) in cases {
        let out = Command::new(&exe)
            .args([TEST, "--exact", "--test-threads=1", "--nocapture"])
            .env(CASE_ENV, case)
            .output()
            .unwrap();
        let report = format!(
            "case {case}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if killed {
            assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{report}");
        } else {
            assert!(out.status.success(), "{report}");
        }
    }
}

#[test]
fn filters_compile() {
    let programs = filters().unwrap();
    assert_eq!(programs.len(), 3);
    assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
}
