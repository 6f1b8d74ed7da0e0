//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset line.
//! The guest agent pulses it (command 0xFE on port 0x64) to power the VM off cleanly.

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;

/// The i8042 on the port bus (ports 0x60-0x64).
pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    /// `reset` fires when the guest requests a CPU reset.
    pub fn new(reset: T) -> Self {
        I8042 {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                log::warn!("i8042: write of {:#x} at offset {offset}: {e:?}", data[0]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Flag(Arc<AtomicBool>);
    impl Trigger for Flag {
        type E = std::io::Error;
        fn trigger(&self) -> std::io::Result<()> {
            self.0.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn reset_command_fires_trigger() {
        let fired = Arc::new(AtomicBool::new(false));
        let mut dev = I8042::new(Flag(fired.clone()));
        dev.write(4, &[0xfe]);
        assert!(fired.load(Ordering::SeqCst));
    }
}
