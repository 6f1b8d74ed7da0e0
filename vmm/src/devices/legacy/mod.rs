//! Legacy PC devices on the port-I/O bus: the 8250 console and the i8042 reset line.

pub mod console_log;
pub mod i8042;
pub mod serial;
