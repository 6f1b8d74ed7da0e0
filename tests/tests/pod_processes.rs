//! End to end (issue 4, processes): exec joins every namespace and the cgroup of its
//! container; stdout and stderr arrive whole and apart, stdin reaches the process and closes;
//! a terminal gets its window size; an OOM kill is reported on WaitProcess and as an event;
//! the OCI process setup (user, groups, umask, capabilities, no_new_privs, rlimits,
//! oom_score_adj, sysctls, masked and read-only paths, bind mounts, seccomp) holds inside.
//! One VM for all cases.

use std::collections::HashMap;
use std::time::Duration;

use nutshell_protocol::agent::{GetOomEventRequest, NamespaceMode, StdioStream};
use nutshell_tests::ground::Group;
use nutshell_tests::oci::{exec_process_json, resources, ContainerSpec};
use nutshell_tests::pod_client::{expect_code, inode, Pod, CALL};
use nutshell_tests::pod_guest::{GuestImage, Vmm, VmmLaunch, TEST_IMAGE_ROOTFS};
use serde_json::{json, Value};

const AGENT_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn pod_processes() {
    Group::new("pod_processes")
        .deadline(Duration::from_secs(300))
        .host_env(|| GuestImage::locate_test().env_test())
        .run(&[("processes_of_a_pod", processes_of_a_pod)]);
}

fn processes_of_a_pod() {
    let image = GuestImage::locate_test();
    let launch = VmmLaunch {
        mem_mib: 512,
        ..VmmLaunch::default()
    };
    let mut vmm = Vmm::spawn(&image, &launch).expect("spawn nutshell-vmm");
    let agent = vmm.agent(AGENT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let pod = Pod::create_sandbox(
        &agent,
        vmm.uds.clone(),
        "pod",
        "proc-pod",
        Pod::options(NamespaceMode::CONTAINER),
    );

    exec_joins_the_container(&pod);
    output_arrives_whole_and_apart(&pod);
    stdin_reaches_the_process(&pod);
    terminal_gets_its_size(&pod);
    oom_kill_is_reported(&pod);
    process_setup_follows_the_spec(&pod);
    seccomp_profile_is_enforced(&pod);

    pod.destroy();
    vmm.shut_down(&agent);
}

/// `nutshell-probe ns` output: kind → inode.
fn parse_ns(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (kind, ino) = line.split_once(' ')?;
            Some((kind.to_string(), ino.parse().ok()?))
        })
        .collect()
}

/// ExecProcess joins all of the container's namespaces and its cgroup, like `docker exec`.
fn exec_joins_the_container(pod: &Pod) {
    pod.create("app", &ContainerSpec::cri(&["sleep", "600"]));
    pod.start("app");
    let app = pod.namespaces("app");
    let (exit, output) = pod.exec("app", "ns", &["nutshell-probe", "ns"]);
    assert_eq!(exit.exit_code, 0, "{}", output.stderr_text());
    let seen = parse_ns(&output.stdout_text());
    for kind in ["net", "uts", "ipc", "pid", "mnt", "cgroup"] {
        assert_eq!(
            seen.get(kind).copied(),
            Some(inode(&app, kind)),
            "the exec is not in app's {kind} namespace: {seen:?}"
        );
    }
    let (exit, output) = pod.exec(
        "app",
        "where",
        &["sh", "-c", "cat /proc/self/cgroup /proc/1/comm; exit 5"],
    );
    assert_eq!(exit.exit_code, 5, "exec exit code");
    assert_eq!(
        output.stdout_text(),
        "0::/kubepods/poduid-pod/app\nsleep\n",
        "exec cgroup and pid namespace"
    );
    expect_code(
        pod.try_exec("app", "where", exec_process_json(&["true"], false), false),
        ttrpc::Code::ALREADY_EXISTS,
        "where",
    );
    expect_code(
        pod.try_exec("ghost", "e", exec_process_json(&["true"], false), false),
        ttrpc::Code::NOT_FOUND,
        "ghost",
    );
    expect_code(
        pod.try_exec("app", "bad", b"{not json".to_vec(), false),
        ttrpc::Code::INVALID_ARGUMENT,
        "exec process",
    );
    pod.signal("app", 9, true);
    assert_eq!(pod.wait("app", "").exit_code, 137);
    expect_code(
        pod.try_exec("app", "late", exec_process_json(&["true"], false), false),
        ttrpc::Code::FAILED_PRECONDITION,
        "running",
    );
    pod.remove("app");
}

/// 10 MiB of stdout arrive byte for byte; stderr stays apart; the exit code comes with them.
fn output_arrives_whole_and_apart(pod: &Pod) {
    const SIZE: usize = 10 << 20;
    let (exit, output) = pod.run_spec(
        "spew",
        &ContainerSpec::cri(&["nutshell-probe", "spew", &SIZE.to_string()]),
    );
    assert_eq!(exit.exit_code, 0, "{}", output.stderr_text());
    assert_eq!(output.stdout.len(), SIZE, "stdout length");
    let first_bad = output
        .stdout
        .iter()
        .enumerate()
        .find(|(i, b)| **b != (*i % 251) as u8);
    assert!(first_bad.is_none(), "stdout differs at {first_bad:?}");

    let (exit, output) = pod.run("streams", "echo out; echo err >&2; exit 3");
    assert_eq!(exit.exit_code, 3);
    assert_eq!(output.stdout_text(), "out\n");
    assert_eq!(output.stderr_text(), "err\n");
}

/// stdin of a container's init and of an exec: the bytes arrive, CloseStdin is EOF.
fn stdin_reaches_the_process(pod: &Pod) {
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    pod.try_create(
        "cat",
        ContainerSpec::cri(&["nutshell-probe", "echo-stdin"]).json(),
        true,
    )
    .expect("CreateContainer with stdin");
    let output = pod.collect("cat", "", false);
    pod.start("cat");
    pod.feed_stdin("cat", "", &data);
    let exit = pod.wait("cat", "");
    let output = output.finish();
    assert_eq!(exit.exit_code, 0, "{}", output.stderr_text());
    assert!(output.stdout == data, "init stdin came back changed");

    pod.create("idle", &ContainerSpec::cri(&["sleep", "600"]));
    pod.start("idle");
    pod.try_exec(
        "idle",
        "cat",
        exec_process_json(&["sh", "-c", "wc -c; exit 4"], false),
        true,
    )
    .expect("ExecProcess with stdin");
    let output = pod.collect("idle", "cat", false);
    pod.feed_stdin("idle", "cat", b"twelve bytes");
    let exit = pod.wait("idle", "cat");
    assert_eq!(exit.exit_code, 4);
    assert_eq!(output.finish().stdout_text().trim(), "12");
    // CloseStdin without a stream: EOF at once; attaching afterwards is refused.
    pod.try_exec(
        "idle",
        "closed",
        exec_process_json(&["sh", "-c", "wc -c"], false),
        true,
    )
    .expect("ExecProcess with stdin");
    let output = pod.collect("idle", "closed", false);
    pod.close_stdin("idle", "closed");
    assert_eq!(pod.wait("idle", "closed").exit_code, 0);
    assert_eq!(output.finish().stdout_text().trim(), "0");
    let refused = nutshell_protocol::client::attach_stdio(
        &pod.uds,
        "idle",
        "closed",
        StdioStream::STDIN,
        CALL,
    )
    .expect_err("stdin attach after CloseStdin");
    assert!(
        refused.to_string().contains("unavailable") || refused.to_string().contains("closed"),
        "{refused}"
    );
    let unknown = nutshell_protocol::client::attach_stdio(
        &pod.uds,
        "idle",
        "nope",
        StdioStream::STDOUT,
        CALL,
    )
    .expect_err("attach to an unknown exec");
    assert!(unknown.to_string().contains("no such process"), "{unknown}");
    expect_code(
        pod.resize("idle", "cat", 10, 10),
        ttrpc::Code::FAILED_PRECONDITION,
        "not a terminal",
    );
}

/// A terminal exec: stdin/stdout are a pty, ResizeTty sets its window size.
fn terminal_gets_its_size(pod: &Pod) {
    pod.try_exec(
        "idle",
        "tty",
        exec_process_json(
            &[
                "sh",
                "-c",
                "read line; stty size; test -t 0 && test -t 1 && echo is-a-tty; echo got $line",
            ],
            true,
        ),
        true,
    )
    .expect("ExecProcess with a terminal");
    let output = pod.collect("idle", "tty", true);
    pod.resize("idle", "tty", 40, 100).expect("ResizeTty");
    let mut stdin = pod.attach("idle", "tty", StdioStream::STDIN);
    std::io::Write::write_all(&mut stdin, b"hello\n").expect("write to the terminal");
    let exit = pod.wait("idle", "tty");
    let text = output.finish().stdout_text();
    assert_eq!(exit.exit_code, 0, "{text}");
    assert!(text.contains("40 100"), "window size missing: {text:?}");
    assert!(text.contains("is-a-tty"), "not a pty: {text:?}");
    assert!(text.contains("got hello"), "terminal input lost: {text:?}");
    pod.signal("idle", 9, true);
    pod.wait("idle", "");
    pod.remove("idle");
}

/// A container over its memory limit is OOM-killed: WaitProcess says so, and GetOomEvent
/// names it.
fn oom_kill_is_reported(pod: &Pod) {
    pod.create(
        "hog",
        &ContainerSpec::cri(&["nutshell-probe", "alloc", "256"])
            .resources(resources(Some(32 << 20), None)),
    );
    pod.start("hog");
    let exit = pod.wait("hog", "");
    assert!(
        exit.oom_killed && exit.signal == 9 && exit.exit_code == 137,
        "{exit:?}"
    );
    let mut req = GetOomEventRequest::new();
    req.sandbox_id = "pod".into();
    let event = pod
        .agent
        .get_oom_event(&req, CALL)
        .expect("GetOomEvent after an OOM kill");
    assert_eq!(event.container_id, "hog");
    pod.remove("hog");
}

/// The CRI spec of `args`, changed by `edit` as JSON.
fn edited_spec(args: &[&str], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut spec: Value = serde_json::from_slice(&ContainerSpec::cri(args).json()).unwrap();
    edit(&mut spec);
    serde_json::to_vec(&spec).unwrap()
}

/// user, groups, umask, cwd, env, capabilities, no_new_privs, rlimits, oom_score_adj,
/// sysctls, masked and read-only paths, bind mounts and a read-only root, as the spec says.
fn process_setup_follows_the_spec(pod: &Pod) {
    let script = r#"set -ex
        test "$(id -u):$(id -g)" = 1000:1000
        test "$(id -G)" = "1000 2000 3000"
        test "$(umask)" = 0027
        test "$(pwd)" = /tmp && test "$GREETING" = hello
        grep -qx 'CapEff:	0000000000000400' /proc/self/status
        grep -qx 'CapAmb:	0000000000000400' /proc/self/status
        grep -qx 'CapBnd:	0000000000000420' /proc/self/status
        grep -qx 'NoNewPrivs:	1' /proc/self/status
        test "$(ulimit -n)" = 256
        test "$(cat /proc/self/oom_score_adj)" = 500
        test "$(cat /proc/sys/kernel/msgmax)" = 12345
        test ! -s /proc/cmdline
        awk '$5 == "/proc/sys" { print $6 }' /proc/self/mountinfo | grep -q '^ro'
        test -x /mnt/image-bin/busybox
        awk '$5 == "/mnt/image-bin" { print $6 }' /proc/self/mountinfo | grep -q '^ro'
        echo ok"#;
    let spec = edited_spec(&["sh", "-c", script], |spec| {
        let process = &mut spec["process"];
        process["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000], "umask": 23});
        process["cwd"] = json!("/tmp");
        process["env"]
            .as_array_mut()
            .unwrap()
            .push(json!("GREETING=hello"));
        let caps = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        // A non-root process keeps after execve only its ambient capabilities.
        let ambient = json!(["CAP_NET_BIND_SERVICE"]);
        process["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": ambient, "ambient": ambient});
        process["noNewPrivileges"] = json!(true);
        process["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
        process["oomScoreAdj"] = json!(500);
        let linux = &mut spec["linux"];
        linux["sysctl"] = json!({"kernel.msgmax": "12345"});
        linux["maskedPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/proc/cmdline"));
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/mnt/image-bin",
            "type": "bind",
            "source": format!("{TEST_IMAGE_ROOTFS}/bin"),
            "options": ["rbind", "ro"]
        }));
    });
    let (exit, output) = pod.run_json("setup", spec);
    assert_eq!(
        (exit.exit_code, output.stdout_text().trim()),
        (0, "ok"),
        "process setup differs from the spec (set -e stopped at the failing line)\nstderr: {}",
        output.stderr_text()
    );

    let readonly_root = edited_spec(
        &["sh", "-c", "! touch /new 2>/dev/null && touch /dev/shm/ok"],
        |spec| spec["root"]["readonly"] = json!(true),
    );
    let (exit, output) = pod.run_json("roroot", readonly_root);
    assert_eq!(exit.exit_code, 0, "root.readonly: {}", output.stderr_text());

    let bad = edited_spec(&["true"], |spec| {
        spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 2}])
    });
    expect_code(
        pod.try_create("badlimit", bad, false),
        ttrpc::Code::INVALID_ARGUMENT,
        "RLIMIT_NOFILE",
    );
}

/// A seccomp profile in the spec: the listed syscalls fail with the profile's errno.
fn seccomp_profile_is_enforced(pod: &Pod) {
    let spec = edited_spec(
        &[
            "sh",
            "-c",
            "! mkdir /tmp/blocked 2>/tmp/err && grep -q 'not implemented' /tmp/err && touch /tmp/ok",
        ],
        |spec| {
            spec["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{
                    "names": ["mkdir", "mkdirat"],
                    "action": "SCMP_ACT_ERRNO",
                    "errnoRet": 38
                }]
            });
        },
    );
    let (exit, output) = pod.run_json("seccomp", spec);
    assert_eq!(exit.exit_code, 0, "seccomp: {}", output.stderr_text());
}
