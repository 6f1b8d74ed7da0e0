//! The only place that creates live objects: from a [`VmConfig`] to a [`RunningVm`].
//!
//! Order: validate the config; create the devices that own host resources (the vsock socket)
//! so that a clash fails before anything else exists; guest memory; the KVM VM; the serial log;
//! devices on their buses (virtio devices get an MMIO slot, an IRQ and a command-line entry, in
//! a fixed order: vsock, then each virtio-fs share as configured); the kernel, initrd and boot
//! information; vCPUs, each on its own thread. The virtio-fs devices are opened after the VMM's
//! own files exist, because opening one sets the process umask to 0 (see `devices::virtio::fs`).
//! Whatever fails on the way drops what was made before it: no socket file, thread or VM is
//! left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::{boot, layout, mptable};
use crate::config::{ConfigError, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::console_log::ConsoleLog;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{ConsoleOutput, ConsoleTail, SerialConsole};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::fs::{Fs, FsError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, NOTIFY_REG_OFFSET};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::exit::GuestExit;
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::{kick_signal, IoBuses, Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{requested} vCPUs requested, but KVM allows at most {max} on this host")]
    KvmVcpuLimit { requested: u32, max: usize },
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Memory { mib: u64, reason: String },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Mmio(#[from] MmioError),
    #[error("device bus: {0}")]
    Bus(#[from] BusError),
    #[error("serial log {path}: {source}")]
    SerialLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no virtio-mmio slot left (at most {0} devices)")]
    TooManyDevices(u64),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Sends [`GuestExit::PowerOff`] when the guest pulses the i8042 reset line.
struct PowerOffTrigger(Mutex<Sender<GuestExit>>);

impl vm_superio::Trigger for PowerOffTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        let sender = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A closed channel means the VM is already stopping.
        let _ = sender.send(GuestExit::PowerOff);
        Ok(())
    }
}

/// Virtio devices, each given an MMIO slot and an IRQ, in the order they are attached.
struct VirtioSlots<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    cmdline_entries: Vec<String>,
    next_slot: u64,
}

impl VirtioSlots<'_> {
    fn attach(&mut self, device: Box<dyn VirtioDevice>) -> Result<(), BuildError> {
        let slot = self.next_slot;
        let irq = layout::VIRTIO_IRQ_BASE + slot as u32;
        if slot >= layout::VIRTIO_MMIO_MAX_DEVICES || irq >= layout::IOAPIC_PINS {
            return Err(BuildError::TooManyDevices(slot));
        }
        let base = layout::virtio_mmio_base(slot);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
        let transport = MmioTransport::new(device, self.mem.clone(), irqfd)?;
        self.vm.register_irqfd(transport.irqfd(), irq)?;
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            self.vm
                .register_mmio_ioevent(evt, base + NOTIFY_REG_OFFSET, queue as u32)?;
        }
        log::debug!("virtio {} at {base:#x}, irq {irq}", transport.device_name());
        self.mmio.insert(
            base,
            layout::VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
        self.cmdline_entries
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.next_slot += 1;
        Ok(())
    }
}

/// A booted VM: its vCPU threads run until the guest exits or the VM is dropped.
pub struct RunningVm {
    exits: Receiver<GuestExit>,
    stop: Arc<AtomicBool>,
    vcpus: Vec<JoinHandle<()>>,
    console: ConsoleTail,
    // Dropped after the vCPUs have stopped (see Drop): buses (and the devices' host
    // resources), then the VM, then guest memory.
    _buses: Arc<IoBuses>,
    _vm: Vm,
    _mem: GuestMemoryMmap,
    exit_sender: Sender<GuestExit>,
}

impl RunningVm {
    /// Blocks until the guest exits.
    pub fn wait(&mut self) -> GuestExit {
        // We hold a sender ourselves, so recv only fails if that invariant is broken.
        self.exits.recv().unwrap_or(GuestExit::Crash {
            vcpu: 0,
            reason: "exit channel closed".into(),
        })
    }

    /// Waits at most `timeout`; `None` if the guest is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<GuestExit> {
        match self.exits.recv_timeout(timeout) {
            Ok(exit) => Some(exit),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(GuestExit::Crash {
                vcpu: 0,
                reason: "exit channel closed".into(),
            }),
        }
    }

    /// A handle to report an exit from outside the guest (a host signal, say).
    pub fn exit_sender(&self) -> Sender<GuestExit> {
        self.exit_sender.clone()
    }

    /// The last few KiB of console output.
    pub fn console(&self) -> &ConsoleTail {
        &self.console
    }

    /// Stops every vCPU thread and waits for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        for handle in self.vcpus.drain(..) {
            // A kick can land just before the thread re-enters KVM_RUN; repeat until it exits.
            while !handle.is_finished() && Instant::now() < deadline {
                let _ = handle.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                log::error!("a vCPU thread did not stop within 5 s");
            }
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds and starts the VM described by `config`.
pub fn build(config: &VmConfig) -> Result<RunningVm, BuildError> {
    config.validate()?;
    let vsock = match &config.vsock {
        Some(vsock) => Some(Vsock::new(vsock.clone())?),
        None => None,
    };

    let vm = Vm::new()?;
    let max = vm.max_vcpus();
    if config.vcpus as usize > max {
        return Err(BuildError::KvmVcpuLimit {
            requested: config.vcpus,
            max,
        });
    }
    let vcpus = config.vcpus as u8;

    let mem_size = config.mem_bytes();
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| BuildError::Memory {
        mib: config.mem_mib,
        reason: e.to_string(),
    })?;
    vm.register_memory(&mem)?;

    let (exit_sender, exits) = channel();
    let console = ConsoleTail::default();
    let mut pio = Bus::new();
    let mut mmio = Bus::new();

    let serial_file: Option<Box<dyn std::io::Write + Send>> = match &config.serial_log {
        Some(path) => Some(Box::new(
            ConsoleLog::create(path, config.serial_log_max_bytes).map_err(|source| {
                BuildError::SerialLog {
                    path: path.clone(),
                    source,
                }
            })?,
        )),
        None => None,
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
    pio.insert(
        u64::from(layout::SERIAL_PORT_BASE),
        u64::from(layout::SERIAL_PORT_SIZE),
        Arc::new(Mutex::new(SerialConsole::new(
            serial_irq,
            ConsoleOutput::new(serial_file, console.clone()),
        ))),
    )?;
    pio.insert(
        u64::from(layout::I8042_PORT_BASE),
        u64::from(layout::I8042_PORT_SIZE),
        Arc::new(Mutex::new(I8042::new(PowerOffTrigger(Mutex::new(
            exit_sender.clone(),
        ))))),
    )?;

    let mut slots = VirtioSlots {
        vm: &vm,
        mem: &mem,
        mmio: &mut mmio,
        cmdline_entries: Vec::new(),
        next_slot: 0,
    };
    if let Some(vsock) = vsock {
        slots.attach(Box::new(vsock))?;
    }
    for share in &config.fs {
        slots.attach(Box::new(Fs::new(share.clone())?))?;
    }
    let cmdline_entries = std::mem::take(&mut slots.cmdline_entries);

    let kernel = boot::load_kernel(&mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(&mem, path, &kernel, mem_size)?),
        None => None,
    };
    let cmdline = boot::build_cmdline(&config.cmdline, &cmdline_entries)?;
    boot::write_boot_info(&mem, &kernel, initrd, &cmdline, mem_size)?;
    mptable::write_mptable(&mem, vcpus)?;

    let supported_cpuid = vm.supported_cpuid()?;
    let mut configured = Vec::with_capacity(vcpus as usize);
    for index in 0..vcpus {
        let vcpu = Vcpu::new(index, vm.create_vcpu(index)?);
        vcpu.configure(&mem, &supported_cpuid, vcpus, kernel.entry)?;
        configured.push(vcpu);
    }

    let buses = Arc::new(IoBuses { pio, mmio });
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = RunningVm {
        exits,
        stop: stop.clone(),
        vcpus: Vec::with_capacity(vcpus as usize),
        console,
        _buses: buses.clone(),
        _vm: vm,
        _mem: mem,
        exit_sender: exit_sender.clone(),
    };
    for vcpu in configured {
        // On failure, dropping `running` stops the threads already started.
        let handle = vcpu.spawn(buses.clone(), exit_sender.clone(), stop.clone())?;
        running.vcpus.push(handle);
    }
    Ok(running)
}
