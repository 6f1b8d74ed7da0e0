pub mod device;
pub mod mmio;
pub mod vsock;
