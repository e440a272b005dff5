//! Integration tests of the runtime crate that need root: read-only overlay roots (real
//! mounts), and the container init run as a real program.

mod init;
mod overlay;
