//! Generation of the OCI runtime bundle (`config.json`) for one service.
//!
//! The bundle is the contract between SHG and the container runtime: the same file runs under
//! youki's libcontainer (the default) and unchanged under `runc run`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::RuntimeError;

/// Where the init binary is mounted inside every container.
pub const INIT_PATH: &str = "/.shg/init";
/// Where the service's private writable volume is mounted.
pub const DATA_PATH: &str = "/data";
/// Capabilities a service keeps; everything else is dropped from every set.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_NET_BIND_SERVICE",
];
/// Paths under /proc and /sys hidden from services, as runc hides them.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths under /proc a service may read but not write.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything the runtime needs to know about one service to build its bundle.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The service's key: container id and cgroup leaf; its name (after a `PROVIDER+`, when
    /// the key has one) is the hostname.
    pub name: String,
    /// The cgroup under which every service of this agent lives (`shg` by default).
    pub cgroup_parent: String,
    /// The service's own command (run as the child of the init).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub uid: u32,
    pub gid: u32,
    pub workdir: String,
    /// The unpacked root filesystem (mounted read-only).
    pub rootfs: PathBuf,
    /// Host directory mounted read-write at [`DATA_PATH`].
    pub data_dir: PathBuf,
    /// Host path of the static `shg` binary, mounted read-only at [`INIT_PATH`].
    pub init_binary: PathBuf,
    /// Size of the private /tmp in bytes.
    pub tmp_size: u64,
    pub pids_limit: u32,
    pub memory_limit: Option<u64>,
    /// CPU ceiling in cores.
    pub cpu_limit: Option<f64>,
    /// CPU reservation in cores (sets the weight with the priority).
    pub cpu_reserve: f64,
    /// Memory reservation in bytes: reclaimed last under pressure.
    pub memory_reserve: u64,
    /// The household's priority, 0..=100.
    pub priority: i32,
    /// Bytes of log kept per segment (two segments are kept).
    pub log_segment: u64,
    /// The host's cgroup mount point (`/sys/fs/cgroup`), read to list its hierarchies.
    pub cgroup_root: PathBuf,
    /// On cgroup v1, a host directory bound read-only at the service's /sys/fs/cgroup, with
    /// an empty subdirectory for each of [`visible_hierarchies`] (made by [`write_bundle`]),
    /// where the binds of the service's own cgroups land. The same for every service.
    pub cgroup_view: PathBuf,
    /// Block I/O weight (10..=1000), where the host's I/O controller has one
    /// ([`io_weight_supported`]).
    pub io_weight: Option<u16>,
    /// Host files bound read-only over files of the service's /etc (destination, source):
    /// its `hosts` and `resolv.conf` when it has a network.
    pub etc_files: Vec<(String, PathBuf)>,
}

/// Block I/O weight from the household's priority: 100 for the least important service,
/// 900 for the most (the kernel's default is 500 on v1, 100 on v2).
pub fn io_weight(priority: i32) -> u16 {
    (100 + 8 * priority.clamp(0, 100)) as u16
}

/// Whether services can get a block I/O weight here: a v1 `blkio.weight` file, or the v2 `io`
/// controller. Hosts whose I/O scheduler has no proportional weight (`mq-deadline`, `none`)
/// have neither, and the runtime would fail to write one.
pub fn io_weight_supported(cgroup_root: &Path) -> bool {
    cgroup_root.join("blkio/blkio.weight").exists()
        || std::fs::read_to_string(cgroup_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "io"))
}

/// The cgroup controllers whose v1 hierarchies a service sees (read-only, rooted at its own
/// cgroup): the ones programs read to size themselves (a JVM's heap, Go's GOMAXPROCS).
pub const VISIBLE_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];

/// The host's cgroup v1 hierarchies a service sees, by name under the cgroup root
/// (`memory`, or `cpu,cpuacct` where two are mounted together, with `cpu` and `cpuacct` as
/// the links to it); `None` on a cgroup v2 host, whose one hierarchy the runtime mounts.
pub fn visible_hierarchies(cgroup_root: &Path) -> Option<Vec<String>> {
    if cgroup_root.join("cgroup.controllers").exists() {
        return None;
    }
    let mut names: Vec<String> = std::fs::read_dir(cgroup_root)
        .into_iter()
        .flatten()
        .flatten()
        // A link to a directory (`cpu` -> `cpu,cpuacct`) counts: programs look for both.
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.split(',').any(|c| VISIBLE_CONTROLLERS.contains(&c))
                && !n.contains(|c: char| c.is_whitespace() || c == '/')
        })
        .collect();
    names.sort();
    Some(names)
}

/// [`READONLY_PATHS`], plus /sys/fs/cgroup on cgroup v2 (no `hierarchies`): the runtime's
/// own cgroup mount there, which libcontainer makes writable whatever the mount's options
/// say, so a root service could raise its own limits. On v1 [`cgroup_mounts`] are read-only
/// binds already.
fn readonly_paths(hierarchies: Option<&[String]>) -> Vec<String> {
    let cgroups = hierarchies.is_none().then(|| "/sys/fs/cgroup".to_string());
    READONLY_PATHS
        .iter()
        .map(|p| p.to_string())
        .chain(cgroups)
        .collect()
}

/// CPU weight (v1 `cpu.shares`; 1024 = one core) in proportion to the reservation, raised by
/// up to half again for the highest priority, so under contention every service gets its
/// reservation and the more important ones burst first.
pub fn cpu_shares(reserve_cores: f64, priority: i32) -> u64 {
    let base = (reserve_cores.max(0.0) * 1024.0).round() as u64;
    let boosted = base * (200 + priority.clamp(0, 100) as u64) / 200;
    boosted.clamp(2, 262_144)
}

/// OOM score adjustment: positive, so services die before the gateway's own processes, and
/// lower for higher priorities, so the kernel picks the least important service first.
pub fn oom_score_adj(priority: i32) -> i32 {
    1000 - 5 * priority.clamp(0, 100) - 100
}

/// The cgroup path of a service, relative to each hierarchy's root.
pub fn cgroup_path(parent: &str, name: &str) -> String {
    format!("/{parent}/{name}")
}

/// Builds the `config.json` value for a service.
pub fn config(spec: &ServiceSpec) -> Value {
    config_with(spec, visible_hierarchies(&spec.cgroup_root))
}

/// [`config`] with the host's [`visible_hierarchies`] already listed.
fn config_with(spec: &ServiceSpec, hierarchies: Option<Vec<String>>) -> Value {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("HOSTNAME={}", spec.name),
        "HOME=/data".into(),
    ];
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));

    let mut args = vec![
        INIT_PATH.to_string(),
        "init".into(),
        "--log-segment".into(),
        spec.log_segment.to_string(),
        "--uid".into(),
        spec.uid.to_string(),
        "--gid".into(),
        spec.gid.to_string(),
        "--".into(),
    ];
    args.extend(spec.command.iter().cloned());

    let mut resources = json!({
        "devices": device_rules(),
        "pids": { "limit": spec.pids_limit },
    });
    let mut memory = json!({});
    if let Some(limit) = spec.memory_limit {
        // Swap equal to the limit means "no swap beyond the limit".
        memory["limit"] = json!(limit);
        memory["swap"] = json!(limit);
    }
    if spec.memory_reserve > 0 {
        // v1: the soft limit, reclaimed down to under pressure; v2: memory.low.
        memory["reservation"] = json!(spec.memory_reserve);
    }
    resources["memory"] = memory;
    let mut cpu = json!({ "shares": cpu_shares(spec.cpu_reserve, spec.priority) });
    if let Some(cores) = spec.cpu_limit {
        let period: u64 = 100_000;
        cpu["quota"] = json!((cores * period as f64).round() as i64);
        cpu["period"] = json!(period);
    }
    resources["cpu"] = cpu;
    if let Some(weight) = spec.io_weight {
        resources["blockIO"] = json!({ "weight": weight });
    }

    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            // The init starts as root to set itself up, then runs the command as `uid:gid`.
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": env,
            "cwd": spec.workdir,
            "capabilities": {
                "bounding": CAPABILITIES,
                "effective": CAPABILITIES,
                "permitted": CAPABILITIES,
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024 }],
            "oomScoreAdj": oom_score_adj(spec.priority),
            "noNewPrivileges": true,
        },
        "root": { "path": spec.rootfs, "readonly": true },
        "hostname": spec.name.split_once('+').map_or(&spec.name[..], |(_, name)| name),
        "mounts": mounts(spec, hierarchies.as_deref()),
        "linux": {
            "cgroupsPath": cgroup_path(&spec.cgroup_parent, &spec.name),
            "resources": resources,
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" },
            ],
            // Ping sockets (ICMP echo only, no raw sockets) for every group, as Docker and
            // Podman do: a service can ping without CAP_NET_RAW. Only its own namespace.
            "sysctl": { "net.ipv4.ping_group_range": "0 2147483647" },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": readonly_paths(hierarchies.as_deref()),
            // No `seccomp`: the init loads the filter itself, compiled at build time (see
            // `crate::seccomp`), under libcontainer and under runc alike.
        },
    })
}

fn mounts(spec: &ServiceSpec, hierarchies: Option<&[String]>) -> Value {
    let mut list = kernel_mounts();
    // Inside /sys: the service's view of its own cgroups.
    list.extend(cgroup_mounts(spec, hierarchies));
    list.extend(service_mounts(spec));
    list.extend(spec.etc_files.iter().map(|(destination, source)| {
        json!({ "destination": destination, "type": "bind", "source": source,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"] })
    }));
    Value::Array(list)
}

/// /sys/fs/cgroup in the container. On cgroup v1, the host's [`ServiceSpec::cgroup_view`]
/// bound read-only, with a read-only bind of the service's own cgroup from each of
/// `hierarchies` on its subdirectories: a handful of mounts, where the runtime's own cgroup
/// mount makes one per host hierarchy (nine here) and each of them then needs a read-only
/// remount. The mount points exist before the binds (a fresh tmpfs has none, and a runtime
/// pays for each lookup that fails). The service sees the limits and usage of its own
/// cgroup, as with a cgroup namespace (its `/proc/self/cgroup` says `/`), and nothing of the
/// others'. On cgroup v2 (no `hierarchies`), the runtime's cgroup mount (one).
fn cgroup_mounts(spec: &ServiceSpec, hierarchies: Option<&[String]>) -> Vec<Value> {
    let Some(hierarchies) = hierarchies else {
        return vec![
            json!({ "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }),
        ];
    };
    let own = cgroup_path(&spec.cgroup_parent, &spec.name);
    let mut mounts = vec![
        json!({ "destination": "/sys/fs/cgroup", "type": "bind", "source": spec.cgroup_view,
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"] }),
    ];
    mounts.extend(hierarchies.iter().map(|h| {
        json!({ "destination": format!("/sys/fs/cgroup/{h}"), "type": "bind",
                "source": format!("{}/{h}{own}", spec.cgroup_root.display()),
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"] })
    }));
    mounts
}

/// The kernel's filesystems every container has, /sys last.
fn kernel_mounts() -> Vec<Value> {
    vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=16m"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"] }),
    ]
}

/// The service's own: its /tmp, its data and the init.
fn service_mounts(spec: &ServiceSpec) -> Vec<Value> {
    vec![
        json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", format!("size={}", spec.tmp_size)] }),
        json!({ "destination": DATA_PATH, "type": "bind", "source": spec.data_dir,
                "options": ["rbind", "rw", "nosuid", "nodev"] }),
        json!({ "destination": INIT_PATH, "type": "bind", "source": spec.init_binary,
                "options": ["bind", "ro", "nosuid", "nodev"] }),
    ]
}

/// Deny every device, then grant the few character devices every program expects.
fn device_rules() -> Value {
    // A missing minor number means every minor of that major.
    let allow = |major: i64, minor: Option<i64>| {
        let mut rule = json!({ "allow": true, "type": "c", "major": major, "access": "rwm" });
        if let Some(minor) = minor {
            rule["minor"] = json!(minor);
        }
        rule
    };
    json!([
        { "allow": false, "access": "rwm" },
        allow(1, Some(3)),  // null
        allow(1, Some(5)),  // zero
        allow(1, Some(7)),  // full
        allow(1, Some(8)),  // random
        allow(1, Some(9)),  // urandom
        allow(5, Some(0)),  // tty
        allow(5, Some(2)),  // ptmx
        allow(136, None),   // pts/*
    ])
}

/// Writes `config.json` into `bundle` (created if missing), validating it against the OCI
/// runtime schema as the runtime will read it.
pub fn write_bundle(bundle: &Path, spec: &ServiceSpec) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(bundle).map_err(|e| RuntimeError::io(bundle, e))?;
    // The mount points of the service's cgroup binds, which the bundle names.
    let hierarchies = visible_hierarchies(&spec.cgroup_root);
    for hierarchy in hierarchies.iter().flatten() {
        let dir = spec.cgroup_view.join(hierarchy);
        std::fs::create_dir_all(&dir).map_err(|e| RuntimeError::io(&dir, e))?;
    }
    let value = config_with(spec, hierarchies);
    let path = bundle.join("config.json");
    let text = serde_json::to_vec_pretty(&value).expect("a json value always serializes");
    // Most starts write what the last one wrote, which was checked then.
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    // Parse it back as the runtime will, so a malformed bundle fails here and not at start.
    serde_json::from_value::<oci_spec::runtime::Spec>(value.clone()).map_err(|e| {
        RuntimeError::Bundle {
            name: spec.name.clone(),
            reason: e.to_string(),
        }
    })?;
    let tmp = bundle.join("config.json.tmp");
    std::fs::write(&tmp, text).map_err(|e| RuntimeError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| RuntimeError::io(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ServiceSpec {
        ServiceSpec {
            name: "camera".into(),
            cgroup_parent: "shg".into(),
            command: vec!["/bin/httpd".into(), "-f".into()],
            env: BTreeMap::from([("MODE".into(), "prod".into())]),
            uid: 1000,
            gid: 1000,
            workdir: "/".into(),
            rootfs: "/var/lib/shg/services/camera/rootfs".into(),
            data_dir: "/var/lib/shg/services/camera/data".into(),
            init_binary: "/usr/local/bin/shg".into(),
            tmp_size: 16 << 20,
            pids_limit: 64,
            memory_limit: Some(64 << 20),
            cpu_limit: Some(0.5),
            cpu_reserve: 0.25,
            memory_reserve: 32 << 20,
            priority: 50,
            log_segment: 1 << 20,
            cgroup_root: "/nonexistent".into(),
            cgroup_view: "/var/lib/shg/cgroup-view".into(),
            io_weight: Some(io_weight(50)),
            etc_files: vec![(
                "/etc/hosts".into(),
                "/var/lib/shg/services/camera/net/hosts".into(),
            )],
        }
    }

    #[test]
    fn config_parses_as_an_oci_spec() {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(config(&sample())).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("camera"));
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert_eq!(process.args().as_ref().unwrap()[0], INIT_PATH);
        assert!(process
            .env()
            .as_ref()
            .unwrap()
            .contains(&"MODE=prod".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 6);
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 64);
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(
            resources.memory().as_ref().unwrap().reservation(),
            Some(32 << 20)
        );
        assert_eq!(
            resources.cpu().as_ref().unwrap().shares(),
            Some(cpu_shares(0.25, 50))
        );
        assert_eq!(process.oom_score_adj(), Some(oom_score_adj(50)));
        assert_eq!(
            resources.block_io().as_ref().unwrap().weight(),
            Some(io_weight(50))
        );
        let mut without = sample();
        without.io_weight = None;
        assert!(config(&without)["linux"]["resources"]["blockIO"].is_null());
    }

    #[test]
    fn io_weight_follows_priority_where_the_host_has_one() {
        assert!(io_weight(100) > io_weight(0));
        assert!((10..=1000).contains(&io_weight(0)) && (10..=1000).contains(&io_weight(100)));
        let root = tempfile::tempdir().unwrap();
        assert!(!io_weight_supported(root.path()));
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .unwrap();
        assert!(io_weight_supported(root.path()));
    }

    /// The sample service's bundle on a host whose cgroups are mounted at `cgroup_root`.
    fn config_on(cgroup_root: &Path) -> Value {
        let mut spec = sample();
        spec.cgroup_root = cgroup_root.to_path_buf();
        config(&spec)
    }

    /// The bundle's mounts at or under /sys/fs/cgroup, in order.
    fn cgroup_mounts_of(config: &Value) -> Vec<&Value> {
        config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| {
                m["destination"]
                    .as_str()
                    .unwrap()
                    .starts_with("/sys/fs/cgroup")
            })
            .collect()
    }

    fn cgroup_root_in_readonly_paths(config: &Value) -> bool {
        config["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/sys/fs/cgroup")
    }

    #[test]
    fn a_v1_service_sees_its_own_cgroups_read_only_in_the_hierarchies_programs_read() {
        let root = tempfile::tempdir().unwrap();
        for dir in [
            "memory",
            "pids",
            "cpu,cpuacct",
            "devices",
            "systemd",
            "unified",
        ] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpuacct")).unwrap();
        assert_eq!(
            visible_hierarchies(root.path()).unwrap(),
            ["cpu", "cpu,cpuacct", "cpuacct", "memory", "pids"]
        );
        let config = config_on(root.path());
        let mounts = config["mounts"].as_array().unwrap();
        let under = cgroup_mounts_of(&config);
        assert_eq!(under[0]["destination"], "/sys/fs/cgroup");
        assert_eq!(under[0]["source"], "/var/lib/shg/cgroup-view");
        let memory = under
            .iter()
            .find(|m| m["destination"] == "/sys/fs/cgroup/memory")
            .unwrap();
        assert_eq!(
            memory["source"],
            format!("{}/memory/shg/camera", root.path().display())
        );
        for bind in &under {
            assert_eq!(bind["type"], "bind");
            let options: Vec<&str> = bind["options"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap())
                .collect();
            assert!(options.contains(&"ro"), "{bind} is writable");
        }
        assert_eq!(under.len(), 6, "{under:?}");
        // The view comes after /sys, which it sits in.
        let at = |d: &str| mounts.iter().position(|m| m["destination"] == d).unwrap();
        assert!(at("/sys") < at("/sys/fs/cgroup"));
        // Read-only by its own options: no second, recursive read-only bind of it.
        assert!(!cgroup_root_in_readonly_paths(&config));
    }

    #[test]
    fn writing_a_v1_bundle_makes_the_mount_points_of_the_cgroup_view() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["memory", "pids", "devices"] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        let mut spec = sample();
        spec.cgroup_root = root.path().to_path_buf();
        spec.cgroup_view = state.path().join("cgroup-view");
        write_bundle(&state.path().join("bundle"), &spec).unwrap();
        let mut made: Vec<String> = std::fs::read_dir(&spec.cgroup_view)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        made.sort();
        assert_eq!(made, ["memory", "pids"]);
    }

    #[test]
    fn a_v2_service_gets_the_runtime_s_cgroup_mount_read_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::create_dir(root.path().join("system.slice")).unwrap();
        assert_eq!(visible_hierarchies(root.path()), None);
        let config = config_on(root.path());
        let under = cgroup_mounts_of(&config);
        assert_eq!(under.len(), 1);
        assert_eq!(under[0]["type"], "cgroup");
        assert!(cgroup_root_in_readonly_paths(&config));
    }

    #[test]
    fn weight_follows_reservation_then_priority() {
        assert!(
            cpu_shares(0.5, 0) > cpu_shares(0.25, 100),
            "reservation dominates"
        );
        assert!(
            cpu_shares(0.25, 80) > cpu_shares(0.25, 20),
            "priority breaks ties"
        );
        assert_eq!(cpu_shares(0.0, 0), 2, "kernel minimum");
        assert!(oom_score_adj(100) < oom_score_adj(0));
        assert!(
            oom_score_adj(100) >= 0,
            "services die before the gateway's own processes"
        );
    }

    #[test]
    fn devices_start_with_deny_all() {
        let rules = device_rules();
        assert_eq!(rules[0]["allow"], false);
        assert_eq!(rules[0]["access"], "rwm");
    }
}
