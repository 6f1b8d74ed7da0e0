//! End to end (issue 6, first slice): Debian's containerd 1.6, started standalone by the test
//! with its own root, state, socket and config, runs a busybox image through
//! `containerd-shim-nutshell-v2` (`ctr run --runtime io.containerd.nutshell.v2 --rm`): the
//! output comes back, the exit code is the container's, and afterwards no VMM, shim, mount,
//! socket or pod directory is left. containerd is stopped and everything removed in every
//! case (`nutshell_tests::containerd::Containerd`'s Drop).

use std::time::{Duration, Instant};

use nutshell_tests::containerd::{
    build_shim, processes_with, text, Containerd, ENV_SHIM, IMAGE, RUNTIME,
};
use nutshell_tests::ground::Group;
use nutshell_tests::pod_guest::GuestImage;

const NAMESPACE: &str = "nutshell-e2e";

#[test]
fn containerd_shim() {
    Group::new("containerd_shim")
        .deadline(Duration::from_secs(400))
        .host_env(|| {
            // Builds the busybox test image (build/test-image/oci) on this side as well.
            GuestImage::locate_test();
            let mut env = GuestImage::locate().env();
            env.push((ENV_SHIM.into(), build_shim().into()));
            env
        })
        .run(&[
            ("ctr_run_prints_and_exits", ctr_run_prints_and_exits),
            ("stdin_and_all_output_arrive", stdin_and_all_output_arrive),
            ("exec_ps_and_kill", exec_ps_and_kill),
            ("a_dead_shim_is_cleaned_up", a_dead_shim_is_cleaned_up),
        ]);
}

fn ctr_run_prints_and_exits() {
    let ctd = Containerd::start("containerd-ctr-run", NAMESPACE);
    ctd.import_test_image();
    let out = ctd.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        IMAGE,
        "hi",
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(3),
        "ctr run: the container's exit code\nstdout: {stdout}\nstderr: {stderr}\n\
         --- containerd.log ---\n{}",
        ctd.log_tail()
    );
    assert_eq!(
        stdout, "hi\n",
        "ctr run: the container's output\nstderr: {stderr}"
    );
    ctd.assert_clean(Duration::from_secs(30));
}

/// `ctr run` (stdin always attached): stdin reaches the container and its EOF ends `cat`; a large output arrives
/// byte for byte before the exit is reported.
fn stdin_and_all_output_arrive() {
    let ctd = Containerd::start("containerd-stdio", NAMESPACE);
    ctd.import_test_image();
    let out = ctd.ctr_with_input(
        &[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            IMAGE,
            "io",
            "sh",
            "-c",
            "cat; seq 1 100000; echo to-stderr >&2",
        ],
        Some(b"from stdin\n"),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}\n--- containerd.log ---\n{}",
        ctd.log_tail()
    );
    let mut expected = String::from("from stdin\n");
    for i in 1..=100_000 {
        expected.push_str(&format!("{i}\n"));
    }
    assert!(
        stdout == expected,
        "stdout: {} bytes, expected {}; it ends with {:?}",
        stdout.len(),
        expected.len(),
        &stdout[stdout.len().saturating_sub(40)..]
    );
    assert_eq!(stderr, "to-stderr\n");
    ctd.assert_clean(Duration::from_secs(30));
}

/// A detached container: an exec prints and exits with its own code, `ctr task ps` lists
/// the guest processes, SIGKILL ends the container, and removing it leaves nothing.
fn exec_ps_and_kill() {
    let ctd = Containerd::start("containerd-exec", NAMESPACE);
    ctd.import_test_image();
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "bg",
        "sleep",
        "600",
    ]);
    let out = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "exec: {}{}\n--- containerd.log ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        ctd.log_tail()
    );
    assert_eq!(text(&out.stdout), "in-exec\n");
    let ps = ctd.ctr_ok(&["task", "ps", "bg"]);
    assert!(ps.lines().count() >= 2, "task ps: {ps}");
    ctd.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "bg"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = ctd.ctr_ok(&["task", "ls"]);
        if tasks.contains("STOPPED") {
            break;
        }
        assert!(Instant::now() < deadline, "not stopped: {tasks}");
        std::thread::sleep(Duration::from_millis(200));
    }
    ctd.ctr_ok(&["task", "rm", "bg"]);
    ctd.ctr_ok(&["container", "rm", "bg"]);
    ctd.assert_clean(Duration::from_secs(30));
}

/// The shim dies (SIGKILL): containerd runs the shim's `delete`, which kills the VM (it runs
/// in a session of its own, so it outlived the shim) and removes its mounts, socket and pod
/// directory.
fn a_dead_shim_is_cleaned_up() {
    let ctd = Containerd::start("containerd-dead-shim", NAMESPACE);
    ctd.import_test_image();
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "orphan",
        "sleep",
        "600",
    ]);
    let vmms = processes_with(&ctd.shim_state().display().to_string());
    assert_eq!(vmms.len(), 1, "one VMM: {vmms:?}");
    let shims = processes_with(&ctd.shim.display().to_string());
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    // SAFETY: kill(2) of the shim this test's containerd started (found by its executable).
    unsafe {
        libc::kill(shims[0].0, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes_with(&ctd.shim_state().display().to_string()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the VMM outlived its shim's delete\n--- containerd.log ---\n{}",
            ctd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = ctd.ctr(&["task", "rm", "-f", "orphan"]);
    ctd.ctr_ok(&["container", "rm", "orphan"]);
    ctd.assert_clean(Duration::from_secs(30));
}
