//! The gateway API as both sides see it: JSON types, exec framing, and the client that speaks
//! HTTP/1.1 to the agent over its Unix socket or HTTPS. (Pulling from OCI registries is the
//! `registry` crate's.)

pub mod client;
pub mod exec_frames;
pub mod fleet;
mod fleet_client;
mod pinned;
pub mod types;

pub use client::{Client, ClientError, InstallParams, Options, UpdateParams};
pub use types::*;

/// Where the agent keeps its state, and its socket, unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shg";
/// The socket's file name inside the state directory.
pub const SOCKET_NAME: &str = "api.sock";
