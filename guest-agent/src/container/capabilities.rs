//! OCI capability sets to the kernel's bit masks (linux/capability.h numbering).

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities};

use super::ContainerError;

/// Capability names by number (`CAP_CHOWN` is 0).
use nutshell_protocol::LINUX_CAPABILITIES as CAPABILITY_NAMES;

/// The five sets as masks (bit n = capability n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilityMasks {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// The kernel number of a capability.
pub fn capability_number(cap: &Capability) -> Result<u32, ContainerError> {
    let name = serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|n| n as u32)
        .ok_or_else(|| ContainerError::Spec(format!("unknown capability {cap:?}")))
}

fn mask(set: &Option<HashSet<Capability>>) -> Result<u64, ContainerError> {
    let mut bits = 0u64;
    for cap in set.iter().flatten() {
        bits |= 1 << capability_number(cap)?;
    }
    Ok(bits)
}

/// The masks of an OCI capability object (a missing set is empty, as in runc).
pub fn masks(caps: &LinuxCapabilities) -> Result<CapabilityMasks, ContainerError> {
    Ok(CapabilityMasks {
        bounding: mask(caps.bounding())?,
        effective: mask(caps.effective())?,
        permitted: mask(caps.permitted())?,
        inheritable: mask(caps.inheritable())?,
        ambient: mask(caps.ambient())?,
    })
}

/// The highest capability number the running kernel knows.
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAPABILITY_NAMES.len() as u32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_kernel() {
        assert_eq!(capability_number(&Capability::Chown).unwrap(), 0);
        assert_eq!(capability_number(&Capability::NetRaw).unwrap(), 13);
        assert_eq!(capability_number(&Capability::SysAdmin).unwrap(), 21);
        assert_eq!(capability_number(&Capability::AuditWrite).unwrap(), 29);
        assert_eq!(
            capability_number(&Capability::CheckpointRestore).unwrap(),
            40
        );
    }

    #[test]
    fn sets_become_masks() {
        let caps: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"],
                "permitted":["CAP_KILL"],"ambient":[]}"#,
        )
        .unwrap();
        let m = masks(&caps).unwrap();
        assert_eq!(m.bounding, 1 | 1 << 5);
        assert_eq!(m.effective, 1 << 5);
        assert_eq!(m.permitted, 1 << 5);
        assert_eq!(m.inheritable, 0);
        assert_eq!(m.ambient, 0);
    }
}
