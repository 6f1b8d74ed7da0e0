//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI finds its CPUs,
//! its IOAPIC and the routing of ISA IRQs. Written into the EBDA, where Linux scans for it.

use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::vstate::memory::GuestMemoryMmap;

/// Most vCPUs whose MP table fits in the first KiB of the EBDA.
pub const MAX_VCPUS: u8 = 32;

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// CPU signature (family 6) and feature flags (FPU, APIC) reported per processor entry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_VCPUS})")]
    TooManyCpus(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// Builds the configuration table (header and entries) for `cpus` processors.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    for irq in 0..layout::IOAPIC_PINS as u8 {
        // type, irq type, flags (u16: conforms to bus), source bus, source irq, dest apic, pin
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            IRQ_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, IRQ_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, IRQ_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);

    let entry_count = cpus as u16 + 1 + 1 + layout::IOAPIC_PINS as u16 + 2;
    let length = (44 + entries.len()) as u16;
    let mut table = Vec::with_capacity(length as usize);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(MPC_SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"NUTSHELL");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// Builds the 16-byte floating pointer structure that points at the configuration table.
fn floating_pointer(config_addr: u32) -> [u8; 16] {
    let mut fp = [0u8; 16];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config_addr.to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = MPC_SPEC_REV;
    fp[10] = checksum(&fp);
    fp
}

/// Writes the MP floating pointer and configuration table for `cpus` vCPUs.
pub fn write_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let config_addr = layout::MPTABLE_START + 16;
    mem.write_slice(
        &floating_pointer(config_addr as u32),
        GuestAddress(layout::MPTABLE_START),
    )
    .map_err(MptableError::Write)?;
    mem.write_slice(&config_table(cpus), GuestAddress(config_addr))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_fit() {
        let table = config_table(MAX_VCPUS);
        assert_eq!(sum(&table), 0);
        assert_eq!(
            u16::from_le_bytes([table[4], table[5]]) as usize,
            table.len()
        );
        assert!(16 + table.len() <= 0x400, "MP table overflows the EBDA KiB");
        assert_eq!(sum(&floating_pointer(0x9fc10)), 0);
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_mptable(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(layout::MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        mem.read_slice(&mut sig, GuestAddress(layout::MPTABLE_START + 16))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
        assert!(matches!(
            write_mptable(&mem, 0),
            Err(MptableError::TooManyCpus(0))
        ));
        assert!(write_mptable(&mem, MAX_VCPUS + 1).is_err());
    }
}
