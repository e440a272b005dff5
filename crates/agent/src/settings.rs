//! The operator's `STATE/gateway.toml`: the gateway's capacity and system reserve, provider
//! caps, memory pressure, the services' network and the catalog.
//!
//! Capacity comes from the file when the operator wrote one, else from the host (cores,
//! memory, the state directory's filesystem) with a default link speed.
//!
//! ```toml
//! [capacity]            # every key optional; detected from the host when absent
//! cpu = 2.0             # cores
//! memory = "4GiB"
//! storage = "32GiB"
//! bandwidth_down = "100Mbit"
//! bandwidth_up = "20Mbit"
//!
//! [reserve]             # kept back for routing, the agent itself and headroom
//! cpu = 0.25
//! memory = "256MiB"
//! storage = "1GiB"
//! bandwidth_down = "10Mbit"
//! bandwidth_up = "2Mbit"
//!
//! [providers.acme]      # optional caps: the most one provider may reserve in total
//! memory = "512MiB"
//! images = "2GiB"       # optional: what the layers of its services may take unpacked
//!
//! [pressure]            # when the agent stops services to free memory
//! memory_free_min = "64MiB"   # evict when the host has less memory free than this
//!
//! [network]             # the services' network: see the `network` crate
//! lan = "br-lan"
//!
//! [usp]                 # optional: a TR-369 (USP) agent for the ISP's USP controller
//! endpoint_id = "os::SHG-gw1"            # this gateway's USP endpoint
//! broker = "mqtt://broker.isp:1883"      # or mqtts://HOST:PORT (TLS)
//! topic = "usp/agent/os::SHG-gw1"        # optional: where the agent listens (this default)
//! controller_id = "self::isp-controller" # the only controller it answers
//! controller_topic = "usp/controller"    # where the controller listens
//! # optional: ca_cert, client_cert, client_key (PEM files), username, password_file
//! ```
//!
//! The bandwidth capacity is the link's: HTB shapes every service's traffic under it, and the
//! bandwidth reserve is the guaranteed share of the gateway's own LAN↔WAN forwarding.
//!
//! Services are also evicted when together they use more memory than capacity less the
//! system reserve.
//!
//! A provider's `images` is its image allowance: with one, the layers of all its services'
//! releases, each distinct layer once, count against it instead of against each service's
//! storage reservation (see [`crate::images`]).

use std::collections::BTreeMap;
use std::path::Path;

use admission::{Amounts, Gateway, Resource};
use serde::Deserialize;

use crate::AgentError;

/// File name of the operator's gateway configuration inside the state directory.
pub const CONFIG_FILE: &str = "gateway.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    capacity: RawAmounts,
    #[serde(default)]
    reserve: Option<RawAmounts>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pressure: RawPressure,
    #[serde(default)]
    network: network::config::RawNetwork,
    #[serde(default)]
    catalog: Option<CatalogConfig>,
    #[serde(default)]
    usp: Option<UspConfig>,
}

/// `[usp]`: the gateway's TR-369 agent (the `usp` crate) and the one USP controller it obeys,
/// as the operator's realm, over the MQTT message transfer protocol.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UspConfig {
    /// This agent's USP endpoint id (`AUTHORITY-SCHEME::ID`, e.g. `os::SHG-gw1`).
    pub endpoint_id: String,
    /// The message transfer protocol: only `mqtt` (the default).
    #[serde(default = "default_mtp")]
    pub mtp: String,
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS.
    pub broker: String,
    /// The MQTT topic the agent subscribes to (default `usp/agent/ENDPOINT_ID`).
    #[serde(default)]
    pub topic: Option<String>,
    /// The controller's endpoint id: records from any other endpoint are dropped.
    pub controller_id: String,
    /// The topic the controller subscribes to: responses and notifications go there.
    pub controller_topic: String,
    /// For `mqtts://`: the CA that signed the broker's certificate (PEM).
    #[serde(default)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// For `mqtts://` with client certificates: the gateway's certificate and key (PEM).
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
    /// The broker login, if it asks for one; the password is read from a file, never from
    /// `gateway.toml` itself.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
}

fn default_mtp() -> String {
    "mqtt".to_string()
}

impl UspConfig {
    /// The topic the agent listens on.
    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("usp/agent/{}", self.endpoint_id))
    }

    fn check(&self) -> Result<(), String> {
        if self.mtp != "mqtt" {
            return Err(format!(
                "usp.mtp: `{}` is not supported; SHG's USP agent speaks MQTT (`mtp = \"mqtt\"`)",
                self.mtp
            ));
        }
        for (key, id) in [
            ("usp.endpoint_id", &self.endpoint_id),
            ("usp.controller_id", &self.controller_id),
        ] {
            let ok = id.split_once("::").is_some_and(|(scheme, rest)| {
                !scheme.is_empty() && !rest.is_empty() && !id.contains(char::is_whitespace)
            });
            if !ok {
                return Err(format!(
                    "{key}: `{id}` is not a USP endpoint id; write AUTHORITY-SCHEME::ID (e.g. `os::SHG-gw1`)"
                ));
            }
        }
        if !(self.broker.starts_with("mqtt://") || self.broker.starts_with("mqtts://")) {
            return Err(format!(
                "usp.broker: `{}` is not an MQTT URL; write mqtt://HOST:PORT or mqtts://HOST:PORT",
                self.broker
            ));
        }
        let topics = [Some(self.topic()), Some(self.controller_topic.clone())];
        for topic in topics.iter().flatten() {
            if topic.is_empty() || topic.contains(['+', '#', '\0']) {
                return Err(format!(
                    "usp: `{topic}` is not a topic to publish to; leave out the wildcards `+` and `#`"
                ));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("usp: give client_cert and client_key together, or neither".into());
        }
        Ok(())
    }
}

/// `[catalog]`: where the app-store catalog's TUF metadata is, and the root this gateway pins.
/// With it, every install and update must also be listed there (`catalog::Catalog::admit`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The catalog's `metadata/` directory (as published, or synced from the controller).
    pub metadata: std::path::PathBuf,
    /// Its `targets/` directory.
    pub targets: std::path::PathBuf,
    /// The catalog's root metadata, installed on this gateway out of band (`1.root.json`).
    pub root: std::path::PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPressure {
    memory_free_min: Option<String>,
}

/// The operator's settings beside the capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Below this much free host memory (MemAvailable) the agent evicts a service.
    pub memory_free_min: u64,
    /// The `[network]` table (see the `network` crate).
    pub network: network::Config,
    /// The `[catalog]` table: the app store this gateway installs from, if any.
    pub catalog: Option<CatalogConfig>,
    /// `[providers.NAME] images`: the image allowance of each provider that has one, in bytes.
    pub images: BTreeMap<String, u64>,
    /// The `[usp]` table: the TR-369 agent, if the operator wants one.
    pub usp: Option<UspConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmounts {
    cpu: Option<f64>,
    memory: Option<String>,
    storage: Option<String>,
    bandwidth_down: Option<String>,
    bandwidth_up: Option<String>,
}

/// `[providers.NAME]`: caps on what the provider reserves, and its image allowance.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    cpu: Option<f64>,
    memory: Option<String>,
    storage: Option<String>,
    bandwidth_down: Option<String>,
    bandwidth_up: Option<String>,
    images: Option<String>,
}

impl RawProvider {
    /// The caps, without the image allowance (which no reservation is held to).
    fn caps(&self) -> RawAmounts {
        RawAmounts {
            cpu: self.cpu,
            memory: self.memory.clone(),
            storage: self.storage.clone(),
            bandwidth_down: self.bandwidth_down.clone(),
            bandwidth_up: self.bandwidth_up.clone(),
        }
    }
}

impl RawAmounts {
    /// Fills `into` with what is given; `table` names the TOML table in errors.
    fn apply(&self, table: &str, into: &mut Amounts) -> Result<(), String> {
        if let Some(cores) = self.cpu {
            if !(cores.is_finite() && cores >= 0.0) {
                return Err(format!("{table}.cpu: {cores} is not a number of cores"));
            }
            into.cpu = (cores * 1000.0).round() as u64;
        }
        let sizes = [
            (&self.memory, Resource::Memory, "memory"),
            (&self.storage, Resource::Storage, "storage"),
        ];
        for (value, resource, key) in sizes {
            if let Some(text) = value {
                let v =
                    manifest::units::parse_size(text).map_err(|e| format!("{table}.{key}: {e}"))?;
                into.set(resource, v);
            }
        }
        let rates = [
            (
                &self.bandwidth_down,
                Resource::BandwidthDown,
                "bandwidth_down",
            ),
            (&self.bandwidth_up, Resource::BandwidthUp, "bandwidth_up"),
        ];
        for (value, resource, key) in rates {
            if let Some(text) = value {
                let v = manifest::units::parse_bandwidth(text)
                    .map_err(|e| format!("{table}.{key}: {e}"))?;
                into.set(resource, v);
            }
        }
        Ok(())
    }
}

/// What the host has, as far as the agent can tell without being told.
fn detected(state_dir: &Path) -> Amounts {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    let storage = nix::sys::statvfs::statvfs(state_dir)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0);
    Amounts {
        cpu: cores * 1000,
        memory,
        storage,
        // A link speed cannot be detected from here; a typical home line until configured.
        bandwidth_down: 100_000_000,
        bandwidth_up: 20_000_000,
    }
}

/// The default system reserve: a quarter core, 256 MiB, 1 GiB of disk, a tenth of the link.
fn default_reserve(capacity: &Amounts) -> Amounts {
    Amounts {
        cpu: 250.min(capacity.cpu),
        memory: (256u64 << 20).min(capacity.memory),
        storage: (1u64 << 30).min(capacity.storage),
        bandwidth_down: capacity.bandwidth_down / 10,
        bandwidth_up: capacity.bandwidth_up / 10,
    }
}

/// Reads `STATE/gateway.toml` (if present) over the detected capacity.
pub fn load(state_dir: &Path) -> Result<(Gateway, Settings), AgentError> {
    let path = state_dir.join(CONFIG_FILE);
    let raw: RawConfig = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| AgentError::BadRequest(format!("{}: {}", path.display(), e.message())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RawConfig::default(),
        Err(e) => return Err(AgentError::io(&path, e)),
    };
    let bad = |e: String| AgentError::BadRequest(format!("{}: {e}", path.display()));
    let mut capacity = detected(state_dir);
    raw.capacity.apply("capacity", &mut capacity).map_err(bad)?;
    let mut system_reserve = default_reserve(&capacity);
    if let Some(reserve) = &raw.reserve {
        reserve.apply("reserve", &mut system_reserve).map_err(bad)?;
    }
    let mut provider_caps = BTreeMap::new();
    let mut images = BTreeMap::new();
    for (provider, raw) in &raw.providers {
        let table = format!("providers.{provider}");
        let mut amounts = Amounts::UNLIMITED;
        raw.caps().apply(&table, &mut amounts).map_err(bad)?;
        provider_caps.insert(provider.clone(), amounts);
        if let Some(text) = &raw.images {
            let bytes = manifest::units::parse_size(text)
                .map_err(|e| bad(format!("{table}.images: {e}")))?;
            images.insert(provider.clone(), bytes);
        }
    }
    let memory_free_min = match &raw.pressure.memory_free_min {
        Some(text) => manifest::units::parse_size(text)
            .map_err(|e| bad(format!("pressure.memory_free_min: {e}")))?,
        // A quarter of what is kept back for the system, at most 64 MiB.
        None => (system_reserve.memory / 4).min(64 << 20),
    };
    let network = network::Config::from_raw(&raw.network).map_err(|e| bad(e.to_string()))?;
    if let Some(usp) = &raw.usp {
        usp.check().map_err(bad)?;
    }
    Ok((
        Gateway {
            capacity,
            system_reserve,
            provider_caps,
        },
        Settings {
            memory_free_min,
            network,
            catalog: raw.catalog.clone(),
            images,
            usp: raw.usp.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usp_table_is_checked_when_the_gateway_starts() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(CONFIG_FILE);
        let usp = "[usp]\nendpoint_id = \"os::SHG-1\"\nbroker = \"mqtt://b:1883\"\n\
                   controller_id = \"self::ctl\"\ncontroller_topic = \"usp/ctl\"\n";
        std::fs::write(&config, usp).unwrap();
        let (_, settings) = load(dir.path()).unwrap();
        let usp_cfg = settings.usp.unwrap();
        assert_eq!(usp_cfg.topic(), "usp/agent/os::SHG-1");
        assert_eq!(usp_cfg.mtp, "mqtt");
        for (change, words) in [
            (("mqtt://b:1883", "stomp://b:61613"), "not an MQTT URL"),
            (("os::SHG-1", "SHG-1"), "not a USP endpoint id"),
            (("usp/ctl", "usp/#"), "wildcards"),
        ] {
            std::fs::write(&config, usp.replace(change.0, change.1)).unwrap();
            let err = load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(words) && err.contains("gateway.toml"), "{err}");
        }
        std::fs::write(&config, format!("{usp}mtp = \"stomp\"\n")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("usp.mtp") && err.contains("MQTT"), "{err}");
        std::fs::write(&config, format!("{usp}password = \"hunter2\"\n")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("password"),
            "no secrets in gateway.toml: {err}"
        );
    }

    #[test]
    fn config_overrides_detection_and_caps_providers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[capacity]\ncpu = 2.0\nmemory = \"1GiB\"\n[reserve]\nmemory = \"128MiB\"\n[providers.acme]\nmemory = \"256MiB\"\n",
        )
        .unwrap();
        let (gw, _) = load(dir.path()).unwrap();
        assert_eq!(gw.capacity.cpu, 2000);
        assert_eq!(gw.capacity.memory, 1 << 30);
        assert_eq!(gw.system_reserve.memory, 128 << 20);
        assert_eq!(gw.cap("acme", Resource::Memory), Some(256 << 20));
        assert_eq!(
            gw.cap("acme", Resource::Cpu),
            None,
            "what a cap leaves out stays uncapped"
        );
    }

    #[test]
    fn a_provider_may_have_an_image_allowance_and_nothing_else_may() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(CONFIG_FILE);
        std::fs::write(
            &config,
            "[providers.acme]\nimages = \"2GiB\"\n[providers.beta]\nmemory = \"1GiB\"\n",
        )
        .unwrap();
        let (gw, settings) = load(dir.path()).unwrap();
        assert_eq!(settings.images, BTreeMap::from([("acme".into(), 2 << 30)]));
        assert_eq!(gw.cap("acme", Resource::Storage), None, "not a storage cap");
        assert_eq!(gw.cap("beta", Resource::Memory), Some(1 << 30));

        std::fs::write(&config, "[providers.acme]\nimages = \"lots\"\n").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("providers.acme.images"), "{err}");
        // The allowance is a provider's: the gateway's capacity has none.
        std::fs::write(&config, "[capacity]\nimages = \"2GiB\"\n").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("images"), "{err}");
    }

    #[test]
    fn a_bad_config_names_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[capacity]\nmemory = \"lots\"\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("gateway.toml") && err.contains("capacity.memory"),
            "{err}"
        );
    }

    #[test]
    fn without_a_config_the_host_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let (gw, _) = load(dir.path()).unwrap();
        assert!(gw.capacity.cpu >= 1000 && gw.capacity.memory > 0);
        assert!(
            gw.available().memory < gw.capacity.memory,
            "a system reserve is kept"
        );
    }
}
