//! The one error type of this crate. Every variant names the manifest field it is about as a
//! path (`spec.containers[1].livenessProbe`), so a user can find it in the YAML.

use std::fmt;

/// Why a manifest was rejected or could not be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodSpecError {
    /// YAML syntax, or a value of the wrong type.
    #[error("{}: {message}{}", Root(path), Line(*line))]
    Parse {
        path: String,
        message: String,
        line: Option<usize>,
    },
    /// A Kubernetes field nutshell does not implement.
    #[error("{}: not supported by nutshell{}", Root(path), Line(*line))]
    Unsupported { path: String, line: Option<usize> },
    /// A field that is not part of the Kubernetes API (a typo?).
    #[error("{}: unknown field (expected {expected}){}", Root(path), Line(*line))]
    UnknownField {
        path: String,
        expected: String,
        line: Option<usize>,
    },
    /// A field whose value breaks a rule (validation or conversion).
    #[error("{}: {reason}", Root(path))]
    Invalid { path: String, reason: String },
}

impl PodSpecError {
    /// The field path the error is about ("" for the whole document).
    pub fn path(&self) -> &str {
        match self {
            PodSpecError::Parse { path, .. }
            | PodSpecError::Unsupported { path, .. }
            | PodSpecError::UnknownField { path, .. }
            | PodSpecError::Invalid { path, .. } => path,
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        PodSpecError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<String>) -> Self {
        PodSpecError::Unsupported {
            path: path.into(),
            line: None,
        }
    }
}

/// A path, or "(document)" for the root.
struct Root<'a>(&'a str);

impl fmt::Display for Root<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(document)")
        } else {
            f.write_str(self.0)
        }
    }
}

/// " (line N)" where the YAML parser knows it.
struct Line(Option<usize>);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, " (line {line})"),
            None => Ok(()),
        }
    }
}
