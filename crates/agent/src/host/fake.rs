//! Fakes of the host for the agent's unit tests: containers whose processes run until a test
//! ends them (or a signal does), mounts that copy instead of mounting, and an agent opened on
//! them in a temporary state directory. Nothing needs root; the clock may be paused.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::Signal;
use runtime::RuntimeError;
use tokio::sync::watch;

use super::{BoxFuture, Containers, Create, CreateError, Host, Mounts, Process};
use crate::{Agent, AgentError, Config};

/// One fake process: a service's init.
struct Proc {
    start: u64,
    alive: bool,
    status_file: PathBuf,
    ignores_term: bool,
    done: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    next_pid: i32,
    procs: HashMap<i32, Proc>,
    /// Containers libcontainer would have state for: name → init PID.
    containers: HashMap<String, i32>,
    created: Vec<String>,
    deleted: Vec<String>,
    signals: Vec<(i32, Signal)>,
    refuse_next: Option<String>,
    ignore_term: bool,
}

/// Containers whose inits run until [`FakeContainers::exit`], SIGKILL, or SIGTERM (unless
/// told to ignore it).
#[derive(Default)]
pub(crate) struct FakeContainers {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends `pid` as the init would: its status file, then the exit itself.
fn finish(state: &mut State, pid: i32, code: i32, signal: Option<i32>) {
    let Some(p) = state.procs.get_mut(&pid).filter(|p| p.alive) else {
        return;
    };
    let status = runtime::init::ExitStatus {
        code,
        signal,
        finished_ms: state::now_ms(),
        error: None,
    };
    std::fs::write(&p.status_file, serde_json::to_vec(&status).unwrap()).unwrap();
    p.alive = false;
    let _ = p.done.send(true);
}

impl FakeContainers {
    /// The init of `name`'s container now, if it has one.
    pub(crate) fn pid(&self, name: &str) -> Option<i32> {
        lock(&self.state).containers.get(name).copied()
    }

    /// The start time the fake gives `pid`.
    pub(crate) fn start_of(&self, pid: i32) -> Option<u64> {
        lock(&self.state).procs.get(&pid).map(|p| p.start)
    }

    /// The service's command ends with `code`.
    pub(crate) fn exit(&self, pid: i32, code: i32) {
        finish(&mut lock(&self.state), pid, code, None);
    }

    /// The service's command is ended by `signal` (the kernel's OOM killer sends 9).
    pub(crate) fn killed(&self, pid: i32, signal: i32) {
        finish(&mut lock(&self.state), pid, 128 + signal, Some(signal));
    }

    /// The next create fails, the helper saying `why`.
    pub(crate) fn refuse_next(&self, why: &str) {
        lock(&self.state).refuse_next = Some(why.to_string());
    }

    /// Inits started from now on ignore SIGTERM (only SIGKILL ends them).
    pub(crate) fn ignore_sigterm(&self) {
        lock(&self.state).ignore_term = true;
    }

    /// Services whose containers were created, in order.
    pub(crate) fn created(&self) -> Vec<String> {
        lock(&self.state).created.clone()
    }

    /// Services whose containers were deleted, in order.
    pub(crate) fn deleted(&self) -> Vec<String> {
        lock(&self.state).deleted.clone()
    }

    /// Signals sent, in order.
    pub(crate) fn signals(&self) -> Vec<(i32, Signal)> {
        lock(&self.state).signals.clone()
    }

    /// A container of `name` that a previous agent started, still running: its PID and start.
    pub(crate) fn left_running(&self, name: &str, status_file: &Path) -> (i32, u64) {
        let mut state = lock(&self.state);
        let pid = Self::spawn(&mut state, name, status_file);
        (pid, state.procs[&pid].start)
    }

    fn spawn(state: &mut State, name: &str, status_file: &Path) -> i32 {
        state.next_pid += 1;
        let pid = 1000 + state.next_pid;
        let (done, _) = watch::channel(false);
        state.procs.insert(
            pid,
            Proc {
                start: 7_000 + pid as u64,
                alive: true,
                status_file: status_file.to_path_buf(),
                ignores_term: state.ignore_term,
                done,
            },
        );
        state.containers.insert(name.to_string(), pid);
        pid
    }
}

impl Containers for FakeContainers {
    fn create<'a>(&'a self, req: &'a Create) -> BoxFuture<'a, Result<i32, CreateError>> {
        Box::pin(async move {
            let mut state = lock(&self.state);
            state.created.push(req.name.clone());
            if let Some(why) = state.refuse_next.take() {
                return Err(CreateError::Refused(why));
            }
            assert!(
                req.bundle.join("config.json").exists(),
                "the bundle is written before the container is created"
            );
            Ok(Self::spawn(&mut state, &req.name, &req.status_file))
        })
    }

    fn pid_of(&self, name: &str) -> Option<i32> {
        self.pid(name)
    }

    fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        let mut state = lock(&self.state);
        if let Some(pid) = state.containers.remove(name) {
            state.deleted.push(name.to_string());
            finish(&mut state, pid, 137, Some(9));
        }
        Ok(())
    }

    fn is_alive(&self, pid: i32) -> bool {
        lock(&self.state).procs.get(&pid).is_some_and(|p| p.alive)
    }

    fn start_time(&self, pid: i32) -> Option<u64> {
        let state = lock(&self.state);
        state.procs.get(&pid).filter(|p| p.alive).map(|p| p.start)
    }

    fn open(&self, pid: i32) -> io::Result<Box<dyn Process>> {
        let state = lock(&self.state);
        let p = state
            .procs
            .get(&pid)
            .filter(|p| p.alive)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        Ok(Box::new(FakeProcess {
            pid,
            state: self.state.clone(),
            done: p.done.subscribe(),
        }))
    }

    fn reap(&self, _pid: i32) {}
}

struct FakeProcess {
    pid: i32,
    state: Arc<Mutex<State>>,
    done: watch::Receiver<bool>,
}

impl Process for FakeProcess {
    fn signal(&self, signal: Signal) {
        let mut state = lock(&self.state);
        state.signals.push((self.pid, signal));
        let ignores = state.procs.get(&self.pid).is_some_and(|p| p.ignores_term);
        match signal {
            Signal::SIGKILL => finish(&mut state, self.pid, 137, Some(9)),
            Signal::SIGTERM if !ignores => finish(&mut state, self.pid, 143, Some(15)),
            _ => {}
        }
    }

    fn exited(&self) -> BoxFuture<'_, ()> {
        let mut done = self.done.clone();
        Box::pin(async move {
            let _ = done.wait_for(|d| *d).await;
        })
    }

    fn reap(&self) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Root,
    Volume,
}

/// Mounts that copy the layers into the target (so what a root holds can be checked) and
/// remember what is mounted where; `log` keeps every mount and unmount in order.
#[derive(Default)]
pub(crate) struct FakeMounts {
    mounted: Mutex<BTreeMap<PathBuf, Kind>>,
    log: Mutex<Vec<String>>,
}

impl FakeMounts {
    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    /// Every mount and unmount so far, in order: `mount root PATH`, `unmount volume PATH`…
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The same without the paths: `mount root`, `unmount volume`…
    pub(crate) fn verbs(&self) -> Vec<String> {
        let verb = |l: &String| l.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" ");
        self.log().iter().map(verb).collect()
    }

    /// What is mounted now, below `dir`.
    pub(crate) fn mounted_below(&self, dir: &Path) -> Vec<PathBuf> {
        self.mounts_below(dir).unwrap()
    }

    fn copy_layers(&self, lowers: &[PathBuf], target: &Path) -> Result<(), RuntimeError> {
        let mut mounted = self.mounted.lock().unwrap();
        if mounted.contains_key(target) {
            return Err(RuntimeError::Overlay {
                target: target.to_path_buf(),
                reason: "something is mounted there already; unmount it first".into(),
            });
        }
        for lower in lowers {
            copy_tree(lower, target).map_err(|e| RuntimeError::io(lower, e))?;
        }
        mounted.insert(target.to_path_buf(), Kind::Root);
        Ok(())
    }
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let _ = std::fs::remove_file(&dst);
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

impl Mounts for FakeMounts {
    fn mount_overlay(&self, lowers: &[PathBuf], target: &Path) -> Result<(), RuntimeError> {
        self.copy_layers(lowers, target)?;
        self.note(format!("mount overlay {}", target.display()));
        Ok(())
    }

    fn mount_root(
        &self,
        lowers: &[PathBuf],
        _upper: &Path,
        _work: &Path,
        target: &Path,
    ) -> Result<(), RuntimeError> {
        self.copy_layers(lowers, target)?;
        self.note(format!("mount root {}", target.display()));
        Ok(())
    }

    fn is_mounted(&self, target: &Path) -> Result<bool, RuntimeError> {
        Ok(self.mounted.lock().unwrap().contains_key(target))
    }

    fn unmount_root(&self, target: &Path) -> Result<(), RuntimeError> {
        if self.mounted.lock().unwrap().remove(target).is_some() {
            // What the mount showed goes with it; the mount point stays, empty.
            std::fs::remove_dir_all(target).map_err(|e| RuntimeError::io(target, e))?;
            std::fs::create_dir(target).map_err(|e| RuntimeError::io(target, e))?;
            self.note(format!("unmount root {}", target.display()));
        }
        Ok(())
    }

    fn create_volume(
        &self,
        image: &Path,
        data: &Path,
        _size: u64,
        _uid: u32,
        _gid: u32,
    ) -> Result<(), AgentError> {
        std::fs::File::create_new(image).map_err(|e| AgentError::io(image, e))?;
        std::fs::create_dir_all(data).map_err(|e| AgentError::io(data, e))?;
        self.note(format!("create volume {}", image.display()));
        Ok(())
    }

    fn mount_volume(&self, image: &Path, target: &Path) -> Result<(), RuntimeError> {
        let mut mounted = self.mounted.lock().unwrap();
        if mounted.contains_key(target) {
            return Ok(());
        }
        mounted.insert(target.to_path_buf(), Kind::Volume);
        drop(mounted);
        self.note(format!("mount volume {}", image.display()));
        Ok(())
    }

    fn unmount_volume(&self, target: &Path) -> Result<(), RuntimeError> {
        if self.mounted.lock().unwrap().remove(target).is_some() {
            self.note(format!("unmount volume {}", target.display()));
        }
        Ok(())
    }

    fn mounts_below(&self, dir: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
        let mut found: Vec<PathBuf> = self
            .mounted
            .lock()
            .unwrap()
            .keys()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        Ok(found)
    }

    /// The fake runtime keeps no state there; the directory stays as it is.
    fn mount_state_root(&self, _root: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn release_state_root(&self, _root: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// A state directory and the fake host under it, shared by every agent opened on it (a
/// "restarted" agent finds what the previous one left).
pub(crate) struct Bench {
    pub dir: tempfile::TempDir,
    pub containers: Arc<FakeContainers>,
    pub mounts: Arc<FakeMounts>,
    pub commands: Arc<command::Recorder>,
}

/// The gateway of every bench: 2 cores, 1 GiB of memory and of storage, no system reserve
/// worth counting, no service network.
const GATEWAY: &str = "[capacity]\ncpu = 2.0\nmemory = \"1GiB\"\nstorage = \"1GiB\"\n\
    [reserve]\ncpu = 0.0\nmemory = \"0MiB\"\nstorage = \"0MiB\"\n[network]\nenabled = false\n";

impl Bench {
    pub(crate) fn new() -> Bench {
        Bench::with_config("")
    }

    /// A bench whose `gateway.toml` has `extra` after the bench's own tables (a
    /// `[providers.NAME]` table, say).
    pub(crate) fn with_config(extra: &str) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(
            dir.path().join("state/gateway.toml"),
            format!("{GATEWAY}{extra}"),
        )
        .unwrap();
        let commands = Arc::new(command::Recorder::new());
        // No table of a previous run: nothing for the switched-off network to tear down.
        commands.fail("nft list", "Error: No such file or directory");
        Bench {
            dir,
            containers: Arc::default(),
            mounts: Arc::default(),
            commands,
        }
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// An agent on this bench, as `shg gateway run` opens it (without the sampler).
    pub(crate) fn open(&self) -> Arc<Agent> {
        let mut cfg = Config::new(self.state_dir()).unwrap();
        cfg.cgroup_root = self.dir.path().join("cgroup");
        cfg.proc_root = self.dir.path().join("proc");
        let host = Host {
            containers: self.containers.clone(),
            mounts: self.mounts.clone(),
            cgroups: usage::detect(&cfg.cgroup_root),
            commands: self.commands.clone(),
        };
        Agent::open_on(cfg, host).unwrap()
    }

    /// A package of service `name` whose manifest has `extra` appended (restart policy,
    /// resources), with an executable `/bin/app`.
    pub(crate) fn package(&self, name: &str, version: &str, extra: &str) -> PathBuf {
        let src = self.dir.path().join(format!("src-{name}-{version}"));
        std::fs::create_dir_all(src.join("rootfs/bin")).unwrap();
        let app = src.join("rootfs/bin/app");
        std::fs::write(&app, format!("#!/bin/sh\necho {version}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            src.join("shg-service.toml"),
            format!(
                "name = \"{name}\"\nversion = \"{version}\"\nprovider = \"acme\"\n\
                 [run]\ncommand = [\"/bin/app\"]\nstop_timeout = \"2s\"\n{extra}"
            ),
        )
        .unwrap();
        let out = self.dir.path().join(format!("{name}-{version}.tar"));
        image::pack(&src, &out).unwrap();
        out
    }

    /// [`Bench::package`] with one more file in its root, `path`, of `len` bytes: a sparse
    /// file, all zeros, which the package stores at its full length.
    pub(crate) fn package_with_file(
        &self,
        name: &str,
        version: &str,
        extra: &str,
        path: &str,
        len: u64,
    ) -> PathBuf {
        let out = self.package(name, version, extra);
        let src = self.dir.path().join(format!("src-{name}-{version}"));
        let file = src.join("rootfs").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::File::create(&file).unwrap().set_len(len).unwrap();
        image::pack(&src, &out).unwrap();
        out
    }

    /// The layer directories in the store, by hex.
    pub(crate) fn stored_layers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state_dir().join("layers/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What the store's `tmp/` holds: partial unpacks.
    pub(crate) fn partial_layers(&self) -> usize {
        std::fs::read_dir(self.state_dir().join("layers/tmp"))
            .unwrap()
            .count()
    }
}
