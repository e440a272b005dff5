//! `shg stats`: what each service uses against its reservation and limit, from the monitor's
//! last sample, and the gateway's totals per resource.

use std::os::unix::fs::MetadataExt;

use admission::Resource;
use api::{
    BandwidthUse, CpuUse, GatewayUse, IoUse, MemoryUse, PidsUse, ResourceTotals, ServiceUse,
    StatsView, StorageUse,
};
use state::ServiceRecord;

use crate::auth::Principal;
use crate::lifecycle::{manifest_of, summary};
use crate::{capacity, Agent, AgentError};

impl Agent {
    /// What every service `who` sees uses; the gateway's totals for the operator and the
    /// household only.
    pub fn stats(&self, who: &Principal) -> Result<StatsView, AgentError> {
        let records = self.store().list()?;
        let traffic = self.traffic();
        let mut services = Vec::with_capacity(records.len());
        for rec in records.iter().filter(|r| who.sees(&r.provider)) {
            let mut service = self.service_use(rec)?;
            // Only a running service has a class; a stopped one's counters are gone.
            if let Some(t) = rec
                .pid
                .and(rec.slot)
                .and_then(|s| traffic.get(&u32::from(s)))
            {
                service.bandwidth_down.bytes = Some(t.bytes.0);
                service.bandwidth_up.bytes = Some(t.bytes.1);
                service.bandwidth_down.used = t.rate.map(|r| r.0);
                service.bandwidth_up.used = t.rate.map(|r| r.1);
            }
            services.push(service);
        }
        let link = traffic.get(&1).and_then(|t| t.rate);
        let (host_cpu, host, sampled_at_ms) = self.monitor.host();
        let storage_used: u64 = services
            .iter()
            .map(|s| s.storage.used.unwrap_or(0) + s.storage.logs)
            .sum();
        let reserved = capacity::reserved(&records);
        let totals = |r: Resource, used: Option<u64>| ResourceTotals {
            capacity: self.admission.gateway.capacity.get(r),
            system_reserve: self.admission.gateway.system_reserve.get(r),
            reserved: reserved.get(r),
            used,
            free: self.admission.gateway.available().sub(&reserved).get(r),
        };
        let gateway = GatewayUse {
            cpu: totals(Resource::Cpu, host_cpu),
            memory: totals(
                Resource::Memory,
                host.map(|h| h.memory_total.saturating_sub(h.memory_available)),
            ),
            storage: totals(Resource::Storage, Some(storage_used)),
            bandwidth_down: totals(Resource::BandwidthDown, link.map(|r| r.0)),
            bandwidth_up: totals(Resource::BandwidthUp, link.map(|r| r.1)),
        };
        Ok(StatsView {
            sampled_at_ms,
            cgroups: self.host.cgroups.version().to_string(),
            gateway: matches!(who, Principal::Operator | Principal::Home).then_some(gateway),
            services,
        })
    }

    /// `GET /metrics`: the same numbers in the Prometheus text format, one series per service
    /// (labels `service` and `provider`) and per gateway resource, scoped like `stats`.
    pub fn metrics(&self, who: &Principal) -> Result<String, AgentError> {
        let stats = self.stats(who)?;
        let mut m = Metrics::default();
        for s in &stats.services {
            let labels = format!(
                "service=\"{}\",provider=\"{}\"",
                escape(&s.name),
                escape(&s.provider)
            );
            let l = labels.as_str();
            m.gauge(
                "shg_service_up",
                "1 when the service's container runs",
                l,
                // From the record, not the monitor's sample: a service that has just started
                // is up before the monitor's next round measures it.
                Some(u64::from(s.state == "running")),
            );
            m.gauge(
                "shg_service_priority",
                "The household's ranking, 0 to 100",
                l,
                Some(s.priority.max(0) as u64),
            );
            m.gauge(
                "shg_service_cpu_millicores",
                "CPU used over the last second, in millicores",
                l,
                s.cpu.used,
            );
            m.gauge(
                "shg_service_cpu_reserve_millicores",
                "CPU reserved, in millicores",
                l,
                Some(s.cpu.reserve),
            );
            m.gauge(
                "shg_service_cpu_limit_millicores",
                "CPU limit, in millicores",
                l,
                s.cpu.limit,
            );
            m.counter(
                "shg_service_cpu_throttled_periods_total",
                "Scheduler periods spent at the CPU limit",
                l,
                s.cpu.throttled_periods,
            );
            m.gauge(
                "shg_service_memory_bytes",
                "Working set in bytes",
                l,
                s.memory.used,
            );
            m.gauge(
                "shg_service_memory_reserve_bytes",
                "Memory reserved in bytes",
                l,
                Some(s.memory.reserve),
            );
            m.gauge(
                "shg_service_memory_limit_bytes",
                "Memory limit in bytes",
                l,
                s.memory.limit,
            );
            m.counter(
                "shg_service_oom_kills_total",
                "Processes killed for lack of memory",
                l,
                Some(s.memory.oom_kills),
            );
            m.gauge(
                "shg_service_pids",
                "Processes and threads",
                l,
                s.pids.current,
            );
            m.gauge(
                "shg_service_pids_limit",
                "Limit on processes and threads",
                l,
                Some(s.pids.limit),
            );
            for (dir, b) in [("down", &s.bandwidth_down), ("up", &s.bandwidth_up)] {
                let l = format!("{l},direction=\"{dir}\"");
                m.counter(
                    "shg_service_network_bytes_total",
                    "Bytes the service's traffic class sent (frames on the wire) since it started",
                    &l,
                    b.bytes,
                );
                m.gauge(
                    "shg_service_network_bytes_per_second",
                    "Traffic rate between the last two readings",
                    &l,
                    b.used.map(|bits| bits / 8),
                );
                m.gauge(
                    "shg_service_network_reserve_bytes_per_second",
                    "Guaranteed traffic rate",
                    &l,
                    Some(b.reserve / 8),
                );
            }
            m.gauge(
                "shg_service_storage_used_bytes",
                "Bytes used on the data volume",
                l,
                s.storage.used,
            );
            m.gauge(
                "shg_service_storage_limit_bytes",
                "Size of the data volume",
                l,
                Some(s.storage.limit),
            );
        }
        if let Some(g) = &stats.gateway {
            for (resource, t) in [
                ("cpu_millicores", &g.cpu),
                ("memory_bytes", &g.memory),
                ("storage_bytes", &g.storage),
                ("bandwidth_down_bits", &g.bandwidth_down),
                ("bandwidth_up_bits", &g.bandwidth_up),
            ] {
                let l = format!("resource=\"{resource}\"");
                m.gauge(
                    "shg_gateway_capacity",
                    "What the gateway has, per resource",
                    &l,
                    Some(t.capacity),
                );
                m.gauge(
                    "shg_gateway_system_reserve",
                    "Kept back for the system, per resource",
                    &l,
                    Some(t.system_reserve),
                );
                m.gauge(
                    "shg_gateway_reserved",
                    "Reserved by services, per resource",
                    &l,
                    Some(t.reserved),
                );
                m.gauge(
                    "shg_gateway_used",
                    "Used on the host, per resource",
                    &l,
                    t.used,
                );
                m.gauge(
                    "shg_gateway_free",
                    "Left to reserve, per resource",
                    &l,
                    Some(t.free),
                );
            }
        }
        Ok(m.render())
    }

    fn service_use(&self, rec: &ServiceRecord) -> Result<ServiceUse, AgentError> {
        let m = manifest_of(rec)?;
        let r = &m.resources;
        let seen = rec.pid.and_then(|pid| self.monitor.seen(&rec.name, pid));
        let sample = seen.map(|s| s.sample).unwrap_or_default();
        let sl = self.layout.service(&rec.name);
        // The volume's use, when it is mounted (a different device from the service's
        // directory); a plain directory from an older install is not measured.
        let mounted = match (std::fs::metadata(sl.data()), std::fs::metadata(&sl.dir)) {
            (Ok(data), Ok(dir)) => data.dev() != dir.dev(),
            _ => false,
        };
        let storage_used = mounted
            .then(|| {
                runtime::volume::usage(&sl.data())
                    .ok()
                    .map(|(used, _)| used)
            })
            .flatten();
        let logs = std::fs::read_dir(sl.logs())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        let oom_kills = self
            .store()
            .count_events(&rec.name, "oom-killed", rec.installed_at_ms)?;
        let millicores = |cores: f64| (cores * 1000.0).round() as u64;
        Ok(ServiceUse {
            name: manifest::bare_name(&rec.name).to_string(),
            provider: rec.provider.clone(),
            state: summary(rec).state,
            priority: rec.priority,
            cpu: CpuUse {
                used: seen.and_then(|s| s.cpu),
                reserve: millicores(r.cpu.reserve),
                limit: r.cpu.limit.map(millicores),
                throttled_periods: sample.cpu_throttled,
                periods: sample.cpu_periods,
                throttled_ms: sample.cpu_throttled_ns.map(|ns| ns / 1_000_000),
            },
            memory: MemoryUse {
                used: sample.memory_bytes,
                cache: sample.memory_cache_bytes,
                reserve: r.memory.reserve,
                limit: r.memory.limit,
                oom_kills,
            },
            pids: PidsUse {
                current: sample.pids,
                limit: u64::from(r.pids.limit),
            },
            io: IoUse {
                read_bytes: sample.io_read_bytes,
                write_bytes: sample.io_write_bytes,
            },
            storage: StorageUse {
                used: storage_used,
                reserve: r.storage.reserve,
                limit: runtime::volume::size_for(r.storage.reserve, r.storage.limit),
                logs,
            },
            bandwidth_down: BandwidthUse {
                used: None,
                reserve: r.bandwidth_down.reserve,
                limit: r.bandwidth_down.limit,
                bytes: None,
            },
            bandwidth_up: BandwidthUse {
                used: None,
                reserve: r.bandwidth_up.reserve,
                limit: r.bandwidth_up.limit,
                bytes: None,
            },
        })
    }
}

/// Prometheus text exposition, grouped by metric (one HELP and TYPE line each).
#[derive(Default)]
struct Metrics {
    /// (name, help, type, samples) in first-seen order.
    families: Vec<(&'static str, &'static str, &'static str, Vec<String>)>,
}

impl Metrics {
    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &str,
        value: Option<u64>,
    ) {
        let Some(value) = value else { return };
        let sample = format!("{name}{{{labels}}} {value}");
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(sample),
            None => self.families.push((name, help, kind, vec![sample])),
        }
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: &str, value: Option<u64>) {
        self.add(name, help, "gauge", labels, value);
    }

    fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &str,
        value: Option<u64>,
    ) {
        self.add(name, help, "counter", labels, value);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, kind, samples) in &self.families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
