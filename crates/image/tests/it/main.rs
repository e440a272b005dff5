//! Integration tests of the image crate: pack → open → unpack round trips, tampered packages, hostile layers.

mod budget;
mod layers;
mod package;
mod store;

use std::fs;
use std::path::{Path, PathBuf};

use image::{Layer, Package};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// A tar archive built entry by entry, with raw names so hostile paths survive the builder.
pub struct TarBuilder(tar::Builder<Vec<u8>>);

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder(tar::Builder::new(Vec::new()))
    }

    pub fn raw(mut self, name: &str, kind: EntryType, link: &str, data: &[u8], mode: u32) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_000);
        h.set_uid(0);
        h.set_gid(0);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub fn file(self, name: &str, data: &str) -> Self {
        self.raw(name, EntryType::Regular, "", data.as_bytes(), 0o644)
    }

    pub fn dir(self, name: &str) -> Self {
        self.raw(name, EntryType::Directory, "", b"", 0o755)
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(name, EntryType::Symlink, target, b"", 0o777)
    }

    pub fn hardlink(self, name: &str, target: &str) -> Self {
        self.raw(name, EntryType::Link, target, b"", 0o644)
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Store `bytes` in `dir` under its sha256 hex, as a layout would, and return the path.
pub fn store_blob(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join(sha256_hex(bytes));
    fs::write(&path, bytes).unwrap();
    path
}

/// Media type of an uncompressed layer.
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A package of uncompressed layers (base first), their blobs stored in `dir`, as
/// `image::open` would return it.
pub fn package_of(dir: &Path, layers: &[Vec<u8>]) -> Package {
    let layers = layers
        .iter()
        .map(|bytes| {
            let digest = format!("sha256:{}", sha256_hex(bytes));
            Layer {
                diff_id: digest.clone(),
                digest,
                size: bytes.len() as u64,
                media_type: TAR.to_string(),
                path: store_blob(dir, bytes),
            }
        })
        .collect();
    Package {
        digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        image_digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .into(),
        manifest_digest: None,
        manifest_toml: String::new(),
        config: serde_json::Value::Null,
        layers,
        dir: dir.to_path_buf(),
        annotations: Default::default(),
    }
}
