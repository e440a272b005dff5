//! `shg stats`: what each service uses against its reservation and limit, from the monitor's
//! last sample, and the gateway's totals per resource.

use std::os::unix::fs::MetadataExt;

use admission::{Amounts, Resource};
use api::{
    CpuUse, GatewayUse, IoUse, MemoryUse, PidsUse, ResourceTotals, ServiceUse, StatsView,
    StorageUse,
};
use state::ServiceRecord;

use crate::lifecycle::{manifest_of, summary};
use crate::{capacity, Agent, AgentError};

impl Agent {
    pub fn stats(&self) -> Result<StatsView, AgentError> {
        let records = self.store().list()?;
        let mut services = Vec::with_capacity(records.len());
        for rec in &records {
            services.push(self.service_use(rec)?);
        }
        let (host_cpu, host, sampled_at_ms) = self.monitor.host();
        let storage_used: u64 = services
            .iter()
            .map(|s| s.storage.used.unwrap_or(0) + s.storage.logs)
            .sum();
        let reserved = capacity::holders(&records, "")
            .iter()
            .fold(Amounts::ZERO, |sum, h| sum.add(&h.reserved));
        let totals = |r: Resource, used: Option<u64>| ResourceTotals {
            capacity: self.gateway.capacity.get(r),
            system_reserve: self.gateway.system_reserve.get(r),
            reserved: reserved.get(r),
            used,
            free: self.gateway.available().sub(&reserved).get(r),
        };
        Ok(StatsView {
            sampled_at_ms,
            cgroups: self.monitor.version().to_string(),
            gateway: GatewayUse {
                cpu: totals(Resource::Cpu, host_cpu),
                memory: totals(
                    Resource::Memory,
                    host.map(|h| h.memory_total.saturating_sub(h.memory_available)),
                ),
                storage: totals(Resource::Storage, Some(storage_used)),
                bandwidth_down: totals(Resource::BandwidthDown, None),
                bandwidth_up: totals(Resource::BandwidthUp, None),
            },
            services,
        })
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
            name: rec.name.clone(),
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
        })
    }
}
