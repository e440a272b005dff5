//! Waiting for a process that may not be our child, through a pidfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

struct Fd(OwnedFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A handle that becomes ready when the process exits.
pub struct PidFd(AsyncFd<Fd>);

impl PidFd {
    /// Opens a pidfd for `pid`; fails if no such process exists.
    pub fn open(pid: i32) -> std::io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: `Fd` owns the descriptor and closes it only when the AsyncFd is dropped,
        // which deregisters it first.
        let registered =
            unsafe { AsyncFd::register_with_interest(Fd(owned), tokio::io::Interest::READABLE) };
        Ok(PidFd(registered.map_err(|e| e.into_parts().1)?))
    }

    /// Resolves when the process has exited (a zombie counts as exited).
    pub async fn exited(&self) {
        // A pidfd turns readable once, at exit, and stays so.
        let _ = self.0.readable().await;
    }

    /// Sends `signal` to exactly this process, never to a later one with the same PID.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        // SAFETY: pidfd_send_signal with a descriptor we own, a signal number and no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// Reaps `pid` if it is our child (the agent is a subreaper, so container inits end up as
/// its children); harmless when it is not.
pub fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}
