//! The gateway agent: installs packages, runs each service in its own container, keeps them to
//! their restart policy and health checks, and records every transition.
//!
//! The agent knows nothing of HTTP: the `gateway` crate serves its operations as an API
//! (through the `server` crate) and translates requests into calls on [`Agent`].

mod auth;
mod capacity;
mod error;
mod health;
mod host;
mod images;
mod install;
mod layout;
mod lifecycle;
mod monitor;
mod networking;
mod package;
mod pidfd;
mod releases;
mod settings;
mod shelf;
mod signatures;
mod stats;
mod streams;
mod update;

pub use auth::{check_gateway, check_install, check_service, GatewayAction, ServiceAction};
pub use health::ServiceMetrics;
pub use install::InstallOptions;
pub use lifecycle::StateLock;
pub use realm::Principal;
pub use settings::{CatalogConfig, UspConfig};
pub use streams::LogFollower;
pub use update::{DEFAULT_WINDOW, MAX_WINDOW};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use error::AgentError;
pub use layout::Layout;

use state::Store;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// `shg-runtime`, beside `shg`: the helper that creates containers and runs commands in
    /// them.
    pub runtime_binary: PathBuf,
    /// `STATE/shg-init`, every container's PID 1: written there from the agent's own binary
    /// ([`runtime::init::BINARY`]) by [`Config::prepare_helpers`].
    pub init_binary: PathBuf,
    /// Where /proc is (tests may point elsewhere).
    pub proc_root: PathBuf,
    /// Bytes per log segment; a service keeps two.
    pub log_segment: u64,
    /// Size of each service's private /tmp.
    pub tmp_size: u64,
    /// A run shorter than this counts as a failure in a row for the back-off.
    pub stable_after_ms: u64,
    /// Largest package accepted over the API.
    pub max_package: u64,
    /// Parent cgroup of every service: `shg` for the default state directory, `shg-<hash>`
    /// for any other, so several agents (tests, the lab) never share cgroups.
    pub cgroup_parent: String,
    /// Where the host mounts its cgroups.
    pub cgroup_root: PathBuf,
    /// How often every running service's cgroup is sampled.
    pub sample_interval: std::time::Duration,
    /// The TCP port the gateway's API listens on (`--listen`), if any: no service may
    /// publish it.
    pub api_port: Option<u16>,
    /// 8 hex digits naming this agent's network objects (bridge `shgbTAG`, table
    /// `inet shg_TAG`, …), from the state directory.
    pub net_tag: String,
}

impl Config {
    /// Refuses to run without `shg-runtime` beside `shg` (every container is created with
    /// it), and writes `shg-init` (every container's PID 1) where the bundles bind it from,
    /// unless this build's is there already.
    pub fn prepare_helpers(&self) -> Result<(), AgentError> {
        if !self.runtime_binary.is_file() {
            return Err(AgentError::Internal(format!(
                "{} is missing: the agent creates every container with it; install it from the \
                 same build beside shg",
                self.runtime_binary.display()
            )));
        }
        if let Some(dir) = self.init_binary.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                AgentError::Internal(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        runtime::init::install(&self.init_binary).map_err(|e| {
            AgentError::Internal(format!(
                "cannot write the containers' init to {}: {e}; the state directory must be \
                 writable by the agent",
                self.init_binary.display()
            ))
        })
    }

    /// Defaults for a gateway keeping its state in `state_dir`.
    pub fn new(state_dir: PathBuf) -> Result<Config, AgentError> {
        // FNV-1a of the path: stable across runs, short, no dependency.
        let hash = state_dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            }) as u32;
        let cgroup_parent = if state_dir == Path::new(api::DEFAULT_STATE_DIR) {
            "shg".to_string()
        } else {
            format!("shg-{hash:08x}")
        };
        let shg_binary = std::env::current_exe()
            .map_err(|e| AgentError::Internal(format!("cannot find the shg binary: {e}")))?;
        Ok(Config {
            runtime_binary: shg_binary.with_file_name("shg-runtime"),
            init_binary: state_dir.join("shg-init"),
            state_dir,
            proc_root: PathBuf::from("/proc"),
            log_segment: 1 << 20,
            tmp_size: 16 << 20,
            stable_after_ms: 10_000,
            max_package: 2 << 30,
            cgroup_parent,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            sample_interval: std::time::Duration::from_secs(1),
            api_port: None,
            net_tag: format!("{hash:08x}"),
        })
    }
}

/// The agent: shared by the API handlers and the supervising tasks. Each concern keeps the
/// lock that guards it beside what it guards.
pub struct Agent {
    pub(crate) cfg: Config,
    pub(crate) layout: Layout,
    pub(crate) store: Mutex<Store>,
    /// One lock per service: operations on a service run one at a time.
    pub(crate) locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The gateway's capacity and the admission lock.
    pub(crate) admission: capacity::Admission,
    /// The operator's other settings (memory pressure, catalog).
    pub(crate) settings: settings::Settings,
    /// The container runtime, mounts, cgroups (v1 or v2, detected once at open) and
    /// command-line tools: real ones, or fakes in the unit tests.
    pub(crate) host: host::Host,
    /// The last samples of what services and the host use.
    pub(crate) monitor: monitor::Monitor,
    /// The services' network, its lock and its traffic meter.
    pub(crate) net: networking::Networking,
    /// Image layers shared by the releases, and the lock of their collection.
    pub(crate) layers: releases::Layers,
    /// The layers of installs and updates admitted but not laid out yet, counted against
    /// their provider's image allowance.
    pub(crate) images: images::Images,
    /// The catalog installs must be listed in (`[catalog]`, or the fleet controller's), behind
    /// one lock: checks share the datastore of versions seen.
    pub(crate) catalog: tokio::sync::Mutex<Option<CatalogConfig>>,
    /// Changes at each event journaled, so that followers of the journal wake at once.
    journaled: tokio::sync::watch::Sender<u64>,
}

impl Agent {
    /// Opens the state directory and database (creating them if needed).
    pub fn open(cfg: Config) -> Result<Arc<Agent>, AgentError> {
        let host = host::Host::system(&cfg);
        Agent::open_on(cfg, host)
    }

    /// [`Agent::open`] on the given host.
    pub(crate) fn open_on(cfg: Config, host: host::Host) -> Result<Arc<Agent>, AgentError> {
        let layout = Layout::new(&cfg.state_dir);
        for dir in [
            layout.root.clone(),
            layout.containers(),
            layout.tmp(),
            layout.services(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        }
        // Only root may look inside: rootfs, data, logs, bundles and the database belong to
        // the services and their providers, not to every local user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&layout.root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AgentError::io(&layout.root, e))?;
        let mut store = Store::open(&layout.database())?;
        let (journaled, _) = tokio::sync::watch::channel(0u64);
        let announce = journaled.clone();
        store.on_journal(move || announce.send_modify(|n| *n += 1));
        if !store.integrity_ok()? {
            return Err(AgentError::Internal(format!(
                "the state database {} is damaged (SQLite integrity check failed); restore it from a backup or move it aside to start empty",
                layout.database().display()
            )));
        }
        let (gateway, settings) = settings::load(&layout.root)?;
        let link = network::ops::Link {
            down: gateway.capacity.bandwidth_down,
            up: gateway.capacity.bandwidth_up,
            forward_down: gateway.system_reserve.bandwidth_down,
            forward_up: gateway.system_reserve.bandwidth_up,
        };
        let network = network::Network::with_runner(
            settings.network.clone(),
            &cfg.net_tag,
            link,
            host.commands.clone(),
        );
        let net = if settings.network.enabled {
            Some(network)
        } else {
            // Networking switched off: what an earlier run made goes.
            if !network.present().is_empty() {
                network.teardown();
            }
            None
        };
        let layers = image::LayerStore::open(&layout.layers()).map_err(AgentError::Layers)?;
        let settings_catalog = settings.catalog.clone();
        Ok(Arc::new(Agent {
            cfg,
            layout,
            store: Mutex::new(store),
            locks: Mutex::new(HashMap::new()),
            admission: capacity::Admission::new(gateway),
            settings,
            host,
            monitor: monitor::Monitor::default(),
            net: networking::Networking::new(net),
            layers: releases::Layers::new(layers),
            images: images::Images::default(),
            catalog: tokio::sync::Mutex::new(settings_catalog),
            journaled,
        }))
    }

    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves the store usable: SQLite rolled back the
        // transaction that was under way.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// The `[usp]` table of `gateway.toml`, if the operator wrote one.
    pub fn usp_config(&self) -> Option<&UspConfig> {
        self.settings.usp.as_ref()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.layout.root
    }
}

impl Agent {
    /// Takes the state directory for this process, makes it the subreaper of the container
    /// inits (and reaps every orphan it inherits), finishes or rolls back what a previous run
    /// left, re-adopts the running services and starts the once-a-second sampler. The returned
    /// lock holds the state directory until dropped.
    pub async fn start_up(self: &Arc<Self>) -> Result<StateLock, AgentError> {
        let lock = lifecycle::take_lock(&self.layout)?;
        // Under the lock, and before recovery starts any container: the runtime helper,
        // started at the first create, copies the mount table as it is then.
        if let Err(e) = self.host.mounts.mount_state_root(&self.layout.containers()) {
            tracing::warn!("the containers' state stays on the disk: {e}");
        }
        lifecycle::become_subreaper();
        pidfd::spawn_reaper();
        self.clone().recover().await?;
        self.spawn_sampler();
        Ok(lock)
    }

    /// As the agent stops, still holding the state directory's lock: the containers' state
    /// tmpfs goes if no container is left in it (with services running, it stays for the
    /// next agent to adopt them).
    pub fn shut_down(&self) {
        if let Err(e) = self
            .host
            .mounts
            .release_state_root(&self.layout.containers())
        {
            tracing::warn!("the containers' state stays mounted: {e}");
        }
    }

    /// The API socket's path, `STATE_DIR/api.sock`.
    pub fn socket(&self) -> PathBuf {
        self.layout.socket()
    }

    /// The largest package the agent accepts.
    pub fn max_package(&self) -> u64 {
        self.cfg.max_package
    }

    /// A fresh path under the agent's `tmp/` for an upload (the caller deletes it).
    pub fn upload_path(&self) -> PathBuf {
        self.layout
            .tmp()
            .join(format!("upload-{}.tar", layout::unique()))
    }

    /// The newest event id of the journal.
    pub fn last_event_id(&self) -> Result<i64, AgentError> {
        Ok(self.store().last_event_id()?)
    }

    /// A receiver that changes whenever an event is journaled.
    pub fn journal_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.journaled.subscribe()
    }

    /// The audit log from `since`, at most `limit` entries.
    pub fn audit_log(&self, since: i64, limit: usize) -> Result<Vec<api::AuditEntry>, AgentError> {
        Ok(self
            .store()
            .audit_log(since, limit)?
            .into_iter()
            .map(|a| api::AuditEntry {
                id: a.id,
                time_ms: a.time_ms,
                principal: a.principal,
                action: a.action,
                status: a.status,
            })
            .collect())
    }

    /// Records a call made through the API.
    pub fn audit(&self, principal: &str, action: &str, status: u16) -> Result<(), AgentError> {
        Ok(self.store().audit(principal, action, status)?)
    }

    /// What `GET /v1/gateway` says to `who`.
    pub fn info(&self, who: &Principal) -> Result<api::GatewayInfo, AgentError> {
        Ok(api::GatewayInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            state_dir: self.state_dir().display().to_string(),
            services: self.list(who)?.len(),
            pid: std::process::id(),
        })
    }
}

/// A journal entry as the API shows it.
pub(crate) fn event_view(e: state::EventRecord) -> api::Event {
    api::Event {
        id: e.id,
        time_ms: e.time_ms,
        // A key `PROVIDER+NAME` is shown as the service's id, `PROVIDER/NAME`.
        service: e.service.map(|s| s.replacen('+', "/", 1)),
        kind: e.kind,
        message: e.message,
    }
}
