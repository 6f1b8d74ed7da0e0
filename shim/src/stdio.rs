//! containerd's stdio for a process (FIFO paths, or `file://` URIs) proxied to the agent's
//! stdio streams, one thread per stream.
//!
//! Output: the agent holds a process's output until its stream attaches and closes the
//! stream only once the process side reached EOF, so joining the output copiers after the
//! process exited means every byte is in containerd's FIFO: the exit is reported after that.
//!
//! Input: the stdin FIFO is opened read-write, so that opening never blocks and a client
//! closing its end is not taken for EOF: as with runc's shim, EOF is `CloseIO` (or the
//! process's exit), after which the copier forwards what is left in the FIFO and shuts the
//! stream's write side (EOF for the process after the last byte).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nutshell_protocol::agent::StdioStream;
use nutshell_protocol::client::attach_stdio;

use crate::error::{Result, ShimError};

/// How long attaching one stream may take.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// A process's stdio as containerd gives it; empty means none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Opens an output destination: a FIFO read-write (never blocks, never EPIPE), a `file://`
/// URI or a plain file for appending.
fn open_output(uri: &str) -> Result<File> {
    if uri.starts_with("binary://") {
        return Err(ShimError::Unimplemented(format!(
            "binary:// logging ({uri}) is not supported by the nutshell shim"
        )));
    }
    let path = Path::new(uri.strip_prefix("file://").unwrap_or(uri));
    let is_fifo = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo());
    let mut options = OpenOptions::new();
    if is_fifo {
        options.read(true).write(true);
    } else {
        options.create(true).append(true);
    }
    options
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(ShimError::io("open", path))
}

/// The stdio proxies of one running process.
pub struct Attached {
    outputs: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
    stdin_closed: Arc<AtomicBool>,
}

impl Attached {
    /// Attaches the process's streams through the VM's vsock socket `uds` and starts copying.
    /// `stdin_closed` may already be set (CloseIO before start).
    pub fn attach(
        uds: &Path,
        container: &str,
        exec: &str,
        paths: &StdioPaths,
        stdin_closed: Arc<AtomicBool>,
    ) -> Result<Attached> {
        let attach = |stream| {
            attach_stdio(uds, container, exec, stream, ATTACH_TIMEOUT).map_err(|e| {
                ShimError::agent(format!("attach {stream:?} of {container}/{exec}"), e)
            })
        };
        let mut outputs = Vec::new();
        let mut streams = vec![(StdioStream::STDOUT, &paths.stdout)];
        if !paths.terminal {
            streams.push((StdioStream::STDERR, &paths.stderr));
        }
        for (stream, uri) in streams {
            if uri.is_empty() {
                continue;
            }
            let sink = open_output(uri)?;
            let source = attach(stream)?;
            outputs.push(std::thread::spawn(move || copy_output(source, sink)));
        }
        let input = if paths.stdin.is_empty() {
            None
        } else {
            let fifo = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&paths.stdin)
                .map_err(ShimError::io("open", &paths.stdin))?;
            let sink = attach(StdioStream::STDIN)?;
            let closed = stdin_closed.clone();
            Some(std::thread::spawn(move || copy_input(fifo, sink, &closed)))
        };
        Ok(Attached {
            outputs,
            input,
            stdin_closed,
        })
    }

    /// Waits until every output byte is in containerd's hands, and stops the stdin copier.
    pub fn finish(self) {
        for copier in self.outputs {
            let _ = copier.join();
        }
        self.stdin_closed.store(true, Ordering::SeqCst);
        if let Some(input) = self.input {
            let _ = input.join();
        }
    }
}

fn copy_output(mut source: UnixStream, mut sink: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = sink.write_all(&buf[..n]) {
                    log::warn!("stdio copy: {e}");
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("stdio stream: {e}");
                break;
            }
        }
    }
}

/// Copies the stdin FIFO into the stream until `closed` is set and the FIFO is drained.
fn copy_input(mut fifo: File, mut sink: UnixStream, closed: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    'copy: loop {
        let closing = closed.load(Ordering::SeqCst);
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        let timeout = if closing { 0u16 } else { 100 };
        match poll(&mut fds, PollTimeout::from(timeout)) {
            Ok(0) if closing => break,
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::warn!("stdin poll: {e}");
                break;
            }
        }
        loop {
            match fifo.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if sink.write_all(&buf[..n]).is_err() {
                        // The process is gone; nothing more to deliver.
                        break 'copy;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("stdin read: {e}");
                    break 'copy;
                }
            }
        }
    }
    let _ = sink.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn output_reaches_a_fifo_and_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("out");
        mkfifo(&fifo);
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let (mut guest, shim) = UnixStream::pair().unwrap();
        let sink = open_output(fifo.to_str().unwrap()).unwrap();
        let copier = std::thread::spawn(move || copy_output(shim, sink));
        guest.write_all(b"hi\n").unwrap();
        drop(guest);
        copier.join().unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hi\n");

        let file = tmp.path().join("log");
        let uri = format!("file://{}", file.display());
        open_output(&uri).unwrap().write_all(b"a").unwrap();
        open_output(&uri).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ab");
        assert!(matches!(
            open_output("binary:///bin/logger"),
            Err(ShimError::Unimplemented(_))
        ));
    }

    #[test]
    fn stdin_ends_after_close_with_everything_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("in");
        mkfifo(&path);
        let fifo = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let (mut guest, shim) = UnixStream::pair().unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let copier = std::thread::spawn(move || copy_input(fifo, shim, &flag));
        let mut client = OpenOptions::new().write(true).open(&path).unwrap();
        client.write_all(b"line one\n").unwrap();
        // The client closing its end is not EOF...
        drop(client);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!copier.is_finished());
        // ...CloseIO is, after what was written.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        closed.store(true, Ordering::SeqCst);
        copier.join().unwrap();
        let mut text = String::new();
        guest.read_to_string(&mut text).unwrap();
        assert_eq!(text, "line one\ntwo\n");
    }
}
