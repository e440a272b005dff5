//! Opening an OCI layout tar: strict extraction of its few files and verification of every blob.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::oci::{self, Descriptor, HashWriter, ImageConfig, Index, Manifest, OciLayout};
use crate::{pair_digest, ImageError, Layer, Package, MANIFEST_LABEL, MAX_JSON};

/// What a path in the outer tar may name.
#[derive(Debug, PartialEq, Eq)]
enum OuterName {
    /// `.`, `blobs` or `blobs/sha256`: tolerated as directory entries, as plain `tar` writes them.
    Dir,
    OciLayout,
    Index,
    Blob(String),
}

/// Classify an outer tar path; `./` prefixes and trailing slashes are tolerated, nothing else.
fn outer_name(raw: &[u8]) -> Option<OuterName> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = s.strip_prefix("./").unwrap_or(s);
    let s = s.strip_suffix('/').unwrap_or(s);
    match s {
        "" | "." | "blobs" | "blobs/sha256" => Some(OuterName::Dir),
        "oci-layout" => Some(OuterName::OciLayout),
        "index.json" => Some(OuterName::Index),
        _ => {
            let hex = s.strip_prefix("blobs/sha256/")?;
            oci::is_sha256_hex(hex).then(|| OuterName::Blob(hex.to_string()))
        }
    }
}

/// Read an OCI layout tar: extract into `staging` (a fresh directory the caller owns), then
/// verify `oci-layout`, `index.json` → manifest → config → every layer, by sha256 digest and
/// by the size each referrer declares.
///
/// `staging` may exist but must not already hold a `blobs` directory. The returned
/// [`Package`] points into it; the caller removes it when done.
///
/// The service manifest is the config's [`MANIFEST_LABEL`]; an image without it is refused
/// ([`ImageError::Unlabelled`]). For a standard image with its manifest beside it, see
/// [`open_with`].
pub fn open(tar_path: &Path, staging: &Path) -> Result<Package, ImageError> {
    open_with(tar_path, staging, None)
}

/// [`open`], with the service manifest given `beside` the image rather than read from its
/// label: any OCI image then installs, a standard one built by docker, podman or buildah
/// included. Its label, if it has one, is ignored, and the package's identity
/// ([`Package::digest`]) is the [`pair_digest`] of the image and that manifest, so a
/// signature over it covers both.
pub fn open_with(
    tar_path: &Path,
    staging: &Path,
    beside: Option<&str>,
) -> Result<Package, ImageError> {
    let file = File::open(tar_path).map_err(|e| ImageError::io("open", tar_path, e))?;
    fs::create_dir_all(staging).map_err(|e| ImageError::io("create", staging, e))?;
    let blob_dir = staging.join("blobs/sha256");
    for dir in [staging.join("blobs"), blob_dir.clone()] {
        fs::create_dir(&dir)
            .map_err(|e| ImageError::io("create (the staging directory must be fresh)", dir, e))?;
    }

    let refuse = |entry: &[u8], reason| ImageError::LayoutEntry {
        tar: tar_path.to_path_buf(),
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason,
    };
    let read_err = |e| ImageError::io("read package", tar_path, e);

    let mut layout_json = None;
    let mut index_json = None;
    let mut blobs = BTreeSet::new();
    let mut archive = tar::Archive::new(BufReader::new(file));
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let name = outer_name(&raw).ok_or_else(|| refuse(&raw, "unexpected path"))?;
        match (&name, kind) {
            (OuterName::Dir, EntryType::Directory) => continue,
            (OuterName::Dir, _) => return Err(refuse(&raw, "expected a directory")),
            (_, EntryType::Regular) => {}
            (_, _) => return Err(refuse(&raw, "not a regular file")),
        }
        let size = entry.size();
        match name {
            OuterName::Dir => unreachable!("handled above"),
            OuterName::OciLayout | OuterName::Index => {
                let slot = if name == OuterName::OciLayout {
                    &mut layout_json
                } else {
                    &mut index_json
                };
                if slot.is_some() {
                    return Err(refuse(&raw, "duplicate entry"));
                }
                if size > MAX_JSON {
                    return Err(ImageError::TooLarge {
                        what: format!(
                            "{} in {}",
                            String::from_utf8_lossy(&raw),
                            tar_path.display()
                        ),
                        size,
                        limit: MAX_JSON,
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut buf).map_err(read_err)?;
                *slot = Some(buf);
            }
            OuterName::Blob(hex) => {
                if !blobs.insert(hex.clone()) {
                    return Err(refuse(&raw, "duplicate entry"));
                }
                extract_blob(&mut entry, &blob_dir.join(&hex), &hex)?;
            }
        }
    }

    let layout_json = layout_json.ok_or_else(|| {
        ImageError::layout(format!(
            "{} has no oci-layout file; it is not an OCI image layout",
            tar_path.display()
        ))
    })?;
    let layout: OciLayout = parse_json(&layout_json, "oci-layout")?;
    if layout.image_layout_version != oci::LAYOUT_VERSION {
        return Err(ImageError::layout(format!(
            "oci-layout declares imageLayoutVersion {:?}; only {:?} is supported",
            layout.image_layout_version,
            oci::LAYOUT_VERSION
        )));
    }
    let index_json = index_json
        .ok_or_else(|| ImageError::layout(format!("{} has no index.json", tar_path.display())))?;
    let index: Index = parse_json(&index_json, "index.json")?;
    if index.schema_version != 2 {
        return Err(ImageError::layout(format!(
            "index.json has schemaVersion {}; expected 2",
            index.schema_version
        )));
    }
    let [manifest_desc] = &index.manifests[..] else {
        return Err(ImageError::layout(format!(
            "index.json lists {} manifests; an SHG package holds exactly one image",
            index.manifests.len()
        )));
    };
    expect_media(manifest_desc, oci::MEDIA_MANIFEST, "image manifest")?;

    let blob = |desc: &Descriptor, referrer: &str| check_blob(&blob_dir, &blobs, desc, referrer);
    let manifest_path = blob(manifest_desc, "image manifest")?;
    let manifest: Manifest = parse_json(
        &read_json(&manifest_path, manifest_desc)?,
        "the image manifest",
    )?;
    if manifest.schema_version != 2 {
        return Err(ImageError::layout(format!(
            "the image manifest has schemaVersion {}; expected 2",
            manifest.schema_version
        )));
    }
    if let Some(mt) = manifest
        .media_type
        .as_deref()
        .filter(|mt| *mt != oci::MEDIA_MANIFEST)
    {
        return Err(ImageError::layout(format!(
            "the image manifest has mediaType {mt:?}; expected {:?}",
            oci::MEDIA_MANIFEST
        )));
    }
    expect_media(&manifest.config, oci::MEDIA_CONFIG, "image config")?;
    let config_path = blob(&manifest.config, "image config")?;
    let config_bytes = read_json(&config_path, &manifest.config)?;
    let config: ImageConfig = parse_json(&config_bytes, "the image config")?;
    let config_value: serde_json::Value = parse_json(&config_bytes, "the image config")?;
    if config.os != "linux" {
        return Err(ImageError::layout(format!(
            "the image is for os {:?}; SHG runs linux images",
            config.os
        )));
    }
    if config.rootfs.kind != "layers" {
        return Err(ImageError::layout(format!(
            "the image config has rootfs.type {:?}; expected \"layers\"",
            config.rootfs.kind
        )));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::layout(format!(
            "the image config lists {} diff_ids for {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let image_digest = manifest_desc.digest.clone();
    let (manifest_toml, digest, manifest_digest) = match beside {
        Some(text) => {
            let of_text = crate::manifest_digest(text);
            let pair = pair_digest(&image_digest, &of_text);
            (text.to_string(), pair, Some(of_text))
        }
        None => {
            let label = config
                .config
                .labels
                .as_ref()
                .and_then(|l| l.get(MANIFEST_LABEL))
                .cloned()
                .ok_or_else(|| ImageError::Unlabelled {
                    digest: image_digest.clone(),
                })?;
            (label, image_digest.clone(), None)
        }
    };

    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, (desc, diff_id)) in manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .enumerate()
    {
        if oci::layer_compression(&desc.media_type).is_none() {
            return Err(ImageError::UnsupportedMediaType {
                layer: desc.digest.clone(),
                media_type: desc.media_type.clone(),
            });
        }
        if oci::sha256_hex(diff_id).is_none() {
            return Err(ImageError::layout(format!(
                "diff_id {diff_id:?} of layer {i} is not a sha256 digest"
            )));
        }
        let path = blob(desc, &format!("layer {i}"))?;
        layers.push(Layer {
            digest: desc.digest.clone(),
            size: desc.size,
            media_type: desc.media_type.clone(),
            diff_id: diff_id.clone(),
            path,
        });
    }

    Ok(Package {
        digest,
        image_digest,
        manifest_digest,
        manifest_toml,
        config: config_value,
        layers,
        dir: staging.to_path_buf(),
        annotations: manifest_desc.annotations.clone().unwrap_or_default(),
    })
}

/// Copy one blob out of the outer tar, refusing it unless its content hashes to its name.
fn extract_blob(entry: &mut impl Read, path: &Path, hex: &str) -> Result<(), ImageError> {
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ImageError::io("create", path, e))?;
    let mut w = HashWriter::new(BufWriter::new(out));
    io::copy(entry, &mut w).map_err(|e| ImageError::io("extract blob to", path, e))?;
    let (mut out, actual, _) = w.finish();
    out.flush().map_err(|e| ImageError::io("write", path, e))?;
    let expected = format!("sha256:{hex}");
    if actual != expected {
        return Err(ImageError::DigestMismatch { expected, actual });
    }
    Ok(())
}

/// The staged path of the blob `desc` names, after checking it exists and has the declared size.
/// Its content was hashed against its name when it was extracted.
fn check_blob(
    blob_dir: &Path,
    blobs: &BTreeSet<String>,
    desc: &Descriptor,
    referrer: &str,
) -> Result<PathBuf, ImageError> {
    let hex = oci::sha256_hex(&desc.digest).ok_or_else(|| {
        ImageError::layout(format!(
            "the {referrer} has digest {:?}; only sha256:<64 lowercase hex> is supported",
            desc.digest
        ))
    })?;
    if !blobs.contains(hex) {
        return Err(ImageError::MissingBlob {
            digest: desc.digest.clone(),
            referrer: referrer.to_string(),
        });
    }
    let path = blob_dir.join(hex);
    let actual = fs::symlink_metadata(&path)
        .map_err(|e| ImageError::io("stat", &path, e))?
        .len();
    if actual != desc.size {
        return Err(ImageError::SizeMismatch {
            digest: desc.digest.clone(),
            referrer: referrer.to_string(),
            declared: desc.size,
            actual,
        });
    }
    Ok(path)
}

fn read_json(path: &Path, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    if desc.size > MAX_JSON {
        return Err(ImageError::TooLarge {
            what: format!("blob {}", desc.digest),
            size: desc.size,
            limit: MAX_JSON,
        });
    }
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_JSON + 1).read_to_end(&mut buf))
        .map_err(|e| ImageError::io("read", path, e))?;
    Ok(buf)
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::BadJson {
        what: what.to_string(),
        source,
    })
}

fn expect_media(desc: &Descriptor, expected: &str, what: &str) -> Result<(), ImageError> {
    if desc.media_type == expected {
        return Ok(());
    }
    let hint = if desc.media_type == oci::MEDIA_INDEX {
        " (nested image indexes are not supported)"
    } else {
        ""
    };
    Err(ImageError::layout(format!(
        "the {what} {} has media type {:?}; expected {expected:?}{hint}",
        desc.digest, desc.media_type
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn outer_names_are_strict() {
        assert_eq!(outer_name(b"oci-layout"), Some(OuterName::OciLayout));
        assert_eq!(outer_name(b"./index.json"), Some(OuterName::Index));
        assert_eq!(outer_name(b"./"), Some(OuterName::Dir));
        assert_eq!(outer_name(b"blobs/sha256/"), Some(OuterName::Dir));
        assert_eq!(
            outer_name(format!("blobs/sha256/{HEX}").as_bytes()),
            Some(OuterName::Blob(HEX.into()))
        );
        for bad in [
            "../oci-layout".to_string(),
            "/index.json".into(),
            "blobs/sha512/abc".into(),
            format!("blobs/sha256/../{HEX}"),
            format!("blobs/sha256/{}", HEX.to_uppercase()),
            format!("blobs/sha256/{HEX}/x"),
            "blobs/sha256/abc".into(),
            "etc/passwd".into(),
            "././index.json".into(),
        ] {
            assert_eq!(outer_name(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn empty_blob_with_right_name_extracts() {
        let t = tempfile::tempdir().unwrap();
        extract_blob(&mut &b""[..], &t.path().join(HEX), HEX).unwrap();
        let err = extract_blob(&mut &b"x"[..], &t.path().join("other"), HEX).unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }));
    }

    #[test]
    fn staging_must_be_fresh() {
        let t = tempfile::tempdir().unwrap();
        let tar = t.path().join("p.tar");
        fs::write(&tar, [0u8; 1024]).unwrap();
        fs::create_dir_all(t.path().join("s/blobs")).unwrap();
        let err = open(&tar, &t.path().join("s")).unwrap_err();
        assert!(err.to_string().contains("fresh"), "{err}");
    }
}
