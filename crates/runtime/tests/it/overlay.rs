//! Read-only overlay roots over the layer store: what a service sees is what a private
//! unpack of the same package gives, and nobody can write to it. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use image::{Layer, LayerStore, Package};
use runtime::overlay;
use runtime::RuntimeError;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: overlay mounts and the layer store need root");
    false
}

/// A layer tar built entry by entry; every entry of one layer has the layer's mtime.
struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl LayerTar {
    fn new(mtime: u64) -> Self {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    fn entry(
        mut self,
        path: &str,
        kind: EntryType,
        mode: u32,
        owner: u64,
        link: &str,
        data: &[u8],
    ) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_mtime(self.mtime);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.entry(path, EntryType::Directory, mode, 0, "", b"")
    }

    fn file(self, path: &str, data: &str) -> Self {
        self.entry(path, EntryType::Regular, 0o644, 0, "", data.as_bytes())
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.entry(path, EntryType::Symlink, 0o777, 0, target, b"")
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.entry(path, EntryType::Link, 0o644, 0, target, b"")
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

/// A package of uncompressed layers (base first), blobs stored in `dir`.
fn package(dir: &Path, layers: &[Vec<u8>]) -> Package {
    fs::create_dir_all(dir).unwrap();
    let layers = layers
        .iter()
        .map(|bytes| {
            let hex = hex::encode(Sha256::digest(bytes));
            let path = dir.join(&hex);
            fs::write(&path, bytes).unwrap();
            Layer {
                digest: format!("sha256:{hex}"),
                size: bytes.len() as u64,
                media_type: TAR.into(),
                diff_id: format!("sha256:{hex}"),
                path,
            }
        })
        .collect();
    Package {
        digest: format!("sha256:{}", "0".repeat(64)),
        image_digest: format!("sha256:{}", "0".repeat(64)),
        manifest_digest: None,
        manifest_toml: String::new(),
        config: serde_json::Value::Null,
        layers,
        dir: dir.to_path_buf(),
        annotations: Default::default(),
    }
}

/// An overlay mounted for the length of a test.
struct Mounted(PathBuf);

impl Mounted {
    fn new(lowers: &[PathBuf], target: &Path) -> Self {
        overlay::mount(lowers, target).unwrap();
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        overlay::unmount(&self.0).unwrap();
    }
}

/// Every path under `root` (not `root` itself) with its type, mode, owner, mtime and
/// content or link target, and the groups of paths that are one hard-linked file.
fn describe(root: &Path) -> (BTreeMap<String, String>, BTreeSet<Vec<String>>) {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let common = format!(
                "{:o} {}:{} mtime={}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime()
            );
            let what = if ft.is_dir() {
                todo.push(path.clone());
                format!("dir {common}")
            } else if ft.is_file() {
                let data = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
                format!("file {common} {data:?}")
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                format!("symlink {common} -> {}", target.display())
            } else if ft.is_fifo() {
                format!("fifo {common}")
            } else {
                // A whiteout leaking through would show here as a character device.
                format!("other {ft:?} {common} rdev={}", m.rdev())
            };
            if !ft.is_dir() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            entries.insert(rel, what);
        }
    }
    let links = inodes
        .into_values()
        .filter(|paths| paths.len() > 1)
        .map(|mut paths| {
            paths.sort();
            paths
        })
        .collect();
    (entries, links)
}

/// Unpack `layers` privately with `image::unpack`, stack them from the layer store as an
/// overlay, and require the two trees to be the same.
fn assert_overlay_equals_unpack(
    layers: &[Vec<u8>],
) -> (BTreeMap<String, String>, BTreeSet<Vec<String>>) {
    let t = tempfile::tempdir().unwrap();
    let pkg = package(&t.path().join("blobs"), layers);
    let flat = t.path().join("flat");
    fs::create_dir(&flat).unwrap();
    image::unpack(&pkg, &flat).unwrap();

    let store = LayerStore::open(&t.path().join("layers")).unwrap();
    let lowers = store.ensure(&pkg).unwrap();
    let root = t.path().join("root");
    fs::create_dir(&root).unwrap();
    let mounted = Mounted::new(&lowers, &root);
    let (want, got) = (describe(&flat), describe(&root));
    drop(mounted);

    let keys: BTreeSet<&String> = want.0.keys().chain(got.0.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| want.0.get(*k) != got.0.get(*k))
        .map(|k| {
            format!(
                "{k}:\n  unpack:  {:?}\n  overlay: {:?}",
                want.0.get(k),
                got.0.get(k)
            )
        })
        .collect();
    assert!(diff.is_empty(), "the trees differ:\n{}", diff.join("\n"));
    assert_eq!(want.1, got.1, "hard-linked groups");
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        0,
        "unmounted, the target is empty"
    );
    want
}

fn base() -> LayerTar {
    LayerTar::new(1_000)
        .dir("etc/", 0o755)
        .file("etc/passwd", "root:x:0:0\n")
        .file("etc/motd", "hello\n")
        .file("etc/hostname", "box\n")
        .dir("etc/conf.d/", 0o750)
        .file("etc/conf.d/a", "a")
        .file("etc/conf.d/b", "b")
        .dir("usr/", 0o755)
        .dir("usr/bin/", 0o755)
        .entry("usr/bin/tool", EntryType::Regular, 0o4755, 0, "", b"#!tool")
        .hardlink("usr/bin/tool2", "usr/bin/tool")
        .dir("usr/lib/", 0o755)
        .file("usr/lib/libx.so", "x")
        .file("usr/lib/liby.so", "y")
        .symlink("usr/lib/libx.so.1", "libx.so")
        .dir("usr/share/", 0o755)
        .file("usr/share/doc", "doc")
        .dir("lib/", 0o755)
        .file("lib/ld.so", "ld")
        .symlink("bin", "usr/bin")
        .symlink("escape", "../../../../etc/shadow")
        .dir("var/", 0o755)
        .dir("var/cache/", 0o755)
        .file("var/cache/f1", "1")
        .dir("var/cache/sub/", 0o700)
        .file("var/cache/sub/f2", "2")
        .entry("var/pipe", EntryType::Fifo, 0o620, 0, "", b"")
        .dir("opt/", 0o755)
        .file("opt/gone-file", "g")
        .dir("opt/gone-dir/", 0o755)
        .file("opt/gone-dir/x", "x")
        .file("opt/stays", "s")
        .dir("home/", 0o755)
        .entry("home/user/", EntryType::Directory, 0o700, 1000, "", b"")
        .entry(
            "home/user/.profile",
            EntryType::Regular,
            0o600,
            1000,
            "",
            b"old",
        )
        .dir("srv/", 0o755)
        .file("srv/old", "old")
}

fn middle() -> LayerTar {
    LayerTar::new(2_000)
        .dir("etc/", 0o755)
        .file("etc/passwd", "root:x:0:0\nsvc:x:1:1\n")
        .hardlink("etc/passwd-", "etc/passwd")
        .file("etc/.wh.hostname", "")
        .file("etc/.wh.nothing", "")
        .dir("etc/motd/", 0o755)
        .file("etc/motd/x", "a directory replaces a file")
        .dir("var/", 0o755)
        .dir("var/cache/", 0o755)
        .file("var/cache/.wh..wh..opq", "")
        .file("var/cache/new", "new")
        .dir("opt/", 0o755)
        .file("opt/.wh.gone-file", "")
        .file("opt/.wh.gone-dir", "")
        .dir("usr/", 0o755)
        .dir("usr/lib/", 0o755)
        .file("usr/lib/.wh.liby.so", "")
        .file("usr/share", "a file replaces a directory")
        .symlink("lib", "usr/lib")
        .dir("home/", 0o755)
        .entry("home/user/", EntryType::Directory, 0o700, 1000, "", b"")
        .entry(
            "home/user/.profile",
            EntryType::Regular,
            0o600,
            1000,
            "",
            b"new",
        )
        .dir("srv/", 0o755)
        .entry("srv/data", EntryType::Regular, 0o640, 33, "", b"data")
        .hardlink("srv/data-link", "srv/data")
        .dir("run/", 0o755)
        .entry("run/ctl", EntryType::Fifo, 0o600, 0, "", b"")
}

fn top() -> LayerTar {
    LayerTar::new(3_000)
        // Whited out, then made again in the same layer: only this layer's content shows.
        .file(".wh.srv", "")
        .dir("srv/", 0o711)
        .file("srv/fresh", "fresh")
        .dir("etc/", 0o755)
        // A whiteout never hides its own layer's entry.
        .file("etc/new", "n")
        .file("etc/.wh.new", "")
        .dir("etc/conf.d/", 0o750)
        .file("etc/conf.d/.wh.a", "")
        .dir("var/", 0o755)
        .file("var/.wh.pipe", "")
        .file("hello", "world")
}

#[test]
fn the_overlay_view_equals_a_private_unpack() {
    if !is_root() {
        return;
    }
    let (tree, links) =
        assert_overlay_equals_unpack(&[base().finish(), middle().finish(), top().finish()]);
    // The comparison saw what the layers are about.
    let get = |p: &str| tree.get(p).map(String::as_str).unwrap_or("absent");
    assert_eq!(get("etc/hostname"), "absent");
    assert_eq!(get("opt/gone-dir"), "absent");
    assert_eq!(get("srv/old"), "absent");
    assert_eq!(get("var/pipe"), "absent");
    assert!(get("etc/new").starts_with("file"));
    assert!(get("etc/motd").starts_with("dir 755 0:0 mtime=2000"));
    assert!(get("srv").starts_with("dir 711 0:0 mtime=3000"));
    assert!(get("usr/bin/tool").starts_with("file 755 0:0 mtime=1000"));
    assert!(get("home/user/.profile").starts_with("file 600 1000:1000 mtime=2000"));
    assert!(get("lib").starts_with("symlink"));
    assert!(get("run/ctl").starts_with("fifo 600"));
    let mut names: Vec<&str> = tree
        .keys()
        .filter(|k| k.starts_with("var/cache/"))
        .map(String::as_str)
        .collect();
    names.sort();
    assert_eq!(names, ["var/cache/new"]);
    assert!(links.contains(&vec![
        "usr/bin/tool".to_string(),
        "usr/bin/tool2".to_string()
    ]));
    assert!(links.contains(&vec!["etc/passwd".to_string(), "etc/passwd-".to_string()]));
}

#[test]
fn a_layer_applied_twice_is_stacked_once_with_the_same_view() {
    if !is_root() {
        return;
    }
    let tree =
        assert_overlay_equals_unpack(&[base().finish(), middle().finish(), base().finish()]).0;
    assert!(tree["etc/motd"].starts_with("file"));
    assert!(tree["lib"].starts_with("dir"));
}

#[test]
fn a_one_layer_root_mounts_on_its_empty_target() {
    if !is_root() {
        return;
    }
    let tree = assert_overlay_equals_unpack(&[base().finish()]).0;
    assert!(tree["etc/hostname"].starts_with("file"));
}

/// The layers of `n` one-file packages in a store under `root`.
fn layer_dirs(root: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let dir = root.join(format!("{i:04}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(format!("file{i}")), "").unwrap();
            fs::write(dir.join("top"), i.to_string()).unwrap();
            dir
        })
        .collect()
}

#[test]
fn mount_unmount_and_is_mounted() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = layer_dirs(&t.path().join("layers"), 2);
    let target = t.path().join("root");
    fs::create_dir(&target).unwrap();
    assert!(!overlay::is_mounted(&target).unwrap());
    assert!(!overlay::is_mounted(&t.path().join("missing")).unwrap());
    overlay::unmount(&target).unwrap();
    overlay::unmount(&t.path().join("missing")).unwrap();

    overlay::mount(&lowers, &target).unwrap();
    assert!(overlay::is_mounted(&target).unwrap());
    // Through a symlink, or with a `.` in the path, it is the same mount point.
    std::os::unix::fs::symlink(&target, t.path().join("alias")).unwrap();
    assert!(overlay::is_mounted(&t.path().join("alias")).unwrap());
    assert!(overlay::is_mounted(&t.path().join("./root")).unwrap());
    assert_eq!(
        fs::read_to_string(target.join("top")).unwrap(),
        "1",
        "the last layer is on top"
    );
    assert!(target.join("file0").exists() && target.join("file1").exists());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        .unwrap();
    assert!(line.contains(" - overlay overlay ro,"), "{line}");
    assert!(
        line.contains(&format!(
            "lowerdir={}:{}",
            lowers[1].display(),
            lowers[0].display()
        )),
        "{line}"
    );
    assert!(line.split(' ').nth(5).unwrap().contains("nodev"), "{line}");
    assert!(line.split(' ').nth(5).unwrap().contains("nosuid"), "{line}");

    overlay::unmount(&target).unwrap();
    assert!(!overlay::is_mounted(&target).unwrap());
    overlay::unmount(&target).unwrap();
    assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
}

#[test]
fn the_root_is_read_only() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = layer_dirs(&t.path().join("layers"), 2);
    let target = t.path().join("root");
    fs::create_dir(&target).unwrap();
    let _mounted = Mounted::new(&lowers, &target);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
    };
    erofs(fs::write(target.join("new"), "x"), "create a file");
    erofs(
        fs::OpenOptions::new()
            .append(true)
            .open(target.join("top"))
            .map(drop),
        "open a file for writing",
    );
    erofs(fs::create_dir(target.join("d")), "make a directory");
    erofs(fs::remove_file(target.join("file0")), "remove a file");
    erofs(
        fs::rename(target.join("top"), target.join("moved")),
        "rename",
    );
    erofs(
        fs::set_permissions(target.join("top"), fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    // The layers themselves are untouched.
    assert_eq!(fs::read_to_string(lowers[1].join("top")).unwrap(), "1");
    assert_eq!(fs::read_dir(&lowers[1]).unwrap().count(), 2);
}

#[test]
fn a_busy_root_is_detached_lazily() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = layer_dirs(&t.path().join("layers"), 2);
    let target = t.path().join("root");
    fs::create_dir(&target).unwrap();
    overlay::mount(&lowers, &target).unwrap();
    let open = fs::File::open(target.join("top")).unwrap();
    overlay::unmount(&target).unwrap();
    assert!(!overlay::is_mounted(&target).unwrap());
    // The open file still reads: the kernel lets go of the mount when it is closed.
    assert_eq!(std::io::read_to_string(open).unwrap(), "1");
}

#[test]
fn unusable_targets_and_layers_are_refused() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = layer_dirs(&t.path().join("layers"), 2);
    let target = t.path().join("root");
    fs::create_dir(&target).unwrap();
    let reason = |r: Result<(), RuntimeError>| match r {
        Err(RuntimeError::Overlay { reason, .. }) => reason,
        other => panic!("expected an overlay error, got {other:?}"),
    };

    assert!(reason(overlay::mount(&[], &target)).contains("no layers"));
    let file = t.path().join("file");
    fs::write(&file, "").unwrap();
    assert!(
        reason(overlay::mount(&[lowers[0].clone(), file], &target)).contains("is not a directory")
    );
    fs::write(target.join("stray"), "").unwrap();
    assert!(reason(overlay::mount(&lowers, &target)).contains("is not empty"));
    fs::remove_file(target.join("stray")).unwrap();

    let _mounted = Mounted::new(&lowers, &target);
    assert!(reason(overlay::mount(&lowers, &target)).contains("mounted there already"));
    assert!(matches!(
        overlay::mount(&lowers, &t.path().join("missing")),
        Err(RuntimeError::Io { .. })
    ));
}

/// 60 store paths do not fit in one page of mount options; named by descriptor they do.
#[test]
fn many_layers_are_named_by_descriptor() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let long = t.path().join("l".repeat(200)).join("sha256");
    let lowers = layer_dirs(&long, 60);
    let plain: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(plain > 4096, "the plain option would be {plain} bytes");
    let target = t.path().join("root");
    fs::create_dir(&target).unwrap();
    let _mounted = Mounted::new(&lowers, &target);
    assert_eq!(fs::read_to_string(target.join("top")).unwrap(), "59");
    for i in 0..60 {
        assert!(target.join(format!("file{i}")).exists(), "file{i}");
    }
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("lowerdir=/proc/self/fd/"), "{line}");
}

#[test]
fn too_many_layers_are_refused_naming_the_count() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lowers = layer_dirs(&t.path().join("layers"), 300);
    let target = t.path().join("root");
    fs::create_dir(&target).unwrap();
    let err = overlay::mount(&lowers, &target).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("300 layers are too many"), "{msg}");
    assert!(msg.contains("fewer layers"), "{msg}");
    assert!(!overlay::is_mounted(&target).unwrap());
}
