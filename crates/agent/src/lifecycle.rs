//! Starting, stopping, watching and restarting services, and picking up after a crash.
//!
//! A running service is a container whose init PID the agent records together with its start
//! time. The agent watches that PID through a pidfd, so it can watch processes that are not
//! its children: the ones it re-adopts after a restart of its own. The exit status comes from
//! the file the init writes, not from `wait`, for the same reason.

use std::sync::Arc;
use std::time::Duration;

use api::ServiceSummary;
use manifest::RestartPolicy;
use nix::sys::signal::{kill, Signal};

use nix::unistd::Pid;
use state::{now_ms, Desired, Health, Note, Phase, RunState, ServiceRecord};

use crate::capacity::Check;
use crate::host::{Create, CreateError, Process};
use crate::{Agent, AgentError, Layout};

/// Failures in a row after which a restarting service shows as `crash-loop`.
const CRASH_LOOP_AFTER: u32 = 5;
/// The longest wait between two restarts.
const MAX_BACKOFF_MS: u64 = 60_000;
/// How long a SIGKILLed service may take to disappear before the agent gives up waiting.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Holds the state directory for this agent; dropped when the agent exits.
pub struct StateLock(#[allow(dead_code)] std::fs::File);

pub fn take_lock(layout: &Layout) -> Result<StateLock, AgentError> {
    let path = layout.lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AgentError::io(&path, e))?;
    // SAFETY: flock on a descriptor owned by `file`.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    if rc != 0 {
        return Err(AgentError::Busy(format!(
            "another agent already runs on {}; stop it first or pick another --state-dir",
            layout.root.display()
        )));
    }
    Ok(StateLock(file))
}

/// Orphaned container inits are re-parented to the agent, which reaps them.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

pub(crate) fn summary(rec: &ServiceRecord) -> ServiceSummary {
    let state = match rec.phase {
        Phase::Installing => "installing".to_string(),
        Phase::Removing => "removing".to_string(),
        Phase::Updating => "updating".to_string(),
        Phase::Installed => rec.state.as_str(),
    };
    ServiceSummary {
        name: manifest::bare_name(&rec.name).to_string(),
        id: format!("{}/{}", rec.provider, manifest::bare_name(&rec.name)),
        provider: rec.provider.clone(),
        version: rec.version.clone(),
        state,
        health: rec.health.as_str(),
        pid: rec.pid,
        desired: rec.desired.as_str(),
        restarts: rec.restarts,
        priority: rec.priority,
        exit_code: rec.exit_code,
        started_at_ms: rec.started_at_ms,
        reason: rec.reason.clone(),
        signed_by: rec.signer.clone(),
        unsigned: rec.signer.is_none(),
        lan: rec.lan.clone(),
    }
}

/// The one guard against acting on a service an install or an update is still changing: a
/// start, stop, removal or another update waits until it is done (or rolled back).
pub(crate) fn refuse_while_changing(rec: &ServiceRecord) -> Result<(), AgentError> {
    let doing = match rec.phase {
        Phase::Installing => "installed",
        Phase::Updating => "updated",
        Phase::Installed | Phase::Removing => return Ok(()),
    };
    Err(AgentError::Conflict(format!(
        "`{}` is being {doing}; wait for that to finish",
        rec.name
    )))
}

/// The manifest a record was installed with.
///
/// Its `name` is the record's key, which is what the agent's own code goes by (directories,
/// container, cgroup, locks): the service's own name, or `PROVIDER+NAME` when another
/// provider's service held that name first ([`manifest::service_key`]).
pub(crate) fn manifest_of(rec: &ServiceRecord) -> Result<manifest::Manifest, AgentError> {
    let mut m = manifest::parse(&rec.manifest, "shg-service.toml").map_err(|source| {
        AgentError::StoredManifest {
            which: "stored",
            name: rec.name.clone(),
            source,
        }
    })?;
    m.name = rec.name.clone();
    Ok(m)
}

fn describe_exit(status: &Option<runtime::init::ExitStatus>) -> String {
    match status {
        Some(s) if s.error.is_some() => {
            format!(
                "could not start: {}",
                s.error.as_deref().unwrap_or_default()
            )
        }
        Some(s) => match s.signal {
            Some(9) => "was killed (SIGKILL)".to_string(),
            Some(sig) => format!("was ended by signal {sig}"),
            None => format!("exited with code {}", s.code),
        },
        None => "ended without recording an exit status".to_string(),
    }
}

/// Why the agent itself stops a service: journaled as the stop's event and kept as the
/// stopped service's reason.
pub(crate) struct StopCause {
    kind: &'static str,
    message: String,
}

impl StopCause {
    pub(crate) fn new(kind: &'static str, message: String) -> StopCause {
        StopCause { kind, message }
    }

    fn note(&self) -> Note {
        Note::new(self.kind, self.message.clone())
    }
}

/// Ends a runtime helper running an exec: SIGTERM makes it kill the command inside the
/// container (and the command's process group) before it exits; SIGKILL only if it hangs.
pub(crate) async fn end_helper(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

impl Agent {
    async fn recover_one(self: &Arc<Self>, rec: ServiceRecord) -> Result<(), AgentError> {
        let owned = rec.name.clone();
        let name = owned.as_str();
        match rec.phase {
            Phase::Installing => crate::host::blocking(|| {
                self.rollback_install(name, "the agent stopped during the install")
            }),
            Phase::Removing => crate::host::blocking(|| self.finish_remove(name)),
            Phase::Updating => {
                // Not switched yet: the service is on its current release. Its container
                // may still run (adopted below) or have been stopped for the switch.
                self.abandon_update(name, "the agent stopped before the switch")?;
                if let Err(e) = self.mount_volume(name) {
                    tracing::warn!(service = %name, "cannot mount the data volume: {e}");
                }
                let rec = self.store().get(name)?;
                self.recover_installed(rec).await?;
                self.resume_probation(name);
                Ok(())
            }
            Phase::Installed => {
                // After a reboot nothing is mounted; a start would mount it, but `shg stats`
                // reads what a stopped service stores too.
                if let Err(e) = self.mount_volume(name) {
                    tracing::warn!(service = %name, "cannot mount the data volume: {e}");
                }
                self.recover_installed(rec).await?;
                self.resume_probation(name);
                Ok(())
            }
        }
    }

    /// A release switched in by an update before the agent stopped gets the rest of its
    /// health window.
    fn resume_probation(self: &Arc<Self>, name: &str) {
        if let Ok(Some(rec)) = self.store().find(name) {
            if rec.probation_until_ms.is_some() {
                self.spawn_probation(name);
            }
        }
    }

    async fn recover_installed(self: &Arc<Self>, rec: ServiceRecord) -> Result<(), AgentError> {
        let name = rec.name.as_str();
        match rec.pid {
            Some(pid)
                if self.host.containers.is_alive(pid)
                    && self.host.containers.start_time(pid) == rec.pid_start =>
            {
                self.adopt(&rec, pid, "kept running while the agent was down")
            }
            Some(pid) => self.on_exit(name, pid).await,
            None => {
                // The agent may have died between creating a container and recording it: only
                // a start under way leaves one to adopt. Beside any other record, a container
                // is one whose end was recorded (on the init's exit notice, while the kernel
                // still tore it down) and not deleted yet: it goes, below.
                let containers = &self.host.containers;
                let found = (rec.state == RunState::Starting)
                    .then(|| containers.pid_of(name))
                    .flatten()
                    .filter(|&p| containers.is_alive(p));
                if let Some(pid) = found {
                    let start = containers.start_time(pid);
                    let rec = self.store().update(name, None, |r| {
                        r.pid = Some(pid);
                        r.pid_start = start;
                        r.state = RunState::Running;
                        r.started_at_ms = Some(now_ms());
                    })?;
                    return self.adopt(&rec, pid, "was started just before the agent stopped");
                }
                let _ = self.host.containers.delete(name);
                let restart = rec.desired == Desired::Running
                    && matches!(
                        rec.state,
                        RunState::Backoff
                            | RunState::CrashLoop
                            | RunState::Created
                            | RunState::Starting
                    );
                if restart {
                    let lock = self.lock_of(name);
                    let _guard = lock.lock().await;
                    self.launch(name).await?;
                }
                Ok(())
            }
        }
    }

    /// Watches a container a previous agent started, and finishes a stop it began.
    fn adopt(self: &Arc<Self>, rec: &ServiceRecord, pid: i32, why: &str) -> Result<(), AgentError> {
        let name = rec.name.as_str();
        self.store().record(
            Some(name),
            Note::new("adopted", format!("`{name}` {why}; re-adopted (pid {pid})")),
        )?;
        crate::host::blocking(|| self.shape_service(rec));
        self.watch(name, pid, None);
        if rec.desired == Desired::Stopped {
            let agent = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                if let Err(e) = agent.stop(&name).await {
                    tracing::warn!(service = %name, "cannot finish the stop: {e}");
                }
            });
        }
        Ok(())
    }

    /// The runtime helper command that runs `command` inside the running service `name`.
    pub(crate) fn exec_helper(
        &self,
        name: &str,
        uid: u32,
        gid: u32,
        command: &[String],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.cfg.runtime_binary);
        cmd.arg("exec")
            .arg(name)
            .arg("--state-root")
            .arg(self.layout.containers())
            .arg("--uid")
            .arg(uid.to_string())
            .arg("--gid")
            .arg(gid.to_string())
            .arg("--")
            .args(command)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// `shg start`: wants the service running and starts it now.
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<ServiceSummary, AgentError> {
        self.start_making_room(name, &[]).await
    }

    /// `shg start --make-room`: stops the services in `stop` (the agent's proposal, confirmed
    /// by the household) if that makes the service fit, then starts it. A refusal stops
    /// nothing.
    pub async fn start_making_room(
        self: &Arc<Self>,
        name: &str,
        stop: &[String],
    ) -> Result<ServiceSummary, AgentError> {
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let rec = self.store().get(name)?;
        refuse_while_changing(&rec)?;
        if rec.phase == Phase::Removing {
            return Err(AgentError::Conflict(format!(
                "`{name}` is being removed; wait for that to finish"
            )));
        }
        if rec.state == RunState::Stopping {
            return Err(AgentError::Conflict(format!(
                "`{name}` is stopping; start it again once `shg ps` shows it stopped"
            )));
        }
        if let Some(pid) = rec.pid {
            if self.host.containers.is_alive(pid) {
                return Ok(summary(&rec));
            }
            // Its init ended but the exit is not handled yet: let that finish first.
            return Err(AgentError::Conflict(format!(
                "`{name}` has just exited; try again in a moment"
            )));
        }
        if rec.desired != Desired::Running {
            // A stopped service gave its reservation back; it must fit again to run.
            let _admission = self.admission.lock.lock().await;
            self.check_stoppable(name, stop)?;
            self.admit_beside(&manifest_of(&rec)?, rec.priority, Check::Run, true, stop)?;
            self.give_up_reservations(stop)?;
            self.store().update(name, None, |r| {
                r.desired = Desired::Running;
                r.failures = 0;
            })?;
        } else if rec.failures != 0 {
            self.store().update(name, None, |r| r.failures = 0)?;
        }
        self.stop_to_make_room(name, stop).await?;
        let rec = self.launch(name).await?;
        Ok(summary(&rec))
    }

    /// Stops the services that gave up their reservation for `requester`, and says why.
    pub(crate) async fn stop_to_make_room(
        self: &Arc<Self>,
        requester: &str,
        stop: &[String],
    ) -> Result<(), AgentError> {
        let requester_provider = self.store().get(requester)?.provider;
        for name in stop {
            let rec = self.store().get(name)?;
            // The journal of `name` is its provider's to read: a rival's service stays unnamed.
            let whom = if rec.provider == requester_provider {
                format!("`{requester}`")
            } else {
                "another provider's service".to_string()
            };
            let cause = StopCause::new(
                "stopped-for-room",
                format!(
                    "`{name}` (priority {}) was stopped to make room for {whom}, as the household agreed",
                    rec.priority
                ),
            );
            self.stop_because(name, Some(cause)).await?;
        }
        Ok(())
    }

    /// Creates and starts the container; the caller holds the service's lock.
    pub(crate) async fn launch(self: &Arc<Self>, name: &str) -> Result<ServiceRecord, AgentError> {
        // Where a start spends its time, step by step (`RUST_LOG=agent::lifecycle=debug`).
        let mut steps = Steps::new();
        let sl = self.layout.service(name);
        // The bundle is written at every start, so a newer agent's hardening applies to
        // services installed before it.
        let rec = self.store().get(name)?;
        let manifest = manifest_of(&rec)?;
        steps.mark("read");
        // After a reboot, or if an operator unmounted it by hand.
        self.mount_volume(name)?;
        steps.mark("volume");
        self.mount_rootfs(name, &rec.image_digest)?;
        steps.mark("root");
        let shares = self.admission.gateway.available().cpu.max(1) * 1024 / 1000;
        if let Err(e) = self
            .host
            .cgroups
            .set_parent_weight(&self.cfg.cgroup_parent, shares)
        {
            tracing::warn!("cannot weight the services' parent cgroup: {e}");
        }
        steps.mark("weight");
        runtime::spec::write_bundle(
            &sl.bundle(),
            &self.service_spec(&manifest, &rec.image_digest, rec.priority),
        )?;
        steps.mark("bundle");
        let attach = match crate::host::blocking(|| self.attach_for(&rec)) {
            Ok(attach) => attach,
            Err(e) => {
                let reason = format!("cannot start `{name}`: {e}");
                self.store().update(
                    name,
                    Some(Note::new("start-failed", reason.clone())),
                    |r| {
                        r.state = RunState::Failed;
                        r.reason = Some(reason.clone());
                    },
                )?;
                return Err(AgentError::StartFailed(reason));
            }
        };
        steps.mark("network");
        // Recorded before the container exists: if the agent dies now, recovery looks for a
        // container to adopt instead of assuming there is none.
        self.store()
            .update(name, None, |r| r.state = RunState::Starting)?;
        steps.mark("journal");
        // Its read end is open before the create, so the helper finds a reader to hand the
        // write end to; without it the exit is seen at the init's pidfd alone.
        let notice = runtime::init::exit_notice(&sl.exit_fifo())
            .map_err(|e| tracing::warn!(service = %name, "no exit notice: {e}"))
            .ok();
        let create = Create {
            name: name.to_string(),
            bundle: sl.bundle(),
            log_dir: sl.logs(),
            status_file: sl.status(),
            exit_fifo: notice.is_some().then(|| sl.exit_fifo()),
            attach,
        };
        let pid = match self.host.containers.create(&create).await {
            Ok(pid) => pid,
            Err(CreateError::Helper(e)) => return Err(AgentError::Helper(e)),
            Err(CreateError::Refused(why)) => {
                let reason = format!("cannot start `{name}`: {why}");
                self.store().update(
                    name,
                    Some(Note::new("start-failed", reason.clone())),
                    |r| {
                        r.state = RunState::Failed;
                        r.pid = None;
                        r.reason = Some(reason.clone());
                    },
                )?;
                return Err(AgentError::StartFailed(reason));
            }
        };
        steps.mark("create");
        let pid_start = self.host.containers.start_time(pid);
        crate::host::blocking(|| self.shape_service(&rec));
        steps.mark("shape");
        let has_health = manifest.health.is_some();
        let rec = self.store().update(
            name,
            Some(Note::new(
                "started",
                format!("`{name}` started (pid {pid})"),
            )),
            |r| {
                r.state = RunState::Running;
                r.pid = Some(pid);
                r.pid_start = pid_start;
                r.started_at_ms = Some(now_ms());
                r.exit_code = None;
                r.reason = None;
                r.health = if has_health {
                    Health::Starting
                } else {
                    Health::None
                };
            },
        )?;
        self.watch(name, pid, notice);
        steps.mark("record");
        tracing::debug!("`{name}` started in {}", steps.report());
        Ok(rec)
    }

    /// Watches `pid` (the service's init) until it ends, and runs its health checks meanwhile.
    /// `notice` is the read end of the init's exit notice (`runtime::init::exit_notice`), when
    /// the start made one: it reports the end as soon as the status is written.
    pub(crate) fn watch(
        self: &Arc<Self>,
        name: &str,
        pid: i32,
        notice: Option<std::os::fd::OwnedFd>,
    ) {
        let agent = self.clone();
        let owned = name.to_string();
        tokio::spawn(async move {
            let mut gone = None;
            match agent.host.containers.open(pid) {
                Ok(process) => {
                    match notice.and_then(|fd| crate::pidfd::Notice::new(fd).ok()) {
                        Some(notice) => {
                            tokio::select! {
                                _ = process.exited() => {}
                                _ = notice.ended() => {}
                            }
                        }
                        None => process.exited().await,
                    }
                    gone = Some(process);
                }
                // Already gone.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                // No pidfd (descriptor limit, old kernel): watch /proc instead. A failure to
                // watch must never pass for an exit.
                Err(e) => {
                    tracing::warn!(service = %owned, "no pidfd ({e}); polling /proc instead");
                    while agent.host.containers.is_alive(pid) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            if let Err(e) = agent.ended(&owned, pid, gone.as_deref()).await {
                tracing::error!(service = %owned, "handling the exit failed: {e}");
            }
            // Whatever path the handling took: the init, once gone, is not left a zombie.
            if let Some(process) = gone {
                process.exited().await;
                process.reap();
            }
        });
        crate::health::spawn(self.clone(), name.to_string(), pid);
    }

    /// Records the end of `pid` and applies the restart policy. Idempotent: a second call for
    /// the same PID does nothing.
    pub(crate) async fn on_exit(self: &Arc<Self>, name: &str, pid: i32) -> Result<(), AgentError> {
        self.ended(name, pid, None).await
    }

    /// [`Self::on_exit`], with `gone` the init's pidfd when the watch holds one. The end may
    /// then be handled on the init's exit notice, before the init is gone: it is recorded (and
    /// the waiters told) at once, and the container deleted and the init reaped only once
    /// `gone` resolves, under the same lock, so no start of the service meets them.
    async fn ended(
        self: &Arc<Self>,
        name: &str,
        pid: i32,
        gone: Option<&dyn Process>,
    ) -> Result<(), AgentError> {
        // Where handling an exit spends its time (`RUST_LOG=agent::lifecycle=debug`).
        let mut steps = Steps::new();
        // Reap first, whatever the record says: an init that is no longer the service's (a
        // start raced a stop) must not stay a zombie.
        self.host.containers.reap(pid);
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        steps.mark("lock");
        let Some(rec) = self.store().find(name)? else {
            return Ok(());
        };
        if rec.pid != Some(pid) {
            return Ok(());
        }
        let sl = self.layout.service(name);
        let status = runtime::init::read_status(&sl.status());
        let manifest = manifest_of(&rec)?;
        let limit = manifest.resources.memory.limit;
        // Read from the cgroup, so before the container (and its cgroup) is deleted.
        let ooms = self.report_final_ooms(name, pid, limit);
        steps.mark("status");
        // The exit is recorded first, so whoever waits for it sees it at once; the container
        // goes right after, under the same lock, so no start of this service meets it. (Were
        // the agent to die in between, the next start removes it, as any stale container.)
        // Deleting the container also removes its cgroup; it never forks. It takes a
        // millisecond or two, on the blocking pool: this thread meanwhile goes on with its
        // other tasks, such as the event stream sending the exit just recorded.
        let clean_up = |mut steps: Steps| {
            let agent = self.clone();
            let rec = rec.clone();
            async move {
                if let Some(gone) = gone {
                    gone.exited().await;
                    gone.reap();
                    steps.mark("gone");
                }
                crate::host::off_thread(move || {
                    if let Err(e) = agent.host.containers.delete(&rec.name) {
                        tracing::warn!(service = %rec.name, "cannot delete the container: {e}");
                    }
                    steps.mark("delete");
                    agent.unshape_service(&rec);
                    steps.mark("unshape");
                    tracing::debug!("`{}`'s exit handled in {}", rec.name, steps.report());
                })
                .await
            }
        };
        let code = status.as_ref().map(|s| s.code);
        let mut what = describe_exit(&status);
        if ooms > 0 && status.as_ref().is_some_and(|s| s.signal == Some(9)) {
            what.push_str(" by the kernel: out of memory");
        }
        let ran_ms = now_ms().saturating_sub(rec.started_at_ms.unwrap_or(0));

        // An update's switch stops the running release on purpose: no restart.
        if rec.desired == Desired::Stopped || rec.phase == Phase::Updating {
            let recorded = self.store().update(
                name,
                Some(Note::new("stopped", format!("`{name}` stopped: it {what}"))),
                |r| {
                    // A reason the stop was given (an eviction) stays; any other is stale.
                    if r.state != RunState::Stopping {
                        r.reason = None;
                    }
                    r.state = RunState::Stopped;
                    r.pid = None;
                    r.pid_start = None;
                    r.exit_code = code;
                    r.health = Health::None;
                },
            );
            steps.mark("record");
            clean_up(steps).await;
            recorded?;
            return Ok(());
        }
        let policy = manifest.restart.policy;
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != Some(0),
            RestartPolicy::Never => false,
        };
        if !restart {
            let policy_name = serde_json::to_value(policy)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let reason = format!("it {what}; restart policy `{policy_name}` leaves it stopped");
            let recorded = self.store().update(
                name,
                Some(Note::new("exited", format!("`{name}` {what}"))),
                |r| {
                    r.state = RunState::Exited;
                    r.pid = None;
                    r.pid_start = None;
                    r.exit_code = code;
                    r.health = Health::None;
                    r.reason = Some(reason.clone());
                },
            );
            steps.mark("record");
            clean_up(steps).await;
            recorded?;
            return Ok(());
        }
        let failures = if ran_ms >= self.cfg.stable_after_ms {
            1
        } else {
            rec.failures + 1
        };
        let delay_ms = (500u64 << (failures - 1).min(16)).min(MAX_BACKOFF_MS);
        let looping = failures >= CRASH_LOOP_AFTER;
        let reason = format!(
            "it {what} after {:.1}s; restarting in {:.1}s (failure {failures} in a row)",
            ran_ms as f64 / 1000.0,
            delay_ms as f64 / 1000.0
        );
        let was_looping = rec.state == RunState::CrashLoop;
        let recorded = self.store().update(
            name,
            Some(Note::new("exited", format!("`{name}` {what}"))),
            |r| {
                r.state = if looping {
                    RunState::CrashLoop
                } else {
                    RunState::Backoff
                };
                r.pid = None;
                r.pid_start = None;
                r.exit_code = code;
                r.failures = failures;
                r.health = Health::None;
                r.reason = Some(reason.clone());
            },
        );
        steps.mark("record");
        clean_up(steps).await;
        recorded?;
        if looping && !was_looping {
            self.store().record(
                Some(name),
                Note::new(
                    "crash-loop",
                    format!("`{name}` failed {failures} times in a row; it keeps being restarted with a growing delay (up to {}s)", MAX_BACKOFF_MS / 1000),
                ),
            )?;
        }
        let agent = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            if let Err(e) = agent.restart_after_backoff(&name, failures).await {
                tracing::warn!(service = %name, "restart failed: {e}");
            }
        });
        Ok(())
    }

    async fn restart_after_backoff(
        self: &Arc<Self>,
        name: &str,
        failures: u32,
    ) -> Result<(), AgentError> {
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let Some(rec) = self.store().find(name)? else {
            return Ok(());
        };
        let waiting = matches!(rec.state, RunState::Backoff | RunState::CrashLoop);
        if rec.phase != Phase::Installed
            || rec.desired != Desired::Running
            || rec.pid.is_some()
            || !waiting
            || rec.failures != failures
        {
            return Ok(());
        }
        self.store().update(
            name,
            Some(Note::new(
                "restarting",
                format!("restarting `{name}` (restart {})", rec.restarts + 1),
            )),
            |r| {
                r.restarts += 1;
            },
        )?;
        self.launch(name).await.map(|_| ())
    }

    /// `shg stop`: SIGTERM, then SIGKILL after the manifest's stop timeout.
    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<ServiceSummary, AgentError> {
        self.stop_because(name, None).await
    }

    /// Stops a service; `cause` (when the agent, not the household, decided it) is journaled
    /// and stays as the stopped service's reason.
    pub(crate) async fn stop_because(
        self: &Arc<Self>,
        name: &str,
        cause: Option<StopCause>,
    ) -> Result<ServiceSummary, AgentError> {
        let reason = cause.as_ref().map(|c| c.message.clone());
        let (pid, fd) = {
            let lock = self.lock_of(name);
            let _guard = lock.lock().await;
            let rec = self.store().get(name)?;
            refuse_while_changing(&rec)?;
            let Some(pid) = rec.pid else {
                let note = match &cause {
                    Some(c) => c.note(),
                    None => Note::new("stopped", format!("`{name}` will stay stopped")),
                };
                let rec = self.store().update(name, Some(note), |r| {
                    r.desired = Desired::Stopped;
                    if matches!(
                        r.state,
                        RunState::Backoff | RunState::CrashLoop | RunState::Starting
                    ) {
                        r.state = RunState::Stopped;
                    }
                    r.reason = reason.clone();
                })?;
                return Ok(summary(&rec));
            };
            let note = match &cause {
                Some(c) => c.note(),
                None => Note::new("stopping", format!("stopping `{name}` (SIGTERM)")),
            };
            self.store().update(name, Some(note), |r| {
                r.desired = Desired::Stopped;
                r.state = RunState::Stopping;
                r.reason = reason.clone();
            })?;
            // Signals go through a pidfd checked against the recorded start time, so a PID
            // reused by another process is never signalled.
            let fd = self.host.containers.open_verified(pid, rec.pid_start);
            if let Some(fd) = &fd {
                fd.signal(Signal::SIGTERM);
            }
            (pid, fd)
        };
        if let Some(fd) = fd {
            let timeout = manifest_of(&self.store().get(name)?)?.run.stop_timeout;
            self.end_process(name, pid, &*fd, timeout).await?;
        }
        self.on_exit(name, pid).await?;
        Ok(summary(&self.store().get(name)?))
    }

    /// Waits up to `timeout` for the SIGTERMed `pid` (the service's init) to end, then sends
    /// SIGKILL (journaled) and waits [`KILL_GRACE`] more.
    pub(crate) async fn end_process(
        &self,
        name: &str,
        pid: i32,
        fd: &dyn Process,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        if self.gone(fd, pid, timeout).await {
            return Ok(());
        }
        self.store().record(
            Some(name),
            Note::new(
                "killed",
                format!(
                    "`{name}` did not stop within {}s of SIGTERM; sending SIGKILL",
                    timeout.as_secs_f64()
                ),
            ),
        )?;
        fd.signal(Signal::SIGKILL);
        if self.gone(fd, pid, KILL_GRACE).await {
            return Ok(());
        }
        Err(AgentError::Internal(format!(
            "`{name}` (pid {pid}) still runs {}s after SIGKILL; it stays `stopping`",
            KILL_GRACE.as_secs()
        )))
    }

    /// Whether `pid` ends within `timeout`: its pidfd turns readable, or /proc shows it gone
    /// or a zombie (checked too, so a missed wake-up cannot pass for a live process).
    async fn gone(&self, fd: &dyn Process, pid: i32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if tokio::time::timeout(Duration::from_millis(100), fd.exited())
                .await
                .is_ok()
                || !self.host.containers.is_alive(pid)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// `shg priority`: records the household's ranking and applies it to a running service
    /// at once (CPU weight, OOM order); the next start writes it into the bundle.
    pub async fn set_priority(
        self: &Arc<Self>,
        name: &str,
        priority: i32,
    ) -> Result<ServiceSummary, AgentError> {
        if !(0..=100).contains(&priority) {
            return Err(AgentError::BadRequest(format!(
                "priority {priority} is out of range; give a number from 0 (least important) to 100 (most important)"
            )));
        }
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let old = self.store().get(name)?.priority;
        let rec = self.store().update(
            name,
            Some(Note::new(
                "priority",
                format!("priority of `{name}` changed from {old} to {priority}"),
            )),
            |r| r.priority = priority,
        )?;
        if rec.pid.is_some() {
            let manifest = manifest_of(&rec)?;
            let shares = runtime::spec::cpu_shares(manifest.resources.cpu.reserve, priority);
            let oom = runtime::spec::oom_score_adj(priority);
            if let Err(e) = self.apply_priority(name, shares, oom) {
                tracing::warn!(service = %name, "priority recorded, applied at next start: {e}");
            }
        }
        Ok(summary(&rec))
    }

    /// Sets the CPU weight of the running service's cgroup and the OOM score of each of its
    /// processes.
    fn apply_priority(&self, name: &str, shares: u64, oom_score_adj: i32) -> std::io::Result<()> {
        let parent = &self.cfg.cgroup_parent;
        self.host.cgroups.set_weight(parent, name, shares)?;
        for pid in self.host.cgroups.procs(parent, name)? {
            // A process may exit meanwhile; that is fine.
            let _ = std::fs::write(
                self.cfg
                    .proc_root
                    .join(pid.to_string())
                    .join("oom_score_adj"),
                oom_score_adj.to_string(),
            );
        }
        Ok(())
    }

    /// `shg restart`.
    pub async fn restart(self: &Arc<Self>, name: &str) -> Result<ServiceSummary, AgentError> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Picks up after the previous agent: finishes or rolls back half-done installs and
    /// removals, re-adopts services that kept running, handles those that ended meanwhile,
    /// and collects the image layers no release names.
    pub async fn recover(self: &Arc<Self>) -> Result<(), AgentError> {
        // Uploads and unpacked-but-unregistered installs of a dead agent are garbage (a root
        // it mounted to check a command first comes off).
        let mounts = &self.host.mounts;
        for mount in mounts.mounts_below(&self.layout.tmp()).unwrap_or_default() {
            let _ = mounts.unmount_root(&mount);
        }
        if let Ok(entries) = std::fs::read_dir(self.layout.tmp()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        // Services installed by an agent without networking get their place now.
        for rec in self.store().list()? {
            if rec.slot.is_none() {
                self.store().give_slot(&rec.name)?;
            }
        }
        // The bridge, rules and hosts files before any service starts; running services
        // keep their veths and get their classes back when adopted.
        if let Err(e) = crate::host::blocking(|| self.refresh_network()) {
            tracing::error!("cannot set up the service network: {e}");
        }
        let records = self.store().list()?;
        for rec in records {
            // One service in a bad way must not keep the agent, and every other service, down.
            if let Err(e) = self.recover_one(rec.clone()).await {
                tracing::error!(service = %rec.name, "recovery failed: {e}");
                let _ = self.store().record(
                    Some(&rec.name),
                    Note::new(
                        "recovery-failed",
                        format!(
                            "the agent could not pick `{}` up after a restart: {e}",
                            rec.name
                        ),
                    ),
                );
            }
        }
        // A layer no release names (its install killed after the layers were ensured, say)
        // has nothing left to be collected by: nothing else would ever remove it.
        crate::host::blocking(|| self.collect_layers());
        Ok(())
    }
}

/// The time each step of something took, for a debug line.
struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((step, now - self.last));
        self.last = now;
    }

    /// `total ms (step ms, …)`.
    fn report(&self) -> String {
        let total: std::time::Duration = self.done.iter().map(|(_, d)| *d).sum();
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(s, d)| format!("{s} {:.1}", d.as_secs_f64() * 1e3))
            .collect();
        format!("{:.1} ms ({})", total.as_secs_f64() * 1e3, steps.join(", "))
    }
}

#[cfg(test)]
mod tests {
    //! Start, stop, exit handling, restarts and recovery, on the fake host: what `shg ps`,
    //! `shg events` and `shg capacity` would show.

    use std::sync::Arc;
    use std::time::Duration;

    use nix::sys::signal::Signal;
    use state::{Desired, RunState, ServiceRecord};

    use crate::host::fake::Bench;
    use crate::{Agent, AgentError, InstallOptions, Principal};

    /// Half a core, 256 MiB and 64 MiB of storage; restarted when it fails.
    const ON_FAILURE: &str = "[resources]\ncpu = { reserve = 0.5 }\n\
        memory = { reserve = \"256MiB\" }\nstorage = { reserve = \"64MiB\" }\n\
        [restart]\npolicy = \"on-failure\"\n";

    const MIB: u64 = 1 << 20;

    /// Installs `name` from a fresh package as the operator, unsigned, started or not.
    async fn install(bench: &Bench, agent: &Arc<Agent>, name: &str, extra: &str, start: bool) {
        let package = bench.package(name, "1.0.0", extra);
        let opts = InstallOptions {
            start,
            allow_unsigned: true,
            ..InstallOptions::default()
        };
        agent
            .install(&Principal::Operator, &package, &opts)
            .await
            .unwrap();
    }

    /// The record of `name` once `done` holds for it (the paused clock runs on meanwhile).
    async fn until(
        agent: &Agent,
        name: &str,
        what: &str,
        done: impl Fn(&ServiceRecord) -> bool,
    ) -> ServiceRecord {
        for _ in 0..20_000 {
            if let Some(rec) = agent.store().find(name).unwrap() {
                if done(&rec) {
                    return rec;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "`{name}` never got {what}: {:?}",
            agent.store().find(name).unwrap()
        );
    }

    /// The kinds of `name`'s journal entries, oldest first.
    fn journal(agent: &Agent, name: &str) -> Vec<String> {
        let events = agent.store().events(0, Some(name), 1000).unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    /// What `shg ps` shows as the state of `name`.
    fn shown(agent: &Agent, name: &str) -> String {
        let list = agent.list(&Principal::Operator).unwrap();
        list.into_iter().find(|s| s.name == name).unwrap().state
    }

    /// Memory and storage reserved on the gateway, in MiB.
    fn reserved(agent: &Agent) -> (u64, u64) {
        let view = agent.capacity().unwrap();
        let mib = |key: &str| view.reserved[key].as_u64().unwrap() / MIB;
        (mib("memory"), mib("storage"))
    }

    #[tokio::test(start_paused = true)]
    async fn an_installed_and_started_service_runs_and_holds_its_reservation() {
        let bench = Bench::new();
        let agent = bench.open();
        install(&bench, &agent, "web", ON_FAILURE, true).await;

        let rec = agent.store().get("web").unwrap();
        assert_eq!(rec.pid, bench.containers.pid("web"));
        assert_eq!(rec.pid_start, bench.containers.start_of(rec.pid.unwrap()));
        assert_eq!(shown(&agent, "web"), "running");
        assert_eq!(
            journal(&agent, "web"),
            ["installing", "installed", "started"]
        );
        assert_eq!(reserved(&agent), (256, 64));
        // The command was checked in a mount of its own, gone again; the volume and the
        // release's root are mounted for the run.
        assert_eq!(
            bench.mounts.verbs(),
            [
                "mount overlay",
                "unmount root",
                "create volume",
                "mount volume",
                "mount root"
            ]
        );
        let services = bench.state_dir().join("services");
        assert_eq!(bench.mounts.mounted_below(&services).len(), 2);
        assert!(bench
            .mounts
            .mounted_below(&bench.state_dir().join("tmp"))
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_restarted_after_a_back_off_and_a_clean_exit_is_not() {
        let bench = Bench::new();
        let agent = bench.open();
        install(&bench, &agent, "web", ON_FAILURE, true).await;
        let first = bench.containers.pid("web").unwrap();

        bench.containers.exit(first, 3);
        let waiting = until(&agent, "web", "backoff", |r| r.state == RunState::Backoff).await;
        assert_eq!(waiting.exit_code, Some(3));
        let reason = waiting.reason.unwrap();
        assert!(
            reason.starts_with("it exited with code 3 after")
                && reason.ends_with("restarting in 0.5s (failure 1 in a row)"),
            "{reason}"
        );
        assert_eq!(
            reserved(&agent),
            (256, 64),
            "a service waiting to restart keeps its reservation"
        );

        let again = until(&agent, "web", "restarted", |r| r.pid.is_some()).await;
        assert_ne!(again.pid, Some(first));
        assert_eq!(again.restarts, 1);
        assert_eq!(shown(&agent, "web"), "running");
        assert_eq!(bench.containers.created(), ["web", "web"]);
        assert_eq!(
            bench.containers.deleted(),
            ["web"],
            "the ended container is deleted"
        );

        bench.containers.exit(again.pid.unwrap(), 0);
        let done = until(&agent, "web", "exited", |r| r.state == RunState::Exited).await;
        assert_eq!(
            done.reason.as_deref(),
            Some("it exited with code 0; restart policy `on-failure` leaves it stopped")
        );
        assert_eq!(done.desired, Desired::Running);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(
            bench.containers.created().len(),
            2,
            "no restart after success"
        );
        assert_eq!(
            journal(&agent, "web"),
            [
                "installing",
                "installed",
                "started",
                "exited",
                "restarting",
                "started",
                "exited"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_become_a_crash_loop_with_a_growing_delay() {
        let bench = Bench::new();
        let agent = bench.open();
        let always = ON_FAILURE.replace("on-failure", "always");
        install(&bench, &agent, "web", &always, true).await;
        let mut delays = Vec::new();
        for failure in 1..=5u32 {
            let pid = bench.containers.pid("web").unwrap();
            bench.containers.exit(pid, 0);
            let rec = until(&agent, "web", "its exit handled", |r| r.failures == failure).await;
            delays.push(
                rec.reason
                    .unwrap()
                    .split("restarting in ")
                    .nth(1)
                    .unwrap()
                    .to_string(),
            );
            if failure < 5 {
                until(&agent, "web", "restarted", |r| r.pid.is_some()).await;
            } else {
                assert_eq!(rec.state, RunState::CrashLoop);
                assert_eq!(shown(&agent, "web"), "crash-loop");
            }
        }
        let delays: Vec<&str> = delays
            .iter()
            .map(|d| d.split(' ').next().unwrap())
            .collect();
        assert_eq!(delays, ["0.5s", "1.0s", "2.0s", "4.0s", "8.0s"]);
        let journal = journal(&agent, "web");
        assert_eq!(journal.iter().filter(|k| *k == "crash-loop").count(), 1);
        // A crash loop keeps trying.
        until(&agent, "web", "restarted once more", |r| r.pid.is_some()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_sends_sigterm_and_gives_the_reservation_back_but_the_storage() {
        let bench = Bench::new();
        let agent = bench.open();
        install(&bench, &agent, "web", ON_FAILURE, true).await;
        let pid = bench.containers.pid("web").unwrap();

        let summary = agent.stop("web").await.unwrap();
        assert_eq!(summary.state, "stopped");
        assert_eq!(summary.desired, "stopped");
        assert_eq!(bench.containers.signals(), [(pid, Signal::SIGTERM)]);
        assert_eq!(reserved(&agent), (0, 64), "the data volume stays");
        let journal = journal(&agent, "web");
        assert_eq!(journal[journal.len() - 2..], ["stopping", "stopped"]);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(
            bench.containers.created().len(),
            1,
            "a stop is not a failure"
        );

        // Started again, it must fit again, and does.
        let summary = agent.start("web").await.unwrap();
        assert_eq!(summary.state, "running");
        assert_eq!(reserved(&agent), (256, 64));
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_ignores_sigterm_is_killed_after_its_stop_timeout() {
        let bench = Bench::new();
        let agent = bench.open();
        bench.containers.ignore_sigterm();
        install(&bench, &agent, "web", ON_FAILURE, true).await;
        let pid = bench.containers.pid("web").unwrap();

        let started = tokio::time::Instant::now();
        let summary = agent.stop("web").await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "its stop_timeout"
        );
        assert_eq!(summary.state, "stopped");
        assert_eq!(
            bench.containers.signals(),
            [(pid, Signal::SIGTERM), (pid, Signal::SIGKILL)]
        );
        let rec = agent.store().get("web").unwrap();
        assert!(rec.pid.is_none());
        let events = agent.store().events(0, Some("web"), 100).unwrap();
        let killed = events.iter().find(|e| e.kind == "killed").unwrap();
        assert_eq!(
            killed.message,
            "`web` did not stop within 2s of SIGTERM; sending SIGKILL"
        );
        assert!(events
            .last()
            .unwrap()
            .message
            .contains("was killed (SIGKILL)"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_does_not_fit_is_refused_until_the_household_makes_room() {
        let bench = Bench::new();
        let agent = bench.open();
        let big = ON_FAILURE.replace("256MiB", "600MiB");
        install(&bench, &agent, "vod", &big, true).await;
        install(&bench, &agent, "camera", &big, false).await;
        assert_eq!(reserved(&agent), (600, 128));

        let err = agent.start("camera").await.unwrap_err();
        let AgentError::Refused(refusal) = &err else {
            panic!("not refused: {err}");
        };
        assert!(err.to_string().contains("memory"), "{err}");
        assert!(refusal.to_string().contains("vod"), "{refusal}");
        assert_eq!(
            journal(&agent, "camera").last().unwrap(),
            "admission-refused"
        );
        assert_eq!(shown(&agent, "camera"), "created");
        assert_eq!(
            bench.containers.created(),
            ["vod"],
            "a refusal starts nothing"
        );

        let vod = bench.containers.pid("vod").unwrap();
        let summary = agent
            .start_making_room("camera", &["vod".to_string()])
            .await
            .unwrap();
        assert_eq!(summary.state, "running");
        assert_eq!(bench.containers.signals(), [(vod, Signal::SIGTERM)]);
        let stopped = agent.store().get("vod").unwrap();
        assert_eq!(stopped.desired, Desired::Stopped);
        assert!(stopped
            .reason
            .unwrap()
            .contains("was stopped to make room for `camera`"));
        assert_eq!(reserved(&agent), (600, 128));
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_the_runtime_cannot_start_leaves_the_service_failed_with_its_words() {
        let bench = Bench::new();
        let agent = bench.open();
        install(&bench, &agent, "web", ON_FAILURE, false).await;
        bench
            .containers
            .refuse_next("cannot set up its network: no bridge");

        let err = agent.start("web").await.unwrap_err();
        assert!(matches!(err, AgentError::StartFailed(_)), "{err}");
        let rec = agent.store().get("web").unwrap();
        assert_eq!(rec.state, RunState::Failed);
        assert_eq!(
            rec.reason.as_deref(),
            Some("cannot start `web`: cannot set up its network: no bridge")
        );
        assert_eq!(journal(&agent, "web").last().unwrap(), "start-failed");
        // Still wanted running: it holds its reservation until stopped.
        assert_eq!(reserved(&agent), (256, 64));
    }

    #[tokio::test(start_paused = true)]
    async fn a_kill_by_the_oom_killer_is_journaled_from_the_cgroup_before_it_goes() {
        let bench = Bench::new();
        // The service's cgroup on a v2 host, as the kernel leaves it after one OOM kill.
        let parent = crate::Config::new(bench.state_dir()).unwrap().cgroup_parent;
        let root = bench.dir.path().join("cgroup");
        let cgroup = root.join(parent).join("web");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(cgroup.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        let agent = bench.open();
        assert_eq!(agent.host.cgroups.version(), "v2");
        install(&bench, &agent, "web", ON_FAILURE, true).await;

        let pid = bench.containers.pid("web").unwrap();
        bench.containers.killed(pid, 9);
        let rec = until(&agent, "web", "backoff", |r| r.state == RunState::Backoff).await;
        assert!(rec
            .reason
            .unwrap()
            .starts_with("it was killed (SIGKILL) by the kernel: out of memory after"),);
        let events = agent.store().events(0, Some("web"), 100).unwrap();
        let oom = events.iter().find(|e| e.kind == "oom-killed").unwrap();
        assert_eq!(
            oom.message,
            "the kernel killed a process of `web` for lack of memory: it reached the memory it may use"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_priority_reaches_the_running_service_at_once() {
        let bench = Bench::new();
        let parent = crate::Config::new(bench.state_dir()).unwrap().cgroup_parent;
        let root = bench.dir.path().join("cgroup");
        let cgroup = root.join(&parent).join("web");
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(root.join(&parent).join("cpu.weight"), "100\n").unwrap();
        std::fs::write(cgroup.join("cpu.weight"), "100\n").unwrap();
        let agent = bench.open();
        install(&bench, &agent, "web", ON_FAILURE, true).await;
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        // At every start the services' parent is weighted by the 2 cores they may reserve.
        let two_cores = usage::shares_to_weight(2 * 1024).to_string();
        assert_eq!(read(&root.join(&parent).join("cpu.weight")), two_cores);

        let pid = bench.containers.pid("web").unwrap();
        std::fs::write(cgroup.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        let proc_dir = bench.dir.path().join("proc").join(pid.to_string());
        std::fs::create_dir_all(&proc_dir).unwrap();

        let summary = agent.set_priority("web", 100).await.unwrap();
        assert_eq!(summary.priority, 100);
        let shares = runtime::spec::cpu_shares(0.5, 100);
        assert_eq!(
            read(&cgroup.join("cpu.weight")),
            usage::shares_to_weight(shares).to_string()
        );
        assert_eq!(
            read(&proc_dir.join("oom_score_adj")),
            runtime::spec::oom_score_adj(100).to_string()
        );
        assert_eq!(journal(&agent, "web").last().unwrap(), "priority");
    }

    /// A runtime of its own for each agent of a recovery test: dropping it ends every task
    /// of that agent, as the agent's death would.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    /// Installs and starts `web` with an agent that then dies; returns its init's PID.
    fn left_by_a_dead_agent(bench: &Bench) -> i32 {
        let before = runtime();
        before.block_on(async {
            let agent = bench.open();
            install(bench, &agent, "web", ON_FAILURE, true).await;
        });
        drop(before);
        bench.containers.pid("web").unwrap()
    }

    #[test]
    fn a_service_that_kept_running_is_adopted_and_watched_again() {
        let bench = Bench::new();
        let pid = left_by_a_dead_agent(&bench);
        runtime().block_on(async {
            let agent = bench.open();
            agent.recover().await.unwrap();
            assert_eq!(journal(&agent, "web").last().unwrap(), "adopted");
            let rec = agent.store().get("web").unwrap();
            assert_eq!((rec.pid, rec.state), (Some(pid), RunState::Running));
            assert_eq!(
                bench.containers.created().len(),
                1,
                "adopted, not restarted"
            );

            // The new agent watches it: its failure is handled by the restart policy.
            bench.containers.exit(pid, 1);
            let again = until(&agent, "web", "restarted", |r| {
                r.pid.is_some() && r.pid != Some(pid)
            })
            .await;
            assert_eq!(again.restarts, 1);
        });
    }

    #[test]
    fn a_service_that_ended_while_the_agent_was_down_follows_its_restart_policy() {
        let bench = Bench::new();
        let pid = left_by_a_dead_agent(&bench);
        bench.containers.exit(pid, 2);
        runtime().block_on(async {
            let agent = bench.open();
            agent.recover().await.unwrap();
            let journal = journal(&agent, "web");
            assert!(!journal.contains(&"adopted".to_string()), "{journal:?}");
            let events = agent.store().events(0, Some("web"), 100).unwrap();
            assert_eq!(events.last().unwrap().message, "`web` exited with code 2");
            let again = until(&agent, "web", "restarted", |r| r.pid.is_some()).await;
            assert_ne!(again.pid, Some(pid));
            assert_eq!(bench.containers.created().len(), 2);
        });
    }

    #[test]
    fn a_pid_whose_start_time_differs_is_not_adopted() {
        let bench = Bench::new();
        let pid = left_by_a_dead_agent(&bench);
        runtime().block_on(async {
            let agent = bench.open();
            // As if the init had ended and another process had been given its PID.
            agent
                .store()
                .update("web", None, |r| r.pid_start = Some(1))
                .unwrap();
            agent.recover().await.unwrap();
            let journal = journal(&agent, "web");
            assert!(!journal.contains(&"adopted".to_string()), "{journal:?}");
            assert!(bench.containers.signals().is_empty(), "never signalled");
            let events = agent.store().events(0, Some("web"), 100).unwrap();
            assert!(events
                .iter()
                .any(|e| e.kind == "exited" && e.message.contains("recording an exit status")));
            let again = until(&agent, "web", "restarted", |r| r.pid.is_some()).await;
            assert_ne!(again.pid, Some(pid));
        });
    }

    /// The agent records an end on the init's exit notice, before the container is gone, and
    /// deletes the container right after; one that died in between left a container whose
    /// init may still be alive. Recovery deletes it instead of adopting it as a new start.
    /// `web` installed, then a container of it left running by an agent that is gone: its PID
    /// and start time.
    fn a_container_left_behind(bench: &Bench) -> (i32, u64) {
        runtime().block_on(async {
            let agent = bench.open();
            install(bench, &agent, "web", ON_FAILURE, false).await;
        });
        let status = bench.state_dir().join("services/web/status");
        bench.containers.left_running("web", &status)
    }

    /// Recovery, with `web`'s record naming no PID and in `state`.
    async fn recover_with_record(agent: &Arc<Agent>, state: RunState) {
        agent
            .store()
            .update("web", None, |r| {
                r.desired = Desired::Running;
                r.state = state;
                r.pid = None;
            })
            .unwrap();
        agent.recover().await.unwrap();
    }

    #[test]
    fn a_container_whose_end_was_recorded_is_deleted_not_adopted() {
        let bench = Bench::new();
        let (pid, _) = a_container_left_behind(&bench);
        runtime().block_on(async {
            let agent = bench.open();
            recover_with_record(&agent, RunState::Exited).await;
            let rec = agent.store().get("web").unwrap();
            assert_eq!((rec.state, rec.pid), (RunState::Exited, None));
            assert!(bench.containers.deleted().contains(&"web".to_string()));
            let events = agent.store().events(0, Some("web"), 100).unwrap();
            assert!(
                !events.iter().any(|e| e.kind == "adopted"),
                "{events:#?} (pid {pid})"
            );
        });
    }

    #[test]
    fn a_container_created_just_before_the_agent_died_is_found_and_adopted() {
        let bench = Bench::new();
        let (pid, start) = a_container_left_behind(&bench);
        runtime().block_on(async {
            let agent = bench.open();
            // The start was recorded up to `starting`, not its PID.
            recover_with_record(&agent, RunState::Starting).await;
            let rec = agent.store().get("web").unwrap();
            assert_eq!((rec.pid, rec.pid_start), (Some(pid), Some(start)));
            assert_eq!(shown(&agent, "web"), "running");
            let events = agent.store().events(0, Some("web"), 100).unwrap();
            assert_eq!(
                events.last().unwrap().message,
                format!("`web` was started just before the agent stopped; re-adopted (pid {pid})")
            );
            assert!(bench.containers.created().is_empty());
        });
    }

    #[test]
    fn a_service_that_was_to_start_is_started_by_recovery() {
        let bench = Bench::new();
        runtime().block_on(async {
            let agent = bench.open();
            install(&bench, &agent, "web", ON_FAILURE, false).await;
            agent
                .store()
                .update("web", None, |r| {
                    r.desired = Desired::Running;
                    r.state = RunState::Backoff;
                })
                .unwrap();
        });
        runtime().block_on(async {
            let agent = bench.open();
            agent.recover().await.unwrap();
            assert_eq!(shown(&agent, "web"), "running");
            assert_eq!(bench.containers.created(), ["web"]);
        });
    }

    #[test]
    fn recovery_collects_the_layers_no_release_names_and_keeps_the_named_ones() {
        let bench = Bench::new();
        left_by_a_dead_agent(&bench);
        let named = bench.stored_layers();
        assert_eq!(named.len(), 1, "{named:?}");
        // What an agent killed between ensuring a layer and naming it in a release leaves
        // (its install rolled back, its `layers` file gone with tmp/): a whole layer that no
        // `layers` file names.
        let orphan = "ab".repeat(32);
        let dir = bench.state_dir().join("layers/sha256").join(&orphan);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/app"), "left behind").unwrap();
        runtime().block_on(async {
            let agent = bench.open();
            agent.recover().await.unwrap();
            assert_eq!(journal(&agent, "web").last().unwrap(), "adopted");
        });
        assert_eq!(bench.stored_layers(), named, "only the named layer stays");
        assert!(!dir.exists());
    }
}
