//! Reading a service's cgroup on cgroup v1, where each controller has its own hierarchy.

use std::io;
use std::path::{Path, PathBuf};

use crate::scratch::{self, Scratch};
use crate::{check_names, no_cpu_cgroup, parse, read_procs, CgroupReader, CgroupSample, Cgroups};

/// Reads one controller's files of the service's cgroup into the sample.
type ReadController = fn(&mut Scratch, &mut CgroupSample);

/// Reads cgroup v1: `root/memory`, `root/cpu`, `root/cpuacct` (or the combined `cpu,cpuacct`),
/// `root/pids` and `root/blkio`, each holding the service's cgroup at `<parent>/<name>`.
#[derive(Debug, Clone)]
pub struct V1 {
    root: PathBuf,
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    pids: Option<PathBuf>,
    blkio: Option<PathBuf>,
}

impl V1 {
    /// Finds the hierarchies under `root` (normally `/sys/fs/cgroup`), once: those not mounted
    /// now are left out of every sample, and their fields are `None`.
    ///
    /// `cpu` and `cpuacct` may be separate hierarchies, one combined `cpu,cpuacct` (or
    /// `cpuacct,cpu`) hierarchy, or symlinks to the combined one.
    pub fn new(root: &Path) -> Self {
        let find = |names: &[&str]| {
            names
                .iter()
                .map(|name| root.join(name))
                .find(|d| d.is_dir())
        };
        Self {
            root: root.to_path_buf(),
            memory: find(&["memory"]),
            cpu: find(&["cpu", "cpu,cpuacct", "cpuacct,cpu"]),
            cpuacct: find(&["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]),
            pids: find(&["pids"]),
            blkio: find(&["blkio"]),
        }
    }

    /// The hierarchies found, in reading order.
    fn hierarchies(&self) -> impl Iterator<Item = &Path> {
        [
            &self.memory,
            &self.cpu,
            &self.cpuacct,
            &self.pids,
            &self.blkio,
        ]
        .into_iter()
        .filter_map(|dir| dir.as_deref())
    }
}

impl CgroupReader for V1 {
    fn sample(&self, parent: &str, name: &str) -> io::Result<CgroupSample> {
        check_names(parent, name)?;
        scratch::with(|scratch| {
            let mut sample = CgroupSample::default();
            let readers: [(&Option<PathBuf>, ReadController); 5] = [
                (&self.memory, read_memory),
                (&self.cpu, read_cpu),
                (&self.cpuacct, read_cpuacct),
                (&self.pids, read_pids),
                (&self.blkio, read_blkio),
            ];
            for (hierarchy, read) in readers {
                if let Some(hierarchy) = hierarchy {
                    scratch.enter(hierarchy, parent, name);
                    read(scratch, &mut sample);
                }
            }
            scratch.finish(sample, self.hierarchies(), parent, name)
        })
    }

    fn oom_kills(&self, parent: &str, name: &str) -> Option<u64> {
        check_names(parent, name).ok()?;
        let memory = self.memory.as_ref()?;
        scratch::with(|scratch| {
            scratch.enter(memory, parent, name);
            scratch
                .read("memory.oom_control")
                .and_then(|text| parse::keyed(text, ["oom_kill"])[0])
        })
    }

    fn version(&self) -> &'static str {
        "v1"
    }
}

impl V1 {
    /// The service's cgroup in the cpu hierarchy, if it has one there.
    fn cpu_cgroup(&self, parent: &str, name: &str) -> io::Result<PathBuf> {
        check_names(parent, name)?;
        self.cpu
            .as_ref()
            .map(|cpu| cpu.join(parent).join(name))
            .filter(|dir| dir.join("cpu.shares").exists())
            .ok_or_else(|| no_cpu_cgroup(&self.root, parent, name))
    }
}

impl Cgroups for V1 {
    fn set_parent_weight(&self, parent: &str, shares: u64) -> io::Result<()> {
        check_names(parent, "weight")?;
        let Some(cpu) = self.cpu.as_ref().filter(|c| c.join("cpu.shares").exists()) else {
            return Ok(());
        };
        let dir = cpu.join(parent);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cpu.shares"), shares.clamp(2, 262_144).to_string())
    }

    fn set_weight(&self, parent: &str, name: &str, shares: u64) -> io::Result<()> {
        let dir = self.cpu_cgroup(parent, name)?;
        std::fs::write(dir.join("cpu.shares"), shares.to_string())
    }

    fn procs(&self, parent: &str, name: &str) -> io::Result<Vec<i32>> {
        read_procs(&self.cpu_cgroup(parent, name)?)
    }

    fn remove_parent(&self, parent: &str) {
        if check_names(parent, "parent").is_err() {
            return;
        }
        // The runtime makes the parent in every hierarchy mounted, not only those read here.
        let Ok(hierarchies) = std::fs::read_dir(&self.root) else {
            return;
        };
        for hierarchy in hierarchies.flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join(parent));
        }
    }
}

/// Working set, page cache, limit and OOM kills from the memory controller.
fn read_memory(scratch: &mut Scratch, sample: &mut CgroupSample) {
    let usage = scratch
        .read("memory.usage_in_bytes")
        .and_then(parse::number);
    let [inactive_file, cache] = scratch.read("memory.stat").map_or([None; 2], |text| {
        parse::keyed(text, ["total_inactive_file", "total_cache"])
    });
    sample.memory_bytes = usage
        .zip(inactive_file)
        .map(|(usage, inactive)| usage.saturating_sub(inactive));
    sample.memory_cache_bytes = cache;
    sample.memory_limit = scratch.read("memory.limit_in_bytes").and_then(parse::limit);
    sample.oom_kills = scratch
        .read("memory.oom_control")
        .and_then(|text| parse::keyed(text, ["oom_kill"])[0]);
}

/// Quota periods and throttling from the cpu controller (`throttled_time` is in ns).
fn read_cpu(scratch: &mut Scratch, sample: &mut CgroupSample) {
    if let Some(text) = scratch.read("cpu.stat") {
        let [periods, throttled, throttled_ns] =
            parse::keyed(text, ["nr_periods", "nr_throttled", "throttled_time"]);
        sample.cpu_periods = periods;
        sample.cpu_throttled = throttled;
        sample.cpu_throttled_ns = throttled_ns;
    }
}

/// Cumulative CPU time from the cpuacct controller.
fn read_cpuacct(scratch: &mut Scratch, sample: &mut CgroupSample) {
    sample.cpu_usage_ns = scratch.read("cpuacct.usage").and_then(parse::number);
}

/// Process count and limit from the pids controller.
fn read_pids(scratch: &mut Scratch, sample: &mut CgroupSample) {
    sample.pids = scratch.read("pids.current").and_then(parse::number);
    sample.pids_limit = scratch.read("pids.max").and_then(parse::limit);
}

/// Bytes read and written from the blkio controller, counting the cgroup's descendants when the
/// kernel offers the recursive file.
fn read_blkio(scratch: &mut Scratch, sample: &mut CgroupSample) {
    let text = match scratch.read("blkio.throttle.io_service_bytes_recursive") {
        Some(text) => Some(text),
        None => scratch.read("blkio.throttle.io_service_bytes"),
    };
    if let Some(text) = text {
        [sample.io_read_bytes, sample.io_write_bytes] = parse::blkio_bytes(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_tree::write;

    /// `memory.stat` of a v1 cgroup, as Linux 6.x writes it.
    const MEMORY_STAT: &str = "cache 13225984\nrss 3952640\nrss_huge 0\nshmem 0\n\
        mapped_file 10039296\ndirty 16384\nwriteback 0\nswap 0\npgpgin 89322\npgpgout 85128\n\
        pgfault 144523\npgmajfault 1\ninactive_anon 569344\nactive_anon 962560\n\
        inactive_file 135168\nactive_file 8192\nunevictable 0\n\
        hierarchical_memory_limit 67108864\nhierarchical_memsw_limit 9223372036854771712\n\
        total_cache 13225984\ntotal_rss 3952640\ntotal_rss_huge 0\ntotal_shmem 0\n\
        total_mapped_file 10039296\ntotal_dirty 16384\ntotal_writeback 0\ntotal_swap 0\n\
        total_pgpgin 89322\ntotal_pgpgout 85128\ntotal_pgfault 144523\ntotal_pgmajfault 1\n\
        total_inactive_anon 569344\ntotal_active_anon 962560\ntotal_inactive_file 10752000\n\
        total_active_file 2473984\ntotal_unevictable 0\n";

    const BLKIO: &str = "254:0 Read 8388608\n254:0 Write 4096\n254:0 Sync 8392704\n\
        254:0 Async 0\n254:0 Discard 0\n254:0 Total 8392704\nTotal 8392704\n";

    /// Writes a complete v1 service cgroup `shg/camera`, with cpu and cpuacct in `cpu_dir` and
    /// `cpuacct_dir` (the same name for a combined hierarchy).
    fn full_tree(root: &Path, cpu_dir: &str, cpuacct_dir: &str) {
        write(
            root,
            "memory/shg/camera/memory.usage_in_bytes",
            "20000000\n",
        );
        write(root, "memory/shg/camera/memory.stat", MEMORY_STAT);
        write(
            root,
            "memory/shg/camera/memory.limit_in_bytes",
            "67108864\n",
        );
        write(
            root,
            "memory/shg/camera/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            root,
            &format!("{cpu_dir}/shg/camera/cpu.stat"),
            "nr_periods 120\nnr_throttled 7\nthrottled_time 350000000\nnr_bursts 0\nburst_time 0\n",
        );
        write(
            root,
            &format!("{cpuacct_dir}/shg/camera/cpuacct.usage"),
            "9366965535\n",
        );
        write(root, "pids/shg/camera/pids.current", "3\n");
        write(root, "pids/shg/camera/pids.max", "64\n");
        write(
            root,
            "blkio/shg/camera/blkio.throttle.io_service_bytes_recursive",
            BLKIO,
        );
    }

    fn expected_full() -> CgroupSample {
        CgroupSample {
            cpu_usage_ns: Some(9_366_965_535),
            cpu_periods: Some(120),
            cpu_throttled: Some(7),
            cpu_throttled_ns: Some(350_000_000),
            memory_bytes: Some(20_000_000 - 10_752_000),
            memory_cache_bytes: Some(13_225_984),
            memory_limit: Some(64 << 20),
            oom_kills: Some(2),
            pids: Some(3),
            pids_limit: Some(64),
            io_read_bytes: Some(8_388_608),
            io_write_bytes: Some(4096),
        }
    }

    #[test]
    fn weights_land_in_the_cpu_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cpu,cpuacct/cpu.shares", "1024\n");
        write(root.path(), "cpu,cpuacct/shg/camera/cpu.shares", "1024\n");
        write(
            root.path(),
            "cpu,cpuacct/shg/camera/cgroup.procs",
            "41\n42\n",
        );
        let cgroups = V1::new(root.path());
        cgroups.set_weight("shg", "camera", 512).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cpu,cpuacct/shg/camera/cpu.shares"), "512");
        assert_eq!(cgroups.procs("shg", "camera").unwrap(), [41, 42]);
        // The parent gets its weight, clamped to what the kernel takes.
        cgroups.set_parent_weight("shg", 1_000_000).unwrap();
        assert_eq!(read("cpu,cpuacct/shg/cpu.shares"), "262144");
        // A service that is not running has no cgroup to weight.
        let err = cgroups.set_weight("shg", "ghost", 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("shg/ghost"), "{err}");
    }

    #[test]
    fn the_parent_is_made_in_the_cpu_hierarchy_and_removed_from_all() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cpu/cpu.shares", "1024\n");
        std::fs::create_dir_all(root.path().join("memory/shg")).unwrap();
        std::fs::create_dir_all(root.path().join("freezer/shg")).unwrap();
        let cgroups = V1::new(root.path());
        cgroups.set_parent_weight("shg", 1792).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("cpu/shg/cpu.shares")).unwrap(),
            "1792"
        );
        // On cgroupfs the control files go with the directory; in this fake tree they are
        // plain files, which rmdir would refuse.
        std::fs::remove_file(root.path().join("cpu/shg/cpu.shares")).unwrap();
        cgroups.remove_parent("shg");
        for hierarchy in ["cpu", "memory", "freezer"] {
            assert!(
                !root.path().join(hierarchy).join("shg").exists(),
                "{hierarchy}"
            );
        }
        // Without the cpu controller there is nothing to weight: not an error.
        let bare = tempfile::tempdir().unwrap();
        V1::new(bare.path()).set_parent_weight("shg", 1792).unwrap();
    }

    #[test]
    fn separate_cpu_and_cpuacct_hierarchies() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample, expected_full());
    }

    #[test]
    fn the_oom_kills_read_alone_are_the_samples() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        let cgroups = V1::new(root.path());
        assert_eq!(cgroups.oom_kills("shg", "camera"), Some(2));
        assert_eq!(cgroups.oom_kills("shg", "radio"), None);
        assert_eq!(cgroups.oom_kills("shg", "../camera"), None);
    }

    #[test]
    fn combined_cpu_cpuacct_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu,cpuacct", "cpu,cpuacct");
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample, expected_full());
    }

    #[test]
    fn cpu_and_cpuacct_symlinked_to_the_combined_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu,cpuacct", "cpu,cpuacct");
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpuacct")).unwrap();
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample, expected_full());
    }

    #[test]
    fn unlimited_values_are_none() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        write(
            root.path(),
            "memory/shg/camera/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(root.path(), "pids/shg/camera/pids.max", "max\n");
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.memory_limit, None);
        assert_eq!(sample.pids_limit, None);
        assert_eq!(sample.pids, Some(3));
    }

    #[test]
    fn a_kernel_without_oom_kill_counts_gives_none() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        write(
            root.path(),
            "memory/shg/camera/memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\n",
        );
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.oom_kills, None);
    }

    #[test]
    fn working_set_never_goes_below_zero() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        // usage_in_bytes is approximate and may lag behind memory.stat.
        write(
            root.path(),
            "memory/shg/camera/memory.usage_in_bytes",
            "4096\n",
        );
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.memory_bytes, Some(0));
    }

    #[test]
    fn blkio_falls_back_to_the_non_recursive_file() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        let blkio = root.path().join("blkio/shg/camera");
        std::fs::remove_file(blkio.join("blkio.throttle.io_service_bytes_recursive")).unwrap();
        write(
            &blkio,
            "blkio.throttle.io_service_bytes",
            "8:0 Read 512\n8:0 Write 1024\n8:0 Total 1536\nTotal 1536\n",
        );
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.io_read_bytes, Some(512));
        assert_eq!(sample.io_write_bytes, Some(1024));
    }

    #[test]
    fn missing_hierarchies_and_files_give_none_not_an_error() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        std::fs::remove_dir_all(root.path().join("blkio")).unwrap();
        std::fs::remove_file(root.path().join("memory/shg/camera/memory.stat")).unwrap();
        // The cgroup exists in the pids hierarchy but not (yet) in cpuacct.
        std::fs::remove_dir_all(root.path().join("cpuacct/shg/camera")).unwrap();
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(
            sample,
            CgroupSample {
                cpu_usage_ns: None,
                memory_bytes: None,
                memory_cache_bytes: None,
                io_read_bytes: None,
                io_write_bytes: None,
                ..expected_full()
            }
        );
    }

    #[test]
    fn odd_contents_give_none_for_that_field() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        write(root.path(), "cpuacct/shg/camera/cpuacct.usage", "lots\n");
        write(root.path(), "pids/shg/camera/pids.current", "");
        write(
            root.path(),
            "cpu/shg/camera/cpu.stat",
            "nr_periods\nnr_throttled -1\nthrottled_time 1 2\n",
        );
        std::fs::write(
            root.path().join("memory/shg/camera/memory.stat"),
            b"total_cache \xff\xfe\n",
        )
        .unwrap();
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.cpu_usage_ns, None);
        assert_eq!(sample.pids, None);
        assert_eq!(sample.cpu_periods, None);
        assert_eq!(sample.cpu_throttled, None);
        assert_eq!(sample.cpu_throttled_ns, None);
        assert_eq!(sample.memory_cache_bytes, None);
        assert_eq!(sample.memory_bytes, None);
        assert_eq!(sample.pids_limit, Some(64));
    }

    #[test]
    fn a_cgroup_present_in_no_hierarchy_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path(), "cpu", "cpuacct");
        let reader = V1::new(root.path());
        let err = reader.sample("shg", "radar").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("shg/radar"), "{err}");
        let err = reader.sample("shg-1a2b3c", "camera").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn nothing_mounted_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let err = V1::new(root.path()).sample("shg", "camera").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn an_empty_cgroup_directory_is_a_sample_of_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pids/shg/camera")).unwrap();
        let sample = V1::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample, CgroupSample::default());
    }
}
