use std::fs;

use super::*;
use crate::reaper::ReapScope;

#[test]
fn cpu_lists_are_counted() {
    assert_eq!(parse_cpu_list("0\n"), Ok(1));
    assert_eq!(parse_cpu_list("0-3"), Ok(4));
    assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Ok(7));
    assert!(parse_cpu_list("").is_err());
    assert!(parse_cpu_list("3-1").is_err());
    assert!(parse_cpu_list("0-x").is_err());
    assert!(parse_cpu_list("0,,1").is_err());
}

#[test]
fn mem_total_is_read_in_kib() {
    let meminfo = "MemTotal:        2035480 kB\nMemFree:         1800000 kB\n";
    assert_eq!(parse_mem_total_kib(meminfo), Some(2_035_480));
    assert_eq!(parse_mem_total_kib("MemFree: 1 kB\n"), None);
    assert_eq!(parse_mem_total_kib("MemTotal: lots\n"), None);
}

#[test]
fn probe_child_exits_become_outcomes() {
    assert_eq!(outcome_from_exit(ChildExit::Exited(0)), Ok(()));
    let eperm = outcome_from_exit(ChildExit::Exited(libc::EPERM)).unwrap_err();
    assert!(eperm.contains("EPERM"), "{eperm}");
    let einval = outcome_from_exit(ChildExit::Exited(libc::EINVAL)).unwrap_err();
    assert!(einval.contains("EINVAL"), "{einval}");
    assert!(outcome_from_exit(ChildExit::Exited(255)).is_err());
    let killed = ChildExit::Signaled {
        signal: 9,
        core_dumped: false,
    };
    assert!(outcome_from_exit(killed).unwrap_err().contains("signal 9"));
}

#[test]
fn errno_fits_in_an_exit_code() {
    assert_eq!(errno_exit_code(Some(libc::EPERM)), libc::EPERM);
    assert_eq!(errno_exit_code(Some(0)), 255);
    assert_eq!(errno_exit_code(Some(4000)), 255);
    assert_eq!(errno_exit_code(None), 255);
}

#[test]
fn every_namespace_kind_is_probed_in_order() {
    let reaper = Reaper::new(ReapScope::TrackedOnly);
    let probes = probe_namespaces(&reaper, Duration::from_secs(10));
    let kinds: Vec<_> = probes.iter().map(|probe| probe.kind).collect();
    assert_eq!(
        kinds,
        ["uts", "ipc", "pid", "net", "mnt", "user", "cgroup", "time"]
    );
    for probe in &probes {
        if let Err(error) = &probe.outcome {
            assert!(error.starts_with("unshare: "), "{}: {error}", probe.kind);
        }
    }
}

fn write_fixture(root: &Path, relative: &str, content: &str) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

#[test]
fn guest_details_are_read_from_the_given_system_paths() {
    let root = tempfile::tempdir().unwrap();
    let paths = SystemPaths {
        proc_dir: root.path().join("proc"),
        sys_dir: root.path().join("sys"),
    };
    write_fixture(&paths.proc_dir, "meminfo", "MemTotal:  1024 kB\n");
    write_fixture(&paths.sys_dir, "devices/system/cpu/online", "0-1\n");
    write_fixture(
        &paths.sys_dir,
        "fs/cgroup/cgroup.controllers",
        "cpu memory pids\n",
    );
    write_fixture(&paths.sys_dir, "fs/cgroup/cgroup.subtree_control", "cpu\n");

    let details = collect_guest_details(&paths, &Reaper::new(ReapScope::TrackedOnly)).unwrap();
    assert_eq!(details.online_cpus, 2);
    assert_eq!(details.mem_total_kib, 1024);
    assert_eq!(details.cgroup_controllers, ["cpu", "memory", "pids"]);
    assert_eq!(details.cgroup_subtree_control, ["cpu"]);
    assert_eq!(details.namespaces.len(), NAMESPACE_KINDS.len());
}

#[test]
fn missing_cgroup2_hierarchy_reports_empty_lists() {
    let root = tempfile::tempdir().unwrap();
    let paths = SystemPaths {
        proc_dir: root.path().join("proc"),
        sys_dir: root.path().join("sys"),
    };
    write_fixture(&paths.proc_dir, "meminfo", "MemTotal:  1024 kB\n");
    write_fixture(&paths.sys_dir, "devices/system/cpu/online", "0\n");

    let details = collect_guest_details(&paths, &Reaper::new(ReapScope::TrackedOnly)).unwrap();
    assert!(details.cgroup_controllers.is_empty());
    assert!(details.cgroup_subtree_control.is_empty());
}

#[test]
fn unreadable_cpu_list_names_the_file() {
    let root = tempfile::tempdir().unwrap();
    let paths = SystemPaths {
        proc_dir: root.path().join("proc"),
        sys_dir: root.path().join("sys"),
    };
    let err = collect_guest_details(&paths, &Reaper::new(ReapScope::TrackedOnly)).unwrap_err();
    assert!(
        err.to_string().contains("devices/system/cpu/online"),
        "{err}"
    );
}
