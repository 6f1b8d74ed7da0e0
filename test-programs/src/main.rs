//! `nutshell-probe`: the checks of the end-to-end tests that busybox cannot do.
//!
//! Every subcommand prints its result on stdout and exits 0, or prints the
//! problem on stderr and exits 1 (2 for a usage error).

mod ipc;
mod swap_race;

use std::io::{Read, Write};
use std::process::ExitCode;

const USAGE: &str = "usage: nutshell-probe <command> [args]
  ns                      print `kind inode` for each /proc/self/ns entry
  shm-create KEY TEXT     create a SysV shm segment holding TEXT
  shm-read KEY            print the text of a SysV shm segment
  sem-create KEY VALUE    create a SysV semaphore set with one semaphore = VALUE
  sem-read KEY            print the value of that semaphore
  msg-send KEY TEXT       send TEXT on a SysV message queue (created if needed)
  msg-recv KEY            receive one message from it (no wait)
  mq-send NAME TEXT       send TEXT on POSIX queue /NAME (created if needed)
  mq-recv NAME            receive one message from /NAME (no wait)
  alloc MIB               touch MIB MiB of memory, then sleep (OOM tests)
  spew BYTES              write BYTES bytes of the pattern (i % 251) to stdout
  echo-stdin              copy stdin to stdout, print the byte count on stderr
  pid1-check              print `pid=<getpid> ppid=<getppid>`
  chroot-escape PATH      the classic chroot escape (chroot into a subdirectory, chdir ..
                          many times, chroot .); print `escaped` if PATH is then visible,
                          else `contained`
  swap-race DIR TARGET SECS  swap DIR/x (a directory) and a symlink to TARGET for SECS
                          seconds while reading through DIR/x; print what was seen";

/// Namespace kinds in the order `ns` prints them.
const NS_KINDS: [&str; 8] = ["net", "uts", "ipc", "pid", "mnt", "user", "cgroup", "time"];

/// Why a subcommand failed.
enum Failure {
    Usage(String),
    Error(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure::Error(why)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(why)) => {
            eprintln!("nutshell-probe: {why}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Error(why)) => {
            eprintln!("nutshell-probe: {why}");
            ExitCode::FAILURE
        }
    }
}

fn run(argv: &[&str]) -> Result<(), Failure> {
    let result = match argv {
        ["ns"] => ns(),
        ["shm-create", key, text] => ipc::shm_create(parse(key)?, text),
        ["shm-read", key] => ipc::shm_read(parse(key)?),
        ["sem-create", key, value] => ipc::sem_create(parse(key)?, parse(value)?),
        ["sem-read", key] => ipc::sem_read(parse(key)?),
        ["msg-send", key, text] => ipc::msg_send(parse(key)?, text),
        ["msg-recv", key] => ipc::msg_recv(parse(key)?),
        ["mq-send", name, text] => ipc::mq_send(name, text),
        ["mq-recv", name] => ipc::mq_recv(name),
        ["alloc", mib] => alloc(parse(mib)?),
        ["spew", bytes] => spew(parse(bytes)?),
        ["echo-stdin"] => echo_stdin(),
        ["chroot-escape", path] => chroot_escape(path),
        ["swap-race", dir, target, secs] => swap_race::swap_race(dir, target, parse(secs)?),
        ["pid1-check"] => {
            // SAFETY: getpid and getppid have no preconditions.
            let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
            println!("pid={pid} ppid={ppid}");
            Ok(())
        }
        _ => return Err(Failure::Usage(format!("bad arguments {argv:?}"))),
    };
    result.map_err(Failure::Error)
}

/// Parses a numeric argument.
fn parse<T: std::str::FromStr>(arg: &str) -> Result<T, Failure> {
    arg.parse()
        .map_err(|_| Failure::Usage(format!("not a number: {arg:?}")))
}

fn ns() -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for kind in NS_KINDS {
        let path = format!("/proc/self/ns/{kind}");
        match std::fs::metadata(&path) {
            Ok(meta) => println!("{kind} {}", meta.ino()),
            // Kernels without e.g. time namespaces: say so, keep going.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("{kind} -"),
            Err(e) => return Err(format!("stat {path}: {e}")),
        }
    }
    Ok(())
}

fn chroot_escape(probe: &str) -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    std::fs::create_dir_all("/tmp/escape").map_err(|e| format!("mkdir /tmp/escape: {e}"))?;
    // SAFETY: chroot and chdir on NUL-terminated literals; this process only exits after.
    unsafe {
        if libc::chroot(c"/tmp/escape".as_ptr()) != 0 {
            return Err(os("chroot /tmp/escape"));
        }
        // The working directory stayed outside the new root: walk up from it.
        for _ in 0..64 {
            if libc::chdir(c"..".as_ptr()) != 0 {
                return Err(os("chdir .."));
            }
        }
        if libc::chroot(c".".as_ptr()) != 0 {
            return Err(os("chroot ."));
        }
    }
    let escaped = std::path::Path::new(probe).exists();
    println!("{}", if escaped { "escaped" } else { "contained" });
    Ok(())
}

fn alloc(mib: usize) -> Result<(), String> {
    const MIB: usize = 1 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        // Non-zero fill so the pages are really backed.
        chunks.push(vec![1u8; MIB]);
        if (i + 1) % 16 == 0 {
            eprintln!("allocated {} MiB", i + 1);
        }
    }
    println!("allocated {mib} MiB");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        std::hint::black_box(&chunks);
    }
}

/// Byte `i` of the `spew` pattern; the tests compute the same.
fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn spew(total: u64) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(sent + k as u64);
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("stdout: {e}"))?;
        sent += n as u64;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))
}

fn echo_stdin() -> Result<(), String> {
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("stdin: {e}")),
        };
        out.write_all(&buf[..n])
            .map_err(|e| format!("stdout: {e}"))?;
        total += n as u64;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))?;
    eprintln!("{total} bytes");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_wraps_at_251() {
        assert_eq!(super::pattern_byte(0), 0);
        assert_eq!(super::pattern_byte(250), 250);
        assert_eq!(super::pattern_byte(251), 0);
    }
}
