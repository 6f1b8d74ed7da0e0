//! A minimal hand-written KVM guest: 64-bit long mode from the first instruction (4-level page
//! tables, a GDT, CR0.PE|PG, CR4.PAE, EFER.LME|LMA), running a snippet that only gives the right
//! answer in 64-bit mode.

use std::time::Instant;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};

const MEM_SIZE: usize = 2 << 20;
const GDT: u64 = 0x500;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const STACK_TOP: u64 = 0x7000;
const CODE: u64 = 0x8000;

const PTE_PRESENT_RW: u64 = 0b11;
const PDE_2M_PAGE: u64 = 1 << 7;
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// movabs rax, 0x2a_0000_0000; shr rax, 32; out 0x10, al; hlt. In 32-bit mode the REX.W prefixes
/// would decode as `dec eax` and the port would see another value.
const SNIPPET: [u8; 17] = [
    0x48, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00,
    0x00, // movabs rax, 0x0000002a00000000
    0x48, 0xc1, 0xe8, 0x20, // shr rax, 32
    0xe6, 0x10, // out 0x10, al
    0xf4, // hlt
];

/// Anonymous memory for the guest, unmapped on drop.
struct GuestMemory {
    ptr: *mut u8,
    size: usize,
}

impl GuestMemory {
    fn new(size: usize) -> Self {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap guest memory: {}",
            std::io::Error::last_os_error()
        );
        Self {
            ptr: ptr.cast(),
            size,
        }
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let offset = usize::try_from(gpa).expect("gpa fits usize");
        assert!(
            offset + bytes.len() <= self.size,
            "write at {gpa:#x} outside guest memory"
        );
        // SAFETY: the range was checked to lie inside our live mapping, and `bytes` is a separate
        // Rust slice, so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
    }

    fn write_u64(&mut self, gpa: u64, value: u64) {
        self.write(gpa, &value.to_le_bytes());
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: ptr/size are exactly the mapping made in `new`, unmapped only here.
        unsafe { libc::munmap(self.ptr.cast(), self.size) };
    }
}

/// Opens /dev/kvm, creates a VM and a vCPU in long mode, runs the snippet, checks its exits.
pub fn long_mode_snippet() {
    let started = Instant::now();
    // Declared before the VM, so dropped after it.
    let mut memory = GuestMemory::new(MEM_SIZE);
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");

    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: memory.ptr as u64,
    };
    // SAFETY: the region is our own live anonymous mapping of MEM_SIZE bytes, which outlives
    // the VM (see the declaration order above).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");

    // Identity-map the first 2 MiB with one large page.
    memory.write_u64(PML4, PDPT | PTE_PRESENT_RW);
    memory.write_u64(PDPT, PD | PTE_PRESENT_RW);
    memory.write_u64(PD, PTE_PRESENT_RW | PDE_2M_PAGE);
    // Null, 64-bit code (selector 0x8), data (selector 0x10).
    for (i, entry) in [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
        .iter()
        .enumerate()
    {
        memory.write_u64(GDT + 8 * i as u64, *entry);
    }
    memory.write(CODE, &SNIPPET);

    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");

    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 3 * 8 - 1;
    sregs.cr3 = PML4;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS (long mode)");

    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = CODE;
    regs.rsp = STACK_TOP;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");

    let mut vcpu = vcpu;
    let mut outs = Vec::new();
    let mut exits = 0;
    loop {
        exits += 1;
        assert!(exits < 100, "the snippet did not halt; IO so far: {outs:?}");
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => outs.push((port, data.to_vec())),
            VcpuExit::Hlt => break,
            other => panic!("unexpected vCPU exit {other:?}; IO so far: {outs:?}"),
        }
    }
    let regs = vcpu.get_regs().expect("KVM_GET_REGS after HLT");
    let sregs = vcpu.get_sregs().expect("KVM_GET_SREGS after HLT");
    assert_eq!(
        outs,
        vec![(0x10u16, vec![0x2au8])],
        "port writes of the snippet"
    );
    assert_eq!(regs.rax, 0x2a, "rax after the snippet");
    assert_eq!(regs.rip, CODE + SNIPPET.len() as u64, "rip after HLT");
    assert_ne!(sregs.efer & EFER_LMA, 0, "EFER.LMA after the run");
    println!(
        "long-mode snippet: KVM API {}, OUT port 0x10 = {:#x}, then HLT at rip {:#x}; {} exits, {:.3} s",
        kvm.get_api_version(),
        outs[0].1[0],
        regs.rip,
        exits,
        started.elapsed().as_secs_f64()
    );
}
