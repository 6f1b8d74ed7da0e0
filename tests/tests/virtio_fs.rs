//! End to end: a host directory shared over virtio-fs (`nutshell-vmm --fs`, mounted by the agent
//! at /run/nutshell-share from `nutshell.virtiofs=<tag>`). A container runs from an image rootfs
//! on the share, with a directory of the share bind-mounted; what it writes is on the host at
//! once, what the host rewrites is seen by the next container, and nothing outside the share is
//! reachable from the guest: not by `..`, an absolute link, a symlink swapped in and out of
//! a directory while the guest reads through it, or a device node the guest makes (the
//! share is sealed `nodev` as the runtime seals every pod's share). One VM for all cases.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nutshell_protocol::agent::NamespaceMode;
use nutshell_tests::ground::{repo_root, Group};
use nutshell_tests::oci::ContainerSpec;
use nutshell_tests::pod_client::Pod;
use nutshell_tests::pod_guest::{scratch_dir, GuestImage, Vmm, VmmLaunch};
use serde_json::{json, Value};

const AGENT_TIMEOUT: Duration = Duration::from_secs(90);
const TAG: &str = "nutshell-share";
/// Where the agent mounts the share in the guest.
const GUEST_SHARE: &str = nutshell_protocol::GUEST_SHARE_MOUNT_POINT;
/// How long the guest may trust cached attributes and names (the device's ATTR_TIMEOUT and
/// ENTRY_TIMEOUT), plus a margin.
const CACHE_TIMEOUT: Duration = Duration::from_millis(1300);
const MARKER: &str = "nutshell-virtio-fs-outside-marker";
const MARKER_TEXT: &str = "host secret outside the share";

#[test]
fn virtio_fs() {
    Group::new("virtio_fs")
        .deadline(Duration::from_secs(300))
        .host_env(|| GuestImage::locate_test().env_test())
        .run(&[("share_serves_rootfs_and_data", share_serves_rootfs_and_data)]);
}

/// The CRI spec of `sh -c script` with the share's `data/` at /data and the whole share at
/// /share (both read-write binds of guest paths).
fn spec_with_share(script: &str) -> Vec<u8> {
    let mut spec: Value =
        serde_json::from_slice(&ContainerSpec::cri(&["sh", "-c", script]).json()).unwrap();
    let mounts = spec["mounts"].as_array_mut().unwrap();
    for (destination, source) in [
        ("/data", format!("{GUEST_SHARE}/data")),
        ("/share", GUEST_SHARE.to_string()),
    ] {
        mounts.push(json!({
            "destination": destination,
            "type": "bind",
            "source": source,
            "options": ["rbind", "rw"]
        }));
    }
    serde_json::to_vec(&spec).unwrap()
}

/// `scratch/share/{rootfs,data}` with the test image and `data/hello.txt`, beside
/// `scratch/MARKER`, outside the share.
fn make_share(scratch: &Path) -> PathBuf {
    let share = scratch.join("share");
    fs::create_dir_all(share.join("data")).unwrap();
    let image = repo_root().join("build/test-image/rootfs");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&image)
        .arg(share.join("rootfs"))
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a {} failed", image.display());
    fs::write(share.join("data/hello.txt"), "hello from the host\n").unwrap();
    fs::write(scratch.join(MARKER), MARKER_TEXT).unwrap();
    // An absolute link to the marker, made on the host: the guest resolves it in its own view.
    std::os::unix::fs::symlink(scratch.join(MARKER), share.join("data/host-link")).unwrap();
    share
}

fn share_serves_rootfs_and_data() {
    let image = GuestImage::locate_test();
    let scratch = scratch_dir("virtio-fs").expect("scratch dir");
    let share = make_share(&scratch);
    nutshell_runtime::host_mounts::seal_share(&share).expect("seal the share (nodev,nosuid)");
    let launch = VmmLaunch {
        fs: Some((TAG.into(), share.clone())),
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let pod = Pod::create_sandbox(
        &agent,
        vmm.uds.clone(),
        "fs-pod",
        "fs-pod",
        Pod::options(NamespaceMode::CONTAINER),
    );
    let rootfs = format!("{GUEST_SHARE}/rootfs");
    let run = |id: &str, script: &str| {
        let (exit, output) = pod.run_with_rootfs(id, spec_with_share(script), &rootfs);
        (exit.exit_code, output.stdout_text(), output.stderr_text())
    };

    // The image rootfs comes from the share; the bind-mounted data is read and written.
    let (code, stdout, stderr) = run(
        "writer",
        "cat /data/hello.txt; echo written > /data/out.txt; test -x /bin/busybox",
    );
    assert_eq!(
        (code, stdout.as_str()),
        (0, "hello from the host\n"),
        "stderr: {stderr}\nconsole:\n{}",
        vmm.console()
    );
    // Guest writes reach the host file at once (no writeback cache).
    assert_eq!(
        fs::read_to_string(share.join("data/out.txt")).unwrap(),
        "written\n"
    );
    // The container's writes to its root go to its overlay, not to the image on the share.
    let (code, _, stderr) = run("overlay", "echo x > /new-in-root && test -f /new-in-root");
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(!share.join("rootfs/new-in-root").exists());

    // A host-side rewrite (longer than before) is seen by the next container once the guest's
    // cached attributes expired.
    fs::write(
        share.join("data/hello.txt"),
        "rewritten on the host, and longer\n",
    )
    .unwrap();
    std::thread::sleep(CACHE_TIMEOUT);
    let (code, stdout, stderr) = run("reader", "cat /data/hello.txt");
    assert_eq!(
        (code, stdout.as_str()),
        (0, "rewritten on the host, and longer\n"),
        "stderr: {stderr}"
    );

    // Nothing outside the share is reachable: `..` above the share, the host's absolute link
    // (resolved in the guest's view), a search of the container's whole tree.
    let script = format!(
        "ls -a /data/../../.. /share/.. /share/../..; \
         cat /data/../../../../{MARKER} /share/../{MARKER} /data/host-link; \
         find / -xdev -name {MARKER}; find /share /data -name {MARKER}; \
         readlink /data/host-link"
    );
    let (_, stdout, stderr) = run("escape", &script);
    assert!(
        !stdout.contains(MARKER_TEXT) && !stderr.contains(MARKER_TEXT),
        "the guest read a host file outside the share\nstdout: {stdout}\nstderr: {stderr}"
    );
    let listed: Vec<&str> = stdout.lines().filter(|l| l.contains(MARKER)).collect();
    let link = scratch.join(MARKER);
    assert_eq!(
        listed,
        [link.to_str().unwrap()],
        "only readlink may name the marker (the link's text)\nstdout: {stdout}"
    );
    assert!(
        stderr.contains("host-link"),
        "the host's absolute link must not resolve in the guest\nstderr: {stderr}"
    );

    // A symlink race: the guest swaps a directory of the share and a symlink to the host
    // directory that holds the marker, as fast as it can, while reading through the name.
    let (code, stdout, stderr) = run(
        "swap-race",
        &format!(
            "nutshell-probe swap-race /data/race {} 5",
            scratch.display()
        ),
    );
    assert_eq!(code, 0, "swap-race: stdout {stdout}\nstderr {stderr}");
    let counts: Vec<u64> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|kv| kv.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect();
    println!("swap-race in the guest: {stdout}");
    assert!(
        counts.len() == 3 && counts[0] > 0 && counts[1] > 0,
        "the race ran (swaps, reads through the directory): {stdout}"
    );
    assert!(
        !stdout.contains(MARKER) && !stdout.contains("foreign"),
        "the guest saw the host directory through the swapped symlink: {stdout}"
    );
    // A device node made by the guest (mknod passes through to the host) is the guest's own
    // device in the guest (the guest kernel opens special files itself), and opens nothing on
    // the host: the sealed share is nodev.
    let (code, stdout, stderr) = run(
        "mknod",
        "mknod /data/null c 1 3 && echo x > /data/null && cat /data/null && echo guest-null",
    );
    assert_eq!(
        (code, stdout.as_str()),
        (0, "guest-null\n"),
        "mknod in the share: stderr {stderr}"
    );
    let node = share.join("data/null");
    assert!(
        fs::symlink_metadata(&node).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_char_device()
        }),
        "the guest's mknod made a device node on the host"
    );
    let err = fs::File::open(&node).expect_err("a device node in the share must not open");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "nodev: {err}");

    pod.destroy();
    agent
        .shutdown(nutshell_tests::pod_client::CALL)
        .expect("Shutdown");
    let exit = vmm
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.status.code(), Some(0), "stderr: {}", exit.stderr);
    nutshell_runtime::host_mounts::unmount_all_below(&share).expect("unmount the share");
    let _ = fs::remove_dir_all(&scratch);
}
