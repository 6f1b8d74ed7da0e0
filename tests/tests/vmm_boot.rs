//! End to end: nutshell-vmm boots the real guest kernel and initramfs on a KVM host (nested
//! where needed), the agent answers over hybrid vsock, and bad input fails cleanly.
//! One ground run (one L1 boot) serves the whole group.

use std::process::Command;
use std::time::Duration;

use nutshell_tests::ground::Group;
use nutshell_tests::pod_guest::{exists, scratch_dir, GuestImage, Vmm, VmmLaunch};

const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn vmm_boot() {
    Group::new("vmm_boot")
        .deadline(Duration::from_secs(300))
        .host_env(|| GuestImage::locate().env())
        .run(&[
            ("boots_talks_and_powers_off", boots_talks_and_powers_off),
            ("two_vcpus_are_online", two_vcpus_are_online),
            ("guest_panic_is_reported", guest_panic_is_reported),
            ("bad_input_fails_cleanly", bad_input_fails_cleanly),
            ("host_signal_stops_cleanly", host_signal_stops_cleanly),
            ("console_log_is_bounded", console_log_is_bounded),
        ]);
}

fn image() -> GuestImage {
    GuestImage::locate()
}

fn boots_talks_and_powers_off() {
    let image = image();
    let mut vmm = Vmm::spawn(&image, &VmmLaunch::default()).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let ready = vmm.started.elapsed();
    // The VMM runs under its seccomp filters (mode 2, three stacked).
    let status = std::fs::read_to_string(format!("/proc/{}/status", vmm.child.id()))
        .expect("the VMM's /proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in the VMM's status:\n{status}"))
            .to_owned()
    };
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("Seccomp_filters:"), "3", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    let version = agent.version(CALL_TIMEOUT).expect("Version call");
    println!(
        "agent {} (protocol {}) on kernel {} ready after {ready:?}",
        version.agent_version, version.protocol_version, version.kernel_release
    );
    assert_eq!(
        version.protocol_version,
        nutshell_protocol::PROTOCOL_VERSION
    );
    assert!(
        version.kernel_release.starts_with("6.1"),
        "{}",
        version.kernel_release
    );

    let details = agent
        .guest_details(CALL_TIMEOUT)
        .expect("GuestDetails call");
    for controller in ["cpu", "memory", "pids", "cpuset", "io"] {
        assert!(
            details.cgroup_controllers.iter().any(|c| c == controller),
            "cgroup2 lacks {controller}: {:?}",
            details.cgroup_controllers
        );
        assert!(
            details
                .cgroup_subtree_control
                .iter()
                .any(|c| c == controller),
            "{controller} not enabled for children: {:?}",
            details.cgroup_subtree_control
        );
    }
    for kind in ["uts", "ipc", "pid", "net", "mnt", "user", "cgroup", "time"] {
        let probe = details
            .namespaces
            .iter()
            .find(|n| n.kind == kind)
            .unwrap_or_else(|| panic!("no probe for the {kind} namespace"));
        assert!(
            probe.unshare_ok,
            "unshare of {kind} failed: {}",
            probe.error
        );
    }
    assert_eq!(details.online_cpus, 1);

    agent.shutdown(CALL_TIMEOUT).expect("Shutdown call");
    let exit = vmm.wait(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.status.code(), Some(0), "stderr: {}", exit.stderr);
    assert!(!exists(&vmm.uds), "the vsock socket outlived the VMM");
}

fn two_vcpus_are_online() {
    let image = image();
    let launch = VmmLaunch {
        vcpus: 2,
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let details = agent
        .guest_details(CALL_TIMEOUT)
        .expect("GuestDetails call");
    assert_eq!(details.online_cpus, 2, "console:\n{}", vmm.console());
    agent.shutdown(CALL_TIMEOUT).expect("Shutdown call");
    let exit = vmm.wait(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.status.code(), Some(0), "stderr: {}", exit.stderr);
}

fn guest_panic_is_reported() {
    let image = image();
    let launch = VmmLaunch {
        cmdline_append: Some("rdinit=/no-such-init init=/no-such-init".into()),
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).expect("spawn nutshell-vmm");
    let exit = vmm.wait(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.status.code(), Some(3), "stderr: {}", exit.stderr);
    assert!(exit.stderr.contains("panic"), "stderr: {}", exit.stderr);
    assert!(!exists(&vmm.uds), "the vsock socket outlived the VMM");
}

/// Runs nutshell-vmm with `args` and expects a clear error naming `needle`, exit status 1.
fn expect_rejected(image: &GuestImage, args: &[&str], needle: &str) {
    let out = Command::new(&image.vmm)
        .args(args)
        .output()
        .expect("run nutshell-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr lacks {needle:?}: {stderr}"
    );
}

fn bad_input_fails_cleanly() {
    let image = image();
    let dir = scratch_dir("bad-input").unwrap();
    let uds = dir.join("vsock.sock");
    let uds_s = uds.to_str().unwrap();
    let kernel = image.vmlinux();
    let kernel_s = kernel.to_str().unwrap();
    let initrd_s = image.initramfs.to_str().unwrap();

    expect_rejected(
        &image,
        &["--kernel", "/no/such/vmlinux", "--vsock-uds", uds_s],
        "/no/such/vmlinux",
    );
    let garbage = dir.join("garbage-kernel");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    expect_rejected(
        &image,
        &["--kernel", garbage.to_str().unwrap(), "--vsock-uds", uds_s],
        "garbage-kernel",
    );
    let truncated = dir.join("truncated-vmlinux");
    let head = std::fs::read(&kernel).unwrap();
    std::fs::write(&truncated, &head[..head.len() / 3]).unwrap();
    expect_rejected(
        &image,
        &[
            "--kernel",
            truncated.to_str().unwrap(),
            "--initrd",
            initrd_s,
            "--vsock-uds",
            uds_s,
        ],
        "truncated-vmlinux",
    );
    expect_rejected(
        &image,
        &["--kernel", kernel_s, "--mem-mib", "8", "--vsock-uds", uds_s],
        "minimum",
    );
    expect_rejected(
        &image,
        &["--kernel", kernel_s, "--vcpus", "0", "--vsock-uds", uds_s],
        "vCPU",
    );
    expect_rejected(
        &image,
        &[
            "--kernel",
            kernel_s,
            "--vcpus",
            "4096",
            "--vsock-uds",
            uds_s,
        ],
        "4096 vCPUs",
    );
    assert!(!exists(&uds), "a rejected VMM left its vsock socket behind");

    std::fs::write(&uds, b"someone else's").unwrap();
    expect_rejected(
        &image,
        &["--kernel", kernel_s, "--vsock-uds", uds_s],
        "already exists",
    );
    assert_eq!(
        std::fs::read(&uds).unwrap(),
        b"someone else's",
        "the existing path was touched"
    );

    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !["garbage-kernel", "truncated-vmlinux", "vsock.sock"].contains(&n.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "leftovers: {leftovers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM to the VMM stops the guest and cleans up: exit 128+15, no socket left.
fn host_signal_stops_cleanly() {
    let image = image();
    let mut vmm = Vmm::spawn(&image, &VmmLaunch::default()).expect("spawn nutshell-vmm");
    vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    let rc = unsafe { libc::kill(vmm.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let exit = vmm.wait(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        exit.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {}",
        exit.stderr
    );
    assert!(exit.stderr.contains("signal 15"), "stderr: {}", exit.stderr);
    assert!(!exists(&vmm.uds), "the vsock socket outlived the VMM");
}

/// A guest that prints more than the console log's cap (a verbose boot, 4 KiB cap) leaves at most
/// two parts of the cap on the host, the newest output in `console.log`, and still runs.
fn console_log_is_bounded() {
    const CAP: u64 = 4096;
    let image = image();
    let launch = VmmLaunch {
        cmdline_append: Some("loglevel=7".into()),
        serial_log_max_kib: Some(CAP / 1024),
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    agent.version(CALL_TIMEOUT).expect("Version call");
    let rotated = vmm.dir.join("console.log.1");
    let current = std::fs::metadata(&vmm.console_log)
        .expect("console.log")
        .len();
    let previous = std::fs::metadata(&rotated)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: the verbose boot did not rotate",
                rotated.display()
            )
        })
        .len();
    println!("console.log {current} bytes, console.log.1 {previous} bytes (cap {CAP})");
    assert!(current <= CAP && previous <= CAP, "{current} / {previous}");
    assert!(previous > CAP / 2, "the rotated part is {previous} bytes");
    agent.shutdown(CALL_TIMEOUT).expect("Shutdown call");
    let exit = vmm.wait(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.status.code(), Some(0), "stderr: {}", exit.stderr);
    let mut names: Vec<String> = std::fs::read_dir(&vmm.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["console.log", "console.log.1"]);
}
