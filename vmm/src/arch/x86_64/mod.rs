//! x86_64 boot: layout, kernel loading, boot registers, CPUID, MSRs and the MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
