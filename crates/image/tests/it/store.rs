//! The shared layer store: layers unpacked once in overlayfs form, hostile layers refused
//! without a trace, unused layers collected. Needs root (whiteouts are device nodes).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use image::{disk_usage, unpack, EntryProblem, ImageError, LayerStore, Package};
use tar::EntryType;

use crate::{package_of, TarBuilder};

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: the layer store needs root");
    false
}

/// A store three levels down in a temp dir, a `sentinel/` beside it that no layer may
/// touch, and a directory for blobs.
struct Scene {
    t: tempfile::TempDir,
    store: LayerStore,
}

impl Scene {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("jail/cell")).unwrap();
        fs::create_dir_all(t.path().join("blobs")).unwrap();
        fs::create_dir(t.path().join("sentinel")).unwrap();
        fs::write(t.path().join("sentinel/passwd"), "original").unwrap();
        let store = LayerStore::open(&t.path().join("jail/cell/store")).unwrap();
        Scene { t, store }
    }

    fn package(&self, layers: Vec<TarBuilder>) -> Package {
        let bytes: Vec<Vec<u8>> = layers.into_iter().map(TarBuilder::finish).collect();
        package_of(&self.t.path().join("blobs"), &bytes)
    }

    fn sentinel(&self) -> String {
        self.t.path().join("sentinel").display().to_string()
    }

    /// Names in a directory of the store (`sha256` or `tmp`).
    fn listing(&self, sub: &str) -> BTreeSet<String> {
        fs::read_dir(self.store.root().join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    /// The store holds no layer and no partial unpack, and nothing changed outside it.
    fn assert_empty_and_contained(&self) {
        assert_eq!(self.listing("sha256"), BTreeSet::new(), "layers left");
        assert_eq!(self.listing("tmp"), BTreeSet::new(), "partial unpacks left");
        let names = |p: &str| -> BTreeSet<String> {
            fs::read_dir(self.t.path().join(p))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert_eq!(
            names(""),
            ["blobs", "jail", "sentinel"].map(String::from).into()
        );
        assert_eq!(names("jail"), ["cell".to_string()].into());
        assert_eq!(names("jail/cell"), ["store".to_string()].into());
        assert_eq!(names("sentinel"), ["passwd".to_string()].into());
        assert_eq!(
            fs::read_to_string(self.t.path().join("sentinel/passwd")).unwrap(),
            "original"
        );
    }
}

fn hex(diff_id: &str) -> &str {
    diff_id.strip_prefix("sha256:").unwrap()
}

fn opaque(dir: &Path) -> bool {
    let name = CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut value = [0u8; 8];
    // SAFETY: both strings are NUL-terminated and the buffer is live and writable.
    let n = unsafe {
        libc::lgetxattr(
            name.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

fn base_layer() -> TarBuilder {
    TarBuilder::new()
        .dir("etc/")
        .file("etc/os-release", "ID=shg\n")
        .dir("bin/")
        .raw("bin/sh", EntryType::Regular, "", b"#!shell", 0o755)
}

#[test]
fn a_shared_base_layer_is_unpacked_once() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let a = s.package(vec![base_layer(), TarBuilder::new().file("srv/a", "a")]);
    let b = s.package(vec![base_layer(), TarBuilder::new().file("srv/b", "b")]);
    let base = &a.layers[0].diff_id;
    assert_eq!(base, &b.layers[0].diff_id);

    let lowers_a = s.store.ensure(&a).unwrap();
    let base_dir = s.store.root().join("sha256").join(hex(base));
    assert_eq!(
        lowers_a,
        [
            base_dir.clone(),
            s.store
                .root()
                .join("sha256")
                .join(hex(&a.layers[1].diff_id))
        ]
    );
    let sh = fs::metadata(base_dir.join("bin/sh")).unwrap();

    let lowers_b = s.store.ensure(&b).unwrap();
    assert_eq!(
        lowers_b,
        [
            base_dir.clone(),
            s.store
                .root()
                .join("sha256")
                .join(hex(&b.layers[1].diff_id))
        ]
    );
    // The same directory, not unpacked again: the file is the same inode, changed never.
    let again = fs::metadata(base_dir.join("bin/sh")).unwrap();
    assert_eq!(
        (sh.ino(), sh.ctime(), sh.ctime_nsec()),
        (again.ino(), again.ctime(), again.ctime_nsec())
    );
    assert_eq!(s.listing("sha256").len(), 3);
    assert_eq!(s.listing("tmp"), BTreeSet::new());
    assert_eq!(
        s.store.layers().unwrap(),
        [base, &a.layers[1].diff_id, &b.layers[1].diff_id]
            .map(String::clone)
            .into()
    );
    // Ensuring again changes nothing.
    assert_eq!(s.store.ensure(&a).unwrap(), lowers_a);
    assert_eq!(fs::read_to_string(lowers_b[1].join("srv/b")).unwrap(), "b");
}

#[test]
fn a_layer_is_stored_in_overlay_form() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let pkg = s.package(vec![TarBuilder::new()
        .dir("etc/")
        .file("etc/.wh.passwd", "")
        .dir("var/")
        .file("var/.wh..wh..opq", "")
        .file("var/kept", "k")
        .file("later", "x")
        .file(".wh.later", "")
        .file(".wh.gone", "")
        .dir("d/")
        .file("d/mine", "m")
        .file(".wh.d", "")
        .file(".wh.w", "")
        .file("w/inner", "i")
        .symlink("abs", "/etc/shadow")
        .symlink("rel", "../../../../etc")
        .raw("bin/tool", EntryType::Regular, "", b"t", 0o750)
        .hardlink("bin/tool2", "bin/tool")
        .raw("run/fifo", EntryType::Fifo, "", b"", 0o600)]);
    let lowers = s.store.ensure(&pkg).unwrap();
    let [layer] = &lowers[..] else {
        panic!("one layer expected: {lowers:?}")
    };
    let meta = |p: &str| fs::symlink_metadata(layer.join(p)).unwrap();

    // `.wh.NAME` is the character device 0:0 NAME, unless this layer itself has NAME:
    // a whiteout hides only lower layers.
    for wh in ["etc/passwd", "gone"] {
        assert!(meta(wh).file_type().is_char_device(), "{wh}");
        assert_eq!(meta(wh).rdev(), 0, "{wh}");
    }
    assert!(!layer.join("etc/.wh.passwd").exists());
    assert_eq!(fs::read_to_string(layer.join("later")).unwrap(), "x");
    // The opaque marker is an xattr; a whiteout of this layer's own directory makes it opaque.
    assert!(opaque(&layer.join("var")));
    assert!(!layer.join("var/.wh..wh..opq").exists());
    assert_eq!(fs::read_to_string(layer.join("var/kept")).unwrap(), "k");
    assert!(opaque(&layer.join("d")));
    assert_eq!(fs::read_to_string(layer.join("d/mine")).unwrap(), "m");
    // A directory made where this layer wrote a whiteout hides the lower layers as the
    // whiteout did.
    assert!(opaque(&layer.join("w")));
    assert_eq!(fs::read_to_string(layer.join("w/inner")).unwrap(), "i");
    assert!(!opaque(&layer.join("etc")));
    assert!(!opaque(layer));
    // Symlinks are stored as they are; nothing was followed.
    assert_eq!(
        fs::read_link(layer.join("abs")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(
        fs::read_link(layer.join("rel")).unwrap(),
        Path::new("../../../../etc")
    );
    assert_eq!(meta("bin/tool").ino(), meta("bin/tool2").ino());
    assert_eq!(meta("bin/tool").mode() & 0o7777, 0o750);
    assert_eq!(meta("bin/tool").mtime(), 1_000);
    assert!(meta("run/fifo").file_type().is_fifo());
    // The layer root is a plain 0755 directory whatever the umask: it may be a root's `/`.
    assert_eq!(meta("").mode() & 0o7777, 0o755);
    s.assert_contained_outside();
}

impl Scene {
    fn assert_contained_outside(&self) {
        assert_eq!(
            fs::read_to_string(self.t.path().join("sentinel/passwd")).unwrap(),
            "original"
        );
        assert_eq!(
            fs::read_dir(self.t.path().join("sentinel"))
                .unwrap()
                .count(),
            1
        );
    }
}

#[test]
fn a_compressed_layer_is_checked_against_its_diff_id() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let tar = TarBuilder::new().file("f", "gz").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let mut pkg = package_of(&s.t.path().join("blobs"), &[gz]);
    pkg.layers[0].media_type = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    let good_diff_id = format!("sha256:{}", crate::sha256_hex(&tar));

    // The diff_id the config declares must be what the blob unpacks to.
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    s.assert_empty_and_contained();

    pkg.layers[0].diff_id = good_diff_id.clone();
    let lowers = s.store.ensure(&pkg).unwrap();
    assert_eq!(
        lowers,
        [s.store.root().join("sha256").join(hex(&good_diff_id))]
    );
    assert_eq!(fs::read_to_string(lowers[0].join("f")).unwrap(), "gz");
}

/// Every hostile layer of `layers.rs`, and the other ways a blob can lie, through `ensure`.
#[test]
fn hostile_layers_are_refused_and_leave_nothing_in_the_store() {
    if !is_root() {
        return;
    }
    type Layer = Box<dyn Fn(&Scene) -> TarBuilder>;
    type Check = fn(&ImageError) -> bool;
    fn problem(err: &ImageError) -> &EntryProblem {
        match err {
            ImageError::Entry { problem, .. } => problem,
            other => panic!("expected an entry error, got {other}"),
        }
    }
    let canary = "shg-store-test-canary";
    let cases: Vec<(&str, Layer, Check)> = vec![
        (
            "parent component",
            Box::new(|_| TarBuilder::new().file("../x", "pwned")),
            |e| matches!(problem(e), EntryProblem::ParentComponent),
        ),
        (
            "parent components deeper",
            Box::new(|_| TarBuilder::new().file("a/../../../../../x", "pwned")),
            |e| matches!(problem(e), EntryProblem::ParentComponent),
        ),
        (
            "write through an absolute symlink",
            Box::new(|s| {
                TarBuilder::new()
                    .symlink("evil", &s.sentinel())
                    .file("evil/passwd", "pwned")
            }),
            |e| matches!(problem(e), EntryProblem::ThroughSymlink { component } if component == "evil"),
        ),
        (
            "write through a symlink to /etc",
            Box::new(move |_| {
                TarBuilder::new()
                    .symlink("evil", "/etc")
                    .file(&format!("evil/{canary}"), "pwned")
            }),
            |e| matches!(problem(e), EntryProblem::ThroughSymlink { .. }),
        ),
        (
            "write through a relative symlink",
            Box::new(|_| {
                TarBuilder::new()
                    .dir("a/")
                    .symlink("a/up", "../../../../../sentinel")
                    .file("a/up/passwd", "pwned")
            }),
            |e| matches!(problem(e), EntryProblem::ThroughSymlink { component } if component == "a/up"),
        ),
        (
            "hard link leaving the root",
            Box::new(|_| TarBuilder::new().hardlink("h", "../../etc/shadow")),
            |e| matches!(problem(e), EntryProblem::HardlinkEscapes { .. }),
        ),
        (
            "hard link through a symlink",
            Box::new(|s| {
                TarBuilder::new()
                    .symlink("evil", &s.sentinel())
                    .hardlink("h", "evil/passwd")
            }),
            |e| matches!(problem(e), EntryProblem::HardlinkThroughSymlink { component, .. } if component == "evil"),
        ),
        (
            "hard link to an absolute path outside the layer",
            Box::new(|_| TarBuilder::new().hardlink("h", "/etc/passwd")),
            |e| matches!(problem(e), EntryProblem::HardlinkTarget { .. }),
        ),
        (
            "hard link to a whiteout",
            Box::new(|_| TarBuilder::new().file(".wh.x", "").hardlink("h", "x")),
            |e| matches!(problem(e), EntryProblem::HardlinkTarget { .. }),
        ),
        (
            "character device",
            Box::new(|_| TarBuilder::new().raw("dev/null", EntryType::Char, "", b"", 0o666)),
            |e| matches!(problem(e), EntryProblem::Device { kind: "character" }),
        ),
        (
            "block device",
            Box::new(|_| TarBuilder::new().raw("dev/sda", EntryType::Block, "", b"", 0o666)),
            |e| matches!(problem(e), EntryProblem::Device { kind: "block" }),
        ),
        (
            "whiteout of the parent",
            Box::new(|_| TarBuilder::new().file("a/.wh...", "")),
            |e| matches!(problem(e), EntryProblem::ParentComponent),
        ),
    ];
    for (what, layer, check) in cases {
        let s = Scene::new();
        let pkg = s.package(vec![layer(&s)]);
        let err = s.store.ensure(&pkg).unwrap_err();
        assert!(check(&err), "{what}: {err}");
        s.assert_empty_and_contained();
        let leaked = Path::new("/etc").join(canary);
        let existed = leaked.exists();
        let _ = fs::remove_file(&leaked);
        assert!(!existed, "{what}: wrote {}", leaked.display());
    }

    // A blob larger than its descriptor declares: refused before a byte is unpacked.
    let s = Scene::new();
    let mut pkg = s.package(vec![TarBuilder::new().file("f", "x")]);
    fs::OpenOptions::new()
        .append(true)
        .open(&pkg.layers[0].path)
        .unwrap()
        .write_all(&[0; 512])
        .unwrap();
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(
        matches!(err, ImageError::SizeMismatch { declared, actual, .. } if actual == declared + 512),
        "{err}"
    );
    s.assert_empty_and_contained();

    // Content that is not what the config's diff_id says, after entries were unpacked.
    pkg.layers[0].size += 512;
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    s.assert_empty_and_contained();

    // A truncated stream and a media type we cannot read.
    let s = Scene::new();
    let mut pkg = s.package(vec![TarBuilder::new().file("f", &"x".repeat(4096))]);
    let blob = fs::read(&pkg.layers[0].path).unwrap();
    fs::write(&pkg.layers[0].path, &blob[..300]).unwrap();
    pkg.layers[0].size = 300;
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(matches!(err, ImageError::LayerRead { .. }), "{err}");
    pkg.layers[0].media_type = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    s.assert_empty_and_contained();

    // A diff_id that is not a sha256 digest names no directory in the store.
    pkg.layers[0].diff_id = "sha256:../../../sentinel".into();
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(matches!(err, ImageError::Layout { .. }), "{err}");
    s.assert_empty_and_contained();
}

#[test]
fn a_refused_layer_keeps_the_good_layers_before_it() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let pkg = s.package(vec![
        base_layer(),
        TarBuilder::new().raw("dev/null", EntryType::Char, "", b"", 0o666),
    ]);
    let err = s.store.ensure(&pkg).unwrap_err();
    assert!(matches!(err, ImageError::Entry { .. }), "{err}");
    assert_eq!(
        s.store.layers().unwrap(),
        [pkg.layers[0].diff_id.clone()].into()
    );
    assert_eq!(s.listing("tmp"), BTreeSet::new());
}

/// Layers never see each other while unpacked, so a symlink in a lower layer cannot
/// redirect a file of an upper one: the upper layer gets a directory of its own there,
/// which hides the symlink in the merged root.
#[test]
fn a_symlink_in_a_lower_layer_is_never_written_through() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let pkg = s.package(vec![
        TarBuilder::new().symlink("evil", &s.sentinel()),
        TarBuilder::new().file("evil/passwd", "pwned"),
    ]);
    let lowers = s.store.ensure(&pkg).unwrap();
    assert!(fs::symlink_metadata(lowers[0].join("evil"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(lowers[1].join("evil"))
        .unwrap()
        .is_dir());
    assert_eq!(
        fs::read_to_string(lowers[1].join("evil/passwd")).unwrap(),
        "pwned"
    );
    s.assert_contained_outside();
}

#[test]
fn gc_removes_unreferenced_layers_and_reports_their_bytes() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let big = "b".repeat(64 << 10);
    let a = s.package(vec![base_layer(), TarBuilder::new().file("srv/a", "a")]);
    let b = s.package(vec![base_layer(), TarBuilder::new().file("srv/b", &big)]);
    s.store.ensure(&a).unwrap();
    let lowers_b = s.store.ensure(&b).unwrap();
    let b_top = disk_usage(&lowers_b[1]).unwrap();
    assert!(b_top > 64 << 10, "{b_top}");

    let keep: BTreeSet<String> = a.layers.iter().map(|l| l.diff_id.clone()).collect();
    let report = s.store.gc(&keep).unwrap();
    assert_eq!(report.removed, 1);
    assert_eq!(report.bytes, b_top);
    assert_eq!(s.store.layers().unwrap(), keep);
    assert!(!lowers_b[1].exists());
    assert!(lowers_b[0].join("bin/sh").exists(), "the shared base stays");
    assert_eq!(s.listing("tmp"), BTreeSet::new());

    assert_eq!(s.store.gc(&keep).unwrap(), image::GcReport::default());
    let report = s.store.gc(&BTreeSet::new()).unwrap();
    assert_eq!(report.removed, 2);
    assert!(report.bytes > 0);
    assert_eq!(s.listing("sha256"), BTreeSet::new());
    assert_eq!(s.listing("tmp"), BTreeSet::new());
    // A collected layer comes back when a package needs it again.
    assert_eq!(s.store.ensure(&b).unwrap(), lowers_b);
}

#[test]
fn gc_collects_what_a_crash_left_in_tmp() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let a = s.package(vec![base_layer()]);
    // A crashed unpack of the very layer: the next ensure does not mind it.
    let hex_a = hex(&a.layers[0].diff_id).to_string();
    let stale = s.store.root().join("tmp").join(format!("{hex_a}.1.0"));
    fs::create_dir_all(stale.join("etc")).unwrap();
    fs::write(stale.join("etc/half"), "x".repeat(10_000)).unwrap();
    let lowers = s.store.ensure(&a).unwrap();
    assert!(!lowers[0].join("etc/half").exists());
    assert!(stale.exists(), "ensure does not touch what it did not make");

    let keep = [a.layers[0].diff_id.clone()].into();
    let report = s.store.gc(&keep).unwrap();
    assert_eq!(report.removed, 0);
    assert!(report.bytes >= 10_000, "{report:?}");
    assert_eq!(s.listing("tmp"), BTreeSet::new());
    assert!(lowers[0].join("bin/sh").exists());
}

#[test]
fn racing_ensures_keep_one_copy_of_each_layer() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let mut big = TarBuilder::new().dir("data/");
    for i in 0..200 {
        big = big.file(&format!("data/{i}"), &"z".repeat(1000));
    }
    let pkg = s.package(vec![base_layer(), big]);
    let root = s.store.root().to_path_buf();
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (pkg, root, barrier) = (pkg.clone(), root.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = LayerStore::open(&root).unwrap();
                barrier.wait();
                store.ensure(&pkg).unwrap()
            })
        })
        .collect();
    let results: Vec<Vec<PathBuf>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");
    assert_eq!(s.listing("sha256").len(), 2);
    assert_eq!(
        s.listing("tmp"),
        BTreeSet::new(),
        "the losers' copies are gone"
    );
    assert_eq!(
        fs::read_dir(results[0][1].join("data")).unwrap().count(),
        200
    );
}

#[test]
fn a_layer_with_an_opaque_root_hides_every_layer_below_it() {
    if !is_root() {
        return;
    }
    let s = Scene::new();
    let pkg = s.package(vec![
        base_layer(),
        TarBuilder::new().file("a", "a"),
        TarBuilder::new()
            .file(".wh..wh..opq", "")
            .file("fresh", "f"),
        TarBuilder::new().file("top", "t"),
    ]);
    let lowers = s.store.ensure(&pkg).unwrap();
    let dir = |i: usize| {
        s.store
            .root()
            .join("sha256")
            .join(hex(&pkg.layers[i].diff_id))
    };
    assert_eq!(lowers, [dir(2), dir(3)]);
    assert_eq!(
        s.listing("sha256").len(),
        4,
        "the hidden layers are in the store too"
    );
    // The same answer when the layers are already there.
    assert_eq!(s.store.ensure(&pkg).unwrap(), lowers);

    // unpack agrees: nothing below the opaque root survives.
    let dest = s.t.path().join("flat");
    fs::create_dir(&dest).unwrap();
    unpack(&pkg, &dest).unwrap();
    let mut names: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["fresh", "top"]);
}

/// The saving the issue asks for: N services on one base layer take the base once.
#[test]
fn services_sharing_a_base_layer_store_it_once() {
    if !is_root() {
        return;
    }
    const SERVICES: usize = 5;
    let s = Scene::new();
    let mut base = base_layer().dir("usr/").dir("usr/lib/");
    for i in 0..64 {
        base = base.file(
            &format!("usr/lib/lib{i}.so"),
            &format!("{i}").repeat(16 << 10),
        );
    }
    let base = base.finish();
    let mut copies = 0;
    for n in 0..SERVICES {
        let app = TarBuilder::new()
            .dir("srv/")
            .file("srv/app", &format!("service {n}\n"))
            .finish();
        let pkg = package_of(&s.t.path().join("blobs"), &[base.clone(), app]);
        s.store.ensure(&pkg).unwrap();
        let copy = s.t.path().join(format!("copy{n}"));
        fs::create_dir(&copy).unwrap();
        unpack(&pkg, &copy).unwrap();
        copies += disk_usage(&copy).unwrap();
    }
    let shared = s.store.disk_usage().unwrap();
    eprintln!(
        "{SERVICES} services on a 1 MiB base layer: {shared} bytes in the layer store, \
         {copies} bytes as separate copies ({:.1}x)",
        copies as f64 / shared as f64
    );
    assert!(shared * 3 < copies, "shared {shared} vs copies {copies}");
    assert!(
        shared > copies / SERVICES as u64,
        "the base is still there once"
    );
}

#[test]
fn disk_usage_counts_a_hard_linked_file_once() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("f"), "x".repeat(100_000)).unwrap();
    let one = disk_usage(t.path()).unwrap();
    fs::hard_link(t.path().join("f"), t.path().join("g")).unwrap();
    std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
    let linked = disk_usage(t.path()).unwrap();
    assert!(one >= 100_000);
    // A symlink may take no block at all (fast symlinks); the second name of f takes none.
    assert!(linked < one + 4096 + 1, "{one} then {linked}");
}
