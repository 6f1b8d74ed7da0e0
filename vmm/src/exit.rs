//! How a guest ended, as the VMM reports it.

use std::fmt;

/// The reason the VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest asked to power off: the agent pulsed the i8042 reset line after syncing,
    /// or KVM reported a shutdown system event.
    PowerOff,
    /// The guest reset itself (a triple fault): a kernel panic with `panic=-1 reboot=t`, or a
    /// reboot that bypassed the agent.
    Reset { vcpu: u8 },
    /// A vCPU could not continue.
    Crash { vcpu: u8, reason: String },
    /// The host stopped the VM (a signal to the VMM process).
    Stopped { signal: i32 },
}

impl GuestExit {
    /// The exit status of `nutshell-vmm` for this ending (documented in its `--help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            GuestExit::PowerOff => 0,
            GuestExit::Reset { .. } => 3,
            GuestExit::Crash { .. } => 4,
            GuestExit::Stopped { signal } => 128 + signal,
        }
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestExit::PowerOff => write!(f, "guest powered off"),
            GuestExit::Reset { vcpu } => write!(f, "guest reset itself (triple fault on vCPU {vcpu}): kernel panic or unmanaged reboot"),
            GuestExit::Crash { vcpu, reason } => write!(f, "vCPU {vcpu} stopped: {reason}"),
            GuestExit::Stopped { signal } => write!(f, "stopped by host signal {signal}"),
        }
    }
}
