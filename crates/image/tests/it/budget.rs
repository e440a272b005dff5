//! Unpacked sizes counted from tar headers, and unpacks held to a budget: a few MiB of gzip
//! that unpack to gigabytes of zeros are measured without being written, and refused from
//! their headers before a byte of them is written.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::write::GzEncoder;
use image::{
    disk_usage, measure, measure_layer, unpack_within, Allowance, Budget, EntryProblem, ImageError,
    Layer, LayerSize, LayerStore, Package, BLOCK,
};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::{sha256_hex, TarBuilder, TAR};

const MIB: u64 = 1 << 20;
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The diff_id given to layers too big to hash in a test: every test with one is refused
/// (or only measured) before the unpack would reach the end of the stream and check it.
const UNCHECKED: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: the layer store needs root");
    false
}

fn header(name: &str, kind: EntryType, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    h.set_mtime(1_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    h
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A gzip layer holding the directory `srv/` and the file `srv/zeros` of `mib` MiB of
/// zeros, as `tar c | gzip -9` would make it but without ever holding the zeros: one gzip
/// member per MiB, compressed once and repeated (a gzip stream may be several members, and
/// the unpacker reads them as one, as `gzip -d` does). Returns the blob and its diff_id,
/// which is only worked out (hashing every zero) for `hash`.
fn zeros_layer(mib: u64, hash: bool) -> (Vec<u8>, String) {
    let mut head = header("srv/", EntryType::Directory, 0).as_bytes().to_vec();
    head.extend_from_slice(header("srv/zeros", EntryType::Regular, mib * MIB).as_bytes());
    let zeros = vec![0u8; MIB as usize];
    // The file ends on a block boundary; the end-of-archive marker is two zero blocks.
    let tail = [0u8; 1024];
    let mut blob = gzip(&head);
    let member = gzip(&zeros);
    for _ in 0..mib {
        blob.extend_from_slice(&member);
    }
    blob.extend_from_slice(&gzip(&tail));
    let diff_id = if hash {
        let mut h = Sha256::new();
        h.update(&head);
        for _ in 0..mib {
            h.update(&zeros);
        }
        h.update(tail);
        format!("sha256:{}", hex::encode(h.finalize()))
    } else {
        UNCHECKED.to_string()
    };
    (blob, diff_id)
}

/// A package of `(blob, media type, diff_id)` layers, base first, blobs stored in `dir`.
fn package(dir: &Path, layers: Vec<(Vec<u8>, &str, String)>) -> Package {
    let layers = layers
        .into_iter()
        .map(|(blob, media_type, diff_id)| {
            let hex = sha256_hex(&blob);
            let path = dir.join(&hex);
            fs::write(&path, &blob).unwrap();
            Layer {
                digest: format!("sha256:{hex}"),
                size: blob.len() as u64,
                media_type: media_type.to_string(),
                diff_id,
                path,
            }
        })
        .collect();
    Package {
        digest: format!("sha256:{}", "1".repeat(64)),
        image_digest: format!("sha256:{}", "1".repeat(64)),
        manifest_digest: None,
        manifest_toml: String::new(),
        config: serde_json::Value::Null,
        layers,
        dir: dir.to_path_buf(),
        annotations: Default::default(),
    }
}

/// An uncompressed layer as a package layer: its diff_id is its digest.
fn plain(tar: Vec<u8>) -> (Vec<u8>, &'static str, String) {
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    (tar, TAR, diff_id)
}

/// A temp dir with `blobs/`, a layer store in `store/` and an unpack destination `dest/`.
struct Scene {
    t: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        for d in ["blobs", "dest"] {
            fs::create_dir(t.path().join(d)).unwrap();
        }
        Scene { t }
    }

    fn blobs(&self) -> PathBuf {
        self.t.path().join("blobs")
    }

    fn dest(&self) -> PathBuf {
        self.t.path().join("dest")
    }

    fn store(&self) -> LayerStore {
        LayerStore::open(&self.t.path().join("store")).unwrap()
    }

    /// Names under `sub` of the temp dir, recursively, with each file's apparent size.
    fn tree(&self, sub: &str) -> BTreeSet<(String, u64)> {
        let root = self.t.path().join(sub);
        let mut out = BTreeSet::new();
        let mut todo = vec![root.clone()];
        while let Some(p) = todo.pop() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    todo.push(e.path());
                }
                let name = e.path().strip_prefix(&root).unwrap().display().to_string();
                out.insert((name, if meta.is_file() { meta.len() } else { 0 }));
            }
        }
        out
    }
}

fn storage(reserve: u64) -> Budget {
    Budget::whole(Allowance::Storage {
        service: "web".into(),
        reserve,
    })
}

fn over(err: ImageError) -> (String, u64, bool, u64) {
    match err {
        ImageError::OverAllowance {
            what,
            size,
            at_least,
            limit,
            ..
        } => (what, size, at_least, limit),
        other => panic!("expected a refusal over the allowance, got {other}"),
    }
}

#[test]
fn a_huge_file_of_zeros_is_measured_from_its_headers_without_writing_it() {
    let s = Scene::new();
    let (blob, _) = zeros_layer(3000, false);
    assert!(blob.len() < 4 << 20, "{} bytes of gzip", blob.len());
    let pkg = package(&s.blobs(), vec![(blob, GZIP, UNCHECKED.into())]);
    let before = s.tree("");

    let started = Instant::now();
    let sizes = measure(&pkg).unwrap();
    eprintln!(
        "figure: sizing a layer of 3000 MiB of zeros ({} bytes of gzip) took {:?}",
        pkg.layers[0].size,
        started.elapsed()
    );
    assert_eq!(
        sizes,
        [LayerSize {
            digest: pkg.layers[0].digest.clone(),
            diff_id: UNCHECKED.into(),
            // The root and srv/ are a block each, the file its data in whole blocks.
            bytes: 3000 * MIB + 2 * BLOCK,
            file_bytes: 3000 * MIB,
            entries: 2,
            complete: true,
        }]
    );
    assert_eq!(s.tree(""), before, "measuring wrote something");
}

#[test]
fn a_ceiling_stops_the_count_at_the_header_that_passes_it() {
    let s = Scene::new();
    let (blob, _) = zeros_layer(3000, false);
    let pkg = package(&s.blobs(), vec![(blob, GZIP, UNCHECKED.into())]);
    let started = Instant::now();
    let size = measure_layer(&pkg.layers[0], Some(16 * MIB)).unwrap();
    let took = started.elapsed();
    eprintln!("figure: sizing it with a 16 MiB ceiling took {took:?}");
    assert!(!size.complete);
    assert_eq!(size.bytes, 3000 * MIB + 2 * BLOCK);
    // Not one MiB of zeros was inflated: the header of the file passed the ceiling.
    assert!(took.as_secs() < 5, "{took:?}");

    // A ceiling the layer stays under changes nothing.
    let small = zeros_layer(2, true);
    let pkg = package(&s.blobs(), vec![(small.0, GZIP, small.1)]);
    let size = measure_layer(&pkg.layers[0], Some(2 * MIB + 2 * BLOCK)).unwrap();
    assert!(size.complete);
    assert_eq!(size.bytes, 2 * MIB + 2 * BLOCK);
}

#[test]
fn the_store_refuses_a_layer_over_its_budget_before_writing_it() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let (blob, _) = zeros_layer(3000, false);
    let pkg = package(&s.blobs(), vec![(blob, GZIP, UNCHECKED.into())]);
    let store = s.store();
    let started = Instant::now();
    let err = store.ensure_within(&pkg, &storage(16 * MIB)).unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert_eq!(
        text,
        format!(
            "layer {} unpacks to at least 3000 MiB, more than the 16 MiB of storage `web` \
             reserves; raise `resources.storage` in shg-service.toml or ask the operator for \
             a larger image allowance",
            pkg.layers[0].digest
        )
    );
    assert_eq!(
        over(err),
        (
            format!("layer {}", pkg.layers[0].digest),
            3000 * MIB + 2 * BLOCK,
            true,
            16 * MIB
        )
    );
    // Refused at the file's header: nothing of it was inflated, let alone written.
    assert!(took.as_secs() < 5, "{took:?}");
    assert_eq!(
        s.tree("store"),
        [
            ("lock".to_string(), 0),
            ("sha256".into(), 0),
            ("tmp".into(), 0)
        ]
        .into()
    );
}

#[test]
fn unpack_refuses_a_layer_over_its_budget_before_writing_it() {
    let s = Scene::new();
    let (blob, _) = zeros_layer(3000, false);
    let pkg = package(&s.blobs(), vec![(blob, GZIP, UNCHECKED.into())]);
    let (what, size, at_least, limit) =
        over(unpack_within(&pkg, &s.dest(), &storage(16 * MIB)).unwrap_err());
    assert_eq!(what, format!("layer {}", pkg.layers[0].digest));
    assert_eq!(
        (size, at_least, limit),
        (3000 * MIB + 2 * BLOCK, true, 16 * MIB)
    );
    // `srv/` fitted and was made; the file was refused before it was created.
    assert_eq!(s.tree("dest"), [("srv".to_string(), 0)].into());
}

/// A layer with something of every kind: implied and explicit directories, files empty and
/// not, a symlink, a hard link, a fifo, whiteouts.
fn varied_layer() -> Vec<u8> {
    TarBuilder::new()
        .dir("etc/")
        .file("etc/os-release", "ID=shg\n")
        .raw("etc/big", EntryType::Regular, "", &[7u8; 10_000], 0o644)
        .file("etc/empty", "")
        .file("usr/lib/deep/implied/file", "x")
        .symlink("bin", "usr/bin")
        .hardlink("etc/again", "etc/os-release")
        .raw("run/fifo", EntryType::Fifo, "", b"", 0o600)
        .file("var/.wh.gone", "")
        .file("var/.wh..wh..opq", "")
        .finish()
}

#[test]
fn every_entry_costs_whole_blocks_and_each_directory_one() {
    let s = Scene::new();
    let pkg = package(&s.blobs(), vec![plain(varied_layer())]);
    let [size] = &measure(&pkg).unwrap()[..] else {
        panic!("one layer")
    };
    // Directories: the root, etc, usr, usr/lib, usr/lib/deep, usr/lib/deep/implied, run,
    // var (8).
    // Files: os-release 1, big 3 (10,000 bytes), empty 1, file 1. Others: bin, again,
    // fifo, two whiteouts (5).
    let blocks = 8 + (1 + 3 + 1 + 1) + 5;
    assert_eq!(size.bytes, blocks * BLOCK);
    assert_eq!(size.entries, 7 + 4 + 5);
    assert_eq!(size.file_bytes, 7 + 10_000 + 1);
}

#[test]
fn a_budget_exactly_the_measure_passes_and_one_byte_less_does_not() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let zeros = zeros_layer(3, true);
    let pkg = package(
        &s.blobs(),
        vec![plain(varied_layer()), (zeros.0, GZIP, zeros.1)],
    );
    let sizes = measure(&pkg).unwrap();
    let total: u64 = sizes.iter().map(|l| l.bytes).sum();
    assert_eq!(
        storage(total).check(&sizes, &BTreeSet::new()).unwrap(),
        total
    );

    let store = s.store();
    let (what, size, _, limit) = over(store.ensure_within(&pkg, &storage(total - 1)).unwrap_err());
    // The first layer fitted and stays, for gc to judge; the second had one byte too few.
    assert_eq!(what, format!("layer {}", pkg.layers[1].digest));
    assert_eq!((size, limit), (3 * MIB + 2 * BLOCK, sizes[1].bytes - 1));
    assert_eq!(store.layers().unwrap(), [sizes[0].diff_id.clone()].into());
    assert!(fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());

    let lowers = store.ensure_within(&pkg, &storage(total)).unwrap();
    assert_eq!(lowers.len(), 2);
    assert_eq!(
        fs::metadata(lowers[1].join("srv/zeros")).unwrap().len(),
        3 * MIB
    );
    // The count is an upper bound of the disk the layers take.
    for (dir, size) in lowers.iter().zip(&sizes) {
        let used = disk_usage(dir).unwrap();
        assert!(used <= size.bytes, "{used} > {}", size.bytes);
    }
    // Layers in the store are not written again and cost nothing.
    store.ensure_within(&pkg, &storage(0)).unwrap();

    unpack_within(&pkg, &s.dest(), &storage(total)).unwrap();
    let dest2 = s.t.path().join("dest2");
    fs::create_dir(&dest2).unwrap();
    over(unpack_within(&pkg, &dest2, &storage(total - 1)).unwrap_err());
}

#[test]
fn a_sparse_file_counts_at_its_full_length() {
    // A GNU sparse entry carries one 512-byte chunk at the end of a 3000 MiB file; the
    // reader yields the holes as zeros, and the unpacker writes them.
    let real = 3000 * MIB;
    let mut h = Header::new_gnu();
    h.set_path("srv/sparse").unwrap();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_size(512);
    h.set_mode(0o644);
    h.set_mtime(1_000);
    h.set_uid(0);
    h.set_gid(0);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
    }
    h.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&h, &[1u8; 512][..]).unwrap();
    let tar = tar.into_inner().unwrap();
    assert!(tar.len() < 4096);

    let s = Scene::new();
    let pkg = package(&s.blobs(), vec![plain(tar)]);
    let [size] = &measure(&pkg).unwrap()[..] else {
        panic!("one layer")
    };
    assert_eq!(size.file_bytes, real);
    assert_eq!(size.bytes, 2 * BLOCK + real);
    let (_, size, _, _) = over(unpack_within(&pkg, &s.dest(), &storage(16 * MIB)).unwrap_err());
    assert_eq!(size, 2 * BLOCK + real);
    // Refused from the header, before even its directory was made.
    assert_eq!(s.tree("dest"), BTreeSet::new());
}

#[test]
fn a_pax_size_counts_over_the_header_field() {
    // The header says 0 bytes; the pax record before it says 1 MiB, and the reader (like
    // GNU tar) goes by the record: that is what the unpacker writes.
    let mut pax = tar::Builder::new(Vec::new());
    // A pax record is "LEN key=value\n", LEN counting itself: "16 size=1048576\n".
    let record = format!("16 size={MIB}\n");
    assert_eq!(record.len(), 16);
    let mut x = header("PaxHeaders/f", EntryType::XHeader, record.len() as u64);
    x.set_cksum();
    pax.append(&x, record.as_bytes()).unwrap();
    let mut bytes = pax.into_inner().unwrap();
    // The real entry, its header field 0, then its 1 MiB of data and the end marker.
    bytes.truncate(bytes.len() - 1024);
    bytes.extend_from_slice(header("f", EntryType::Regular, 0).as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, MIB as usize + 1024));

    let s = Scene::new();
    let pkg = package(&s.blobs(), vec![plain(bytes)]);
    let [size] = &measure(&pkg).unwrap()[..] else {
        panic!("one layer")
    };
    assert_eq!(size.file_bytes, MIB);
    unpack_within(&pkg, &s.dest(), &storage(size.bytes)).unwrap();
    assert_eq!(fs::metadata(s.dest().join("f")).unwrap().len(), MIB);
}

#[test]
fn directories_a_deep_path_implies_count_each() {
    // One entry whose path (a GNU long name) names 2,000 directories: 2,000 blocks, with
    // the root's and the file's.
    let path = "d/".repeat(2000) + "f";
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = header("x", EntryType::Regular, 0);
    tar.append_data(&mut h, &path, &[][..]).unwrap();
    let s = Scene::new();
    let pkg = package(&s.blobs(), vec![plain(tar.into_inner().unwrap())]);
    let [size] = &measure(&pkg).unwrap()[..] else {
        panic!("one layer")
    };
    assert_eq!(size.bytes, 2002 * BLOCK);
    let (_, _, _, limit) = over(unpack_within(&pkg, &s.dest(), &storage(100 * BLOCK)).unwrap_err());
    assert_eq!(limit, 100 * BLOCK);
}

#[test]
fn many_empty_files_cost_a_block_each() {
    let mut b = TarBuilder::new().dir("e/");
    for i in 0..10_000 {
        b = b.file(&format!("e/{i}"), "");
    }
    let s = Scene::new();
    let pkg = package(&s.blobs(), vec![plain(b.finish())]);
    let [size] = &measure(&pkg).unwrap()[..] else {
        panic!("one layer")
    };
    assert_eq!(size.bytes, 10_002 * BLOCK);
    assert_eq!(size.file_bytes, 0);
}

#[test]
fn a_check_counts_each_new_layer_once_and_names_them() {
    let layer = |n: u8, mib: u64| LayerSize {
        digest: format!("sha256:{}", hex::encode([n; 32])),
        diff_id: format!("sha256:{}", hex::encode([n + 100; 32])),
        bytes: mib * MIB,
        file_bytes: mib * MIB,
        entries: 1,
        complete: true,
    };
    let (base, app, data) = (layer(1, 10), layer(2, 4), layer(3, 3));
    // The same layer twice in a package is written once.
    let sizes = [base.clone(), app.clone(), app.clone()];
    assert_eq!(
        storage(14 * MIB).check(&sizes, &BTreeSet::new()).unwrap(),
        14 * MIB
    );
    // A layer already held (by this service's provider, or in the store) is free.
    let held = [base.diff_id.clone()].into();
    let budget = Budget {
        bytes: 4 * MIB,
        allowance: Allowance::Provider {
            provider: "acme".into(),
            allowance: 16 * MIB,
        },
    };
    assert_eq!(budget.check(&sizes, &held).unwrap(), 4 * MIB);

    let err = budget.check(&[base, app, data], &held).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the 2 layers counted ({} 4 MiB, {} 3 MiB) unpack to 7 MiB, more than the 4 MiB \
             left of the 16 MiB image allowance of provider `acme`; ask the operator for a \
             larger image allowance, or remove services of the provider whose layers no other \
             service shares",
            layer(2, 0).digest,
            layer(3, 0).digest
        )
    );
}

#[test]
fn an_entry_never_writes_more_than_its_header_declares() {
    // The tar reader gives no entry more data than its size, so this cannot be built from
    // a blob; what a crafted one could do is covered by the sparse and pax tests. Here the
    // error text, which names the way out.
    let problem = EntryProblem::Overrun { declared: 512 };
    assert!(problem
        .to_string()
        .contains("512 bytes its header declares"));
    assert!(problem.to_string().contains("rebuild the package"));
}
