//! Integration tests of the usage crate against this machine's real cgroups and `/proc`.
//!
//! The cgroup tests need root; they create `usage-test-<pid>-<version>/svc` in each hierarchy,
//! move a `sleep` into it, sample it, and remove everything again, even when an assertion fails.
//! Where they cannot run (not root, no such cgroup layout) they print why and pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use usage::{CgroupReader, V1, V2};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup made for one test in several hierarchies, and the process moved into it; dropping
/// it kills and reaps the process and removes the directories.
struct TestCgroup {
    /// Directories in creation order (parent before child).
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl TestCgroup {
    /// Creates `parent/name` in each of `hierarchies` and moves a fresh `sleep 5` into it.
    fn new(hierarchies: &[PathBuf], parent: &str, name: &str) -> std::io::Result<Self> {
        let mut cgroup = Self {
            dirs: Vec::new(),
            child: None,
        };
        for hierarchy in hierarchies {
            for dir in [hierarchy.join(parent), hierarchy.join(parent).join(name)] {
                std::fs::create_dir(&dir)?;
                cgroup.dirs.push(dir);
            }
        }
        let child = Command::new("sleep").arg("5").spawn()?;
        let pid = child.id().to_string();
        cgroup.child = Some(child);
        for dir in cgroup.dirs.iter().filter(|dir| dir.ends_with(name)) {
            std::fs::write(dir.join("cgroup.procs"), &pid)?;
        }
        Ok(cgroup)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in self.dirs.iter().rev() {
            // A cgroup whose last process just exited may stay busy for a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if dir.exists() {
                eprintln!("note: could not remove {}", dir.display());
            }
        }
    }
}

/// Whether this process runs as root, from the effective uid in `/proc/self/status`.
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0")
}

/// The v1 hierarchies this test needs, each once even where `cpu` and `cpuacct` are symlinks
/// to one combined hierarchy.
fn v1_hierarchies(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for name in ["memory", "pids", "cpu", "cpuacct", "cpu,cpuacct", "blkio"] {
        if let Ok(dir) = root.join(name).canonicalize() {
            if dir.is_dir() && !found.contains(&dir) {
                found.push(dir);
            }
        }
    }
    found
}

/// Samples `parent/name` many times and prints what one sample costs.
fn print_sampling_cost(reader: &dyn CgroupReader, parent: &str, name: &str) {
    const SAMPLES: u32 = 2000;
    let start = Instant::now();
    for _ in 0..SAMPLES {
        reader.sample(parent, name).unwrap();
    }
    let each = start.elapsed() / SAMPLES;
    let share = each.as_secs_f64() * 50.0 * 100.0;
    println!(
        "{}: one sample takes {each:?}; 50 services once a second ≈ {share:.3}% of one core",
        reader.version()
    );
}

#[test]
fn v1_service_cgroup_on_this_host() {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() || !root.join("memory").is_dir() {
        println!("skipped: {CGROUP_ROOT} is not a cgroup v1 (or hybrid) layout");
        return;
    }
    if !is_root() {
        println!("skipped: creating cgroups needs root");
        return;
    }
    let parent = format!("usage-test-{}-v1", std::process::id());
    let cgroup = TestCgroup::new(&v1_hierarchies(root), &parent, "svc").unwrap();

    let reader = usage::detect(root);
    assert_eq!(reader.version(), "v1");
    let sample = reader.sample(&parent, "svc").unwrap();
    println!("v1 sample: {sample:?}");
    assert_eq!(sample.pids, Some(1));
    assert!(sample.memory_bytes.is_some());
    assert!(sample.cpu_usage_ns.is_some());
    assert!(sample.cpu_periods.is_some());
    assert_eq!(
        sample.memory_limit, None,
        "a new cgroup has no memory limit"
    );
    assert_eq!(sample.pids_limit, None, "a new cgroup has no pids limit");

    let missing = V1::new(root)
        .sample(&parent, "no-such-service")
        .unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);

    print_sampling_cost(reader.as_ref(), &parent, "svc");
    drop(cgroup);
}

#[test]
fn v2_service_cgroup_on_this_host() {
    let Some(root) = [CGROUP_ROOT, "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|root| root.join("cgroup.controllers").exists())
    else {
        println!("skipped: no cgroup v2 mount");
        return;
    };
    if !is_root() {
        println!("skipped: creating cgroups needs root");
        return;
    }
    let parent = format!("usage-test-{}-v2", std::process::id());
    // Mirrors TestCgroup::new, but enables the controllers for `svc` before moving anyone in.
    let mut cgroup = TestCgroup {
        dirs: vec![root.join(&parent)],
        child: None,
    };
    std::fs::create_dir(&cgroup.dirs[0]).unwrap();
    let available = std::fs::read_to_string(cgroup.dirs[0].join("cgroup.controllers")).unwrap();
    for controller in available.split_whitespace() {
        // Some controllers cannot be enabled here (e.g. threaded-only ones); those stay off.
        let _ = std::fs::write(
            cgroup.dirs[0].join("cgroup.subtree_control"),
            format!("+{controller}"),
        );
    }
    let svc = root.join(&parent).join("svc");
    std::fs::create_dir(&svc).unwrap();
    cgroup.dirs.push(svc.clone());
    let child = Command::new("sleep").arg("5").spawn().unwrap();
    let pid = child.id().to_string();
    cgroup.child = Some(child);
    std::fs::write(svc.join("cgroup.procs"), pid).unwrap();

    let sample = V2::new(root).sample(&parent, "svc").unwrap();
    println!("v2 sample at {}: {sample:?}", root.display());
    let enabled = std::fs::read_to_string(svc.join("cgroup.controllers")).unwrap();
    let has = |controller: &str| enabled.split_whitespace().any(|c| c == controller);
    assert!(sample.cpu_usage_ns.is_some(), "cpu.stat is always there");
    assert_eq!(sample.cpu_periods.is_some(), has("cpu"));
    assert_eq!(sample.pids, has("pids").then_some(1));
    assert_eq!(sample.memory_bytes.is_some(), has("memory"));
    assert_eq!(sample.io_read_bytes.is_some(), has("io"));
    if !has("memory") {
        assert_eq!(
            (sample.memory_limit, sample.oom_kills),
            (None, None),
            "no memory controller, no memory fields"
        );
    }

    let missing = V2::new(root)
        .sample(&parent, "no-such-service")
        .unwrap_err();
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);

    print_sampling_cost(&V2::new(root), &parent, "svc");
    drop(cgroup);
}

#[test]
fn host_on_this_machine() {
    let host = usage::host(Path::new("/proc")).unwrap();
    println!("host: {host:?}");
    assert!(host.memory_total > host.memory_available);
    assert!(host.memory_available > 0);
    assert!(host.cpu_total_ns >= host.cpu_busy_ns);
    assert!(host.cpu_busy_ns > 0);
}
