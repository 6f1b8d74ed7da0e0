//! Every guest-physical address and fixed resource of a nutshell microVM, in one place.
//!
//! ```text
//! 0x0000_0500  GDT                    0x0000_9000  PML4 (bzImage 64-bit boot)
//! 0x0000_0520  IDT (empty)            0x0000_a000  PDPT
//! 0x0000_6000  PVH start info         0x0000_b000  PD (1 GiB identity map, 2 MiB pages)
//! 0x0000_6040  PVH module list        0x0002_0000  kernel command line
//! 0x0000_7000  PVH memory map, or     0x0009_fc00  EBDA: MP table (SMP without ACPI)
//!              the bzImage zero page  0x0010_0000  kernel (HIMEM_START)
//! 0x0000_8ff0  boot stack top         ...          initrd, at the top of low RAM
//! 0xd000_0000  virtio-mmio devices, 4 KiB apart (MMIO_GAP_START, up to 4 GiB)
//! 0xfec0_0000  IOAPIC                 0xfee0_0000  LAPIC
//! 0x1_0000_0000  RAM above the 32-bit MMIO gap, when the guest has more than MMIO_GAP_START
//! ```

/// GDT for the boot vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, passed in %ebx to the PVH entry point.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux zero page (`boot_params`) for bzImage boot.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit bzImage entry.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest kernel command line we pass (the x86 kernel's COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable, the MP table lives in it.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the MP floating pointer and configuration table are written.
pub const MPTABLE_START: u64 = EBDA_START;
/// The kernel is loaded at 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO gap: guest RAM never overlaps [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// RAM that does not fit below the gap continues here.
pub const RAM_ABOVE_GAP_START: u64 = MMIO_GAP_END;
/// virtio-mmio devices: slot n is at VIRTIO_MMIO_START + n * VIRTIO_MMIO_SIZE.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// How many virtio-mmio slots the layout reserves.
pub const VIRTIO_MMIO_MAX_DEVICES: u64 = 32;

pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages below 4 GiB that are neither RAM nor MMIO.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The IOAPIC has 24 pins; the legacy ISA IRQs 0-15 sit on the first 16.
pub const IOAPIC_PINS: u32 = 24;
/// COM1 (8250) port range and IRQ.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
pub const SERIAL_PORT_SIZE: u16 = 0x8;
pub const SERIAL_IRQ: u32 = 4;
/// i8042 keyboard controller: data port 0x60 and command port 0x64, as one 5-port range.
pub const I8042_PORT_BASE: u16 = 0x60;
pub const I8042_PORT_SIZE: u16 = 0x5;
/// The first IRQ handed to virtio-mmio devices (one each, up to the last IOAPIC pin).
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// Smallest guest the VMM accepts: kernel, initramfs and the agent must fit.
pub const MIN_MEM_MIB: u64 = 64;

/// Returns the guest RAM regions for `mem_size` bytes: below the MMIO gap, and above 4 GiB
/// for what does not fit.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (RAM_ABOVE_GAP_START, mem_size - MMIO_GAP_START),
        ]
    }
}

/// The end (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The guest-physical base of virtio-mmio slot `slot`.
pub fn virtio_mmio_base(slot: u64) -> u64 {
    VIRTIO_MMIO_START + slot * VIRTIO_MMIO_SIZE
}

/// How many virtio devices fit: one MMIO slot and one IOAPIC pin (from [`VIRTIO_IRQ_BASE`]) each.
pub fn virtio_device_limit() -> usize {
    let pins = u64::from(IOAPIC_PINS - VIRTIO_IRQ_BASE);
    VIRTIO_MMIO_MAX_DEVICES.min(pins) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let regions = ram_regions(4 << 30);
        assert_eq!(regions[0], (0, MMIO_GAP_START));
        assert_eq!(regions[1], (1 << 32, (4 << 30) - MMIO_GAP_START));
        assert_eq!(low_ram_end(4 << 30), MMIO_GAP_START);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut ranges = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 0x8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x20),
            (PVH_MEMMAP_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
        assert!(virtio_mmio_base(VIRTIO_MMIO_MAX_DEVICES) <= IOAPIC_START);
    }

    #[test]
    fn virtio_devices_are_limited_by_the_ioapic_pins() {
        assert_eq!(virtio_device_limit(), 19);
        let last = virtio_device_limit() as u32 - 1;
        assert!(VIRTIO_IRQ_BASE + last < IOAPIC_PINS);
    }
}
