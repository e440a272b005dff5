//! Applying layers onto a directory without ever following a symlink inside it.
//!
//! Every entry is placed by walking its parent directories one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` from a descriptor on the destination, so a symlink
//! planted by an earlier entry (or layer) can never redirect a write outside the root.
//!
//! One implementation writes both forms a layer can take ([`Form`]): merged into one tree
//! with the layers below it ([`unpack`]), or alone in a directory of its own as an overlayfs
//! lower layer (the layer store). They differ only in how a whiteout is written down; every
//! check on an entry is the same.
//!
//! Whiteouts follow the OCI image spec: they hide what *lower* layers put at a path, never
//! the entries of their own layer, whatever their order inside the tar.

use std::collections::BTreeSet;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Bound;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::sys::stat::{
    self, fchmod, fstatat, futimens, mkdirat, mknodat, FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

use crate::error::EntryProblem;
use crate::oci::{self, Compression, HashReader};
use crate::size::{Budget, Meter, Tally};
use crate::{ImageError, Layer, Package};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
pub(crate) const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// The xattr overlayfs reads to hide everything lower layers hold in a directory.
const OVERLAY_OPAQUE: &CStr = c"trusted.overlay.opaque";

/// How a layer is written down; everything but whiteouts is written the same way in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Onto the layers below it in one tree: a whiteout deletes what they put there.
    Merged,
    /// Alone in its own directory, to be an overlayfs lower layer: `.wh.NAME` becomes the
    /// character device 0:0 `NAME`, `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on
    /// its directory (both need root).
    Overlay,
}

/// One layer blob and what it must match.
pub(crate) struct Source<'a> {
    pub blob: &'a Path,
    pub media_type: &'a str,
    /// How errors name the layer.
    pub label: &'a str,
    /// Digest the uncompressed tar must have.
    pub diff_id: Option<&'a str>,
    /// Size the blob must have.
    pub size: Option<u64>,
}

impl<'a> Source<'a> {
    /// A verified layer of a package, checked against its `diff_id` and declared size.
    pub fn layer(layer: &'a Layer) -> Self {
        Source {
            blob: &layer.path,
            media_type: &layer.media_type,
            label: &layer.digest,
            diff_id: Some(&layer.diff_id),
            size: Some(layer.size),
        }
    }
}

/// Unpack the verified layers of `pkg` in order onto `dest`, applying OCI whiteouts
/// (`.wh.NAME`, `.wh..wh..opq`) and checking each layer against its `diff_id`.
///
/// On error `dest` is left partially written and must be thrown away: unpack into a
/// temporary directory and rename it into place only when this returns `Ok`.
pub fn unpack(pkg: &Package, dest: &Path) -> Result<(), ImageError> {
    for layer in &pkg.layers {
        apply(&Source::layer(layer), dest, Form::Merged, None)?;
    }
    Ok(())
}

/// [`unpack`], holding the layers together to `budget`, counted as [`crate::measure`]
/// counts them: the entry that would pass it is refused from its header, before any of it
/// is written, with [`ImageError::OverAllowance`]. Every layer is written here, so every
/// layer spends from the budget. On error `dest` is partial, as with [`unpack`].
pub fn unpack_within(pkg: &Package, dest: &Path, budget: &Budget) -> Result<(), ImageError> {
    let mut meter = Meter::new(budget);
    for layer in &pkg.layers {
        apply(&Source::layer(layer), dest, Form::Merged, Some(&mut meter))?;
    }
    Ok(())
}

/// Unpack one layer blob onto `dest` with the same rules as [`unpack`], without a `diff_id`
/// check. Errors name the layer by the blob's file name when it is a sha256 hex digest.
pub fn unpack_layer(blob: &Path, media_type: &str, dest: &Path) -> Result<(), ImageError> {
    let label = blob
        .file_name()
        .and_then(OsStr::to_str)
        .filter(|n| oci::is_sha256_hex(n))
        .map(|hex| format!("sha256:{hex}"))
        .unwrap_or_else(|| blob.display().to_string());
    let source = Source {
        blob,
        media_type,
        label: &label,
        diff_id: None,
        size: None,
    };
    apply(&source, dest, Form::Merged, None)
}

/// The uncompressed tar stream of a layer blob, after checking its media type and size.
pub(crate) fn layer_stream(src: &Source<'_>) -> Result<Box<dyn Read>, ImageError> {
    let Source {
        blob,
        media_type,
        label,
        size,
        ..
    } = *src;
    let compression =
        oci::layer_compression(media_type).ok_or_else(|| ImageError::UnsupportedMediaType {
            layer: label.to_string(),
            media_type: media_type.to_string(),
        })?;
    let file = File::open(blob).map_err(|e| ImageError::io("open layer", blob, e))?;
    if let Some(declared) = size {
        let actual = file
            .metadata()
            .map_err(|e| ImageError::io("stat layer", blob, e))?
            .len();
        if actual != declared {
            return Err(ImageError::SizeMismatch {
                digest: label.to_string(),
                referrer: "layer".to_string(),
                declared,
                actual,
            });
        }
    }
    Ok(match compression {
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::new(file))),
        Compression::None => Box::new(BufReader::new(file)),
    })
}

/// The error for a refused entry of the layer `label`.
pub(crate) fn entry_error<R: Read>(
    label: &str,
    entry: &tar::Entry<'_, R>,
    problem: EntryProblem,
) -> ImageError {
    ImageError::Entry {
        layer: label.to_string(),
        entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
        problem,
    }
}

/// Apply one layer onto the existing directory `dest` in the given form. With a `meter`,
/// every entry is counted from its header (as [`crate::measure`] counts it) and spent from
/// the budget before anything of it is written.
pub(crate) fn apply(
    src: &Source<'_>,
    dest: &Path,
    form: Form,
    mut meter: Option<&mut Meter<'_>>,
) -> Result<(), ImageError> {
    let Source { label, diff_id, .. } = *src;
    let stream = layer_stream(src)?;
    let root = fcntl::open(dest, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
        .map(own)
        .map_err(|e| ImageError::io("open destination directory", dest, e.into()))?;
    let read_err = |source| ImageError::LayerRead {
        layer: label.to_string(),
        source,
    };

    let mut unpacker = Unpacker {
        root,
        form,
        chown: nix::unistd::geteuid().is_root(),
        created: BTreeSet::new(),
        dirs: Vec::new(),
    };
    let mut tally = Tally::new();
    if let Some(meter) = meter.as_deref_mut() {
        meter.spend(label, tally.bytes, tally.bytes)?;
    }
    let mut archive = tar::Archive::new(HashReader::new(stream));
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        if let Some(meter) = meter.as_deref_mut() {
            let cost = tally
                .charge(&entry)
                .map_err(|problem| entry_error(label, &entry, problem))?;
            meter.spend(label, tally.bytes, cost)?;
        }
        unpacker
            .entry(&mut entry)
            .map_err(|problem| entry_error(label, &entry, problem))?;
    }
    unpacker.finish_dirs();
    // The tar reader stops at the end-of-archive marker; hash whatever follows too.
    let (actual, _) = archive.into_inner().finish().map_err(read_err)?;
    match diff_id {
        Some(expected) if expected != actual => Err(ImageError::DiffIdMismatch {
            layer: label.to_string(),
            expected: expected.to_string(),
            actual,
        }),
        _ => Ok(()),
    }
}

/// Split a tar path into normal components: leading `/` and `.` are dropped, `..` refused.
pub(crate) fn components(raw: &[u8]) -> Result<Vec<OsString>, EntryProblem> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(EntryProblem::ParentComponent),
            c => out.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Ok(out)
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and has no other owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
}

fn is_symlink(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits()
}

/// An overlayfs whiteout: a character device with device number 0:0. Layers never carry
/// device nodes, so in a layer directory only a `.wh.` entry can have made one.
fn is_whiteout(st: &FileStat) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFCHR.bits() && st.st_rdev == 0
}

/// Mark the directory `dir` opaque for overlayfs: nothing lower layers hold in it shows.
fn set_opaque(dir: RawFd) -> Result<(), EntryProblem> {
    // SAFETY: `dir` is an open descriptor, the name is a NUL-terminated C string and the
    // value pointer and length describe a live one-byte buffer.
    let r = unsafe { libc::fsetxattr(dir, OVERLAY_OPAQUE.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(EntryProblem::io(
            "mark the directory opaque (setting trusted.overlay.opaque needs root)",
            io::Error::last_os_error(),
        ))
    }
}

/// Whether the directory `dir` carries the overlayfs opaque mark.
pub(crate) fn is_opaque(dir: RawFd) -> io::Result<bool> {
    let mut value = [0u8; 1];
    // SAFETY: `dir` is an open descriptor, the name is a NUL-terminated C string and the
    // buffer pointer and length describe a live, writable one-byte buffer.
    let n = unsafe {
        libc::fgetxattr(
            dir,
            OVERLAY_OPAQUE.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n >= 0 {
        return Ok(n == 1 && value[0] == b'y');
    }
    match io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::ERANGE)) => Ok(false),
        e => Err(e),
    }
}

fn lstat_at(dir: RawFd, name: &OsStr) -> nix::Result<FileStat> {
    fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

fn timespec(secs: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
}

fn entry_names(dir: &mut Dir) -> nix::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for e in dir.iter() {
        let name = e?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from(OsStr::from_bytes(&name)));
        }
    }
    Ok(names)
}

/// Remove `name` in `parent` (recursively for directories) without following symlinks.
pub(crate) fn remove_all_at(parent: RawFd, name: &OsStr) -> nix::Result<()> {
    let st = match lstat_at(parent, name) {
        Err(Errno::ENOENT) => return Ok(()),
        r => r?,
    };
    if !is_dir(&st) {
        return unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir);
    }
    let mut dir = Dir::openat(Some(parent), name, DIR_FLAGS, Mode::empty())?;
    for child in entry_names(&mut dir)? {
        remove_all_at(dir.as_raw_fd(), &child)?;
    }
    unlinkat(Some(parent), name, UnlinkatFlags::RemoveDir)
}

/// State of one layer being applied.
struct Unpacker {
    root: OwnedFd,
    form: Form,
    chown: bool,
    /// Paths this layer created. A whiteout in the same layer keeps them, and whatever lies
    /// under them: whiteouts hide only what lower layers put there.
    created: BTreeSet<PathBuf>,
    /// Directory (path, mode, mtime) to set once all entries are in, as adding
    /// entries changes a directory's mtime and a read-only mode could block them.
    dirs: Vec<(Vec<OsString>, u32, u64)>,
}

impl Unpacker {
    /// Open the directory `comps` names, one component at a time and never through a symlink.
    /// Missing directories are created (mode 0755) when `create`, else `Ok(None)` is returned.
    fn walk(&mut self, comps: &[OsString], create: bool) -> Result<Option<OwnedFd>, EntryProblem> {
        let mut cur = self
            .root
            .try_clone()
            .map_err(|e| EntryProblem::io("duplicate descriptor", e))?;
        for (i, c) in comps.iter().enumerate() {
            let open = |dir: &OwnedFd| {
                fcntl::openat(
                    Some(dir.as_raw_fd()),
                    c.as_os_str(),
                    DIR_FLAGS,
                    Mode::empty(),
                )
            };
            let opened = match open(&cur) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(
                        Some(cur.as_raw_fd()),
                        c.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(EntryProblem::io("create directory", e)),
                    }
                    self.created.insert(comps[..=i].iter().collect());
                    open(&cur)
                }
                Err(Errno::ENOTDIR) if create && self.form == Form::Overlay => {
                    if self.replace_whiteout_with_dir(cur.as_raw_fd(), c)? {
                        self.created.insert(comps[..=i].iter().collect());
                    }
                    open(&cur)
                }
                r => r,
            };
            cur = match opened {
                Ok(fd) => own(fd),
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let component = comps[..=i]
                        .iter()
                        .collect::<PathBuf>()
                        .display()
                        .to_string();
                    return Err(match lstat_at(cur.as_raw_fd(), c) {
                        Ok(st) if is_symlink(&st) => EntryProblem::ThroughSymlink { component },
                        _ => EntryProblem::NotADirectory { component },
                    });
                }
                Err(e) => return Err(EntryProblem::io("open directory", e)),
            };
        }
        Ok(Some(cur))
    }

    /// In overlay form, a directory this layer puts where it wrote a whiteout must still hide
    /// the lower layers' content at that path (as the whiteout did): it becomes an opaque
    /// directory. Returns whether `name` was such a whiteout and is now that directory.
    fn replace_whiteout_with_dir(&self, parent: RawFd, name: &OsStr) -> Result<bool, EntryProblem> {
        match lstat_at(parent, name) {
            Ok(st) if is_whiteout(&st) => {}
            _ => return Ok(false),
        }
        let io = EntryProblem::io;
        unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| io("replace whiteout", e))?;
        mkdirat(Some(parent), name, Mode::from_bits_truncate(0o755))
            .map_err(|e| io("create directory", e))?;
        let dir = fcntl::openat(Some(parent), name, DIR_FLAGS, Mode::empty())
            .map(own)
            .map_err(|e| io("open directory", e))?;
        set_opaque(dir.as_raw_fd())?;
        Ok(true)
    }

    /// Whether this layer created `path` or anything below it.
    fn touched(&self, path: &Path) -> bool {
        // Paths order component by component, so `path`'s descendants directly follow it.
        self.created
            .range::<Path, _>((Bound::Included(path), Bound::Unbounded))
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), EntryProblem> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = components(&entry.path_bytes())?;
        let Some((name, parents)) = comps.split_last() else {
            // The root itself: its metadata belongs to whoever made `dest`.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(EntryProblem::EmptyPath)
            };
        };
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT) {
            return self.whiteout(parents, name.as_bytes(), hidden);
        }

        let header = entry.header();
        let bad_header = |e| EntryProblem::io("read header", e);
        // setuid and setgid bits are dropped: no_new_privs makes them useless inside the
        // container, and on the host they would hand root to anyone who can reach the file.
        let mode = Mode::from_bits_truncate(header.mode().map_err(bad_header)? & 0o1777);
        let uid =
            Uid::from_raw(u32::try_from(header.uid().map_err(bad_header)?).unwrap_or(u32::MAX));
        let gid =
            Gid::from_raw(u32::try_from(header.gid().map_err(bad_header)?).unwrap_or(u32::MAX));
        let mtime = timespec(header.mtime().map_err(bad_header)?);
        let owner = self.chown.then_some((uid, gid));

        let parent = self
            .walk(parents, true)?
            .expect("walk creates missing directories");
        let pfd = parent.as_raw_fd();
        let io = EntryProblem::io;
        match kind {
            EntryType::Directory => {
                match lstat_at(pfd, name) {
                    Ok(st) if is_dir(&st) => {}
                    Ok(st) if is_whiteout(&st) && self.form == Form::Overlay => {
                        self.replace_whiteout_with_dir(pfd, name)?;
                    }
                    Ok(_) => {
                        remove_all_at(pfd, name).map_err(|e| io("replace", e))?;
                        mkdirat(Some(pfd), name.as_os_str(), Mode::from_bits_truncate(0o755))
                            .map_err(|e| io("create directory", e))?;
                    }
                    Err(Errno::ENOENT) => {
                        mkdirat(Some(pfd), name.as_os_str(), Mode::from_bits_truncate(0o755))
                            .map_err(|e| io("create directory", e))?;
                    }
                    Err(e) => return Err(io("stat", e)),
                }
                if let Some((u, g)) = owner {
                    let dir = fcntl::openat(Some(pfd), name.as_os_str(), DIR_FLAGS, Mode::empty())
                        .map(own)
                        .map_err(|e| io("open directory", e))?;
                    fchown(dir.as_raw_fd(), Some(u), Some(g)).map_err(|e| io("chown", e))?;
                }
                self.dirs
                    .push((comps.clone(), mode.bits(), header.mtime().unwrap_or(0)));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_all_at(pfd, name).map_err(|e| io("replace", e))?;
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = fcntl::openat(
                    Some(pfd),
                    name.as_os_str(),
                    flags,
                    Mode::from_bits_truncate(0o600),
                )
                .map(own)
                .map_err(|e| io("create file", e))?;
                let mut file = File::from(fd);
                copy_declared(entry, &mut file)?;
                set_meta(file.as_raw_fd(), owner, mode, mtime)?;
            }
            EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                remove_all_at(pfd, name).map_err(|e| io("replace", e))?;
                symlinkat(OsStr::from_bytes(&target), Some(pfd), name.as_os_str())
                    .map_err(|e| io("create symlink", e))?;
                if let Some((u, g)) = owner {
                    fchownat(
                        Some(pfd),
                        name.as_os_str(),
                        Some(u),
                        Some(g),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| io("chown", e))?;
                }
                stat::utimensat(
                    Some(pfd),
                    name.as_os_str(),
                    &mtime,
                    &mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| io("set times", e))?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                self.hardlink(&comps, pfd, name, &target)?;
            }
            EntryType::Fifo => {
                remove_all_at(pfd, name).map_err(|e| io("replace", e))?;
                mknodat(
                    Some(pfd),
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(|e| io("create fifo", e))?;
                // Non-blocking read-only open of a fifo succeeds at once and lets us use f* calls.
                let fd = fcntl::openat(
                    Some(pfd),
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(own)
                .map_err(|e| io("open fifo", e))?;
                set_meta(fd.as_raw_fd(), owner, mode, mtime)?;
            }
            EntryType::Char => return Err(EntryProblem::Device { kind: "character" }),
            EntryType::Block => return Err(EntryProblem::Device { kind: "block" }),
            other => {
                return Err(EntryProblem::UnsupportedType {
                    type_byte: other.as_byte(),
                })
            }
        }
        self.created.insert(comps.iter().collect());
        Ok(())
    }

    fn hardlink(
        &mut self,
        comps: &[OsString],
        pfd: RawFd,
        name: &OsStr,
        raw_target: &[u8],
    ) -> Result<(), EntryProblem> {
        let target = String::from_utf8_lossy(raw_target).into_owned();
        let tcomps = components(raw_target).map_err(|_| EntryProblem::HardlinkEscapes {
            target: target.clone(),
        })?;
        let missing = || EntryProblem::HardlinkTarget {
            target: target.clone(),
        };
        let Some((tname, tparents)) = tcomps.split_last() else {
            return Err(missing());
        };
        let tdir = match self.walk(tparents, false) {
            Ok(Some(d)) => d,
            Ok(None) | Err(EntryProblem::NotADirectory { .. }) => return Err(missing()),
            Err(EntryProblem::ThroughSymlink { component }) => {
                return Err(EntryProblem::HardlinkThroughSymlink { target, component })
            }
            Err(e) => return Err(e),
        };
        match lstat_at(tdir.as_raw_fd(), tname) {
            Ok(st) if !is_dir(&st) && !is_whiteout(&st) => {}
            _ => return Err(missing()),
        }
        if tcomps == comps {
            return Ok(());
        }
        remove_all_at(pfd, name).map_err(|e| EntryProblem::io("replace", e))?;
        linkat(
            Some(tdir.as_raw_fd()),
            tname.as_os_str(),
            Some(pfd),
            name,
            AtFlags::empty(),
        )
        .map_err(|e| EntryProblem::io("create hard link", e))
    }

    /// `.wh..wh..opq` hides what lower layers put in its directory, `.wh.NAME` what they put
    /// at NAME. Neither hides this layer's own entries, before or after the marker.
    fn whiteout(
        &mut self,
        parents: &[OsString],
        name: &[u8],
        hidden: &[u8],
    ) -> Result<(), EntryProblem> {
        if name == OPAQUE {
            let dir = self
                .walk(parents, true)?
                .expect("walk creates missing directories");
            return self.hide_lower(dir.as_raw_fd(), &parents.iter().collect::<PathBuf>());
        }
        match hidden {
            b".." => return Err(EntryProblem::ParentComponent),
            // Other `.wh..wh.` names are AUFS bookkeeping with nothing to apply.
            b"" | b"." => return Ok(()),
            h if h.starts_with(WHITEOUT) => return Ok(()),
            _ => {}
        }
        let hidden = OsStr::from_bytes(hidden);
        let parent = match self.form {
            Form::Merged => self.walk(parents, false)?,
            // The whiteout has to exist even where this layer has nothing else: it is what
            // hides the lower layers' entry.
            Form::Overlay => self.walk(parents, true)?,
        };
        let Some(parent) = parent else {
            return Ok(());
        };
        let pfd = parent.as_raw_fd();
        let path: PathBuf = parents
            .iter()
            .map(OsString::as_os_str)
            .chain([hidden])
            .collect();
        if self.touched(&path) {
            // This layer's own entry stays; if it is a directory, only the lower layers'
            // content in it goes.
            return match lstat_at(pfd, hidden) {
                Ok(st) if is_dir(&st) => {
                    let dir = fcntl::openat(Some(pfd), hidden, DIR_FLAGS, Mode::empty())
                        .map(own)
                        .map_err(|e| EntryProblem::io("open directory", e))?;
                    self.hide_lower(dir.as_raw_fd(), &path)
                }
                _ => Ok(()),
            };
        }
        remove_all_at(pfd, hidden).map_err(|e| EntryProblem::io("apply whiteout", e))?;
        if self.form == Form::Overlay {
            mknodat(Some(pfd), hidden, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| EntryProblem::io("create whiteout (a device node, needs root)", e))?;
        }
        Ok(())
    }

    /// Hide what lower layers put in the directory `dir` (at `path`), keeping this layer's.
    fn hide_lower(&self, dir: RawFd, path: &Path) -> Result<(), EntryProblem> {
        match self.form {
            Form::Merged => self
                .clear_opaque(dir, path)
                .map_err(|e| EntryProblem::io("apply opaque whiteout", e)),
            Form::Overlay => set_opaque(dir),
        }
    }

    fn clear_opaque(&self, dir: RawFd, prefix: &Path) -> nix::Result<()> {
        let mut listing = Dir::openat(Some(dir), ".", DIR_FLAGS, Mode::empty())?;
        for child in entry_names(&mut listing)? {
            let path = prefix.join(&child);
            if !self.touched(&path) {
                remove_all_at(dir, &child)?;
            } else if is_dir(&lstat_at(dir, &child)?) {
                let sub = Dir::openat(Some(dir), child.as_os_str(), DIR_FLAGS, Mode::empty())?;
                self.clear_opaque(sub.as_raw_fd(), &path)?;
            }
        }
        Ok(())
    }

    /// Apply directory modes and mtimes last. A directory that a later entry of the same
    /// layer replaced or removed is skipped.
    fn finish_dirs(&mut self) {
        for (comps, mode, mtime) in std::mem::take(&mut self.dirs) {
            if let Ok(Some(dir)) = self.walk(&comps, false) {
                let ts = timespec(mtime);
                let _ = fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(mode));
                let _ = futimens(dir.as_raw_fd(), &ts, &ts);
            }
        }
    }
}

/// Copy an entry's data, never more than the size it declares (what the budget counted):
/// an entry that yields more is cut off there and refused. The tar reader should make
/// that impossible (it reads a regular entry through `take(size)` and checks that a sparse
/// file's chunks add up to its size); this keeps the budget's count an upper bound of what
/// is written if it ever does not.
fn copy_declared<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    file: &mut File,
) -> Result<(), EntryProblem> {
    let declared = entry.size();
    let mut data = entry.take(declared);
    io::copy(&mut data, file).map_err(|e| EntryProblem::io("write file", e))?;
    let mut probe = [0u8; 1];
    match data.into_inner().read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(EntryProblem::Overrun { declared }),
        Err(e) => Err(EntryProblem::io("write file", e)),
    }
}

/// Owner first: chown clears setuid/setgid bits, which the chmod after it restores.
fn set_meta(
    fd: RawFd,
    owner: Option<(Uid, Gid)>,
    mode: Mode,
    mtime: TimeSpec,
) -> Result<(), EntryProblem> {
    if let Some((u, g)) = owner {
        fchown(fd, Some(u), Some(g)).map_err(|e| EntryProblem::io("chown", e))?;
    }
    fchmod(fd, mode).map_err(|e| EntryProblem::io("chmod", e))?;
    futimens(fd, &mtime, &mtime).map_err(|e| EntryProblem::io("set times", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_normalise_and_refuse_parents() {
        let names = |raw: &str| {
            components(raw.as_bytes()).map(|v| {
                v.into_iter()
                    .map(|c| c.into_string().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(names("/usr//bin/./sh").unwrap(), ["usr", "bin", "sh"]);
        assert_eq!(names("./").unwrap(), Vec::<String>::new());
        assert_eq!(names("a/..b/c..").unwrap(), ["a", "..b", "c.."]);
        for bad in ["..", "../x", "a/../../x", "a/b/..", "/../etc"] {
            assert!(
                matches!(names(bad), Err(EntryProblem::ParentComponent)),
                "{bad}"
            );
        }
    }

    #[test]
    fn remove_all_at_does_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let keep = t.path().join("keep");
        std::fs::create_dir_all(keep.join("sub")).unwrap();
        std::fs::write(keep.join("sub/f"), "x").unwrap();
        let doomed = t.path().join("doomed");
        std::fs::create_dir_all(doomed.join("d")).unwrap();
        std::os::unix::fs::symlink(&keep, doomed.join("d/link")).unwrap();
        let root = fcntl::open(t.path(), DIR_FLAGS, Mode::empty())
            .map(own)
            .unwrap();
        remove_all_at(root.as_raw_fd(), OsStr::new("doomed")).unwrap();
        assert!(!doomed.exists());
        assert!(keep.join("sub/f").exists());
        remove_all_at(root.as_raw_fd(), OsStr::new("absent")).unwrap();
    }
}
