//! The one error type of the crate: every variant names the package, blob, layer or entry at fault.

use std::io;
use std::path::PathBuf;

use crate::size::{self, Allowance};

/// Everything that can go wrong while packing, opening or unpacking a service package.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file-system operation on a path the caller gave us (or one we made) failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The package source directory lacks `shg-service.toml` or `rootfs/`.
    #[error("package source {path} is missing: a package directory needs shg-service.toml and a rootfs/ directory")]
    MissingSource { path: PathBuf },

    /// `shg-service.toml` is not UTF-8 text.
    #[error("service manifest {path} is not UTF-8 text; save it as UTF-8")]
    ManifestNotUtf8 { path: PathBuf },

    /// The rootfs holds something a package may not carry.
    #[error("cannot pack {path}: {kind} files are not allowed in a package rootfs; remove it (the runtime creates the device nodes a service needs)")]
    UnsupportedFile { path: PathBuf, kind: &'static str },

    /// `SOURCE_DATE_EPOCH` is set but is not a Unix time.
    #[error(
        "SOURCE_DATE_EPOCH={value:?} is not a number of seconds; unset it or set it to a Unix time"
    )]
    SourceDateEpoch { value: String },

    /// The outer OCI layout tar holds an entry outside the small set we accept.
    #[error("package {tar}: entry {entry:?} is not allowed ({reason}); an OCI layout tar holds only the regular files oci-layout, index.json and blobs/sha256/<hex>")]
    LayoutEntry {
        tar: PathBuf,
        entry: String,
        reason: &'static str,
    },

    /// A JSON document or blob is bigger than we are willing to read.
    #[error(
        "{what} is {size} bytes, more than the limit of {limit} bytes; the package is malformed"
    )]
    TooLarge { what: String, size: u64, limit: u64 },

    /// A descriptor points at a blob the layout does not contain.
    #[error(
        "blob {digest} (the {referrer}) is missing from the package; rebuild or download it again"
    )]
    MissingBlob { digest: String, referrer: String },

    /// A blob's content does not hash to the digest it is stored or referenced under.
    #[error("blob {expected} has content with digest {actual}: the package is corrupt or was tampered with; download it again")]
    DigestMismatch { expected: String, actual: String },

    /// A blob's size differs from the size its descriptor declares.
    #[error("blob {digest} (the {referrer}) is {actual} bytes but is declared as {declared} bytes: the package is corrupt or was tampered with; download it again")]
    SizeMismatch {
        digest: String,
        referrer: String,
        declared: u64,
        actual: u64,
    },

    /// A JSON document of the layout does not parse.
    #[error("{what} is not valid: {source}")]
    BadJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The layout parses but breaks a rule of the OCI image spec or of SHG packages.
    #[error("invalid package: {reason}")]
    Layout { reason: String },

    /// A standard image (no `org.shg.manifest` label) came without a service manifest beside it.
    #[error("the image {digest} has no org.shg.manifest label, so it says nothing of how SHG runs it: give its service manifest beside it (`shg install IMAGE --manifest shg-service.toml`; over the API the X-SHG-Manifest header), or build an SHG package with `shg pack`")]
    Unlabelled { digest: String },

    /// A layer uses a media type we cannot unpack.
    #[error("layer {layer}: media type {media_type:?} is not supported; use application/vnd.oci.image.layer.v1.tar+gzip")]
    UnsupportedMediaType { layer: String, media_type: String },

    /// One entry of a layer is refused; nothing after it was unpacked.
    #[error("layer {layer}: entry {entry:?} {problem}")]
    Entry {
        layer: String,
        entry: String,
        problem: EntryProblem,
    },

    /// The layer stream itself (compression or tar framing) is broken.
    #[error(
        "layer {layer}: cannot read the layer stream: {source}; the blob is truncated or corrupt"
    )]
    LayerRead {
        layer: String,
        #[source]
        source: io::Error,
    },

    /// The layer store holds something it did not put there.
    #[error("layer store: {path} {reason}")]
    Store { path: PathBuf, reason: String },

    /// Layers unpack to more than the budget the caller holds them to: refused from the
    /// headers, before the entry that would pass it is written.
    #[error("{}", size::over_allowance(what, *size, *at_least, *limit, allowance))]
    OverAllowance {
        /// `layer sha256:…`, or the layers of a package together.
        what: String,
        /// Bytes they take unpacked, as [`crate::measure`] counts them.
        size: u64,
        /// Counting stopped at the limit: they take at least `size`.
        at_least: bool,
        /// Bytes they were allowed: the budget, or what earlier layers left of it.
        limit: u64,
        allowance: Allowance,
    },

    /// The uncompressed layer does not match the config's `rootfs.diff_ids`.
    #[error("layer {layer}: uncompressed content has digest {actual} but the image config declares {expected}; the package is corrupt, rebuild it")]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
}

/// Why a single layer entry is refused; shown after the entry path.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("escapes the root: \"..\" components are not allowed; rebuild the package without it")]
    ParentComponent,
    #[error("has an empty path; rebuild the package without it")]
    EmptyPath,
    #[error("would be written through the symlink {component:?}; symlinks are never followed while unpacking, rebuild the package so no entry lies under a symlink")]
    ThroughSymlink { component: String },
    #[error("needs {component:?} to be a directory but it is not; rebuild the package so a directory entry replaces it first")]
    NotADirectory { component: String },
    #[error("is a hard link to {target:?}, which escapes the root: \"..\" components are not allowed; rebuild the package without it")]
    HardlinkEscapes { target: String },
    #[error("is a hard link to {target:?}, which lies under the symlink {component:?}; hard links may not go through symlinks, rebuild the package without it")]
    HardlinkThroughSymlink { target: String, component: String },
    #[error("is a hard link to {target:?}, which does not exist or is a directory; the target must be an earlier non-directory entry")]
    HardlinkTarget { target: String },
    #[error("is a {kind} device node; devices are not allowed in packages, the runtime creates the ones a service needs")]
    Device { kind: &'static str },
    #[error("has unsupported tar entry type {type_byte:#04x}; rebuild the package with plain files, directories, links and fifos")]
    UnsupportedType { type_byte: u8 },
    #[error("holds more data than the {declared} bytes its header declares; the unpack was cut off there, the layer stream is malformed, rebuild the package")]
    Overrun { declared: u64 },
    #[error("cannot be unpacked ({op}): {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn layout(reason: impl Into<String>) -> Self {
        ImageError::Layout {
            reason: reason.into(),
        }
    }
}

impl EntryProblem {
    pub(crate) fn io(op: &'static str, source: impl Into<std::io::Error>) -> Self {
        EntryProblem::Io {
            op,
            source: source.into(),
        }
    }
}
