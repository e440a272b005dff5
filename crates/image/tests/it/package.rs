//! Whole packages: deterministic packing, round trips, and tampered or malformed layout tars.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use image::{open, pack, unpack, ImageError, MANIFEST_LABEL, MAX_JSON};
use serde_json::Value;
use tar::EntryType;

use crate::{sha256_hex, TarBuilder};

const TOML: &str = "name = \"demo\"\nversion = \"1.2.3\"\n";

/// A package source directory with a varied rootfs.
fn source(t: &Path) -> PathBuf {
    let dir = t.join("src");
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc/secret")).unwrap();
    fs::create_dir_all(root.join("run")).unwrap();
    fs::write(dir.join("shg-service.toml"), TOML).unwrap();
    let write = |p: &str, data: &str, mode: u32| {
        fs::write(root.join(p), data).unwrap();
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
    };
    write("bin/tool", "#!/bin/sh\necho hi\n", 0o755);
    write("bin/su", "setuid", 0o4755);
    write("etc/conf", "key=value\n", 0o600);
    write("etc/empty", "", 0o644);
    fs::set_permissions(root.join("etc/secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(root.join("bin/tool"), root.join("bin/tool-again")).unwrap();
    symlink("bin/tool", root.join("rel-link")).unwrap();
    symlink("/etc/conf", root.join("abs-link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("run/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let long = "d".repeat(60);
    fs::create_dir_all(root.join(&long).join(&long)).unwrap();
    write(
        &format!("{long}/{long}/file-with-a-long-path"),
        "deep",
        0o644,
    );
    dir
}

fn expected_mtime() -> i64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn packing_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let dir = source(t.path());
    let first = t.path().join("one.tar");
    let d1 = pack(&dir, &first).unwrap();

    // Touch everything on disk; the package must not change.
    let later = SystemTime::now() + Duration::from_secs(3600);
    for p in [
        "rootfs/bin/tool",
        "rootfs/etc",
        "rootfs",
        "shg-service.toml",
    ] {
        File::open(dir.join(p))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    fs::create_dir(t.path().join("elsewhere")).unwrap();
    let second = t.path().join("elsewhere/two.tar");
    let d2 = pack(&dir, &second).unwrap();

    assert_eq!(d1, d2);
    assert!(d1.starts_with("sha256:") && d1.len() == 71, "{d1}");
    assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
    assert_eq!(
        fs::read_dir(t.path().join("elsewhere")).unwrap().count(),
        1,
        "no temporary files left behind"
    );
}

#[test]
fn round_trip_reproduces_the_rootfs() {
    let t = tempfile::tempdir().unwrap();
    let dir = source(t.path());
    let tar = t.path().join("p.tar");
    let digest = pack(&dir, &tar).unwrap();

    let pkg = open(&tar, &t.path().join("staging")).unwrap();
    assert_eq!(pkg.digest, digest);
    assert_eq!(pkg.manifest_toml, TOML);
    assert_eq!(pkg.config["config"]["Labels"][MANIFEST_LABEL], TOML);
    assert_eq!(
        pkg.config["rootfs"]["diff_ids"][0],
        pkg.layers[0].diff_id.as_str()
    );
    assert_eq!(pkg.layers.len(), 1);
    assert_eq!(
        pkg.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        fs::metadata(&pkg.layers[0].path).unwrap().len(),
        pkg.layers[0].size
    );

    let dest = t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    unpack(&pkg, &dest).unwrap();

    let src = dir.join("rootfs");
    for p in [
        "bin",
        "bin/tool",
        "bin/su",
        "etc",
        "etc/conf",
        "etc/empty",
        "etc/secret",
        "run/pipe",
    ] {
        let (a, b) = (
            fs::symlink_metadata(src.join(p)).unwrap(),
            fs::symlink_metadata(dest.join(p)).unwrap(),
        );
        // setuid/setgid are dropped on unpack (see unpack.rs); everything else is kept.
        assert_eq!(a.mode() & !0o6000, b.mode(), "mode and type of {p}");
        assert_eq!(b.uid(), 0, "{p}");
        assert_eq!(b.mtime(), expected_mtime(), "{p}");
        if a.is_file() {
            assert_eq!(
                fs::read(src.join(p)).unwrap(),
                fs::read(dest.join(p)).unwrap(),
                "{p}"
            );
        }
    }
    assert_eq!(
        fs::symlink_metadata(dest.join("bin/su")).unwrap().mode() & 0o7777,
        0o755,
        "the setuid bit is dropped"
    );
    assert_eq!(
        fs::read_link(dest.join("rel-link")).unwrap(),
        Path::new("bin/tool")
    );
    assert_eq!(
        fs::read_link(dest.join("abs-link")).unwrap(),
        Path::new("/etc/conf")
    );
    assert_eq!(
        fs::metadata(dest.join("bin/tool")).unwrap().ino(),
        fs::metadata(dest.join("bin/tool-again")).unwrap().ino()
    );
    let long = "d".repeat(60);
    assert_eq!(
        fs::read_to_string(dest.join(format!("{long}/{long}/file-with-a-long-path"))).unwrap(),
        "deep"
    );
}

/// The files of a layout tar, in order.
fn entries(tar: &Path) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(File::open(tar).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (e.path().unwrap().display().to_string(), data)
        })
        .collect()
}

fn write(tar: &Path, entries: &[(String, Vec<u8>)]) {
    let mut b = TarBuilder::new();
    for (name, data) in entries {
        b = b.raw(name, EntryType::Regular, "", data, 0o644);
    }
    fs::write(tar, b.finish()).unwrap();
}

fn json(entries: &[(String, Vec<u8>)], name: &str) -> Value {
    serde_json::from_slice(&entries.iter().find(|(n, _)| n == name).unwrap().1).unwrap()
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Replace the JSON blob at `digest` with `value`, returning its new digest.
fn replace_blob(
    entries: &mut Vec<(String, Vec<u8>)>,
    digest: &str,
    value: &Value,
) -> (String, u64) {
    let bytes = serde_json::to_vec(value).unwrap();
    let new = format!("sha256:{}", sha256_hex(&bytes));
    entries.retain(|(n, _)| *n != blob_name(digest));
    entries.push((blob_name(&new), bytes.clone()));
    (new, bytes.len() as u64)
}

/// Edit the image manifest and keep index.json pointing at it.
fn edit_manifest(entries: &mut Vec<(String, Vec<u8>)>, edit: impl FnOnce(&mut Value)) {
    let mut index = json(entries, "index.json");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest = json(entries, &blob_name(&digest));
    edit(&mut manifest);
    let (new, size) = replace_blob(entries, &digest, &manifest);
    index["manifests"][0]["digest"] = new.into();
    index["manifests"][0]["size"] = size.into();
    let i = entries.iter().position(|(n, _)| n == "index.json").unwrap();
    entries[i].1 = serde_json::to_vec(&index).unwrap();
}

/// Edit the image config and keep the manifest and index pointing at it.
fn edit_config(entries: &mut Vec<(String, Vec<u8>)>, edit: impl FnOnce(&mut Value)) {
    let index = json(entries, "index.json");
    let manifest = json(
        entries,
        &blob_name(index["manifests"][0]["digest"].as_str().unwrap()),
    );
    let digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config = json(entries, &blob_name(&digest));
    edit(&mut config);
    let (new, size) = replace_blob(entries, &digest, &config);
    edit_manifest(entries, |m| {
        m["config"]["digest"] = new.into();
        m["config"]["size"] = size.into();
    });
}

struct Fixture {
    t: tempfile::TempDir,
    entries: Vec<(String, Vec<u8>)>,
    layer: String,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = source(t.path());
    let tar = t.path().join("good.tar");
    pack(&dir, &tar).unwrap();
    let entries = entries(&tar);
    let index = json(&entries, "index.json");
    let manifest = json(
        &entries,
        &blob_name(index["manifests"][0]["digest"].as_str().unwrap()),
    );
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    Fixture { t, entries, layer }
}

impl Fixture {
    /// Write the (edited) entries as a tar and open it into a fresh staging directory.
    fn open(&self) -> Result<image::Package, ImageError> {
        let n = fs::read_dir(self.t.path()).unwrap().count();
        let tar = self.t.path().join(format!("edited-{n}.tar"));
        write(&tar, &self.entries);
        open(&tar, &self.t.path().join(format!("staging-{n}")))
    }

    fn layer_mut(&mut self) -> &mut Vec<u8> {
        let name = blob_name(&self.layer);
        &mut self.entries.iter_mut().find(|(n, _)| *n == name).unwrap().1
    }
}

#[test]
fn a_rewritten_layout_still_opens() {
    let f = fixture();
    f.open().unwrap();
}

#[test]
fn a_flipped_byte_is_a_digest_error() {
    let mut f = fixture();
    let layer = f.layer_mut();
    let mid = layer.len() / 2;
    layer[mid] ^= 0x01;
    let err = f.open().unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if *expected == f.layer),
        "{err}"
    );
    assert!(err.to_string().contains("tampered"), "{err}");
}

#[test]
fn sizes_must_match_the_descriptor() {
    for delta in [1i64, -1] {
        let mut f = fixture();
        edit_manifest(&mut f.entries, |m| {
            let size = m["layers"][0]["size"].as_i64().unwrap();
            m["layers"][0]["size"] = (size + delta).into();
        });
        let err = f.open().unwrap_err();
        assert!(
            matches!(&err, ImageError::SizeMismatch { digest, .. } if *digest == f.layer),
            "{err}"
        );
    }
}

#[test]
fn a_missing_blob_is_named() {
    let mut f = fixture();
    let name = blob_name(&f.layer);
    f.entries.retain(|(n, _)| *n != name);
    let err = f.open().unwrap_err();
    assert!(
        matches!(&err, ImageError::MissingBlob { digest, .. } if *digest == f.layer),
        "{err}"
    );
}

#[test]
fn a_wrong_diff_id_fails_the_unpack() {
    let mut f = fixture();
    edit_config(&mut f.entries, |c| {
        c["rootfs"]["diff_ids"][0] = format!("sha256:{}", "0".repeat(64)).into()
    });
    let pkg = f.open().unwrap();
    let dest = f.t.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let err = unpack(&pkg, &dest).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn a_config_without_the_label_is_not_a_package() {
    let mut f = fixture();
    edit_config(&mut f.entries, |c| c["config"] = serde_json::json!({}));
    let err = f.open().unwrap_err();
    assert!(err.to_string().contains(MANIFEST_LABEL), "{err}");
}

#[test]
fn unexpected_outer_entries_are_refused() {
    for (name, kind, link) in [
        ("../evil", EntryType::Regular, ""),
        ("etc/passwd", EntryType::Regular, ""),
        ("blobs/sha256/abc", EntryType::Regular, ""),
        ("index.json", EntryType::Symlink, "/etc/passwd"),
        ("oci-layout", EntryType::Link, "index.json"),
    ] {
        let t = tempfile::tempdir().unwrap();
        let tar = t.path().join("p.tar");
        let staging = t.path().join("staging");
        fs::write(
            &tar,
            TarBuilder::new().raw(name, kind, link, b"", 0o644).finish(),
        )
        .unwrap();
        let err = open(&tar, &staging).unwrap_err();
        assert!(
            matches!(&err, ImageError::LayoutEntry { entry, .. } if entry == name),
            "{name}: {err}"
        );
        let names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only the tar and the staging dir: {names:?}"
        );
    }

    let mut f = fixture();
    let dup = f.entries[0].clone();
    f.entries.push(dup);
    let err = f.open().unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");
}

#[test]
fn oversized_json_is_refused() {
    let mut f = fixture();
    let i = f
        .entries
        .iter()
        .position(|(n, _)| n == "index.json")
        .unwrap();
    f.entries[i].1 = vec![b' '; MAX_JSON as usize + 1];
    let err = f.open().unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
}

#[test]
fn layouts_archived_with_plain_tar_open() {
    // `tar -C dir -cf x.tar .` adds "./" prefixes and directory entries.
    let f = fixture();
    let dir = f.t.path().join("layout");
    for (name, data) in &f.entries {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    let tar = f.t.path().join("plain.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status();
    if !status.map(|s| s.success()).unwrap_or(false) {
        eprintln!("skipping: no working tar(1)");
        return;
    }
    open(&tar, &f.t.path().join("staging-plain")).unwrap();
}

#[test]
fn annotations_are_added_without_changing_the_package() {
    let t = tempfile::tempdir().unwrap();
    let dir = source(t.path());
    let tar = t.path().join("p.tar");
    let digest = pack(&dir, &tar).unwrap();
    let before = entries(&tar);
    let mut add = std::collections::BTreeMap::new();
    add.insert(
        "org.shg.signature.0011223344556677".to_string(),
        "c2ln".to_string(),
    );
    let mut seen = None;
    let signed = image::annotate(&tar, |d| {
        seen = Some(d.to_string());
        add.clone()
    });
    assert_eq!(signed.unwrap(), digest);
    assert_eq!(seen.as_deref(), Some(digest.as_str()));
    let after = entries(&tar);
    // Every blob is byte for byte the same; only index.json gained the annotation.
    for ((n1, b1), (n2, b2)) in before.iter().zip(&after) {
        assert_eq!(n1, n2);
        if n1 != "index.json" {
            assert_eq!(b1, b2, "{n1} changed");
        }
    }
    let package = open(&tar, &t.path().join("staging")).unwrap();
    assert_eq!(package.digest, digest);
    assert_eq!(package.annotations, add);
}

/// A standard image: no label, the way docker, podman or buildah write one.
fn standard_image(t: &Path) -> PathBuf {
    let root = t.join("std-rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("bin/app"), "#!/bin/sh\n").unwrap();
    let config = serde_json::json!({
        "Entrypoint": ["/bin/app"],
        "Cmd": ["serve"],
        "Env": ["PATH=/bin"],
    });
    let out = t.join("std.tar");
    image::pack_image(&root, config.as_object().unwrap().clone(), &out).unwrap();
    out
}

#[test]
fn a_standard_image_needs_its_manifest_beside_it_and_names_both_ways_out() {
    let t = tempfile::tempdir().unwrap();
    let tar = standard_image(t.path());
    let err = open(&tar, &t.path().join("s1")).unwrap_err();
    assert!(matches!(err, ImageError::Unlabelled { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("--manifest shg-service.toml"), "{text}");
    assert!(text.contains("X-SHG-Manifest"), "{text}");
    assert!(text.contains("shg pack"), "{text}");

    let p = image::open_with(&tar, &t.path().join("s2"), Some(TOML)).unwrap();
    assert_eq!(p.manifest_toml, TOML);
    let of_text = image::manifest_digest(TOML);
    assert_eq!(p.manifest_digest.as_deref(), Some(of_text.as_str()));
    assert_eq!(p.digest, image::pair_digest(&p.image_digest, &of_text));
    assert_ne!(p.digest, p.image_digest);
    // The image's own config is kept for whoever runs it.
    assert_eq!(p.config["config"]["Entrypoint"][0], "/bin/app");
    assert_eq!(p.config["config"]["Cmd"][0], "serve");
    assert!(p.config["config"].get("Labels").is_none(), "{}", p.config);
}

#[test]
fn the_pair_digest_changes_with_either_half_and_is_spelled_out() {
    let image = format!("sha256:{}", "a".repeat(64));
    let manifest = image::manifest_digest("name = \"x\"\n");
    // sha256 of the documented text, computed independently.
    let text = format!("shg image+manifest v1\n{image}\n{manifest}\n");
    assert_eq!(
        image::pair_digest(&image, &manifest),
        format!("sha256:{}", sha256_hex(text.as_bytes()))
    );
    assert_eq!(
        manifest,
        format!("sha256:{}", sha256_hex(b"name = \"x\"\n"))
    );
    let other_image = format!("sha256:{}", "b".repeat(64));
    let other_manifest = image::manifest_digest("name = \"y\"\n");
    let pair = image::pair_digest(&image, &manifest);
    assert_ne!(pair, image::pair_digest(&other_image, &manifest));
    assert_ne!(pair, image::pair_digest(&image, &other_manifest));
}

#[test]
fn a_manifest_beside_a_labelled_package_takes_the_place_of_its_label() {
    let t = tempfile::tempdir().unwrap();
    let dir = source(t.path());
    let tar = t.path().join("p.tar");
    let digest = pack(&dir, &tar).unwrap();
    let beside = "name = \"other\"\nversion = \"9.9.9\"\n";
    let p = image::open_with(&tar, &t.path().join("s"), Some(beside)).unwrap();
    assert_eq!(p.manifest_toml, beside);
    assert_eq!(p.image_digest, digest);
    assert_ne!(
        p.digest, digest,
        "the label's signatures cannot vouch for another manifest"
    );
    let labelled = open(&tar, &t.path().join("s2")).unwrap();
    assert_eq!(
        (labelled.digest.as_str(), labelled.manifest_digest),
        (digest.as_str(), None)
    );
}
