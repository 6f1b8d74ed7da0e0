//! nutshell host <-> guest agent API.
//!
//! The service is defined once in `proto/agent.proto` (package
//! `nutshell.agent.v1`, service `Agent`) and compiled by `build.rs` into:
//! * [`agent`]: the protobuf messages (`VersionRequest`, `GuestDetailsResponse`, ...),
//! * [`agent_ttrpc`]: the synchronous ttrpc stubs: the `Agent` trait the guest
//!   implements, `create_agent()` to register it with a `ttrpc::Server`, and
//!   the raw `AgentClient`.
//!
//! With the `client` feature (default), [`client::AgentClient`] wraps the raw
//! stub with the hybrid vsock handshake and per-call timeouts for the host.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub use generated::{agent, agent_ttrpc};

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "client")]
pub use client::{AgentClient, ClientError};

/// Guest vsock port the agent's ttrpc server listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Guest vsock port for stdio streams (one connection per stream; see
/// `StdioAttach` in `proto/agent.proto`).
pub const STDIO_VSOCK_PORT: u32 = 1025;

/// The agent's one-byte answer to a `StdioAttach`, sent before any stream data: the host
/// knows the stream is wired (or why not) before it writes stdin or issues `CloseStdin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StdioAttachStatus {
    Attached = 0,
    /// No process with that container id and exec id.
    UnknownProcess = 1,
    /// The stream is attached already, closed, or not wired (stdin false; stderr of a tty).
    Unavailable = 2,
    /// The attach message could not be read.
    Malformed = 3,
}

impl StdioAttachStatus {
    pub fn from_byte(byte: u8) -> Option<StdioAttachStatus> {
        [
            StdioAttachStatus::Attached,
            StdioAttachStatus::UnknownProcess,
            StdioAttachStatus::Unavailable,
            StdioAttachStatus::Malformed,
        ]
        .into_iter()
        .find(|s| *s as u8 == byte)
    }

    pub fn describe(self) -> &'static str {
        match self {
            StdioAttachStatus::Attached => "attached",
            StdioAttachStatus::UnknownProcess => "no such process",
            StdioAttachStatus::Unavailable => {
                "stream attached already, closed, or not wired for this process"
            }
            StdioAttachStatus::Malformed => "malformed attach message",
        }
    }
}

/// Where the agent mounts the pod's virtio-fs share (`nutshell.virtiofs=<tag>` on the kernel
/// command line); the host gives container rootfs and volumes as paths below it. Outside
/// `/run/nutshell`, where the agent keeps per-sandbox scratch by sandbox id.
pub const GUEST_SHARE_MOUNT_POINT: &str = "/run/nutshell-share";

/// Where the agent mounts a sandbox's guest tmpfs volumes (`GuestTmpfsVolume` in
/// `proto/agent.proto`: emptyDir with `medium: Memory`), one directory per sandbox id:
/// see [`guest_tmpfs_volume_path`]. Beside the share, not in it: nothing of it is on the host.
pub const GUEST_TMPFS_VOLUMES_DIR: &str = "/run/nutshell-volumes";

/// The guest path of tmpfs volume `name` of sandbox `sandbox_id`:
/// `/run/nutshell-volumes/<sandbox_id>/<name>`; `None` when either is not an id
/// ([`ID_RULE`]), since each names one directory.
pub fn guest_tmpfs_volume_path(sandbox_id: &str, name: &str) -> Option<String> {
    (is_valid_id(sandbox_id) && is_valid_id(name))
        .then(|| format!("{GUEST_TMPFS_VOLUMES_DIR}/{sandbox_id}/{name}"))
}

/// Every capability of the guest kernel (Linux 6.1) by number (`CAP_CHOWN` is 0): what a
/// privileged container gets, and how the agent turns names into bits.
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the agent accepts as a sandbox, container or exec id.
pub const ID_RULE: &str = "1-128 of A-Z, a-z, 0-9, '.', '_' and '-', not '.' or '..'";

/// Whether `value` is a valid id ([`ID_RULE`]): it names a directory in the guest, so it must
/// be one path component.
pub fn is_valid_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value != "."
        && value != ".."
}

/// Version of the API in `proto/agent.proto`, reported by `Version`.
/// Bump on incompatible changes only; additive changes keep it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Fully qualified ttrpc service name, as it appears on the wire.
pub const AGENT_SERVICE_NAME: &str = "nutshell.agent.v1.Agent";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_volume_paths_are_one_component_each() {
        assert_eq!(
            guest_tmpfs_volume_path("demo", "cache").as_deref(),
            Some("/run/nutshell-volumes/demo/cache")
        );
        for (sandbox, name) in [("demo", ".."), ("demo", "a/b"), ("", "cache"), ("..", "x")] {
            assert_eq!(
                guest_tmpfs_volume_path(sandbox, name),
                None,
                "{sandbox:?} {name:?}"
            );
        }
        assert!(!GUEST_TMPFS_VOLUMES_DIR.starts_with(GUEST_SHARE_MOUNT_POINT));
    }
}
