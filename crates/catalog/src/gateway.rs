//! The gateway's side: load the catalog through tough from a pinned root, remember what was
//! seen in a datastore, and admit only the packages the catalog lists.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tough::{ExpirationEnforcement, FilesystemTransport, IntoVec, RepositoryLoader, TargetName};

use crate::entry::{self, Entry};
use crate::error::{self, CatalogError};

/// A verified catalog: every entry comes from targets metadata that tough checked against the
/// pinned root, the timestamp and the snapshot, none expired and none older than what the
/// datastore remembers.
#[derive(Debug, Clone)]
pub struct Catalog {
    repository: tough::Repository,
    entries: BTreeMap<(String, String, String), Entry>,
    version: u64,
    expires: jiff::Timestamp,
    expiring_role: String,
}

impl Catalog {
    /// Loads and verifies the catalog in `metadata_dir` (TUF metadata, consistent snapshots)
    /// and `targets_dir` (the image manifests), trusting `trusted_root`, a copy of the
    /// catalog's `1.root.json` (or a later root) installed on the gateway out of band.
    ///
    /// `datastore` is a directory on persistent storage, made mode 0700 if missing; tough keeps
    /// the last verified timestamp, snapshot and targets there and the latest clock reading, so
    /// a later load (even after a restart) refuses older metadata (rollback) and a clock that
    /// went back. Use one datastore per gateway, and one load at a time on it.
    ///
    /// Refuses expired metadata (frozen), metadata whose version went back (rollback), files
    /// that are not those their parent lists (mix-and-match), and files not signed by the keys
    /// the root names.
    ///
    /// Every load starts from `trusted_root` and follows signed root rotations (`2.root.json`,
    /// …) from there: tough copies the newest root into the datastore but never starts from
    /// that copy, so a datastore someone could write cannot replace the pinned root. After a
    /// rotation, install the new root on the gateways too.
    pub async fn load(
        metadata_dir: &Path,
        targets_dir: &Path,
        trusted_root: &Path,
        datastore: &Path,
    ) -> Result<Catalog, CatalogError> {
        let root = tokio::fs::read(trusted_root)
            .await
            .map_err(|e| CatalogError::TrustedRoot {
                path: trusted_root.to_path_buf(),
                detail: e.to_string(),
            })?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(datastore)
            .map_err(|e| CatalogError::Datastore {
                path: datastore.to_path_buf(),
                detail: e.to_string(),
            })?;
        let repository =
            RepositoryLoader::new(&root, dir_url(metadata_dir)?, dir_url(targets_dir)?)
                .transport(FilesystemTransport)
                .datastore(datastore)
                .expiration_enforcement(ExpirationEnforcement::Safe)
                .load()
                .await
                .map_err(|e| error::from_load(e, metadata_dir, trusted_root, datastore))?;

        let mut entries = BTreeMap::new();
        for (name, target) in repository.all_targets() {
            let entry = entry::from_target(name.raw(), target).map_err(|problem| {
                CatalogError::BadEntry {
                    target: name.raw().to_string(),
                    problem,
                }
            })?;
            entries.insert(
                (
                    entry.provider.clone(),
                    entry.service.clone(),
                    entry.version.clone(),
                ),
                entry,
            );
        }
        let (expires, expiring_role) = [
            (repository.root().signed.expires, "root"),
            (repository.timestamp().signed.expires, "timestamp"),
            (repository.snapshot().signed.expires, "snapshot"),
            (repository.targets().signed.expires, "targets"),
        ]
        .into_iter()
        .min_by_key(|(expires, _)| *expires)
        .unwrap_or((jiff::Timestamp::MIN, "timestamp"));
        Ok(Catalog {
            version: repository.targets().signed.version.get(),
            repository,
            entries,
            expires,
            expiring_role: expiring_role.to_string(),
        })
    }

    /// Every entry, ordered by provider, service and version.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.values().cloned().collect()
    }

    /// The entry for `provider`'s `service` `version`, if the catalog lists it.
    pub fn find(&self, provider: &str, service: &str, version: &str) -> Option<Entry> {
        self.entries
            .get(&(
                provider.to_string(),
                service.to_string(),
                version.to_string(),
            ))
            .cloned()
    }

    /// Admits the package `digest` (`sha256:HEX` of its image manifest) as `provider`'s
    /// `service` `version` only if the catalog lists exactly that, and only while the catalog
    /// has not expired.
    ///
    /// The catalog is half of the decision: the caller must also check that the package is
    /// signed by `provider`.
    pub fn admit(
        &self,
        provider: &str,
        service: &str,
        version: &str,
        digest: &str,
    ) -> Result<Entry, CatalogError> {
        self.check_fresh()?;
        let entry =
            self.find(provider, service, version)
                .ok_or_else(|| CatalogError::NotListed {
                    provider: provider.into(),
                    service: service.into(),
                    version: version.into(),
                    digest: digest.into(),
                })?;
        if !entry.digest.eq_ignore_ascii_case(digest) {
            return Err(CatalogError::DigestMismatch {
                provider: provider.into(),
                service: service.into(),
                version: version.into(),
                digest: digest.into(),
                listed: entry.digest,
            });
        }
        Ok(entry)
    }

    /// Reads the image manifest of `provider`'s `service` `version` from the targets
    /// directory, verified against the length and sha256 the catalog lists.
    pub async fn manifest(
        &self,
        provider: &str,
        service: &str,
        version: &str,
    ) -> Result<Vec<u8>, CatalogError> {
        self.check_fresh()?;
        let not_listed = || CatalogError::NotListed {
            provider: provider.into(),
            service: service.into(),
            version: version.into(),
            digest: "any digest".into(),
        };
        if self.find(provider, service, version).is_none() {
            return Err(not_listed());
        }
        let name = TargetName::new(entry::target_name(provider, service, version))
            .map_err(|e| error::from_target_read(e, service, version))?;
        let stream = self
            .repository
            .read_target(&name)
            .await
            .map_err(|e| error::from_target_read(e, service, version))?
            .ok_or_else(not_listed)?;
        stream
            .into_vec()
            .await
            .map_err(|e| error::from_target_read(e, service, version))
    }

    /// The publication's version (of its targets metadata).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the first of the catalog's metadata files expires; after it, [`Catalog::admit`]
    /// refuses everything until a fresh catalog is loaded.
    pub fn expires(&self) -> SystemTime {
        SystemTime::from(self.expires)
    }

    /// Refuses when the loaded metadata has expired since it was loaded.
    fn check_fresh(&self) -> Result<(), CatalogError> {
        if jiff::Timestamp::now() < self.expires {
            Ok(())
        } else {
            Err(CatalogError::Expired {
                role: self.expiring_role.clone(),
                expired_at: Some(self.expires.to_string()),
            })
        }
    }
}

/// A `file://` URL for a directory, which must exist.
fn dir_url(dir: &Path) -> Result<url::Url, CatalogError> {
    let io_error = |source| CatalogError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let absolute: PathBuf = std::fs::canonicalize(dir).map_err(io_error)?;
    url::Url::from_directory_path(&absolute).map_err(|()| {
        io_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path",
        ))
    })
}
