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
        .and_then(|()| {
            crate::volume::mounts_below(&services).map_err(|e| io::Error::other(e.to_string()))
        });
        let under = match private {
            Ok(under) => under,
            Err(e) => {
                if let Err(back) = enter_namespace(host.as_fd(), &cwd) {
                    // Stuck in a copy that will never see a new service's root: no server.
                    eprintln!("shg-runtime serve: {e}, and cannot go back to the host's mount table: {back}");
                    std::process::exit(1)
                }
                return Err(e);
            }
        };
        // Deepest first; a mount already gone with its parent is no error.
        for point in under.iter().filter(|p| **p != services) {
            match nix::mount::umount2(point, MntFlags::MNT_DETACH) {
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
    let path = c_path(dir)?;
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
    let path = c_path(target)?;
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

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}
