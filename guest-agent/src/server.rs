//! The ttrpc server exposing [`AgentService`], and its orderly stop.

use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use nutshell_protocol::agent_ttrpc::create_agent;
use thiserror::Error;

use crate::api::AgentService;

/// ttrpc address of the agent in the guest: any CID, port `port`.
pub fn vsock_listen_address(port: u32) -> String {
    format!("vsock://-1:{port}")
}

/// Short human description of a listen address for the ready line.
pub fn describe_listen_address(address: &str) -> String {
    match address.strip_prefix("vsock://-1:") {
        Some(port) => format!("vsock port {port}"),
        None => address.to_owned(),
    }
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("cannot start ttrpc server on {address}")]
    Start {
        address: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("cannot remove stale socket {path}")]
    RemoveStaleSocket {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A started ttrpc server; requests are served on ttrpc's own threads.
pub struct AgentServer {
    server: ttrpc::Server,
    address: String,
}

/// Binds `address` (`vsock://<cid>:<port>` or `unix://<path>`) and starts
/// serving `service`.
pub fn start(address: &str, service: AgentService) -> Result<AgentServer, ServerError> {
    if let Some(path) = address.strip_prefix("unix://") {
        remove_stale_unix_socket(path)?;
    }
    let mut server = ttrpc::Server::new()
        .bind(address)
        .map_err(|source| ServerError::Bind {
            address: address.to_owned(),
            source,
        })?
        .register_service(create_agent(Arc::new(service)));
    server.start().map_err(|source| ServerError::Start {
        address: address.to_owned(),
        source,
    })?;
    Ok(AgentServer {
        server,
        address: address.to_owned(),
    })
}

/// A previous agent run on a developer host leaves its socket file behind.
fn remove_stale_unix_socket(path: &str) -> Result<(), ServerError> {
    if path.starts_with('@') || !Path::new(path).exists() {
        return Ok(()); // abstract socket, or nothing to remove
    }
    std::fs::remove_file(path).map_err(|source| ServerError::RemoveStaleSocket {
        path: path.to_owned(),
        source,
    })
}

impl AgentServer {
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Stops accepting, lets replies already produced (e.g. to `Shutdown`)
    /// be written, closes the connections. Gives up waiting after `grace`
    /// (a stuck handler must not keep the VM alive); true if it finished.
    pub fn stop(self, grace: Duration) -> bool {
        let (done_sender, done) = channel();
        let server = self.server;
        let spawned = thread::Builder::new()
            .name("ttrpc-stop".into())
            .spawn(move || {
                server.shutdown();
                let _ = done_sender.send(());
            });
        match spawned {
            Ok(_) => done.recv_timeout(grace).is_ok(),
            Err(err) => {
                log::warn!("cannot start ttrpc stop thread: {err}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_address_listens_on_any_cid() {
        assert_eq!(vsock_listen_address(1024), "vsock://-1:1024");
        assert_eq!(
            describe_listen_address("vsock://-1:1024"),
            "vsock port 1024"
        );
        assert_eq!(
            describe_listen_address("unix:///tmp/a.sock"),
            "unix:///tmp/a.sock"
        );
    }
}
