//! End to end (issue 6, first slice): Debian's containerd 1.6, started standalone by the test
//! with its own root, state, socket and config, runs a busybox image through
//! `containerd-shim-nutshell-v2` (`ctr run --runtime io.containerd.nutshell.v2 --rm`): the
//! output comes back, the exit code is the container's, and afterwards no VMM, shim, mount,
//! socket or pod directory is left. containerd is stopped and everything removed in every
//! case ([`Containerd`]'s Drop).

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nutshell_tests::ground::{repo_root, Group};
use nutshell_tests::pod_guest::{scratch_dir, GuestImage};

/// The shim binary, built on the caller's side.
const ENV_SHIM: &str = "NUTSHELL_SHIM_BIN";
const RUNTIME: &str = "io.containerd.nutshell.v2";
const IMAGE: &str = "nutshell/busybox:test";
const NAMESPACE: &str = "nutshell-e2e";
/// Where containerd-shim puts shim sockets, whatever containerd's own paths.
const SHIM_SOCKETS: &str = "/run/containerd/s";

#[test]
fn containerd_shim() {
    Group::new("containerd_shim")
        .deadline(Duration::from_secs(900))
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

fn build_shim() -> PathBuf {
    let root = repo_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "nutshell-shim"])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build --release -p nutshell-shim failed"
    );
    root.join("target/release/containerd-shim-nutshell-v2")
}

fn shim_binary() -> PathBuf {
    let path = std::env::var_os(ENV_SHIM)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/containerd-shim-nutshell-v2"));
    assert!(
        path.is_file(),
        "the shim {} is missing ({ENV_SHIM} names it)",
        path.display()
    );
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Entries of `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Processes (pid, command line) whose command line or executable mentions `needle`.
fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| text(&b).replace('\0', " "))
            .unwrap_or_default();
        let exe = std::fs::read_link(entry.path().join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if cmdline.contains(needle) || exe == needle {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Mount points that mention `needle`.
fn mounts_with(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A standalone containerd with everything of its own under one scratch directory.
struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
    shim: PathBuf,
    /// Shim sockets that existed before this containerd started.
    sockets_before: Vec<String>,
}

impl Containerd {
    fn start(what: &str) -> Containerd {
        let image = GuestImage::locate();
        let shim = shim_binary();
        let dir = scratch_dir(what).expect("scratch dir");
        let mut ctd = Containerd {
            dir: dir.clone(),
            child: None,
            shim: shim.clone(),
            sockets_before: entries(Path::new(SHIM_SOCKETS)),
        };
        let config = dir.join("config.toml");
        std::fs::write(&config, ctd.config_toml()).expect("write config.toml");
        let log = std::fs::File::create(ctd.log_path()).expect("create containerd.log");
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("NUTSHELL_VMM", &image.vmm)
            .env("NUTSHELL_KERNEL", image.vmlinux())
            .env("NUTSHELL_INITRD", &image.initramfs)
            .env("NUTSHELL_SHIM_STATE_DIR", ctd.shim_state())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start containerd (apt-get install containerd runc): {e}")
            });
        ctd.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = ctd.ctr(&["version"]);
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}\n--- containerd.log ---\n{}",
                text(&out.stderr),
                ctd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ctd
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn shim_state(&self) -> PathBuf {
        self.dir.join("shim")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.log_path()).unwrap_or_default(),
            60,
        )
    }

    fn config_toml(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nutshell]
  runtime_type = "{RUNTIME}"
"#
        )
    }

    /// `ctr` against this containerd, in the test namespace, at most 5 minutes.
    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_input(args, None)
    }

    /// Like [`Containerd::ctr`], with `input` on ctr's stdin.
    fn ctr_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut all: Vec<OsString> = vec!["300".into(), "ctr".into(), "--address".into()];
        all.push(self.socket().into());
        all.extend(["--namespace".into(), NAMESPACE.into()]);
        all.extend(args.iter().map(OsString::from));
        let mut cmd = Command::new("timeout");
        cmd.args(all).stdout(Stdio::piped()).stderr(Stdio::piped());
        let Some(input) = input else {
            return cmd.stdin(Stdio::null()).output().expect("run ctr");
        };
        let mut child = cmd.stdin(Stdio::piped()).spawn().expect("run ctr");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for ctr");
        let _ = writer.join();
        out
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{}{}\n--- containerd.log ---\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.log_tail()
        );
        text(&out.stdout)
    }

    /// Imports the busybox test image (an OCI layout, tarred) and unpacks it.
    fn import_test_image(&self) {
        let tar = self.dir.join("image.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(repo_root().join("build/test-image/oci"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar of build/test-image/oci failed");
        self.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
        let images = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(images.lines().any(|l| l == IMAGE), "images: {images}");
    }

    /// What this containerd's shims left behind: processes, mounts, sockets, pod dirs.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let dir = self.dir.display().to_string();
        for (pid, cmdline) in processes_with(&self.shim.display().to_string()) {
            left.push(format!("shim process {pid}: {cmdline}"));
        }
        for (pid, cmdline) in processes_with(&self.shim_state().display().to_string()) {
            left.push(format!("process {pid} (a VMM?): {cmdline}"));
        }
        for m in mounts_with(&format!("{dir}/shim")) {
            left.push(format!("mount: {m}"));
        }
        for m in mounts_with(&format!("{dir}/state")) {
            left.push(format!("mount: {m}"));
        }
        for s in entries(Path::new(SHIM_SOCKETS)) {
            if !self.sockets_before.contains(&s) {
                left.push(format!("shim socket {SHIM_SOCKETS}/{s}"));
            }
        }
        let pods = self.shim_state().join(NAMESPACE).join("pods");
        for pod in entries(&pods) {
            left.push(format!("pod directory {}/{pod}", pods.display()));
        }
        left
    }

    /// Waits up to `timeout` for the shims to leave nothing behind.
    fn assert_clean(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind:\n{}\n--- containerd.log ---\n{}",
                left.join("\n"),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(self.ctr_ok(&["tasks", "ls", "-q"]).trim(), "", "tasks");
        assert_eq!(
            self.ctr_ok(&["containers", "ls", "-q"]).trim(),
            "",
            "containers"
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims and VMMs that a failed case left running: only the ones of this containerd.
        let mut strays = processes_with(&self.shim.display().to_string());
        strays.extend(processes_with(&self.shim_state().display().to_string()));
        for (pid, _) in strays {
            // SAFETY: kill(2) with a pid read from /proc just now; only processes started
            // through this test's containerd match.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = nutshell_runtime::host_mounts::unmount_all_below(&self.dir);
        for s in entries(Path::new(SHIM_SOCKETS)) {
            let path = Path::new(SHIM_SOCKETS).join(&s);
            let is_socket = path
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_socket());
            if is_socket && !self.sockets_before.contains(&s) {
                let _ = std::fs::remove_file(path);
            }
        }
        if nutshell_runtime::host_mounts::unmount_all_below(&self.dir).unwrap_or(1) == 0 {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn ctr_run_prints_and_exits() {
    let ctd = Containerd::start("containerd-ctr-run");
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
    let ctd = Containerd::start("containerd-stdio");
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
    let ctd = Containerd::start("containerd-exec");
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
    let ctd = Containerd::start("containerd-dead-shim");
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
