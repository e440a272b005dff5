//! The init that runs as PID 1 of every service container (`shg-init init`), as the agent
//! sees it: the program itself, and what it leaves behind.
//!
//! The init starts the service's command as its only child, forwards signals to it, reaps
//! every zombie in the container, copies the child's stdout and stderr into the size-capped
//! log (`crate::logfile`), and records the exit status in a file the agent reads
//! ([`ExitStatus`]), so logs and exit codes survive an agent that is restarted or killed while
//! the service runs. `shg-init enter` is the first step of every process `shg exec` starts.
//!
//! The program is `init/main.rs`, built without the standard library or a C library by
//! `build.rs` and carried here as [`BINARY`]: the agent writes it into its state directory
//! ([`install`]), and every bundle binds that file at `/.shg/init`.
//!
//! The agent's runtime helper hands the init three open files, at fixed descriptors:
//! [`LOG_FDS`] (the two log segments) and [`STATUS_FD`], and a fourth when the agent waits on
//! one, [`EXIT_FD`] (the exit notice). No host directory is mounted into the
//! container, and the init makes itself non-dumpable so the service cannot reach these
//! descriptors through /proc/1/fd.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The init program: a static executable of some 30 KB.
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shg-init"));

/// Descriptors of the two log segments inside the container.
pub const LOG_FDS: [i32; 2] = [3, 4];
/// Descriptor of the exit-status file inside the container.
pub const STATUS_FD: i32 = 5;
/// Descriptor of the exit notice inside the container, when the runtime passes one: the write
/// end of a FIFO whose read end the agent holds ([`exit_notice`]). The init closes it right
/// after it has written the status, so the agent's read end reports the end (EOF) as soon as
/// the status is there to read; the init's pidfd turns readable only once the kernel has torn
/// the container down (its mounts and namespaces), 0.3–1.6 ms later on the test machine.
pub const EXIT_FD: i32 = 6;
/// The signals the init passes on to the command (`FORWARDED` in `init/main.rs`). It blocks
/// them before anything else and reads them from a signalfd; the runtime creates the
/// container with them blocked already (`container::create_and_start`), so that one sent
/// before the init runs, while the container's PID 1 is still the runtime's, waits for it
/// instead of being dropped (PID 1 of a namespace ignores a signal it has no handler for).
pub const FORWARDED: [nix::sys::signal::Signal; 7] = {
    use nix::sys::signal::Signal::*;
    [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH]
};

/// What the init records when the service's command ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code as a shell reports it: the code, or 128 + the signal number.
    pub code: i32,
    /// The signal that ended the command, if one did.
    pub signal: Option<i32>,
    pub finished_ms: u64,
    /// Why the command could not be started at all.
    pub error: Option<String>,
}

/// Reads the status an init recorded, if the command has ended.
pub fn read_status(path: &std::path::Path) -> Option<ExitStatus> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes [`BINARY`] to `path` (mode 0755), unless the file there holds it already: written
/// beside and renamed over, so a container starting meanwhile binds the old file or the new,
/// never half of one. Running containers keep the file they bound.
pub fn install(path: &Path) -> io::Result<()> {
    if std::fs::read(path).is_ok_and(|held| held == BINARY) {
        return Ok(());
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = Path::new(&partial);
    std::fs::write(partial, BINARY)?;
    std::fs::set_permissions(partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(partial, path)
}

/// Makes `path` a FIFO (whatever was there before goes) and opens its read end, without
/// blocking, for the agent to wait on: it turns readable (EOF) once every write end is closed,
/// which the init's is as soon as the status is written ([`EXIT_FD`]), or at its exit. A
/// fresh FIFO at every start: no reader ever sees an earlier run's end.
pub fn exit_notice(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::stat::Mode;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;

    /// Whether `fd` polls readable right now.
    fn ready(fd: &std::os::fd::OwnedFd) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
    }

    fn writer(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    }

    /// The notice reports nothing while no write end was ever opened (a helper that could
    /// not pass it) or while one is open (the init running), and the end once the last write
    /// end is closed; each start makes a fresh one, whatever the path held.
    #[test]
    fn the_exit_notice_reports_the_close_of_the_last_write_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        std::fs::write(&path, "a file left over").unwrap();
        let notice = super::exit_notice(&path).unwrap();
        assert!(!ready(&notice), "no writer yet");
        let init = writer(&path).unwrap();
        let helper = writer(&path).unwrap();
        drop(helper);
        assert!(!ready(&notice), "the init still holds its end");
        drop(init);
        assert!(ready(&notice), "the init closed its end");

        // The next start's notice knows nothing of this end; without a reader, a write end
        // cannot be opened at all (the helper then passes none).
        drop(notice);
        assert_eq!(writer(&path).unwrap_err().raw_os_error(), Some(libc::ENXIO));
        let next = super::exit_notice(&path).unwrap();
        assert!(!ready(&next));
    }
    /// The runtime blocks exactly the signals the init forwards: the init's list, read from
    /// its source, is this one.
    #[test]
    fn the_runtime_blocks_the_signals_the_init_forwards() {
        let source = include_str!("../init/main.rs");
        let start = source
            .find("const FORWARDED")
            .expect("the init's FORWARDED");
        let list = &source[start..start + source[start..].find("];").expect("its end")];
        let theirs: Vec<&str> = list
            .split("sys::")
            .skip(1)
            .map(|s| s.split(',').next().unwrap().trim())
            .collect();
        let ours: Vec<String> = super::FORWARDED.iter().map(|s| s.to_string()).collect();
        assert_eq!(theirs, ours);
    }
}
