//! A catalog publisher and a gateway side by side in one temp directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use catalog::{Catalog, CatalogError, NewEntry};

/// A catalog repository, its keys, and a gateway's pinned root and datastore.
pub struct Fixture {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The repository the publisher writes (and the server serves).
    pub repo: PathBuf,
    /// The publisher's keys.
    pub keys: PathBuf,
    /// The gateway's pinned copy of the root.
    pub pinned_root: PathBuf,
    /// The gateway's datastore.
    pub datastore: PathBuf,
}

impl Fixture {
    /// A new catalog with one empty publication (version 1).
    pub async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        let root = catalog::init(&repo, &keys, in_a_year()).await.unwrap();
        let gateway = dir.path().join("gateway");
        fs::create_dir_all(&gateway).unwrap();
        let pinned_root = gateway.join("root.json");
        fs::copy(root, &pinned_root).unwrap();
        Fixture {
            datastore: gateway.join("catalog-datastore"),
            dir,
            repo,
            keys,
            pinned_root,
        }
    }

    pub fn metadata(&self) -> PathBuf {
        self.repo.join(catalog::METADATA_DIR)
    }

    pub fn targets(&self) -> PathBuf {
        self.repo.join(catalog::TARGETS_DIR)
    }

    /// Publishes `entries`, expiring in a year; returns the publication's version.
    pub async fn publish(&self, entries: &[NewEntry]) -> u64 {
        catalog::publish(&self.repo, &self.keys, entries, in_a_year())
            .await
            .unwrap()
    }

    /// What the gateway sees when the server serves the repository as it is.
    pub async fn load(&self) -> Result<Catalog, CatalogError> {
        self.load_metadata(&self.metadata(), &self.datastore).await
    }

    /// What the gateway sees when the server serves `metadata` instead, with `datastore`.
    pub async fn load_metadata(
        &self,
        metadata: &Path,
        datastore: &Path,
    ) -> Result<Catalog, CatalogError> {
        Catalog::load(metadata, &self.targets(), &self.pinned_root, datastore).await
    }

    /// A copy of the metadata directory as it is now, as an attacker would keep it.
    pub fn copy_metadata(&self, name: &str) -> PathBuf {
        let to = self.dir.path().join(name);
        copy_dir(&self.metadata(), &to);
        to
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for dirent in fs::read_dir(from).unwrap() {
        let dirent = dirent.unwrap();
        fs::copy(dirent.path(), to.join(dirent.file_name())).unwrap();
    }
}

pub fn in_a_year() -> SystemTime {
    SystemTime::now() + Duration::from_secs(365 * 24 * 3600)
}

/// A small image manifest; `seed` makes it distinct.
pub fn manifest(seed: &str) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[],"annotations":{{"seed":"{seed}"}}}}"#,
        "0".repeat(64)
    )
    .into_bytes()
}

pub fn entry(service: &str, version: &str, provider: &str, manifest_json: Vec<u8>) -> NewEntry {
    NewEntry {
        service: service.into(),
        version: version.into(),
        provider: provider.into(),
        reference: None,
        manifest_json,
    }
}

/// `sha256:HEX` of `bytes`, computed independently of the crate.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The error of a load that must fail.
pub fn refused(result: Result<Catalog, CatalogError>) -> CatalogError {
    match result {
        Ok(catalog) => panic!(
            "the catalog loaded (version {}) but should have been refused",
            catalog.version()
        ),
        Err(e) => e,
    }
}
