//! Resource usage of the agent's services, read from their cgroups (v1 or v2 behind one
//! [`CgroupReader`]), and of the host as a whole, read from `/proc`; and the few cgroup settings
//! the agent changes itself (CPU weights), through the same [`Cgroups`], detected once.
//!
//! The agent samples every service once a second, so reading must stay well under 1% of one core
//! for 50 services: each file is read once into a per-thread buffer that is reused from sample to
//! sample, and parsed by hand without allocating. A value this host's cgroups do not expose (a
//! controller that is not mounted or not enabled, a counter an old kernel lacks, a file that does
//! not parse) is `None`, never an error; the only error a caller should expect is
//! [`std::io::ErrorKind::NotFound`] when the service's cgroup exists nowhere, that is when the
//! service is not running.
//!
//! Every reader takes its root (`/sys/fs/cgroup`, `/proc`) as a parameter, so tests point it at a
//! fake tree in a temporary directory.

mod host;
mod parse;
mod scratch;
mod v1;
mod v2;

use std::io;
use std::path::Path;
use std::time::Duration;

pub use host::{host, self_cpu_ns, HostSample};
pub use v1::V1;
pub use v2::V2;

/// One sample of a cgroup's counters; `None` where this host's cgroups do not expose the value.
///
/// Counters (`cpu_*`, `oom_kills`, `io_*`) are cumulative since the cgroup was created; compare
/// two samples to get a rate (see [`millicores`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CgroupSample {
    /// Cumulative CPU time in ns (v1 `cpuacct.usage`; v2 `cpu.stat` `usage_usec` × 1000).
    pub cpu_usage_ns: Option<u64>,
    /// Enforcement periods elapsed under a CPU quota (`cpu.stat` `nr_periods`).
    pub cpu_periods: Option<u64>,
    /// Periods in which the cgroup was throttled (`cpu.stat` `nr_throttled`).
    pub cpu_throttled: Option<u64>,
    /// Total time throttled in ns (v1 `throttled_time`; v2 `throttled_usec` × 1000).
    pub cpu_throttled_ns: Option<u64>,
    /// Working set in bytes: usage minus the inactive file cache, which the kernel reclaims
    /// first (v1 `memory.usage_in_bytes` − `total_inactive_file`; v2 `memory.current` −
    /// `inactive_file`), never below 0.
    pub memory_bytes: Option<u64>,
    /// Page cache in bytes (v1 `memory.stat` `total_cache`; v2 `memory.stat` `file`).
    pub memory_cache_bytes: Option<u64>,
    /// Hard memory limit in bytes; `None` when unlimited (v2 `max`, v1 a value ≥ 2^62).
    pub memory_limit: Option<u64>,
    /// Processes killed by the OOM killer (v1 `memory.oom_control` `oom_kill`, absent before
    /// Linux 4.13; v2 `memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// Processes and threads in the cgroup (`pids.current`).
    pub pids: Option<u64>,
    /// Limit on processes and threads (`pids.max`); `None` for `max`.
    pub pids_limit: Option<u64>,
    /// Bytes read from block devices, summed over devices (v1
    /// `blkio.throttle.io_service_bytes_recursive` `Read` lines; v2 `io.stat` `rbytes=`).
    pub io_read_bytes: Option<u64>,
    /// Bytes written to block devices, summed over devices (`Write` lines; `wbytes=`).
    pub io_write_bytes: Option<u64>,
}

/// Reads services' cgroups on one cgroup layout (v1 or v2); pick one with [`detect`].
///
/// A service's cgroup is `<hierarchy root>/<parent>/<name>`, e.g. `/sys/fs/cgroup/shg/camera` on
/// v2 or `/sys/fs/cgroup/memory/shg/camera` (and one directory per other controller) on v1.
pub trait CgroupReader: Send + Sync {
    /// Reads one service's cgroup.
    ///
    /// `Err(NotFound)` when the cgroup exists in none of the hierarchies (the service is not
    /// running); `Err(InvalidInput)` when `name` is not a single plain path component or `parent`
    /// is not a relative path of such components; another error only when no file at all could
    /// be read (e.g. permission denied). Anything else missing or unparseable is `None`.
    fn sample(&self, parent: &str, name: &str) -> io::Result<CgroupSample>;

    /// The [`CgroupSample::oom_kills`] of one service's cgroup, read alone (one file, where a
    /// sample reads a dozen): what the agent asks of a service that has just exited, before
    /// it tells anyone of the exit. `None` where [`CgroupReader::sample`] would give `None`,
    /// or fail.
    fn oom_kills(&self, parent: &str, name: &str) -> Option<u64> {
        self.sample(parent, name).ok().and_then(|s| s.oom_kills)
    }

    /// `"v1"` or `"v2"`, for display.
    fn version(&self) -> &'static str;
}

/// A host's cgroups as the agent uses them: what services use ([`CgroupReader`]), and the CPU
/// weights it gives them while they run. One implementation per layout ([`V1`], [`V2`]), picked
/// once by [`detect`], so no call probes the layout again.
///
/// Weights are given as v1 `cpu.shares` (1024 = one core); v2 writes them as `cpu.weight`
/// ([`shares_to_weight`]). Names are checked as for [`CgroupReader::sample`].
pub trait Cgroups: CgroupReader {
    /// Gives the parent cgroup of all services the CPU weight of `shares`, creating it in the
    /// v1 cpu hierarchy if needed: the services as a whole then compete with the host's other
    /// cgroups in proportion to the cores they may reserve, and a reservation holds even when
    /// something outside SHG spins. Does nothing where the host has no such file (a v2 parent
    /// whose cpu controller is not enabled yet, a v1 host without the cpu controller).
    fn set_parent_weight(&self, parent: &str, shares: u64) -> io::Result<()>;

    /// Sets the CPU weight of a running service's cgroup. `Err(NotFound)` when the service has
    /// no cpu cgroup (it is not running, or the controller is not enabled for it).
    fn set_weight(&self, parent: &str, name: &str, shares: u64) -> io::Result<()>;

    /// The processes in a service's cgroup (`cgroup.procs` of its cpu cgroup).
    fn procs(&self, parent: &str, name: &str) -> io::Result<Vec<i32>>;

    /// Removes the parent cgroup in every hierarchy, once no service uses it: `rmdir` fails
    /// harmlessly while any child cgroup exists, and so does this, silently.
    fn remove_parent(&self, parent: &str);
}

/// v1 shares (2..=262144) to v2 weight (1..=10000), as the OCI runtimes convert them.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Reads `cgroup.procs` in `dir`: one PID a line.
fn read_procs(dir: &Path) -> io::Result<Vec<i32>> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The error of a write to a service whose cpu cgroup is not there.
fn no_cpu_cgroup(root: &Path, parent: &str, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no cpu cgroup `{parent}/{name}` under {}: the service is not running, or the cpu \
             controller is not enabled for it",
            root.display()
        ),
    )
}

/// Picks [`V2`] when `root/cgroup.controllers` exists (a pure v2 mount at `root`), else [`V1`]
/// (a v1 or hybrid layout, whose v2 part has no controllers worth reading).
pub fn detect(root: &Path) -> Box<dyn Cgroups> {
    if root.join("cgroup.controllers").exists() {
        Box::new(V2::new(root))
    } else {
        Box::new(V1::new(root))
    }
}

/// CPU use between two samples of a cumulative CPU time in ns, in millicores (1000 = one core
/// busy the whole time).
///
/// A counter that went backwards (the cgroup was recreated) or an empty interval gives 0.
pub fn millicores(before: u64, after: u64, elapsed: Duration) -> u64 {
    let elapsed_ns = elapsed.as_nanos();
    if elapsed_ns == 0 {
        return 0;
    }
    let used_ns = u128::from(after.saturating_sub(before));
    u64::try_from(used_ns * 1000 / elapsed_ns).unwrap_or(u64::MAX)
}

/// Checks that `parent/name` stays below the hierarchy root: `name` is one plain component and
/// `parent` one or more, so a crafted name cannot make the reader open files elsewhere.
fn check_names(parent: &str, name: &str) -> io::Result<()> {
    if is_component(name) && parent.split('/').all(is_component) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "cannot read the cgroup `{parent}/{name}`: the parent and name must be plain \
             relative names, without `..`, `.` or empty parts"
        ),
    ))
}

/// Whether `part` is a single path component other than `.` and `..`.
fn is_component(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\0'])
}

/// Building fake cgroup and `/proc` trees for the unit tests.
#[cfg(test)]
mod test_tree {
    use std::path::Path;

    /// Writes `contents` to `root/relative`, creating the directories on the way.
    pub(crate) fn write(root: &Path, relative: &str, contents: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millicores_is_the_share_of_one_core() {
        let second = Duration::from_secs(1);
        assert_eq!(millicores(0, 1_000_000_000, second), 1000);
        assert_eq!(millicores(0, 250_000_000, second), 250);
        assert_eq!(
            millicores(0, 3_000_000_000, Duration::from_millis(1500)),
            2000
        );
    }

    #[test]
    fn millicores_of_a_reset_counter_or_no_time_is_zero() {
        assert_eq!(millicores(5_000, 1_000, Duration::from_secs(1)), 0);
        assert_eq!(millicores(0, 1_000, Duration::ZERO), 0);
        assert_eq!(millicores(0, u64::MAX, Duration::from_nanos(1)), u64::MAX);
    }

    #[test]
    fn names_that_leave_the_hierarchy_are_refused() {
        assert!(check_names("shg", "camera").is_ok());
        assert!(check_names("shg-1a2b3c", "camera.v2").is_ok());
        assert!(check_names("system.slice/shg", "camera").is_ok());
        for (parent, name) in [
            ("shg", ".."),
            ("shg", "a/b"),
            ("shg", ""),
            ("", "camera"),
            ("/etc", "camera"),
            ("shg/../..", "camera"),
            ("shg", "/etc"),
        ] {
            let err = check_names(parent, name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{parent}/{name}");
        }
    }

    #[test]
    fn weight_conversion_keeps_the_ends() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(
            shares_to_weight(0),
            1,
            "below the range is the least weight"
        );
    }

    #[test]
    fn detect_picks_v2_only_on_a_pure_v2_mount() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(detect(root.path()).version(), "v1");
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(detect(root.path()).version(), "v2");
    }
}
