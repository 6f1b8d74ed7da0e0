//! The stdio stream server: every connection to STDIO_VSOCK_PORT starts with a big-endian u32
//! length and a `StdioAttach`, then carries raw bytes (host to guest for STDIN, guest to host
//! for STDOUT and STDERR). One thread per connection copies; an output stream is shut down
//! once the process side reached EOF, so every byte the process wrote arrives first.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};
use nutshell_protocol::agent::{StdioAttach, StdioStream};
use nutshell_protocol::StdioAttachStatus;
use protobuf::Message;

use super::{ProcessStdio, StdioHub};

/// Longest attach message accepted.
const MAX_ATTACH_LEN: usize = 64 * 1024;
/// How long a connection may take to send its attach message.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// A stdin stream with CloseStdin pending closes after this long without data.
const STDIN_IDLE_CLOSE_MS: u16 = 100;
const COPY_BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StdioServerError {
    #[error("cannot listen for stdio on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the stdio accept thread")]
    Thread(#[source] std::io::Error),
}

/// Where the stdio server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StdioAddress {
    /// Any CID, this port.
    Vsock(u32),
    /// A Unix socket path (an agent run on a developer host).
    Unix(String),
}

impl StdioAddress {
    /// The stdio address going with the ttrpc address: vsock port `port` for a vsock agent,
    /// `<path>.stdio` for `unix://<path>`.
    pub fn for_agent(listen_address: &str, port: u32) -> StdioAddress {
        match listen_address.strip_prefix("unix://") {
            Some(path) => StdioAddress::Unix(format!("{path}.stdio")),
            None => StdioAddress::Vsock(port),
        }
    }
}

enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

fn io_error(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn bind(address: &StdioAddress) -> std::io::Result<Listener> {
    match address {
        StdioAddress::Vsock(port) => {
            let fd = socket::socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(io_error)?;
            socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, *port))
                .map_err(io_error)?;
            let backlog = Backlog::new(64).map_err(io_error)?;
            socket::listen(&fd, backlog).map_err(io_error)?;
            Ok(Listener::Vsock(fd))
        }
        StdioAddress::Unix(path) => {
            let _ = std::fs::remove_file(path);
            UnixListener::bind(path).map(Listener::Unix)
        }
    }
}

impl Listener {
    fn accept(&self) -> std::io::Result<OwnedFd> {
        match self {
            Listener::Vsock(fd) => {
                let conn =
                    socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(io_error)?;
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(conn) })
            }
            Listener::Unix(listener) => listener.accept().map(|(s, _)| OwnedFd::from(s)),
        }
    }
}

/// Binds `address` and serves attaches from `hub` on a thread of its own.
pub fn start(address: &StdioAddress, hub: Arc<StdioHub>) -> Result<(), StdioServerError> {
    let listener = bind(address).map_err(|source| StdioServerError::Listen {
        address: format!("{address:?}"),
        source,
    })?;
    thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok(conn) => {
                    let hub = hub.clone();
                    let spawned = thread::Builder::new()
                        .name("stdio-stream".into())
                        .spawn(move || serve_connection(conn, &hub));
                    if let Err(e) = spawned {
                        log::warn!("cannot start a stdio stream thread: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("stdio accept failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(StdioServerError::Thread)?;
    Ok(())
}

/// Reads the length-prefixed attach message.
pub fn read_attach(conn: &mut impl Read) -> std::io::Result<StdioAttach> {
    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_ATTACH_LEN {
        return Err(std::io::Error::other(format!(
            "StdioAttach of {len} bytes is too long"
        )));
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body)?;
    StdioAttach::parse_from_bytes(&body).map_err(std::io::Error::other)
}

fn serve_connection(conn: OwnedFd, hub: &StdioHub) {
    let timeout = nix::sys::time::TimeVal::new(ATTACH_TIMEOUT.as_secs() as i64, 0);
    let _ = socket::setsockopt(&conn, socket::sockopt::ReceiveTimeout, &timeout);
    let mut conn = File::from(conn);
    let attach = match read_attach(&mut conn) {
        Ok(attach) => attach,
        Err(e) => {
            log::warn!("stdio connection without a valid attach: {e}");
            answer(&mut conn, StdioAttachStatus::Malformed);
            return;
        }
    };
    let _ = socket::setsockopt(
        &conn.as_fd(),
        socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(0, 0),
    );
    let stream = attach.stream.enum_value_or_default();
    let Some(stdio) = hub.get(&attach.container_id, &attach.exec_id) else {
        log::warn!(
            "stdio attach for unknown process {:?}/{:?}",
            attach.container_id,
            attach.exec_id
        );
        answer(&mut conn, StdioAttachStatus::UnknownProcess);
        return;
    };
    let end = match stream {
        StdioStream::STDIN => stdio.take_stdin(),
        StdioStream::STDOUT => stdio.take_stdout(),
        StdioStream::STDERR => stdio.take_stderr(),
    };
    let Some(end) = end else {
        log::warn!(
            "stdio {stream:?} of {:?}/{:?}: not available (attached already, closed, or not wired)",
            attach.container_id,
            attach.exec_id
        );
        answer(&mut conn, StdioAttachStatus::Unavailable);
        return;
    };
    // The host starts writing stdin (or relies on the stream for output) only after this.
    if !answer(&mut conn, StdioAttachStatus::Attached) {
        return;
    }
    match stream {
        StdioStream::STDIN => copy_stdin(conn, end, &stdio),
        _ => copy_output(end, conn),
    }
}

/// Sends the attach answer; false when the host is gone already.
fn answer(conn: &mut File, status: StdioAttachStatus) -> bool {
    conn.write_all(&[status as u8]).is_ok()
}

/// Process output to the stream until the process side's EOF (a pty reports EIO when the
/// last follower closed), then shuts the stream down.
fn copy_output(from: OwnedFd, mut to: File) {
    let mut from = File::from(from);
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => {
                log::warn!("stdio output read failed: {e}");
                break;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            log::warn!("stdio output stream closed by the host: {e}");
            return;
        }
    }
    let _ = socket::shutdown(to.as_raw_fd(), socket::Shutdown::Write);
}

/// The stream to the process's stdin until the host closes it, or CloseStdin was asked and
/// nothing more arrives; then the pipe closes (EOF to the process).
fn copy_stdin(mut from: File, to: OwnedFd, stdio: &ProcessStdio) {
    let mut to = File::from(to);
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let readable = {
            let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(STDIN_IDLE_CLOSE_MS)) {
                Ok(0) => false,
                Ok(_) => true,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("stdin stream poll failed: {e}");
                    break;
                }
            }
        };
        if !readable {
            if stdio.close_stdin_requested() {
                break;
            }
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            break; // the process closed its stdin
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_frames_parse() {
        let mut msg = StdioAttach::new();
        msg.container_id = "app".into();
        msg.exec_id = "e1".into();
        msg.stream = StdioStream::STDERR.into();
        let body = msg.write_to_bytes().unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b"raw bytes after");
        let mut cursor = std::io::Cursor::new(frame);
        let parsed = read_attach(&mut cursor).unwrap();
        assert_eq!(parsed.container_id, "app");
        assert_eq!(parsed.stream.enum_value_or_default(), StdioStream::STDERR);
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "raw bytes after");
        let mut huge = std::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(read_attach(&mut huge).is_err());
    }

    #[test]
    fn addresses_follow_the_agent_address() {
        assert_eq!(
            StdioAddress::for_agent("vsock://-1:1024", 1025),
            StdioAddress::Vsock(1025)
        );
        assert_eq!(
            StdioAddress::for_agent("unix:///tmp/a.sock", 1025),
            StdioAddress::Unix("/tmp/a.sock.stdio".into())
        );
    }

    #[test]
    fn output_arrives_whole_then_the_stream_closes() {
        let hub = StdioHub::new();
        let (stdio, child) = super::super::create(false, true).unwrap();
        hub.register("c", "", stdio.clone());
        let (mut host, agent_side) = std::os::unix::net::UnixStream::pair().unwrap();
        let stdout = stdio.take_stdout().unwrap();
        let copier =
            thread::spawn(move || copy_output(stdout, File::from(OwnedFd::from(agent_side))));
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let payload = payload.clone();
            let out = child.stdout.try_clone().unwrap();
            thread::spawn(move || File::from(out).write_all(&payload).unwrap())
        };
        drop(child);
        // Read while the writer writes: the socket buffer is far smaller than the payload.
        let mut received = Vec::new();
        host.read_to_end(&mut received).unwrap();
        writer.join().unwrap();
        copier.join().unwrap();
        assert_eq!(received.len(), payload.len());
        assert!(received == payload);
    }

    #[test]
    fn close_stdin_ends_an_attached_stream_once_idle() {
        let (stdio, child) = super::super::create(false, true).unwrap();
        let (mut host, agent_side) = std::os::unix::net::UnixStream::pair().unwrap();
        let stdin = stdio.take_stdin().unwrap();
        let copier = {
            let stdio = stdio.clone();
            thread::spawn(move || copy_stdin(File::from(OwnedFd::from(agent_side)), stdin, &stdio))
        };
        host.write_all(b"hello").unwrap();
        stdio.close_stdin();
        let mut got = Vec::new();
        File::from(child.stdin.try_clone().unwrap())
            .read_to_end(&mut got)
            .ok();
        // read_to_end returns once every write end is closed: the copier's (after the idle
        // window) and none other (the child's stdin is the read end).
        copier.join().unwrap();
        assert_eq!(got, b"hello");
    }
}
