//! Nested mode: boot an L1 Linux under QEMU TCG (`-cpu max` emulates SVM, so L1 has a working
//! /dev/kvm) and run the command inside it, in a chroot of the host's root filesystem.
//!
//! The command's stdout and stderr and a control channel travel over virtio-serial ports (see
//! `channels.rs`); the exit status is written to the shared scratch directory (`ctl/status`); the
//! L1 kernel console goes to the runner's `l1/console.log`, shown when L1 fails.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::assets::{self, InitramfsFile};
use super::channels::{self, Channels};
use super::process::{tail_of, ChildGuard, Scratch, Waited};
use super::{
    base_env, detect, Detection, ExitStatus, GroundCommand, GroundError, GroundOutcome, Mode,
};

const L1_INIT: &str = include_str!("l1-init.sh");
const CONSOLE_TAIL_LINES: usize = 40;

/// What every nested run needs from the host, checked before anything starts.
pub(crate) struct Prepared {
    qemu: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
    tsc_khz: u64,
}

pub(crate) fn prepare() -> Result<Prepared, GroundError> {
    Ok(Prepared {
        qemu: assets::qemu()?,
        busybox: assets::busybox()?,
        tsc_khz: detect::host_tsc_khz()?,
        kernel: assets::l1_kernel()?,
    })
}

pub(crate) fn run(
    cmd: &GroundCommand,
    detection: &Detection,
    prepared: &Prepared,
) -> Result<GroundOutcome, GroundError> {
    // <root>/l1 is the runner's own (sockets, logs, the initramfs with the end marker);
    // <root>/share is exported to L1 and mounted there at the same path.
    let scratch = Scratch::create()?;
    let root = scratch.path();
    let private = root.join("l1");
    let share = root.join("share");
    let ctl = share.join("ctl");
    let work = share.join("work");
    for dir in [&private, &share, &ctl, &work] {
        std::fs::create_dir(dir).map_err(|source| io_error("create", dir, source))?;
    }
    super::announce(cmd, detection, root);

    write(&ctl.join("cmd.sh"), &command_script(cmd, &work))?;
    write(&ctl.join("keep"), &keep_list(cmd, root))?;
    // The marker must stay unknown to the command: it travels inside the initramfs, which the
    // chrooted command does not see, not on the kernel command line.
    let marker = channels::end_marker()?;
    let marker_file = private.join("end-marker");
    write(&marker_file, marker.as_bytes())?;
    let init = private.join("l1-init.sh");
    write(&init, L1_INIT.as_bytes())?;
    let files = [
        InitramfsFile {
            src: prepared.busybox.clone(),
            dst: "/bin/busybox".into(),
        },
        InitramfsFile {
            src: marker_file,
            dst: "/etc/nutshell-end".into(),
        },
    ];
    let dirs = ["/host", "/proc", "/sys", "/dev", "/tmp"];
    let initrd = assets::build_initramfs(&private.join("l1.cpio"), &init, &files, &dirs)?;

    let prefix = cmd
        .echo
        .then(|| cmd.echo_prefix.clone().unwrap_or_else(|| "[L1] ".into()));
    let channels = Channels::listen(&private, &marker, prefix)?;

    let console = private.join("console.log");
    let qemu_log = private.join("qemu.log");
    let log = std::fs::File::create(&qemu_log).map_err(|e| io_error("create", &qemu_log, e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| io_error("reopen", &qemu_log, e))?;
    let mut qemu = Command::new(&prepared.qemu);
    qemu.args(qemu_args(cmd, prepared, &share, &initrd, &console))
        .args(port_args("ctl", 1, &channels.ctl_socket))
        .args(port_args("stdout", 2, &channels.stdout_socket))
        .args(port_args("stderr", 3, &channels.stderr_socket))
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let spawned = Instant::now();
    // Declared after `channels`, so dropped first: QEMU dies before the readers are joined.
    let mut child = ChildGuard::spawn(&mut qemu, "qemu-system-x86_64 (L1)")?;
    let waited = child.wait_until(spawned + cmd.deadline)?;
    let ended = Instant::now();
    child.kill();
    let (stdout, stderr, control) = channels.finish();

    let console_tail = || tail_of(&console, CONSOLE_TAIL_LINES);
    let qemu_status = match waited {
        Waited::Exited(status) => status,
        Waited::DeadlinePassed => {
            return Err(GroundError::DeadlineExceeded {
                command: cmd.display(),
                mode: Mode::Nested,
                deadline: cmd.deadline,
                scratch: root.to_owned(),
                console_tail: console_tail(),
            })
        }
        Waited::Cancelled => {
            return Err(GroundError::Interrupted {
                command: cmd.display(),
                mode: Mode::Nested,
                scratch: root.to_owned(),
            })
        }
    };
    if let Some(problem) = control.setup_failed {
        return Err(GroundError::L1Setup {
            command: cmd.display(),
            problem,
            console_tail: console_tail(),
        });
    }
    let status_file = ctl.join("status");
    let code = std::fs::read_to_string(&status_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let (Some(code), Some(ready)) = (code, control.ready) else {
        return Err(GroundError::L1Failed {
            command: cmd.display(),
            qemu_status: qemu_status.to_string(),
            console_tail: console_tail(),
            qemu_output: tail_of(&qemu_log, CONSOLE_TAIL_LINES),
        });
    };
    let finished = control.exited.unwrap_or(ended);
    Ok(GroundOutcome {
        mode: Mode::Nested,
        status: ExitStatus::from_shell(code),
        stdout,
        stderr,
        l1_boot: Some(ready.saturating_duration_since(spawned)),
        command_time: finished.saturating_duration_since(ready),
        l1_console_tail: console_tail(),
    })
}

fn qemu_args(
    cmd: &GroundCommand,
    prepared: &Prepared,
    scratch: &Path,
    initrd: &Path,
    console: &Path,
) -> Vec<String> {
    let scratch = scratch.display();
    let append = format!(
        "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz={} tsc=reliable \
         nutshell.scratch={scratch}",
        prepared.tsc_khz
    );
    let args = [
        "-M",
        "microvm,x-option-roms=off,rtc=on,acpi=off",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-smp",
        &cmd.cpus.to_string(),
        "-m",
        &format!("{}M", cmd.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-kernel",
        &prepared.kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        &append,
        "-chardev",
        &format!("file,id=console,path={}", console.display()),
        "-serial",
        "chardev:console",
        "-fsdev",
        "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-device,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev",
        &format!("local,id=scratch,path={scratch},security_model=none,multidevs=remap"),
        "-device",
        "virtio-9p-device,fsdev=scratch,mount_tag=scratch",
        "-device",
        "virtio-serial-device,id=ports",
    ];
    args.iter().map(|s| s.to_string()).collect()
}

/// A virtio-serial port named `nutshell.<name>` whose chardev connects to `socket`.
fn port_args(name: &str, nr: u32, socket: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id={name},path={}", socket.display()),
        "-device".into(),
        format!("virtserialport,bus=ports.0,nr={nr},chardev={name},name=nutshell.{name}"),
    ]
}

/// Directories L1 shadows with its own writable tmpfs.
const SHADOWED: [&str; 4] = ["/tmp", "/var/tmp", "/run", "/var/lib"];

/// Host directories under [`SHADOWED`] that the command needs (its working directory, program,
/// arguments and environment values that are paths there, e.g. a checkout under /tmp): L1's
/// init keeps them visible, read-only, through its tmpfs. One per line; the top directory
/// below the shadowed one (/tmp/ci/checkout/target -> /tmp/ci).
fn keep_list(cmd: &GroundCommand, scratch: &Path) -> Vec<u8> {
    let cwd = cmd.cwd.clone().or_else(|| std::env::current_dir().ok());
    let candidates = cwd
        .into_iter()
        .map(PathBuf::into_os_string)
        .chain(std::iter::once(cmd.program.clone()))
        .chain(cmd.args.iter().cloned())
        .chain(cmd.env.iter().map(|(_, value)| value.clone()));
    let mut keep: Vec<PathBuf> = Vec::new();
    for candidate in candidates {
        let path = Path::new(&candidate);
        for dir in SHADOWED {
            let Ok(rest) = path.strip_prefix(dir) else {
                continue;
            };
            let Some(top) = rest.components().next() else {
                continue;
            };
            let kept = Path::new(dir).join(top);
            if !scratch.starts_with(&kept) && kept.exists() && !keep.contains(&kept) {
                keep.push(kept);
            }
        }
    }
    let mut out = Vec::new();
    for path in keep {
        out.extend_from_slice(path.as_os_str().as_encoded_bytes());
        out.push(b'\n');
    }
    out
}

/// The script L1's init runs in the chroot: enter the working directory, then exec the program
/// with exactly the command's environment (`env -i`), looked up on that environment's PATH.
fn command_script(cmd: &GroundCommand, work: &Path) -> Vec<u8> {
    let cwd = cmd
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut s: Vec<u8> = b"# written by nutshell-tests' ground runner\n".to_vec();
    s.extend_from_slice(b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    s.extend_from_slice(b"cd ");
    quote(&mut s, cwd.as_os_str());
    s.extend_from_slice(b" || { echo \"nutshell-ground: cannot enter the working directory ");
    s.extend_from_slice(b"inside L1 (host /tmp, /run, /var/tmp and /var/lib are L1's own)\" >&2; ");
    s.extend_from_slice(b"exit 127; }\nexec env -i --");
    for (key, value) in base_env(Mode::Nested, work).iter().chain(&cmd.env) {
        let mut pair = key.clone();
        pair.push("=");
        pair.push(value);
        s.push(b' ');
        quote(&mut s, &pair);
    }
    // `sh -c 'exec "$@"'` takes the program as a plain argument, even with a '=' in its name.
    s.extend_from_slice(b" /bin/sh -c 'exec \"$@\"' nutshell-ground");
    for word in std::iter::once(&cmd.program).chain(&cmd.args) {
        s.push(b' ');
        quote(&mut s, word);
    }
    s.push(b'\n');
    s
}

/// Appends `word` in single quotes, as a POSIX shell reads it back byte for byte.
fn quote(out: &mut Vec<u8>, word: &OsStr) {
    out.push(b'\'');
    for &b in word.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), GroundError> {
    std::fs::write(path, bytes).map_err(|source| io_error("write", path, source))
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> GroundError {
    GroundError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_any_bytes_for_the_shell() {
        let mut out = Vec::new();
        quote(&mut out, OsStr::new("it's a $HOME `x` \"y\""));
        assert_eq!(out, b"'it'\\''s a $HOME `x` \"y\"'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", String::from_utf8(out).unwrap()))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"it's a $HOME `x` \"y\"");
    }

    #[test]
    fn keep_list_names_shadowed_dirs_the_command_needs() {
        let here = std::env::temp_dir().join(format!("nutshell-keep-{}", std::process::id()));
        std::fs::create_dir_all(here.join("target")).unwrap();
        let cmd = GroundCommand::new(here.join("target/test-bin"))
            .cwd(&here)
            .env("NUTSHELL_X", here.join("target"))
            .arg("/usr/bin/true");
        let list = String::from_utf8(keep_list(&cmd, Path::new("/tmp/nutshell-ground-x"))).unwrap();
        assert_eq!(list, format!("{}\n", here.display()));
        std::fs::remove_dir_all(&here).unwrap();
    }

    #[test]
    fn command_script_sets_env_cwd_and_args() {
        let cmd = GroundCommand::new("prog")
            .arg("a b")
            .env("K", "v'1")
            .cwd("/work dir");
        let script = String::from_utf8(command_script(&cmd, Path::new("/tmp/s/work"))).unwrap();
        assert!(script.contains("cd '/work dir' ||"), "{script}");
        assert!(script.contains("'NUTSHELL_ON_KVM_HOST=1'"), "{script}");
        assert!(
            script.contains("'NUTSHELL_GROUND_SCRATCH=/tmp/s/work'"),
            "{script}"
        );
        assert!(
            script.contains("'K=v'\\''1' /bin/sh -c 'exec \"$@\"' nutshell-ground 'prog' 'a b'\n"),
            "{script}"
        );
    }
}
