//! Applying layers onto a directory without ever following a symlink inside it.
//!
//! Every entry is placed by walking its parent directories one component at a time with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` from a descriptor on the destination, so a symlink
//! planted by an earlier entry (or layer) can never redirect a write outside the root.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read};
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
use crate::{ImageError, Package};

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Unpack the verified layers of `pkg` in order onto `dest`, applying OCI whiteouts
/// (`.wh.NAME`, `.wh..wh..opq`) and checking each layer against its `diff_id`.
///
/// On error `dest` is left partially written and must be thrown away: unpack into a
/// temporary directory and rename it into place only when this returns `Ok`.
pub fn unpack(pkg: &Package, dest: &Path) -> Result<(), ImageError> {
    for layer in &pkg.layers {
        apply(
            &layer.path,
            &layer.media_type,
            dest,
            &layer.digest,
            Some(&layer.diff_id),
        )?;
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
    apply(blob, media_type, dest, &label, None)
}

fn apply(
    blob: &Path,
    media_type: &str,
    dest: &Path,
    label: &str,
    diff_id: Option<&str>,
) -> Result<(), ImageError> {
    let compression =
        oci::layer_compression(media_type).ok_or_else(|| ImageError::UnsupportedMediaType {
            layer: label.to_string(),
            media_type: media_type.to_string(),
        })?;
    let file = File::open(blob).map_err(|e| ImageError::io("open layer", blob, e))?;
    let stream: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(MultiGzDecoder::new(BufReader::new(file))),
        Compression::None => Box::new(BufReader::new(file)),
    };
    let root = fcntl::open(dest, DIR_FLAGS.difference(OFlag::O_NOFOLLOW), Mode::empty())
        .map(own)
        .map_err(|e| ImageError::io("open destination directory", dest, e.into()))?;
    let read_err = |source| ImageError::LayerRead {
        layer: label.to_string(),
        source,
    };

    let mut unpacker = Unpacker {
        root,
        chown: nix::unistd::geteuid().is_root(),
        created: HashSet::new(),
        dirs: Vec::new(),
    };
    let mut archive = tar::Archive::new(HashReader::new(stream));
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        unpacker
            .entry(&mut entry)
            .map_err(|problem| ImageError::Entry {
                layer: label.to_string(),
                entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                problem,
            })?;
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
fn components(raw: &[u8]) -> Result<Vec<OsString>, EntryProblem> {
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
fn remove_all_at(parent: RawFd, name: &OsStr) -> nix::Result<()> {
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
    chown: bool,
    /// Paths this layer created, which an opaque whiteout in the same layer must keep.
    created: HashSet<PathBuf>,
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
            let opened = match fcntl::openat(
                Some(cur.as_raw_fd()),
                c.as_os_str(),
                DIR_FLAGS,
                Mode::empty(),
            ) {
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
                    fcntl::openat(
                        Some(cur.as_raw_fd()),
                        c.as_os_str(),
                        DIR_FLAGS,
                        Mode::empty(),
                    )
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
                io::copy(entry, &mut file).map_err(|e| EntryProblem::io("write file", e))?;
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
            Ok(st) if !is_dir(&st) => {}
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

    /// `.wh..wh..opq` empties the parent of what lower layers put there; `.wh.NAME` removes NAME.
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
            let prefix: PathBuf = parents.iter().collect();
            return self
                .clear_opaque(dir.as_raw_fd(), &prefix)
                .map_err(|e| EntryProblem::io("apply opaque whiteout", e));
        }
        match hidden {
            b".." => return Err(EntryProblem::ParentComponent),
            // Other `.wh..wh.` names are AUFS bookkeeping with nothing to apply.
            b"" | b"." => return Ok(()),
            h if h.starts_with(WHITEOUT) => return Ok(()),
            _ => {}
        }
        if let Some(dir) = self.walk(parents, false)? {
            remove_all_at(dir.as_raw_fd(), OsStr::from_bytes(hidden))
                .map_err(|e| EntryProblem::io("apply whiteout", e))?;
        }
        Ok(())
    }

    fn clear_opaque(&self, dir: RawFd, prefix: &Path) -> nix::Result<()> {
        let mut listing = Dir::openat(Some(dir), ".", DIR_FLAGS, Mode::empty())?;
        for child in entry_names(&mut listing)? {
            let path = prefix.join(&child);
            if !self.created.contains(&path) {
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
