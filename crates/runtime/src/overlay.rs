//! Read-only root file systems: an overlay of shared layer directories with no upper layer.
//!
//! The layer directories come from `image::LayerStore::ensure`, in overlayfs form. With no
//! upper directory overlayfs writes nothing anywhere, so many services can stack the same
//! layers and none of them can change what another sees; the mount is read-only as well.
//!
//! Two kernel limits shape [`mount`]:
//!
//! - Without an upper directory overlayfs wants at least two lower directories, and refuses
//!   the same directory twice (ELOOP). Each directory is stacked once, at its topmost place
//!   (the same result: a layer's second application hides everything its first one did), and
//!   a one-layer root gets the empty target directory itself as its bottom layer.
//! - `mount(2)` copies its options from one page, so a long `lowerdir=` is cut short, and
//!   fails with a baffling ENOENT for a path the cut made up. When the plain paths do not
//!   fit in a page less its NUL (4095 bytes on x86-64: about 40 store paths under
//!   `/var/lib/shg/layers`), each layer is opened and named as `/proc/self/fd/N` instead
//!   (about 18 bytes, so about 220 layers); more than that is refused, naming the count.
//!   The descriptor form also carries any path with a `:`, `,` or `\` safely. It needs no
//!   `chdir`, which would move every thread of the agent.

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::RuntimeError;

/// Mount flags of every root: read-only, and no device nodes or set-id files honoured.
const FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOSUID);

/// How many mounts stacked on one target [`unmount`] takes away before giving up.
const MAX_STACKED: usize = 16;

/// Mounts on `target` (an existing, empty directory) a read-only overlay of `lowers`, the
/// layer directories in the order they apply: base first, top last.
pub fn mount(lowers: &[PathBuf], target: &Path) -> Result<(), RuntimeError> {
    mount_layers(lowers, None, target)
}

/// Like [`mount`], with `upper` (and its overlayfs work directory `work`, on the same file
/// system) taking every change made through `target`, which is then writable: what a
/// container runtime needs to make its mount points in a root it later remounts read-only.
/// The layers stay untouched.
pub fn mount_with_upper(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), RuntimeError> {
    mount_layers(lowers, Some((upper, work)), target)
}

fn mount_layers(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<(), RuntimeError> {
    let fail = |reason: String| RuntimeError::Overlay {
        target: target.to_path_buf(),
        reason,
    };
    if lowers.is_empty() {
        return Err(fail("no layers to mount; an image has at least one".into()));
    }
    if is_mounted(target)? {
        return Err(fail(
            "something is mounted there already; unmount it first".into(),
        ));
    }
    let mut listing = fs::read_dir(target).map_err(|e| RuntimeError::io(target, e))?;
    if listing.next().is_some() {
        return Err(fail(
            "is not empty; a root is mounted on an empty directory".into(),
        ));
    }

    let mut stack = stack(lowers, target)?;
    if stack.len() == 1 && upper.is_none() {
        stack.push(target);
    }
    let upper_option = match upper {
        None => Vec::new(),
        Some((upper, work)) => {
            let (u, w) = (upper.as_os_str().as_bytes(), work.as_os_str().as_bytes());
            if [u, w]
                .iter()
                .any(|p| p.iter().any(|b| matches!(b, b':' | b',' | b'\\')))
            {
                return Err(fail(
                    "the upper and work directories' paths may not hold ':', ',' or '\\'".into(),
                ));
            }
            [b",upperdir=", u, b",workdir=", w].concat()
        }
    };
    let flags = if upper.is_some() {
        FLAGS.difference(MsFlags::MS_RDONLY)
    } else {
        FLAGS
    };
    let limit = option_limit();
    if let Some(data) = plain_option(&stack)
        .map(|d| [d, upper_option.clone()].concat())
        .filter(|d| d.len() <= limit)
    {
        return mount_with(&data, target, stack.len(), flags);
    }
    let fds = stack
        .iter()
        .map(|dir| {
            nix::fcntl::open(
                *dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(|fd| {
                // SAFETY: `fd` was just returned by a successful open and has no other owner.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
            .map_err(|e| RuntimeError::io(dir, e.into()))
        })
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let data = [
        lowerdir_option(
            fds.iter()
                .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes()),
        ),
        upper_option,
    ]
    .concat();
    if data.len() > limit {
        return Err(fail(format!(
            "{} layers are too many: their lowerdir option takes {} bytes even as /proc/self/fd \
             paths, and mount(2) reads at most {limit}; rebuild the image with fewer layers",
            lowers.len(),
            data.len()
        )));
    }
    // The descriptors stay open until the kernel has resolved every path.
    mount_with(&data, target, stack.len(), flags)
}

/// The directories of `lowers` top first, as `lowerdir=` lists them, each once: at its
/// topmost place.
fn stack<'a>(lowers: &'a [PathBuf], target: &Path) -> Result<Vec<&'a Path>, RuntimeError> {
    let mut seen = HashSet::new();
    let mut stack = Vec::with_capacity(lowers.len());
    for dir in lowers.iter().rev() {
        let meta = fs::metadata(dir).map_err(|e| RuntimeError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(RuntimeError::Overlay {
                target: target.to_path_buf(),
                reason: format!("layer {} is not a directory", dir.display()),
            });
        }
        if seen.insert((meta.dev(), meta.ino())) {
            stack.push(dir.as_path());
        }
    }
    Ok(stack)
}

/// `lowerdir=` with the paths as they are, or `None` if one holds a character the option
/// syntax gives a meaning (`:` between layers, `,` between options, `\` escapes).
fn plain_option(stack: &[&Path]) -> Option<Vec<u8>> {
    let special = |b: &u8| matches!(b, b':' | b',' | b'\\');
    if stack
        .iter()
        .any(|p| p.as_os_str().as_bytes().iter().any(special))
    {
        return None;
    }
    Some(lowerdir_option(
        stack.iter().map(|p| p.as_os_str().as_bytes().to_vec()),
    ))
}

fn lowerdir_option(paths: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut data = b"lowerdir=".to_vec();
    for (i, path) in paths.enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(&path);
    }
    data
}

/// The longest option string `mount(2)` takes whole: one page, less the terminating NUL.
fn option_limit() -> usize {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(4096);
    page - 1
}

fn mount_with(
    data: &[u8],
    target: &Path,
    layers: usize,
    flags: MsFlags,
) -> Result<(), RuntimeError> {
    nix::mount::mount(Some("overlay"), target, Some("overlay"), flags, Some(data)).map_err(|e| {
        RuntimeError::Overlay {
            target: target.to_path_buf(),
            reason: format!(
                "mounting an overlay of {layers} directories failed: {e}; the kernel log \
                 (dmesg) says why"
            ),
        }
    })
}

/// Unmounts whatever is mounted on `target`; nothing to do when nothing is, or when
/// `target` does not exist. A mount still in use (a process with a file open in it) is
/// detached lazily: gone from the tree at once, released by the kernel when the last user
/// lets go.
pub fn unmount(target: &Path) -> Result<(), RuntimeError> {
    let fail = |reason: String| RuntimeError::Overlay {
        target: target.to_path_buf(),
        reason,
    };
    for _ in 0..MAX_STACKED {
        if !is_mounted(target)? {
            return Ok(());
        }
        match nix::mount::umount2(target, MntFlags::empty()) {
            // EINVAL: no longer a mount point, someone else unmounted it meanwhile.
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
            Err(Errno::EBUSY) => nix::mount::umount2(target, MntFlags::MNT_DETACH)
                .map_err(|e| fail(format!("cannot detach the busy mount: {e}")))?,
            Err(e) => return Err(fail(format!("cannot unmount: {e}"))),
        }
    }
    Err(fail(format!(
        "still mounted after {MAX_STACKED} unmounts; see what is stacked there in \
         /proc/self/mountinfo"
    )))
}

/// Whether something is mounted on `target` in this process's mount namespace, after
/// resolving symlinks in `target` (see [`crate::volume::is_mounted`]). A missing `target`
/// is not mounted.
pub fn is_mounted(target: &Path) -> Result<bool, RuntimeError> {
    let target = match fs::canonicalize(target) {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RuntimeError::io(target, e)),
    };
    crate::volume::is_mounted(&target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_lists_the_top_layer_first() {
        let t = tempfile::tempdir().unwrap();
        let lowers: Vec<PathBuf> = ["base", "mid", "top"]
            .iter()
            .map(|n| t.path().join(n))
            .collect();
        for dir in &lowers {
            fs::create_dir(dir).unwrap();
        }
        // A repeated layer is stacked once, at its topmost place.
        let with_repeat = [lowers.clone(), vec![lowers[0].clone()]].concat();
        let stacked = stack(&with_repeat, t.path()).unwrap();
        assert_eq!(stacked, [&lowers[0], &lowers[2], &lowers[1]]);
        let data = plain_option(&stack(&lowers, t.path()).unwrap()).unwrap();
        let expected = format!(
            "lowerdir={}:{}:{}",
            lowers[2].display(),
            lowers[1].display(),
            lowers[0].display()
        );
        assert_eq!(String::from_utf8(data).unwrap(), expected);
    }

    #[test]
    fn paths_the_option_syntax_would_split_are_not_used_plainly() {
        for odd in ["/a:b", "/a,b", "/a\\b"] {
            assert_eq!(
                plain_option(&[Path::new("/ok"), Path::new(odd)]),
                None,
                "{odd}"
            );
        }
        assert!(option_limit() >= 4095);
    }
}
