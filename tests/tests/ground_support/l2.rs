//! Boots the pod-guest kernel ("L2") on the ground with nutshell-vmm and with QEMU, both on KVM,
//! with an initramfs of our own whose init prints namespace and cgroup v2 checks.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nutshell_tests::child_wait::wait_or_kill;
use nutshell_tests::ground::{self, InitramfsFile};
use nutshell_tests::pod_guest::{GuestImage, ENV_VMM};

/// The pod-guest bzImage, resolved on the caller's side.
pub const KERNEL_ENV: &str = "NUTSHELL_TEST_L2_KERNEL";
/// The check initramfs, built on the caller's side.
pub const INITRD_ENV: &str = "NUTSHELL_TEST_L2_INITRD";

const CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "cpuset", "io"];
const NAMESPACES: [&str; 8] = ["uts", "ipc", "pid", "net", "mnt", "user", "cgroup", "time"];

/// The L2 init: mount what the checks need, print one `nutshell-check:` line per check, reboot.
const CHECK_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
say() { echo "nutshell-check: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say "uptime-at-init $(cut -d' ' -f1 /proc/uptime)"
if mount -t cgroup2 cgroup2 /sys/fs/cgroup; then
    say "cgroup2 mounted"
    say "cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
else
    say "cgroup2 mount failed"
fi
for ns in uts ipc pid net mnt user cgroup time; do
    case $ns in
        mnt) flags=--mount ;;
        pid|time) flags="--$ns --fork" ;;
        *) flags=--$ns ;;
    esac
    if out=$(/opt/util-linux/unshare $flags /bin/true 2>&1); then
        say "unshare $ns: ok"
    else
        say "unshare $ns: failed: $out"
    fi
done
say done
# The reboot method comes from the command line: a triple fault (reboot=t) ends QEMU with
# -no-reboot, a keyboard-controller reset (reboot=k) is nutshell-vmm's clean power-off.
reboot -f
"#;

/// Caller's side: the guest kernel and the check initramfs, as environment for the group.
pub fn host_assets() -> Vec<(OsString, OsString)> {
    let kernel = ground::kernel("guest").unwrap_or_else(|e| panic!("pod-guest kernel: {e}"));
    // Not under /tmp: L1 has its own /tmp, while the target dir is visible through /host.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ground-l2");
    std::fs::create_dir_all(&dir).expect("create the L2 asset dir");
    let init = dir.join("check-init.sh");
    std::fs::write(&init, CHECK_INIT).expect("write the L2 check init");
    let mut files = vec![InitramfsFile {
        src: ground::busybox().expect("static busybox"),
        dst: "/bin/busybox".into(),
    }];
    // util-linux unshare knows --cgroup and --time (busybox's does not), with its libraries.
    let unshare = Path::new("/usr/bin/unshare");
    files.push(InitramfsFile {
        src: unshare.into(),
        dst: "/opt/util-linux/unshare".into(),
    });
    for lib in shared_libraries(unshare) {
        files.push(InitramfsFile {
            dst: lib.display().to_string(),
            src: lib,
        });
    }
    let cpio = ground::build_initramfs(
        &dir.join("l2-check.cpio"),
        &init,
        &files,
        &["/proc", "/sys", "/dev", "/tmp"],
    )
    .unwrap_or_else(|e| panic!("L2 initramfs: {e}"));
    // nutshell-vmm, built here (with the agent's initramfs, which this group does not use).
    let vmm = GuestImage::locate().vmm;
    vec![
        (KERNEL_ENV.into(), kernel.bz_image.into()),
        (INITRD_ENV.into(), cpio.into()),
        (ENV_VMM.into(), vmm.into()),
    ]
}

/// The absolute paths `ldd` lists for `binary` (its libraries and the dynamic loader).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {binary:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// On the KVM host: boot L2 with QEMU `-M microvm` and with nutshell-vmm, both on KVM, the same
/// kernel and check initramfs; both must pass the checks and power off cleanly.
pub fn pod_guest_boot() {
    let kernel = PathBuf::from(
        std::env::var_os(KERNEL_ENV).expect("NUTSHELL_TEST_L2_KERNEL set by the group"),
    );
    let initrd = PathBuf::from(
        std::env::var_os(INITRD_ENV).expect("NUTSHELL_TEST_L2_INITRD set by the group"),
    );
    let vmm = PathBuf::from(std::env::var_os(ENV_VMM).expect("NUTSHELL_VMM_BIN set by the group"));

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-enable-kvm",
        "-M",
        "microvm,x-option-roms=off,rtc=on,acpi=off",
        "-cpu",
        "host",
    ])
    .args([
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
    ])
    .args(["-no-reboot", "-serial", "stdio", "-kernel"])
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"]);
    let qemu_time = boot_and_check("QEMU", qemu, None);

    let console = std::env::temp_dir().join(format!("l2-console-{}.log", std::process::id()));
    let mut ours = Command::new(&vmm);
    ours.arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args([
            "--mem-mib",
            "256",
            "--vcpus",
            "1",
            "--cmdline-append",
            "reboot=k",
        ])
        .arg("--serial-log")
        .arg(&console);
    let vmm_time = boot_and_check("nutshell-vmm", ours, Some(&console));
    let _ = std::fs::remove_file(&console);
    // Not a comparison: a second L2 boot in one L1 is slower than the first (`cargo xtask bench`
    // interleaves its boots and compares).
    println!(
        "L2 boot to power-off: QEMU {:.3} s, then nutshell-vmm {:.3} s",
        qemu_time.as_secs_f64(),
        vmm_time.as_secs_f64()
    );
}

/// Runs `cmd` (an L2 boot) to its end, reads the console (its stdout, or `console_file`) and
/// checks what the init printed. Returns the time from spawn to exit.
fn boot_and_check(what: &str, mut cmd: Command, console_file: Option<&Path>) -> Duration {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} for L2: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_or_kill(&mut child, Duration::from_secs(180)).expect("wait for L2");
    let elapsed = started.elapsed();
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let console = match console_file {
        Some(path) => std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{what}: console log {}: {e}", path.display())),
        None => out,
    };
    println!("L2 console under {what}:\n{console}");
    if !err.trim().is_empty() {
        println!("{what} stderr:\n{err}");
    }
    let status = status.unwrap_or_else(|| panic!("L2 under {what} did not power off within 180 s"));
    println!(
        "L2 pod-guest boot to power-off under {what}: {:.3} s ({status})",
        elapsed.as_secs_f64()
    );
    assert!(status.success(), "L2 under {what} exited with {status}");
    check_console(what, &console);
    elapsed
}

/// The init's `nutshell-check:` lines must show cgroup2 with every controller and every
/// namespace type unshared.
fn check_console(what: &str, console: &str) {
    let checks: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("nutshell-check: "))
        .collect();
    assert!(
        checks.contains(&"done"),
        "L2 init under {what} did not finish its checks:\n{console}"
    );
    assert!(
        checks.contains(&"cgroup2 mounted"),
        "cgroup2 in L2 under {what}:\n{console}"
    );
    let controllers = checks
        .iter()
        .find_map(|l| l.strip_prefix("cgroup.controllers: "))
        .unwrap_or_else(|| panic!("no cgroup.controllers line under {what}:\n{console}"));
    let have: Vec<&str> = controllers.split_whitespace().collect();
    for controller in CONTROLLERS {
        assert!(
            have.contains(&controller),
            "controller {controller} missing under {what}: {controllers:?}"
        );
    }
    for ns in NAMESPACES {
        let line = format!("unshare {ns}: ok");
        assert!(
            checks.contains(&line.as_str()),
            "namespace {ns} in L2 under {what}:\n{console}"
        );
    }
    println!(
        "L2 checks under {what} passed: controllers [{controllers}], namespaces {NAMESPACES:?}"
    );
}
