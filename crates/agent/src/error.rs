//! The agent's errors, each one a sentence for the person who caused or can fix it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No such service.
    #[error("no service named `{0}` is installed; `shg ps` lists the installed services")]
    NotFound(String),
    /// The caller's provider has a service of that name (`PROVIDER/NAME`) already.
    #[error("service `{0}` is already installed; remove it first with `shg remove {0}`")]
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
    /// The service's image layers take more unpacked than its allowance (the storage it
    /// reserves, or its provider's image allowance): refused from their tar headers before
    /// anything was written, or cut off where a layer wrote more than they said.
    #[error("cannot admit `{service}`: {source}")]
    ImageTooLarge {
        service: String,
        #[source]
        source: image::ImageError,
    },
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
    /// The package's image is unreadable, tampered with or unsafe.
    #[error("package refused: {0}")]
    Image(#[source] image::ImageError),
    /// The package's manifest breaks a rule.
    #[error("manifest refused: {0}")]
    Manifest(#[source] manifest::ManifestError),
    /// No signature on the package verifies under a key the operator trusts for it.
    #[error("package refused: {0}")]
    Signature(#[source] trust::TrustError),
    /// The gateway's catalog could not be read and verified (`loading`), or does not list the
    /// package with this digest.
    #[error("{}{source}", if *.loading { "the gateway's catalog refused: " } else { "" })]
    Catalog {
        loading: bool,
        #[source]
        source: Box<catalog::CatalogError>,
    },
    /// A manifest the agent stored itself (`which`: the current or the previous release's)
    /// no longer parses: the database was changed behind the agent's back, or by a newer one.
    #[error("{which} manifest of `{name}`: {source}")]
    StoredManifest {
        which: &'static str,
        name: String,
        #[source]
        source: manifest::ManifestError,
    },
    /// The shared layer store could not be opened.
    #[error("{0}")]
    Layers(#[source] image::ImageError),
    /// The runtime helper (`shg-runtime …`) could not be run at all.
    #[error("cannot run the runtime helper: {0}")]
    Helper(#[source] std::io::Error),
    /// The service network could not be set up or changed.
    #[error("service networking: {0}")]
    Network(#[source] network::NetError),
    /// A task of the agent's panicked or was cancelled.
    #[error("a task of the agent failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// No random token could be made.
    #[error("cannot make a token: {0}")]
    Credential(#[source] realm::CredentialError),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn typed_errors_keep_their_sentence_and_their_source() {
        let bad = manifest::parse("name = 1", "shg-service.toml").unwrap_err();
        let said = bad.to_string();
        let e = AgentError::Manifest(bad);
        assert_eq!(e.to_string(), format!("manifest refused: {said}"));
        assert!(e.source().is_some_and(|s| s.to_string() == said));

        let listed = || catalog::CatalogError::NotListed {
            provider: "acme".into(),
            service: "camera".into(),
            version: "1.0.0".into(),
            digest: "sha256:00".into(),
        };
        let loading = AgentError::Catalog {
            loading: true,
            source: Box::new(listed()),
        };
        assert!(loading
            .to_string()
            .starts_with("the gateway's catalog refused: the catalog does not list `acme/camera`"));
        let admitting = AgentError::Catalog {
            loading: false,
            source: Box::new(listed()),
        };
        assert!(admitting
            .to_string()
            .starts_with("the catalog does not list `acme/camera`"));
        assert!(admitting.source().is_some());

        let helper = AgentError::Helper(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(helper
            .to_string()
            .starts_with("cannot run the runtime helper: No such file or directory"));
        assert!(helper
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT)));
    }
}
