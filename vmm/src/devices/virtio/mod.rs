pub mod device;
pub mod fs;
#[cfg(test)]
pub(crate) mod fuzz_support;
pub mod mmio;
pub mod vsock;
