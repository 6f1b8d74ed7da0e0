//! `nutshell-vmm`: boots one microVM and runs it until the guest exits.
//!
//! Exit status: 0 the guest powered off cleanly; 1 bad input or the VM could not be built;
//! 3 the guest reset itself (kernel panic or unmanaged reboot); 4 a vCPU failed;
//! 128+N stopped by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use nutshell_vmm::config::DEFAULT_CMDLINE;
use nutshell_vmm::devices::virtio::fs::FsConfig;
use nutshell_vmm::devices::virtio::vsock::VsockConfig;
use nutshell_vmm::logger::StderrLogger;
use nutshell_vmm::syscall_filter;
use nutshell_vmm::{GuestExit, VmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "nutshell-vmm",
    version,
    about = "Boot a nutshell microVM on KVM",
    after_help = "Exit status: 0 guest powered off; 1 bad input or build failure; 3 guest reset (panic/reboot); 4 vCPU failure; 128+N stopped by signal N."
)]
struct Args {
    /// Guest kernel: vmlinux with a PVH note, or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (newc cpio, optionally compressed).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Kernel command line (the VMM appends its virtio-mmio device entries).
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Append to the default command line instead of replacing it.
    #[arg(long)]
    cmdline_append: Option<String>,
    /// Hybrid vsock Unix socket: host connects and writes `CONNECT <port>\n`.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest vsock context ID.
    #[arg(long, default_value_t = 3)]
    vsock_cid: u64,
    /// File that receives the guest console (default: discarded).
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Cap of a regular-file serial log in KiB: past it the log is rotated to `PATH.1`, so at
    /// most twice this stays on disk whatever the guest prints.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=4 << 20))]
    serial_log_max_kib: u64,
    /// Share host directory PATH with the guest over virtio-fs under TAG (at most 36 bytes);
    /// the guest mounts it with `mount -t virtiofs TAG DIR`. Repeat for several shares.
    #[arg(long = "fs", value_name = "TAG=PATH", value_parser = parse_fs)]
    fs: Vec<FsConfig>,
    /// Run without the seccomp filter (debugging only: by default the syscalls a VMM never
    /// needs, such as execve, mount, bpf or non-Unix sockets, kill the process).
    #[arg(long)]
    no_seccomp: bool,
}

/// `TAG=PATH` of `--fs`; the tag and the directory are checked when the VM is built.
fn parse_fs(arg: &str) -> Result<FsConfig, String> {
    match arg.split_once('=') {
        Some((tag, path)) if !path.is_empty() => Ok(FsConfig {
            tag: tag.to_string(),
            shared_dir: PathBuf::from(path),
        }),
        _ => Err(format!("expected TAG=PATH, got {arg:?}")),
    }
}

/// A virtio-fs share keeps one O_PATH descriptor per inode the guest has looked up (until the
/// guest forgets it), so a container image alone can pass the usual soft limit of 1024.
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we own; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            log::warn!(
                "cannot raise the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn init_logging() {
    let level = std::env::var("NUTSHELL_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    StderrLogger::install(level);
}

/// Blocks SIGINT, SIGTERM and SIGHUP in every thread (threads inherit the mask) and returns
/// the set, to be waited for by one thread that stops the VM cleanly.
fn block_stop_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only write to it and to
    // this thread's signal mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    anyhow::ensure!(rc == 0, "cannot block stop signals: error {rc}");
    Ok(set)
}

fn run(args: Args) -> anyhow::Result<GuestExit> {
    let mut cmdline = args.cmdline;
    if let Some(extra) = args.cmdline_append {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        cmdline,
        serial_log: args.serial_log,
        serial_log_max_bytes: args.serial_log_max_kib << 10,
        vsock: args.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        }),
        fs: args.fs,
    };
    if !config.fs.is_empty() {
        raise_nofile_limit();
    }
    let signals = block_stop_signals()?;
    // Before anything of the VM exists: every thread it makes inherits the filter.
    if !args.no_seccomp {
        syscall_filter::install().context("cannot install the seccomp filter")?;
    }
    let mut vm = nutshell_vmm::build(&config).context("cannot start the VM")?;

    let exits = vm.exit_sender();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `signals` is an initialised set and `signal` a valid out-parameter.
            if unsafe { libc::sigwait(&signals, &mut signal) } == 0 {
                let _ = exits.send(GuestExit::Stopped { signal });
            }
        })
        .context("cannot start the signal thread")?;

    let exit = vm.wait();
    if let GuestExit::Reset { .. } = exit {
        if let Some(panic) = vm.console().panic_message() {
            eprintln!("nutshell-vmm: guest kernel panicked: {panic}");
        }
    }
    drop(vm);
    Ok(exit)
}

fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    match run(args) {
        Ok(exit) => {
            if exit != GuestExit::PowerOff {
                eprintln!("nutshell-vmm: {exit}");
            }
            ExitCode::from(exit.exit_code().clamp(0, 255) as u8)
        }
        Err(e) => {
            eprintln!("nutshell-vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_flag_is_tag_equals_path_and_repeats() {
        let share = parse_fs("data=/srv/a=b").unwrap();
        assert_eq!(
            share,
            FsConfig {
                tag: "data".into(),
                shared_dir: "/srv/a=b".into(),
            }
        );
        assert!(parse_fs("data").unwrap_err().contains("TAG=PATH"));
        assert!(parse_fs("data=").is_err());
        let args = Args::try_parse_from([
            "nutshell-vmm",
            "--kernel",
            "vmlinux",
            "--fs",
            "a=/x",
            "--fs",
            "b=/y",
        ])
        .unwrap();
        let tags: Vec<&str> = args.fs.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(tags, ["a", "b"]);
    }
}
