//! The mailbox provider's cloud proxy (issue 16): the household uploads a large attachment to
//! the gateway over the LAN with tus, a standard resumable upload protocol, and may switch its
//! computer off; the gateway sends it on to the cloud in the background, within the upload
//! rate the service reserved, resuming after a cut link or a restart, never losing a byte.
//!
//! One binary, `cloud-proxy`: `gateway` is what the package runs, `cloud` the provider's
//! cloud side (a tus server too).

pub mod sender;
pub mod tus;
