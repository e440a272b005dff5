//! Running services as hardened OCI containers: the bundle, the container's init, and the
//! libcontainer calls that create, exec into and delete containers.

pub mod cgroup;
pub mod container;
pub mod init;
pub mod logfile;
pub mod net;
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
