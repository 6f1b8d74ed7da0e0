//! Guest memory: anonymous private mappings registered with KVM as memory slots.

/// Guest memory as every part of the VMM sees it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
