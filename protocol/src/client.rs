//! Host-side client of the guest agent.
//!
//! The VMM exposes the guest's vsock as a Unix socket ("hybrid vsock", as in
//! Firecracker and Cloud Hypervisor): the host connects, writes
//! `CONNECT <port>\n` and, once the guest accepted, reads `OK <host_port>\n`.
//! From then on the stream is the guest connection, on which we speak ttrpc.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::agent::{
    Empty, GuestDetailsRequest, GuestDetailsResponse, ShutdownRequest, VersionRequest,
    VersionResponse,
};
use crate::agent_ttrpc;

/// Longest handshake reply accepted; a real one is `OK 1073741824\n`.
const MAX_HANDSHAKE_REPLY_LEN: usize = 64;
/// First pause between connection attempts; doubles up to the maximum.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(10);
const MAX_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Errors of [`AgentClient`].
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket never completed the handshake within the connect timeout.
    #[error(
        "no agent on vsock port {port} via {path} after {attempts} attempt(s) in {waited:?}: {last_failure}"
    )]
    ConnectTimeout {
        path: PathBuf,
        port: u32,
        attempts: u32,
        waited: Duration,
        last_failure: String,
    },
    /// The socket answered the handshake with something other than `OK <port>`.
    #[error("{path} answered `CONNECT {port}` with {reply:?}, expected \"OK <host port>\\n\"")]
    HandshakeRejected {
        path: PathBuf,
        port: u32,
        reply: String,
    },
    /// Connecting to a plain ttrpc Unix socket failed.
    #[error("cannot connect to agent socket {path}")]
    UnixConnect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Wrapping the connected socket into a ttrpc client failed.
    #[error("cannot set up ttrpc client")]
    TtrpcSetup(#[source] ttrpc::Error),
    /// An agent call failed: transport error, timeout or error status.
    #[error("agent call {method} failed")]
    Call {
        method: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    /// Writing the StdioAttach frame of a stdio stream failed.
    #[error("cannot attach stdio stream")]
    StdioAttach(#[source] std::io::Error),
    /// The agent refused a stdio attach.
    #[error("stdio {stream:?} of {container_id:?}/{exec_id:?}: {reason}")]
    StdioRefused {
        container_id: String,
        exec_id: String,
        stream: crate::agent::StdioStream,
        reason: String,
    },
}

impl ClientError {
    /// The ttrpc status code of a call that the agent answered with an
    /// error status; `None` for transport, timeout and setup failures.
    pub fn code(&self) -> Option<ttrpc::Code> {
        match self {
            ClientError::Call {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => Some(status.code()),
            _ => None,
        }
    }

    /// The agent's error message, when it answered with an error status.
    pub fn status_message(&self) -> Option<&str> {
        match self {
            ClientError::Call {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => Some(status.message()),
            _ => None,
        }
    }
}

/// Why one handshake attempt failed.
#[derive(Debug)]
enum HandshakeFailure {
    /// Worth retrying until the deadline (socket missing, guest not listening yet).
    Transient(String),
    /// The deadline passed while waiting for the reply.
    DeadlineReached(String),
    /// The peer speaks another protocol; retrying will not help.
    Rejected(String),
}

/// Typed, synchronous client of the guest agent's `Agent` service.
#[derive(Clone)]
pub struct AgentClient {
    stub: agent_ttrpc::AgentClient,
}

impl AgentClient {
    /// Connects to guest vsock `port` through the VMM's hybrid vsock Unix
    /// socket at `uds_path`, retrying the whole connect + handshake until
    /// `timeout` has passed (the VMM or the guest agent may not be up yet).
    pub fn connect_hybrid_vsock(
        uds_path: &Path,
        port: u32,
        timeout: Duration,
    ) -> Result<AgentClient, ClientError> {
        let stream = hybrid_vsock_handshake(uds_path, port, timeout)?;
        Self::from_stream(stream)
    }

    /// Connects to an agent serving ttrpc directly on a Unix socket (no
    /// handshake), e.g. `nutshell-agent --listen unix:///tmp/agent.sock`.
    pub fn connect_unix(path: &Path) -> Result<AgentClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::UnixConnect {
            path: path.to_owned(),
            source,
        })?;
        Self::from_stream(stream)
    }

    /// Wraps an already connected stream that speaks ttrpc.
    pub fn from_stream(stream: UnixStream) -> Result<AgentClient, ClientError> {
        // ttrpc takes ownership of the fd and closes it when the client drops.
        let client = ttrpc::Client::new(stream.into_raw_fd()).map_err(ClientError::TtrpcSetup)?;
        Ok(AgentClient {
            stub: agent_ttrpc::AgentClient::new(client),
        })
    }

    /// Agent, protocol and guest kernel versions.
    pub fn version(&self, timeout: Duration) -> Result<VersionResponse, ClientError> {
        self.stub
            .version(call_context(timeout), &VersionRequest::new())
            .map_err(|source| ClientError::Call {
                method: "Version",
                source,
            })
    }

    /// Guest resources, cgroup controllers and namespace support.
    pub fn guest_details(&self, timeout: Duration) -> Result<GuestDetailsResponse, ClientError> {
        self.stub
            .guest_details(call_context(timeout), &GuestDetailsRequest::new())
            .map_err(|source| ClientError::Call {
                method: "GuestDetails",
                source,
            })
    }

    /// Asks the agent to power the VM off. The agent replies before it syncs
    /// and powers off, so `Ok` means "accepted"; wait for the VMM to exit to
    /// know that it happened.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), ClientError> {
        self.stub
            .shutdown(call_context(timeout), &ShutdownRequest::new())
            .map(|_: Empty| ())
            .map_err(|source| ClientError::Call {
                method: "Shutdown",
                source,
            })
    }
}

fn call_context(timeout: Duration) -> ttrpc::context::Context {
    // ttrpc treats 0 as "no timeout"; never turn a tiny timeout into that.
    let nanos = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX).max(1);
    ttrpc::context::with_timeout(nanos)
}

/// Retries [`try_handshake`] until it succeeds, is rejected, or `timeout` ends.
fn hybrid_vsock_handshake(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, ClientError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0;
    let mut retry_delay = FIRST_RETRY_DELAY;
    // Failure of the last attempt that ran to completion: more telling than
    // an attempt cut short by the deadline.
    let mut last_failure = None;
    loop {
        attempts += 1;
        match try_handshake(uds_path, port, deadline) {
            Ok(stream) => return Ok(stream),
            Err(HandshakeFailure::Rejected(reply)) => {
                return Err(ClientError::HandshakeRejected {
                    path: uds_path.to_owned(),
                    port,
                    reply,
                })
            }
            Err(HandshakeFailure::Transient(why)) => last_failure = Some(why),
            Err(HandshakeFailure::DeadlineReached(why)) => {
                last_failure = last_failure.or(Some(why));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::ConnectTimeout {
                path: uds_path.to_owned(),
                port,
                attempts,
                waited: now - start,
                last_failure: last_failure.unwrap_or_default(),
            });
        }
        thread::sleep(retry_delay.min(deadline - now));
        retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// One connect + `CONNECT <port>` + `OK <host_port>` exchange.
fn try_handshake(
    uds_path: &Path,
    port: u32,
    deadline: Instant,
) -> Result<UnixStream, HandshakeFailure> {
    let transient = |what: &str, err: std::io::Error| {
        HandshakeFailure::Transient(format!("{what} {}: {err}", uds_path.display()))
    };
    let mut stream = UnixStream::connect(uds_path).map_err(|e| transient("connect to", e))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| transient("write CONNECT to", e))?;

    let reply = read_reply_line(&mut stream, deadline)?;
    parse_handshake_reply(&reply).map_err(|()| HandshakeFailure::Rejected(reply))?;

    stream
        .set_read_timeout(None)
        .map_err(|e| transient("clear read timeout on", e))?;
    Ok(stream)
}

/// Reads up to and including `\n`, one byte at a time so that nothing after
/// the handshake line is consumed from the socket.
fn read_reply_line(stream: &mut UnixStream, deadline: Instant) -> Result<String, HandshakeFailure> {
    let mut line = Vec::new();
    let received = |line: &[u8]| String::from_utf8_lossy(line).into_owned();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandshakeFailure::DeadlineReached(format!(
                "no handshake reply before the deadline, got {:?}",
                received(&line)
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| HandshakeFailure::Transient(format!("set read timeout: {e}")))?;
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {
                // The VMM closes the socket when nobody listens on the port yet.
                return Err(HandshakeFailure::Transient(format!(
                    "connection closed after {:?} (agent not listening yet?)",
                    received(&line)
                )));
            }
            Ok(_) if byte[0] == b'\n' => return Ok(received(&line)),
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_HANDSHAKE_REPLY_LEN {
                    return Err(HandshakeFailure::Rejected(received(&line)));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                return Err(HandshakeFailure::Transient(format!(
                    "reading handshake reply after {:?}: {e}",
                    received(&line)
                )))
            }
        }
    }
}

/// Parses `OK <host_port>` (without the newline) into the host port.
fn parse_handshake_reply(line: &str) -> Result<u32, ()> {
    let port = line.strip_prefix("OK ").ok_or(())?;
    port.trim_end_matches('\r').parse().map_err(|_| ())
}

mod calls;

pub use calls::{attach_stdio, encode_stdio_attach, write_stdio_attach, MAX_STDIO_ATTACH_LEN};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_stdio;
