//! Reading a service's cgroup on cgroup v2, where one directory holds every controller's files.

use std::io;
use std::path::{Path, PathBuf};

use crate::scratch::{self, Scratch};
use crate::{
    check_names, no_cpu_cgroup, parse, read_procs, shares_to_weight, CgroupReader, CgroupSample,
    Cgroups,
};

/// Reads cgroup v2: the service's cgroup is `root/<parent>/<name>`.
///
/// A controller not enabled in the parent's `cgroup.subtree_control` has no files in the
/// service's cgroup, and its fields are `None`; `cpu.stat` always has `usage_usec`, but the
/// throttling counters only with the cpu controller.
#[derive(Debug, Clone)]
pub struct V2 {
    root: PathBuf,
}

impl V2 {
    /// Reads the v2 hierarchy mounted at `root` (normally `/sys/fs/cgroup`).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
}

impl CgroupReader for V2 {
    fn sample(&self, parent: &str, name: &str) -> io::Result<CgroupSample> {
        check_names(parent, name)?;
        scratch::with(|scratch| {
            let mut sample = CgroupSample::default();
            scratch.enter(&self.root, parent, name);
            read_cpu(scratch, &mut sample);
            read_memory(scratch, &mut sample);
            read_pids(scratch, &mut sample);
            read_io(scratch, &mut sample);
            scratch.finish(sample, [self.root.as_path()], parent, name)
        })
    }

    fn oom_kills(&self, parent: &str, name: &str) -> Option<u64> {
        check_names(parent, name).ok()?;
        scratch::with(|scratch| {
            scratch.enter(&self.root, parent, name);
            scratch
                .read("memory.events")
                .and_then(|text| parse::keyed(text, ["oom_kill"])[0])
        })
    }

    fn version(&self) -> &'static str {
        "v2"
    }
}

impl Cgroups for V2 {
    fn set_parent_weight(&self, parent: &str, shares: u64) -> io::Result<()> {
        check_names(parent, "weight")?;
        let file = self.root.join(parent).join("cpu.weight");
        if file.exists() {
            std::fs::write(file, shares_to_weight(shares).to_string())?;
        }
        Ok(())
    }

    fn set_weight(&self, parent: &str, name: &str, shares: u64) -> io::Result<()> {
        check_names(parent, name)?;
        let file = self.root.join(parent).join(name).join("cpu.weight");
        if !file.exists() {
            return Err(no_cpu_cgroup(&self.root, parent, name));
        }
        std::fs::write(file, shares_to_weight(shares).to_string())
    }

    fn procs(&self, parent: &str, name: &str) -> io::Result<Vec<i32>> {
        check_names(parent, name)?;
        read_procs(&self.root.join(parent).join(name))
    }

    fn remove_parent(&self, parent: &str) {
        if check_names(parent, "parent").is_ok() {
            let _ = std::fs::remove_dir(self.root.join(parent));
        }
    }
}

/// CPU time and throttling from `cpu.stat`, whose times are in µs.
fn read_cpu(scratch: &mut Scratch, sample: &mut CgroupSample) {
    if let Some(text) = scratch.read("cpu.stat") {
        let [usage_us, periods, throttled, throttled_us] = parse::keyed(
            text,
            ["usage_usec", "nr_periods", "nr_throttled", "throttled_usec"],
        );
        sample.cpu_usage_ns = usage_us.map(|us| us.saturating_mul(1000));
        sample.cpu_periods = periods;
        sample.cpu_throttled = throttled;
        sample.cpu_throttled_ns = throttled_us.map(|us| us.saturating_mul(1000));
    }
}

/// Working set, page cache, limit and OOM kills from the memory controller.
fn read_memory(scratch: &mut Scratch, sample: &mut CgroupSample) {
    let current = scratch.read("memory.current").and_then(parse::number);
    let [inactive_file, file] = scratch.read("memory.stat").map_or([None; 2], |text| {
        parse::keyed(text, ["inactive_file", "file"])
    });
    sample.memory_bytes = current
        .zip(inactive_file)
        .map(|(current, inactive)| current.saturating_sub(inactive));
    sample.memory_cache_bytes = file;
    sample.memory_limit = scratch.read("memory.max").and_then(parse::limit);
    sample.oom_kills = scratch
        .read("memory.events")
        .and_then(|text| parse::keyed(text, ["oom_kill"])[0]);
}

/// Process count and limit from the pids controller.
fn read_pids(scratch: &mut Scratch, sample: &mut CgroupSample) {
    sample.pids = scratch.read("pids.current").and_then(parse::number);
    sample.pids_limit = scratch.read("pids.max").and_then(parse::limit);
}

/// Bytes read and written from `io.stat`.
fn read_io(scratch: &mut Scratch, sample: &mut CgroupSample) {
    if let Some(text) = scratch.read("io.stat") {
        [sample.io_read_bytes, sample.io_write_bytes] = parse::io_stat_bytes(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_tree::write;

    /// `cpu.stat` with the cpu controller enabled, as Linux 6.x writes it.
    const CPU_STAT: &str = "usage_usec 9448708\nuser_usec 8525902\nsystem_usec 922806\n\
        nice_usec 0\nnr_periods 120\nnr_throttled 7\nthrottled_usec 350000\nnr_bursts 0\n\
        burst_usec 0\n";

    /// `memory.stat`, abridged to the usual leading and relevant keys (Linux 6.x order).
    const MEMORY_STAT: &str = "anon 3952640\nfile 13225984\nkernel 1290240\n\
        kernel_stack 49152\npagetables 126976\nsec_pagetables 0\npercpu 1440\nsock 0\n\
        vmalloc 0\nshmem 0\nzswap 0\nzswapped 0\nfile_mapped 10039296\nfile_dirty 16384\n\
        file_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\n\
        inactive_anon 569344\nactive_anon 3383296\ninactive_file 10752000\n\
        active_file 2473984\nunevictable 0\nslab_reclaimable 402112\n\
        slab_unreclaimable 489384\nslab 891496\nworkingset_refault_anon 0\n\
        workingset_refault_file 0\npgfault 144523\npgmajfault 1\n";

    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";

    const IO_STAT: &str = "8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n\
        254:0 rbytes=8388608 wbytes=4096 rios=16 wios=1 dbytes=0 dios=0\n";

    /// Writes a complete v2 service cgroup `shg/camera` with every controller enabled.
    fn full_tree(root: &Path) {
        write(
            root,
            "cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        let cgroup = root.join("shg/camera");
        write(&cgroup, "cpu.stat", CPU_STAT);
        write(&cgroup, "memory.current", "20000000\n");
        write(&cgroup, "memory.stat", MEMORY_STAT);
        write(&cgroup, "memory.max", "67108864\n");
        write(&cgroup, "memory.events", MEMORY_EVENTS);
        write(&cgroup, "pids.current", "3\n");
        write(&cgroup, "pids.max", "64\n");
        write(&cgroup, "io.stat", IO_STAT);
    }

    #[test]
    fn weights_are_written_as_cpu_weight() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        write(root.path(), "shg/cpu.weight", "100\n");
        write(root.path(), "shg/camera/cpu.weight", "100\n");
        write(root.path(), "shg/camera/cgroup.procs", "7\n");
        let cgroups = crate::detect(root.path());
        assert_eq!(cgroups.version(), "v2");
        cgroups.set_weight("shg", "camera", 1024).unwrap();
        cgroups.set_parent_weight("shg", 1792).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(
            read("shg/camera/cpu.weight"),
            shares_to_weight(1024).to_string()
        );
        assert_eq!(read("shg/cpu.weight"), shares_to_weight(1792).to_string());
        assert_eq!(cgroups.procs("shg", "camera").unwrap(), [7]);
        let err = cgroups.set_weight("shg", "ghost", 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_parent_without_the_cpu_controller_is_left_alone_and_removed_when_empty() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "cgroup.controllers", "cpu io memory pids\n");
        std::fs::create_dir_all(root.path().join("shg")).unwrap();
        let cgroups = crate::detect(root.path());
        cgroups.set_parent_weight("shg", 1792).unwrap();
        assert!(!root.path().join("shg/cpu.weight").exists());
        cgroups.remove_parent("shg");
        assert!(!root.path().join("shg").exists());
    }

    #[test]
    fn the_oom_kills_read_alone_are_the_samples() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        let cgroups = V2::new(root.path());
        let sampled = cgroups.sample("shg", "camera").unwrap().oom_kills;
        assert!(sampled.is_some());
        assert_eq!(cgroups.oom_kills("shg", "camera"), sampled);
        assert_eq!(cgroups.oom_kills("shg", "radio"), None);
    }

    #[test]
    fn every_controller_enabled() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        let sample = V2::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(
            sample,
            CgroupSample {
                cpu_usage_ns: Some(9_448_708_000),
                cpu_periods: Some(120),
                cpu_throttled: Some(7),
                cpu_throttled_ns: Some(350_000_000),
                memory_bytes: Some(20_000_000 - 10_752_000),
                memory_cache_bytes: Some(13_225_984),
                memory_limit: Some(64 << 20),
                oom_kills: Some(2),
                pids: Some(3),
                pids_limit: Some(64),
                io_read_bytes: Some(8_389_632),
                io_write_bytes: Some(6144),
            }
        );
    }

    #[test]
    fn max_is_unlimited() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        write(root.path(), "shg/camera/memory.max", "max\n");
        write(root.path(), "shg/camera/pids.max", "max\n");
        let sample = V2::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.memory_limit, None);
        assert_eq!(sample.pids_limit, None);
    }

    #[test]
    fn only_the_core_cpu_stat_when_no_controller_is_enabled() {
        let root = tempfile::tempdir().unwrap();
        // What a child of a hybrid host's `unified` mount holds: cpu.stat without throttling.
        write(
            root.path(),
            "shg/camera/cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnice_usec 0\n",
        );
        let sample = V2::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(
            sample,
            CgroupSample {
                cpu_usage_ns: Some(1_500_000),
                ..CgroupSample::default()
            }
        );
    }

    #[test]
    fn an_idle_cgroup_has_zero_io() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        write(root.path(), "shg/camera/io.stat", "");
        let sample = V2::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.io_read_bytes, Some(0));
        assert_eq!(sample.io_write_bytes, Some(0));
    }

    #[test]
    fn odd_contents_give_none_for_that_field() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        write(root.path(), "shg/camera/memory.current", "\n");
        write(root.path(), "shg/camera/memory.events", "oom_kill\n");
        write(root.path(), "shg/camera/io.stat", "8:0 rbytes=x wbytes=1\n");
        let sample = V2::new(root.path()).sample("shg", "camera").unwrap();
        assert_eq!(sample.memory_bytes, None);
        assert_eq!(sample.oom_kills, None);
        assert_eq!(sample.io_read_bytes, None);
        assert_eq!(sample.io_write_bytes, Some(1));
        assert_eq!(sample.memory_cache_bytes, Some(13_225_984));
    }

    #[test]
    fn a_missing_cgroup_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        let err = V2::new(root.path()).sample("shg", "radar").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("shg/radar"), "{err}");
    }

    #[test]
    fn samples_in_a_row_reuse_the_buffers_without_mixing_them() {
        let root = tempfile::tempdir().unwrap();
        full_tree(root.path());
        write(root.path(), "shg/radar/pids.current", "1\n");
        let reader = V2::new(root.path());
        let camera = reader.sample("shg", "camera").unwrap();
        let radar = reader.sample("shg", "radar").unwrap();
        assert!(reader.sample("shg", "gone").is_err());
        assert_eq!(reader.sample("shg", "camera").unwrap(), camera);
        assert_eq!(
            radar,
            CgroupSample {
                pids: Some(1),
                ..CgroupSample::default()
            }
        );
    }
}
