//! CPUID normalisation: KVM's supported set, made consistent for one vCPU of an N-vCPU guest.
//!
//! - topology: each vCPU is one core with one thread; APIC IDs are the vCPU index;
//! - the hypervisor bit is set so the guest uses its paravirtual paths (kvmclock, PV spinlocks);
//! - the PMU leaf is cleared (we expose no PMU) and power-management leaf 6 is zeroed;
//! - XSAVE (leaf 0xD) is limited to x87/SSE/AVX, with sizes that match, because a nested or
//!   emulated host may advertise state components whose sizes KVM cannot back (the guest then
//!   warns about an XSAVE size mismatch and falls back).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_POWER: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_XSAVE: u32 = 1 << 26;

/// XCR0 bits we let the guest enable: x87, SSE, AVX.
const XCR0_X87_SSE_AVX: u32 = 0x7;
/// Legacy area (512) + XSAVE header (64).
const XSAVE_LEGACY_AND_HEADER: u32 = 576;
/// AVX (YMM_Hi128) state: 256 bytes at offset 576.
const XSAVE_AVX_SIZE: u32 = 256;
/// XSAVEOPT, XSAVEC, XGETBV1, XSAVES (leaf 0xD sub-leaf 1 EAX).
const XSAVE_SUBLEAF1_KEEP: u32 = 0x1; // XSAVEOPT only

/// Topology of the guest as CPUID reports it.
#[derive(Clone, Copy, Debug)]
pub struct VcpuTopology {
    pub index: u8,
    pub count: u8,
}

/// Returns the CPUID a vCPU gets, derived from KVM's supported entries.
pub fn normalize(supported: &CpuId, topo: VcpuTopology) -> CpuId {
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.as_slice().len());
    for entry in supported.as_slice() {
        let mut e = *entry;
        if topo.index == 0 && matches!(e.function, LEAF_FEATURES | LEAF_XSAVE) {
            log::debug!(
                "KVM CPUID {:#x}.{}: eax={:#x} ebx={:#x} ecx={:#x} edx={:#x}",
                e.function,
                e.index,
                e.eax,
                e.ebx,
                e.ecx,
                e.edx
            );
        }
        if e.function == LEAF_XSAVE && !normalize_xsave(&mut e) {
            continue;
        }
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff)
                    | (u32::from(topo.index) << 24)
                    | (u32::from(topo.count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if topo.count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
                e.eax &= 0x3fff;
                if e.eax & 0x1f != 0 {
                    e.eax |= (u32::from(topo.count).saturating_sub(1)) << 26;
                }
            }
            LEAF_POWER | LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = u32::from(topo.index);
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        // Core level: all vCPUs in one package.
                        e.eax = bits_for(topo.count);
                        e.ebx = u32::from(topo.count);
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                // ECX[7:0]: number of physical cores - 1.
                e.ecx = (e.ecx & !0xff) | u32::from(topo.count.saturating_sub(1));
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = u32::from(topo.index);
                e.ebx = u32::from(topo.index) & 0xff; // core id, one thread per core
                e.ecx = 0;
            }
            _ => {}
        }
        out.push(e);
    }
    // The entries came from a CpuId of at most KVM_MAX_CPUID_ENTRIES and we only removed some.
    CpuId::from_entries(&out).expect("normalised CPUID has no more entries than KVM's set")
}

/// The XCR0 a vCPU starts with: every XSAVE component the normalised CPUID offers.
///
/// Linux enables exactly these with XSETBV early in boot. Setting them up front keeps KVM's
/// view of XCR0 right even where XSETBV does not reach KVM: QEMU TCG's nested SVM does not
/// intercept it, so the nested KVM would size leaf 0xD.0 EBX for the reset XCR0 (x87 only),
/// the guest would find the XSAVE size inconsistent and fall back to FXSAVE.
/// Returns `None` when the guest gets no XSAVE.
pub fn boot_xcr0(cpuid: &CpuId) -> Option<u64> {
    let entries = cpuid.as_slice();
    let xsave = entries
        .iter()
        .any(|e| e.function == LEAF_FEATURES && e.ecx & ECX_XSAVE != 0);
    let leaf_d = entries
        .iter()
        .find(|e| e.function == LEAF_XSAVE && e.index == 0)?;
    xsave.then(|| u64::from(leaf_d.eax & XCR0_X87_SSE_AVX) | 1)
}

/// Limits leaf 0xD to x87/SSE/AVX. Returns false for sub-leaves that must be dropped.
fn normalize_xsave(e: &mut kvm_cpuid_entry2) -> bool {
    match e.index {
        0 => {
            let avx = e.eax & 0x4 != 0;
            e.eax &= XCR0_X87_SSE_AVX;
            e.edx = 0;
            let max = XSAVE_LEGACY_AND_HEADER + if avx { XSAVE_AVX_SIZE } else { 0 };
            // EBX: size for the XCR0 currently enabled (KVM updates it at run time); ECX: max.
            e.ebx = e.ebx.min(max);
            e.ecx = max;
            true
        }
        1 => {
            e.eax &= XSAVE_SUBLEAF1_KEEP;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
            true
        }
        2 => true,
        _ => false,
    }
}

/// Number of APIC-ID bits needed to number `count` cores.
fn bits_for(count: u8) -> u32 {
    let mut bits = 0;
    while (1u32 << bits) < u32::from(count) {
        bits += 1;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    #[test]
    fn topology_and_hypervisor_bit() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0, 0, 0xff00_0800, 0, 0),
            entry(LEAF_TOPOLOGY, 1, 0, 0, 0, 0),
        ])
        .unwrap();
        let out = normalize(&supported, VcpuTopology { index: 1, count: 2 });
        let f = find(&out, LEAF_FEATURES, 0).unwrap();
        assert_eq!(f.ebx >> 24, 1);
        assert_eq!((f.ebx >> 16) & 0xff, 2);
        assert_eq!(f.ebx & 0xffff, 0x0800);
        assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(f.edx & EDX_HTT, 0);
        let t = find(&out, LEAF_TOPOLOGY, 1).unwrap();
        assert_eq!((t.eax, t.ebx, t.edx), (1, 2, 1));
    }

    #[test]
    fn xsave_limited_to_avx() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_XSAVE, 0, 0x2e7, 2696, 2696, 0),
            entry(LEAF_XSAVE, 1, 0xf, 0, 0x1800, 0),
            entry(LEAF_XSAVE, 2, 256, 576, 0, 0),
            entry(LEAF_XSAVE, 5, 64, 832, 0, 0),
        ])
        .unwrap();
        let out = normalize(&supported, VcpuTopology { index: 0, count: 1 });
        let l0 = find(&out, LEAF_XSAVE, 0).unwrap();
        assert_eq!(l0.eax, 0x7);
        assert_eq!(l0.ecx, 832);
        assert!(l0.ebx <= 832);
        assert_eq!(find(&out, LEAF_XSAVE, 1).unwrap().eax, 0x1);
        assert!(find(&out, LEAF_XSAVE, 2).is_some());
        assert!(find(&out, LEAF_XSAVE, 5).is_none());
    }

    #[test]
    fn boot_xcr0_matches_offered_components() {
        let with_xsave = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0, 0, 0, ECX_XSAVE, 0),
            entry(LEAF_XSAVE, 0, 0x2e7, 2696, 2696, 0),
        ])
        .unwrap();
        let out = normalize(&with_xsave, VcpuTopology { index: 0, count: 1 });
        assert_eq!(boot_xcr0(&out), Some(0x7));
        let without = CpuId::from_entries(&[entry(LEAF_FEATURES, 0, 0, 0, 0, 0)]).unwrap();
        assert_eq!(boot_xcr0(&without), None);
    }

    #[test]
    fn apic_id_bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(64), 6);
    }
}
