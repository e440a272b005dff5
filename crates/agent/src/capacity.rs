//! Admission: whether a service's reservation fits beside those that hold theirs, checked
//! and taken under one lock, for every way a service comes to hold one (install, start,
//! update, rollback) — the storage, the rest, and its published ports.
//!
//! A service holds its CPU, memory and bandwidth reservation while it should run
//! (`desired = running`), and its storage while it is installed: [`holders`] is the one place
//! that says so. The gateway's capacity comes from `gateway.toml` (see [`crate::settings`]).

use std::collections::{BTreeMap, BTreeSet};

use admission::{Amounts, Gateway, Holder, Resource};
use state::{Desired, Phase, ServiceRecord};

use network::Member;

use crate::auth::Principal;
use crate::lifecycle::manifest_of;
use crate::{Agent, AgentError};

/// The gateway's capacity, and the lock under which an admission check and the record change
/// that takes the reservation happen together.
pub(crate) struct Admission {
    /// Capacity, system reserve and provider caps, read at start.
    pub(crate) gateway: Gateway,
    /// Held from an admission check until the reservation is recorded, so two services can
    /// never both take the last free share.
    pub(crate) lock: tokio::sync::Mutex<()>,
}

impl Admission {
    pub(crate) fn new(gateway: Gateway) -> Admission {
        Admission {
            gateway,
            lock: tokio::sync::Mutex::new(()),
        }
    }
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
        // Services by the names people give them back (`stop=` takes either).
        refusal.service = manifest::bare_name(&refusal.service).to_string();
        for s in &mut refusal.shortages {
            for h in &mut s.holders {
                h.name = manifest::shown_key(&h.name);
            }
        }
        for name in refusal.proposal.iter_mut().flatten() {
            *name = manifest::shown_key(name);
        }
        refusal
    })
}

impl Agent {
    /// Checks that `manifest` may hold the `check` part of its reservation beside the services
    /// that hold theirs now; a refusal is journaled (when `journal`) and says what is short
    /// and what would make room.
    pub(crate) fn admit(
        &self,
        manifest: &manifest::Manifest,
        priority: i32,
        check: Check,
        journal: bool,
    ) -> Result<(), AgentError> {
        self.admit_beside(manifest, priority, check, journal, &[])
    }

    /// [`Agent::admit`] as if the services in `stopping` had given their reservation back.
    pub(crate) fn admit_beside(
        &self,
        manifest: &manifest::Manifest,
        priority: i32,
        check: Check,
        journal: bool,
        stopping: &[String],
    ) -> Result<(), AgentError> {
        let records = self.store().list()?;
        self::check(
            &self.admission.gateway,
            &records,
            manifest,
            priority,
            check,
            stopping,
        )
        .map_err(|refusal| {
            if journal {
                // The service's provider reads its journal too: no rival's names in it.
                let mut told = refusal.clone();
                told.redact_for(&manifest.provider);
                let _ = self.store().record(
                    Some(&manifest.name),
                    state::Note::new("admission-refused", told.to_string()),
                );
            }
            AgentError::Refused(Box::new(refusal))
        })
    }

    /// Capacity, reserve, what is reserved and what is free, per resource.
    pub fn capacity(&self) -> Result<api::CapacityView, AgentError> {
        let records = self.store().list()?;
        let reserved = reserved(&records);
        let available = self.admission.gateway.available();
        let json = |a: &Amounts| serde_json::to_value(a).unwrap_or_default();
        Ok(api::CapacityView {
            capacity: json(&self.admission.gateway.capacity),
            system_reserve: json(&self.admission.gateway.system_reserve),
            available: json(&available),
            reserved: json(&reserved),
            free: json(&available.sub(&reserved)),
            tenants: self.tenants(&records),
        })
    }

    /// Per provider with a cap or an installed service: the cap (None where uncapped) and
    /// what its services hold.
    fn tenants(&self, records: &[ServiceRecord]) -> BTreeMap<String, api::Tenant> {
        let mut providers: BTreeSet<String> = records.iter().map(|r| r.provider.clone()).collect();
        providers.extend(self.admission.gateway.provider_caps.keys().cloned());
        providers
            .into_iter()
            .map(|p| {
                let cap = api::AmountsCap {
                    cpu: self.admission.gateway.cap(&p, Resource::Cpu),
                    memory: self.admission.gateway.cap(&p, Resource::Memory),
                    storage: self.admission.gateway.cap(&p, Resource::Storage),
                    bandwidth_down: self.admission.gateway.cap(&p, Resource::BandwidthDown),
                    bandwidth_up: self.admission.gateway.cap(&p, Resource::BandwidthUp),
                };
                let held: Vec<ServiceRecord> = records
                    .iter()
                    .filter(|r| r.provider == p)
                    .cloned()
                    .collect();
                let reserved = serde_json::to_value(reserved(&held)).unwrap_or_default();
                (p, api::Tenant { cap, reserved })
            })
            .collect()
    }

    /// Refuses a list of services to stop that names the requester, or a service that holds
    /// no reservation to give up.
    pub(crate) fn check_stoppable(
        &self,
        requester: &str,
        stop: &[String],
    ) -> Result<(), AgentError> {
        for name in stop {
            if name == requester {
                return Err(AgentError::BadRequest(format!(
                    "`{name}` cannot make room for itself; drop it from the services to stop"
                )));
            }
            let rec = self.store().get(name)?;
            if rec.phase != Phase::Installed || rec.desired != Desired::Running {
                return Err(AgentError::BadRequest(format!(
                    "`{name}` is not running, so stopping it frees nothing; drop it from the services to stop"
                )));
            }
        }
        Ok(())
    }

    /// Records that the services in `stop` no longer hold their reservation; the caller holds
    /// the admission lock and stops them next ([`Agent::stop_to_make_room`]).
    pub(crate) fn give_up_reservations(&self, stop: &[String]) -> Result<(), AgentError> {
        for name in stop {
            self.store()
                .update(name, None, |r| r.desired = Desired::Stopped)?;
        }
        Ok(())
    }

    /// Refuses a manifest whose published ports the gateway keeps or another installed
    /// service publishes on the same side. `who` sees a rival provider's service unnamed.
    pub(crate) fn check_ports(
        &self,
        who: &Principal,
        manifest: &manifest::Manifest,
    ) -> Result<(), AgentError> {
        let Some(net) = &self.net.network else {
            return Ok(());
        };
        let mut reserved = net.cfg.reserved_ports.clone();
        if let Some(port) = self.cfg.api_port {
            reserved.push(port);
        }
        let records = self.store().list()?;
        let others: Vec<Member> = records
            .iter()
            // An update republishes the service's own ports.
            .filter(|r| r.name != manifest.name)
            .filter_map(|r| Some(Member::new(&manifest_of(r).ok()?, r.slot.unwrap_or(0))))
            .collect();
        let Some(conflict) =
            network::plan::port_conflict(&Member::new(manifest, 0), &others, &reserved)
        else {
            return Ok(());
        };
        let Some(holder) = &conflict.holder else {
            return Err(AgentError::Conflict(format!(
                "cannot install `{}`: {conflict}",
                manifest::bare_name(&manifest.name)
            )));
        };
        let rival = match who {
            Principal::Provider(caller) => records
                .iter()
                .any(|r| r.name == *holder && r.provider != *caller),
            _ => false,
        };
        let shown = if rival {
            "another provider's service".to_string()
        } else {
            format!("`{}`", manifest::shown_key(holder))
        };
        let message = format!(
            "cannot install `{}`: {}",
            manifest::bare_name(&manifest.name),
            conflict.message(Some(&shown))
        );
        Err(AgentError::Conflict(message))
    }

    /// `shg start --dry-run`: whether the service would be admitted, changing nothing.
    pub fn check_start(&self, name: &str) -> Result<api::Verdict, AgentError> {
        let rec = self.store().get(name)?;
        if rec.desired != Desired::Running {
            self.admit(&manifest_of(&rec)?, rec.priority, Check::Run, false)?;
        }
        Ok(api::Verdict {
            service: name.to_string(),
            admitted: true,
            message: format!("`{name}` would be admitted: its reservation fits"),
        })
    }
}

#[cfg(test)]
mod tests {
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
