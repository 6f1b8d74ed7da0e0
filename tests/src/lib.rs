//! nutshell's test infrastructure.
//!
//! [`ground`] runs commands and `cargo test` groups "on a KVM host": directly where /dev/kvm has
//! hardware virtualization behind it, otherwise inside a nested L1 Linux under QEMU TCG.

pub mod child_wait;
pub mod containerd;
pub mod cri_client;
pub mod ground;
pub mod oci;
pub mod pod_client;
pub mod pod_guest;
