//! nutshell's host VMM: one KVM microVM per pod.
//!
//! Typed configuration ([`config::VmConfig`]) flows one way into the [`builder`], the only
//! place that creates live objects (memory, KVM VM, devices, vCPUs). KVM wrappers live in
//! [`vstate`], device models in [`devices`], and every guest-physical constant in
//! [`arch::x86_64::layout`].

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod exit;
pub mod logger;
pub mod syscall_filter;
pub mod vstate;

pub use builder::{build, BuildError, RunningVm};
pub use config::{ConfigError, VmConfig};
pub use exit::GuestExit;
