//! SHG service packages as OCI images: pack, open and verify, unpack safely, share layers.
//!
//! A package is an OCI image (image-spec v1.1) stored as an OCI image layout in a tar file.
//! The service manifest (`shg-service.toml`) travels as the image config label
//! [`MANIFEST_LABEL`], or, for a standard image built by other tools, beside the image
//! ([`open_with`]; the package is then identified by the [`pair_digest`] of both); this crate
//! treats it as opaque text.
//!
//! Security model: [`open`] trusts nothing in the tar. It extracts only `oci-layout`,
//! `index.json` and `blobs/sha256/<hex>`, hashes every blob against its name and checks the
//! size every descriptor declares. [`unpack`] never follows a symlink inside the destination,
//! refuses `..`, device nodes and hard links leaving the root, and checks each layer's
//! size and `diff_id`. On error the destination is partial: unpack into a temporary
//! directory and rename it into place on success.
//!
//! Two ways to get a root file system out of a package:
//!
//! - [`unpack`] applies all layers, in order, into one directory: a private copy.
//! - [`LayerStore::ensure`] keeps each layer once, keyed by its `diff_id`, unpacked alone
//!   into `STORE/sha256/<hex>` in overlayfs form (whiteouts as 0:0 character devices, opaque
//!   directories as `trusted.overlay.opaque=y`), and returns the layer directories to stack
//!   as a read-only overlay (`runtime::overlay`). Packages that share a base layer share its
//!   directory; [`LayerStore::gc`] removes the layers no package refers to, and
//!   [`disk_usage`] measures the saving. Both forms come from one unpacker, with the same
//!   checks on every entry; they differ only in how a whiteout is written down.
//!
//! What a layer takes on disk unpacked is counted from its tar headers, writing nothing
//! ([`measure`], [`measure_layer`]), so a caller can refuse a package before unpacking it;
//! [`unpack_within`] and [`LayerStore::ensure_within`] run the same count entry by entry
//! while they write and refuse the entry that would take the layers past a [`Budget`]
//! ([`ImageError::OverAllowance`]) before any of it is written. No entry writes more than
//! its header declares. A few MiB of gzip can declare gigabytes of zeros: the count sees
//! the gigabytes (a sparse file at its full length), and a budget refuses them at the header.
//!
//! Whiteouts follow the OCI image spec in both forms: a whiteout hides what lower layers put
//! at its path, never its own layer's entries. Unpacked alone, a layer cannot see the layers
//! below it: a hard link must point at an earlier entry of its own layer, and a directory it
//! only implies (an entry `a/b` or a whiteout `a/.wh.b` with no entry `a/`) is made 0755 and
//! owned by root, and shows in the root even where no lower layer has it, where [`unpack`]
//! would keep the lower layer's directory as it was (image builders write the `a/` entry).

mod error;
mod oci;
mod open;
mod pack;
mod size;
mod store;
mod unpack;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use error::{EntryProblem, ImageError};
pub use open::{open, open_with};
pub use pack::{annotate, pack, pack_image, MANIFEST_FILE, ROOTFS_DIR};
pub use size::{measure, measure_layer, Allowance, Budget, LayerSize, BLOCK};
pub use store::{disk_usage, GcReport, LayerStore};
pub use unpack::{unpack, unpack_layer, unpack_within};

/// Config label that carries the text of `shg-service.toml`.
pub const MANIFEST_LABEL: &str = "org.shg.manifest";

/// Largest `index.json`, image manifest or image config we read (4 MiB).
pub const MAX_JSON: u64 = 4 << 20;

/// Domain tag of the text a [`pair_digest`] hashes; no image manifest (JSON) starts so.
const PAIR_TAG: &str = "shg image+manifest v1\n";

/// The digest (`sha256:…`) of a service manifest's text, byte for byte as given.
pub fn manifest_digest(text: &str) -> String {
    oci::digest_of(text.as_bytes())
}

/// The identity of an image installed with a service manifest beside it: the sha256 of
///
/// ```text
/// shg image+manifest v1\n
/// IMAGE_DIGEST\n
/// MANIFEST_DIGEST\n
/// ```
///
/// where `IMAGE_DIGEST` is the image manifest's digest and `MANIFEST_DIGEST` the
/// [`manifest_digest`] of the service manifest, both `sha256:<64 lowercase hex>`. A provider
/// signs this digest as it signs a labelled package's, so its signature covers the image and
/// the manifest together and neither can be swapped for another.
pub fn pair_digest(image_digest: &str, manifest_digest: &str) -> String {
    oci::digest_of(format!("{PAIR_TAG}{image_digest}\n{manifest_digest}\n").as_bytes())
}

/// A package opened and verified by [`open`] or [`open_with`], its blobs staged in `dir`.
#[derive(Debug, Clone)]
pub struct Package {
    /// The identity of the package, what signatures and the catalog cover and releases are
    /// named after: the image manifest's digest (`sha256:…`) for a package carrying its
    /// service manifest as a label; for an image with its manifest given beside it, the
    /// [`pair_digest`] of the two.
    pub digest: String,
    /// Digest of the image manifest, which covers its config and every layer: the image as a
    /// registry names it.
    pub image_digest: String,
    /// For a manifest given beside the image, its [`manifest_digest`]; `None` for the label.
    pub manifest_digest: Option<String>,
    /// Text of the service manifest, unparsed: the `org.shg.manifest` label, or the text
    /// given beside the image.
    pub manifest_toml: String,
    /// The whole image config.
    pub config: serde_json::Value,
    /// Layers in application order, each verified by digest and size.
    pub layers: Vec<Layer>,
    /// The staging directory given to [`open`].
    pub dir: PathBuf,
    /// The annotations on the manifest's entry in `index.json`, unverified: signatures travel
    /// here (see the `trust` crate); nothing else in the package vouches for them.
    pub annotations: BTreeMap<String, String>,
}

/// One verified layer blob of a [`Package`].
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the (compressed) blob, `sha256:…`.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    pub media_type: String,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`; checked by [`unpack`].
    pub diff_id: String,
    /// The blob file inside the staging directory.
    pub path: PathBuf,
}
