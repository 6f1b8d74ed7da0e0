//! Ending the VM (or, outside a VM, just the agent).
//!
//! The guest has no ACPI. nutshell-vmm reports a reset through the i8042
//! keyboard controller (command 0xFE on port 0x64) as a clean power-off
//! (exit 0) and a triple fault as an unclean reset (exit 3), and boots the
//! kernel with `reboot=t` so that a panic (`panic=-1`) triple-faults.
//!
//! The agent's clean power-off therefore switches the kernel's reboot method
//! to the keyboard controller at the last moment (`/sys/kernel/reboot/type`,
//! Linux >= 5.11) and then asks for a restart: the kernel itself pulses the
//! i8042 reset line. (Pulsing it from user space would need ioperm(2), which
//! the guest kernel does not provide.) With `reboot=k` on the command line
//! the switch is a no-op and the result the same.

use std::fs;
use std::io;
use std::path::Path;
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use thiserror::Error;

/// The `reboot(2)` mode that ends the VM: a restart, carried out through
/// the keyboard controller once [`KEYBOARD_CONTROLLER_REBOOT_TYPE`] is
/// selected, which the VMM treats as "the guest powered off".
/// (`RB_POWER_OFF` would only halt the vCPUs: there is no ACPI to power off.)
pub const VM_POWER_OFF_MODE: RebootMode = RebootMode::RB_AUTOBOOT;

/// Where the kernel's x86 reboot method can be changed at run time.
pub const REBOOT_TYPE_FILE: &str = "/sys/kernel/reboot/type";
/// Reboot method value for "pulse the i8042 reset line".
pub const KEYBOARD_CONTROLLER_REBOOT_TYPE: &str = "kbd";

/// Time for the last vsock packets (the `Shutdown` reply, connection
/// close) to leave the guest: the virtio-vsock driver sends from a workqueue
/// and the restart does not wait for it.
pub const VSOCK_DRAIN_DELAY: Duration = Duration::from_millis(50);

/// What `Shutdown` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOffAction {
    /// sync, then restart through the keyboard controller. Only as PID 1.
    PowerOffVm,
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

/// Carries out `action`. For [`PowerOffAction::PowerOffVm`] it only returns
/// if the kernel refused; for [`PowerOffAction::ExitAgent`] it returns `Ok`
/// and the caller exits.
pub fn power_off(action: PowerOffAction) -> Result<(), PowerOffError> {
    if action == PowerOffAction::ExitAgent {
        return Ok(());
    }
    thread::sleep(VSOCK_DRAIN_DELAY);
    nix::unistd::sync();
    if let Err(err) = select_reboot_type(Path::new(REBOOT_TYPE_FILE)) {
        // The restart still ends the VM, but with `reboot=t` the VMM will
        // report it as an unclean reset.
        log::error!("cannot select the keyboard-controller reboot method: {err}");
    }
    let Err(source) = reboot(VM_POWER_OFF_MODE);
    Err(PowerOffError {
        mode: VM_POWER_OFF_MODE,
        source,
    })
}

/// Writes [`KEYBOARD_CONTROLLER_REBOOT_TYPE`] to `reboot_type_file`.
fn select_reboot_type(reboot_type_file: &Path) -> io::Result<()> {
    fs::write(reboot_type_file, KEYBOARD_CONTROLLER_REBOOT_TYPE)
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", reboot_type_file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyboard_controller_method_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("type");
        fs::write(&file, "triple\n").unwrap();
        select_reboot_type(&file).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "kbd");
    }

    #[test]
    fn missing_reboot_type_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = select_reboot_type(&dir.path().join("absent/type")).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
