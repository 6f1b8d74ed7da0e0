pub mod device;
pub mod fs;
pub mod mmio;
pub mod vsock;
