//! Boots the pod-guest kernel ("L2") under QEMU with KVM, on the ground, with an initramfs of our
//! own whose init prints namespace and cgroup v2 checks.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nutshell_tests::ground::{self, InitramfsFile};

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
    vec![
        (KERNEL_ENV.into(), kernel.bz_image.into()),
        (INITRD_ENV.into(), cpio.into()),
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

/// On the KVM host: boot L2 with QEMU and KVM, then check what its init printed.
pub fn pod_guest_boot() {
    let kernel = std::env::var_os(KERNEL_ENV).expect("NUTSHELL_TEST_L2_KERNEL set by the group");
    let initrd = std::env::var_os(INITRD_ENV).expect("NUTSHELL_TEST_L2_INITRD set by the group");
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
    .args(["-append", "console=ttyS0 reboot=t panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = qemu.spawn().expect("spawn qemu-system-x86_64 for L2");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = started + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for L2 qemu") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("L2 did not power off within 180 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let mut console = String::new();
    let _ = stdout.read_to_string(&mut console);
    let qemu_stderr = err_reader.join().unwrap_or_default();
    println!("L2 console:\n{console}");
    if !qemu_stderr.trim().is_empty() {
        println!("L2 qemu stderr:\n{qemu_stderr}");
    }
    println!(
        "L2 pod-guest boot to power-off: {:.3} s ({status})",
        elapsed.as_secs_f64()
    );
    assert!(status.success(), "L2 qemu exited with {status}");

    let checks: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("nutshell-check: "))
        .collect();
    assert!(
        checks.contains(&"done"),
        "L2 init did not finish its checks:\n{console}"
    );
    assert!(
        checks.contains(&"cgroup2 mounted"),
        "cgroup2 in L2:\n{console}"
    );
    let controllers = checks
        .iter()
        .find_map(|l| l.strip_prefix("cgroup.controllers: "))
        .unwrap_or_else(|| panic!("no cgroup.controllers line:\n{console}"));
    let have: Vec<&str> = controllers.split_whitespace().collect();
    for controller in CONTROLLERS {
        assert!(
            have.contains(&controller),
            "controller {controller} missing: {controllers:?}"
        );
    }
    for ns in NAMESPACES {
        let line = format!("unshare {ns}: ok");
        assert!(
            checks.contains(&line.as_str()),
            "namespace {ns} in L2:\n{console}"
        );
    }
    println!("L2 checks passed: controllers [{controllers}], namespaces {NAMESPACES:?}");
}
