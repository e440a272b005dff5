//! The shared layer store: every layer unpacked once, alone, in overlayfs form, under its diff_id.
//!
//! Layout under the store's root (the agent uses `STATE/layers`):
//!
//! ```text
//! lock          flock: shared while `ensure` runs, exclusive while `gc` runs
//! sha256/HEX/   one complete layer, HEX the hex of its diff_id; never changed once here
//! tmp/          layers being unpacked, or being deleted by `gc`; nothing here is in use
//! ```
//!
//! A layer directory appears in `sha256/` only by an atomic rename of a finished, synced
//! unpack, so its presence means it is complete: a crash leaves at most a partial directory
//! in `tmp/`, which the next `gc` removes. `gc` likewise renames a layer into `tmp/` before
//! deleting it, so a crash halfway through a deletion never leaves half a layer in `sha256/`.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{renameat2, Flock, FlockArg, RenameFlags};

use crate::size::{Budget, Meter};
use crate::unpack::{self, Form, Source};
use crate::{oci, ImageError, Layer, Package};

const LAYERS: &str = "sha256";
const PARTIAL: &str = "tmp";
const LOCK: &str = "lock";

/// Layers shared between packages, each unpacked once into its own directory as an
/// overlayfs lower layer (see [`LayerStore::ensure`]). Needs root: whiteouts are device
/// nodes and opaque directories carry a `trusted.` xattr.
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

/// What [`LayerStore::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Layer directories removed.
    pub removed: usize,
    /// Bytes of disk they, and any partial unpack left by a crash, took.
    pub bytes: u64,
}

impl LayerStore {
    /// Open the store at `root`, creating it (mode 0700) if needed.
    pub fn open(root: &Path) -> Result<LayerStore, ImageError> {
        for dir in [root.to_path_buf(), root.join(LAYERS), root.join(PARTIAL)] {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(ImageError::Store {
                        path: dir,
                        reason: "exists but is not a directory; move it away".into(),
                    })
                }
                Err(e) => return Err(ImageError::io("create layer store directory", dir, e)),
            }
        }
        Ok(LayerStore {
            root: root.to_path_buf(),
        })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the layer with this diff_id (`sha256:HEX`) lives, whether or not it is there yet.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        let hex = oci::sha256_hex(diff_id).ok_or_else(|| {
            ImageError::layout(format!("diff_id {diff_id:?} is not a sha256 digest"))
        })?;
        Ok(self.root.join(LAYERS).join(hex))
    }

    /// Make sure every layer of `pkg` is in the store and return the layer directories to
    /// stack, base first (the order layers apply in, the reverse of overlayfs' `lowerdir=`).
    ///
    /// A layer already present is used as it is; a missing one is unpacked alone into a
    /// partial directory with every check [`crate::unpack`] makes (its blob's declared size,
    /// each entry, its `diff_id`), then renamed into place. If another process got the same
    /// layer there first, theirs is kept and ours dropped. A refused layer leaves nothing in
    /// the store; layers of the package ensured before it stay, for gc to judge.
    ///
    /// In a layer directory an OCI whiteout `.wh.NAME` is the character device 0:0 `NAME`
    /// and an opaque marker `.wh..wh..opq` is the xattr `trusted.overlay.opaque=y` on its
    /// directory. Symlinks are stored as they are, never followed; a hard link must point at
    /// an earlier entry of the same layer.
    ///
    /// overlayfs ignores the opaque mark on a layer's root, so a layer whose root is opaque
    /// (it hides everything below it) starts the list: the layers under it are ensured but
    /// not returned.
    pub fn ensure(&self, pkg: &Package) -> Result<Vec<PathBuf>, ImageError> {
        self.ensure_metered(pkg, None)
    }

    /// [`ensure`](Self::ensure), holding the layers it unpacks to `budget`, counted as
    /// [`crate::measure`] counts them. A layer already in the store is not written and costs
    /// nothing; each one unpacked spends from the budget entry by entry, and the entry
    /// that would pass it is refused from its header, before any of it is written, with
    /// [`ImageError::OverAllowance`]. The refused layer's partial unpack is removed and
    /// nothing of it reaches `sha256/` (a crash leaves it in `tmp/`, for gc).
    ///
    /// The caller checks the measured sizes first ([`Budget::check`], before taking any
    /// lock): this is the guard that what is written is no more than what was admitted.
    pub fn ensure_within(
        &self,
        pkg: &Package,
        budget: &Budget,
    ) -> Result<Vec<PathBuf>, ImageError> {
        self.ensure_metered(pkg, Some(&mut Meter::new(budget)))
    }

    fn ensure_metered(
        &self,
        pkg: &Package,
        mut meter: Option<&mut Meter<'_>>,
    ) -> Result<Vec<PathBuf>, ImageError> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let mut dirs = Vec::with_capacity(pkg.layers.len());
        let mut first_visible = 0;
        for (i, layer) in pkg.layers.iter().enumerate() {
            let dir = self.ensure_layer(layer, meter.as_deref_mut())?;
            let root = File::open(&dir).map_err(|e| ImageError::io("open layer", &dir, e))?;
            if unpack::is_opaque(root.as_raw_fd())
                .map_err(|e| ImageError::io("read the opaque mark of", &dir, e))?
            {
                first_visible = i;
            }
            dirs.push(dir);
        }
        Ok(dirs.split_off(first_visible))
    }

    fn ensure_layer(
        &self,
        layer: &Layer,
        meter: Option<&mut Meter<'_>>,
    ) -> Result<PathBuf, ImageError> {
        let dir = self.layer_dir(&layer.diff_id)?;
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => return Ok(dir),
            Ok(_) => {
                return Err(ImageError::Store {
                    path: dir,
                    reason: "is not a directory; remove it and install again".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("look up layer", dir, e)),
        }
        let partial = self.make_partial(&layer.diff_id)?;
        let done = unpack::apply(&Source::layer(layer), &partial, Form::Overlay, meter)
            .and_then(|()| self.publish(&partial, &dir));
        match done {
            Ok(true) => Ok(dir),
            Ok(false) => {
                remove_tree(&partial)?;
                Ok(dir)
            }
            Err(e) => {
                // The layer's own error is the one to show; a leftover is gc's to collect.
                let _ = remove_tree(&partial);
                Err(e)
            }
        }
    }

    /// A fresh directory in `tmp/`, named after the layer and this process.
    fn make_partial(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let hex = oci::sha256_hex(diff_id).unwrap_or("layer");
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = self
                .root
                .join(PARTIAL)
                .join(format!("{hex}.{}.{n}", std::process::id()));
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                // A PID reused after a crash may meet its predecessor's leftovers.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io("create partial layer", path, e)),
                Ok(()) => {
                    // The layer's root is the container's `/` when it is the top layer;
                    // the umask must not decide its mode.
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(|e| ImageError::io("set mode of", &path, e))?;
                    return Ok(path);
                }
            }
        }
    }

    /// Move a finished unpack into place. `Ok(false)` when the layer got there first.
    fn publish(&self, partial: &Path, dir: &Path) -> Result<bool, ImageError> {
        let layers = File::open(self.root.join(LAYERS))
            .map_err(|e| ImageError::io("open", self.root.join(LAYERS), e))?;
        // Everything the unpack wrote reaches the disk before the rename makes it a layer:
        // after a power cut a layer is either absent or whole.
        nix::unistd::syncfs(layers.as_raw_fd())
            .map_err(|e| ImageError::io("sync the file system of", partial, e.into()))?;
        match renameat2(None, partial, None, dir, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => return Ok(false),
            Err(e) => return Err(ImageError::io("move layer into place at", dir, e.into())),
        }
        layers
            .sync_all()
            .map_err(|e| ImageError::io("sync", self.root.join(LAYERS), e))?;
        Ok(true)
    }

    /// The diff_ids of the layers in the store.
    pub fn layers(&self) -> Result<BTreeSet<String>, ImageError> {
        let dir = self.root.join(LAYERS);
        let mut out = BTreeSet::new();
        for name in names(&dir)? {
            out.insert(format!("sha256:{}", name.to_string_lossy()));
        }
        Ok(out)
    }

    /// Remove every layer whose diff_id is not in `keep`, and every partial unpack a crash
    /// left behind. Waits for running [`ensure`](Self::ensure) calls and blocks new ones.
    ///
    /// `keep` must hold every layer of every installed package, including one whose
    /// install is under way, and of every root still mounted: a layer gone from under a
    /// mounted overlay leaves it showing empty directories.
    pub fn gc(&self, keep: &BTreeSet<String>) -> Result<GcReport, ImageError> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let layers = self.root.join(LAYERS);
        let partial = self.root.join(PARTIAL);
        let mut report = GcReport::default();
        let mut collect = |path: &Path| -> Result<(), ImageError> {
            report.bytes += disk_usage(path)?;
            remove_tree(path)
        };
        // Under the exclusive lock nothing in tmp/ is being written: all of it is left over.
        for name in names(&partial)? {
            collect(&partial.join(name))?;
        }
        for name in names(&layers)? {
            if keep.contains(&format!("sha256:{}", name.to_string_lossy())) {
                continue;
            }
            // Out of sha256/ in one step, so a crash never leaves half a layer there.
            let (from, to) = (layers.join(&name), partial.join(&name));
            fs::rename(&from, &to).map_err(|e| ImageError::io("move unused layer", from, e))?;
            collect(&to)?;
            report.removed += 1;
        }
        Ok(report)
    }

    /// Bytes of disk the store takes (see [`disk_usage`]).
    pub fn disk_usage(&self) -> Result<u64, ImageError> {
        disk_usage(&self.root)
    }

    fn lock(&self, arg: FlockArg) -> Result<Flock<File>, ImageError> {
        let path = self.root.join(LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ImageError::io("open lock file", &path, e))?;
        Flock::lock(file, arg).map_err(|(_, e)| ImageError::io("lock", path, e.into()))
    }
}

/// Bytes of disk allocated to `path` and everything below it (blocks, not apparent sizes),
/// each hard-linked file counted once; symlinks are counted, never followed.
pub fn disk_usage(path: &Path) -> Result<u64, ImageError> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = fs::symlink_metadata(&p).map_err(|e| ImageError::io("stat", &p, e))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&p).map_err(|e| ImageError::io("list", &p, e))? {
                todo.push(entry.map_err(|e| ImageError::io("list", &p, e))?.path());
            }
        } else if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.blocks() * 512;
    }
    Ok(total)
}

/// The names in `dir`.
fn names(dir: &Path) -> Result<Vec<std::ffi::OsString>, ImageError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| ImageError::io("list", dir, e))? {
        out.push(
            entry
                .map_err(|e| ImageError::io("list", dir, e))?
                .file_name(),
        );
    }
    Ok(out)
}

/// Remove `path` and everything below it without following a symlink.
fn remove_tree(path: &Path) -> Result<(), ImageError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ImageError::Store {
            path: path.to_path_buf(),
            reason: "has no parent directory to remove it from".into(),
        });
    };
    let dir = File::open(parent).map_err(|e| ImageError::io("open", parent, e))?;
    unpack::remove_all_at(dir.as_raw_fd(), name)
        .map_err(|e| ImageError::io("remove", path, e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loser_of_a_race_keeps_the_winners_layer() {
        let t = tempfile::tempdir().unwrap();
        let store = LayerStore::open(&t.path().join("layers")).unwrap();
        let diff_id = format!("sha256:{}", "ab".repeat(32));
        let dir = store.layer_dir(&diff_id).unwrap();
        for (name, content) in [("winner", "theirs"), ("empty-winner", "")] {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir).unwrap();
            if !content.is_empty() {
                fs::write(dir.join(name), content).unwrap();
            }
            let partial = store.make_partial(&diff_id).unwrap();
            fs::write(partial.join("loser"), "ours").unwrap();
            assert!(!store.publish(&partial, &dir).unwrap(), "{name}");
            let inside: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            let expected: Vec<std::ffi::OsString> = if content.is_empty() {
                vec![]
            } else {
                vec![name.into()]
            };
            assert_eq!(inside, expected, "{name}");
            remove_tree(&partial).unwrap();
        }
        let partial = store.make_partial(&diff_id).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(store.publish(&partial, &dir).unwrap());
        assert!(!partial.exists());
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }
}
