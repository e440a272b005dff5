//! The two error enums: [`CatalogError`] for the gateway (load, admit, read), [`PublishError`]
//! for the publisher (init, publish, remove); and the translation of tough's errors into them.

use std::path::{Path, PathBuf};

use tough::error::Error as ToughError;
use tough::TransportErrorKind;

/// Why the gateway refuses a catalog or a package.
///
/// Every message names the object, the rule it broke and what to do about it. The attack a
/// refusal stops is named in parentheses: rollback, frozen metadata, mix-and-match.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog has no entry for this service version.
    #[error(
        "the catalog does not list `{provider}/{service}` {version} ({digest}): the gateway \
         installs only what its catalog lists; ask the operator to publish it"
    )]
    NotListed {
        /// Provider of the package offered.
        provider: String,
        /// Service name asked for.
        service: String,
        /// Version asked for.
        version: String,
        /// Digest of the package offered.
        digest: String,
    },

    /// The catalog lists this service version as another package.
    #[error(
        "the catalog lists `{provider}/{service}` {version} as {listed}, not {digest}: the \
         gateway installs only the exact package the catalog lists; install the listed build, or \
         ask the operator to publish this one"
    )]
    DigestMismatch {
        /// Provider of the package offered.
        provider: String,
        /// Service name asked for.
        service: String,
        /// Version asked for.
        version: String,
        /// Digest of the package offered.
        digest: String,
        /// Digest the catalog lists.
        listed: String,
    },

    /// Some metadata is past its expiry date.
    #[error(
        "catalog {role} metadata expired{} (frozen metadata): the catalog server must publish \
         fresh metadata",
        expired_at.as_ref().map(|at| format!(" at {at}")).unwrap_or_default()
    )]
    Expired {
        /// `root`, `timestamp`, `snapshot` or `targets`.
        role: String,
        /// When it expired (RFC 3339), when known.
        expired_at: Option<String>,
    },

    /// The server offers older metadata than the gateway has already seen.
    #[error(
        "catalog {role} metadata version went back from {from} to {to} (rollback): the gateway \
         never goes back to an older catalog; the catalog server must serve its current \
         publication"
    )]
    Rollback {
        /// The role whose version went back.
        role: String,
        /// The version the gateway had seen.
        from: u64,
        /// The version offered now.
        to: u64,
    },

    /// A metadata file is not the one its parent lists (hash, length or version): files of
    /// different publications served together, or a file edited after it was listed.
    #[error(
        "{file} is not the file {listed_by} lists (mix-and-match or tampering): {detail}; the \
         catalog server must serve the files of one publication together, as published"
    )]
    MixAndMatch {
        /// The file fetched.
        file: String,
        /// The file that lists it (`timestamp.json` lists the snapshot, `snapshot.json` the
        /// targets).
        listed_by: String,
        /// What differs.
        detail: String,
    },

    /// A metadata file is not signed by a threshold of the keys the trusted root names.
    #[error(
        "signature check failed on {file}: {detail}; it was altered after signing or signed by \
         keys the gateway's pinned root does not trust"
    )]
    BadSignature {
        /// The role's file name, e.g. `targets.json`.
        file: String,
        /// tough's finding.
        detail: String,
    },

    /// A metadata file the catalog needs is not there.
    #[error(
        "catalog metadata {file} is missing from {dir}: publish the catalog there, or point the \
         gateway at the directory that holds it"
    )]
    MetadataMissing {
        /// The file name.
        file: String,
        /// The metadata directory.
        dir: PathBuf,
    },

    /// A metadata file does not parse or lacks what TUF requires.
    #[error(
        "catalog metadata {file} is malformed: {detail}; the catalog server must publish it again"
    )]
    Malformed {
        /// The file name or role.
        file: String,
        /// What is wrong.
        detail: String,
    },

    /// A signed target is not a valid catalog entry.
    #[error(
        "catalog entry `{target}` is malformed: {problem}; the operator must publish it again"
    )]
    BadEntry {
        /// The target name.
        target: String,
        /// What is wrong.
        problem: String,
    },

    /// The pinned root cannot be read or does not verify.
    #[error(
        "cannot use the pinned catalog root {path}: {detail}; install the root.json the operator \
         made with the catalog"
    )]
    TrustedRoot {
        /// The pinned root file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// The clock is earlier than a time the datastore has already seen.
    #[error(
        "the system clock went back from {latest} to {now}: expiry checks need a clock that does \
         not go back; fix the clock or its time source"
    )]
    ClockWentBack {
        /// The clock now.
        now: String,
        /// The latest time seen before.
        latest: String,
    },

    /// The datastore that remembers versions cannot be read or written.
    #[error("cannot use the catalog datastore {path}: {detail}")]
    Datastore {
        /// The datastore directory.
        path: PathBuf,
        /// What failed.
        detail: String,
    },

    /// A directory or file given to the catalog cannot be used.
    #[error("cannot use catalog path {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// A listed package's target file cannot be read or does not match the catalog.
    #[error(
        "cannot read `{service}` {version} from the catalog's targets: {detail}; the catalog \
         server must serve the target files of its publication"
    )]
    Target {
        /// Service name.
        service: String,
        /// Version.
        version: String,
        /// What failed.
        detail: String,
    },

    /// Any other failure tough reports.
    #[error("cannot load the catalog: {0}")]
    Other(String),
}

/// Why publishing to the catalog failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `init` on a directory that already holds a catalog or keys.
    #[error(
        "{path} already exists: `init` makes a new catalog once; publish to the existing one, or \
         pick empty directories"
    )]
    AlreadyInitialized {
        /// The existing root or key file.
        path: PathBuf,
    },

    /// `publish` or `remove` on a directory without a catalog.
    #[error("{path} holds no catalog (no metadata/1.root.json): create one with `init` first")]
    NotInitialized {
        /// The repository directory.
        path: PathBuf,
    },

    /// A signing key file is missing.
    #[error(
        "the {role} key {path} is missing: publishing needs the targets, snapshot and timestamp \
         keys that `init` wrote"
    )]
    KeyMissing {
        /// `targets`, `snapshot`, `timestamp` or `root`.
        role: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// An entry's field breaks its rule.
    #[error("{field} {value:?} {problem}")]
    BadField {
        /// `service`, `version`, `provider` or `reference`.
        field: &'static str,
        /// The value given.
        value: String,
        /// The rule it breaks.
        problem: String,
    },

    /// An entry's image manifest is not a JSON object.
    #[error(
        "the image manifest of `{service}` {version} is not a JSON object ({detail}): pass the \
         image manifest's bytes exactly as the registry serves them"
    )]
    BadManifest {
        /// Service name.
        service: String,
        /// Version.
        version: String,
        /// The parse error.
        detail: String,
    },

    /// One publication lists a service version twice.
    #[error(
        "`{provider}/{service}` {version} appears twice in one publication: list each version once"
    )]
    Duplicate {
        /// Provider name.
        provider: String,
        /// Service name.
        service: String,
        /// Version.
        version: String,
    },

    /// `remove` of an entry the catalog does not list.
    #[error(
        "the catalog does not list `{provider}/{service}` {version}: there is nothing to remove"
    )]
    NotListed {
        /// Provider name.
        provider: String,
        /// Service name.
        service: String,
        /// Version.
        version: String,
    },

    /// The expiry cannot be written as TUF metadata.
    #[error("expiry {0:?} is outside the dates TUF metadata can hold: pick a date within years")]
    BadExpiry(std::time::SystemTime),

    /// A file or directory cannot be written or read.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// tough refused to read or sign the repository.
    #[error("cannot {action}: {detail}")]
    Tough {
        /// What the publisher was doing.
        action: &'static str,
        /// tough's message.
        detail: String,
    },
}

/// Translates a failure of tough's loader into the refusal it stands for.
pub(crate) fn from_load(
    error: ToughError,
    metadata_dir: &Path,
    trusted_root: &Path,
    datastore: &Path,
) -> CatalogError {
    match error {
        ToughError::ExpiredMetadata { role, .. } => CatalogError::Expired {
            role: role.to_string(),
            expired_at: peek_expiry(metadata_dir, &role.to_string()),
        },
        ToughError::OlderMetadata {
            role,
            current_version,
            new_version,
            ..
        } => CatalogError::Rollback {
            role: role.to_string(),
            from: current_version,
            to: new_version,
        },
        ToughError::OlderSnapshotInTimestamp {
            snapshot_new,
            snapshot_old,
            ..
        } => CatalogError::Rollback {
            role: "snapshot".into(),
            from: snapshot_old,
            to: snapshot_new,
        },
        ToughError::SnapshotRoleRollback {
            role,
            old_role_version,
            new_role_version,
            ..
        } => CatalogError::Rollback {
            role: role.trim_end_matches(".json").to_string(),
            from: old_role_version,
            to: new_role_version,
        },
        ToughError::VersionMismatch {
            role,
            fetched,
            expected,
            ..
        } => CatalogError::MixAndMatch {
            file: format!("{role}.json"),
            listed_by: listed_by(&format!("{role}.json")).into(),
            detail: format!("it is version {fetched}, the listing says {expected}"),
        },
        ToughError::SnapshotRoleMissing {
            role, old_version, ..
        } => CatalogError::MixAndMatch {
            file: "snapshot.json".into(),
            listed_by: "the snapshot seen before".into(),
            detail: format!("it no longer lists {role}, which snapshot {old_version} did"),
        },
        ToughError::VerifyMetadata { role, source, .. } => CatalogError::BadSignature {
            file: format!("{role}.json"),
            detail: source.to_string(),
        },
        ToughError::ParseTrustedMetadata { source, .. } => CatalogError::TrustedRoot {
            path: trusted_root.to_path_buf(),
            detail: source.to_string(),
        },
        ToughError::VerifyTrustedMetadata { source, .. } => CatalogError::TrustedRoot {
            path: trusted_root.to_path_buf(),
            detail: format!("it is not signed by its own root keys ({source})"),
        },
        ToughError::ParseMetadata { role, source, .. } => CatalogError::Malformed {
            file: format!("{role}.json"),
            detail: source.to_string(),
        },
        e @ (ToughError::TimestampMetaLength { .. }
        | ToughError::MissingSnapshotMeta { .. }
        | ToughError::MetaMissing { .. }
        | ToughError::SnapshotTargetsMetaMissing { .. }) => CatalogError::Malformed {
            file: "the catalog metadata".into(),
            detail: e.to_string(),
        },
        ToughError::SystemTimeSteppedBackward {
            sys_time,
            latest_known_time,
            ..
        } => CatalogError::ClockWentBack {
            now: sys_time.to_string(),
            latest: latest_known_time.to_string(),
        },
        e @ (ToughError::DatastoreCreate { .. }
        | ToughError::DatastoreOpen { .. }
        | ToughError::DatastoreRemove { .. }
        | ToughError::DatastoreSerialize { .. }
        | ToughError::DatastoreInit { .. }) => CatalogError::Datastore {
            path: datastore.to_path_buf(),
            detail: e.to_string(),
        },
        ToughError::Transport { url, source, .. } => {
            let file = file_name(&url);
            if source.kind() == TransportErrorKind::FileNotFound {
                return CatalogError::MetadataMissing {
                    file,
                    dir: metadata_dir.to_path_buf(),
                };
            }
            match fetch_mismatch(&source) {
                Some(detail) => CatalogError::MixAndMatch {
                    listed_by: listed_by(&file).into(),
                    file,
                    detail,
                },
                None => CatalogError::Other(format!("cannot read {url}: {source}")),
            }
        }
        e => CatalogError::Other(e.to_string()),
    }
}

/// Translates a failure to read a target file.
pub(crate) fn from_target_read(error: ToughError, service: &str, version: &str) -> CatalogError {
    let detail = match &error {
        ToughError::ExpiredMetadata { role, .. } => {
            return CatalogError::Expired {
                role: role.to_string(),
                expired_at: None,
            }
        }
        ToughError::Transport { source, .. } => fetch_mismatch(source)
            .map(|d| format!("the file differs from what the catalog lists: {d}"))
            .unwrap_or_else(|| error.to_string()),
        _ => error.to_string(),
    };
    CatalogError::Target {
        service: service.into(),
        version: version.into(),
        detail,
    }
}

/// The hash or length mismatch tough found while reading a file, if that is what failed.
fn fetch_mismatch(source: &tough::TransportError) -> Option<String> {
    let cause = std::error::Error::source(source)?.downcast_ref::<ToughError>()?;
    match cause {
        ToughError::HashMismatch {
            calculated,
            expected,
            ..
        } => Some(format!(
            "its sha256 is {calculated}, the listing says {expected}"
        )),
        ToughError::MaxSizeExceeded {
            max_size,
            specifier,
            ..
        } => Some(format!(
            "it is longer than the {max_size} bytes {specifier} allows"
        )),
        _ => None,
    }
}

/// The last path segment of a URL.
fn file_name(url: &url::Url) -> String {
    url.path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or(url.as_str())
        .to_string()
}

/// Which file lists `file` (by version, hash and length).
fn listed_by(file: &str) -> &'static str {
    if file.ends_with("snapshot.json") {
        "timestamp.json"
    } else {
        "snapshot.json"
    }
}

/// When `role`'s metadata expired, read without verification from the files tough was given,
/// for the message only: tough says which role expired, not when.
fn peek_expiry(metadata_dir: &Path, role: &str) -> Option<String> {
    let read = |name: String| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(metadata_dir.join(name)).ok()?).ok()
    };
    let listed_version =
        |parent: &serde_json::Value, file: &str| parent["signed"]["meta"][file]["version"].as_u64();
    let timestamp = read("timestamp.json".into())?;
    let document = match role {
        "timestamp" => timestamp,
        "snapshot" | "targets" => {
            let n = listed_version(&timestamp, "snapshot.json")?;
            let snapshot = read(format!("{n}.snapshot.json"))?;
            if role == "snapshot" {
                snapshot
            } else {
                let n = listed_version(&snapshot, "targets.json")?;
                read(format!("{n}.targets.json"))?
            }
        }
        _ => return None,
    };
    document["signed"]["expires"].as_str().map(str::to_string)
}
