//! Hand-built layers, hostile and benign, applied with `unpack_layer`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use image::{unpack_layer, EntryProblem, ImageError};
use tar::EntryType;

use crate::{sha256_hex, store_blob, TarBuilder, TAR};

/// A destination `jail/cell/root/` and a `sentinel/` directory that no layer may touch.
/// The root sits three levels down so `../../..` from it still lands in the temp dir.
struct Scene {
    t: tempfile::TempDir,
    blobs: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("jail/cell/root")).unwrap();
        fs::create_dir(t.path().join("sentinel")).unwrap();
        fs::write(t.path().join("sentinel/passwd"), "original").unwrap();
        Scene {
            t,
            blobs: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.t.path().join("jail/cell/root")
    }

    fn sentinel(&self) -> String {
        self.t.path().join("sentinel").display().to_string()
    }

    fn apply(&self, layer: TarBuilder) -> Result<(), ImageError> {
        let blob = store_blob(self.blobs.path(), &layer.finish());
        unpack_layer(&blob, TAR, &self.root())
    }

    /// Nothing appeared or changed outside `root/`.
    fn assert_contained(&self) {
        let names: BTreeSet<_> = fs::read_dir(self.t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["jail", "sentinel"].map(Into::into).into());
        for (dir, only) in [("jail", "cell"), ("jail/cell", "root")] {
            let inside: Vec<_> = fs::read_dir(self.t.path().join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(inside, [only], "{dir}");
        }
        let inside: Vec<_> = fs::read_dir(self.t.path().join("sentinel"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(inside, ["passwd"]);
        assert_eq!(
            fs::read_to_string(self.t.path().join("sentinel/passwd")).unwrap(),
            "original"
        );
    }
}

fn problem(err: ImageError) -> (String, EntryProblem) {
    match err {
        ImageError::Entry { entry, problem, .. } => (entry, problem),
        other => panic!("expected an entry error, got {other}"),
    }
}

#[test]
fn parent_components_are_refused_with_a_clear_message() {
    for name in ["../x", "a/../../x", "../etc/passwd"] {
        let s = Scene::new();
        let layer = TarBuilder::new().file(name, "pwned");
        let bytes = layer.finish();
        let blob = store_blob(s.blobs.path(), &bytes);
        let err = unpack_layer(&blob, TAR, &s.root()).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "layer sha256:{}: entry {name:?} escapes the root: \"..\" components are not allowed; rebuild the package without it",
                sha256_hex(&bytes)
            )
        );
        assert!(matches!(problem(err), (e, EntryProblem::ParentComponent) if e == name));
        s.assert_contained();
    }
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let s = Scene::new();
    s.apply(TarBuilder::new().file("/etc/hostname", "box"))
        .unwrap();
    assert_eq!(
        fs::read_to_string(s.root().join("etc/hostname")).unwrap(),
        "box"
    );
    s.assert_contained();
}

#[test]
fn writes_through_an_absolute_symlink_are_refused() {
    let s = Scene::new();
    let err = s
        .apply(
            TarBuilder::new()
                .symlink("evil", &s.sentinel())
                .file("evil/passwd", "pwned"),
        )
        .unwrap_err();
    assert!(
        matches!(problem(err), (e, EntryProblem::ThroughSymlink { component }) if e == "evil/passwd" && component == "evil")
    );
    s.assert_contained();

    let s = Scene::new();
    let canary = "shg-image-test-canary";
    let err = s
        .apply(
            TarBuilder::new()
                .symlink("evil", "/etc")
                .file(&format!("evil/{canary}"), "pwned"),
        )
        .unwrap_err();
    assert!(matches!(
        problem(err).1,
        EntryProblem::ThroughSymlink { .. }
    ));
    let leaked = Path::new("/etc").join(canary);
    let existed = leaked.exists();
    let _ = fs::remove_file(&leaked);
    assert!(!existed, "wrote {} through the symlink", leaked.display());
    s.assert_contained();
}

#[test]
fn writes_through_a_relative_symlink_are_refused() {
    let s = Scene::new();
    let err = s
        .apply(
            TarBuilder::new()
                .symlink("evil", "../../..")
                .file("evil/x", "pwned"),
        )
        .unwrap_err();
    assert!(matches!(
        problem(err).1,
        EntryProblem::ThroughSymlink { .. }
    ));
    s.assert_contained();

    // Deeper, with the symlink in the middle and directories created on the way.
    let s = Scene::new();
    let err = s
        .apply(
            TarBuilder::new()
                .dir("a/")
                .symlink("a/up", "../../../../sentinel")
                .file("a/up/passwd", "pwned"),
        )
        .unwrap_err();
    assert!(
        matches!(problem(err).1, EntryProblem::ThroughSymlink { component } if component == "a/up")
    );
    s.assert_contained();
}

#[test]
fn a_symlink_from_an_earlier_layer_is_not_followed_either() {
    let s = Scene::new();
    s.apply(TarBuilder::new().symlink("evil", &s.sentinel()))
        .unwrap();
    let err = s
        .apply(TarBuilder::new().file("evil/passwd", "pwned"))
        .unwrap_err();
    assert!(matches!(
        problem(err).1,
        EntryProblem::ThroughSymlink { .. }
    ));
    s.assert_contained();
}

#[test]
fn hard_links_leaving_the_root_are_refused() {
    let s = Scene::new();
    let err = s
        .apply(TarBuilder::new().hardlink("h", "../../etc/shadow"))
        .unwrap_err();
    assert!(
        matches!(problem(err).1, EntryProblem::HardlinkEscapes { target } if target == "../../etc/shadow")
    );
    assert!(!s.root().join("h").exists());
    s.assert_contained();

    let s = Scene::new();
    let err = s
        .apply(
            TarBuilder::new()
                .symlink("evil", &s.sentinel())
                .hardlink("h", "evil/passwd"),
        )
        .unwrap_err();
    assert!(
        matches!(problem(err).1, EntryProblem::HardlinkThroughSymlink { component, .. } if component == "evil")
    );
    assert!(fs::symlink_metadata(s.root().join("h")).is_err());
    assert_eq!(
        fs::metadata(s.t.path().join("sentinel/passwd"))
            .unwrap()
            .nlink(),
        1
    );
    s.assert_contained();

    let s = Scene::new();
    let err = s
        .apply(TarBuilder::new().hardlink("h", "/nothing/here"))
        .unwrap_err();
    assert!(matches!(
        problem(err).1,
        EntryProblem::HardlinkTarget { .. }
    ));
}

#[test]
fn device_nodes_are_refused_and_fifos_allowed() {
    for (kind, word) in [(EntryType::Char, "character"), (EntryType::Block, "block")] {
        let s = Scene::new();
        let err = s
            .apply(TarBuilder::new().raw("dev/null", kind, "", b"", 0o666))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("is a {word} device node")),
            "{err}"
        );
        assert!(matches!(problem(err).1, EntryProblem::Device { .. }));
        assert!(!s.root().join("dev/null").exists());
        s.assert_contained();
    }
    let s = Scene::new();
    s.apply(TarBuilder::new().raw("run/pipe", EntryType::Fifo, "", b"", 0o620))
        .unwrap();
    let meta = fs::symlink_metadata(s.root().join("run/pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o7777, 0o620);
}

#[test]
fn whiteouts_cannot_name_the_parent() {
    let s = Scene::new();
    fs::write(s.root().join("keep"), "x").unwrap();
    let err = s.apply(TarBuilder::new().file("a/.wh...", "")).unwrap_err();
    assert!(matches!(problem(err).1, EntryProblem::ParentComponent));
    assert!(s.root().join("keep").exists());
    s.assert_contained();
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let s = Scene::new();
    let target = format!("{}/passwd", s.sentinel());
    s.apply(
        TarBuilder::new()
            .symlink("s", &target)
            .symlink("d", &s.sentinel()),
    )
    .unwrap();
    s.apply(
        TarBuilder::new()
            .file("s", "new")
            .dir("d/")
            .file("d/passwd", "mine")
            .symlink("l", "/bin/sh"),
    )
    .unwrap();
    assert!(fs::symlink_metadata(s.root().join("s")).unwrap().is_file());
    assert_eq!(fs::read_to_string(s.root().join("s")).unwrap(), "new");
    assert!(fs::symlink_metadata(s.root().join("d")).unwrap().is_dir());
    assert_eq!(
        fs::read_to_string(s.root().join("d/passwd")).unwrap(),
        "mine"
    );
    assert_eq!(
        fs::read_link(s.root().join("l")).unwrap(),
        Path::new("/bin/sh")
    );
    s.assert_contained();
}

#[test]
fn whiteouts_apply_to_lower_layers() {
    let s = Scene::new();
    s.apply(
        TarBuilder::new()
            .file("a/1", "1")
            .file("a/2", "2")
            .file("b/x", "x")
            .file("b/sub/y", "y")
            .file("c/keep", "k")
            .file("gone/deep/f", "f")
            .symlink("lnk", &s.sentinel()),
    )
    .unwrap();
    s.apply(
        TarBuilder::new()
            .file("a/.wh.1", "")
            .dir("b/")
            .file("b/early", "same layer, before the marker")
            .file("b/.wh..wh..opq", "")
            .file("b/new", "n")
            .file(".wh.gone", "")
            .file(".wh.lnk", "")
            .file("c/.wh.absent", "")
            .file("nodir/.wh.x", ""),
    )
    .unwrap();
    let list = |p: &str| {
        let mut v: Vec<_> = fs::read_dir(s.root().join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("a"), ["2"]);
    assert_eq!(list("b"), ["early", "new"]);
    assert_eq!(list("c"), ["keep"]);
    assert_eq!(list(""), ["a", "b", "c"]);
    s.assert_contained();
}

#[test]
fn metadata_is_preserved_but_setuid_is_dropped() {
    let s = Scene::new();
    s.apply(
        TarBuilder::new()
            .raw("bin/", EntryType::Directory, "", b"", 0o750)
            .raw("bin/su", EntryType::Regular, "", b"#!", 0o4755)
            .raw("bin/ro", EntryType::Regular, "", b"x", 0o400)
            .hardlink("bin/ro2", "bin/ro"),
    )
    .unwrap();
    let meta = |p: &str| fs::symlink_metadata(s.root().join(p)).unwrap();
    assert_eq!(meta("bin").mode() & 0o7777, 0o750);
    assert_eq!(meta("bin").mtime(), 1_000);
    // setuid would hand root to any host user who reaches the file (and no_new_privs makes
    // it useless inside the container): it is dropped, the rest of the mode kept.
    assert_eq!(meta("bin/su").mode() & 0o7777, 0o755);
    assert_eq!(meta("bin/su").mtime(), 1_000);
    assert_eq!(meta("bin/ro").mode() & 0o7777, 0o400);
    assert_eq!(meta("bin/ro").ino(), meta("bin/ro2").ino());
}

#[test]
fn unsupported_media_types_and_broken_streams_are_named() {
    let s = Scene::new();
    let blob = store_blob(s.blobs.path(), &TarBuilder::new().file("f", "x").finish());
    let err = unpack_layer(
        &blob,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        &s.root(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedMediaType { .. }),
        "{err}"
    );
    let err = unpack_layer(
        &blob,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &s.root(),
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::LayerRead { .. }), "{err}");
}

/// OCI image spec: a whiteout hides only what lower layers put there, never an entry of its
/// own layer, whichever comes first in the tar.
#[test]
fn whiteouts_hide_only_lower_layers_never_their_own() {
    let s = Scene::new();
    s.apply(
        TarBuilder::new()
            .file("old/lower", "l")
            .file("mixed/lower", "l")
            .file("file", "lower"),
    )
    .unwrap();
    s.apply(
        TarBuilder::new()
            .file("file", "upper")
            .file(".wh.file", "")
            .file("mixed/upper", "u")
            .file(".wh.mixed", "")
            .file(".wh.old", "")
            .file("old/new", "n"),
    )
    .unwrap();
    let list = |p: &str| {
        let mut v: Vec<_> = fs::read_dir(s.root().join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(fs::read_to_string(s.root().join("file")).unwrap(), "upper");
    assert_eq!(list("mixed"), ["upper"]);
    assert_eq!(list("old"), ["new"]);
    s.assert_contained();
}
