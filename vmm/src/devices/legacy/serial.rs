//! The 8250 UART console (COM1), backed by vm-superio, written to a file or discarded.
//! The last few KiB of output are kept so that an unexpected guest exit can be explained
//! (for example, with the kernel's panic message).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// How many bytes of console output [`ConsoleTail`] keeps.
const TAIL_BYTES: usize = 4096;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The last [`TAIL_BYTES`] of console output, shared with the VMM.
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<Vec<u8>>>);

impl ConsoleTail {
    fn push(&self, data: &[u8]) {
        let mut tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend_from_slice(data);
        if tail.len() > TAIL_BYTES {
            let excess = tail.len() - TAIL_BYTES;
            tail.drain(..excess);
        }
    }

    /// The retained output as text.
    pub fn text(&self) -> String {
        let tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&tail).into_owned()
    }

    /// The kernel's panic line, if the retained output has one.
    pub fn panic_message(&self) -> Option<String> {
        let text = self.text();
        text.lines()
            .find(|l| l.contains("Kernel panic"))
            .map(|l| l.trim().to_string())
    }
}

/// Console output sink: an optional log file, plus the tail.
pub struct ConsoleOutput {
    file: Option<Box<dyn Write + Send>>,
    tail: ConsoleTail,
}

impl ConsoleOutput {
    pub fn new(file: Option<Box<dyn Write + Send>>, tail: ConsoleTail) -> Self {
        ConsoleOutput { file, tail }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tail.push(buf);
        if let Some(file) = self.file.as_mut() {
            // A full disk must not stop the guest: console output is best effort.
            let _ = file.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// COM1 on the port bus.
pub struct SerialConsole(Serial<IrqFdTrigger, NoEvents, ConsoleOutput>);

impl SerialConsole {
    pub fn new(irq: EventFd, output: ConsoleOutput) -> Self {
        SerialConsole(Serial::new(IrqFdTrigger(irq), output))
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.0.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.0.write(offset as u8, data[0]) {
                log::warn!("serial console: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_and_finds_panics() {
        let tail = ConsoleTail::default();
        let mut out = ConsoleOutput::new(None, tail.clone());
        out.write_all(&vec![b'x'; TAIL_BYTES]).unwrap();
        out.write_all(b"\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        assert_eq!(tail.text().len(), TAIL_BYTES);
        assert_eq!(
            tail.panic_message().unwrap(),
            "[ 1.0] Kernel panic - not syncing: Attempted to kill init!"
        );
    }

    #[test]
    fn transmits_bytes_written_to_thr() {
        let tail = ConsoleTail::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(irq, ConsoleOutput::new(None, tail.clone()));
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(tail.text(), "hi");
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
    }
}
