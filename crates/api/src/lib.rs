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

/// The request header that carries the service manifest given beside a standard image on
/// `POST /v1/services` and `POST /v1/services/{name}/update`: the bytes of `shg-service.toml`,
/// base64 (standard alphabet, padded). The body stays the package as it is.
pub const MANIFEST_HEADER: &str = "x-shg-manifest";
/// The longest service manifest the gateway takes beside an image (64 KiB, before base64).
pub const MAX_MANIFEST: usize = 64 << 10;

/// Where the agent keeps its state, and its socket, unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shg";
/// The socket's file name inside the state directory.
pub const SOCKET_NAME: &str = "api.sock";
