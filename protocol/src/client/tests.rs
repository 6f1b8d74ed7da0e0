//! Tests of the hybrid vsock handshake against fake VMM sockets, and of the
//! typed calls against a fake agent behind such a socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::agent_ttrpc::{create_agent, Agent};

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

/// Reads the `CONNECT <port>` line a client sends to the fake VMM socket.
fn read_connect_line(stream: &UnixStream) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// Fake VMM socket answering every connection with `reply`, then closing it.
fn spawn_fake_vmm_with_reply(listener: UnixListener, reply: &'static str) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let _ = read_connect_line(&stream);
            let _ = stream.write_all(reply.as_bytes());
        }
    });
}

struct FakeAgent;

impl Agent for FakeAgent {
    fn version(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        let mut response = VersionResponse::new();
        response.agent_version = "fake-1.2.3".into();
        response.protocol_version = crate::PROTOCOL_VERSION;
        response.kernel_release = "6.1.0-fake".into();
        Ok(response)
    }

    fn guest_details(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        _req: GuestDetailsRequest,
    ) -> ttrpc::Result<GuestDetailsResponse> {
        // Slower than the per-call timeout used in the test below.
        thread::sleep(Duration::from_millis(500));
        Ok(GuestDetailsResponse::new())
    }

    fn shutdown(&self, _ctx: &ttrpc::TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        Ok(Empty::new())
    }
}

/// Copies bytes both ways between two streams until either side closes.
fn splice(a: UnixStream, b: UnixStream) {
    let (mut a_read, mut b_write) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    thread::spawn(move || {
        let _ = io::copy(&mut a_read, &mut b_write);
        let _ = b_write.shutdown(std::net::Shutdown::Write);
    });
    let (mut b_read, mut a_write) = (b, a);
    thread::spawn(move || {
        let _ = io::copy(&mut b_read, &mut a_write);
        let _ = a_write.shutdown(std::net::Shutdown::Write);
    });
}

/// Fake VMM: accepts `CONNECT <port>` for `port` and splices the connection
/// to a ttrpc server running [`FakeAgent`] on its own Unix socket.
fn spawn_fake_vmm_with_agent(dir: &Path, port: u32) -> (PathBuf, ttrpc::Server) {
    let agent_socket = dir.join("agent.sock");
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", agent_socket.display()))
        .unwrap()
        .register_service(create_agent(Arc::new(FakeAgent)));
    server.start().unwrap();

    let vmm_socket = dir.join("vsock.sock");
    let listener = UnixListener::bind(&vmm_socket).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut host_side = stream.unwrap();
            if read_connect_line(&host_side) != format!("CONNECT {port}\n") {
                continue; // closing = "nobody listens on that port"
            }
            let guest_side = UnixStream::connect(&agent_socket).unwrap();
            host_side.write_all(b"OK 1073741824\n").unwrap();
            splice(host_side, guest_side);
        }
    });
    (vmm_socket, server)
}

#[test]
fn handshake_then_typed_calls_reach_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (vmm_socket, _server) = spawn_fake_vmm_with_agent(dir.path(), crate::AGENT_VSOCK_PORT);

    let client =
        AgentClient::connect_hybrid_vsock(&vmm_socket, crate::AGENT_VSOCK_PORT, LONG).unwrap();

    let version = client.version(LONG).unwrap();
    assert_eq!(version.agent_version, "fake-1.2.3");
    assert_eq!(version.protocol_version, crate::PROTOCOL_VERSION);
    assert_eq!(version.kernel_release, "6.1.0-fake");
    client.shutdown(LONG).unwrap();
}

#[test]
fn call_slower_than_its_timeout_fails_with_method_name() {
    let dir = tempfile::tempdir().unwrap();
    let (vmm_socket, _server) = spawn_fake_vmm_with_agent(dir.path(), crate::AGENT_VSOCK_PORT);
    let client =
        AgentClient::connect_hybrid_vsock(&vmm_socket, crate::AGENT_VSOCK_PORT, LONG).unwrap();

    let err = client.guest_details(Duration::from_millis(50)).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Call {
                method: "GuestDetails",
                ..
            }
        ),
        "{err}"
    );
    // The connection stays usable after a timed-out call.
    client.version(LONG).unwrap();
}

#[test]
fn garbage_reply_is_rejected_at_once_naming_path_and_reply() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    spawn_fake_vmm_with_reply(UnixListener::bind(&path).unwrap(), "HELLO there\n");

    let start = Instant::now();
    let err = AgentClient::connect_hybrid_vsock(&path, 1024, LONG)
        .err()
        .expect("garbage must not connect");
    assert!(
        start.elapsed() < LONG / 2,
        "rejection must not wait for the timeout"
    );
    assert!(
        matches!(&err, ClientError::HandshakeRejected { reply, .. } if reply == "HELLO there"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("HELLO there"), "{message}");
}

#[test]
fn overlong_reply_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let reply: &'static str = "x".repeat(1000).leak();
    spawn_fake_vmm_with_reply(UnixListener::bind(&path).unwrap(), reply);

    let err = AgentClient::connect_hybrid_vsock(&path, 1024, LONG)
        .err()
        .expect("must not connect");
    assert!(
        matches!(err, ClientError::HandshakeRejected { .. }),
        "{err:?}"
    );
}

#[test]
fn peer_closing_without_reply_is_retried_until_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    // Like a VMM whose guest is not listening on the port yet.
    spawn_fake_vmm_with_reply(UnixListener::bind(&path).unwrap(), "");

    let start = Instant::now();
    let err = AgentClient::connect_hybrid_vsock(&path, 1024, SHORT)
        .err()
        .expect("must time out");
    assert!(start.elapsed() >= SHORT);
    match &err {
        ClientError::ConnectTimeout { attempts, .. } => assert!(*attempts > 1, "{err}"),
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("connection closed"), "{message}");
}

#[test]
fn missing_socket_is_retried_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let listener_path = path.clone();
    let late_listener = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        spawn_fake_vmm_with_reply(UnixListener::bind(&listener_path).unwrap(), "OK 77\n");
    });

    let stream = hybrid_vsock_handshake(&path, 1024, LONG).unwrap();
    drop(stream);
    late_listener.join().unwrap();
}

#[test]
fn missing_socket_times_out_naming_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.sock");
    let err = AgentClient::connect_hybrid_vsock(&path, 1024, SHORT)
        .err()
        .expect("must time out");
    let message = err.to_string();
    assert!(message.contains("never.sock"), "{message}");
    assert!(message.contains("port 1024"), "{message}");
}

#[test]
fn handshake_reply_parsing() {
    assert_eq!(parse_handshake_reply("OK 1073741824"), Ok(1_073_741_824));
    assert_eq!(parse_handshake_reply("OK 5\r"), Ok(5));
    assert_eq!(parse_handshake_reply("OK"), Err(()));
    assert_eq!(parse_handshake_reply("OK x"), Err(()));
    assert_eq!(parse_handshake_reply("ok 5"), Err(()));
    assert_eq!(parse_handshake_reply(""), Err(()));
}

#[test]
fn tiny_timeouts_do_not_become_infinite() {
    assert_eq!(call_context(Duration::ZERO).timeout_nano, 1);
    assert_eq!(
        call_context(Duration::from_secs(2)).timeout_nano,
        2_000_000_000
    );
}
