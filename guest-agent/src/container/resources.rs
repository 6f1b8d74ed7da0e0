//! OCI `LinuxResources` to cgroup v2 interface files, with runc's conversions. Everything is
//! validated before anything is written.

use oci_spec::runtime::LinuxResources;

use super::ContainerError;

/// One write to a cgroup interface file.
pub type CgroupWrite = (&'static str, String);

fn invalid(field: &str, value: impl std::fmt::Display, reason: &str) -> ContainerError {
    ContainerError::Spec(format!("linux.resources.{field} = {value}: {reason}"))
}

/// runc's cpu.shares (2..=262144) to cpu.weight (1..=10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.saturating_sub(2)) * 9999) / 262_142
}

/// The cgroup v2 writes for `resources`, or the first invalid field.
pub fn to_writes(resources: &LinuxResources) -> Result<Vec<CgroupWrite>, ContainerError> {
    let mut writes = Vec::new();
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            match limit {
                -1 => writes.push(("memory.max", "max".to_string())),
                l if l > 0 => writes.push(("memory.max", l.to_string())),
                l => return Err(invalid("memory.limit", l, "must be positive or -1")),
            }
            if let Some(swap) = memory.swap() {
                // runc: swap is memory + swap; v2 wants swap alone.
                match (limit, swap) {
                    (_, -1) => writes.push(("memory.swap.max", "max".to_string())),
                    (l, s) if l > 0 && s >= l => {
                        writes.push(("memory.swap.max", (s - l).to_string()))
                    }
                    (_, s) => {
                        return Err(invalid(
                            "memory.swap",
                            s,
                            "must be -1 or at least memory.limit",
                        ))
                    }
                }
            }
        }
        if let Some(reservation) = memory.reservation() {
            if reservation < 0 {
                return Err(invalid(
                    "memory.reservation",
                    reservation,
                    "must not be negative",
                ));
            }
            writes.push(("memory.low", reservation.to_string()));
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares() {
            if shares > 262_144 {
                return Err(invalid("cpu.shares", shares, "at most 262144"));
            }
            if shares > 0 {
                writes.push(("cpu.weight", shares_to_weight(shares).to_string()));
            }
        }
        let period = cpu.period().unwrap_or(100_000);
        if !(1_000..=1_000_000).contains(&period) {
            return Err(invalid("cpu.period", period, "must be 1000..=1000000"));
        }
        match cpu.quota() {
            Some(q) if q > 0 && q < 1_000 => {
                return Err(invalid("cpu.quota", q, "at least 1000 or -1"))
            }
            Some(q) if q > 0 => writes.push(("cpu.max", format!("{q} {period}"))),
            Some(-1) => writes.push(("cpu.max", format!("max {period}"))),
            Some(q) if q != 0 => return Err(invalid("cpu.quota", q, "at least 1000 or -1")),
            _ => {}
        }
        if let Some(cpus) = cpu.cpus() {
            writes.push(("cpuset.cpus", cpus.clone()));
        }
        if let Some(mems) = cpu.mems() {
            writes.push(("cpuset.mems", mems.clone()));
        }
    }
    if let Some(pids) = resources.pids() {
        let limit = pids.limit();
        writes.push((
            "pids.max",
            if limit > 0 {
                limit.to_string()
            } else {
                "max".to_string()
            },
        ));
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn runc_conversions() {
        let w = to_writes(&resources(
            r#"{"memory":{"limit":67108864,"swap":134217728,"reservation":1048576},
                "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0"},
                "pids":{"limit":64}}"#,
        ))
        .unwrap();
        let get = |f: &str| w.iter().find(|(k, _)| *k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.swap.max"), Some("67108864"));
        assert_eq!(get("memory.low"), Some("1048576"));
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus"), Some("0"));
        assert_eq!(get("pids.max"), Some("64"));
        let unlimited = to_writes(&resources(
            r#"{"memory":{"limit":-1},"cpu":{"quota":-1},"pids":{"limit":0}}"#,
        ))
        .unwrap();
        assert_eq!(
            unlimited,
            [
                ("memory.max", "max".into()),
                ("cpu.max", "max 100000".into()),
                ("pids.max", "max".into())
            ]
        );
    }

    #[test]
    fn invalid_values_are_named() {
        for (json, field) in [
            (r#"{"memory":{"limit":-5}}"#, "memory.limit"),
            (r#"{"memory":{"limit":100,"swap":50}}"#, "memory.swap"),
            (r#"{"cpu":{"quota":10}}"#, "cpu.quota"),
            (r#"{"cpu":{"period":10}}"#, "cpu.period"),
            (r#"{"cpu":{"shares":300000}}"#, "cpu.shares"),
        ] {
            let err = to_writes(&resources(json)).unwrap_err().to_string();
            assert!(err.contains(field), "{json}: {err}");
        }
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
