//! Container operations on youki's libcontainer.
//!
//! `create` and `exec` fork, so the agent runs them in a short-lived single-threaded helper
//! process (`shg-runtime …`), never inside its own multi-threaded process: a fork there could
//! inherit a lock held by another thread. Operations that do not fork (state, kill, delete)
//! run in the agent directly.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::init::{EXIT_FD, LOG_FDS, STATUS_FD};
use crate::logfile::segment_paths;
use crate::RuntimeError;

/// libcontainer's own executor (it execs `process.args`), after loading the seccomp filter:
/// the init's first instruction already runs under it, as with a filter in the bundle. The
/// init loads the filter itself when none is in force (`runc run` of the bundle), so the
/// bundle is filtered under any runtime.
#[derive(Clone)]
struct FilteredExecutor;

impl Executor for FilteredExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        crate::seccomp::load()
            .map_err(|e| ExecutorError::Other(format!("cannot load the seccomp filter: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

/// Paths the runtime keeps for one service.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    /// libcontainer's state root (shared by all services).
    pub state_root: PathBuf,
    /// The service's OCI bundle directory (holds config.json).
    pub bundle: PathBuf,
    /// Directory holding the service's two log segments.
    pub log_dir: PathBuf,
    /// File the init writes the exit status into.
    pub status_file: PathBuf,
    /// The FIFO whose read end the agent holds (`init::exit_notice`): its write end becomes
    /// the init's `EXIT_FD`. Without one (or with no reader left), the agent learns of the end
    /// from the init's pidfd alone.
    pub exit_fifo: Option<PathBuf>,
}

fn devnull() -> Result<OwnedFd, RuntimeError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| RuntimeError::io(Path::new("/dev/null"), e))?;
    Ok(f.into())
}

fn to_err(name: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Container {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Places each file at its descriptor number (without close-on-exec), for the container's
/// init. The files are first copied above every target so no placement clobbers another.
fn place_fds(files: &[(&File, i32)]) -> Result<(), RuntimeError> {
    let err = || RuntimeError::io(Path::new("dup2"), std::io::Error::last_os_error());
    let mut high = Vec::new();
    for (file, _) in files {
        // SAFETY: duplicates a descriptor we own into a fresh close-on-exec one above 100.
        let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        if fd < 0 {
            return Err(err());
        }
        high.push(fd);
    }
    for (&fd, (_, target)) in high.iter().zip(files) {
        // SAFETY: this single-threaded helper reserves the target numbers for the init; dup2
        // onto another number clears close-on-exec, so the init inherits the copy.
        if unsafe { libc::dup2(fd, *target) } < 0 {
            return Err(err());
        }
        // SAFETY: closes the temporary copy made above, owned by nobody else.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Creates and starts the container of service `name`; returns the PID of its init.
///
/// Must run in a single-threaded process (the runtime helper).
/// With `attach`, the service joins the gateway bridge (see [`crate::net::setup`]).
pub fn create_and_start(
    name: &str,
    paths: &ContainerPaths,
    attach: Option<&crate::net::Attach>,
) -> Result<i32, RuntimeError> {
    std::fs::create_dir_all(&paths.log_dir).map_err(|e| RuntimeError::io(&paths.log_dir, e))?;
    let logs: Vec<File> = segment_paths(&paths.log_dir)
        .iter()
        .map(|p| {
            // Readable too: the init tells which segment it wrote last by their first lines.
            OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(p)
                .map_err(|e| RuntimeError::io(p, e))
        })
        .collect::<Result<_, _>>()?;
    // The last run's status is overwritten in place with `{}` (no status yet), not truncated
    // to nothing: on ext4 a truncation to zero makes the next close flush the file to disk
    // and waits for the flush the last run's end started (about 0.25 ms of every start here).
    let status = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&paths.status_file)
        .and_then(|f| {
            f.write_all_at(b"{}", 0)?;
            f.set_len(2)?;
            Ok(f)
        })
        .map_err(|e| RuntimeError::io(&paths.status_file, e))?;
    // Nonblocking, so a FIFO whose reader is gone fails (ENXIO) instead of waiting for one.
    let exit = paths.exit_fifo.as_ref().and_then(|fifo| {
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(fifo)
            .ok()
    });
    let mut fds = vec![
        (&logs[0], LOG_FDS[0]),
        (&logs[1], LOG_FDS[1]),
        (&status, STATUS_FD),
    ];
    fds.extend(exit.as_ref().map(|f| (f, EXIT_FD)));
    place_fds(&fds)?;

    // A container left over from an earlier run of the same service would block the id.
    remove_stale(name, &paths.state_root)?;
    // The signals the init forwards, blocked from here on: the runtime's processes inherit
    // the mask, and the container's PID 1 keeps it across its exec of the init, which finds
    // any that came early pending (see `init::FORWARDED`). This helper ends after the create.
    let forwarded: SigSet = crate::init::FORWARDED.into_iter().collect();
    forwarded
        .thread_block()
        .map_err(|e| to_err(name, format!("cannot block the forwarded signals: {e}")))?;

    let mut container = ContainerBuilder::new(name.to_string(), SyscallType::default())
        .with_root_path(&paths.state_root)
        .map_err(|e| to_err(name, e))?
        .with_preserved_fds(fds.len() as i32)
        .with_executor(FilteredExecutor)
        .with_stdin(devnull()?)
        .with_stdout(devnull()?)
        .with_stderr(devnull()?)
        .as_init(&paths.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| to_err(name, e))?;
    let mut started = || {
        let pid = container
            .pid()
            .ok_or_else(|| to_err(name, "container has no pid"))?;
        // A fresh network namespace has its loopback down; services expect 127.0.0.1 to
        // work. This helper is about to exit, so it may move itself into that namespace.
        crate::net::setup(pid.as_raw(), attach)
            .map_err(|e| to_err(name, format!("cannot set up its network: {e}")))?;
        container.start().map_err(|e| to_err(name, e))
    };
    if let Err(e) = started() {
        // Never leave a created-but-not-started container (and its cgroup) behind.
        let _ = container.delete(true);
        return Err(e);
    }
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| to_err(name, "container has no pid"))
}

/// Runs `args` inside the running service `name` as `uid:gid`, with this process's stdio;
/// returns the command's exit code (128 + signal when a signal ended it).
pub fn exec(
    name: &str,
    state_root: &Path,
    args: Vec<String>,
    uid: u32,
    gid: u32,
) -> Result<i32, RuntimeError> {
    // Whoever started this helper ends the command by ending the helper (SIGTERM): the
    // command and its process group go with it, so nothing is left running in the container.
    let handler = SigHandler::Handler(note_stop);
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        let _ = unsafe {
            sigaction(
                sig,
                &SigAction::new(handler, SaFlags::empty(), SigSet::empty()),
            )
        };
    }
    let pid = ContainerBuilder::new(name.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|e| to_err(name, e))?
        .with_executor(FilteredExecutor)
        .as_tenant()
        // The command runs through the init binary, which execs it; the executor has loaded
        // the seccomp filter before.
        .with_container_args(
            [
                crate::spec::INIT_PATH.to_string(),
                "enter".into(),
                "--".into(),
            ]
            .into_iter()
            .chain(args)
            .collect(),
        )
        .with_user(Some(uid))
        .with_group(Some(gid))
        .with_detach(false)
        .build()
        .map_err(|e| to_err(name, e))?;
    loop {
        if STOP_REQUESTED.load(Ordering::SeqCst) {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
        }
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(to_err(name, e)),
        }
    }
}

static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_stop(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// The libcontainer state of a service's container, if one exists.
pub fn load(name: &str, state_root: &Path) -> Option<Container> {
    let dir = state_root.join(name);
    if !dir.join("state.json").exists() {
        return None;
    }
    Container::load(dir).ok()
}

/// Whether the service's container exists and its init still runs.
pub fn is_running(name: &str, state_root: &Path) -> bool {
    load(name, state_root).is_some_and(|c| c.status() == ContainerStatus::Running)
}

/// Deletes the container of `name` (killing what is left) and its cgroup. Never forks.
pub fn remove_stale(name: &str, state_root: &Path) -> Result<(), RuntimeError> {
    let dir = state_root.join(name);
    if !dir.exists() {
        return Ok(());
    }
    match Container::load(dir.clone()) {
        Ok(mut c) => c.delete(true).map_err(|e| to_err(name, e))?,
        // State libcontainer cannot read is useless; drop it so the id can be reused.
        Err(_) => std::fs::remove_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?,
    }
    Ok(())
}

/// Puts libcontainer's state root (`STATE/containers`) on a small tmpfs of its own, as runc's
/// `/run/runc` is on most hosts: what it holds describes running processes, which no reboot
/// keeps, and libcontainer writes it at every start (a directory, `state.json` three times,
/// `youki_config.json`, a socket) and removes it at every delete. On a disk (a gateway's
/// flash) that is a write to the device per start and about 0.7 ms of each start here (ext4
/// flushes a file truncated and rewritten as it is closed).
///
/// Nothing is mounted where a mount is already (an earlier agent's, whose services still run)
/// or where the directory holds state (an older agent's, on the disk, with containers still to
/// adopt). Call it before the runtime helper starts, which keeps a mount table of its own
/// (`crate::mountns`).
pub fn mount_state_root(root: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(root).map_err(|e| RuntimeError::io(root, e))?;
    if crate::volume::is_mounted(root)? || holds_anything(root)? {
        return Ok(());
    }
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=8m"),
    )
    .map_err(|e| RuntimeError::Volume {
        path: root.to_path_buf(),
        reason: format!("cannot mount a tmpfs for the containers' state: {e}"),
    })
}

/// Unmounts the state root's tmpfs once no container is left in it (an agent stopping with
/// no service running); with containers left, it stays for the next agent to adopt them.
pub fn release_state_root(root: &Path) -> Result<(), RuntimeError> {
    if !crate::volume::is_mounted(root)? || holds_anything(root)? {
        return Ok(());
    }
    crate::volume::unmount(root)
}

/// Whether the directory `dir` has any entry.
fn holds_anything(dir: &Path) -> Result<bool, RuntimeError> {
    let mut entries = std::fs::read_dir(dir).map_err(|e| RuntimeError::io(dir, e))?;
    Ok(entries.next().is_some())
}
