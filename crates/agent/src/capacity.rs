//! The gateway's capacity and the admission of services against it.
//!
//! Capacity comes from `STATE/gateway.toml` when the operator wrote one, else from the host
//! (cores, memory, the state directory's filesystem) with a default link speed. A service holds
//! its reservation while it should run (`desired = running`); admission is checked when a
//! service asks to run: install with start, and start.
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
//!
//! [pressure]            # when the agent stops services to free memory
//! memory_free_min = "64MiB"   # evict when the host has less memory free than this
//!
//! [network]             # the services' network: see the `network` crate
//! lan = "br-lan"
//! ```
//!
//! The bandwidth capacity is the link's: HTB shapes every service's traffic under it, and the
//! bandwidth reserve is the guaranteed share of the gateway's own LAN↔WAN forwarding.
//!
//! Services are also evicted when together they use more memory than capacity less the
//! system reserve.

use std::collections::BTreeMap;
use std::path::Path;

use admission::{Amounts, Gateway, Holder, Resource};
use serde::Deserialize;
use state::{Desired, Phase, ServiceRecord};

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
    providers: BTreeMap<String, RawAmounts>,
    #[serde(default)]
    pressure: RawPressure,
    #[serde(default)]
    network: network::config::RawNetwork,
    #[serde(default)]
    catalog: Option<CatalogConfig>,
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
    for (provider, caps) in &raw.providers {
        let mut amounts = Amounts::UNLIMITED;
        caps.apply(&format!("providers.{provider}"), &mut amounts)
            .map_err(bad)?;
        provider_caps.insert(provider.clone(), amounts);
    }
    let memory_free_min = match &raw.pressure.memory_free_min {
        Some(text) => manifest::units::parse_size(text)
            .map_err(|e| bad(format!("pressure.memory_free_min: {e}")))?,
        // A quarter of what is kept back for the system, at most 64 MiB.
        None => (system_reserve.memory / 4).min(64 << 20),
    };
    let network = network::Config::from_raw(&raw.network).map_err(|e| bad(e.to_string()))?;
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
        },
    ))
}

/// What a manifest reserves, in admission's units.
pub fn reservation(m: &manifest::Manifest) -> Amounts {
    let r = &m.resources;
    Amounts {
        cpu: (r.cpu.reserve * 1000.0).round() as u64,
        memory: r.memory.reserve,
        storage: r.storage.reserve,
        bandwidth_down: r.bandwidth_down.reserve,
        bandwidth_up: r.bandwidth_up.reserve,
    }
}

/// The services that hold their reservation now, other than `except`. A service that should
/// run (including one being installed to run) holds all of it; an installed one that is
/// stopped still holds its storage, since its data volume stays.
pub fn holders(records: &[ServiceRecord], except: &str) -> Vec<Holder> {
    records
        .iter()
        .filter(|r| r.name != except && r.phase != Phase::Removing)
        .filter_map(|r| {
            let m = manifest::parse(&r.manifest, "shg-service.toml").ok()?;
            let mut full = reservation(&m);
            // An update in progress holds the larger of both releases' reservations, so
            // nothing admitted meanwhile takes what the switch needs.
            if let Some(next) = r
                .next
                .as_ref()
                .and_then(|n| manifest::parse(&n.manifest, "shg-service.toml").ok())
            {
                let other = reservation(&next);
                for res in Resource::ALL {
                    full.set(res, full.get(res).max(other.get(res)));
                }
            }
            let reserved = if r.desired == Desired::Running {
                full
            } else {
                Amounts::ZERO.with(Resource::Storage, full.storage)
            };
            Some(Holder {
                name: r.name.clone(),
                provider: r.provider.clone(),
                priority: r.priority,
                reserved,
            })
        })
        .filter(|h| !h.reserved.is_zero())
        .collect()
}

/// What all holders hold together.
pub fn reserved(records: &[ServiceRecord]) -> Amounts {
    holders(records, "")
        .iter()
        .fold(Amounts::ZERO, |sum, h| sum.add(&h.reserved))
}

/// Which part of a reservation an admission check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Installing: the data volume's storage, held until the service is removed.
    Volume,
    /// Running: CPU, memory and bandwidth (the storage is already held).
    Run,
}

impl Check {
    /// The part of `full` this check asks for.
    pub fn part(self, full: Amounts) -> Amounts {
        match self {
            Check::Volume => Amounts::ZERO.with(Resource::Storage, full.storage),
            Check::Run => full.with(Resource::Storage, 0),
        }
    }
}

/// Whether `manifest` may hold the `check` part of its reservation beside the services of
/// `records` (its own record aside), as if those in `stopping` had given theirs back.
pub fn check(
    gw: &Gateway,
    records: &[ServiceRecord],
    manifest: &manifest::Manifest,
    priority: i32,
    check: Check,
    stopping: &[String],
) -> Result<(), admission::Refusal> {
    let mut holders = holders(records, &manifest.name);
    holders.retain(|h| !stopping.contains(&h.name));
    let request = admission::Request {
        name: &manifest.name,
        provider: &manifest.provider,
        priority,
        reserved: check.part(reservation(manifest)),
    };
    admission::admit(gw, &holders, &request).map_err(|mut refusal| {
        if check == Check::Volume {
            // Stopping a service keeps its volume: only removing one frees storage.
            refusal.way_out = admission::WayOut::Remove;
        }
        refusal
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    mod lifecycles {
        //! The agent's admission rules over random lifecycles: storage held from install to
        //! removal, the rest while a service should run, rooms made by stopping others.

        use super::super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 6] = ["camera", "vod", "meter", "nas", "dns", "game"];
        const PROVIDERS: [&str; 2] = ["acme", "beta"];

        #[derive(Debug, Clone)]
        enum Op {
            Install {
                name: usize,
                provider: usize,
                start: bool,
                res: [u64; 5],
            },
            Start {
                name: usize,
                stop: Vec<usize>,
            },
            Stop(usize),
            Remove(usize),
            Priority(usize, i32),
        }

        fn res() -> impl Strategy<Value = [u64; 5]> {
            prop::array::uniform5(prop_oneof![2 => Just(0u64), 5 => 1u64..400])
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..NAMES.len(), 0..PROVIDERS.len(), any::<bool>(), res()).prop_map(
                    |(name, provider, start, res)| Op::Install { name, provider, start, res }
                ),
                3 => (0..NAMES.len(), prop::collection::vec(0..NAMES.len(), 0..3))
                    .prop_map(|(name, stop)| Op::Start { name, stop }),
                2 => (0..NAMES.len()).prop_map(Op::Stop),
                1 => (0..NAMES.len()).prop_map(Op::Remove),
                1 => (0..NAMES.len(), 0..=100i32).prop_map(|(n, p)| Op::Priority(n, p)),
            ]
        }

        /// cpu in millicores; memory and storage in MiB; bandwidth in Mbit/s.
        fn manifest_text(name: &str, provider: &str, r: [u64; 5]) -> String {
            format!(
                "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\
                 [run]\ncommand = [\"/bin/true\"]\n[resources]\n\
                 cpu = {{ reserve = {:.3} }}\nmemory = {{ reserve = \"{}MiB\" }}\n\
                 storage = {{ reserve = \"{}MiB\" }}\n\
                 bandwidth_down = {{ reserve = \"{}Mbit\" }}\nbandwidth_up = {{ reserve = \"{}Mbit\" }}\n",
                r[0] as f64 / 1000.0,
                r[1],
                r[2],
                r[3],
                r[4]
            )
        }

        fn gateway() -> Gateway {
            let mib = 1u64 << 20;
            Gateway {
                capacity: Amounts {
                    cpu: 1000,
                    memory: 800 * mib,
                    storage: 800 * mib,
                    bandwidth_down: 800_000_000,
                    bandwidth_up: 800_000_000,
                },
                system_reserve: Amounts {
                    cpu: 100,
                    memory: 100 * mib,
                    storage: 0,
                    bandwidth_down: 0,
                    bandwidth_up: 100_000_000,
                },
                provider_caps: BTreeMap::from([(
                    "beta".to_string(),
                    Amounts::UNLIMITED.with(Resource::Memory, 300 * mib),
                )]),
            }
        }

        fn find(records: &[ServiceRecord], name: &str) -> Option<usize> {
            records.iter().position(|r| r.name == name)
        }

        /// Applies `op` as the agent does: every check before any change.
        fn apply(gw: &Gateway, records: &mut Vec<ServiceRecord>, op: &Op) {
            match op {
                Op::Install {
                    name,
                    provider,
                    start,
                    res,
                } => {
                    let name = NAMES[*name];
                    if find(records, name).is_some() {
                        return;
                    }
                    let text = manifest_text(name, PROVIDERS[*provider], *res);
                    let m = manifest::parse(&text, "test").expect("a valid manifest");
                    let prio = state::DEFAULT_PRIORITY;
                    if check(gw, records, &m, prio, Check::Volume, &[]).is_err() {
                        return;
                    }
                    if *start && check(gw, records, &m, prio, Check::Run, &[]).is_err() {
                        return;
                    }
                    let mut rec = ServiceRecord::new(name, &m.provider, "1.0.0", "d", &text);
                    rec.phase = Phase::Installed;
                    rec.desired = if *start {
                        Desired::Running
                    } else {
                        Desired::Stopped
                    };
                    records.push(rec);
                }
                Op::Start { name, stop } => {
                    let name = NAMES[*name];
                    let Some(i) = find(records, name) else { return };
                    if records[i].desired == Desired::Running {
                        return;
                    }
                    let stop: Vec<String> = stop
                        .iter()
                        .map(|s| NAMES[*s].to_string())
                        .filter(|s| s != name)
                        .filter(|s| {
                            find(records, s).is_some_and(|j| records[j].desired == Desired::Running)
                        })
                        .collect();
                    let m = manifest::parse(&records[i].manifest, "test").unwrap();
                    let prio = records[i].priority;
                    if check(gw, records, &m, prio, Check::Run, &stop).is_err() {
                        return;
                    }
                    for r in records.iter_mut() {
                        if stop.contains(&r.name) {
                            r.desired = Desired::Stopped;
                        }
                    }
                    records[i].desired = Desired::Running;
                }
                Op::Stop(n) => {
                    if let Some(i) = find(records, NAMES[*n]) {
                        records[i].desired = Desired::Stopped;
                    }
                }
                Op::Remove(n) => records.retain(|r| r.name != NAMES[*n]),
                Op::Priority(n, p) => {
                    if let Some(i) = find(records, NAMES[*n]) {
                        records[i].priority = *p;
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

            #[test]
            fn reservations_never_exceed_what_the_gateway_gives_out(
                ops in prop::collection::vec(op(), 1..30)
            ) {
                let gw = gateway();
                let mut records = Vec::new();
                for op in &ops {
                    apply(&gw, &mut records, op);
                    let held = holders(&records, "");
                    let sum = held.iter().fold(Amounts::ZERO, |s, h| s.add(&h.reserved));
                    for r in Resource::ALL {
                        prop_assert!(
                            sum.get(r) <= gw.available().get(r),
                            "{r:?} over-committed after {op:?}: {sum:?}"
                        );
                    }
                    let beta = held
                        .iter()
                        .filter(|h| h.provider == "beta")
                        .map(|h| h.reserved.memory)
                        .sum::<u64>();
                    prop_assert!(beta <= 300 << 20, "beta over its cap: {beta}");
                    // Storage is held by every installed service, running or not.
                    let installed_storage: u64 = records
                        .iter()
                        .map(|r| reservation(&manifest::parse(&r.manifest, "t").unwrap()).storage)
                        .sum();
                    prop_assert_eq!(sum.storage, installed_storage);
                }
            }
        }
    }
}
