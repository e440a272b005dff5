//! Changing a running service's cgroup settings directly, on cgroup v1 or v2.

use std::path::{Path, PathBuf};

/// Where the service's cgroup is in the CPU controller: v1 (`cpu/` or `cpu,cpuacct/`) or the
/// v2 unified tree.
fn cpu_dir(root: &Path, parent: &str, name: &str) -> Option<(PathBuf, bool)> {
    for hierarchy in ["cpu", "cpu,cpuacct"] {
        let dir = root.join(hierarchy).join(parent).join(name);
        if dir.join("cpu.shares").exists() {
            return Some((dir, false));
        }
    }
    let dir = root.join(parent).join(name);
    dir.join("cpu.weight").exists().then_some((dir, true))
}

/// v1 shares (2..=262144) to v2 weight (1..=10000), as the OCI runtimes convert them.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Gives the parent cgroup of all services the CPU weight of `shares` (v1 `cpu.shares`, v2
/// `cpu.weight`), creating it in the v1 cpu hierarchy if needed: the services as a whole then
/// compete with the host's other cgroups in proportion to the cores they may reserve, and a
/// reservation holds even when something outside SHG spins. Does nothing where the host has no
/// such file (a v2 parent whose cpu controller is not enabled yet).
pub fn set_parent_weight(root: &Path, parent: &str, shares: u64) -> std::io::Result<()> {
    for hierarchy in ["cpu", "cpu,cpuacct"] {
        let base = root.join(hierarchy);
        if base.join("cpu.shares").exists() {
            let dir = base.join(parent);
            std::fs::create_dir_all(&dir)?;
            return std::fs::write(dir.join("cpu.shares"), shares.clamp(2, 262_144).to_string());
        }
    }
    let file = root.join(parent).join("cpu.weight");
    if file.exists() {
        std::fs::write(file, shares_to_weight(shares).to_string())?;
    }
    Ok(())
}

/// Sets the CPU weight of the service's cgroup and the OOM score of each of its processes.
pub fn apply_priority(
    root: &Path,
    parent: &str,
    name: &str,
    shares: u64,
    oom_score_adj: i32,
) -> std::io::Result<()> {
    let (dir, v2) = cpu_dir(root, parent, name).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no cpu cgroup for `{name}` under {}", root.display()),
        )
    })?;
    if v2 {
        std::fs::write(dir.join("cpu.weight"), shares_to_weight(shares).to_string())?;
    } else {
        std::fs::write(dir.join("cpu.shares"), shares.to_string())?;
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    for pid in procs.lines().filter(|l| !l.is_empty()) {
        // A process may exit meanwhile; that is fine.
        let _ = std::fs::write(
            format!("/proc/{pid}/oom_score_adj"),
            oom_score_adj.to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_trees_are_both_found() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("cpu,cpuacct/shg/camera");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpu.shares"), "1024").unwrap();
        std::fs::write(v1.join("cgroup.procs"), "").unwrap();
        apply_priority(root.path(), "shg", "camera", 512, 300).unwrap();
        assert_eq!(
            std::fs::read_to_string(v1.join("cpu.shares")).unwrap(),
            "512"
        );

        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("shg/camera");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.weight"), "100").unwrap();
        std::fs::write(v2.join("cgroup.procs"), "").unwrap();
        apply_priority(root.path(), "shg", "camera", 1024, 300).unwrap();
        assert_eq!(
            std::fs::read_to_string(v2.join("cpu.weight")).unwrap(),
            shares_to_weight(1024).to_string()
        );
    }

    #[test]
    fn the_parent_weight_lands_in_v1_or_v2() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("cpu")).unwrap();
        std::fs::write(root.path().join("cpu/cpu.shares"), "1024").unwrap();
        set_parent_weight(root.path(), "shg", 1792).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("cpu/shg/cpu.shares")).unwrap(),
            "1792"
        );

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("shg")).unwrap();
        std::fs::write(root.path().join("shg/cpu.weight"), "100").unwrap();
        set_parent_weight(root.path(), "shg", 1792).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("shg/cpu.weight")).unwrap(),
            shares_to_weight(1792).to_string()
        );
        // Nothing to set on a v2 parent without the cpu controller: not an error.
        let root = tempfile::tempdir().unwrap();
        set_parent_weight(root.path(), "shg", 1792).unwrap();
    }

    #[test]
    fn weight_conversion_keeps_the_ends() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn a_missing_cgroup_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(apply_priority(root.path(), "shg", "ghost", 2, 0).is_err());
    }
}
