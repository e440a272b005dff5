//! The gateway's side of the fleet: enrollment with the controller, then the sync loop.
//!
//! Enrollment: the gateway makes its own key pair, sends a certificate request with the
//! one-time token, and trusts the controller by the CA fingerprint the token carries; it
//! keeps its key, its certificate and the CA under `STATE/fleet/` and authenticates with them
//! (mutual TLS) from then on.
//!
//! Sync: gateways sit behind home NAT, so they call out. The desired state is long-polled
//! with its ETag, so a change reaches a connected gateway within a moment; what the gateway
//! runs is reported back whenever its journal moves (and at least every half minute). Cut
//! off, the gateway keeps running its last desired state and tries again with a growing,
//! jittered back-off (capped at a minute), so a controller coming back is not stormed. The
//! gateway's own admission has the last word: what does not fit is refused and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::{Agent, AgentError, InstallOptions, Principal};
use api::fleet::{Desired, Outcome, Report, ReportedService, ServiceRef};
use serde::{Deserialize, Serialize};

/// What the gateway keeps of its enrollment, `STATE/fleet/enrolled.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    pub controller: String,
    pub gateway_id: String,
    pub labels: BTreeMap<String, String>,
}

/// What the gateway brought about for the controller, `STATE/fleet/managed.json`: the
/// services and trust keys it installed because the desired state named them (and only
/// those it will remove when the desired state drops them), and its household's
/// subscriptions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Managed {
    services: BTreeSet<ServiceRef>,
    trust: BTreeSet<String>,
    subscriptions: BTreeSet<ServiceRef>,
}

fn fleet_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet")
}

/// The fleet catalog's root, pinned at enrollment (`STATE/fleet/catalog-root.json`).
const CATALOG_ROOT: &str = "catalog-root.json";

/// Where the fleet catalog's publications are kept: `STATE/fleet/tuf/metadata-VERSION/`.
fn tuf_dir(fleet_dir: &Path) -> PathBuf {
    fleet_dir.join("tuf")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value).map_err(AgentError::internal)?;
    std::fs::write(&tmp, text).map_err(|e| AgentError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))
}

/// The gateway's enrollment: the one on disk for this controller, or a new one made with
/// `token`.
pub async fn enroll(
    state_dir: &Path,
    controller: &str,
    token: Option<&str>,
) -> Result<Enrollment, AgentError> {
    let dir = fleet_dir(state_dir);
    let saved = dir.join("enrolled.json");
    if let Some(e) = read_json::<Enrollment>(&saved) {
        if e.controller == controller {
            return Ok(e);
        }
        return Err(AgentError::Conflict(format!(
            "this gateway is enrolled with {} as {}; to move it to {controller}, delete {} and enroll again with a new token",
            e.controller,
            e.gateway_id,
            dir.display()
        )));
    }
    let token = token.ok_or_else(|| {
        AgentError::BadRequest(format!(
            "this gateway is not enrolled with {controller} yet: give `--enroll-token TOKEN` (the operator makes one with `shg fleet enroll-token`)"
        ))
    })?;
    let (_, fingerprint) = api::fleet::parse_enroll_token(token).ok_or_else(|| {
        AgentError::BadRequest(
            "the enrollment token is malformed: it looks like shgjoin.SECRET.CA_SHA256; copy it whole from `shg fleet enroll-token`".into(),
        )
    })?;
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
    let key = rcgen::KeyPair::generate().map_err(AgentError::internal)?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(AgentError::internal)?;
    let client = api::Client::with_options(
        controller,
        &api::Options {
            pinned_ca_sha256: Some(fingerprint.to_string()),
            ..Default::default()
        },
    )
    .map_err(|e| AgentError::BadRequest(e.to_string()))?;
    let enrolled: api::fleet::Enrolled = client
        .send_json(
            "POST",
            "/v1/enroll",
            &api::fleet::EnrollRequest {
                token: token.to_string(),
                csr,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            },
        )
        .await
        .map_err(|e| match e {
            // Refused: a new token is needed, trying again changes nothing.
            api::ClientError::Api {
                status: 400..=428 | 430..=499,
                ..
            } => AgentError::BadRequest(format!("enrolling with {controller}: {e}")),
            // Out of reach, overloaded or rate-limited: worth another try.
            e => AgentError::Busy(format!("enrolling with {controller}: {e}")),
        })?;
    server::write_private(&dir.join("key.pem"), key.serialize_pem().as_bytes())
        .map_err(AgentError::internal)?;
    std::fs::write(dir.join("cert.pem"), &enrolled.certificate)
        .map_err(|e| AgentError::io(&dir.join("cert.pem"), e))?;
    std::fs::write(dir.join("ca.pem"), &enrolled.ca)
        .map_err(|e| AgentError::io(&dir.join("ca.pem"), e))?;
    // Pinned: from now on this gateway installs only what this catalog lists.
    if !enrolled.catalog_root.is_empty() {
        let root = dir.join(CATALOG_ROOT);
        std::fs::write(&root, &enrolled.catalog_root).map_err(|e| AgentError::io(&root, e))?;
    }
    let enrollment = Enrollment {
        controller: controller.to_string(),
        gateway_id: enrolled.gateway_id,
        labels: enrolled.labels,
    };
    write_json(&saved, &enrollment)?;
    eprintln!(
        "shg gateway: enrolled with {controller} as {}",
        enrollment.gateway_id
    );
    Ok(enrollment)
}

/// The gateway's connection to its controller.
pub struct Link {
    agent: Arc<Agent>,
    enrollment: Enrollment,
    /// How the gateway reaches its controller: replaced when its certificate is renewed.
    identity: std::sync::RwLock<Identity>,
    dir: PathBuf,
    /// The catalog publication the agent checks installs against (0: none yet).
    catalog_version: std::sync::atomic::AtomicU64,
    /// What the last attempts at desired services came to, reported until replaced.
    outcomes: Mutex<BTreeMap<ServiceRef, Outcome>>,
    managed: Mutex<Managed>,
    /// Set when something worth reporting happened.
    nudge: tokio::sync::Notify,
}

impl Link {
    pub fn new(agent: Arc<Agent>, enrollment: Enrollment) -> Result<Arc<Link>, AgentError> {
        let dir = fleet_dir(agent.state_dir());
        finish_renewal(&dir)?;
        let identity = Identity::load(&dir, &enrollment.controller)?;
        let managed = read_json(&dir.join("managed.json")).unwrap_or_default();
        Ok(Arc::new(Link {
            agent,
            enrollment,
            identity: std::sync::RwLock::new(identity),
            dir,
            catalog_version: std::sync::atomic::AtomicU64::new(0),
            outcomes: Mutex::new(BTreeMap::new()),
            managed: Mutex::new(managed),
            nudge: tokio::sync::Notify::new(),
        }))
    }

    pub fn gateway_id(&self) -> &str {
        &self.enrollment.gateway_id
    }

    /// The API client, with the gateway's current certificate.
    fn client(&self) -> api::Client {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone()
    }

    /// The same TLS settings, for pulls from the controller's registry.
    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tls
            .clone()
    }

    /// Renews the gateway's certificate with a new key: the controller signs it, the gateway
    /// keeps both (so that a crash half-way is finished at the next start) and uses them from
    /// the next request on.
    async fn renew(&self) -> Result<(), AgentError> {
        let key = rcgen::KeyPair::generate().map_err(AgentError::internal)?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(AgentError::internal)?;
        let renewed: api::fleet::Renewed = self
            .client()
            .send_json(
                "POST",
                "/v1/sync/certificate",
                &api::fleet::RenewRequest { csr },
            )
            .await
            .map_err(|e| AgentError::Busy(format!("renewing the certificate: {e}")))?;
        let dir = &self.dir;
        let (cert_new, key_new) = (dir.join("cert.pem.new"), dir.join("key.pem.new"));
        let (cert_tmp, key_tmp) = (dir.join("cert.pem.tmp"), dir.join("key.pem.tmp"));
        std::fs::write(&cert_tmp, &renewed.certificate)
            .and_then(|()| std::fs::rename(&cert_tmp, &cert_new))
            .map_err(|e| AgentError::io(&cert_new, e))?;
        server::write_private(&key_tmp, key.serialize_pem().as_bytes())
            .map_err(AgentError::internal)?;
        // From here on the new pair is the gateway's, even across a crash.
        std::fs::rename(&key_tmp, &key_new).map_err(|e| AgentError::io(&key_new, e))?;
        finish_renewal(dir)?;
        let identity = Identity::load(dir, &self.enrollment.controller)?;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = identity;
        tracing::info!(
            "fleet: renewed the gateway's certificate; it expires at {} ms",
            renewed.expires_ms
        );
        Ok(())
    }

    /// The controller's address.
    pub fn controller(&self) -> &str {
        &self.enrollment.controller
    }

    fn managed(&self) -> std::sync::MutexGuard<'_, Managed> {
        self.managed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save_managed(&self) {
        let managed = self.managed().clone();
        if let Err(e) = write_json(&self.dir.join("managed.json"), &managed) {
            tracing::warn!("cannot save the fleet's managed services: {e}");
        }
    }

    /// Turns the two-key rule on: every install and update must be listed in the fleet's
    /// catalog, as last synced (`STATE/fleet/tuf/`), verified from the root pinned at
    /// enrollment. Until a publication has been synced, installs are refused. It replaces a
    /// `[catalog]` of gateway.toml: an enrolled gateway has one app store, its controller's.
    pub async fn start_catalog(&self) {
        let root = self.dir.join(CATALOG_ROOT);
        if !root.exists() {
            tracing::warn!(
                "fleet: no catalog root is pinned ({} is missing; this gateway enrolled before the catalog existed): installs are checked against signatures only; enroll again to pin it",
                root.display()
            );
            return;
        }
        let newest = std::fs::read_dir(tuf_dir(&self.dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("metadata-")?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        match self.agent.use_catalog(self.catalog_config(newest)).await {
            Ok(version) => self
                .catalog_version
                .store(version, std::sync::atomic::Ordering::SeqCst),
            Err(e) if newest == 0 => {
                tracing::info!("fleet: the catalog is not synced yet, installs wait for it ({e})")
            }
            Err(e) => tracing::warn!("fleet: the synced catalog does not load: {e}"),
        }
    }

    fn catalog_config(&self, version: u64) -> agent::CatalogConfig {
        let tuf = tuf_dir(&self.dir);
        agent::CatalogConfig {
            metadata: tuf.join(format!("metadata-{version}")),
            targets: tuf.join("targets"),
            root: self.dir.join(CATALOG_ROOT),
        }
    }

    /// Fetches the catalog's publication `version` (or newer) and hands it to the agent, which
    /// takes it only if it verifies from the pinned root and is not older than what it saw.
    async fn sync_catalog(&self, version: u64) -> Result<(), AgentError> {
        use std::sync::atomic::Ordering;
        if version <= self.catalog_version.load(Ordering::SeqCst)
            || !self.dir.join(CATALOG_ROOT).exists()
        {
            return Ok(());
        }
        let metadata: api::fleet::CatalogMetadata = self
            .client()
            .get_json("/v1/catalog/metadata")
            .await
            .map_err(|e| AgentError::Busy(format!("fetching the fleet's catalog: {e}")))?;
        let tuf = tuf_dir(&self.dir);
        let cfg = self.catalog_config(metadata.version);
        let partial = tuf.join(format!("partial-{}", metadata.version));
        let _ = std::fs::remove_dir_all(&partial);
        for dir in [&partial, &cfg.targets] {
            std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
        }
        for (name, text) in &metadata.files {
            if !api::fleet::catalog_metadata_name(name) {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(AgentError::Untrusted(format!(
                    "the controller's catalog holds a file named {name:?}, which is no TUF metadata file; nothing of it was used"
                )));
            }
            let path = partial.join(name);
            std::fs::write(&path, text).map_err(|e| AgentError::io(&path, e))?;
        }
        let _ = std::fs::remove_dir_all(&cfg.metadata);
        std::fs::rename(&partial, &cfg.metadata).map_err(|e| AgentError::io(&cfg.metadata, e))?;
        match self.agent.use_catalog(cfg).await {
            Ok(loaded) => {
                self.catalog_version.store(loaded, Ordering::SeqCst);
                // Older publications are no longer read.
                for entry in std::fs::read_dir(&tuf).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with("metadata-") && name != format!("metadata-{loaded}") {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The household subscribes to (or leaves) a service of the controller's catalog; the
    /// controller hears of it with the next report.
    pub fn subscribe(&self, service: ServiceRef, subscribe: bool) {
        {
            let mut managed = self.managed();
            if subscribe {
                managed.subscriptions.insert(service);
            } else {
                managed.subscriptions.remove(&service);
            }
        }
        self.save_managed();
        self.nudge.notify_one();
    }

    /// The household's subscriptions.
    pub fn subscriptions(&self) -> Vec<ServiceRef> {
        self.managed().subscriptions.iter().cloned().collect()
    }

    /// The controller's catalog, as this gateway may read it (the approved packages).
    pub async fn catalog(&self) -> Result<Vec<api::fleet::CatalogEntry>, AgentError> {
        self.client()
            .get_json("/v1/catalog")
            .await
            .map_err(|e| AgentError::Busy(format!("the fleet controller: {e}")))
    }

    /// What this gateway tells the controller about itself.
    fn report(&self) -> Result<Report, AgentError> {
        let who = Principal::Operator;
        let capacity = self.agent.capacity()?;
        let stats = self.agent.stats(&who).ok();
        let services = self
            .agent
            .list(&who)?
            .into_iter()
            .map(|s| {
                let used = stats.as_ref().and_then(|st| {
                    st.services
                        .iter()
                        .find(|u| u.name == s.name && u.provider == s.provider)
                });
                ReportedService {
                    provider: s.provider,
                    name: s.name,
                    version: s.version,
                    state: s.state,
                    health: s.health,
                    restarts: s.restarts,
                    cpu_millicores: used.and_then(|u| u.cpu.used),
                    memory_bytes: used.and_then(|u| u.memory.used),
                    cpu_reserved_millicores: used.map(|u| u.cpu.reserve),
                    memory_reserved_bytes: used.map(|u| u.memory.reserve),
                    figures: None,
                }
            })
            .collect();
        Ok(Report {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            available: capacity.available,
            free: capacity.free,
            services,
            outcomes: self
                .outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect(),
            subscriptions: self.subscriptions(),
        })
    }

    /// The figures a running service keeps for its provider, read as its provider would
    /// (`[metrics]`): a JSON object, else nothing. At most two seconds.
    async fn figures(&self, provider: &str, name: &str) -> Option<serde_json::Value> {
        let who = Principal::Provider(provider.to_string());
        let key = self.agent.resolve(&who, name).ok()?;
        let read = self.agent.service_metrics(&who, &key);
        let metrics = tokio::time::timeout(Duration::from_secs(2), read)
            .await
            .ok()?
            .ok()?;
        if metrics.body.len() > api::fleet::FIGURES_MAX_BYTES {
            return None;
        }
        serde_json::from_slice::<serde_json::Value>(&metrics.body)
            .ok()
            .filter(serde_json::Value::is_object)
    }

    async fn send_report(&self) -> Result<(), api::ClientError> {
        let mut report = match self.report() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot make the fleet report: {e}");
                return Ok(());
            }
        };
        for s in report.services.iter_mut().filter(|s| s.state == "running") {
            s.figures = self.figures(&s.provider, &s.name).await;
        }
        self.client()
            .send_json_empty("POST", "/v1/sync/report", &report)
            .await
    }

    /// Brings the gateway to `desired`: the trust policy first, then each service (installed,
    /// updated or removed), each attempt's outcome kept for the next report.
    async fn apply(&self, desired: &Desired) {
        self.apply_trust(desired);
        if let Err(e) = self.sync_catalog(desired.catalog_version).await {
            tracing::warn!("fleet: the catalog stays at the last publication that verified: {e}");
        }
        let wanted: BTreeMap<ServiceRef, &api::fleet::DesiredService> = desired
            .services
            .iter()
            .map(|s| {
                (
                    ServiceRef {
                        provider: s.provider.clone(),
                        name: s.name.clone(),
                    },
                    s,
                )
            })
            .collect();
        let installed = self.agent.list(&Principal::Operator).unwrap_or_default();
        for (key, want) in &wanted {
            // Another provider's service of the same name is no obstacle: each is known by
            // its provider and name.
            let have = installed
                .iter()
                .find(|s| s.name == key.name && s.provider == key.provider);
            let result = match have {
                Some(s) if s.version == want.version => continue,
                _ => self.bring(want, have.is_some()).await,
            };
            let outcome = match result {
                Ok(()) => {
                    self.managed().services.insert(key.clone());
                    self.save_managed();
                    Outcome {
                        provider: key.provider.clone(),
                        name: key.name.clone(),
                        version: want.version.clone(),
                        result: "admitted".into(),
                        reason: None,
                    }
                }
                Err(e) => Outcome {
                    provider: key.provider.clone(),
                    name: key.name.clone(),
                    version: want.version.clone(),
                    result: match e {
                        AgentError::Refused(_) | AgentError::Untrusted(_) => "refused".into(),
                        _ => "failed".into(),
                    },
                    reason: Some(e.to_string()),
                },
            };
            if outcome.result != "admitted" {
                tracing::warn!(
                    "fleet: `{}` {} not brought about: {}",
                    outcome.name,
                    outcome.version,
                    outcome.reason.as_deref().unwrap_or("")
                );
            }
            self.outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), outcome);
        }
        // What the controller installed and no longer wants goes; what the household or the
        // operator installed by hand stays.
        let gone: Vec<ServiceRef> = self
            .managed()
            .services
            .iter()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let mine = installed
                .iter()
                .any(|s| s.name == key.name && s.provider == key.provider);
            if mine {
                let id = format!("{}/{}", key.provider, key.name);
                let removed = match self.agent.resolve(&Principal::Operator, &id) {
                    Ok(service) => self.agent.remove(&service).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = removed {
                    tracing::warn!("fleet: cannot remove `{}`: {e}", key.name);
                    continue;
                }
            }
            self.managed().services.remove(&key);
            self.outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            self.save_managed();
        }
    }

    /// Pulls the desired package from the controller's registry by digest (so exactly the one
    /// the controller listed), and installs or updates it: the agent checks its signature
    /// against the trust policy and its listing in the fleet's catalog (the two-key rule) and
    /// admits it, as for any package.
    async fn bring(
        &self,
        want: &api::fleet::DesiredService,
        installed: bool,
    ) -> Result<(), AgentError> {
        let authority = self
            .enrollment
            .controller
            .split_once("://")
            .map_or(self.enrollment.controller.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        let reference = format!(
            "{authority}/{}/{}@{}",
            want.provider, want.name, want.digest
        );
        let (file, _) = self
            .agent
            .pull(&reference, Some(self.tls()))
            .await
            .map_err(|e| AgentError::Busy(format!("pulling from the controller: {e}")))?;
        let _delete = Delete(file.clone());
        if installed {
            let id = format!("{}/{}", want.provider, want.name);
            let service = self.agent.resolve(&Principal::Operator, &id)?;
            let updated = self
                .agent
                .update(
                    &Principal::Operator,
                    &service,
                    &file,
                    None,
                    false,
                    agent::DEFAULT_WINDOW,
                    None,
                )
                .await;
            match updated {
                Ok(_) => {}
                // It got there meanwhile: the service was rolling back to this very release
                // (its own health window) when the desired state was read.
                Err(AgentError::Conflict(_))
                    if self
                        .agent
                        .detail(&service)
                        .is_ok_and(|d| d.image_digest == want.digest) => {}
                Err(e) => return Err(e),
            }
        } else {
            self.agent
                .install(
                    &Principal::Operator,
                    &file,
                    &InstallOptions {
                        start: true,
                        source: Some(reference),
                        ..Default::default()
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// The trust policy as the controller holds it: keys added, and the keys the controller
    /// added before and no longer lists removed.
    fn apply_trust(&self, desired: &Desired) {
        let have: BTreeSet<String> = self
            .agent
            .trust_rules()
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.key_id)
            .collect();
        let want: BTreeSet<String> = desired.trust.iter().map(|r| r.key_id.clone()).collect();
        for rule in &desired.trust {
            if have.contains(&rule.key_id) && self.managed().trust.contains(&rule.key_id) {
                continue;
            }
            let req = api::TrustRequest {
                provider: rule.provider.clone(),
                public_key: rule.public_key.clone(),
                services: rule.services.clone(),
            };
            match self.agent.add_trust(&req) {
                Ok(_) => {
                    self.managed().trust.insert(rule.key_id.clone());
                }
                Err(e) => tracing::warn!("fleet: cannot trust key {}: {e}", rule.key_id),
            }
        }
        let stale: Vec<String> = self
            .managed()
            .trust
            .iter()
            .filter(|k| !want.contains(*k))
            .cloned()
            .collect();
        for key in stale {
            let _ = self.agent.remove_trust(&key);
            self.managed().trust.remove(&key);
        }
        self.save_managed();
    }
}

/// The gateway's credentials as its clients use them.
struct Identity {
    client: api::Client,
    tls: Arc<rustls::ClientConfig>,
}

impl Identity {
    fn load(dir: &Path, controller: &str) -> Result<Identity, AgentError> {
        let options = api::Options {
            ca_cert: Some(dir.join("ca.pem")),
            client_cert: Some((dir.join("cert.pem"), dir.join("key.pem"))),
            ..Default::default()
        };
        let client = api::Client::with_options(controller, &options)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let tls = api::client::tls_config(controller, &options)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        Ok(Identity { client, tls })
    }
}

/// Finishes a renewal a crash interrupted: once the new key is in place (`key.pem.new`), the
/// new certificate (`cert.pem.new`, unless already moved) and the key replace the old ones.
fn finish_renewal(dir: &Path) -> Result<(), AgentError> {
    let (cert_new, key_new) = (dir.join("cert.pem.new"), dir.join("key.pem.new"));
    if !key_new.exists() {
        return Ok(());
    }
    if cert_new.exists() {
        let cert = dir.join("cert.pem");
        std::fs::rename(&cert_new, &cert).map_err(|e| AgentError::io(&cert, e))?;
    }
    let key = dir.join("key.pem");
    std::fs::rename(&key_new, &key).map_err(|e| AgentError::io(&key, e))
}

/// When the certificate in `dir` is due for renewal: two thirds into its validity.
fn renewal_due(dir: &Path) -> Option<std::time::SystemTime> {
    let pem = std::fs::read_to_string(dir.join("cert.pem")).ok()?;
    let cert = rcgen::CertificateParams::from_ca_cert_pem(&pem).ok()?;
    let (from, to) = (
        cert.not_before.unix_timestamp(),
        cert.not_after.unix_timestamp(),
    );
    let due = u64::try_from(from + (to - from) * 2 / 3).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(due))
}

/// Deletes a file when dropped.
struct Delete(PathBuf);

impl Drop for Delete {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// [`enroll`], tried again (with the sync's back-off) while the controller is out of reach or
/// busy; a refusal (a used or unknown token, say) ends it at once.
pub async fn enroll_patiently(
    state_dir: &Path,
    controller: &str,
    token: Option<&str>,
) -> Result<Enrollment, AgentError> {
    let mut failures = 0;
    loop {
        match enroll(state_dir, controller, token).await {
            Err(AgentError::Busy(why)) => {
                failures += 1;
                let wait = backoff(failures);
                eprintln!("shg gateway: {why}; trying again in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// The next wait after a failure: doubling from one second up to a minute, with up to half
/// of it added at random so that gateways cut off together do not come back together.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
    let jitter = realm::random_hex(2)
        .ok()
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .unwrap_or(0);
    base + base.mul_f64(jitter as f64 / 65535.0 / 2.0)
}

/// How long the controller may hold a long-poll of the desired state: a connected gateway
/// hears of a change at once, and otherwise asks about once a minute (on the same connection).
const POLL_WAIT_S: u64 = 55;

/// A gateway whose journal and services did not move still reports this often: the fleet's
/// sync interval, which also refreshes its use figures at the controller.
const HEARTBEAT: Duration = Duration::from_secs(60);

/// Runs the sync for as long as the gateway runs: one task long-polls the desired state and
/// applies it, another reports whenever the journal moved (at most once a second, at least
/// every [`HEARTBEAT`]).
pub fn spawn(link: Arc<Link>) {
    let poll_uri = format!("/v1/sync/desired?wait={POLL_WAIT_S}");
    let renewer = link.clone();
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let Some(due) = renewal_due(&renewer.dir) else {
                tracing::warn!(
                    "fleet: cannot read the gateway's certificate in {}; it is not renewed",
                    renewer.dir.display()
                );
                tokio::time::sleep(Duration::from_secs(3600)).await;
                continue;
            };
            if let Ok(wait) = due.duration_since(std::time::SystemTime::now()) {
                tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
                continue;
            }
            match renewer.renew().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    tracing::warn!("fleet: {e}; trying again in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
    let poller = link.clone();
    tokio::spawn(async move {
        let mut etag: Option<String> = None;
        let mut failures = 0u32;
        loop {
            match poller
                .client()
                .poll_json::<Desired>(&poll_uri, etag.as_deref())
                .await
            {
                Ok(Some((tag, desired))) => {
                    failures = 0;
                    poller.apply(&desired).await;
                    etag = Some(tag);
                    poller.nudge.notify_one();
                }
                Ok(None) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    tracing::warn!("fleet: the controller is out of reach ({e}); the gateway keeps its last desired state and tries again in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut last_seen = String::new();
        let mut last_sent = tokio::time::Instant::now() - HEARTBEAT;
        let mut failures = 0u32;
        loop {
            let nudged = tokio::time::timeout(Duration::from_secs(1), link.nudge.notified())
                .await
                .is_ok();
            // What the controller judges by: the journal and each service's version, state
            // and health (a health change is not always journaled).
            let seen = format!(
                "{}|{:?}",
                link.agent.last_event_id().unwrap_or(0),
                link.agent
                    .list(&Principal::Operator)
                    .unwrap_or_default()
                    .iter()
                    .map(|s| (&s.name, &s.version, &s.state, &s.health))
                    .collect::<Vec<_>>()
            );
            let due = nudged || seen != last_seen || last_sent.elapsed() >= HEARTBEAT;
            if !due {
                continue;
            }
            match link.send_report().await {
                Ok(()) => {
                    failures = 0;
                    last_seen = seen;
                    last_sent = tokio::time::Instant::now();
                }
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    tracing::debug!("fleet: report not sent ({e}); again in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
}
