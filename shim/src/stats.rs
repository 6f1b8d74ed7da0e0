//! A container's cgroup v2 figures from the agent as containerd's
//! `io.containerd.cgroups.v2.Metrics`, the type CRI reads from the Stats Any.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageFull};
use nutshell_protocol::agent::StatsContainerResponse;

/// Packs `metrics` into an Any with the type name containerd's typeurl registry knows.
pub fn to_any(metrics: &Metrics) -> Any {
    let mut any = Any::new();
    any.type_url = Metrics::descriptor().full_name().to_string();
    any.value = metrics.write_to_bytes().expect("metrics serialize");
    any
}

/// The agent's StatsContainer answer as Metrics.
pub fn metrics(stats: &StatsContainerResponse) -> Metrics {
    let stat = |key: &str| stats.memory_stat.get(key).copied().unwrap_or(0);
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = stats.pids_current;
    pids.limit = stats.pids_max;
    m.pids = Some(pids).into();
    let mut cpu = CPUStat::new();
    cpu.usage_usec = stats.cpu_usage_usec;
    cpu.user_usec = stats.cpu_user_usec;
    cpu.system_usec = stats.cpu_system_usec;
    cpu.nr_throttled = stats.cpu_nr_throttled;
    cpu.throttled_usec = stats.cpu_throttled_usec;
    m.cpu = Some(cpu).into();
    let mut memory = MemoryStat::new();
    memory.usage = stats.memory_current;
    memory.usage_limit = if stats.memory_max == 0 {
        u64::MAX
    } else {
        stats.memory_max
    };
    memory.anon = stat("anon");
    memory.file = stat("file");
    memory.kernel_stack = stat("kernel_stack");
    memory.slab = stat("slab");
    memory.sock = stat("sock");
    memory.shmem = stat("shmem");
    memory.file_mapped = stat("file_mapped");
    memory.file_dirty = stat("file_dirty");
    memory.file_writeback = stat("file_writeback");
    memory.anon_thp = stat("anon_thp");
    memory.inactive_anon = stat("inactive_anon");
    memory.active_anon = stat("active_anon");
    memory.inactive_file = stat("inactive_file");
    memory.active_file = stat("active_file");
    memory.unevictable = stat("unevictable");
    memory.slab_reclaimable = stat("slab_reclaimable");
    memory.slab_unreclaimable = stat("slab_unreclaimable");
    memory.pgfault = stat("pgfault");
    memory.pgmajfault = stat("pgmajfault");
    m.memory = Some(memory).into();
    let mut events = MemoryEvents::new();
    events.oom = stats.oom_events;
    events.oom_kill = stats.oom_kill_events;
    m.memory_events = Some(events).into();
    let mut io = IOStat::new();
    let mut entry = IOEntry::new();
    entry.rbytes = stats.io_read_bytes;
    entry.wbytes = stats.io_write_bytes;
    entry.rios = stats.io_read_ops;
    entry.wios = stats.io_write_ops;
    io.usage.push(entry);
    m.io = Some(io).into();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_become_cgroup_v2_metrics() {
        let mut stats = StatsContainerResponse::new();
        stats.cpu_usage_usec = 1500;
        stats.memory_current = 4096;
        stats.memory_stat.insert("anon".into(), 1024);
        stats.oom_kill_events = 1;
        stats.pids_current = 2;
        let any = to_any(&metrics(&stats));
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.cpu.usage_usec, 1500);
        assert_eq!(back.memory.usage, 4096);
        assert_eq!(back.memory.usage_limit, u64::MAX, "no limit");
        assert_eq!(back.memory.anon, 1024);
        assert_eq!(back.memory_events.oom_kill, 1);
        assert_eq!(back.pids.current, 2);
    }
}
