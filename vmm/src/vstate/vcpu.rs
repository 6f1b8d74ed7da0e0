//! vCPUs: boot-time register setup and the run loop, one host thread per vCPU.
//!
//! A vCPU thread runs KVM_RUN until its VM stops. Port and MMIO exits go to the buses; a
//! triple fault (KVM_EXIT_SHUTDOWN) or a failure is reported to the VMM as a [`GuestExit`].
//! To stop the threads the VMM sets the shared stop flag and kicks each thread with
//! [`kick_signal`] until it is gone, which interrupts KVM_RUN with EINTR.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_xcr, kvm_xcrs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::memory::GuestMemoryMmap;
use crate::arch::x86_64::{cpuid, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::GuestExit;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: KVM setup of {what} failed: {source}")]
    Setup {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: {source}")]
    Regs {
        index: u8,
        #[source]
        source: regs::RegsError,
    },
    #[error("vCPU {index}: cannot start its thread: {source}")]
    Spawn {
        index: u8,
        #[source]
        source: std::io::Error,
    },
}

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), ignore_kick) {
            log::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// Port and MMIO buses, shared by all vCPUs.
pub struct IoBuses {
    pub pio: Bus,
    pub mmio: Bus,
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(index: u8, fd: VcpuFd) -> Self {
        Vcpu { index, fd }
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; the boot vCPU (index 0) also gets the entry registers.
    /// The others wait for INIT/SIPI from the boot vCPU, handled by KVM's LAPIC.
    pub fn configure(
        &self,
        mem: &GuestMemoryMmap,
        supported_cpuid: &CpuId,
        count: u8,
        entry: regs::BootEntry,
    ) -> Result<(), VcpuError> {
        let index = self.index;
        let setup = |what| {
            move |source| VcpuError::Setup {
                index,
                what,
                source,
            }
        };
        let cpuid = cpuid::normalize(supported_cpuid, cpuid::VcpuTopology { index, count });
        self.fd.set_cpuid2(&cpuid).map_err(setup("CPUID"))?;
        if let Some(xcr0) = cpuid::boot_xcr0(&cpuid) {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0] = kvm_xcr {
                xcr: 0,
                value: xcr0,
                ..Default::default()
            };
            self.fd.set_xcrs(&xcrs).map_err(setup("XCR0"))?;
        }
        self.fd.set_msrs(&msr::boot_msrs()).map_err(setup("MSRs"))?;
        self.fd.set_fpu(&regs::boot_fpu()).map_err(setup("FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(setup("LAPIC read"))?;
        msr::configure_lapic(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(setup("LAPIC"))?;
        if index == 0 {
            let sregs = self.fd.get_sregs().map_err(setup("sregs read"))?;
            let sregs = regs::boot_sregs(mem, entry, sregs)
                .map_err(|source| VcpuError::Regs { index, source })?;
            self.fd.set_sregs(&sregs).map_err(setup("sregs"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(setup("regs"))?;
        }
        Ok(())
    }

    /// Starts the vCPU's thread.
    pub fn spawn(
        self,
        buses: Arc<IoBuses>,
        exits: Sender<GuestExit>,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        install_kick_handler();
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || self.run(&buses, &exits, &stop))
            .map_err(|source| VcpuError::Spawn { index, source })
    }

    fn run(mut self, buses: &IoBuses, exits: &Sender<GuestExit>, stop: &AtomicBool) {
        let index = self.index;
        while !stop.load(Ordering::SeqCst) {
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !buses.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(u64::from(port), data);
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                    continue;
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    buses.mmio.write(addr, data);
                    continue;
                }
                Ok(VcpuExit::Hlt) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => continue,
                Ok(VcpuExit::Shutdown) => GuestExit::Reset { vcpu: index },
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => GuestExit::Reset { vcpu: index },
                    other => GuestExit::Crash {
                        vcpu: index,
                        reason: format!("KVM system event {other}"),
                    },
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => GuestExit::Crash {
                    vcpu: index,
                    reason: format!("VM entry failed (hardware reason {reason:#x}, cpu {cpu})"),
                },
                Ok(VcpuExit::InternalError) => GuestExit::Crash {
                    vcpu: index,
                    reason: "KVM internal error (emulation failure)".into(),
                },
                Ok(other) => GuestExit::Crash {
                    vcpu: index,
                    reason: format!("unexpected KVM exit {other:?}"),
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => GuestExit::Crash {
                    vcpu: index,
                    reason: format!("KVM_RUN failed: {e}"),
                },
            };
            // The receiver is gone only when the VMM is already shutting down.
            let _ = exits.send(exit);
            break;
        }
    }
}
