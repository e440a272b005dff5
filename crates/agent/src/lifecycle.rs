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
use runtime::process;
use state::{now_ms, Desired, Health, Note, Phase, RunState, ServiceRecord};

use crate::capacity::Check;
use crate::pidfd::{self, PidFd};
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
        name: rec.name.clone(),
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

pub(crate) fn manifest_of(rec: &ServiceRecord) -> Result<manifest::Manifest, AgentError> {
    manifest::parse(&rec.manifest, "shg-service.toml")
        .map_err(|e| AgentError::Internal(format!("stored manifest of `{}`: {e}", rec.name)))
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
            Phase::Installing => tokio::task::block_in_place(|| {
                self.rollback_install(name, "the agent stopped during the install")
            }),
            Phase::Removing => tokio::task::block_in_place(|| self.finish_remove(name)),
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
                if process::is_alive(&self.cfg.proc_root, pid)
                    && process::start_time(&self.cfg.proc_root, pid) == rec.pid_start =>
            {
                self.adopt(&rec, pid, "kept running while the agent was down")
            }
            Some(pid) => self.on_exit(name, pid).await,
            None => {
                // The agent may have died between creating a container and recording it.
                let found = runtime::container::load(name, &self.layout.containers())
                    .and_then(|c| c.pid())
                    .map(|p| p.as_raw())
                    .filter(|&p| process::is_alive(&self.cfg.proc_root, p));
                if let Some(pid) = found {
                    let start = process::start_time(&self.cfg.proc_root, pid);
                    let rec = self.store().update(name, None, |r| {
                        r.pid = Some(pid);
                        r.pid_start = start;
                        r.state = RunState::Running;
                        r.started_at_ms = Some(now_ms());
                    })?;
                    return self.adopt(&rec, pid, "was started just before the agent stopped");
                }
                let _ = runtime::container::remove_stale(name, &self.layout.containers());
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
        tokio::task::block_in_place(|| self.shape_service(rec));
        self.watch(name, pid);
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
        let mut cmd = tokio::process::Command::new(&self.cfg.shg_binary);
        cmd.arg("runtime")
            .arg("exec")
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
            if process::is_alive(&self.cfg.proc_root, pid) {
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
        } else {
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
        let sl = self.layout.service(name);
        // The bundle is written at every start, so a newer agent's hardening applies to
        // services installed before it.
        let rec = self.store().get(name)?;
        let manifest = manifest_of(&rec)?;
        // After a reboot, or if an operator unmounted it by hand.
        self.mount_volume(name)?;
        self.mount_rootfs(name, &rec.image_digest)?;
        let shares = self.admission.gateway.available().cpu.max(1) * 1024 / 1000;
        if let Err(e) = self
            .cgroups
            .set_parent_weight(&self.cfg.cgroup_parent, shares)
        {
            tracing::warn!("cannot weight the services' parent cgroup: {e}");
        }
        runtime::spec::write_bundle(
            &sl.bundle(),
            &self.service_spec(&manifest, &rec.image_digest, rec.priority),
        )?;
        let attach = match tokio::task::block_in_place(|| self.attach_for(&rec)) {
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
        // Recorded before the container exists: if the agent dies now, recovery looks for a
        // container to adopt instead of assuming there is none.
        self.store()
            .update(name, None, |r| r.state = RunState::Starting)?;
        let mut helper = tokio::process::Command::new(&self.cfg.shg_binary);
        helper
            .arg("runtime")
            .arg("create")
            .arg(name)
            .arg("--state-root")
            .arg(self.layout.containers())
            .arg("--bundle")
            .arg(sl.bundle())
            .arg("--log-dir")
            .arg(sl.logs())
            .arg("--status-file")
            .arg(sl.status());
        if let Some(attach) = &attach {
            helper.arg("--net").arg(attach.to_arg());
        }
        let output = helper
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| AgentError::Internal(format!("cannot run the runtime helper: {e}")))?;
        let pid = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<i32>()
            .ok();
        let Some(pid) = pid.filter(|_| output.status.success()) else {
            let why = String::from_utf8_lossy(&output.stderr).trim().to_string();
            let reason = format!("cannot start `{name}`: {why}");
            self.store()
                .update(name, Some(Note::new("start-failed", reason.clone())), |r| {
                    r.state = RunState::Failed;
                    r.pid = None;
                    r.reason = Some(reason.clone());
                })?;
            return Err(AgentError::StartFailed(reason));
        };
        let pid_start = process::start_time(&self.cfg.proc_root, pid);
        tokio::task::block_in_place(|| self.shape_service(&rec));
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
        self.watch(name, pid);
        Ok(rec)
    }

    /// Watches `pid` (the service's init) until it exits, and runs its health checks meanwhile.
    pub(crate) fn watch(self: &Arc<Self>, name: &str, pid: i32) {
        let agent = self.clone();
        let owned = name.to_string();
        tokio::spawn(async move {
            match PidFd::open(pid) {
                Ok(fd) => fd.exited().await,
                // Already gone.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                // No pidfd (descriptor limit, old kernel): watch /proc instead. A failure to
                // watch must never pass for an exit.
                Err(e) => {
                    tracing::warn!(service = %owned, "no pidfd ({e}); polling /proc instead");
                    while runtime::process::is_alive(&agent.cfg.proc_root, pid) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            if let Err(e) = agent.on_exit(&owned, pid).await {
                tracing::error!(service = %owned, "handling the exit failed: {e}");
            }
        });
        crate::health::spawn(self.clone(), name.to_string(), pid);
    }

    /// Records the end of `pid` and applies the restart policy. Idempotent: a second call for
    /// the same PID does nothing.
    pub(crate) async fn on_exit(self: &Arc<Self>, name: &str, pid: i32) -> Result<(), AgentError> {
        // Reap first, whatever the record says: an init that is no longer the service's (a
        // start raced a stop) must not stay a zombie.
        pidfd::reap(pid);
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let Some(rec) = self.store().find(name)? else {
            return Ok(());
        };
        if rec.pid != Some(pid) {
            return Ok(());
        }
        let sl = self.layout.service(name);
        let status = runtime::init::read_status(&sl.status());
        let limit = manifest_of(&rec)?.resources.memory.limit;
        // Read from the cgroup, so before the container (and its cgroup) is deleted.
        let ooms = self.report_final_ooms(name, pid, limit);
        // Deleting the container also removes its cgroup; it never forks.
        if let Err(e) = runtime::container::remove_stale(name, &self.layout.containers()) {
            tracing::warn!(service = %name, "cannot delete the container: {e}");
        }
        tokio::task::block_in_place(|| self.unshape_service(&rec));
        let code = status.as_ref().map(|s| s.code);
        let mut what = describe_exit(&status);
        if ooms > 0 && status.as_ref().is_some_and(|s| s.signal == Some(9)) {
            what.push_str(" by the kernel: out of memory");
        }
        let ran_ms = now_ms().saturating_sub(rec.started_at_ms.unwrap_or(0));

        // An update's switch stops the running release on purpose: no restart.
        if rec.desired == Desired::Stopped || rec.phase == Phase::Updating {
            self.store().update(
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
            )?;
            return Ok(());
        }
        let policy = manifest_of(&rec)?.restart.policy;
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
            self.store().update(
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
            )?;
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
        self.store().update(
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
        )?;
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
            let fd = PidFd::open_verified(&self.cfg.proc_root, pid, rec.pid_start);
            if let Some(fd) = &fd {
                fd.signal(Signal::SIGTERM);
            }
            (pid, fd)
        };
        if let Some(fd) = fd {
            let timeout = manifest_of(&self.store().get(name)?)?.run.stop_timeout;
            self.end_process(name, pid, &fd, timeout).await?;
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
        fd: &PidFd,
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
    async fn gone(&self, fd: &PidFd, pid: i32, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if tokio::time::timeout(Duration::from_millis(100), fd.exited())
                .await
                .is_ok()
                || !process::is_alive(&self.cfg.proc_root, pid)
            {
                return true;
            }
            if std::time::Instant::now() >= deadline {
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
        self.cgroups.set_weight(parent, name, shares)?;
        for pid in self.cgroups.procs(parent, name)? {
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
    /// removals, re-adopts services that kept running, and handles those that ended meanwhile.
    pub async fn recover(self: &Arc<Self>) -> Result<(), AgentError> {
        // Uploads and unpacked-but-unregistered installs of a dead agent are garbage (a root
        // it mounted to check a command first comes off).
        for mount in runtime::volume::mounts_below(&self.layout.tmp()).unwrap_or_default() {
            let _ = runtime::overlay::unmount(&mount);
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
        if let Err(e) = tokio::task::block_in_place(|| self.refresh_network()) {
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
        Ok(())
    }
}
