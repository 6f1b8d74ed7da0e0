//! Calls the guest agent once and prints the reply; a developer tool.
//!
//! ```text
//! agent_call --hybrid-vsock <VMM_VSOCK_SOCKET> <version|guest-details|shutdown>
//! agent_call --unix <AGENT_SOCKET> <version|guest-details|shutdown>
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use protobuf::text_format::print_to_string_pretty;

use nutshell_protocol::{AgentClient, ClientError, AGENT_VSOCK_PORT};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const USAGE: &str =
    "usage: agent_call (--hybrid-vsock|--unix) <SOCKET> <version|guest-details|shutdown>";

fn call(transport: &str, socket: &Path, method: &str) -> Result<String, ClientError> {
    let client = match transport {
        "--hybrid-vsock" => {
            AgentClient::connect_hybrid_vsock(socket, AGENT_VSOCK_PORT, CONNECT_TIMEOUT)?
        }
        _ => AgentClient::connect_unix(socket)?,
    };
    Ok(match method {
        "version" => print_to_string_pretty(&client.version(CALL_TIMEOUT)?),
        "guest-details" => print_to_string_pretty(&client.guest_details(CALL_TIMEOUT)?),
        _ => {
            client.shutdown(CALL_TIMEOUT)?;
            "shutdown accepted".to_owned()
        }
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [transport, socket, method] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let known_transport = matches!(transport.as_str(), "--hybrid-vsock" | "--unix");
    let known_method = matches!(method.as_str(), "version" | "guest-details" | "shutdown");
    if !known_transport || !known_method {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match call(transport, Path::new(socket), method) {
        Ok(reply) => {
            println!("{reply}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("agent_call: {err}");
            ExitCode::FAILURE
        }
    }
}
