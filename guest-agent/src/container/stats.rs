//! A container's figures from its cgroup v2 files, and the processes in it.

use std::collections::HashMap;
use std::path::Path;

use nutshell_protocol::agent::{ProcessEntry, StatsContainerResponse};

/// `key value` lines (cpu.stat, memory.stat, memory.events) as a map.
fn flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect()
}

/// A single number, or 0 for "max" and missing files.
fn single(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// io.stat summed over devices: (rbytes, wbytes, rios, wios).
fn io_totals(text: &str) -> [u64; 4] {
    let mut totals = [0u64; 4];
    for line in text.lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let slot = match key {
                "rbytes" => 0,
                "wbytes" => 1,
                "rios" => 2,
                "wios" => 3,
                _ => continue,
            };
            totals[slot] += value.parse::<u64>().unwrap_or(0);
        }
    }
    totals
}

/// The figures of the cgroup at `dir`.
pub fn read(dir: &Path) -> StatsContainerResponse {
    let text = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let cpu = flat_keyed(&text("cpu.stat"));
    let events = flat_keyed(&text("memory.events"));
    let get = |map: &HashMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);
    let [rbytes, wbytes, rios, wios] = io_totals(&text("io.stat"));
    let mut stats = StatsContainerResponse::new();
    stats.cpu_usage_usec = get(&cpu, "usage_usec");
    stats.cpu_user_usec = get(&cpu, "user_usec");
    stats.cpu_system_usec = get(&cpu, "system_usec");
    stats.cpu_nr_throttled = get(&cpu, "nr_throttled");
    stats.cpu_throttled_usec = get(&cpu, "throttled_usec");
    stats.memory_current = single(dir, "memory.current");
    stats.memory_max = single(dir, "memory.max");
    stats.memory_stat = flat_keyed(&text("memory.stat"));
    stats.oom_events = get(&events, "oom");
    stats.oom_kill_events = get(&events, "oom_kill");
    stats.pids_current = single(dir, "pids.current");
    stats.pids_max = single(dir, "pids.max");
    stats.io_read_bytes = rbytes;
    stats.io_write_bytes = wbytes;
    stats.io_read_ops = rios;
    stats.io_write_ops = wios;
    stats
}

/// The processes of the cgroup at `dir`, with their command lines.
pub fn processes(dir: &Path) -> Vec<ProcessEntry> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mut entry = ProcessEntry::new();
            entry.pid = pid;
            entry.cmdline = String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .replace('\0', " ");
            entry
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |f: &str, t: &str| std::fs::write(dir.path().join(f), t).unwrap();
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_throttled 3\nthrottled_usec 70\n",
        );
        write("memory.current", "4096\n");
        write("memory.max", "max\n");
        write("memory.stat", "anon 100\nfile 200\n");
        write("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n");
        write("pids.current", "3\n");
        write("pids.max", "64\n");
        write("io.stat", "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=5 wbytes=0 rios=1 wios=0\n");
        let s = read(dir.path());
        assert_eq!(
            (s.cpu_usage_usec, s.cpu_user_usec, s.cpu_system_usec),
            (1500, 1000, 500)
        );
        assert_eq!((s.cpu_nr_throttled, s.cpu_throttled_usec), (3, 70));
        assert_eq!((s.memory_current, s.memory_max), (4096, 0));
        assert_eq!(s.memory_stat.get("file"), Some(&200));
        assert_eq!((s.oom_events, s.oom_kill_events), (1, 1));
        assert_eq!((s.pids_current, s.pids_max), (3, 64));
        assert_eq!(
            (
                s.io_read_bytes,
                s.io_write_bytes,
                s.io_read_ops,
                s.io_write_ops
            ),
            (15, 20, 2, 2)
        );
        write("cgroup.procs", "");
        assert!(processes(dir.path()).is_empty());
    }
}
