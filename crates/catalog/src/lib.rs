//! The app-store catalog: which packages a gateway may install, as TUF metadata read through
//! `tough`.
//!
//! A package is an OCI image; its identity is the digest of its image manifest (`sha256:HEX`).
//! The catalog lists each package as a TUF target named `SERVICE/VERSION` whose content is the
//! image manifest's bytes, so the target's sha256 and length are the package's, and whose custom
//! fields carry the service, version, provider and an optional registry reference.
//!
//! # Trust model
//!
//! - **Two keys must agree.** A package is installed only when its provider's signature vouches
//!   for it *and* the catalog lists that exact digest under that provider
//!   ([`Catalog::admit`] is the catalog's half; the caller checks the provider signature against
//!   [`Entry::provider`]). A compromised controller alone cannot push an arbitrary package: it
//!   cannot forge the provider's signature. A provider alone cannot either: it cannot list its
//!   package in the catalog.
//! - **The catalog keys belong to the operator** (held by the fleet controller or offline): one
//!   Ed25519 key per TUF role (root, targets, snapshot, timestamp), made by [`init`]. Publishing
//!   needs the targets, snapshot and timestamp keys; the root key is needed only to make or
//!   rotate the root.
//! - **The root is pinned on the gateway.** Each gateway holds a copy of the catalog's
//!   `root.json`, installed out of band; every load starts from it ([`Catalog::load`]), and
//!   tough follows signed root rotations (`2.root.json`, …) from there.
//! - **What TUF stops**, each refused with its own [`CatalogError`]: arbitrary packages (an
//!   unlisted name or another digest), version rollback (older metadata than the gateway's
//!   datastore remembers, across restarts), frozen metadata (expired), mix-and-match (files of
//!   different publications together), and metadata altered after signing or signed by keys
//!   the root does not name.
//!
//! # Layout
//!
//! A catalog repository is `REPO/metadata/` (`N.root.json`, `N.targets.json`,
//! `N.snapshot.json`, `timestamp.json`: consistent snapshots) and `REPO/targets/`
//! (`HEX.SERVICE/VERSION`), served as they are; the keys live apart in `KEYS/<role>.pk8`.
//!
//! The API is async (tough is built on tokio): call it from a tokio runtime. Loaded catalogs
//! answer [`Catalog::entries`], [`Catalog::find`] and [`Catalog::admit`] without I/O.

mod entry;
mod error;
mod gateway;
mod publish;

pub use entry::{Entry, NewEntry};
pub use error::{CatalogError, PublishError};
pub use gateway::Catalog;
pub use publish::{init, key_path, publish, remove};

/// The metadata directory inside a catalog repository.
pub const METADATA_DIR: &str = "metadata";

/// The target files' directory inside a catalog repository.
pub const TARGETS_DIR: &str = "targets";
