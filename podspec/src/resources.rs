//! The kubelet's resource arithmetic: the pod's QoS class, each container's oom_score_adj,
//! its cgroup resources (CPU shares, CFS quota, memory limit) and the pod cgroup's, and the
//! QoS cgroup parent. Sources: pkg/apis/core/v1/helper/qos (GetPodQOS), pkg/kubelet/qos
//! (GetContainerOOMScoreAdjust), pkg/kubelet/kuberuntime (container resources) and
//! pkg/kubelet/cm (ResourceConfigForPod, MilliCPUToShares, MilliCPUToQuota).

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxResources,
    LinuxResourcesBuilder,
};
use serde::Serialize;

use crate::model::{Container, Pod};

/// The CFS period the kubelet uses (100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kubelet writes (1 ms).
pub const MIN_QUOTA_US: i64 = 1_000;
/// cpu.shares bounds.
pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
/// oom_score_adj of Guaranteed containers.
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// oom_score_adj of BestEffort containers.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// A pod's quality-of-service class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The kubelet's QoS cgroup (cgroupfs driver) that pod cgroups live under.
    pub fn cgroup_parent(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "kubepods",
            QosClass::Burstable => "kubepods/burstable",
            QosClass::BestEffort => "kubepods/besteffort",
        }
    }
}

/// GetPodQOS: BestEffort without any cpu/memory request or limit; Guaranteed when every
/// container limits both and the pod's summed requests equal its summed limits; else
/// Burstable. Zero quantities count as absent.
pub fn qos_class(pod: &Pod) -> QosClass {
    let nonzero = |v: Option<u64>| v.filter(|&v| v > 0);
    let (mut req_cpu, mut req_mem, mut lim_cpu, mut lim_mem) = (None, None, None, None);
    let add = |sum: &mut Option<u64>, v: Option<u64>| {
        if let Some(v) = nonzero(v) {
            *sum = Some(sum.unwrap_or(0).saturating_add(v));
        }
    };
    let mut guaranteed = true;
    for c in &pod.containers {
        let r = &c.resources;
        add(&mut req_cpu, r.requests.cpu_millis);
        add(&mut req_mem, r.requests.memory_bytes);
        add(&mut lim_cpu, r.limits.cpu_millis);
        add(&mut lim_mem, r.limits.memory_bytes);
        if nonzero(r.limits.cpu_millis).is_none() || nonzero(r.limits.memory_bytes).is_none() {
            guaranteed = false;
        }
    }
    let requests = [req_cpu, req_mem];
    let limits = [lim_cpu, lim_mem];
    if requests.iter().chain(&limits).all(Option::is_none) {
        return QosClass::BestEffort;
    }
    if guaranteed {
        for (request, limit) in requests.iter().zip(&limits) {
            if request.is_some() && request != limit {
                guaranteed = false;
            }
        }
    }
    let count = |list: &[Option<u64>]| list.iter().filter(|v| v.is_some()).count();
    if guaranteed && count(&requests) == count(&limits) {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// GetContainerOOMScoreAdjust: -997 Guaranteed, 1000 BestEffort; Burstable
/// `1000 - 1000 * memoryRequest / machineMemory`, at least 3 (`1000 + -997`, the kubelet's
/// floor) and at most 999, so Burstable stays between the other two.
pub fn oom_score_adj(qos: QosClass, container: &Container, machine_memory_bytes: u64) -> i32 {
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = u128::from(container.resources.requests.memory_bytes.unwrap_or(0));
            let capacity = u128::from(machine_memory_bytes.max(1));
            let adj = 1000 - ((1000 * request) / capacity).min(1000) as i32;
            if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ {
                1000 + GUARANTEED_OOM_SCORE_ADJ
            } else if adj == BEST_EFFORT_OOM_SCORE_ADJ {
                adj - 1
            } else {
                adj
            }
        }
    }
}

/// MilliCPUToShares: `millis * 1024 / 1000` within 2..=262144; 0 gives the minimum.
pub fn millicores_to_shares(millis: u64) -> u64 {
    if millis == 0 {
        return MIN_SHARES;
    }
    (millis.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// MilliCPUToQuota: `millis * period / 1000`, at least 1000 µs; `None` for no limit.
pub fn millicores_to_quota(millis: u64, period: u64) -> Option<i64> {
    if millis == 0 {
        return None;
    }
    let quota = i64::try_from(millis.saturating_mul(period) / 1000).unwrap_or(i64::MAX);
    Some(quota.max(MIN_QUOTA_US))
}

fn as_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The container's `linux.resources`, as the kubelet asks and containerd writes them: the
/// device cgroup denies everything by default (runc adds the standard nodes; a privileged
/// container may use every device), cpu shares always (from the request, else 2), the CFS
/// period always, a quota and a memory limit only with a limit.
pub fn container_resources(container: &Container) -> LinuxResources {
    let r = &container.resources;
    let mut cpu = LinuxCpuBuilder::default()
        .shares(millicores_to_shares(r.requests.cpu_millis.unwrap_or(0)))
        .period(CPU_PERIOD_US);
    if let Some(quota) = r
        .limits
        .cpu_millis
        .and_then(|m| millicores_to_quota(m, CPU_PERIOD_US))
    {
        cpu = cpu.quota(quota);
    }
    let mut builder = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(container.security.privileged)
            .access("rwm")
            .build()
            .expect("a device rule with allow and access is valid")])
        .cpu(cpu.build().expect("cpu resources are valid"));
    if let Some(limit) = r.limits.memory_bytes.filter(|&l| l > 0) {
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(as_i64(limit))
                .build()
                .expect("memory resources are valid"),
        );
    }
    builder.build().expect("linux resources are valid")
}

/// The pod cgroup's resources (ResourceConfigForPod): shares from the summed requests; the
/// quota (summed limits) only if every container has a cpu limit, the memory limit (summed)
/// only if every container has a memory limit; BestEffort gets the minimum shares alone.
pub fn pod_resources(pod: &Pod) -> LinuxResources {
    let qos = qos_class(pod);
    let sum = |f: fn(&Container) -> Option<u64>| -> u64 {
        pod.containers
            .iter()
            .filter_map(f)
            .fold(0u64, u64::saturating_add)
    };
    let all = |f: fn(&Container) -> Option<u64>| {
        pod.containers.iter().all(|c| f(c).is_some_and(|v| v > 0))
    };
    let cpu_requests = sum(|c| c.resources.requests.cpu_millis);
    let cpu_limits = sum(|c| c.resources.limits.cpu_millis);
    let memory_limits = sum(|c| c.resources.limits.memory_bytes);
    let cpu_limited = all(|c| c.resources.limits.cpu_millis);
    let memory_limited = all(|c| c.resources.limits.memory_bytes);

    let mut cpu = LinuxCpuBuilder::default();
    let mut memory = None;
    match qos {
        QosClass::BestEffort => cpu = cpu.shares(MIN_SHARES),
        QosClass::Guaranteed | QosClass::Burstable => {
            cpu = cpu.shares(millicores_to_shares(cpu_requests));
            if qos == QosClass::Guaranteed || cpu_limited {
                if let Some(quota) = millicores_to_quota(cpu_limits, CPU_PERIOD_US) {
                    cpu = cpu.quota(quota).period(CPU_PERIOD_US);
                }
            }
            if (qos == QosClass::Guaranteed || memory_limited) && memory_limits > 0 {
                memory = Some(as_i64(memory_limits));
            }
        }
    }
    let mut builder =
        LinuxResourcesBuilder::default().cpu(cpu.build().expect("cpu resources are valid"));
    if let Some(limit) = memory {
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .expect("memory resources are valid"),
        );
    }
    builder.build().expect("linux resources are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ResourceAmounts, Resources};

    fn container(
        requests: (Option<u64>, Option<u64>),
        limits: (Option<u64>, Option<u64>),
    ) -> Container {
        Container {
            name: "c".into(),
            image: "i".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            resources: Resources {
                requests: ResourceAmounts {
                    cpu_millis: requests.0,
                    memory_bytes: requests.1,
                },
                limits: ResourceAmounts {
                    cpu_millis: limits.0,
                    memory_bytes: limits.1,
                },
            },
            security: Default::default(),
            volume_mounts: vec![],
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            name: "p".into(),
            namespace: "default".into(),
            uid: "u".into(),
            labels: Default::default(),
            annotations: Default::default(),
            hostname: None,
            share_process_namespace: false,
            host_network: false,
            host_pid: false,
            host_ipc: false,
            restart_policy: Default::default(),
            dns: None,
            sysctls: Default::default(),
            containers,
            volumes: vec![],
        }
    }

    const MI: u64 = 1 << 20;

    #[test]
    fn qos_classes() {
        let g = container((Some(500), Some(64 * MI)), (Some(500), Some(64 * MI)));
        let none = container((None, None), (None, None));
        let req_only = container((Some(100), None), (None, None));
        let partial = container((Some(500), Some(64 * MI)), (Some(1000), Some(64 * MI)));
        assert_eq!(qos_class(&pod(vec![g.clone()])), QosClass::Guaranteed);
        assert_eq!(
            qos_class(&pod(vec![g.clone(), g.clone()])),
            QosClass::Guaranteed
        );
        assert_eq!(qos_class(&pod(vec![none.clone()])), QosClass::BestEffort);
        assert_eq!(qos_class(&pod(vec![g.clone(), none])), QosClass::Burstable);
        assert_eq!(qos_class(&pod(vec![req_only])), QosClass::Burstable);
        assert_eq!(qos_class(&pod(vec![partial])), QosClass::Burstable);
        let zero = container((Some(0), Some(0)), (Some(0), Some(0)));
        assert_eq!(qos_class(&pod(vec![zero])), QosClass::BestEffort);
    }

    #[test]
    fn oom_score_adjustments() {
        let machine = 1000 * MI;
        let c = |mem| container((None, mem), (None, None));
        assert_eq!(oom_score_adj(QosClass::Guaranteed, &c(None), machine), -997);
        assert_eq!(oom_score_adj(QosClass::BestEffort, &c(None), machine), 1000);
        assert_eq!(
            oom_score_adj(QosClass::Burstable, &c(Some(100 * MI)), machine),
            900
        );
        assert_eq!(oom_score_adj(QosClass::Burstable, &c(None), machine), 999);
        assert_eq!(
            oom_score_adj(QosClass::Burstable, &c(Some(999 * MI)), machine),
            3
        );
        assert_eq!(
            oom_score_adj(QosClass::Burstable, &c(Some(5000 * MI)), machine),
            3
        );
    }

    #[test]
    fn cpu_conversions() {
        assert_eq!(millicores_to_shares(0), 2);
        assert_eq!(millicores_to_shares(1), 2);
        assert_eq!(millicores_to_shares(250), 256);
        assert_eq!(millicores_to_shares(1000), 1024);
        assert_eq!(millicores_to_shares(1_000_000), 262_144);
        assert_eq!(millicores_to_quota(0, CPU_PERIOD_US), None);
        assert_eq!(millicores_to_quota(5, CPU_PERIOD_US), Some(1000));
        assert_eq!(millicores_to_quota(500, CPU_PERIOD_US), Some(50_000));
        assert_eq!(millicores_to_quota(2000, CPU_PERIOD_US), Some(200_000));
    }

    #[test]
    fn pod_cgroup_sums_only_declared_limits() {
        let a = container((Some(250), Some(64 * MI)), (Some(500), Some(128 * MI)));
        let b = container((Some(100), None), (None, Some(64 * MI)));
        let r = pod_resources(&pod(vec![a.clone(), b]));
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.shares(), Some(358));
        assert_eq!(cpu.quota(), None, "b has no cpu limit");
        assert_eq!(
            r.memory().as_ref().unwrap().limit(),
            Some((192 * MI) as i64)
        );
        let r = pod_resources(&pod(vec![a.clone(), a]));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(100_000));
        let r = pod_resources(&pod(vec![container((None, None), (None, None))]));
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(2));
        assert!(r.memory().is_none());
    }
}
