//! Boot-time register state of a vCPU: GDT, segments, control registers, page tables and
//! general-purpose registers, for the two entry protocols we support.
//!
//! - PVH (vmlinux): 32-bit protected mode, paging off, flat segments, %ebx = start info.
//! - Linux 64-bit boot (bzImage): long mode with an identity map of the first GiB,
//!   %rsi = zero page, %rip = the 64-bit entry (load address + 0x200).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout;
use crate::vstate::memory::GuestMemoryMmap;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// Bit 1 of RFLAGS is reserved and must be set.
const RFLAGS_RESERVED: u64 = 0x2;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH entry point of an ELF vmlinux.
    Pvh { entry: GuestAddress },
    /// 64-bit entry of a bzImage (protected-mode kernel load address + 0x200).
    Linux64 { entry: GuestAddress },
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT into guest memory: {0}")]
    Gdt(vm_memory::GuestMemoryError),
    #[error("cannot write the boot page tables into guest memory: {0}")]
    PageTables(vm_memory::GuestMemoryError),
}

/// Encodes a GDT entry from flags, base and limit (Intel SDM vol. 3, 3.4.5).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | (((limit as u64 & 0x000f_0000) >> 16) << 48)
        | ((flags as u64 & 0x0000_f0ff) << 40)
}

/// Decodes a GDT entry into the segment KVM expects for a selector.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granularity = ((entry >> 55) & 1) as u8;
    let limit = if granularity == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// The boot GDT: null, code, data, TSS. The code segment is 64-bit for Linux64 and 32-bit
/// for PVH.
fn boot_gdt(entry: BootEntry) -> [u64; 4] {
    let code_flags = match entry {
        BootEntry::Pvh { .. } => 0xc09b, // 32-bit, 4 KiB granularity, present, exec/read, accessed
        BootEntry::Linux64 { .. } => 0xa09b, // long mode, present, exec/read, accessed
    };
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff), // data: 4 KiB granularity, present, read/write, accessed
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy 32-bit TSS
    ]
}

fn write_gdt_and_idt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GuestAddress(layout::BOOT_GDT_START + (i as u64) * 8);
        mem.write_obj(*entry, addr).map_err(RegsError::Gdt)?;
    }
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START))
        .map_err(RegsError::Gdt)
}

/// Identity-maps the first GiB with 2 MiB pages: enough for the 64-bit kernel entry, which
/// builds its own tables right away.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let present_rw = 0x3u64;
    mem.write_obj(
        layout::PDPTE_START | present_rw,
        GuestAddress(layout::PML4_START),
    )
    .map_err(RegsError::PageTables)?;
    mem.write_obj(
        layout::PDE_START | present_rw,
        GuestAddress(layout::PDPTE_START),
    )
    .map_err(RegsError::PageTables)?;
    for i in 0..512u64 {
        let huge_page = (i << 21) | 0x83; // present, rw, page size
        mem.write_obj(huge_page, GuestAddress(layout::PDE_START + i * 8))
            .map_err(RegsError::PageTables)?;
    }
    Ok(())
}

/// Builds the special registers of the boot vCPU on top of KVM's defaults, and writes the
/// GDT/IDT (and page tables for 64-bit entry) into guest memory.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    entry: BootEntry,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(entry);
    write_gdt_and_idt(mem, &gdt)?;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 { .. } => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// General-purpose registers of the boot vCPU.
pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    match entry {
        BootEntry::Pvh { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rbx: layout::PVH_INFO_START,
            rip: entry.raw_value(),
            ..Default::default()
        },
        BootEntry::Linux64 { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry.raw_value(),
            rsp: layout::BOOT_STACK_POINTER,
            rbp: layout::BOOT_STACK_POINTER,
            rsi: layout::ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// x87 and SSE state at reset: FCW 0x37f (all exceptions masked), MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entry_round_trips_through_segment() {
        let seg = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.db, 0);
        assert_eq!(seg.g, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.s, 1);
        let seg32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((seg32.l, seg32.db), (0, 1));
    }

    #[test]
    fn long_mode_sregs_enable_paging_and_map_first_gib() {
        let mem = memory();
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(0x100200),
        };
        let sregs = boot_sregs(&mem, entry, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, layout::PML4_START);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        let pde: u64 = mem
            .read_obj(GuestAddress(layout::PDE_START + 511 * 8))
            .unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
        let regs = boot_regs(entry);
        assert_eq!(regs.rsi, layout::ZERO_PAGE_START);
        assert_eq!(regs.rip, 0x100200);
    }

    #[test]
    fn pvh_sregs_stay_in_protected_mode() {
        let mem = memory();
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x1000000),
        };
        let sregs = boot_sregs(&mem, entry, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_eq!(sregs.efer, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(boot_regs(entry).rbx, layout::PVH_INFO_START);
    }
}
