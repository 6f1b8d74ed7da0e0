//! End to end (issue 5): the `nutshell` CLI runs the seed's pod from a Pod manifest in a
//! microVM, with images from a local OCI layout and every volume kind through virtio-fs.
//! `exec` in the sidecar reaches the app over localhost; `inspect` shows net/uts/ipc shared
//! and mnt/pid private; volumes behave (read-only stays read-only, host updates show, the
//! share cannot be left; a Memory emptyDir is a guest tmpfs of its sizeLimit, shared by the
//! pod's containers and absent from the host); `rm` leaves no pod, mount, VM or image reference behind; bad
//! manifests get field-level errors; a VMM crash is reported by `ps`; Ctrl-C while `run`
//! starts the pod leaves nothing of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nutshell_tests::ground::Group;
use nutshell_tests::pod_guest::{scratch_dir, GuestImage};

#[test]
fn nutshell_cli() {
    Group::new("nutshell_cli")
        .deadline(Duration::from_secs(400))
        .host_env(|| {
            // Builds the busybox test image (build/test-image/oci) on this side as well.
            GuestImage::locate_test();
            GuestImage::locate().env()
        })
        .run(&[
            ("demo_pod_end_to_end", demo_pod_end_to_end),
            ("bad_manifests_are_named", bad_manifests_are_named),
            ("vmm_crash_is_reported", vmm_crash_is_reported),
            ("ctrl_c_during_run_tears_down", ctrl_c_during_run_tears_down),
        ]);
}

/// A `nutshell` invocation with its own state and image directories.
struct Nutshell {
    cli: PathBuf,
    image: GuestImage,
    dir: PathBuf,
}

impl Nutshell {
    fn new(what: &str) -> Nutshell {
        let image = GuestImage::locate();
        let dir = scratch_dir(what).expect("scratch dir");
        let n = Nutshell {
            cli: image.cli(),
            image,
            dir,
        };
        let layout = repo_root().join("build/test-image/oci");
        n.ok(&["image", "import", layout.to_str().unwrap()]);
        n
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.args(args)
            .env("NUTSHELL_STATE_DIR", self.state_dir())
            .env("NUTSHELL_IMAGE_STORE", self.dir.join("images"))
            .env("NUTSHELL_KERNEL", self.image.vmlinux())
            .env("NUTSHELL_INITRD", &self.image.initramfs)
            .env("NUTSHELL_VMM", &self.image.vmm);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run nutshell")
    }

    /// Runs `nutshell args`; panics with its output unless it succeeds; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "nutshell {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `nutshell args` expecting failure; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(!out.status.success(), "nutshell {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `nutshell exec POD CONTAINER -- sh -c script`, whatever its outcome.
    fn sh(&self, pod: &str, container: &str, script: &str) -> Output {
        self.output(&["exec", pod, container, "--", "sh", "-c", script])
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Nutshell {
    fn drop(&mut self) {
        // Whatever a failed case left running goes.
        for (name, _) in nutshell_runtime::pod_dirs::PodDirs::all(&self.state_dir()) {
            let _ = self.output(&["rm", "-f", &name]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The seed's pod: an httpd app and a sidecar, with one volume of each kind.
fn demo_manifest(host: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: demo
spec:
  hostname: demo-pod
  containers:
  - name: app
    image: nutshell/busybox:test
    command: ["sh", "-c"]
    args: ["mkdir -p /www && echo hello-from-app > /www/index.html && echo app up && exec httpd -f -p 127.0.0.1:8080 -h /www"]
    resources:
      limits: {{memory: 64Mi, cpu: 500m}}
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: mem, mountPath: /mem}}
  - name: sidecar
    image: nutshell/busybox:test
    command: ["sh", "-c", "echo sidecar up; exec sleep 3600"]
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: ro, mountPath: /ro, readOnly: true}}
    - {{name: rw, mountPath: /rw}}
    - {{name: rw, mountPath: /sub, subPath: nested/dir}}
    - {{name: config, mountPath: /config}}
    - {{name: mem, mountPath: /mem}}
    - {{name: mem, mountPath: /mem-sub, subPath: deep/dir}}
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory, sizeLimit: 8Mi}}}}
  - {{name: ro, hostPath: {{path: {ro}, type: Directory}}}}
  - {{name: rw, hostPath: {{path: {rw}, type: DirectoryOrCreate}}}}
  - {{name: config, configMap: {{name: settings}}}}
"#,
        ro = host.join("ro").display(),
        rw = host.join("rw").display(),
    )
}

fn demo_pod_end_to_end() {
    let n = Nutshell::new("cli-demo");
    let host = n.dir.join("host");
    n.write("host/ro/readme.txt", "read only\n");
    n.write("config/configmaps/settings/mode", "first\n");
    n.write("outside/marker", "host secret\n");
    let manifest = n.write("demo.yaml", &demo_manifest(&host));
    let config_dir = n.dir.join("config");
    assert_eq!(
        n.ok(&[
            "run",
            manifest.to_str().unwrap(),
            "--config-dir",
            config_dir.to_str().unwrap()
        ])
        .trim(),
        "demo"
    );
    let ps = n.ok(&["ps"]);
    assert!(ps.contains("demo") && ps.contains("running"), "{ps}");

    // The sidecar fetches from the app over localhost (exec joins the pod's net namespace).
    let exec = |container: &str, script: &str| {
        n.ok(&["exec", "demo", container, "--", "sh", "-c", script])
    };
    let page = exec(
        "sidecar",
        "for i in $(seq 100); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1",
    );
    assert_eq!(page.trim(), "hello-from-app");
    assert_eq!(exec("app", "hostname").trim(), "demo-pod");
    assert_eq!(exec("sidecar", "exit 0"), "");
    let code = n
        .output(&["exec", "demo", "sidecar", "--", "sh", "-c", "exit 3"])
        .status
        .code();
    assert_eq!(code, Some(3), "exec exit code");

    // inspect: net/uts/ipc shared with pause, mnt/pid private.
    let json: serde_json::Value =
        serde_json::from_str(&n.ok(&["inspect", "demo", "--json"])).unwrap();
    let processes = json["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 3, "{json}");
    for p in &processes[1..] {
        for kind in ["net", "uts", "ipc"] {
            assert_eq!(
                p["namespaces"][kind]["sharing"], "shared",
                "{kind} of {}",
                p["name"]
            );
        }
        for kind in ["mnt", "pid"] {
            assert_eq!(
                p["namespaces"][kind]["sharing"], "private",
                "{kind} of {}",
                p["name"]
            );
        }
    }
    let table = n.ok(&["inspect", "demo"]);
    assert!(
        table.contains("shared") && table.contains("memory.max=67108864"),
        "{table}"
    );

    // Volumes.
    exec("app", "echo from-app > /shared/note");
    assert_eq!(exec("sidecar", "cat /shared/note").trim(), "from-app");
    assert_eq!(exec("sidecar", "cat /ro/readme.txt").trim(), "read only");
    let denied = n.sh("demo", "sidecar", "echo x > /ro/new");
    assert!(!denied.status.success(), "a read-only volume took a write");
    assert!(!host.join("ro/new").exists());
    exec(
        "sidecar",
        "echo from-guest > /rw/written && echo deep > /sub/file",
    );
    assert_eq!(
        std::fs::read_to_string(host.join("rw/written")).unwrap(),
        "from-guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.join("rw/nested/dir/file")).unwrap(),
        "deep\n"
    );
    assert_eq!(exec("sidecar", "cat /config/mode").trim(), "first");
    std::fs::write(n.dir.join("config/configmaps/settings/mode"), "second\n").unwrap();
    let updated = exec(
        "sidecar",
        "for i in $(seq 50); do grep -q second /config/mode && exit 0; sleep 0.1; done; cat /config/mode; exit 1",
    );
    assert_eq!(updated, "", "configMap update not seen");
    memory_empty_dir_is_in_the_guest(&n, &exec);

    // The share cannot be left: `..`, absolute symlinks and symlinks made on the host all
    // resolve inside the guest, never to the host's files.
    std::os::unix::fs::symlink(n.dir.join("outside"), host.join("rw/to-outside")).unwrap();
    let escape = exec(
        "sidecar",
        "cat /rw/../../../outside/marker /rw/to-outside/marker /rw/../../../../../../marker 2>/dev/null; \
         ln -s / /rw/root-link && cat /rw/root-link/outside/marker 2>/dev/null; true",
    );
    assert!(
        !escape.contains("host secret"),
        "the guest read a host file: {escape}"
    );
    // Hard links cannot join files of different volumes (each is its own host mount).
    let linked = n.sh("demo", "sidecar", "ln /ro/readme.txt /rw/hard-link");
    assert!(
        !linked.status.success(),
        "a hard link across volumes was made"
    );
    assert!(!host.join("rw/hard-link").exists());
    assert_eq!(
        std::fs::read_link(host.join("rw/root-link")).unwrap(),
        Path::new("/"),
        "the guest's symlink is stored as written, resolved only in the guest"
    );

    // Logs; stop and rm leave nothing behind.
    let logs = n.ok(&["logs", "demo", "sidecar"]);
    assert!(logs.contains("sidecar up"), "{logs}");
    n.ok(&["stop", "demo"]);
    assert!(n.ok(&["ps"]).contains("stopped"));
    n.ok(&["rm", "demo"]);
    assert!(!n.state_dir().join("pods/demo").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(n.state_dir().to_str().unwrap()),
        "mounts left: {mounts}"
    );
    // The pod's image references are gone; the explicit import keeps its own.
    let holders: Vec<String> = std::fs::read_dir(n.dir.join("images/refs"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !holders.iter().any(|h| h == "demo"),
        "the pod's image references are left: {holders:?}"
    );
    assert!(
        !holders.is_empty(),
        "the imported image lost its own reference (a gc would drop it)"
    );
    assert!(!pgrep_vmm(&n.state_dir()), "a VMM of this test still runs");
}

/// The Memory emptyDir is one guest tmpfs of the 8 MiB sizeLimit, mounted in both containers:
/// what one writes the other reads (also through a subPath, which the agent made), a write
/// past the limit fails, and nothing of it is on the host: no tmpfs mount below the state
/// directory, no file or byte of it anywhere under the pod's directory (its share included).
fn memory_empty_dir_is_in_the_guest(n: &Nutshell, exec: &dyn Fn(&str, &str) -> String) {
    for container in ["app", "sidecar"] {
        // statfs of the volume (df would name the first mount of the same device).
        let statfs = exec(container, "stat -f -c '%T %b %S' /mem");
        let fields: Vec<&str> = statfs.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&"tmpfs"), "{container}: {statfs}");
        let size: u64 = fields[1..]
            .iter()
            .filter_map(|f| f.parse::<u64>().ok())
            .product();
        assert_eq!(
            size,
            8 << 20,
            "{container}: memory emptyDir size (type, blocks, block size): {statfs}"
        );
    }
    // The marker is assembled in the guest, so no command line or log on the host holds it.
    exec("app", "printf 'guest-%s-only\\n' memory > /mem/mem-note");
    assert_eq!(
        exec("sidecar", "cat /mem/mem-note").trim(),
        "guest-memory-only"
    );
    exec("sidecar", "cat /mem/mem-note > /mem-sub/mem-copy");
    assert_eq!(
        exec("app", "cat /mem/deep/dir/mem-copy").trim(),
        "guest-memory-only"
    );
    let full = n.sh(
        "demo",
        "sidecar",
        "dd if=/dev/zero of=/mem/big bs=1048576 count=9",
    );
    assert!(!full.status.success(), "9 MiB fit in an 8 MiB emptyDir");
    exec("sidecar", "rm /mem/big");

    let pod_dir = n.state_dir().join("pods/demo");
    let pod = pod_dir.to_str().unwrap();
    // A tmpfs made on the host would be a mount below the pod directory with root "/" (the
    // hostPath binds there come from the ground's /tmp, a tmpfs too, but from a subdirectory).
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let host_tmpfs: Vec<&str> = mounts
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fstype = line.split(" - ").nth(1).and_then(|t| t.split(' ').next());
            fields.len() > 4
                && fields[4].starts_with(pod)
                && (fields[4].ends_with("/mem") || (fstype == Some("tmpfs") && fields[3] == "/"))
        })
        .collect();
    assert!(host_tmpfs.is_empty(), "a tmpfs on the host: {host_tmpfs:?}");
    assert!(pod_dir.join("share").is_dir(), "{}", pod_dir.display());
    assert!(!pod_dir.join("share/volumes/mem").exists());
    let found = find_on_host(&pod_dir, "mem-note", b"guest-memory-only");
    assert!(found.is_empty(), "guest tmpfs data on the host: {found:?}");
}

/// Files below `dir` (symlinks not followed) named `name` or holding `marker`.
fn find_on_host(dir: &Path, name: &str, marker: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if entry.file_name() == name {
                found.push(path.clone());
            }
            if meta.is_dir() {
                todo.push(path);
            } else if meta.is_file() && meta.len() < 64 << 20 {
                let text = std::fs::read(&path).unwrap_or_default();
                if text.windows(marker.len()).any(|w| w == marker) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// Whether a nutshell-vmm with a socket under `dir` runs.
fn pgrep_vmm(dir: &Path) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("nutshell-vmm") && c.contains(dir.to_str().unwrap())
            })
            .unwrap_or(false)
    })
}

fn bad_manifests_are_named() {
    let n = Nutshell::new("cli-bad");
    let cases = [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: a\n    image: nutshell/busybox:test\n    livenessProbe: {}\n",
            "spec.containers[0].livenessProbe",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: a\n    image: nutshell/busybox:test\n    resources: {limits: {memory: 12Zi}}\n",
            "12Zi",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - name: a\n    image: no/such:image\n",
            "no/such:image",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n  - {name: a, image: nutshell/busybox:test}\n  - {name: a, image: nutshell/busybox:test}\n",
            "spec.containers[1].name",
        ),
    ];
    for (i, (yaml, needle)) in cases.iter().enumerate() {
        let path = n.write(&format!("bad{i}.yaml"), yaml);
        let err = n.fails(&["run", path.to_str().unwrap()]);
        assert!(err.contains(needle), "case {i}: {err:?} lacks {needle:?}");
    }
    assert!(
        !n.state_dir().join("pods/x").exists(),
        "a bad manifest left a pod"
    );
}

fn vmm_crash_is_reported() {
    let n = Nutshell::new("cli-crash");
    let manifest = n.write(
        "crash.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec:\n  containers:\n  - {name: a, image: nutshell/busybox:test, command: [sleep, '3600']}\n",
    );
    n.ok(&["run", manifest.to_str().unwrap()]);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(n.state_dir().join("pods/crash/state.json")).unwrap(),
    )
    .unwrap();
    let vmm = state["vmm_pid"].as_i64().expect("vmm pid recorded") as i32;
    // SAFETY: kill(2) of the pod's VMM, a process this test started.
    unsafe { libc::kill(vmm, libc::SIGKILL) };
    let mut ps = String::new();
    for _ in 0..100 {
        ps = n.ok(&["ps"]);
        if ps.contains("crashed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ps.contains("crash") && ps.contains("crashed"), "{ps}");
    n.ok(&["rm", "crash"]);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(n.state_dir().to_str().unwrap()),
        "{mounts}"
    );
}

/// Ctrl-C (SIGINT) to `nutshell run` while the pod starts: the VM, its mounts, its host cgroup
/// and the pod's directory all go, and `nutshell ps` no longer lists it.
fn ctrl_c_during_run_tears_down() {
    let n = Nutshell::new("cli-ctrl-c");
    let manifest = n.write(
        "interrupted.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: interrupted
spec:
  containers:
  - name: app
    image: nutshell/busybox:test
    command: ["sleep", "3600"]
"#,
    );
    let mut run = n
        .command(&["run", manifest.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nutshell run");
    // Interrupt once the VMM is up (the pod is mid-start: booting or creating containers).
    let state = n.state_dir();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !pgrep_vmm(&state) {
        assert!(
            run.try_wait().unwrap().is_none(),
            "nutshell run ended before its VMM started"
        );
        assert!(std::time::Instant::now() < deadline, "no VMM after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) of our own child, which has not been reaped yet.
    let rc = unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0, "SIGINT to nutshell run");
    let out = run.wait_with_output().expect("wait for nutshell run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 130 when interrupted while starting; 0 when the pod was Running already (then `run`
    // has returned before the signal and the pod stays: remove it the ordinary way).
    match out.status.code() {
        Some(130) => assert!(stderr.contains("interrupted"), "{stderr}"),
        other => panic!("nutshell run after SIGINT: {other:?}\nstderr: {stderr}"),
    }
    assert!(!pgrep_vmm(&state), "a VMM outlived the interrupted run");
    assert!(
        !state.join("pods/interrupted").exists(),
        "the pod's directory stayed"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(state.to_str().unwrap()),
        "mounts stayed:\n{mounts}"
    );
    assert!(!n.ok(&["ps"]).contains("interrupted"), "ps lists the pod");
}
