//! The shape every virtio device has: a [`VirtioDevice`] that the transport drives, and an
//! [`Interrupt`] handle through which the device's worker signals the guest.
//!
//! A device is created from its typed config by the builder, registered on a transport
//! (virtio-mmio), and activated by the guest driver. On activation it receives the guest memory,
//! its queues and one eventfd per queue (written by the transport on QueueNotify); it starts its
//! own worker thread, which owns the queues from then on. Reset or drop stops the worker.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::vstate::memory::GuestMemoryMmap;

/// virtio-mmio InterruptStatus bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// virtio-mmio InterruptStatus bit: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Feature bit every modern (non-legacy) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtio device {device}: expected {expected} queues, the driver set up {got}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("virtio device {device}: could not start its worker: {source}")]
    Worker {
        device: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("virtio device {device}: {reason}")]
    Invalid {
        device: &'static str,
        reason: String,
    },
}

/// The interrupt line of one transport. The device worker calls [`Interrupt::signal_used_queue`]
/// after adding used buffers; the guest acknowledges through the transport's InterruptACK register.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// The eventfd registered with KVM as this transport's irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    pub fn signal_config_change(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// A write to InterruptACK clears the given bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// What a transport hands a device when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    /// One ready queue per entry of [`VirtioDevice::queue_max_sizes`], in order.
    pub queues: Vec<Queue>,
    /// The eventfd the transport writes when the driver notifies the matching queue.
    pub queue_events: Vec<EventFd>,
}

/// A device's worker thread after activation, and the eventfd that tells it to stop.
pub struct DeviceWorker {
    pub stop: EventFd,
    pub thread: std::thread::JoinHandle<()>,
}

impl DeviceWorker {
    /// Tells the worker to stop and waits for it; `device` names it in the log.
    pub fn stop(self, device: &str) {
        if let Err(e) = self.stop.write(1) {
            log::error!("{device}: cannot signal the worker to stop: {e}");
            return;
        }
        if self.thread.join().is_err() {
            log::error!("{device}: the worker thread panicked");
        }
    }
}

/// Copies `data.len()` bytes of a read-only config space from `offset`; bytes past its end
/// read as 0, as the spec wants for a driver reading beyond the structure.
pub fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o).copied())
            .unwrap_or(0);
    }
}

/// A virtio device model, independent of its transport.
pub trait VirtioDevice: Send {
    /// Short name for logs and errors ("vsock", "fs", ...).
    fn name(&self) -> &'static str;
    /// The virtio device ID (virtio spec 5): 19 for vsock, 26 for fs.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn device_features(&self) -> u64;
    /// The features the driver accepted (a subset of the offer; the transport checks it).
    fn ack_features(&mut self, features: u64);
    /// Reads from the device-specific configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the device-specific configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device's worker. Called once per activation, after DRIVER_OK.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the worker and forgets the queues, so that the driver can start over.
    fn reset(&mut self);
}
