//! A standalone containerd 1.6 for the end-to-end tests of `containerd-shim-nutshell-v2`
//! (`tests/tests/containerd_shim.rs` with `ctr`, `tests/tests/containerd_cri.rs` through CRI):
//! its own root, state, socket and config under one scratch directory, the shim first in its
//! PATH, the CRI plugin with `restrict_oom_score_adj`, the runtimes `runc` and `nutshell`, a CNI
//! bridge network of Debian's plugins and the busybox test image as the sandbox image.
//! [`Containerd`]'s Drop stops containerd and removes everything of its own in every case.

use std::ffi::OsString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::ground::repo_root;
use crate::pod_guest::{scratch_dir, GuestImage};

/// The shim binary, built on the caller's side.
pub const ENV_SHIM: &str = "NUTSHELL_SHIM_BIN";
pub const RUNTIME: &str = "io.containerd.nutshell.v2";
/// The busybox test image, as `build/test-image/oci` names it.
pub const IMAGE: &str = "nutshell/busybox:test";
/// The same layers with `sleep` as the command: CRI's sandbox (pause) image, which runc runs.
pub const PAUSE_IMAGE: &str = "nutshell/pause:test";
/// The namespace of CRI's containers and images.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Where containerd-shim puts shim sockets, whatever containerd's own paths.
pub const SHIM_SOCKETS: &str = "/run/containerd/s";
/// Debian's CNI plugins (`containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Builds the shim (release, beside `nutshell-vmm`); its path.
pub fn build_shim() -> PathBuf {
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

/// The shim named by [`ENV_SHIM`], else the release build's.
pub fn shim_binary() -> PathBuf {
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

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Entries of `dir` (none when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
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
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
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
pub fn mounts_with(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A standalone containerd with everything of its own under one scratch directory.
pub struct Containerd {
    pub dir: PathBuf,
    /// The namespace `ctr` and the leftover checks use.
    pub namespace: String,
    child: Option<Child>,
    pub shim: PathBuf,
    /// The shims' state directory (`NUTSHELL_SHIM_STATE_DIR`): short, as CRI's sandbox ids
    /// are 64 characters and a pod's VM socket path must fit a Unix socket address.
    shim_state: PathBuf,
    /// Shim sockets that existed before this containerd started.
    sockets_before: Vec<String>,
}

impl Containerd {
    /// Starts containerd; `ctr` calls go to `namespace`.
    pub fn start(what: &str, namespace: &str) -> Containerd {
        let image = GuestImage::locate();
        let shim = shim_binary();
        let dir = scratch_dir(what).expect("scratch dir");
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut ctd = Containerd {
            dir: dir.clone(),
            namespace: namespace.to_string(),
            child: None,
            shim: shim.clone(),
            shim_state: PathBuf::from(format!("/run/nse-{}-{n}", std::process::id())),
            sockets_before: entries(Path::new(SHIM_SOCKETS)),
        };
        let config = dir.join("config.toml");
        std::fs::write(&config, ctd.config_toml()).expect("write config.toml");
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).expect("create the CNI config dir");
        std::fs::write(cni.join("10-nutshell-e2e.conflist"), ctd.cni_conflist())
            .expect("write the CNI conflist");
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

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The shims' state directory (`NUTSHELL_SHIM_STATE_DIR`).
    pub fn shim_state(&self) -> PathBuf {
        self.shim_state.clone()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    pub fn log_tail(&self) -> String {
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
  sandbox_image = "docker.io/{PAUSE_IMAGE}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{d}/cni"
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nutshell]
  runtime_type = "{RUNTIME}"
"#
        )
    }

    /// A bridge network with host-local addresses kept in this containerd's directory.
    fn cni_conflist(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"{{
  "cniVersion": "0.4.0",
  "name": "nutshell-e2e",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "nse2e0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{d}/cni-ipam",
        "ranges": [[{{ "subnet": "10.231.0.0/24" }}]],
        "routes": [{{ "dst": "0.0.0.0/0" }}]
      }}
    }},
    {{ "type": "loopback" }}
  ]
}}
"#
        )
    }

    /// `ctr` against this containerd, in its namespace, at most 5 minutes.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_input(args, None)
    }

    /// Like [`Containerd::ctr`], with `input` on ctr's stdin.
    pub fn ctr_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut all: Vec<OsString> = vec!["300".into(), "ctr".into(), "--address".into()];
        all.push(self.socket().into());
        all.extend(["--namespace".into(), self.namespace.clone().into()]);
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

    pub fn ctr_ok(&self, args: &[&str]) -> String {
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
    pub fn import_test_image(&self) {
        let tar = self.dir.join("image.tar");
        tar_dir(&repo_root().join("build/test-image/oci"), &tar);
        self.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
        let images = self.ctr_ok(&["images", "ls", "-q"]);
        assert!(images.lines().any(|l| l == IMAGE), "images: {images}");
    }

    /// For CRI: the test image and [`PAUSE_IMAGE`] (its layers, `sleep` as the command),
    /// both also under their normalized names (`docker.io/...`), which CRI looks up.
    pub fn import_cri_images(&self) {
        self.import_test_image();
        let layout = self.dir.join("pause-oci");
        pause_layout(&repo_root().join("build/test-image/oci"), &layout);
        let tar = self.dir.join("pause.tar");
        tar_dir(&layout, &tar);
        self.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
        for name in [IMAGE, PAUSE_IMAGE] {
            self.ctr_ok(&["images", "tag", name, &format!("docker.io/{name}")]);
        }
    }

    /// What this containerd's shims left behind: processes, mounts, sockets, pod dirs.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let dir = self.dir.display().to_string();
        for (pid, cmdline) in processes_with(&self.shim.display().to_string()) {
            left.push(format!("shim process {pid}: {cmdline}"));
        }
        for (pid, cmdline) in processes_with(&self.shim_state().display().to_string()) {
            left.push(format!("process {pid} (a VMM?): {cmdline}"));
        }
        for m in mounts_with(&self.shim_state.display().to_string()) {
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
        let pods = self.shim_state().join(&self.namespace).join("pods");
        for pod in entries(&pods) {
            left.push(format!("pod directory {}/{pod}", pods.display()));
        }
        // The VMMs' host cgroups (`/nutshell/...`, `/nutshell-e2e/<id>` from ctr's
        // cgroupsPath): no cgroup directory named after nutshell may stay, a few levels down
        // (v2; a v1 host's per-controller hierarchies are one level more).
        let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
        while let Some((dir, depth)) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if entry.file_name().to_string_lossy().contains("nutshell") {
                    left.push(format!("host cgroup {}", entry.path().display()));
                } else if depth < 4 {
                    dirs.push((entry.path(), depth + 1));
                }
            }
        }
        left
    }

    /// Waits up to `timeout` for the shims to leave nothing behind.
    pub fn assert_clean(&self, timeout: Duration) {
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

/// Tars the contents of `dir` into `tar`.
fn tar_dir(dir: &Path, tar: &Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of {} failed", dir.display());
}

/// Writes `blob` into the layout at `dir`; its descriptor's digest and size.
fn add_blob(dir: &Path, blob: &[u8]) -> (String, usize) {
    let tmp = dir.join("blob.tmp");
    std::fs::write(&tmp, blob).expect("write blob");
    let out = Command::new("sha256sum")
        .arg(&tmp)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    let hex = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&hex)).expect("place blob");
    (format!("sha256:{hex}"), blob.len())
}

/// A copy of the OCI layout `from` at `to` whose one image is [`PAUSE_IMAGE`]: the same
/// layers, `sleep` for ever as its command (a sandbox image's process must stay up under runc).
fn pause_layout(from: &Path, to: &Path) {
    let blobs = to.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("create the pause layout");
    for name in entries(&from.join("blobs/sha256")) {
        std::fs::copy(from.join("blobs/sha256").join(&name), blobs.join(&name)).expect("copy blob");
    }
    std::fs::copy(from.join("oci-layout"), to.join("oci-layout")).expect("copy oci-layout");
    let read_json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).expect("read layout file"))
            .expect("layout JSON")
    };
    let blob_path = |digest: &serde_json::Value| {
        let digest = digest.as_str().expect("digest");
        from.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = read_json(from.join("index.json"));
    let mut manifest = read_json(blob_path(&index["manifests"][0]["digest"]));
    let mut config = read_json(blob_path(&manifest["config"]["digest"]));
    config["config"]["Cmd"] = serde_json::json!(["sleep", "1000000000"]);
    let (digest, size) = add_blob(to, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = add_blob(to, &serde_json::to_vec(&manifest).unwrap());
    let mut index = index.clone();
    index["manifests"] = serde_json::json!([{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": size,
        "annotations": { "org.opencontainers.image.ref.name": PAUSE_IMAGE },
    }]);
    std::fs::write(to.join("index.json"), serde_json::to_vec(&index).unwrap())
        .expect("write index.json");
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
        // runc's shims and containers of this containerd (their command lines name its
        // directory or socket).
        strays.extend(processes_with(&self.dir.display().to_string()));
        let me = std::process::id() as i32;
        for (pid, _) in strays {
            if pid == me {
                continue;
            }
            // SAFETY: kill(2) with a pid read from /proc just now; only processes started
            // through this test's containerd match.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = nutshell_runtime::host_mounts::unmount_all_below(&self.shim_state);
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
        for dir in [&self.shim_state, &self.dir] {
            if nutshell_runtime::host_mounts::unmount_all_below(dir).unwrap_or(1) == 0 {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
