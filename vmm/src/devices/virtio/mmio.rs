//! The virtio-mmio transport (virtio 1.2, section 4.2, version 2 register layout). One
//! transport per device; the guest learns about it from a `virtio_mmio.device=` entry on the
//! kernel command line. Queue notifications normally reach the device through KVM ioeventfds
//! (registered by the builder on [`NOTIFY_REG_OFFSET`]) and never leave the kernel; a write
//! that reaches this model is forwarded to the same eventfd.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device::{ActivateContext, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4e55_5453; // "NUTS"

/// Offset of QueueNotify, where the builder registers one ioeventfd per queue.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

/// A virtio device behind its MMIO register block.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("virtio-mmio {device}: cannot create an eventfd: {0}", device = .1)]
    EventFd(std::io::Error, &'static str),
    #[error("virtio-mmio {device}: invalid queue size {size}")]
    QueueSize { device: &'static str, size: u16 },
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<Self, MmioError> {
        let name = device.name();
        let queues = new_queues(device.queue_max_sizes(), name)?;
        let mut queue_events = Vec::new();
        for _ in 0..queues.len() {
            queue_events
                .push(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MmioError::EventFd(e, name))?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            queues,
            queue_events,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The eventfd for each queue, to be registered as KVM ioeventfds with the queue index
    /// as datamatch.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The irqfd to register with KVM on the device's interrupt line.
    pub fn irqfd(&self) -> &EventFd {
        self.interrupt.irqfd()
    }

    pub fn device_name(&self) -> &'static str {
        self.device.name()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn with_queue<F: FnOnce(&mut Queue)>(&mut self, f: F) {
        // Queue configuration is frozen once the device runs (virtio 1.2, 4.2.2.2).
        if self.activated || self.status & STATUS_DRIVER_OK != 0 {
            return;
        }
        if let Some(queue) = self.selected_queue() {
            f(queue);
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let new_bits = value & !self.status;
        if new_bits & STATUS_FEATURES_OK != 0 {
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                log::warn!(
                    "virtio-mmio {}: driver did not accept VIRTIO_F_VERSION_1",
                    self.device.name()
                );
                self.status |= value & !STATUS_FEATURES_OK;
                return;
            }
            self.device.ack_features(self.driver_features);
        }
        self.status = value;
        if new_bits & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let name = self.device.name();
        let ready = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        if !ready {
            log::warn!("virtio-mmio {name}: DRIVER_OK with queues not ready or invalid");
            self.status |= STATUS_FAILED;
            return;
        }
        let mut queue_events = Vec::with_capacity(self.queue_events.len());
        for evt in &self.queue_events {
            match evt.try_clone() {
                Ok(evt) => queue_events.push(evt),
                Err(e) => {
                    log::error!("virtio-mmio {name}: cannot clone a queue eventfd: {e}");
                    self.status |= STATUS_FAILED;
                    return;
                }
            }
        }
        // The device owns the configured queues from now on; the transport keeps fresh ones
        // for the next reset (QueueReady reads 0 after activation, which drivers never check).
        let fresh = match new_queues(self.device.queue_max_sizes(), name) {
            Ok(fresh) => fresh,
            Err(e) => {
                log::error!("{e}");
                self.status |= STATUS_FAILED;
                return;
            }
        };
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues: std::mem::replace(&mut self.queues, fresh),
            queue_events,
        };
        match self.device.activate(ctx) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio-mmio {name}: activation failed: {e}");
                self.status |= STATUS_FAILED;
            }
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = self.device.device_features() | VIRTIO_F_VERSION_1;
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                log::debug!(
                    "virtio-mmio {}: read of unknown register {offset:#x}",
                    self.device.name()
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let lo = |v: u32| (Some(v), None);
        let hi = |v: u32| (None, Some(v));
        match offset {
            0x14 => self.device_features_select = value,
            0x20 => {
                let offered = self.device.device_features() | VIRTIO_F_VERSION_1;
                let (shift, mask) = match self.driver_features_select {
                    0 => (0, 0xffff_ffffu64),
                    1 => (32, 0xffff_ffff_0000_0000u64),
                    _ => return,
                };
                let accepted = (u64::from(value) << shift) & offered & mask;
                self.driver_features = (self.driver_features & !mask) | accepted;
            }
            0x24 => self.driver_features_select = value,
            0x30 => self.queue_select = value,
            0x38 => self.with_queue(|q| q.set_size(value as u16)),
            0x44 => self.with_queue(|q| q.set_ready(value == 1)),
            NOTIFY_REG_OFFSET => {
                if let Some(evt) = self.queue_events.get(value as usize) {
                    if let Err(e) = evt.write(1) {
                        log::warn!("virtio-mmio {}: queue notify: {e}", self.device.name());
                    }
                }
            }
            0x64 => self.interrupt.ack(value),
            0x70 => self.set_status(value),
            0x80 | 0x84 => {
                let (l, h) = if offset == 0x80 { lo(value) } else { hi(value) };
                self.with_queue(|q| q.set_desc_table_address(l, h));
            }
            0x90 | 0x94 => {
                let (l, h) = if offset == 0x90 { lo(value) } else { hi(value) };
                self.with_queue(|q| q.set_avail_ring_address(l, h));
            }
            0xa0 | 0xa4 => {
                let (l, h) = if offset == 0xa0 { lo(value) } else { hi(value) };
                self.with_queue(|q| q.set_used_ring_address(l, h));
            }
            _ => log::debug!(
                "virtio-mmio {}: write of {value:#x} to unknown register {offset:#x}",
                self.device.name()
            ),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.write_register(offset, value);
    }
}

fn new_queues(max_sizes: &[u16], device: &'static str) -> Result<Vec<Queue>, MmioError> {
    max_sizes
        .iter()
        .map(|&size| Queue::new(size).map_err(|_| MmioError::QueueSize { device, size }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::device::ActivateError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    const STATUS_ACKNOWLEDGE: u32 = 1;
    const STATUS_DRIVER: u32 = 2;

    /// Whether the driver got as far as DRIVER_OK.
    fn driver_ok(status: u32) -> bool {
        status & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK)
            == (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK)
    }

    struct Dummy {
        activations: Arc<AtomicUsize>,
        config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn name(&self) -> &'static str {
            "dummy"
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn device_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn ack_features(&mut self, _features: u64) {}
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = *self.config.get(offset as usize + i).unwrap_or(&0);
            }
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            assert_eq!(ctx.queues.len(), 1);
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) {}
    }

    fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn transport() -> (MmioTransport, Arc<AtomicUsize>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let activations = Arc::new(AtomicUsize::new(0));
        let device = Dummy {
            activations: activations.clone(),
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let t = MmioTransport::new(
            Box::new(device),
            mem,
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        )
        .unwrap();
        (t, activations)
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(read32(&mut t, 0x0), MMIO_MAGIC);
        assert_eq!(read32(&mut t, 0x4), 2);
        assert_eq!(read32(&mut t, 0x8), 42);
        write32(&mut t, 0x14, 1);
        assert_eq!(read32(&mut t, 0x10), 1); // VERSION_1 is bit 32
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        // Misaligned register accesses are ignored, not fatal.
        let mut odd = [0u8; 2];
        t.read(0x2, &mut odd);
        t.write(0x71, &[1, 2]);
    }

    #[test]
    fn driver_handshake_activates_once_and_reset_starts_over() {
        let (mut t, activations) = transport();
        write32(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(&mut t, 0x24, 1);
        write32(&mut t, 0x20, 1); // VERSION_1
        write32(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_ne!(read32(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        write32(&mut t, 0x30, 0);
        assert_eq!(read32(&mut t, 0x34), 16);
        write32(&mut t, 0x38, 16);
        write32(&mut t, 0x80, 0x1000);
        write32(&mut t, 0x90, 0x2000);
        write32(&mut t, 0xa0, 0x3000);
        write32(&mut t, 0x44, 1);
        let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        write32(&mut t, 0x70, ok);
        assert_eq!(activations.load(Ordering::SeqCst), 1);
        assert!(driver_ok(read32(&mut t, 0x70)));
        write32(&mut t, 0x70, ok);
        assert_eq!(activations.load(Ordering::SeqCst), 1);
        write32(&mut t, 0x70, 0);
        assert_eq!(read32(&mut t, 0x70), 0);
        assert_eq!(read32(&mut t, 0x44), 0);
    }

    #[test]
    fn features_ok_refused_without_version_1() {
        let (mut t, _) = transport();
        write32(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(read32(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_with_bad_queue_fails_device() {
        let (mut t, activations) = transport();
        write32(&mut t, 0x24, 1);
        write32(&mut t, 0x20, 1);
        write32(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        write32(&mut t, 0x38, 16);
        write32(&mut t, 0x80, 0xffff_0000); // outside guest memory
        write32(&mut t, 0x44, 1);
        write32(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(activations.load(Ordering::SeqCst), 0);
        assert_ne!(read32(&mut t, 0x70) & STATUS_FAILED, 0);
    }
}
