//! The stdio attach framing, against a fake hybrid vsock socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::Duration;

use protobuf::Message;

use super::{attach_stdio, encode_stdio_attach, ClientError};
use crate::agent::{StdioAttach, StdioStream};

#[test]
fn frame_is_be_length_then_message() {
    let frame = encode_stdio_attach("app", "exec-1", StdioStream::STDERR).unwrap();
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    let msg = StdioAttach::parse_from_bytes(&frame[4..]).unwrap();
    assert_eq!(msg.container_id, "app");
    assert_eq!(msg.exec_id, "exec-1");
    assert_eq!(msg.stream.enum_value(), Ok(StdioStream::STDERR));
}

#[test]
fn attach_handshakes_on_stdio_port_then_frames_then_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fake_vmm = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(sock.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (&sock).write_all(b"OK 1073741824\n").unwrap();
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        reader.read_exact(&mut body).unwrap();
        (&sock).write_all(&[0]).unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        (line, StdioAttach::parse_from_bytes(&body).unwrap(), rest)
    });
    let mut stream = attach_stdio(
        &path,
        "sidecar",
        "",
        StdioStream::STDIN,
        Duration::from_secs(5),
    )
    .unwrap();
    stream.write_all(b"hello").unwrap();
    drop(stream);
    let (line, msg, rest) = fake_vmm.join().unwrap();
    assert_eq!(line, "CONNECT 1025\n");
    assert_eq!(msg.container_id, "sidecar");
    assert_eq!(msg.exec_id, "");
    assert_eq!(msg.stream.enum_value(), Ok(StdioStream::STDIN));
    assert_eq!(rest, b"hello");
}

#[test]
fn transport_errors_have_no_status_code() {
    let dir = tempfile::tempdir().unwrap();
    let err = attach_stdio(
        &dir.path().join("absent.sock"),
        "c",
        "",
        StdioStream::STDOUT,
        Duration::from_millis(50),
    )
    .unwrap_err();
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert_eq!(err.code(), None);
}

#[test]
fn status_errors_expose_their_code() {
    let err = ClientError::Call {
        method: "StartContainer",
        source: ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "no container \"x\"",
        )),
    };
    assert_eq!(err.code(), Some(ttrpc::Code::NOT_FOUND));
    assert_eq!(err.status_message(), Some("no container \"x\""));
}
