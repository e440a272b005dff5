//! The runtime helper's own mount table (`shg-runtime serve --services DIR`).
//!
//! libcontainer reads the mount table of the process that creates a container over and over:
//! its cgroup v1 manager reads all of `/proc/self/mountinfo` once for each of twelve
//! controllers, at every start. The kernel also copies the whole table into each new
//! container's mount namespace, only to drop it again at `pivot_root`. On a gateway every
//! running service adds its root and its data volume to the host's table, so every start got
//! slower with every service running (+2 to +10 ms with 50 of them, in the gateway bench).
//!
//! So the fork server lives in a mount namespace of its own:
//!
//! - [`Isolation::enter`] (the server, once): a private copy of the host's table, so nothing
//!   mounted on the host afterwards shows in it, and from which every mount under the
//!   services' directory is detached.
//! - [`Isolation::spare`] (each spare child, before its request comes): a private copy of the
//!   server's table, so what a request attaches goes away with its child.
//! - [`Spare::attach`] (at the request): the service's directory, with whatever the agent has
//!   mounted in it (the release's root, the data volume), cloned from the host's namespace
//!   and attached at the same path. Four system calls, however many services run.
//!
//! Every failure falls back to the host's own namespace, where a create works as it always
//! did, only slower: the helper never starts a container in a namespace that misses a mount.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// The fork server's mount namespace, and the way back to the host's.
pub struct Isolation {
    host: OwnedFd,
    /// The services' directory (its canonical path, as mountinfo shows mount points), whose
    /// mounts this namespace leaves out.
    services: PathBuf,
}

/// A spare child's copy of the server's namespace, ready for one request.
pub struct Spare {
    host: OwnedFd,
    own: OwnedFd,
    services: PathBuf,
}

impl Isolation {
    /// Moves this process (single-threaded: `unshare` refuses otherwise) into a private copy
    /// of its mount namespace, then detaches the mounts under `services`. On an error the
    /// process is back in the namespace it came from.
    pub fn enter(services: &Path) -> io::Result<Isolation> {
        let host = namespace_fd()?;
        let cwd = std::env::current_dir()?;
        let services = std::fs::canonicalize(services)?;
        // The working directory moves along, to the copy of its mount.
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
        // Private: nothing mounted or unmounted here reaches the host, and nothing the host
        // mounts later arrives here. A private copy that misses the services' mounts is of no
        // use to the server (its spares attach them only from an `Isolation`): back to the
        // host's on any failure.
        let private = nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(io::Error::from)
        .and_then(|()| std::fs::read("/proc/self/mountinfo"));
        let table = match private {
            Ok(table) => table,
            Err(e) => {
                if let Err(back) = enter_namespace(host.as_fd(), &cwd) {
                    // Stuck in a copy that will never see a new service's root: no server.
                    eprintln!("shg-runtime serve: {e}, and cannot go back to the host's mount table: {back}");
                    std::process::exit(1)
                }
                return Err(e);
            }
        };
        // Parents before their children: detaching a parent takes its children along.
        let mut under = mounts_under(&table, &services);
        under.sort_by_key(|p| p.as_os_str().len());
        for point in under {
            match nix::mount::umount2(&point, MntFlags::MNT_DETACH) {
                // Gone with a parent detached before it.
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => eprintln!(
                    "shg-runtime serve: cannot detach {} from its own mount table: {e}",
                    point.display()
                ),
            }
        }
        Ok(Isolation { host, services })
    }

    /// In a spare child: its own copy of the server's namespace. `None` (said on stderr) when
    /// that fails; the child is then in the host's namespace, as a helper without isolation.
    pub fn spare(&self) -> Option<Spare> {
        let copy = || -> io::Result<Spare> {
            let host = high(self.host.try_clone()?)?;
            nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
            Ok(Spare {
                host,
                own: namespace_fd()?,
                services: self.services.clone(),
            })
        };
        match copy() {
            Ok(spare) => Some(spare),
            Err(e) => {
                eprintln!(
                    "shg-runtime serve: a spare child cannot copy the mount table ({e}); it uses the host's"
                );
                let back = std::env::current_dir()
                    .and_then(|cwd| enter_namespace(self.host.as_fd(), &cwd));
                if let Err(e) = back {
                    // Neither the copy nor the host's: this child must not serve.
                    eprintln!("shg-runtime serve: nor can it go back to the host's ({e})");
                    // SAFETY: ends the child at once, without the parent's exit handlers.
                    unsafe { libc::_exit(1) }
                }
                None
            }
        }
    }
}

impl Spare {
    /// Attaches `dir`, a service's directory, as the host's namespace has it (with everything
    /// mounted under it) at the same path here. When that fails (said on stderr), or `dir` is
    /// not under the services' directory, this process moves to the host's namespace instead,
    /// which has every mount; an error means it could do neither, and must not create
    /// anything.
    pub fn attach(self, dir: &Path) -> io::Result<()> {
        let cwd = std::env::current_dir()?;
        enter_namespace(self.host.as_fd(), &cwd)?;
        // Resolved here, in the host's namespace; anything but a service's directory is
        // served from here.
        let Ok(dir) = std::fs::canonicalize(dir) else {
            return Ok(());
        };
        if dir == self.services || !dir.starts_with(&self.services) {
            return Ok(());
        }
        let dir = dir.as_path();
        // In the host's namespace now, which is the fallback: a failure below goes back to it.
        let attached = open_tree(dir).and_then(|tree| {
            enter_namespace(self.own.as_fd(), &cwd)?;
            move_mount(tree.as_fd(), dir)
        });
        if let Err(e) = attached {
            eprintln!(
                "shg-runtime serve: cannot attach {} to its own mount table ({e}); this start uses the host's",
                dir.display()
            );
            enter_namespace(self.host.as_fd(), &cwd)?;
        }
        Ok(())
    }
}

/// This process's mount namespace, as a descriptor kept clear of 0-9: the runtime places the
/// container's log and status files at fixed low numbers.
fn namespace_fd() -> io::Result<OwnedFd> {
    high(File::open("/proc/self/ns/mnt")?.into())
}

fn high(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own makes a new one we then own alone.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just returned open by fcntl.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `setns` into the mount namespace `ns`, then to the directory at the path `cwd` there
/// (entering a mount namespace moves a process to its root, and a request's paths may be
/// relative to the agent's working directory).
fn enter_namespace(ns: BorrowedFd, cwd: &Path) -> io::Result<()> {
    nix::sched::setns(ns, CloneFlags::CLONE_NEWNS)?;
    std::env::set_current_dir(cwd)
}

/// A detached copy of the tree at `dir`, with every mount under it.
fn open_tree(dir: &Path) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: open_tree with a NUL-terminated path and plain flags; returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the detached tree `tree` at `target`.
fn move_mount(tree: BorrowedFd, target: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: move_mount with a descriptor we hold, an empty source path and a NUL-terminated
    // target path.
    let done = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The mount points strictly under `dir` in a `/proc/self/mountinfo` text.
pub fn mounts_under(mountinfo: &[u8], dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(field))))
        .filter(|point| point != dir && point.starts_with(dir))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mounts_under_a_directory_are_read_from_mountinfo_unescaped() {
        let table = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
            30 1 0:40 / /var/lib/shg/services rw - ext4 /dev/vda rw\n\
            31 30 0:41 / /var/lib/shg/services/web/releases/ab/rootfs ro - overlay overlay ro,lowerdir=/x\n\
            32 30 7:0 / /var/lib/shg/services/my\\040cam/data rw - ext4 /dev/loop0 rw\n\
            33 1 0:42 / /var/lib/shg/services-old rw - tmpfs tmpfs rw\n";
        let under = mounts_under(table, Path::new("/var/lib/shg/services"));
        assert_eq!(
            under,
            [
                PathBuf::from("/var/lib/shg/services/web/releases/ab/rootfs"),
                PathBuf::from("/var/lib/shg/services/my cam/data"),
            ]
        );
    }

    #[test]
    fn unescaping_leaves_a_lone_backslash_alone() {
        assert_eq!(unescape(b"a\\134b\\0c\\011"), b"a\\b\\0c\t");
    }
}
