//! Waiting for a process that may not be our child, through a pidfd; reaping the orphans the
//! agent inherits as the containers' subreaper.

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
        let owned = open_raw(pid)?;
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

    /// Reaps this process if it has exited and is our child. Through the pidfd, so never a
    /// later process that got the same PID.
    pub fn reap(&self) {
        exit_reported(&self.0.get_ref().0, libc::WNOHANG);
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

/// The read end of a container init's exit notice (`runtime::init::exit_notice`): ready once
/// no write end is left, which is as soon as the init has written the exit status.
pub struct Notice(AsyncFd<Fd>);

impl Notice {
    pub fn new(fd: OwnedFd) -> std::io::Result<Notice> {
        // SAFETY: as in `PidFd::open`: `Fd` owns the descriptor until the AsyncFd is dropped.
        let registered =
            unsafe { AsyncFd::register_with_interest(Fd(fd), tokio::io::Interest::READABLE) };
        Ok(Notice(registered.map_err(|e| e.into_parts().1)?))
    }

    /// Resolves once every write end is closed (EOF). The FIFO never holds data: the init
    /// only closes its end.
    pub async fn ended(&self) {
        let _ = self.0.readable().await;
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

/// Reaps the agent's zombie children that live in a PID namespace below the agent's own and
/// are not its init: commands left inside a container when the helper that ran them died
/// (the agent, their subreaper, inherits them). The kernel cannot finish a container init's
/// exit while a zombie of its namespace stays unreaped, so one such orphan would leave its
/// service `stopping` for ever. Children the agent spawned in its own namespace (the runtime
/// helpers) are left to whoever waits for them. `depth`: how many PID namespaces the agent
/// is seen in ([`own_depth`]). Returns how many were reaped.
pub fn reap_orphans(depth: usize) -> usize {
    let mut reaped = 0;
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // The pidfd comes first and names this process whatever happens to the PID later;
            // the checks and the wait below then all concern the same one.
            let Ok(fd) = open_raw(pid) else {
                continue;
            };
            // Most children are running services: one system call tells, where reading their
            // status took a dozen, at every SIGCHLD.
            if !exited(&fd) {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            // Container inits (PID 1 of their namespace) are reaped by the code that handles
            // their exit: until then the zombie keeps their PID from being reused.
            let orphan = ns_pids(&status).is_some_and(|p| p.len() > depth && p.last() != Some(&1));
            if !orphan {
                continue;
            }
            if exit_reported(&fd, libc::WNOHANG) {
                reaped += 1;
            }
        }
    }
    reaped
}

/// Reaps orphans (see [`reap_orphans`]) at every SIGCHLD, and every 10 s in case one is
/// missed.
pub fn spawn_reaper() {
    let Some(depth) = own_depth() else {
        tracing::warn!("no NSpid in /proc/self/status: orphans in containers are not reaped");
        return;
    };
    tokio::spawn(async move {
        let mut sigchld =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        _ = tick.tick() => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let n = reap_orphans(depth);
            if n > 0 {
                tracing::debug!("reaped {n} orphaned process(es) of the containers");
            }
        }
    });
}

/// Whether the child behind `fd` has exited (is a zombie), leaving it unreaped.
fn exited(fd: &OwnedFd) -> bool {
    exit_reported(fd, libc::WNOHANG | libc::WNOWAIT)
}

/// `waitid` for the exit of the child behind `fd`, with `flags` beside `WEXITED` (`WNOWAIT`
/// leaves it unreaped); whether it reported one.
fn exit_reported(fd: &OwnedFd, flags: libc::c_int) -> bool {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a pidfd we own, writing into a siginfo_t we own.
    let done = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            fd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | flags,
        )
    };
    // SAFETY: waitid filled `info`, or left it zeroed for a child still running (WNOHANG).
    done == 0 && unsafe { info.si_pid() } != 0
}

fn open_raw(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// How many PID namespaces this process is seen in.
fn own_depth() -> Option<usize> {
    Some(ns_pids(&std::fs::read_to_string("/proc/self/status").ok()?)?.len())
}

/// A process's PIDs from a /proc status text, from the outermost namespace in.
fn ns_pids(status: &str) -> Option<Vec<i32>> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    Some(
        line["NSpid:".len()..]
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pids_of_every_namespace() {
        let status = "Name:\tsleep\nState:\tZ (zombie)\nNSpid:\t4242\t17\n";
        assert_eq!(ns_pids(status), Some(vec![4242, 17]));
        assert_eq!(ns_pids("Name:\tx\n"), None);
    }

    #[test]
    fn a_child_has_exited_only_once_it_ends_and_the_question_leaves_it_unreaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = open_raw(child.id() as i32).unwrap();
        assert!(!exited(&fd), "sleep is still running");
        child.kill().unwrap();
        let start = std::time::Instant::now();
        while !exited(&fd) {
            assert!(
                start.elapsed().as_secs() < 10,
                "the killed child never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(exited(&fd), "still a zombie: asking did not reap it");
        assert!(child.try_wait().unwrap().is_some());
    }

    #[test]
    fn the_agents_own_children_are_not_orphans() {
        // A zombie child in the test's own namespace: not below it, so never reaped here.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        while !std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .contains("State:\tZ")
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(reap_orphans(own_depth().unwrap()), 0);
        assert!(
            child.try_wait().unwrap().is_some(),
            "its own waiter still reaps it"
        );
    }
}
