//! Running services as hardened OCI containers: the bundle, the container's init, the
//! libcontainer calls that create, exec into and delete containers, and the read-only
//! overlay of shared layers a container's root can be.

pub mod args;
pub mod container;
pub mod forkserver;
pub mod init;
pub mod logfile;
pub mod mountns;
pub mod net;
pub mod overlay;
pub mod process;
pub mod seccomp;
pub mod spec;
pub mod volume;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The generated bundle did not validate.
    #[error("bundle of `{name}` is not a valid OCI runtime config: {reason}")]
    Bundle { name: String, reason: String },
    /// A data volume could not be made, mounted or unmounted.
    #[error("data volume {path}: {reason}")]
    Volume { path: PathBuf, reason: String },
    /// A read-only root overlay could not be mounted or unmounted.
    #[error("root file system {target}: {reason}")]
    Overlay { target: PathBuf, reason: String },
    /// libcontainer refused or failed.
    #[error("container `{name}`: {reason}")]
    Container { name: String, reason: String },
}

impl RuntimeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
