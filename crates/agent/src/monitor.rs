//! Watching what services use.
//!
//! A sampler reads every running service's cgroup once per interval (one second by default),
//! turns counters into rates, journals OOM kills and CPU throttling as they happen, and, when
//! memory runs short, stops the lowest-priority service that uses more than it reserved —
//! so it is the agent that chooses, by the household's ranking, and not the kernel at random.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use state::{now_ms, Desired, Note, Phase, RunState, ServiceRecord};

use crate::lifecycle::manifest_of;
use crate::{Agent, AgentError};

/// Least time between two `cpu-throttled` events of one service.
const THROTTLE_EVENT_EVERY: Duration = Duration::from_secs(60);
/// Time given to an eviction to free its memory before another service is considered.
const EVICTION_SETTLE: Duration = Duration::from_secs(10);

/// The sampler's memory: the last sample of each running service and of the host.
#[derive(Default)]
pub(crate) struct Monitor {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    services: HashMap<String, Tracked>,
    host: Option<(usage::HostSample, Instant)>,
    host_cpu: Option<u64>,
    sampled_at_ms: u64,
    last_eviction: Option<Instant>,
}

/// One run of one service (a new init PID starts afresh: its cgroup's counters did too).
struct Tracked {
    pid: i32,
    sample: usage::CgroupSample,
    at: Instant,
    cpu: Option<u64>,
    ooms_reported: u64,
    throttled_reported: u64,
    periods_reported: u64,
    last_throttle_event: Option<Instant>,
}

/// What the sampler saw of one service, for `shg stats`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    pub sample: usage::CgroupSample,
    /// Millicores over the last interval.
    pub cpu: Option<u64>,
}

/// A service to stop for lack of memory, and why.
pub(crate) struct Eviction {
    pub name: String,
    pub reason: String,
}

impl Monitor {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last sample of `name` if it belongs to the run whose init is `pid`.
    pub(crate) fn seen(&self, name: &str, pid: i32) -> Option<Seen> {
        let inner = self.inner();
        let t = inner.services.get(name).filter(|t| t.pid == pid)?;
        Some(Seen {
            sample: t.sample,
            cpu: t.cpu,
        })
    }

    /// Host CPU in millicores over the last interval, and the last host sample.
    pub(crate) fn host(&self) -> (Option<u64>, Option<usage::HostSample>, u64) {
        let inner = self.inner();
        (
            inner.host_cpu,
            inner.host.map(|(h, _)| h),
            inner.sampled_at_ms,
        )
    }

    /// OOM kills in the run of `name` whose init is `pid` that no event reported yet; marks
    /// them reported. Called by the sampler and once more when the service exits.
    fn unreported_ooms(&self, name: &str, pid: i32, counted: u64) -> u64 {
        let mut inner = self.inner();
        match inner.services.get_mut(name).filter(|t| t.pid == pid) {
            Some(t) => {
                let new = counted.saturating_sub(t.ooms_reported);
                t.ooms_reported = t.ooms_reported.max(counted);
                new
            }
            // Never sampled (it lived less than an interval): everything is new.
            None => counted,
        }
    }
}

impl Agent {
    /// Samples every running service and the host, journals what changed, and says which
    /// service to evict, if any. Blocking (it reads files); run it off the async threads.
    pub(crate) fn sample(&self) -> Result<Option<Eviction>, AgentError> {
        let records = self.store().list()?;
        let now = Instant::now();
        let mut notes: Vec<(String, Note)> = Vec::new();
        {
            let mut inner = self.monitor.inner();
            let running: Vec<&ServiceRecord> = records.iter().filter(|r| r.pid.is_some()).collect();
            inner
                .services
                .retain(|name, _| running.iter().any(|r| &r.name == name));
            for rec in running {
                let pid = rec.pid.unwrap_or_default();
                let Ok(sample) = self.host.cgroups.sample(&self.cfg.cgroup_parent, &rec.name)
                else {
                    continue;
                };
                let t = inner
                    .services
                    .entry(rec.name.clone())
                    .or_insert_with(|| Tracked::new(pid, sample, now));
                if t.pid != pid {
                    *t = Tracked::new(pid, sample, now);
                }
                t.cpu = match (t.sample.cpu_usage_ns, sample.cpu_usage_ns) {
                    (Some(a), Some(b)) if now > t.at => Some(usage::millicores(a, b, now - t.at)),
                    _ => t.cpu,
                };
                t.sample = sample;
                t.at = now;
                notes.extend(t.events(rec, now).map(|n| (rec.name.clone(), n)));
            }
            if let Ok(host) = usage::host(&self.cfg.proc_root) {
                if let Some((before, _)) = inner.host {
                    let busy = host.cpu_busy_ns.saturating_sub(before.cpu_busy_ns);
                    let total = host.cpu_total_ns.saturating_sub(before.cpu_total_ns);
                    let cores = self.admission.gateway.capacity.cpu;
                    if total > 0 {
                        inner.host_cpu =
                            Some((busy as u128 * cores as u128 / total as u128) as u64);
                    }
                }
                inner.host = Some((host, now));
            }
            inner.sampled_at_ms = now_ms();
        }
        for (name, note) in notes {
            self.store().record(Some(&name), note)?;
        }
        Ok(self.pressure(&records, now))
    }

    /// Journals the OOM kills of the run of `name` (init `pid`) not reported yet; called
    /// just before its cgroup is deleted. Returns how many the run had in all (the sampler
    /// may have reported some already).
    pub(crate) fn report_final_ooms(&self, name: &str, pid: i32, limit: Option<u64>) -> u64 {
        let counted = self
            .host
            .cgroups
            .oom_kills(&self.cfg.cgroup_parent, name)
            .unwrap_or(0);
        let new = self.monitor.unreported_ooms(name, pid, counted);
        if new > 0 {
            let _ = self.store().record(Some(name), oom_note(name, new, limit));
        }
        counted
    }

    /// The service to stop when memory is short: services together use more than they may
    /// (capacity less the system reserve), or the host has less free than the operator's
    /// minimum. The victim is the lowest-priority service above its memory reservation.
    fn pressure(&self, records: &[ServiceRecord], now: Instant) -> Option<Eviction> {
        let mut inner = self.monitor.inner();
        if inner
            .last_eviction
            .is_some_and(|t| now.duration_since(t) < EVICTION_SETTLE)
        {
            return None;
        }
        let allowed = self.admission.gateway.available().memory;
        let used: u64 = inner
            .services
            .values()
            .filter_map(|t| t.sample.memory_bytes)
            .sum();
        let host_free = inner.host.map(|(h, _)| h.memory_available);
        let host_short = host_free.is_some_and(|f| f < self.settings.memory_free_min);
        if used <= allowed && !host_short {
            return None;
        }
        let victim = records
            .iter()
            .filter(|r| r.phase == Phase::Installed && r.desired == Desired::Running)
            .filter(|r| r.state == RunState::Running)
            .filter_map(|r| {
                let t = inner
                    .services
                    .get(&r.name)
                    .filter(|t| Some(t.pid) == r.pid)?;
                let reserve = manifest_of(r).ok()?.resources.memory.reserve;
                let use_ = t.sample.memory_bytes?;
                (use_ > reserve).then_some((r, use_, reserve))
            })
            .min_by(|a, b| {
                a.0.priority
                    .cmp(&b.0.priority)
                    .then((b.1 - b.2).cmp(&(a.1 - a.2)))
            })?;
        let (rec, use_, reserve) = victim;
        let size = |b: u64| manifest::units::format_bytes(b);
        let why = if used > allowed {
            format!(
                "services use {} of the {} of memory they may use together",
                size(used),
                size(allowed)
            )
        } else {
            format!(
                "the gateway has only {} of memory free (the operator's minimum is {})",
                size(host_free.unwrap_or(0)),
                size(self.settings.memory_free_min)
            )
        };
        inner.last_eviction = Some(now);
        Some(Eviction {
            name: rec.name.clone(),
            reason: format!(
                "`{}` (priority {}) was stopped to relieve memory pressure: {why}, and it used {}, {} above its {} reservation; start it again when there is room",
                rec.name,
                rec.priority,
                size(use_),
                size(use_ - reserve),
                size(reserve)
            ),
        })
    }

    /// Samples every interval until the agent stops, evicting when memory runs short.
    pub(crate) fn spawn_sampler(self: &Arc<Self>) {
        let agent = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(agent.cfg.sample_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let a = agent.clone();
                let eviction = match tokio::task::spawn_blocking(move || a.sample()).await {
                    Ok(Ok(e)) => e,
                    Ok(Err(e)) => {
                        tracing::warn!("sampling failed: {e}");
                        None
                    }
                    Err(e) => {
                        tracing::error!("the sampler panicked: {e}");
                        None
                    }
                };
                if let Some(ev) = eviction {
                    tracing::warn!(service = %ev.name, "{}", ev.reason);
                    let a = agent.clone();
                    // The stop waits for the service to end; sampling goes on meanwhile.
                    tokio::spawn(async move {
                        let cause = crate::lifecycle::StopCause::new("evicted", ev.reason);
                        if let Err(e) = a.stop_because(&ev.name, Some(cause)).await {
                            tracing::warn!(service = %ev.name, "eviction failed: {e}");
                        }
                    });
                }
            }
        });
    }
}

impl Tracked {
    fn new(pid: i32, sample: usage::CgroupSample, at: Instant) -> Tracked {
        Tracked {
            pid,
            sample,
            at,
            cpu: None,
            ooms_reported: 0,
            throttled_reported: 0,
            periods_reported: 0,
            last_throttle_event: None,
        }
    }

    /// Events the newest sample calls for: OOM kills (every one), throttling (at most one
    /// event a minute, counting the periods since the last one).
    fn events<'a>(
        &'a mut self,
        rec: &'a ServiceRecord,
        now: Instant,
    ) -> impl Iterator<Item = Note> + 'a {
        // Parsed only when an event needs it: most samples need none.
        let manifest = || manifest_of(rec).ok();
        let mut notes = Vec::new();
        let ooms = self.sample.oom_kills.unwrap_or(0);
        if ooms > self.ooms_reported {
            let limit = manifest().and_then(|m| m.resources.memory.limit);
            notes.push(oom_note(&rec.name, ooms - self.ooms_reported, limit));
            self.ooms_reported = ooms;
        }
        let throttled = self.sample.cpu_throttled.unwrap_or(0);
        let periods = self.sample.cpu_periods.unwrap_or(0);
        let due = self
            .last_throttle_event
            .is_none_or(|t| now.duration_since(t) >= THROTTLE_EVENT_EVERY);
        if throttled > self.throttled_reported && due {
            let limit = manifest()
                .and_then(|m| m.resources.cpu.limit)
                .map(|c| format!("{c} cores"))
                .unwrap_or_else(|| "its CPU limit".into());
            notes.push(Note::new(
                "cpu-throttled",
                format!(
                    "`{}` hit its CPU limit of {limit} in {} of {} scheduler periods (100 ms each); it ran slower than it wanted to",
                    rec.name,
                    throttled - self.throttled_reported,
                    periods.saturating_sub(self.periods_reported).max(1)
                ),
            ));
            self.throttled_reported = throttled;
            self.periods_reported = periods;
            self.last_throttle_event = Some(now);
        }
        notes.into_iter()
    }
}

fn oom_note(name: &str, count: u64, limit: Option<u64>) -> Note {
    let limit = limit
        .map(|l| format!("its memory limit of {}", manifest::units::format_bytes(l)))
        .unwrap_or_else(|| "the memory it may use".into());
    let who = if count == 1 {
        "a process".to_string()
    } else {
        format!("{count} processes")
    };
    Note::new(
        "oom-killed",
        format!("the kernel killed {who} of `{name}` for lack of memory: it reached {limit}"),
    )
}
