//! Packing a service directory into a deterministic OCI layout tar.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::GzBuilder;
use tar::{EntryType, Header};

use crate::oci::{self, Descriptor, HashWriter, ImageConfig, Index, Manifest, OciLayout, RootFs};
use crate::{ImageError, MANIFEST_LABEL, MAX_JSON};

/// Name of the service manifest inside a package source directory.
pub const MANIFEST_FILE: &str = "shg-service.toml";
/// Name of the root file system directory inside a package source directory.
pub const ROOTFS_DIR: &str = "rootfs";

/// Pack `dir` (which holds `shg-service.toml` and `rootfs/`) into an OCI layout tar at `out`.
///
/// The rootfs becomes one gzip layer. The output is deterministic: entries are sorted, owners
/// are root, times are `SOURCE_DATE_EPOCH` (or 0), so the same input gives the same bytes and
/// the same digest. `out` is written through a temporary file and renamed into place.
/// Returns the image manifest digest (`sha256:…`).
pub fn pack(dir: &Path, out: &Path) -> Result<String, ImageError> {
    let mtime = source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?;
    pack_at(dir, out, mtime)
}

/// The fixed timestamp for packed entries: `SOURCE_DATE_EPOCH` if set, else 0.
pub(crate) fn source_date_epoch(value: Option<&str>) -> Result<u64, ImageError> {
    match value {
        None | Some("") => Ok(0),
        Some(v) => v.trim().parse().map_err(|_| ImageError::SourceDateEpoch {
            value: v.to_string(),
        }),
    }
}

pub(crate) fn pack_at(dir: &Path, out: &Path, mtime: u64) -> Result<String, ImageError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let rootfs = dir.join(ROOTFS_DIR);
    let manifest_text = match fs::read(&manifest_path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| ImageError::ManifestNotUtf8 {
            path: manifest_path.clone(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::MissingSource {
                path: manifest_path,
            })
        }
        Err(e) => return Err(ImageError::io("read", manifest_path, e)),
    };
    let config = oci::ContainerConfig {
        labels: Some([(MANIFEST_LABEL.to_string(), manifest_text)].into()),
        other: Default::default(),
    };
    let what = format!("the image config holding {}", manifest_path.display());
    write_image(&rootfs, config, &what, out, mtime)
}

/// Packs the directory `rootfs` as a standard OCI image, as other image builders write one:
/// one gzip layer, no [`MANIFEST_LABEL`], and `config` (`Entrypoint`, `Cmd`, `Env`, `User`,
/// `WorkingDir`, `ExposedPorts`, …) as the image config's `config`. Deterministic like
/// [`pack`]. Such an image installs with its service manifest given beside it
/// ([`crate::open_with`]); this is how tests make one without an image builder.
pub fn pack_image(
    rootfs: &Path,
    config: serde_json::Map<String, serde_json::Value>,
    out: &Path,
) -> Result<String, ImageError> {
    let mtime = source_date_epoch(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())?;
    let config = oci::ContainerConfig {
        labels: None,
        other: config,
    };
    write_image(rootfs, config, "the image config", out, mtime)
}

/// Writes the layout tar of an image of one layer made from `rootfs`; `what` names the
/// config in errors.
fn write_image(
    rootfs: &Path,
    container: oci::ContainerConfig,
    what: &str,
    out: &Path,
    mtime: u64,
) -> Result<String, ImageError> {
    if !fs::metadata(rootfs).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(ImageError::MissingSource {
            path: rootfs.to_path_buf(),
        });
    }

    let scratch =
        tempfile::tempdir().map_err(|e| ImageError::io("create", std::env::temp_dir(), e))?;
    let layer_path = scratch.path().join("layer");
    let (layer_digest, layer_size, diff_id) = write_layer(rootfs, &layer_path, mtime)?;

    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: container,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
    };
    let config_json = to_json(&config);
    if config_json.len() as u64 > MAX_JSON {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            size: config_json.len() as u64,
            limit: MAX_JSON,
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_MANIFEST.into()),
        config: descriptor(oci::MEDIA_CONFIG, &config_json),
        layers: vec![Descriptor {
            media_type: oci::MEDIA_LAYER_GZIP.into(),
            digest: layer_digest.clone(),
            size: layer_size,
            annotations: None,
        }],
    };
    let manifest_json = to_json(&manifest);
    let manifest_desc = descriptor(oci::MEDIA_MANIFEST, &manifest_json);
    let index = Index {
        schema_version: 2,
        media_type: Some(oci::MEDIA_INDEX.into()),
        manifests: vec![manifest_desc.clone()],
    };
    let layout = OciLayout {
        image_layout_version: oci::LAYOUT_VERSION.into(),
    };

    // Blobs first, sorted by digest, then index.json and oci-layout: sorted by path.
    let mut blobs: Vec<(String, Blob)> = vec![
        (manifest.config.digest.clone(), Blob::Bytes(&config_json)),
        (manifest_desc.digest.clone(), Blob::Bytes(&manifest_json)),
        (layer_digest, Blob::File(&layer_path)),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| ImageError::io("create a file in", parent, e))?;
    let werr = |e| ImageError::io("write", out, e);
    let mut builder = tar::Builder::new(BufWriter::new(tmp.as_file()));
    for (digest, blob) in &blobs {
        let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        match blob {
            Blob::Bytes(b) => append_plain(&mut builder, &name, b, mtime).map_err(werr)?,
            Blob::File(p) => {
                let mut f = File::open(p).map_err(|e| ImageError::io("open", *p, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| ImageError::io("stat", *p, e))?
                    .len();
                let mut h = plain_header(len, mtime);
                builder.append_data(&mut h, &name, &mut f).map_err(werr)?;
            }
        }
    }
    append_plain(&mut builder, "index.json", &to_json(&index), mtime).map_err(werr)?;
    append_plain(&mut builder, "oci-layout", &to_json(&layout), mtime).map_err(werr)?;
    let mut w = builder.into_inner().map_err(werr)?;
    w.flush().map_err(werr)?;
    drop(w);
    tmp.persist(out)
        .map_err(|e| ImageError::io("rename into", out, e.error))?;
    Ok(manifest_desc.digest)
}

enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("OCI structs always serialize")
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: oci::digest_of(bytes),
        size: bytes.len() as u64,
        annotations: None,
    }
}

fn plain_header(size: u64, mtime: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn append_plain<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    mtime: u64,
) -> io::Result<()> {
    let mut h = plain_header(data.len() as u64, mtime);
    b.append_data(&mut h, name, data)
}

/// One file-system object found under rootfs/, by path relative to it.
struct SourceEntry {
    rel: PathBuf,
    abs: PathBuf,
    meta: fs::Metadata,
}

/// Every object under `root` (not `root` itself), sorted by path bytes so parents precede children.
fn collect(root: &Path) -> Result<Vec<SourceEntry>, ImageError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs_dir = root.join(&rel);
        let rd =
            fs::read_dir(&abs_dir).map_err(|e| ImageError::io("read directory", &abs_dir, e))?;
        for item in rd {
            let item = item.map_err(|e| ImageError::io("read directory", &abs_dir, e))?;
            let abs = item.path();
            let meta = fs::symlink_metadata(&abs).map_err(|e| ImageError::io("stat", &abs, e))?;
            let child = rel.join(item.file_name());
            if meta.is_dir() {
                stack.push(child.clone());
            }
            out.push(SourceEntry {
                rel: child,
                abs,
                meta,
            });
        }
    }
    out.sort_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
    Ok(out)
}

/// Write rootfs/ as a gzip tar layer; returns (blob digest, blob size, diff_id).
fn write_layer(
    rootfs: &Path,
    path: &Path,
    mtime: u64,
) -> Result<(String, u64, String), ImageError> {
    let entries = collect(rootfs)?;
    let file = File::create(path).map_err(|e| ImageError::io("create", path, e))?;
    let werr = |e| ImageError::io("write layer", path, e);
    // Fixed gzip settings: no file name, mtime 0, OS "unknown", level 6.
    let gz: GzEncoder<HashWriter<BufWriter<File>>> =
        GzBuilder::new().mtime(0).operating_system(255).write(
            HashWriter::new(BufWriter::new(file)),
            flate2::Compression::new(6),
        );
    let mut builder = tar::Builder::new(HashWriter::new(gz));
    let mut seen_inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();

    for e in &entries {
        let ft = e.meta.file_type();
        let mut h = Header::new_gnu();
        h.set_mode(e.meta.mode() & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(0);
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            builder
                .append_data(&mut h, &e.rel, io::empty())
                .map_err(werr)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&e.abs).map_err(|err| ImageError::io("read link", &e.abs, err))?;
            h.set_entry_type(EntryType::Symlink);
            builder.append_link(&mut h, &e.rel, &target).map_err(werr)?;
        } else if ft.is_file() {
            let key = (e.meta.dev(), e.meta.ino());
            if e.meta.nlink() > 1 {
                if let Some(first) = seen_inodes.get(&key) {
                    h.set_entry_type(EntryType::Link);
                    builder.append_link(&mut h, &e.rel, first).map_err(werr)?;
                    continue;
                }
                seen_inodes.insert(key, e.rel.clone());
            }
            let mut f = File::open(&e.abs).map_err(|err| ImageError::io("open", &e.abs, err))?;
            h.set_entry_type(EntryType::Regular);
            h.set_size(e.meta.len());
            builder.append_data(&mut h, &e.rel, &mut f).map_err(werr)?;
        } else if ft.is_fifo() {
            h.set_entry_type(EntryType::Fifo);
            builder
                .append_data(&mut h, &e.rel, io::empty())
                .map_err(werr)?;
        } else {
            let kind = if ft.is_char_device() {
                "character device"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_socket() {
                "socket"
            } else {
                "special"
            };
            return Err(ImageError::UnsupportedFile {
                path: e.abs.clone(),
                kind,
            });
        }
    }

    let (gz, diff_id, _) = builder.into_inner().map_err(werr)?.finish();
    let (mut file, digest, size) = gz.finish().map_err(werr)?.finish();
    file.flush().map_err(werr)?;
    Ok((digest, size, diff_id))
}

/// Adds the annotations `make` gives for the package digest to the image manifest's entry in
/// the `index.json` of the layout tar at `tar_path` (rewritten through a temporary file).
/// Everything else is copied unchanged, so the package digest stays the same; it is
/// returned. This is how signatures are attached.
pub fn annotate(
    tar_path: &Path,
    make: impl FnOnce(&str) -> std::collections::BTreeMap<String, String>,
) -> Result<String, ImageError> {
    let mut make = Some(make);
    let rerr = |e| ImageError::io("read package", tar_path, e);
    let werr = |e| ImageError::io("write", tar_path, e);
    let input = File::open(tar_path).map_err(rerr)?;
    let parent = match tar_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(|e| ImageError::io("create a file in", parent, e))?;
    let mut builder = tar::Builder::new(BufWriter::new(tmp.as_file()));
    let mut archive = tar::Archive::new(io::BufReader::new(input));
    let mut digest = None;
    for entry in archive.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        let path = entry.path_bytes().into_owned();
        let mut header = entry.header().clone();
        let name = path.strip_prefix(b"./").unwrap_or(&path);
        if name != b"index.json" {
            builder
                .append_data(
                    &mut header,
                    Path::new(std::ffi::OsStr::from_bytes(&path)),
                    &mut entry,
                )
                .map_err(werr)?;
            continue;
        }
        if entry.size() > MAX_JSON {
            return Err(ImageError::layout(format!(
                "index.json in {} is larger than {MAX_JSON} bytes",
                tar_path.display()
            )));
        }
        let mut text = Vec::new();
        io::Read::read_to_end(&mut entry, &mut text).map_err(rerr)?;
        let mut index: Index = serde_json::from_slice(&text)
            .map_err(|e| ImageError::layout(format!("index.json: {e}")))?;
        let [desc] = &mut index.manifests[..] else {
            return Err(ImageError::layout(format!(
                "index.json lists {} manifests; an SHG package holds exactly one image",
                index.manifests.len()
            )));
        };
        let Some(make) = make.take() else {
            return Err(ImageError::layout(format!(
                "{} holds index.json twice",
                tar_path.display()
            )));
        };
        desc.annotations
            .get_or_insert_with(Default::default)
            .extend(make(&desc.digest));
        digest = Some(desc.digest.clone());
        let json = to_json(&index);
        header.set_size(json.len() as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, "index.json", &json[..])
            .map_err(werr)?;
    }
    let digest = digest
        .ok_or_else(|| ImageError::layout(format!("{} has no index.json", tar_path.display())))?;
    let mut w = builder.into_inner().map_err(werr)?;
    w.flush().map_err(werr)?;
    drop(w);
    tmp.persist(tar_path)
        .map_err(|e| ImageError::io("rename into", tar_path, e.error))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_parses_or_names_the_value() {
        assert_eq!(source_date_epoch(None).unwrap(), 0);
        assert_eq!(source_date_epoch(Some("")).unwrap(), 0);
        assert_eq!(
            source_date_epoch(Some("1700000000")).unwrap(),
            1_700_000_000
        );
        let err = source_date_epoch(Some("yesterday"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"yesterday\""), "{err}");
    }

    #[test]
    fn missing_parts_are_named() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("p.tar");
        let err = pack_at(t.path(), &out, 0).unwrap_err();
        assert!(
            matches!(&err, ImageError::MissingSource { path } if path.ends_with(MANIFEST_FILE))
        );
        fs::write(t.path().join(MANIFEST_FILE), "name = \"x\"\n").unwrap();
        let err = pack_at(t.path(), &out, 0).unwrap_err();
        assert!(matches!(&err, ImageError::MissingSource { path } if path.ends_with(ROOTFS_DIR)));
        assert!(err.to_string().contains("rootfs"), "{err}");
    }

    #[test]
    fn sockets_are_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(MANIFEST_FILE), "").unwrap();
        fs::create_dir(t.path().join(ROOTFS_DIR)).unwrap();
        let sock = t.path().join(ROOTFS_DIR).join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = pack_at(t.path(), &t.path().join("p.tar"), 0).unwrap_err();
        assert!(
            matches!(&err, ImageError::UnsupportedFile { kind: "socket", .. }),
            "{err}"
        );
    }

    #[test]
    fn collect_puts_parents_first() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a/b", "a.b", "c"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(t.path().join("a/b/f"), "x").unwrap();
        let names: Vec<_> = collect(t.path())
            .unwrap()
            .into_iter()
            .map(|e| e.rel)
            .collect();
        let names: Vec<_> = names.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(names, ["a", "a.b", "a/b", "a/b/f", "c"]);
    }
}
