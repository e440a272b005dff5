//! The agent's side of service networking (crate `network` does the work): which installed
//! services are on the network and where, and the hooks the lifecycle calls at install,
//! start, exit and removal. (Published ports are admitted with the rest, in `capacity`.)
//!
//! The nftables table and the hosts files follow the *installed* services (addresses are
//! fixed from install to removal); veths and HTB classes follow the *running* ones.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use std::sync::Arc;

use api::ServiceSummary;
use network::plan::LanGrant;
use network::{Member, Network};
use state::{Note, Phase, ServiceRecord};

use crate::lifecycle::{manifest_of, summary};
use crate::{Agent, AgentError};

/// The most LAN hosts (or host ports) one service may be let reach.
pub const MAX_LAN_GRANTS: usize = 32;

/// The services' network, and what guards it.
pub(crate) struct Networking {
    /// `None` when `[network] enabled = false`.
    pub(crate) network: Option<Network>,
    /// One network change at a time (two first starts would both make the bridge).
    pub(crate) lock: Mutex<()>,
    /// The last reading of the services' traffic counters.
    pub(crate) traffic: Mutex<TrafficMeter>,
}

impl Networking {
    pub(crate) fn new(network: Option<Network>) -> Networking {
        Networking {
            network,
            lock: Mutex::new(()),
            traffic: Mutex::new(TrafficMeter::default()),
        }
    }
}

/// A service's bandwidth as HTB sees it.
fn shape_of(m: &manifest::Manifest) -> network::ops::Shape {
    let r = &m.resources;
    network::ops::Shape {
        down_rate: r.bandwidth_down.reserve,
        down_ceil: r.bandwidth_down.limit,
        up_rate: r.bandwidth_up.reserve,
        up_ceil: r.bandwidth_up.limit,
    }
}

impl Agent {
    /// The installed services that hold a slot, as the network sees them.
    fn members(&self) -> Result<Vec<Member>, AgentError> {
        let records = self.store().list()?;
        Ok(records
            .iter()
            .filter(|r| r.phase != Phase::Removing)
            .filter_map(|r| {
                let mut member = Member::new(&manifest_of(r).ok()?, r.slot?);
                member.lan = self.lan_grants(&r.lan);
                Some(member)
            })
            .collect())
    }

    /// The stored grants, as the firewall takes them (each was checked when granted).
    fn lan_grants(&self, hosts: &[String]) -> Vec<LanGrant> {
        let Some(net) = &self.net.network else {
            return Vec::new();
        };
        hosts
            .iter()
            .filter_map(|h| LanGrant::parse(h, &net.cfg).ok())
            .collect()
    }

    /// The household lets `name` reach `hosts` on the LAN (each `HOST` or `HOST:PORT`), and
    /// nothing else there; an empty list closes the LAN to it again. Applied to the firewall
    /// at once; on failure the old grants stay, in the record and in the firewall.
    pub async fn set_lan(
        self: &Arc<Self>,
        name: &str,
        hosts: &[String],
    ) -> Result<ServiceSummary, AgentError> {
        let Some(net) = &self.net.network else {
            return Err(AgentError::BadRequest(
                "this gateway gives its services no network (`[network] enabled = false` in gateway.toml): there is no LAN to open"
                    .into(),
            ));
        };
        let mut grants: Vec<LanGrant> = Vec::new();
        for host in hosts {
            let grant = LanGrant::parse(host.trim(), &net.cfg).map_err(AgentError::BadRequest)?;
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        if grants.len() > MAX_LAN_GRANTS {
            return Err(AgentError::BadRequest(format!(
                "{} LAN hosts given; a service may be let reach {MAX_LAN_GRANTS} at most (grant a host's every port with `HOST` rather than one entry per port)",
                grants.len()
            )));
        }
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let old = self.store().get(name)?.lan;
        let new: Vec<String> = grants.iter().map(LanGrant::to_string).collect();
        let message = if new.is_empty() {
            format!("the household closed the LAN to `{name}`")
        } else {
            format!(
                "the household lets `{name}` reach {} on the LAN",
                new.join(", ")
            )
        };
        let rec = self
            .store()
            .update(name, Some(Note::new("lan", message)), |r| r.lan = new)?;
        if let Err(e) = crate::host::blocking(|| self.refresh_network()) {
            self.store().update(name, None, |r| r.lan = old)?;
            let _ = crate::host::blocking(|| self.refresh_network());
            return Err(e);
        }
        Ok(summary(&rec))
    }

    /// The address of a service, when the gateway gives services a network.
    pub(crate) fn address_of(&self, rec: &ServiceRecord) -> Option<String> {
        let net = self.net.network.as_ref()?;
        Some(net.cfg.address(rec.slot?).to_string())
    }

    /// Brings the network in line with the installed services: the bridge and shaping
    /// devices, the firewall and NAT rules, every service's hosts file. With no service
    /// left, takes it all away. Blocking.
    pub(crate) fn refresh_network(&self) -> Result<(), AgentError> {
        let Some(net) = &self.net.network else {
            return Ok(());
        };
        let _one_at_a_time = self.net.lock.lock().unwrap_or_else(|p| p.into_inner());
        let members = self.members()?;
        if members.is_empty() {
            net.teardown();
            return Ok(());
        }
        net.ensure_base().map_err(AgentError::Network)?;
        net.apply_rules(&members).map_err(AgentError::Network)?;
        for m in &members {
            self.write_net_files(net, m, &members)?;
        }
        Ok(())
    }

    fn write_net_files(
        &self,
        net: &Network,
        member: &Member,
        members: &[Member],
    ) -> Result<(), AgentError> {
        let dir = self.layout.service(&member.name).net();
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        let files = [
            ("hosts", network::plan::hosts(&net.cfg, member, members)),
            ("resolv.conf", network::plan::resolv_conf(&net.resolvers())),
        ];
        for (file, text) in files {
            // Rewritten in place, not replaced: a running service sees the file through a
            // bind mount of this very inode.
            let path = dir.join(file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, text).map_err(|e| AgentError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// The files bound into the service's /etc.
    pub(crate) fn etc_files(&self, name: &str) -> Vec<(String, PathBuf)> {
        if self.net.network.is_none() {
            return Vec::new();
        }
        let dir = self.layout.service(name).net();
        vec![
            ("/etc/hosts".into(), dir.join("hosts")),
            ("/etc/resolv.conf".into(), dir.join("resolv.conf")),
        ]
    }

    /// What the runtime helper needs to put the service on the bridge. Blocking.
    pub(crate) fn attach_for(
        &self,
        rec: &ServiceRecord,
    ) -> Result<Option<runtime::net::Attach>, AgentError> {
        let Some(net) = &self.net.network else {
            return Ok(None);
        };
        let slot = rec.slot.ok_or_else(|| {
            AgentError::StartFailed(format!(
                "`{}` has no address: all 253 places on the service network are taken",
                rec.name
            ))
        })?;
        // Installs, removals and recovery keep the bridge, rules and /etc files current; a
        // start only rebuilds them when the bridge went away behind the agent's back.
        if !net.link_exists(&net.names.bridge()) {
            self.refresh_network()?;
        }
        Ok(Some(runtime::net::Attach {
            bridge: net.names.bridge(),
            host_if: net.names.host_if(slot),
            peer_if: net.names.peer_if(slot),
            address: net.cfg.address(slot),
            gateway: net.cfg.gateway_address(),
        }))
    }

    /// Gives a running service its bandwidth classes. Blocking.
    pub(crate) fn shape_service(&self, rec: &ServiceRecord) {
        let (Some(net), Some(slot)) = (&self.net.network, rec.slot) else {
            return;
        };
        let Ok(manifest) = manifest_of(rec) else {
            return;
        };
        let shaped = {
            let _one_at_a_time = self.net.lock.lock().unwrap_or_else(|p| p.into_inner());
            net.shape(slot, &shape_of(&manifest))
        };
        if let Err(e) = shaped {
            tracing::warn!(service = %rec.name, "cannot shape its bandwidth: {e}");
            let _ = self.store().record(
                Some(&rec.name),
                state::Note::new(
                    "network-degraded",
                    format!("`{}` runs without its bandwidth guarantee: {e}", rec.name),
                ),
            );
        }
    }

    /// Takes a stopped service's classes and veth away. Blocking.
    pub(crate) fn unshape_service(&self, rec: &ServiceRecord) {
        if let (Some(net), Some(slot)) = (&self.net.network, rec.slot) {
            let _one_at_a_time = self.net.lock.lock().unwrap_or_else(|p| p.into_inner());
            net.unshape(slot);
        }
    }
}

/// One HTB class's traffic: bytes sent so far and the rate between the last two readings, per
/// direction (down, up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClassTraffic {
    pub bytes: (u64, u64),
    pub rate: Option<(u64, u64)>,
}

/// Bytes (or bits/s) per direction, (down, up), by HTB class minor.
type PerClass = HashMap<u32, (u64, u64)>;

/// The last reading of the HTB counters, to turn the next one into rates.
#[derive(Debug, Default)]
pub struct TrafficMeter {
    last: Option<(std::time::Instant, PerClass)>,
    rates: PerClass,
}

/// Readings closer together than this reuse the last rates instead of dividing by almost 0.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl TrafficMeter {
    /// Folds a reading taken at `now` in; returns every class's bytes and rate.
    pub(crate) fn update(
        &mut self,
        now: std::time::Instant,
        bytes: HashMap<u32, (u64, u64)>,
    ) -> HashMap<u32, ClassTraffic> {
        match &self.last {
            Some((at, _)) if now.duration_since(*at) < MIN_INTERVAL => {}
            Some((at, before)) => {
                let secs = now.duration_since(*at).as_secs_f64();
                let rate =
                    |now: u64, then: u64| (now.saturating_sub(then) as f64 * 8.0 / secs) as u64;
                self.rates = bytes
                    .iter()
                    .map(|(minor, (down, up))| {
                        // A class made since the last reading (a restart) starts from 0.
                        let (d0, u0) = before.get(minor).copied().unwrap_or((0, 0));
                        let (d0, u0) = if *down < d0 || *up < u0 {
                            (0, 0)
                        } else {
                            (d0, u0)
                        };
                        (*minor, (rate(*down, d0), rate(*up, u0)))
                    })
                    .collect();
                self.last = Some((now, bytes.clone()));
            }
            None => self.last = Some((now, bytes.clone())),
        }
        bytes
            .into_iter()
            .map(|(minor, b)| {
                let rate = self.rates.get(&minor).copied();
                (minor, ClassTraffic { bytes: b, rate })
            })
            .collect()
    }
}

impl Agent {
    /// Every HTB class's traffic now, by class minor (a service's slot; 1 for the link);
    /// empty without networking. Blocking (two `tc` runs).
    pub(crate) fn traffic(&self) -> HashMap<u32, ClassTraffic> {
        let Some(net) = &self.net.network else {
            return HashMap::new();
        };
        let bytes = net.class_bytes();
        let mut meter = self.net.traffic.lock().unwrap_or_else(|p| p.into_inner());
        meter.update(std::time::Instant::now(), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rates_come_from_two_readings_far_enough_apart() {
        let mut meter = TrafficMeter::default();
        let t0 = Instant::now();
        let first = meter.update(t0, HashMap::from([(2, (1_000, 0))]));
        assert_eq!(first[&2].rate, None, "one reading gives no rate");
        // 125 000 bytes more in 1 s down = 1 Mbit/s; 12 500 up = 100 kbit/s.
        let second = meter.update(
            t0 + Duration::from_secs(1),
            HashMap::from([(2, (126_000, 12_500))]),
        );
        assert_eq!(second[&2].rate, Some((1_000_000, 100_000)));
        assert_eq!(second[&2].bytes, (126_000, 12_500));
        // Too soon after: the same rates, fresh bytes.
        let third = meter.update(
            t0 + Duration::from_millis(1100),
            HashMap::from([(2, (127_000, 12_500))]),
        );
        assert_eq!(third[&2].rate, Some((1_000_000, 100_000)));
        // A class that restarted from zero does not give a negative or huge rate.
        let fourth = meter.update(t0 + Duration::from_secs(2), HashMap::from([(2, (500, 0))]));
        assert_eq!(fourth[&2].rate, Some((4_000, 0)));
    }
}
