//! Acceptance of the test ground (issue 2), run from the host with
//! `cargo test -p nutshell-tests --test ground`. Four ground runs in all (four L1 boots when
//! nested): the KVM group, the failing group (the failure test playing it in a child process),
//! the hanging command and the interrupted one.

mod ground_support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ground_support::{announced_scratch, l2, longmode, processes_mentioning};
use nutshell_tests::child_wait::wait_or_kill;
use nutshell_tests::ground::{self, Group, ON_KVM_HOST_ENV};

/// Acceptance 1 and 2: on the KVM host, a hand-written long-mode KVM guest runs, and the pod-guest
/// kernel boots with nutshell-vmm and with QEMU on KVM and passes its namespace and cgroup v2
/// checks under both. One ground run.
#[test]
fn kvm_host() {
    Group::new("kvm_host")
        .deadline(Duration::from_secs(400))
        .host_env(l2::host_assets)
        .run(&[
            ("long_mode_snippet", longmode::long_mode_snippet),
            ("pod_guest_boot", l2::pod_guest_boot),
        ]);
}

const STDOUT_MARKER: &str = "failing case says hello on stdout";
const STDERR_MARKER: &str = "failing case says hello on stderr";
const PANIC_MARKER: &str = "deliberate failure of the failing case";

fn passing_case() {
    println!("passing case ran");
}

fn failing_case() {
    println!("{STDOUT_MARKER}");
    eprintln!("{STDERR_MARKER}");
    panic!("{PANIC_MARKER}");
}

/// Set in the child process that plays the failing group.
const FIXTURE_ENV: &str = "NUTSHELL_TEST_FIXTURE";
const GROUP: &str = "failing_group_fails_with_its_output";

/// Acceptance 3 (failure) and 4: a failing case on the ground fails its test, and the failure
/// carries the case's output; the runner prints L1's boot time and the command's run time.
///
/// The test runs itself in a child process with [`FIXTURE_ENV`] set; there (and on the ground,
/// where `NUTSHELL_*` passes through) it is a group with a failing case, which must fail.
#[test]
fn failing_group_fails_with_its_output() {
    if std::env::var_os(FIXTURE_ENV).is_some() {
        ground::group(
            GROUP,
            &[("passing", passing_case), ("failing", failing_case)],
        );
        return;
    }
    let exe = std::env::current_exe().expect("current test executable");
    let out = Command::new(exe)
        .args([GROUP, "--exact", "--nocapture", "--test-threads=1"])
        .env(FIXTURE_ENV, "failing")
        .env_remove(ON_KVM_HOST_ENV)
        .output()
        .expect("run this test binary as the failing group");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    println!("{all}");
    assert_eq!(
        out.status.code(),
        Some(101),
        "the failing group's test must fail\n{all}"
    );
    // The case's output, live and separate, with the runner's prefix.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with('[') && l.ends_with(STDOUT_MARKER)),
        "stdout line of the case, prefixed"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with('[') && l.ends_with(STDERR_MARKER)),
        "stderr line of the case, prefixed"
    );
    assert!(!stdout.contains(STDERR_MARKER), "stderr leaked into stdout");
    // The outer failure names the failed case and quotes the output.
    let failure = stderr
        .split(&format!("group {GROUP} failed on the KVM host"))
        .nth(1)
        .unwrap_or_else(|| panic!("the group's failure message is missing\n{all}"));
    assert!(failure.contains("failed cases: [failing]"), "{all}");
    assert!(failure.contains(PANIC_MARKER), "{all}");
    assert!(failure.contains(STDOUT_MARKER), "{all}");
    // Acceptance 4: both durations are printed (values not asserted).
    assert!(stderr.contains("nutshell-ground: L1 boot: "), "{all}");
    assert!(stderr.contains("nutshell-ground: command time: "), "{all}");
    assert!(stderr.contains("(exit code 101)"), "{all}");
}

/// Acceptance 3 (hang): `sleep 1000` with a 40 s deadline is killed at the deadline, and nothing
/// of the run is left: no process mentions its scratch directory, which is gone.
#[test]
fn hanging_command_is_killed_at_its_deadline() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_nutshell-ground"))
        .args(["--deadline", "40", "--mem", "1024", "--", "sleep", "1000"])
        .env_remove(ON_KVM_HOST_ENV)
        .output()
        .expect("run nutshell-ground");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(
        out.status.code(),
        Some(124),
        "deadline exit status\n{stderr}"
    );
    assert!(stderr.contains("passed its deadline of 40 s"), "{stderr}");
    assert!(
        elapsed >= Duration::from_secs(40),
        "killed before its deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(400),
        "not killed at its deadline: {elapsed:?}"
    );
    let scratch = announced_scratch(&stderr).unwrap_or_else(|| panic!("no scratch dir\n{stderr}"));
    assert!(scratch.starts_with("/tmp/nutshell-ground-"), "{scratch}");
    let left = processes_mentioning(&scratch);
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(
        !std::path::Path::new(&scratch).exists(),
        "{scratch} was not removed"
    );
}

/// Acceptance 3 (Ctrl-C): SIGINT to the runner while its command runs on the ground kills the
/// run (L1 where nested), removes its scratch directory and exits 130.
#[test]
fn interrupted_run_leaves_nothing() {
    const RUNNING: &str = "the command is running";
    let mut child = Command::new(env!("CARGO_BIN_EXE_nutshell-ground"))
        .args(["--deadline", "600", "--mem", "1024", "--", "sh", "-c"])
        .arg(format!("echo '{RUNNING}'; exec sleep 1000"))
        .env_remove(ON_KVM_HOST_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nutshell-ground");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (running_tx, running_rx) = mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(RUNNING) {
                let _ = running_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut all);
        all
    });
    let running = running_rx.recv_timeout(Duration::from_secs(300));
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    let status =
        wait_or_kill(&mut child, Duration::from_secs(120)).expect("wait for nutshell-ground");
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let all = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    println!("{all}");
    assert!(running.is_ok(), "the command never started\n{all}");
    let status =
        status.unwrap_or_else(|| panic!("nutshell-ground ignored SIGINT for 120 s\n{all}"));
    assert_eq!(status.code(), Some(130), "exit status after SIGINT\n{all}");
    assert!(stderr.contains("signal 2"), "{all}");
    let scratch = announced_scratch(&stderr).unwrap_or_else(|| panic!("no scratch dir\n{all}"));
    let left = processes_mentioning(&scratch);
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(
        !std::path::Path::new(&scratch).exists(),
        "{scratch} was not removed"
    );
}
