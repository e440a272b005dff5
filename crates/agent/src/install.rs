//! Installing and removing services, as recorded transitions.
//!
//! An install is registered (`installing`) before anything is unpacked, unpacks into
//! `tmp/NAME.partial`, and is renamed into `services/NAME` before it is marked `installed`.
//! A removal is marked `removing` before anything is deleted. So after a crash at any point
//! the next start knows what to do: roll the install back, finish the removal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::{ServiceDetail, ServicePaths};
use manifest::Manifest;
use runtime::spec::{self, ServiceSpec};
use state::{Desired, Note, Phase, ServiceRecord};

use crate::auth::Principal;
use crate::capacity::Check;
use crate::images::Admitted;
use crate::layout::unique;
use crate::lifecycle::{manifest_of, refuse_while_changing, summary};
use crate::{Agent, AgentError};

/// How to install a package.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Start it once installed.
    pub start: bool,
    /// Services the household agreed to stop to make room.
    pub stop: Vec<String>,
    /// The operator's override for local development: no trusted signature needed.
    pub allow_unsigned: bool,
    /// The registry reference the package was pulled from, kept for `shg update NAME VERSION`.
    pub source: Option<String>,
    /// The service manifest given beside the image (`--manifest FILE`): how a standard image
    /// without the `org.shg.manifest` label installs.
    pub manifest: Option<String>,
}

impl Agent {
    /// Installs the package at `upload` (an OCI layout tar), then starts it if `opts.start`.
    /// The services in `opts.stop` (the household's confirmation of the agent's proposal) are
    /// stopped first to make room; a refusal stops nothing.
    pub async fn install(
        self: &Arc<Self>,
        who: &Principal,
        upload: &Path,
        opts: &InstallOptions,
    ) -> Result<ServiceDetail, AgentError> {
        let staging = self.layout.tmp().join(format!("open-{}", unique()));
        let result = self.install_from(who, upload, &staging, opts).await;
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    async fn install_from(
        self: &Arc<Self>,
        who: &Principal,
        upload: &Path,
        staging: &Path,
        opts: &InstallOptions,
    ) -> Result<ServiceDetail, AgentError> {
        let (start, stop) = (opts.start, &opts.stop[..]);
        let (package, mut manifest) = self
            .open_package(upload, staging, opts.manifest.as_deref())
            .await?;
        let bare = manifest.name.clone();
        crate::auth::check_install(who, &bare, &manifest.provider)?;
        let signer = self.verify_signature(who, &manifest, &package, opts.allow_unsigned)?;
        if !opts.allow_unsigned {
            self.check_catalog(&manifest, &package).await?;
        }
        let sizes = self.measure_image(&manifest, &package).await?;

        let lock = self.lock_of(&bare);
        let _guard = lock.lock().await;
        // From the admission check until the record holds the reservation.
        let admission = self.admission.lock.lock().await;
        // From here on the service goes by its key (its name unless another provider's
        // service holds that name), as every record-derived manifest does.
        let name = self.new_key(&manifest.provider, &bare)?;
        manifest.name = name.clone();
        let prio = state::DEFAULT_PRIORITY;
        self.admit(&manifest, prio, Check::Volume, true)?;
        let admitted = self.admit_image(&manifest, &sizes, true)?;
        self.check_ports(who, &manifest)?;
        if start {
            self.check_stoppable(&name, stop)?;
            self.admit_beside(&manifest, prio, Check::Run, true, stop)?;
            self.give_up_reservations(stop)?;
        }
        let rec = ServiceRecord::new(
            &name,
            &manifest.provider,
            &manifest.version,
            &package.digest,
            &package.manifest_toml,
        );
        let mut rec = rec;
        rec.signer = signer;
        rec.source = opts.source.clone();
        if start {
            rec.desired = Desired::Running;
        }
        self.store().insert(
            &rec,
            Note::new(
                "installing",
                format!(
                    "installing `{bare}` {} from provider `{}` ({})",
                    manifest.version, manifest.provider, package.digest
                ),
            ),
        )?;

        // Its layers count for its provider until its release names them.
        let pending = self.images.hold(&name, &manifest.provider, &admitted.sizes);
        drop(admission);
        let agent = self.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            agent.prepare(&manifest, &package, &admitted)?;
            // Its address, its firewall paths, and the hosts files of those importing it.
            agent.refresh_network()
        })
        .await
        .map_err(AgentError::Task)
        .and_then(|r| r);
        drop(pending);
        if let Err(e) = prepared {
            // The install's own error is what the user needs; a failed clean-up is logged.
            if let Err(cleanup) =
                crate::host::blocking(|| self.rollback_install(&name, &e.to_string()))
            {
                tracing::error!(service = %name, "rolling back the install failed: {cleanup}");
            }
            return Err(e);
        }
        let desired = if start {
            Desired::Running
        } else {
            Desired::Stopped
        };
        self.store().update(
            &name,
            Some(Note::new("installed", format!("`{name}` installed"))),
            |r| {
                r.phase = Phase::Installed;
                r.desired = desired;
                r.state = state::RunState::Created;
            },
        )?;
        if start {
            self.stop_to_make_room(&name, stop).await?;
            // A start failure leaves the service installed and says why in its state.
            if let Err(e) = self.launch(&name).await {
                tracing::warn!(service = %name, "installed but not started: {e}");
            }
        }
        drop(_guard);
        self.detail(&name)
    }

    /// Pulls `reference` from its registry into the agent's blob cache (`STATE/cache`), then
    /// installs it like an upload; the package file made from the blobs is deleted after.
    pub async fn pull_and_install(
        self: &Arc<Self>,
        who: &Principal,
        reference: &str,
        opts: &InstallOptions,
    ) -> Result<ServiceDetail, AgentError> {
        crate::auth::check_gateway(who, crate::auth::GatewayAction::Install)?;
        let (tar, source) = self.pull(reference, None).await?;
        let opts = InstallOptions {
            source: Some(source),
            ..opts.clone()
        };
        let result = self.install(who, &tar, &opts).await;
        let _ = std::fs::remove_file(&tar);
        result
    }

    /// Pulls `reference` from its registry into the agent's blob cache (`STATE/cache`) and
    /// makes a package file of it in the agent's scratch directory: the caller installs or
    /// updates from it, then deletes it. Returns the file and the reference as parsed.
    ///
    /// With `tls`, the registry is reached over HTTPS with those settings (its roots, a client
    /// certificate) whatever its address: how the gateway pulls from its fleet controller.
    pub async fn pull(
        &self,
        reference: &str,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<(PathBuf, String), AgentError> {
        let parsed = registry::Reference::parse(reference).ok_or_else(|| {
            AgentError::BadRequest(format!(
                "`{reference}` is not an image reference: write REGISTRY/REPOSITORY[:TAG|@sha256:HEX]"
            ))
        })?;
        let tar = self.layout.tmp().join(format!("pull-{}.tar", unique()));
        let cache = self.layout.root.join("cache");
        let pulled = match tls {
            Some(tls) => registry::pull_with_tls(&parsed, tls, &cache, &tar, &mut |_| {}).await,
            None => registry::pull(&parsed, &cache, &tar, &mut |_| {}).await,
        }
        .map_err(|e| AgentError::BadPackage(format!("cannot pull: {e}")));
        let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
        let result = match pulled {
            Ok(_) if size > self.cfg.max_package => Err(AgentError::BadPackage(format!(
                "{reference} is larger than the {} MiB the gateway accepts",
                self.cfg.max_package >> 20
            ))),
            Ok(_) => return Ok((tar, parsed.to_string())),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tar);
        result
    }

    /// `shg install --dry-run`: verifies the package and says whether it would be admitted,
    /// changing nothing.
    pub async fn check_install(
        self: &Arc<Self>,
        who: &Principal,
        upload: &Path,
        allow_unsigned: bool,
        beside: Option<&str>,
    ) -> Result<api::Verdict, AgentError> {
        let staging = self.layout.tmp().join(format!("check-{}", unique()));
        let result = self
            .check_install_from(who, upload, &staging, allow_unsigned, beside)
            .await;
        let _ = std::fs::remove_dir_all(&staging);
        result
    }

    /// [`Agent::check_install`] with the package's blobs in `staging`, where the layers are
    /// measured from.
    async fn check_install_from(
        self: &Arc<Self>,
        who: &Principal,
        upload: &Path,
        staging: &Path,
        allow_unsigned: bool,
        beside: Option<&str>,
    ) -> Result<api::Verdict, AgentError> {
        let (package, mut manifest) = self.open_package(upload, staging, beside).await?;
        crate::auth::check_install(who, &manifest.name, &manifest.provider)?;
        self.verify_signature(who, &manifest, &package, allow_unsigned)?;
        if !allow_unsigned {
            self.check_catalog(&manifest, &package).await?;
        }
        let bare = manifest.name.clone();
        manifest.name = self.new_key(&manifest.provider, &bare)?;
        let sizes = self.measure_image(&manifest, &package).await?;
        self.admit(&manifest, state::DEFAULT_PRIORITY, Check::Volume, false)?;
        self.admit_image(&manifest, &sizes, false)?;
        self.check_ports(who, &manifest)?;
        self.admit(&manifest, state::DEFAULT_PRIORITY, Check::Run, false)?;
        Ok(api::Verdict {
            message: format!(
                "`{bare}` {} would be admitted: its reservation fits",
                manifest.version
            ),
            service: bare,
            admitted: true,
        })
    }

    /// Unpacks and lays out a service in `tmp/NAME.partial`, then renames it into place.
    fn prepare(
        &self,
        manifest: &Manifest,
        package: &image::Package,
        admitted: &Admitted,
    ) -> Result<(), AgentError> {
        let name = &manifest.name;
        let partial = self.layout.partial(name);
        let _ = std::fs::remove_dir_all(&partial);
        let release = partial
            .join("releases")
            .join(crate::layout::release_id(&package.digest));
        self.unpack_release(manifest, package, &release, admitted)?;

        let (uid, gid) = manifest.run.user.map(|u| (u.uid, u.gid)).unwrap_or((0, 0));
        for dir in ["data", "logs", "bundle"] {
            let path = partial.join(dir);
            std::fs::create_dir_all(&path).map_err(|e| AgentError::io(&path, e))?;
        }
        let storage = &manifest.resources.storage;
        self.host.mounts.create_volume(
            &partial.join("volume.img"),
            &partial.join("data"),
            runtime::volume::size_for(storage.reserve, storage.limit),
            uid,
            gid,
        )?;
        // Checked here, so a malformed bundle fails before anything is in place…
        let spec = self.service_spec(manifest, &package.digest, state::DEFAULT_PRIORITY);
        spec::write_bundle(&partial.join("bundle"), &spec)?;
        let service = self.layout.service(name);
        if service.dir.exists() {
            // Left by a removal that did not finish before its record was gone.
            std::fs::remove_dir_all(&service.dir).map_err(|e| AgentError::io(&service.dir, e))?;
        }
        std::fs::rename(&partial, &service.dir).map_err(|e| AgentError::io(&service.dir, e))?;
        // …and written again now that the release is where its root is looked for, so the
        // bundle of a service installed without starting names its release's root (before,
        // it named the old single `rootfs` and `runc run` of it failed).
        let spec = self.service_spec(manifest, &package.digest, state::DEFAULT_PRIORITY);
        spec::write_bundle(&service.bundle(), &spec)?;
        self.mount_volume(name)
    }

    /// The container spec of `m`'s release `digest`.
    pub(crate) fn service_spec(&self, m: &Manifest, digest: &str, priority: i32) -> ServiceSpec {
        let sl = self.layout.service(&m.name);
        let dir = &sl.dir;
        let (uid, gid) = m.run.user.map(|u| (u.uid, u.gid)).unwrap_or((0, 0));
        ServiceSpec {
            name: m.name.clone(),
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            command: m.run.command.clone(),
            env: m.run.env.clone(),
            uid,
            gid,
            workdir: m.run.workdir.clone().unwrap_or_else(|| "/".into()),
            rootfs: sl.rootfs(digest),
            data_dir: dir.join("data"),
            init_binary: self.cfg.init_binary.clone(),
            tmp_size: self.cfg.tmp_size,
            pids_limit: m.resources.pids.limit,
            memory_limit: m.resources.memory.limit,
            cpu_limit: m.resources.cpu.limit,
            cpu_reserve: m.resources.cpu.reserve,
            memory_reserve: m.resources.memory.reserve,
            priority,
            log_segment: self.cfg.log_segment,
            cgroup_root: self.cfg.cgroup_root.clone(),
            cgroup_view: self.layout.cgroup_view(),
            io_weight: spec::io_weight_supported(&self.cfg.cgroup_root)
                .then(|| spec::io_weight(priority)),
            etc_files: self.etc_files(&m.name),
        }
    }

    /// Undoes a half-done install: files, container and record.
    pub(crate) fn rollback_install(&self, name: &str, why: &str) -> Result<(), AgentError> {
        let _ = self.host.containers.delete(name);
        self.unmount_volumes(name)?;
        for dir in [self.layout.partial(name), self.layout.service(name).dir] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
            }
        }
        self.store().delete(
            name,
            Note::new(
                "install-failed",
                format!("install of `{name}` rolled back: {why}"),
            ),
        )?;
        if let Err(e) = self.refresh_network() {
            tracing::warn!("cannot update the service network after undoing `{name}`: {e}");
        }
        // The layers it ensured before it failed (one refused mid-package leaves those
        // before it) are no release's now.
        self.collect_layers();
        Ok(())
    }

    /// `shg remove`: marks the service `removing` (so nothing starts it again), stops it, then
    /// deletes its container, files and record.
    pub async fn remove(self: &Arc<Self>, name: &str) -> Result<(), AgentError> {
        let rec = {
            let lock = self.lock_of(name);
            let _guard = lock.lock().await;
            let rec = self.store().get(name)?;
            refuse_while_changing(&rec)?;
            self.store().update(
                name,
                Some(Note::new("removing", format!("removing `{name}`"))),
                |r| {
                    r.phase = Phase::Removing;
                    r.desired = Desired::Stopped;
                },
            )?
        };
        if rec.pid.is_some() {
            self.stop(name).await?;
        }
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        crate::host::blocking(|| self.finish_remove(name))
    }

    pub(crate) fn finish_remove(&self, name: &str) -> Result<(), AgentError> {
        self.host.containers.delete(name)?;
        self.unmount_volumes(name)?;
        for dir in [self.layout.service(name).dir, self.layout.partial(name)] {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
            }
        }
        self.store().delete(
            name,
            Note::new("removed", format!("`{name}` removed with its data")),
        )?;
        if let Err(e) = self.refresh_network() {
            tracing::warn!("cannot update the service network after removing `{name}`: {e}");
        }
        self.collect_layers();
        // Fails harmlessly while another service's cgroup is under it.
        self.host.cgroups.remove_parent(&self.cfg.cgroup_parent);
        Ok(())
    }

    pub fn detail(&self, name: &str) -> Result<ServiceDetail, AgentError> {
        let rec = self.store().get(name)?;
        let manifest = manifest_of(&rec)?;
        let events = self.store().recent_events(name, 20)?;
        let sl = self.layout.service(name);
        let show = |p: PathBuf| p.display().to_string();
        Ok(ServiceDetail {
            summary: summary(&rec),
            description: manifest.description.clone(),
            image_digest: rec.image_digest.clone(),
            installed_at_ms: rec.installed_at_ms,
            manifest: serde_json::to_value(&manifest).unwrap_or_default(),
            address: self.address_of(&rec),
            previous_version: rec.previous.as_ref().map(|p| p.version.clone()),
            source: rec.source.clone(),
            paths: ServicePaths {
                rootfs: show(sl.rootfs(&rec.image_digest)),
                data: show(sl.data()),
                bundle: show(sl.bundle()),
                logs: show(sl.logs()),
            },
            events: events.into_iter().map(crate::event_view).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Install, removal and their recovery on the fake host: what is recorded, journaled,
    //! reserved and left on disk.

    use state::Phase;

    use crate::host::fake::Bench;
    use crate::{AgentError, InstallOptions, Principal};

    const SMALL: &str = "[resources]\nmemory = { reserve = \"64MiB\" }\n\
        storage = { reserve = \"32MiB\" }\n";

    fn unsigned(start: bool) -> InstallOptions {
        InstallOptions {
            start,
            allow_unsigned: true,
            ..InstallOptions::default()
        }
    }

    fn journal(agent: &crate::Agent, name: &str) -> Vec<String> {
        let events = agent.store().events(0, Some(name), 1000).unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_missing_from_the_image_rolls_the_install_back() {
        let bench = Bench::new();
        let agent = bench.open();
        let package = bench.package("web", "1.0.0", SMALL);
        // The same package, whose manifest names a command the image lacks.
        let broken = bench.dir.path().join("src-web-1.0.0/shg-service.toml");
        let text = std::fs::read_to_string(&broken).unwrap();
        std::fs::write(&broken, text.replace("/bin/app", "/bin/nope")).unwrap();
        image::pack(&bench.dir.path().join("src-web-1.0.0"), &package).unwrap();

        let err = agent
            .install(&Principal::Operator, &package, &unsigned(true))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::BadManifest(_)), "{err}");
        assert!(
            err.to_string()
                .contains("`/bin/nope` does not exist in the image"),
            "{err}"
        );
        assert!(agent.store().find("web").unwrap().is_none());
        assert_eq!(journal(&agent, "web"), ["installing", "install-failed"]);
        assert!(!bench.state_dir().join("services/web").exists());
        assert!(!bench.state_dir().join("tmp/web.partial").exists());
        assert!(bench.mounts.mounted_below(&bench.state_dir()).is_empty());
        assert!(bench.containers.created().is_empty());
        let view = agent.capacity().unwrap();
        assert_eq!(view.reserved["storage"], 0);
        // The layers it ensured are no release's: the rollback collects them.
        assert!(bench.stored_layers().is_empty());
    }

    /// Regression: the bundle of a service installed without starting named the old single
    /// `services/NAME/rootfs`, which releases no longer have, so `runc run` of it failed.
    #[tokio::test(start_paused = true)]
    async fn the_bundle_of_a_service_installed_without_starting_names_its_release_root() {
        let bench = Bench::new();
        let agent = bench.open();
        let package = bench.package("web", "1.0.0", SMALL);
        agent
            .install(&Principal::Operator, &package, &unsigned(false))
            .await
            .unwrap();
        let config = bench.state_dir().join("services/web/bundle/config.json");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        let root = config["root"]["path"].as_str().unwrap();
        assert!(
            root.contains("/services/web/releases/") && root.ends_with("/rootfs"),
            "{root}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_install_that_does_not_fit_is_refused_before_anything_is_written() {
        let bench = Bench::new();
        let agent = bench.open();
        let package = bench.package(
            "nas",
            "1.0.0",
            "[resources]\nstorage = { reserve = \"2GiB\" }\n",
        );
        let err = agent
            .install(&Principal::Operator, &package, &unsigned(false))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Refused(_)), "{err}");
        assert!(agent.store().find("nas").unwrap().is_none());
        assert_eq!(journal(&agent, "nas"), ["admission-refused"]);
        assert!(!bench.state_dir().join("services/nas").exists());
        assert!(bench.mounts.log().is_empty(), "nothing unpacked or mounted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_removal_stops_the_service_and_unmounts_before_deleting() {
        let bench = Bench::new();
        let agent = bench.open();
        let package = bench.package("web", "1.0.0", SMALL);
        agent
            .install(&Principal::Operator, &package, &unsigned(true))
            .await
            .unwrap();
        let pid = bench.containers.pid("web").unwrap();
        let dir = bench.state_dir().join("services/web");
        assert_eq!(bench.mounts.mounted_below(&dir).len(), 2);

        agent.remove("web").await.unwrap();
        assert_eq!(
            bench.containers.signals(),
            [(pid, nix::sys::signal::Signal::SIGTERM)]
        );
        assert!(agent.store().find("web").unwrap().is_none());
        let journal = journal(&agent, "web");
        assert_eq!(journal[3..], ["removing", "stopping", "stopped", "removed"]);
        assert!(bench.mounts.mounted_below(&dir).is_empty());
        assert!(!dir.exists());
        let view = agent.capacity().unwrap();
        assert_eq!(
            (
                view.reserved["memory"].clone(),
                view.reserved["storage"].clone()
            ),
            (0.into(), 0.into())
        );
        // The layers no release names any more are collected.
        let layers = std::fs::read_dir(bench.state_dir().join("layers/sha256")).unwrap();
        assert_eq!(layers.count(), 0);
    }

    #[test]
    fn recovery_rolls_back_an_install_and_finishes_a_removal() {
        let bench = Bench::new();
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap()
        };
        rt().block_on(async {
            let agent = bench.open();
            for name in ["web", "old"] {
                let package = bench.package(name, "1.0.0", SMALL);
                agent
                    .install(&Principal::Operator, &package, &unsigned(false))
                    .await
                    .unwrap();
            }
            // What an agent that died half-way leaves: `web` marked installing with its
            // files still in tmp/, `old` marked removing.
            let partial = bench.state_dir().join("tmp/web.partial");
            std::fs::rename(bench.state_dir().join("services/web"), &partial).unwrap();
            agent
                .store()
                .update("web", None, |r| r.phase = Phase::Installing)
                .unwrap();
            agent
                .store()
                .update("old", None, |r| r.phase = Phase::Removing)
                .unwrap();
        });
        rt().block_on(async {
            let agent = bench.open();
            agent.recover().await.unwrap();
            assert!(agent.list(&Principal::Operator).unwrap().is_empty());
            let events = agent.store().events(0, Some("web"), 100).unwrap();
            let last = events.last().unwrap();
            assert_eq!(last.kind, "install-failed");
            assert_eq!(
                last.message,
                "install of `web` rolled back: the agent stopped during the install"
            );
            assert_eq!(journal(&agent, "old").last().unwrap(), "removed");
            for dir in ["tmp/web.partial", "services/web", "services/old"] {
                assert!(!bench.state_dir().join(dir).exists(), "{dir}");
            }
            assert!(bench.mounts.mounted_below(&bench.state_dir()).is_empty());
        });
    }
}
