//! The shim's errors, and their ttrpc status codes at the task API edge (containerd turns the
//! codes into its errdefs: NOT_FOUND is "not found", FAILED_PRECONDITION a wrong state...).

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};
use nutshell_runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what} {target}: {errno}")]
    Mount {
        what: &'static str,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("OCI spec {path}: {reason}")]
    Spec { path: PathBuf, reason: String },
    /// An agent call failed; `code` is the agent's status code when it answered one.
    #[error("guest agent: {call}: {message}")]
    Agent {
        call: String,
        code: Option<Code>,
        message: String,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ShimError::Io { what, path, source }
    }

    /// A failed agent call, keeping the agent's status code.
    pub fn agent(call: impl Into<String>, err: nutshell_protocol::ClientError) -> ShimError {
        let message = match err.status_message() {
            Some(m) => m.to_string(),
            None => {
                let mut text = err.to_string();
                let mut source = std::error::Error::source(&err);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                text
            }
        };
        ShimError::Agent {
            call: call.into(),
            code: err.code(),
            message,
        }
    }

    /// The ttrpc code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidArgument(_) | ShimError::Spec { .. } | ShimError::Config { .. } => {
                Code::INVALID_ARGUMENT
            }
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Agent { code: Some(c), .. } => *c,
            ShimError::Agent { code: None, .. } => Code::UNAVAILABLE,
            ShimError::Runtime(RuntimeError::Missing { .. }) => Code::FAILED_PRECONDITION,
            _ => Code::INTERNAL,
        }
    }

    /// The error as a ttrpc status, with the whole cause chain in the message.
    pub fn to_ttrpc(&self) -> ttrpc::Error {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), message))
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        log::warn!("{e}");
        e.to_ttrpc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_reach_containerd() {
        let status = |e: ShimError| match e.to_ttrpc() {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            status(ShimError::Unimplemented("pause".into())).0,
            Code::UNIMPLEMENTED
        );
        assert_eq!(status(ShimError::NotFound("x".into())).0, Code::NOT_FOUND);
        let agent = ShimError::Agent {
            call: "StartContainer c".into(),
            code: Some(Code::FAILED_PRECONDITION),
            message: "already running".into(),
        };
        let (code, message) = status(agent);
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert!(
            message.contains("StartContainer c: already running"),
            "{message}"
        );
        let io = ShimError::io("open", "/x")(std::io::Error::other("boom"));
        let (code, message) = status(io);
        assert_eq!(code, Code::INTERNAL);
        assert_eq!(message, "cannot open /x: boom");
    }
}
