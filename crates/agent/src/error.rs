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
    /// No valid token came with a request that needs one.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller sent too many requests too fast.
    #[error("{0}")]
    RateLimited(String),
    /// No live token has this id.
    #[error("no live token with id {0}; `shg token list` shows them")]
    NoToken(i64),
    /// No trust rule has this key id.
    #[error("no trusted key has id `{0}`; `shg trust list` shows them")]
    NoTrust(String),
    /// Anything else: a bug or a host failure.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        AgentError::Internal(format!("{}: {e}", path.display()))
    }

    /// The stable code the API reports.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::NotFound(_) => "not-found",
            AgentError::Exists(_) => "conflict",
            AgentError::BadPackage(_) => "bad-package",
            AgentError::Untrusted(_) => "untrusted-package",
            AgentError::BadManifest(_) => "bad-manifest",
            AgentError::BadRequest(_) => "bad-request",
            AgentError::Conflict(_) => "conflict",
            AgentError::Busy(_) => "unavailable",
            AgentError::Refused(_) => "admission-refused",
            AgentError::StartFailed(_) => "start-failed",
            AgentError::Forbidden(_) => "forbidden",
            AgentError::Unauthorized(_) => "unauthorized",
            AgentError::RateLimited(_) => "rate-limited",
            AgentError::NoToken(_) | AgentError::NoTrust(_) => "not-found",
            AgentError::Internal(_) => "internal",
        }
    }
}

impl From<state::StateError> for AgentError {
    fn from(e: state::StateError) -> Self {
        match e {
            state::StateError::NotFound(name) => AgentError::NotFound(name),
            state::StateError::Exists(name) => AgentError::Exists(name),
            state::StateError::Db { .. } => AgentError::Internal(e.to_string()),
        }
    }
}

impl From<runtime::RuntimeError> for AgentError {
    fn from(e: runtime::RuntimeError) -> Self {
        AgentError::Internal(e.to_string())
    }
}
