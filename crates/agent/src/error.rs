//! The agent's errors, each one a sentence for the person who caused or can fix it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No such service.
    #[error("no service named `{0}` is installed; `shg ps` lists the installed services")]
    NotFound(String),
    /// The name is taken.
    #[error("a service named `{0}` is already installed; remove it first with `shg remove {0}`")]
    Exists(String),
    /// The package is unreadable, tampered with or unsafe.
    #[error("package refused: {0}")]
    BadPackage(String),
    /// No signature on the package verifies under a key the operator trusts for it.
    #[error("package refused: {0}")]
    Untrusted(String),
    /// The manifest breaks a rule.
    #[error("manifest refused: {0}")]
    BadManifest(String),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request is valid but not in the service's current state.
    #[error("{0}")]
    Conflict(String),
    /// Another agent holds the state directory.
    #[error("{0}")]
    Busy(String),
    /// Admission control refused: a reservation does not fit.
    #[error("{0}")]
    Refused(Box<admission::Refusal>),
    /// The container runtime could not start the service.
    #[error("{0}")]
    StartFailed(String),
    /// The caller may not do this (its realm's rules say why).
    #[error("{0}")]
    Forbidden(String),
    /// No live token has this id.
    #[error("no live token with id {0}; `shg token list` shows them")]
    NoToken(i64),
    /// No trust rule has this key id.
    #[error("no trusted key has id `{0}`; `shg trust list` shows them")]
    NoTrust(String),
    /// A file or directory of the agent's could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The state database failed.
    #[error("the state database: {0}")]
    Store(#[source] state::StateError),
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// Anything else: a bug or a host failure.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        AgentError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }

    /// A failure no caller can act on, kept as its sentence.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        AgentError::Internal(e.to_string())
    }
}

impl From<state::StateError> for AgentError {
    fn from(e: state::StateError) -> Self {
        match e {
            state::StateError::NotFound(name) => AgentError::NotFound(name),
            state::StateError::Exists(name) => AgentError::Exists(name),
            state::StateError::Db { .. } => AgentError::Store(e),
        }
    }
}
