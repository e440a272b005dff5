//! Updates and rollbacks: a new release is prepared beside the running one, the switch is one
//! database write, and a release that fails within its health window is rolled back by the
//! agent itself.
//!
//! An update moves the record to `updating` with the new release as `next` (holding the larger
//! of both reservations), unpacks it into `releases/HEX` while the old one keeps serving, stops
//! the old container, and then, in one transaction, makes `next` current and keeps the old
//! release as `previous` (the commit point). Until that write the service is on the old
//! release; after it, on the new one. An agent killed before the commit abandons the update at
//! its next start (the old release runs on); one killed after it carries on the health window.
//! A rollback is the same switch towards `previous`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::ServiceDetail;
use nix::sys::signal::Signal;
use state::{now_ms, Desired, Health, Note, Phase, RunState};

use crate::auth::{Principal, ServiceAction};
use crate::capacity::Check;
use crate::lifecycle::{manifest_of, refuse_while_changing};
use crate::{Agent, AgentError};

/// How long a new release must stay up (and become healthy, when it has a check) before the
/// update counts as done, unless the caller gives another window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// Longest health window a caller may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);

/// How often the health window looks at the service.
const PROBATION_TICK: Duration = Duration::from_millis(200);

impl Agent {
    /// `shg update NAME PACKAGE`: switches `name` to the package at `upload` (with its service
    /// manifest `beside` it, for a standard image), keeping the current release for a
    /// rollback. Returns once the new release is started; its health window runs on in the
    /// background.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        self: &Arc<Self>,
        who: &Principal,
        name: &str,
        upload: &Path,
        beside: Option<&str>,
        allow_unsigned: bool,
        window: Duration,
        source: Option<String>,
    ) -> Result<ServiceDetail, AgentError> {
        let staging = self
            .layout
            .tmp()
            .join(format!("update-{}", crate::layout::unique()));
        let result = self
            .update_from(
                who,
                name,
                upload,
                beside,
                &staging,
                allow_unsigned,
                window,
                source,
            )
            .await;
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_from(
        self: &Arc<Self>,
        who: &Principal,
        name: &str,
        upload: &Path,
        beside: Option<&str>,
        staging: &Path,
        allow_unsigned: bool,
        window: Duration,
        source: Option<String>,
    ) -> Result<ServiceDetail, AgentError> {
        self.access(who, name, ServiceAction::Run)?;
        let (package, mut manifest) = self.open_package(upload, staging, beside).await?;
        let bare = manifest::bare_name(name);
        if manifest.name != bare {
            return Err(AgentError::BadPackage(format!(
                "the package is `{}`, not `{bare}`: an update keeps the service's name; install `{}` as a service of its own",
                manifest.name, manifest.name
            )));
        }
        crate::auth::check_install(who, bare, &manifest.provider)?;
        let signer = self.verify_signature(who, &manifest, &package, allow_unsigned)?;
        if !allow_unsigned {
            self.check_catalog(&manifest, &package).await?;
        }
        // Checked under its own name; from here on it goes by the record's key.
        manifest.name = name.to_string();
        let sizes = self.measure_image(&manifest, &package).await?;

        let lock = self.lock_of(name);
        let guard = lock.lock().await;
        let rec = self.store().get(name)?;
        self.ready_for_switch(&rec)?;
        if rec.provider != manifest.provider {
            return Err(AgentError::BadPackage(format!(
                "`{name}` is provider `{}`'s service; a package of provider `{}` cannot update it",
                rec.provider, manifest.provider
            )));
        }
        if rec.image_digest == package.digest {
            return Err(AgentError::Conflict(format!(
                "`{name}` already runs version {} ({}); nothing to update",
                rec.version, rec.image_digest
            )));
        }
        let next = state::Release {
            version: manifest.version.clone(),
            image_digest: package.digest.clone(),
            manifest: package.manifest_toml.clone(),
            signer,
            source,
        };
        let (admitted, pending) = {
            // The new reservation with the service's own given back; from here until the
            // switch the record holds the larger of both.
            let _admission = self.admission.lock.lock().await;
            self.admit(&manifest, rec.priority, Check::Volume, true)?;
            if rec.desired == Desired::Running {
                self.admit(&manifest, rec.priority, Check::Run, true)?;
            }
            let admitted = self.admit_image(&manifest, &sizes, true)?;
            self.check_ports(who, &manifest)?;
            self.store().update(
                name,
                Some(Note::new(
                    "updating",
                    format!(
                        "updating `{name}` from {} to {} ({})",
                        rec.version, manifest.version, package.digest
                    ),
                )),
                |r| {
                    r.phase = Phase::Updating;
                    r.next = Some(next.clone());
                },
            )?;
            // Its layers count for its provider until the new release names them.
            let pending = self.images.hold(name, &manifest.provider, &admitted.sizes);
            (admitted, pending)
        };
        let started = Instant::now();
        let agent = self.clone();
        let (m, p) = (manifest.clone(), package.clone());
        let prepared =
            tokio::task::spawn_blocking(move || agent.prepare_release(&m, &p, &admitted))
                .await
                .map_err(AgentError::Task)
                .and_then(|r| r);
        drop(pending);
        if let Err(e) = prepared {
            self.abandon_update(name, &format!("preparing it failed: {e}"))?;
            return Err(e);
        }
        drop(guard);
        let probation = (rec.desired == Desired::Running).then_some(window);
        self.switch(
            name,
            "updated",
            &format!(
                "`{name}` switched from {} to {}",
                rec.version, manifest.version
            ),
            probation,
            started,
        )
        .await?;
        self.detail(name)
    }

    /// `shg rollback NAME`: back to the release the last update replaced.
    pub async fn rollback(self: &Arc<Self>, name: &str) -> Result<ServiceDetail, AgentError> {
        self.roll_back(name, "by hand", true).await?;
        self.detail(name)
    }

    /// Switches `name` back to its previous release; `why` ends up in the event and the
    /// reason. A rollback by hand is checked by admission like any change of reservation;
    /// the agent's own rollback restores what was admitted before the update.
    async fn roll_back(
        self: &Arc<Self>,
        name: &str,
        why: &str,
        admit: bool,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let (from, to) = {
            let lock = self.lock_of(name);
            let _guard = lock.lock().await;
            let rec = self.store().get(name)?;
            self.ready_for_switch(&rec)?;
            let Some(previous) = rec.previous.clone() else {
                return Err(AgentError::Conflict(format!(
                    "`{name}` has no previous release to go back to: it was not updated since its install"
                )));
            };
            let mut manifest =
                manifest::parse(&previous.manifest, "shg-service.toml").map_err(|source| {
                    AgentError::StoredManifest {
                        which: "previous",
                        name: name.to_string(),
                        source,
                    }
                })?;
            manifest.name = name.to_string();
            let _admission = self.admission.lock.lock().await;
            if admit {
                self.admit(&manifest, rec.priority, Check::Volume, true)?;
                if rec.desired == Desired::Running {
                    self.admit(&manifest, rec.priority, Check::Run, true)?;
                }
            }
            self.store().update(
                name,
                Some(Note::new(
                    "rolling-back",
                    format!(
                        "rolling `{name}` back from {} to {} ({why})",
                        rec.version, previous.version
                    ),
                )),
                |r| {
                    r.phase = Phase::Updating;
                    r.next = Some(previous.clone());
                },
            )?;
            (rec.version, previous.version)
        };
        self.switch(
            name,
            "rolled-back",
            &format!("`{name}` rolled back from {from} to {to} {why}"),
            None,
            started,
        )
        .await
    }

    fn ready_for_switch(&self, rec: &state::ServiceRecord) -> Result<(), AgentError> {
        let name = &rec.name;
        refuse_while_changing(rec)?;
        match rec.phase {
            Phase::Removing => Err(AgentError::Conflict(format!(
                "`{name}` is being removed; wait for that to finish"
            ))),
            _ if rec.state == RunState::Stopping => Err(AgentError::Conflict(format!(
                "`{name}` is stopping; try again once `shg ps` shows it stopped"
            ))),
            _ => Ok(()),
        }
    }

    /// The update in progress did not switch: the service stays on its current release.
    pub(crate) fn abandon_update(&self, name: &str, why: &str) -> Result<(), AgentError> {
        let rec = self.store().get(name)?;
        let Some(next) = rec.next.clone() else {
            return Ok(());
        };
        self.store().update(
            name,
            Some(Note::new(
                "update-abandoned",
                format!(
                    "`{name}` stays on {}: the switch to {} was abandoned ({why})",
                    rec.version, next.version
                ),
            )),
            |r| {
                r.phase = Phase::Installed;
                r.next = None;
            },
        )?;
        self.prune_releases(name);
        Ok(())
    }

    /// Stops the current release, makes `next` current in one write, and starts it when the
    /// service is meant to run. With `probation`, the new release has that long to prove
    /// itself before the agent rolls it back.
    async fn switch(
        self: &Arc<Self>,
        name: &str,
        kind: &'static str,
        message: &str,
        probation: Option<Duration>,
        started: Instant,
    ) -> Result<(), AgentError> {
        if let Err(e) = self.halt(name).await {
            self.abandon_update(name, &format!("the running release did not stop: {e}"))?;
            return Err(e);
        }
        let rec = self.store().update(
            name,
            Some(Note::new(
                kind,
                format!("{message} in {:.1}s", started.elapsed().as_secs_f64()),
            )),
            |r| {
                if let Some(next) = r.next.take() {
                    let old = r.release();
                    r.set_release(next);
                    r.previous = Some(old);
                }
                r.phase = Phase::Installed;
                r.probation_until_ms =
                    probation.map(|w| now_ms() + w.as_millis().min(u64::MAX as u128) as u64);
                r.failures = 0;
                if r.desired == Desired::Running {
                    r.state = RunState::Created;
                }
            },
        )?;
        self.prune_releases(name);
        let agent = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || agent.refresh_network())
            .await
            .map_err(AgentError::Task)
            .and_then(|r| r)
        {
            tracing::warn!(service = %name, "network refresh after the switch failed: {e}");
        }
        if rec.desired == Desired::Running {
            let lock = self.lock_of(name);
            let _guard = lock.lock().await;
            if let Err(e) = self.launch(name).await {
                // The health window sees the failed start and rolls back.
                tracing::warn!(service = %name, "the new release did not start: {e}");
            }
        }
        if probation.is_some() {
            self.spawn_probation(name);
        }
        Ok(())
    }

    /// Stops the service's container without changing what the household wants: the record
    /// is `updating`, so the exit is not answered with a restart.
    async fn halt(self: &Arc<Self>, name: &str) -> Result<(), AgentError> {
        let (pid, fd, timeout) = {
            let lock = self.lock_of(name);
            let _guard = lock.lock().await;
            let rec = self.store().get(name)?;
            let Some(pid) = rec.pid else {
                return Ok(());
            };
            self.store()
                .update(name, None, |r| r.state = RunState::Stopping)?;
            let fd = self.host.containers.open_verified(pid, rec.pid_start);
            if let Some(fd) = &fd {
                fd.signal(Signal::SIGTERM);
            }
            (pid, fd, manifest_of(&rec)?.run.stop_timeout)
        };
        if let Some(fd) = fd {
            self.end_process(name, pid, &*fd, timeout).await?;
        }
        self.on_exit(name, pid).await
    }

    /// Watches a freshly switched release until its health window closes.
    pub(crate) fn spawn_probation(self: &Arc<Self>, name: &str) {
        let agent = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            if let Err(e) = agent.probation(&name).await {
                tracing::warn!(service = %name, "health window: {e}");
            }
        });
    }

    async fn probation(self: &Arc<Self>, name: &str) -> Result<(), AgentError> {
        let Some(rec) = self.store().find(name)? else {
            return Ok(());
        };
        let Some(until) = rec.probation_until_ms else {
            return Ok(());
        };
        let digest = rec.image_digest.clone();
        let restarts = rec.restarts;
        let has_health = manifest_of(&rec)?.health.is_some();
        let window_s = until.saturating_sub(now_ms()) as f64 / 1000.0;
        loop {
            tokio::time::sleep(PROBATION_TICK).await;
            let Some(rec) = self.store().find(name)? else {
                return Ok(());
            };
            // Another update, a rollback, or the window already judged.
            if rec.image_digest != digest || rec.probation_until_ms.is_none() {
                return Ok(());
            }
            if rec.phase != Phase::Installed {
                continue;
            }
            if rec.desired == Desired::Stopped {
                // The household stopped it: nothing left to judge.
                self.store()
                    .update(name, None, |r| r.probation_until_ms = None)?;
                return Ok(());
            }
            let failed = if rec.restarts > restarts
                || matches!(
                    rec.state,
                    RunState::Exited | RunState::Backoff | RunState::CrashLoop | RunState::Failed
                ) {
                Some(
                    rec.reason
                        .clone()
                        .map(|r| format!("it stopped: {r}"))
                        .unwrap_or_else(|| "it stopped".into()),
                )
            } else if rec.health == Health::Unhealthy {
                Some("its health check failed".into())
            } else if now_ms() >= until && has_health && rec.health != Health::Healthy {
                Some(format!("it was not healthy within {window_s:.0}s"))
            } else {
                None
            };
            if let Some(why) = failed {
                let why = format!(
                    "by itself: version {} failed within its health window ({why})",
                    rec.version
                );
                self.store()
                    .update(name, None, |r| r.probation_until_ms = None)?;
                return self.roll_back(name, &why, false).await;
            }
            if now_ms() >= until {
                let kept = rec
                    .previous
                    .as_ref()
                    .map(|p| format!("; {} is kept for `shg rollback {name}`", p.version))
                    .unwrap_or_default();
                self.store().update(
                    name,
                    Some(Note::new(
                        "update-done",
                        format!(
                            "`{name}` {} stayed up{} through its {window_s:.0}s health window{kept}",
                            rec.version,
                            if has_health { " and healthy" } else { "" }
                        ),
                    )),
                    |r| r.probation_until_ms = None,
                )?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Updates and rollbacks on the fake host: which release runs, what is kept on disk, and
    //! the health window's own rollback.

    use std::time::Duration;

    use nix::sys::signal::Signal;
    use state::RunState;

    use crate::host::fake::Bench;
    use crate::{Agent, InstallOptions, Principal};

    const SMALL: &str = "[resources]\nmemory = { reserve = \"64MiB\" }\n\
        storage = { reserve = \"32MiB\" }\n[restart]\npolicy = \"on-failure\"\n";

    fn journal(agent: &Agent, name: &str) -> Vec<String> {
        let events = agent.store().events(0, Some(name), 1000).unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    fn releases(bench: &Bench) -> usize {
        let dir = bench.state_dir().join("services/web/releases");
        std::fs::read_dir(dir).unwrap().count()
    }

    /// `web` 1.0.0 installed and running, and the package of 2.0.0.
    async fn running_v1(bench: &Bench) -> (std::sync::Arc<Agent>, std::path::PathBuf) {
        let agent = bench.open();
        let opts = InstallOptions {
            start: true,
            allow_unsigned: true,
            ..InstallOptions::default()
        };
        let v1 = bench.package("web", "1.0.0", SMALL);
        agent
            .install(&Principal::Operator, &v1, &opts)
            .await
            .unwrap();
        (agent, bench.package("web", "2.0.0", SMALL))
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_switches_releases_keeps_the_previous_and_rolls_back_by_hand() {
        let bench = Bench::new();
        let (agent, v2) = running_v1(&bench).await;
        let old = bench.containers.pid("web").unwrap();

        // The window is judged on the wall clock, which the paused test clock does not move:
        // a short one.
        let window = Duration::from_millis(30);
        let detail = agent
            .update(&Principal::Operator, "web", &v2, None, true, window, None)
            .await
            .unwrap();
        assert_eq!(detail.summary.version, "2.0.0");
        assert_eq!(detail.summary.state, "running");
        assert_eq!(detail.previous_version.as_deref(), Some("1.0.0"));
        assert_eq!(bench.containers.signals(), [(old, Signal::SIGTERM)]);
        assert_ne!(bench.containers.pid("web"), Some(old));
        assert_eq!(releases(&bench), 2, "the current and the previous release");

        for _ in 0..1000 {
            if journal(&agent, "web").last().unwrap() == "update-done" {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(journal(&agent, "web").last().unwrap(), "update-done");
        assert!(agent
            .store()
            .get("web")
            .unwrap()
            .probation_until_ms
            .is_none());

        let detail = agent.rollback("web").await.unwrap();
        assert_eq!(detail.summary.version, "1.0.0");
        assert_eq!(detail.summary.state, "running");
        assert_eq!(detail.previous_version.as_deref(), Some("2.0.0"));
        assert_eq!(releases(&bench), 2);
        let journal = journal(&agent, "web");
        for kind in [
            "updating",
            "updated",
            "update-done",
            "rolling-back",
            "rolled-back",
        ] {
            assert!(journal.contains(&kind.to_string()), "{kind}: {journal:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_fails_in_its_health_window_is_rolled_back_by_the_agent() {
        let bench = Bench::new();
        let (agent, v2) = running_v1(&bench).await;
        agent
            .update(
                &Principal::Operator,
                "web",
                &v2,
                None,
                true,
                Duration::from_secs(30),
                None,
            )
            .await
            .unwrap();
        let new = bench.containers.pid("web").unwrap();
        bench.containers.exit(new, 1);

        for _ in 0..1000 {
            let rec = agent.store().get("web").unwrap();
            if rec.version == "1.0.0" && rec.state == RunState::Running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rec = agent.store().get("web").unwrap();
        assert_eq!(
            (rec.version.as_str(), rec.state),
            ("1.0.0", RunState::Running)
        );
        let events = agent.store().events(0, Some("web"), 100).unwrap();
        let back = events.iter().find(|e| e.kind == "rolled-back").unwrap();
        assert!(
            back.message
                .contains("by itself: version 2.0.0 failed within its health window"),
            "{}",
            back.message
        );
    }
}
