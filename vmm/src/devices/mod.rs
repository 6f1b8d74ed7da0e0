//! Device models. Each sits on a [`bus::Bus`]; none of them knows about KVM.

pub mod bus;
pub mod legacy;
pub mod virtio;
