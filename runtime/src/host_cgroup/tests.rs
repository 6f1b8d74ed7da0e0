use super::*;

fn mib(n: u64) -> u64 {
    n << 20
}

#[test]
fn limits_are_the_vm_plus_the_overhead() {
    let limits = Limits::for_vm(256, 1, Overhead::default());
    assert_eq!(
        limits,
        Limits {
            memory_bytes: mib(256 + 64),
            cpu_quota_us: 125_000,
            cpu_period_us: 100_000,
        }
    );
    let overhead = Overhead {
        memory_mib: 32,
        millicores: 500,
    };
    let limits = Limits::for_vm(1120, 3, overhead);
    assert_eq!(limits.memory_bytes, mib(1152));
    assert_eq!(limits.cpu_quota_us, 350_000);
}

#[test]
fn paths_are_checked() {
    for good in ["/nutshell/default-pod", "/kubepods/burstable/pod1/abc"] {
        assert_eq!(validate_path(Path::new(good)).unwrap(), Path::new(good));
    }
    for (bad, why) in [
        ("", "absolute"),
        ("nutshell/pod", "absolute"),
        ("/", "root"),
        ("/a/../b", ".."),
        ("/a/./b", ".."),
        ("/a//b", "empty name"),
        ("/a/", "empty name"),
        ("/a/b\nc", "control"),
    ] {
        let err = validate_path(Path::new(bad)).unwrap_err().to_string();
        assert!(err.contains(why) && err.contains(bad), "{bad:?}: {err}");
    }
    let long = format!("/{}", "x".repeat(256));
    assert!(validate_path(Path::new(&long)).is_err());
}

#[test]
fn oci_paths_become_hierarchy_paths() {
    let cases = [
        (
            "/kubepods/burstable/pod1/abc",
            "/kubepods/burstable/pod1/abc",
        ),
        ("kubepods/burstable/abc", "/kubepods/burstable/abc"),
        ("/default/hi/", "/default/hi"),
        (
            "kubepods-burstable-pod1.slice:cri-containerd:abc",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
             cri-containerd-abc.scope",
        ),
        ("-.slice:p:n", "/p-n.scope"),
        (":p:n", "/system.slice/p-n.scope"),
        ("machine.slice::n", "/machine.slice/n.scope"),
        ("-.slice:p:a-b.slice", "/a.slice/a-b.slice"),
    ];
    for (oci, path) in cases {
        assert_eq!(from_oci(oci).unwrap(), Path::new(path), "{oci}");
    }
    for bad in [
        "a--b.slice:p:n",
        "-a.slice:p:n",
        "system:p:n",
        "x.slice:p:",
        "/a/../b",
        "",
    ] {
        assert!(from_oci(bad).is_err(), "{bad}");
    }
}

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

const UNIFIED: &str = "\
22 1 0:20 / /sys rw - sysfs sysfs rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
88 30 0:26 /kubepods /mnt/my\\040cg rw - cgroup2 cgroup2 rw
";

fn mount(point: &str, root: &str) -> CgroupMount {
    CgroupMount {
        point: point.into(),
        root: root.into(),
    }
}

fn controllers(point: &Path) -> Option<String> {
    match point.to_str() {
        Some("/sys/fs/cgroup/unified") => Some("hugetlb\n".into()),
        Some("/sys/fs/cgroup") | Some("/mnt/my cg") => Some("cpuset cpu io memory pids\n".into()),
        _ => None,
    }
}

#[test]
fn mountinfo_gives_the_layout() {
    let layout = Layout::from_mountinfo(HYBRID, controllers).unwrap();
    assert_eq!(
        layout,
        Layout::Legacy {
            memory: mount("/sys/fs/cgroup/memory", "/"),
            cpu: mount("/sys/fs/cgroup/cpu,cpuacct", "/"),
        }
    );
    let layout = Layout::from_mountinfo(UNIFIED, controllers).unwrap();
    assert_eq!(layout, Layout::Unified(mount("/sys/fs/cgroup", "/")));
    // Only the partial mount (with an escaped space): paths map below its root.
    let partial = UNIFIED.lines().nth(2).unwrap();
    let layout = Layout::from_mountinfo(partial, controllers).unwrap();
    let Layout::Unified(m) = &layout else {
        panic!("{layout:?}")
    };
    assert_eq!(m, &mount("/mnt/my cg", "/kubepods"));
    assert_eq!(
        m.dir_of(Path::new("/kubepods/pod1/x")).unwrap(),
        Path::new("/mnt/my cg/pod1/x")
    );
    assert!(m.dir_of(Path::new("/nutshell/x")).is_err());
    assert!(m.dir_of(Path::new("/kubepods")).is_err());

    let err = Layout::from_mountinfo(UNIFIED, |_| Some("memory io".into()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/sys/fs/cgroup/cgroup.controllers") && err.contains("cpu"),
        "{err}"
    );
    let err = Layout::from_mountinfo(HYBRID.lines().next().unwrap(), controllers)
        .unwrap_err()
        .to_string();
    assert!(err.contains(MOUNTINFO) && err.contains("memory"), "{err}");
}

#[test]
fn v2_enables_the_controllers_on_the_way_down() {
    let layout = Layout::Unified(mount("/sys/fs/cgroup", "/"));
    let limits = Limits::for_vm(256, 1, Overhead::default());
    let steps = steps(Path::new("/nutshell/pod"), limits, &layout).unwrap();
    let cg = |p: &str| PathBuf::from(format!("/sys/fs/cgroup{p}"));
    const BOTH: &[&str] = &["memory", "cpu"];
    assert_eq!(
        steps,
        vec![
            Step::Enable(cg(""), BOTH),
            Step::Dir(cg("/nutshell")),
            Step::Enable(cg("/nutshell"), BOTH),
            Step::Leaf(cg("/nutshell/pod")),
            Step::Write(cg("/nutshell/pod/memory.max"), mib(320).to_string()),
            Step::Write(cg("/nutshell/pod/cpu.max"), "125000 100000".into()),
        ]
    );
}

#[test]
fn no_cpu_limit_writes_no_quota() {
    let limits = Limits::for_vm(256, 1, Overhead::default()).without_cpu_quota();
    let v2 = Layout::Unified(mount("/sys/fs/cgroup", "/"));
    let steps_v2 = steps(Path::new("/nutshell/pod"), limits, &v2).unwrap();
    assert_eq!(
        steps_v2.last(),
        Some(&Step::Write(
            PathBuf::from("/sys/fs/cgroup/nutshell/pod/cpu.max"),
            "max 100000".into()
        ))
    );
    let v1 = Layout::from_mountinfo(HYBRID, controllers).unwrap();
    let steps_v1 = steps(Path::new("/nutshell/pod"), limits, &v1).unwrap();
    assert_eq!(
        steps_v1.last(),
        Some(&Step::Write(
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/nutshell/pod/cpu.cfs_quota_us"),
            "-1".into()
        ))
    );
}

#[test]
fn v1_makes_the_cgroup_in_each_hierarchy() {
    let layout = Layout::from_mountinfo(HYBRID, controllers).unwrap();
    let limits = Limits::for_vm(256, 2, Overhead::default());
    let steps = steps(Path::new("/nutshell/pod"), limits, &layout).unwrap();
    let mem = |p: &str| PathBuf::from(format!("/sys/fs/cgroup/memory{p}"));
    let cpu = |p: &str| PathBuf::from(format!("/sys/fs/cgroup/cpu,cpuacct{p}"));
    assert_eq!(
        steps,
        vec![
            Step::Dir(mem("/nutshell")),
            Step::Leaf(mem("/nutshell/pod")),
            Step::Dir(cpu("/nutshell")),
            Step::Leaf(cpu("/nutshell/pod")),
            Step::Write(
                mem("/nutshell/pod/memory.limit_in_bytes"),
                mib(320).to_string()
            ),
            Step::Write(cpu("/nutshell/pod/cpu.cfs_period_us"), "100000".into()),
            Step::Write(cpu("/nutshell/pod/cpu.cfs_quota_us"), "225000".into()),
        ]
    );
}

// On this host: a real cgroup (as root, where a memory and a cpu hierarchy are mounted).

/// The host's cgroup layout; the tests below need root and a mounted memory and cpu
/// hierarchy, and fail with the reason where they are missing.
fn host_layout() -> Layout {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests make real cgroups: run them as root"
    );
    Layout::detect().unwrap_or_else(|e| panic!("no usable cgroup hierarchy on this host: {e}"))
}

fn test_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/nutshell-test-{}-{name}", std::process::id()))
}

fn all_gone(dirs: &[PathBuf]) {
    for dir in dirs {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[test]
fn a_child_runs_in_the_cgroup_with_its_limits() {
    let layout = host_layout();
    let path = test_path("run").join("pod");
    let limits = Limits::for_vm(128, 1, Overhead::default());
    let mut cgroup = HostCgroup::plan(&path, limits).unwrap();
    cgroup.create_in(layout).unwrap();
    let record = cgroup.record();
    assert_eq!(record.created.len(), 2 * record.leaves.len(), "{record:?}");
    assert_eq!(cgroup.read_limits().unwrap(), limits);

    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    cgroup.join_on_exec(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let pids = cgroup.pids();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(pids.unwrap(), vec![pid]);
    assert!(own.contains(&format!("{}\n", path.display())), "{own}");

    assert_eq!(cgroup.remove(), Vec::<String>::new());
    all_gone(&record.created);
    assert_eq!(cgroup.remove(), Vec::<String>::new(), "again");
}

#[test]
fn a_cgroup_without_cpu_quota_reads_back_unlimited() {
    let layout = host_layout();
    let path = test_path("unlimited").join("pod");
    let limits = Limits::for_vm(128, 1, Overhead::default()).without_cpu_quota();
    let mut cgroup = HostCgroup::plan(&path, limits).unwrap();
    cgroup.create_in(layout).unwrap();
    let read = cgroup.read_limits();
    let record = cgroup.record();
    assert_eq!(cgroup.remove(), Vec::<String>::new());
    all_gone(&record.created);
    assert_eq!(read.unwrap(), limits);
}

#[test]
fn a_failed_create_leaves_nothing() {
    let layout = host_layout();
    let path = test_path("fail").join("pod");
    let limits = Limits {
        memory_bytes: mib(64),
        cpu_quota_us: 0,
        cpu_period_us: CPU_PERIOD_US,
    };
    let mut cgroup = HostCgroup::plan(&path, limits).unwrap();
    let leaves: Vec<PathBuf> = layout
        .mounts()
        .iter()
        .map(|m| m.dir_of(&path).unwrap())
        .collect();
    let err = cgroup.create_in(layout).unwrap_err().to_string();
    assert!(err.contains("cpu") && err.contains("\"0"), "{err}");
    for leaf in &leaves {
        all_gone(&[leaf.clone(), leaf.parent().unwrap().to_path_buf()]);
    }
}

#[test]
fn leftovers_go_by_record_and_the_last_pod_takes_the_parents() {
    let layout = host_layout();
    let limits = Limits::for_vm(64, 1, Overhead::default());
    // Two pods under a shared nutshell directory: the last one out removes it.
    let shared = test_path("left").join("nutshell");
    let mut a = HostCgroup::plan(&shared.join("a"), limits).unwrap();
    a.create_in(layout.clone()).unwrap();
    let mut b = HostCgroup::plan(&shared.join("b"), limits).unwrap();
    b.create_in(layout.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(RECORD_FILE);
    a.save_record(&file).unwrap();
    let a_leaves = a.record().leaves;
    let b_leaves = b.record().leaves;
    drop(a);

    assert_eq!(remove_recorded(&file), Vec::<String>::new());
    assert!(!file.exists());
    all_gone(&a_leaves);
    assert!(b_leaves.iter().all(|l| l.exists()));
    assert_eq!(remove_recorded(&file), Vec::<String>::new(), "no record");

    assert_eq!(b.remove(), Vec::<String>::new());
    all_gone(&b_leaves);
    for leaf in &b_leaves {
        // The `nutshell*` parents went with the last pod.
        let parent = leaf.parent().unwrap();
        all_gone(&[parent.to_path_buf(), parent.parent().unwrap().to_path_buf()]);
    }
}

#[test]
fn a_busy_leaf_is_refused() {
    let layout = host_layout();
    let path = test_path("busy");
    let limits = Limits::for_vm(64, 1, Overhead::default());
    let mut first = HostCgroup::plan(&path, limits).unwrap();
    first.create_in(layout.clone()).unwrap();
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    first.join_on_exec(&mut cmd).unwrap();
    let mut child = cmd.spawn().unwrap();
    let mut second = HostCgroup::plan(&path, limits).unwrap();
    let busy = second.create_in(layout.clone()).map_err(|e| e.to_string());
    let _ = child.kill();
    let _ = child.wait();
    let err = busy.unwrap_err();
    assert!(err.contains("with processes"), "{err}");
    // Unused, it is adopted (a crash's leftover), and removed with the new pod.
    let mut third = HostCgroup::plan(&path, limits).unwrap();
    third.create_in(layout).unwrap();
    assert_eq!(third.record().created, third.record().leaves);
    assert_eq!(third.remove(), Vec::<String>::new());
    all_gone(&third.record().leaves);
}
