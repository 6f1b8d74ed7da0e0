//! The KVM VM: `/dev/kvm`, the VM file descriptor, its memory slots and in-kernel irqchip.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemoryMmap;
use crate::arch::x86_64::layout;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM setup of {what} failed: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    MemorySlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_VCPU {index} failed: {source}")]
    CreateVcpu {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An open KVM VM with an in-kernel IOAPIC/PIC/PIT.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    pub fn new() -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(VmError::ApiVersion(api));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(setup("TSS address"))?;
        fd.create_irq_chip().map_err(setup("irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("PIT"))?;
        Ok(Vm { kvm, fd })
    }

    /// The most vCPUs KVM accepts for one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Setup {
                what: "supported CPUID",
                source,
            })
    }

    /// Registers every region of `mem` as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host_addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MemorySlot {
                    slot,
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
            let region_desc = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
                flags: 0,
            };
            // SAFETY: the host range belongs to `mem`'s mmap, which outlives the VM: the
            // builder keeps the guest memory in the running VM until after the VM fd closes.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Setup {
                what: "irqfd",
                source,
            })
    }

    /// Routes MMIO writes of `datamatch` at `addr` straight to `evt`, without leaving the kernel.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Setup {
                what: "ioeventfd",
                source,
            })
    }

    pub fn create_vcpu(&self, index: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VmError::CreateVcpu { index, source })
    }
}
