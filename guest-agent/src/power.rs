//! Ending the VM (or, outside a VM, just the agent).

use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use thiserror::Error;

/// `reboot(2)` mode that ends the VM cleanly.
///
/// The guest has no ACPI, so `RB_POWER_OFF` would only halt the vCPUs and
/// leave the VMM waiting. The kernel is booted with `reboot=k`, which makes a
/// restart pulse the i8042 keyboard controller's reset line (port 0x64 <-
/// 0xFE); the VMM treats that as "the guest powered off". Hence "restart".
pub const VM_POWER_OFF_MODE: RebootMode = RebootMode::RB_AUTOBOOT;

/// Time for the last vsock packets (the `Shutdown` reply, connection
/// close) to leave the guest: the virtio-vsock driver sends from a workqueue
/// and the reset does not wait for it.
pub const VSOCK_DRAIN_DELAY: Duration = Duration::from_millis(50);

/// What `Shutdown` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOffAction {
    /// sync, then reset the VM with [`VM_POWER_OFF_MODE`]. Only as PID 1.
    ResetVm,
    /// Just let the agent process exit (developer host, tests).
    ExitAgent,
}

#[derive(Debug, Error)]
#[error("reboot({mode:?}) failed")]
pub struct PowerOffError {
    mode: RebootMode,
    #[source]
    source: Errno,
}

/// Carries out `action`. For [`PowerOffAction::ResetVm`] it only returns if
/// the kernel refused; for [`PowerOffAction::ExitAgent`] it returns `Ok` and
/// the caller exits.
pub fn power_off(action: PowerOffAction) -> Result<(), PowerOffError> {
    match action {
        PowerOffAction::ExitAgent => Ok(()),
        PowerOffAction::ResetVm => {
            thread::sleep(VSOCK_DRAIN_DELAY);
            nix::unistd::sync();
            let Err(source) = reboot(VM_POWER_OFF_MODE);
            Err(PowerOffError {
                mode: VM_POWER_OFF_MODE,
                source,
            })
        }
    }
}
