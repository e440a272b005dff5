//! The agent's seams to the host, each behind a small trait: the container runtime and the
//! processes it starts ([`Containers`]), the mounts of roots and data volumes ([`Mounts`]),
//! the cgroups ([`usage::Cgroups`], v1 or v2 detected once) and the command-line tools
//! ([`command::Runner`]). [`Host::system`] is the real host; the agent's unit tests run
//! install, start, exit handling and recovery on fakes (`host::fake`), without root.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::sys::signal::Signal;
use runtime::forkserver;
use runtime::RuntimeError;

use crate::pidfd::{self, PidFd};
use crate::{AgentError, Config, Layout};

/// A future the traits return (they are used as trait objects).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the runtime helper needs to create and start a service's container.
#[derive(Debug, Clone)]
pub(crate) struct Create {
    pub name: String,
    /// The OCI bundle, written just before.
    pub bundle: PathBuf,
    pub log_dir: PathBuf,
    /// Where the init writes the exit status.
    pub status_file: PathBuf,
    /// The FIFO the agent reads the init's exit notice from (`runtime::init::exit_notice`).
    pub exit_fifo: Option<PathBuf>,
    /// The service's place on the bridge, when the gateway gives services a network.
    pub attach: Option<runtime::net::Attach>,
}

/// Why a container was not created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    /// The runtime helper itself could not be run.
    #[error("cannot run the runtime helper: {0}")]
    Helper(#[source] io::Error),
    /// The helper ran and said why the container did not start (its stderr).
    #[error("{0}")]
    Refused(String),
}

/// The container runtime and the processes it starts.
pub(crate) trait Containers: Send + Sync {
    /// Creates and starts the container through the runtime helper (the agent never forks
    /// from its own process); returns its init's PID.
    fn create<'a>(&'a self, req: &'a Create) -> BoxFuture<'a, Result<i32, CreateError>>;

    /// The init PID libcontainer recorded for the container of `name`, if it has one.
    fn pid_of(&self, name: &str) -> Option<i32>;

    /// Deletes the container of `name` (killing what is left of it) and its cgroup; nothing
    /// to do when there is none. Never forks.
    fn delete(&self, name: &str) -> Result<(), RuntimeError>;

    /// Whether `pid` is alive and not a zombie.
    fn is_alive(&self, pid: i32) -> bool;

    /// The start time of `pid`, which tells it from a later process that reused the PID.
    fn start_time(&self, pid: i32) -> Option<u64>;

    /// A handle on the process `pid` now is; fails (ESRCH) when there is none.
    fn open(&self, pid: i32) -> io::Result<Box<dyn Process>>;

    /// Reaps `pid` if it is the agent's child; harmless when it is not.
    fn reap(&self, pid: i32);

    /// A handle on `pid` only if it is still the process that started at `start`; the check
    /// comes after the open, so the handle cannot name a later process that reused the PID.
    fn open_verified(&self, pid: i32, start: Option<u64>) -> Option<Box<dyn Process>> {
        let process = self.open(pid).ok()?;
        let same = start.is_some() && self.start_time(pid) == start;
        same.then_some(process)
    }
}

/// One process, held so that signals never reach a later one with the same PID.
pub(crate) trait Process: Send + Sync {
    fn signal(&self, signal: Signal);

    /// Resolves when the process has exited (a zombie counts as exited).
    fn exited(&self) -> BoxFuture<'_, ()>;

    /// Reaps exactly this process if it has exited and is the agent's child; harmless when it
    /// is running, reaped already, or another's child.
    fn reap(&self);
}

/// The mounts of release roots and data volumes.
pub(crate) trait Mounts: Send + Sync {
    /// A read-only overlay of `lowers` (base first) on the empty directory `target`.
    fn mount_overlay(&self, lowers: &[PathBuf], target: &Path) -> Result<(), RuntimeError>;

    /// The same with `upper` and `work` taking the runtime's mount points: a release's root.
    fn mount_root(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), RuntimeError>;

    /// Whether something is mounted on `target`.
    fn is_mounted(&self, target: &Path) -> Result<bool, RuntimeError>;

    /// Unmounts a root (detached lazily while busy); nothing to do when nothing is mounted.
    fn unmount_root(&self, target: &Path) -> Result<(), RuntimeError>;

    /// Makes a service's data volume: `image`, `size` bytes holding a filesystem whose root
    /// is `uid:gid`'s, and `data`, its mount point, owned by them too.
    fn create_volume(
        &self,
        image: &Path,
        data: &Path,
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<(), AgentError>;

    /// Mounts the volume `image` on `target`, unless something is mounted there already.
    fn mount_volume(&self, image: &Path, target: &Path) -> Result<(), RuntimeError>;

    /// Unmounts whatever is mounted on `target`.
    fn unmount_volume(&self, target: &Path) -> Result<(), RuntimeError>;

    /// Every mount point at or below `dir`, deepest first.
    fn mounts_below(&self, dir: &Path) -> Result<Vec<PathBuf>, RuntimeError>;

    /// Puts the containers' state directory on a tmpfs of its own, unless it is a mount
    /// already or holds state (`runtime::container::mount_state_root`).
    fn mount_state_root(&self, root: &Path) -> Result<(), RuntimeError>;

    /// Unmounts that tmpfs if no container is left in it.
    fn release_state_root(&self, root: &Path) -> Result<(), RuntimeError>;
}

/// Everything the agent asks of the host.
pub(crate) struct Host {
    pub containers: Arc<dyn Containers>,
    pub mounts: Arc<dyn Mounts>,
    pub cgroups: Box<dyn usage::Cgroups>,
    pub commands: Arc<dyn command::Runner>,
}

impl Host {
    /// This host, as `cfg` describes it: its cgroup layout is detected here, once.
    pub(crate) fn system(cfg: &Config) -> Host {
        let commands: Arc<dyn command::Runner> = Arc::new(command::System);
        Host {
            containers: Arc::new(SystemContainers {
                runtime_binary: cfg.runtime_binary.clone(),
                helper: ForkServer::default(),
                state_root: Layout::new(&cfg.state_dir).containers(),
                services: Layout::new(&cfg.state_dir).services(),
                proc_root: cfg.proc_root.clone(),
            }),
            mounts: Arc::new(SystemMounts {
                commands: commands.clone(),
            }),
            cgroups: usage::detect(&cfg.cgroup_root),
            commands,
        }
    }
}

/// libcontainer through the runtime helper, pidfds and /proc.
struct SystemContainers {
    runtime_binary: PathBuf,
    /// The runtime helper serving creates (`shg-runtime serve`), started at the first.
    helper: ForkServer,
    /// libcontainer's state root, `STATE/containers`.
    state_root: PathBuf,
    /// `STATE/services`, whose mounts the runtime helper keeps out of its own mount table
    /// (`runtime::mountns`).
    services: PathBuf,
    proc_root: PathBuf,
}

impl Containers for SystemContainers {
    fn create<'a>(&'a self, req: &'a Create) -> BoxFuture<'a, Result<i32, CreateError>> {
        Box::pin(async move {
            let attach = req.attach.as_ref().map(|a| a.to_arg());
            let mut words: Vec<&[u8]> = vec![
                b"create",
                req.name.as_bytes(),
                b"--state-root",
                self.state_root.as_os_str().as_bytes(),
                b"--bundle",
                req.bundle.as_os_str().as_bytes(),
                b"--log-dir",
                req.log_dir.as_os_str().as_bytes(),
                b"--status-file",
                req.status_file.as_os_str().as_bytes(),
            ];
            if let Some(fifo) = &req.exit_fifo {
                words.extend([b"--exit-fifo".as_slice(), fifo.as_os_str().as_bytes()]);
            }
            if let Some(attach) = &attach {
                words.extend([b"--net".as_slice(), attach.as_bytes()]);
            }
            let request = forkserver::request(&words).ok_or_else(|| {
                CreateError::Refused(format!(
                    "a path of `{}` holds a newline or a NUL byte, which the runtime helper \
                     cannot be given; move the state directory to a plain path",
                    req.name
                ))
            })?;
            let answer = self
                .helper
                .ask(&self.runtime_binary, &self.services, &request)
                .await?;
            match forkserver::answer(&answer) {
                Ok(pid) => pid.parse().map_err(|_| {
                    CreateError::Refused(format!(
                        "the runtime helper answered {pid:?} instead of a PID"
                    ))
                }),
                Err(reason) => Err(CreateError::Refused(reason.to_string())),
            }
        })
    }

    fn pid_of(&self, name: &str) -> Option<i32> {
        runtime::container::load(name, &self.state_root)
            .and_then(|c| c.pid())
            .map(|p| p.as_raw())
    }

    fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        runtime::container::remove_stale(name, &self.state_root)
    }

    fn is_alive(&self, pid: i32) -> bool {
        runtime::process::is_alive(&self.proc_root, pid)
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        runtime::process::start_time(&self.proc_root, pid)
    }

    fn open(&self, pid: i32) -> io::Result<Box<dyn Process>> {
        Ok(Box::new(PidFd::open(pid)?))
    }

    fn reap(&self, pid: i32) {
        pidfd::reap(pid);
    }
}

impl Process for PidFd {
    fn signal(&self, signal: Signal) {
        PidFd::signal(self, signal);
    }

    fn exited(&self) -> BoxFuture<'_, ()> {
        Box::pin(PidFd::exited(self))
    }

    fn reap(&self) {
        PidFd::reap(self);
    }
}

/// How long a create may take before the helper is given up (and killed): far longer than a
/// create takes on a loaded gateway, so that only a helper stuck for good meets it.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The runtime helper as a fork server (`runtime::forkserver`): one process, started at the
/// first create and again whenever it has ended, asked one request at a time.
#[derive(Default)]
struct ForkServer(tokio::sync::Mutex<Option<Served>>);

/// A running `shg-runtime serve`, and the pipes to it.
struct Served {
    /// Killed when dropped: a helper whose answer was given up must never answer the next.
    _process: tokio::process::Child,
    requests: tokio::process::ChildStdin,
    answers: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl ForkServer {
    /// Sends `request` and returns the answer line, starting the server first when none
    /// runs. A server that fails or does not answer in time is dropped (killed).
    ///
    /// The server is taken out of its slot while it works and put back only once it has
    /// answered: were this future dropped halfway (its caller gone), the server goes with it
    /// rather than leave its answer to be read as the next request's.
    async fn ask(
        &self,
        binary: &Path,
        services: &Path,
        request: &[u8],
    ) -> Result<String, CreateError> {
        use tokio::io::AsyncWriteExt;
        let mut slot = self.0.lock().await;
        let mut served = slot.take();
        let mut sent = match served.as_mut() {
            Some(served) => served.requests.write_all(request).await,
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if sent.is_err() {
            // None runs, or it ended since the last request: nothing was sent, start one.
            let fresh =
                served.insert(Served::start(binary, services).map_err(CreateError::Helper)?);
            sent = fresh.requests.write_all(request).await;
        }
        let mut served = served.expect("started above");
        sent.map_err(CreateError::Helper)?;
        let answer = match tokio::time::timeout(CREATE_TIMEOUT, served.answer()).await {
            Ok(answer) => answer.map_err(CreateError::Helper)?,
            Err(_) => {
                return Err(CreateError::Helper(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the runtime helper gave no answer within {} s and was stopped",
                        CREATE_TIMEOUT.as_secs()
                    ),
                )))
            }
        };
        *slot = Some(served);
        Ok(answer)
    }
}

impl Served {
    fn start(binary: &Path, services: &Path) -> io::Result<Served> {
        let mut process = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--services")
            .arg(services)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(requests), Some(answers)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(io::Error::other("the runtime helper has no pipes"));
        };
        Ok(Served {
            _process: process,
            requests,
            answers: tokio::io::BufReader::new(answers),
        })
    }

    async fn answer(&mut self) -> io::Result<String> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        if self.answers.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the runtime helper ended before it answered",
            ));
        }
        Ok(line.trim_end_matches('\n').to_string())
    }
}

/// overlayfs, loop-mounted ext4 images and /proc/self/mountinfo.
struct SystemMounts {
    commands: Arc<dyn command::Runner>,
}

impl Mounts for SystemMounts {
    fn mount_overlay(&self, lowers: &[PathBuf], target: &Path) -> Result<(), RuntimeError> {
        runtime::overlay::mount(lowers, target)
    }

    fn mount_root(
        &self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> Result<(), RuntimeError> {
        runtime::overlay::mount_with_upper(lowers, upper, work, target)
    }

    fn is_mounted(&self, target: &Path) -> Result<bool, RuntimeError> {
        runtime::overlay::is_mounted(target)
    }

    fn unmount_root(&self, target: &Path) -> Result<(), RuntimeError> {
        runtime::overlay::unmount(target)
    }

    fn create_volume(
        &self,
        image: &Path,
        data: &Path,
        size: u64,
        uid: u32,
        gid: u32,
    ) -> Result<(), AgentError> {
        nix::unistd::chown(data, Some(uid.into()), Some(gid.into()))
            .map_err(|e| AgentError::io(data, e.into()))?;
        runtime::volume::create_with(&*self.commands, image, size, uid, gid)?;
        Ok(())
    }

    fn mount_volume(&self, image: &Path, target: &Path) -> Result<(), RuntimeError> {
        runtime::volume::mount_with(&*self.commands, image, target)
    }

    fn unmount_volume(&self, target: &Path) -> Result<(), RuntimeError> {
        runtime::volume::unmount(target)
    }

    fn mounts_below(&self, dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
        runtime::volume::mounts_below(dir)
    }

    fn mount_state_root(&self, root: &Path) -> Result<(), RuntimeError> {
        runtime::container::mount_state_root(root)
    }

    fn release_state_root(&self, root: &Path) -> Result<(), RuntimeError> {
        runtime::container::release_state_root(root)
    }
}

/// Runs blocking work (a few `ip`/`tc` commands, file deletions) from async code: on the
/// agent's multi-threaded runtime, without holding up the other tasks of this thread; inline
/// on a single-threaded one (the unit tests, whose clock is paused).
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs blocking work on the runtime's blocking pool and waits for it, so that this thread
/// goes on with its other tasks meanwhile (a task woken just now would otherwise wait for the
/// work to end); inline on a single-threaded runtime (the unit tests, whose clock is paused).
pub(crate) async fn off_thread<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        _ => f(),
    }
}

#[cfg(test)]
pub(crate) mod fake;
