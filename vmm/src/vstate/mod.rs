//! Thin wrappers over KVM: the VM, its vCPUs and guest memory.

pub mod memory;
pub mod vcpu;
pub mod vm;
