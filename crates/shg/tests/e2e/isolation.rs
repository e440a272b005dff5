//! What a service can see and do from inside its container, probed both by the service's own
//! command and by `shg exec`, and what a fork bomb can do to the gateway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::{alive, Gateway};

/// Capabilities a service may hold: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
/// SETUID, NET_BIND_SERVICE.
const CAP_ALLOWLIST: u64 = 0x4fb;

/// Prints one `== section` per probe. Run as the service's command it writes the report to
/// /data/probe.out and stays up; `probe.sh print` prints it (for `shg exec`).
const PROBE: &str = r#"#!/bin/sh
probe() {
  echo "== ps"; ps -o pid,args
  echo "== status"; grep -E '^(NoNewPrivs|Seccomp|CapEff|CapPrm|CapBnd):' /proc/self/status
  echo "== unshare"; unshare -n true 2>&1; echo "rc=$?"
  echo "== mount"; mount -t tmpfs x /mnt 2>&1; echo "rc=$?"
  echo "== keyctl"; /bin/keyctl-probe; echo "rc=$?"
  echo "== clonens"; /bin/clone-probe; echo "rc=$?"
  echo "== kcore"; if [ -e /proc/kcore ]; then stat -c %s /proc/kcore; head -c 64 /proc/kcore 2>/dev/null | wc -c; else echo absent; fi
  echo "== keys"; cat /proc/keys 2>/dev/null | wc -c
  echo "== firmware"; ls -A /sys/firmware 2>/dev/null | wc -l
  echo "== initfds"; readlink /proc/1/fd/3 2>&1; echo "rc=$?"; (echo x >> /proc/1/fd/5) 2>&1; echo "rc=$?"
  echo "== procsys"; (echo e2e > /proc/sys/kernel/domainname) 2>&1; echo "rc=$?"
  echo "== pinggroups"; cat /proc/sys/net/ipv4/ping_group_range
  echo "== hostname"; hostname
  echo "== rootfs"; touch /x 2>&1; echo "rc=$?"
  echo "== tmp"; touch /tmp/probe 2>&1; echo "rc=$?"; df -k /tmp | tail -n 1
  echo "== data"; touch /data/probe-$$ 2>&1; echo "rc=$?"; rm -f /data/probe-$$
  echo "== net"; ls /sys/class/net
  echo "== loflags"; cat /sys/class/net/lo/flags
  echo "== id"; id -u; id -g
  echo "== end"
}
if [ "$1" = print ]; then probe; exit 0; fi
probe > /data/probe.tmp 2>&1
mv /data/probe.tmp /data/probe.out
exec sleep 1000000
"#;

/// A 150-byte static x86-64 program: `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING,
/// 0)`, exiting 0 if the call works and with the errno if it fails (busybox has no keyctl).
fn keyctl_probe() -> Vec<u8> {
    probe_program(&[
        0xb8, 0xfa, 0x00, 0x00, 0x00, // mov eax, 250 (keyctl)
        0xbf, 0x00, 0x00, 0x00, 0x00, // mov edi, 0 (KEYCTL_GET_KEYRING_ID)
        0xbe, 0xfd, 0xff, 0xff, 0xff, // mov esi, -3 (KEY_SPEC_SESSION_KEYRING)
        0x31, 0xd2, // xor edx, edx
        0x0f, 0x05, // syscall
    ])
}

/// A static x86-64 program: `clone(CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)`, the way to a new
/// namespace that `unshare` does not take; both processes exit 0 if the call works, and the
/// caller exits with the errno if it fails. Needs no capability on the host.
fn clone_probe() -> Vec<u8> {
    probe_program(&[
        0xb8, 0x38, 0x00, 0x00, 0x00, // mov eax, 56 (clone)
        0xbf, 0x11, 0x00, 0x00, 0x10, // mov edi, 0x10000011 (CLONE_NEWUSER | SIGCHLD)
        0x31, 0xf6, // xor esi, esi
        0x31, 0xd2, // xor edx, edx
        0x45, 0x31, 0xd2, // xor r10d, r10d
        0x45, 0x31, 0xc0, // xor r8d, r8d
        0x0f, 0x05, // syscall
    ])
}

/// A static x86-64 ELF that runs `call` (one system call, its result left in eax) and exits 0
/// if the call returned 0 or more, and with the errno if it failed.
fn probe_program(call: &[u8]) -> Vec<u8> {
    let exit: &[u8] = &[
        0x85, 0xc0, // test eax, eax
        0x78, 0x02, // js +2
        0x31, 0xc0, // xor eax, eax
        0xf7, 0xd8, // neg eax
        0x89, 0xc7, // mov edi, eax
        0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60 (exit)
        0x0f, 0x05, // syscall
    ];
    let code = [call, exit].concat();
    let base: u64 = 0x40_0000;
    let size = (64 + 56 + code.len()) as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(base + 64 + 56).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes());
    elf.extend_from_slice(&base.to_le_bytes());
    elf.extend_from_slice(&base.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&size.to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    elf.extend_from_slice(&code);
    elf
}

fn probe_manifest(name: &str, user: Option<&str>) -> String {
    let user = user
        .map(|u| format!("user = \"{u}\"\n"))
        .unwrap_or_default();
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\n\
         command = [\"/bin/probe.sh\"]\n{user}\n[restart]\npolicy = \"never\"\n"
    )
}

/// Splits a probe report into its sections.
fn sections(report: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut current = None;
    for line in report.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = Some(name.to_string());
            map.insert(name.to_string(), String::new());
        } else if let Some(name) = &current {
            let text = map.get_mut(name).unwrap();
            text.push_str(line);
            text.push('\n');
        }
    }
    assert!(
        map.contains_key("end"),
        "the probe did not finish:\n{report}"
    );
    map
}

fn status_field(section: &str, key: &str) -> String {
    section
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status:\n{section}"))
        .trim()
        .to_string()
}

/// What every process of a service must observe, whoever runs it (`uid` 0 or not).
fn check_report(report: &str, who: &str, hostname: &str, uid: u32) {
    let s = sections(report);
    let ctx = format!("({who})\n{report}");

    let ps: Vec<&str> = s["ps"].lines().skip(1).collect();
    assert!(
        ps.len() <= 6,
        "the service sees {} processes: host processes leak in {ctx}",
        ps.len()
    );
    let init = ps
        .iter()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .expect("a PID 1");
    assert!(
        init.split_whitespace().nth(1) == Some("/.shg/init"),
        "PID 1 is not the shg init: {init} {ctx}"
    );

    let status = &s["status"];
    assert_eq!(status_field(status, "NoNewPrivs"), "1", "{ctx}");
    assert_eq!(status_field(status, "Seccomp"), "2", "{ctx}");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        let caps = u64::from_str_radix(&status_field(status, set), 16).unwrap();
        assert_eq!(
            caps & !CAP_ALLOWLIST,
            0,
            "{set} {caps:#x} holds capabilities beyond the allowlist {ctx}"
        );
    }
    if uid == 0 {
        let eff = u64::from_str_radix(&status_field(status, "CapEff"), 16).unwrap();
        assert_eq!(
            eff, CAP_ALLOWLIST,
            "root in a service keeps exactly the allowlist {ctx}"
        );
    } else {
        assert_eq!(
            status_field(status, "CapEff"),
            "0000000000000000",
            "uid {uid} holds capabilities {ctx}"
        );
    }

    assert!(!s["unshare"].contains("rc=0"), "unshare -n worked {ctx}");
    assert!(!s["mount"].contains("rc=0"), "mount worked {ctx}");
    assert_eq!(
        s["keyctl"].trim(),
        "rc=1",
        "keyctl must fail with EPERM (1) {ctx}"
    );
    assert_eq!(
        s["clonens"].trim(),
        "rc=1",
        "clone with a namespace flag must fail with EPERM (1) {ctx}"
    );
    let kcore = s["kcore"].trim();
    assert!(
        kcore == "absent" || kcore == "0\n0",
        "/proc/kcore is readable: {kcore:?} {ctx}"
    );
    assert_eq!(s["keys"].trim(), "0", "/proc/keys shows keys {ctx}");
    assert_eq!(
        s["firmware"].trim(),
        "0",
        "/sys/firmware is not empty {ctx}"
    );
    assert!(
        !s["initfds"].contains("rc=0"),
        "the init's descriptors are reachable through /proc/1/fd {ctx}"
    );
    assert!(
        !s["procsys"].contains("rc=0"),
        "/proc/sys is writable {ctx}"
    );
    // Ping sockets (ICMP echo without CAP_NET_RAW) for every group, in its own namespace only.
    assert_eq!(
        s["pinggroups"].split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"],
        "{ctx}"
    );
    assert_eq!(s["hostname"].trim(), hostname, "{ctx}");
    if uid == 0 {
        assert!(
            s["rootfs"].contains("Read-only file system"),
            "the root filesystem is writable {ctx}"
        );
    }
    assert!(!s["rootfs"].contains("rc=0"), "{ctx}");
    assert!(s["tmp"].contains("rc=0"), "/tmp is not writable {ctx}");
    let tmp_kib: u64 = s["tmp"]
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in df output {ctx}"));
    assert!(
        tmp_kib > 0 && tmp_kib <= 64 * 1024,
        "/tmp is {tmp_kib} KiB: not a small private tmpfs {ctx}"
    );
    assert!(s["data"].contains("rc=0"), "/data is not writable {ctx}");
    assert_eq!(
        s["net"].trim(),
        "lo",
        "the service sees host network interfaces {ctx}"
    );
    // Up (IFF_UP, 0x1), so 127.0.0.1 works without a network of its own.
    let flags = s["loflags"].trim().trim_start_matches("0x");
    let flags = u32::from_str_radix(flags, 16).unwrap_or_else(|_| panic!("lo flags {ctx}"));
    assert_eq!(flags & 1, 1, "the loopback is down {ctx}");
    assert_eq!(s["id"], format!("{uid}\n{uid}\n"), "{ctx}");
}

/// The network namespace of process `pid`, as the kernel names it (`net:[inode]`).
fn net_namespace(pid: i32) -> String {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("read a ns link");
    link.to_string_lossy().into_owned()
}

#[test]
fn a_service_is_confined_to_its_container() {
    // The probes are meaningful only if they can tell: on the host both calls work.
    for (what, program) in [("keyctl", keyctl_probe()), ("clone", clone_probe())] {
        let host_probe = tempfile::NamedTempFile::new_in("/tmp").unwrap();
        std::fs::write(host_probe.path(), program).unwrap();
        std::fs::set_permissions(
            host_probe.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let host_path = host_probe.into_temp_path();
        // Another test thread forking while the file was open for writing keeps it busy a
        // moment.
        let on_host = crate::harness::eventually(
            &format!("the {what} probe to run on the host"),
            Duration::from_secs(5),
            || {
                match std::process::Command::new(&host_path).status() {
                    Err(e) if e.raw_os_error() == Some(26) => None, // ETXTBSY
                    other => Some(other.expect("run the probe")),
                }
            },
        );
        assert_eq!(
            on_host.code(),
            Some(0),
            "the {what} probe does not work on the host"
        );
    }

    let gw = Gateway::start();
    let keyctl = keyctl_probe();
    let clone = clone_probe();
    let files: [crate::harness::Extra; 4] = [
        ("bin/probe.sh", PROBE.as_bytes(), 0o755),
        ("bin/keyctl-probe", keyctl.as_slice(), 0o755),
        ("bin/clone-probe", clone.as_slice(), 0o755),
        ("mnt/.keep", b"", 0o644),
    ];
    gw.install("jail", &probe_manifest("jail", None), &files);
    gw.install(
        "jail-user",
        &probe_manifest("jail-user", Some("1000:1000")),
        &files,
    );

    // Each service has a network namespace of its own: not the host's, not another's.
    let namespaces: Vec<String> = ["jail", "jail-user"]
        .iter()
        .map(|name| net_namespace(gw.wait_running(name).pid.expect("a running pid")))
        .collect();
    let host = net_namespace(std::process::id() as i32);
    assert!(
        !namespaces.contains(&host) && namespaces[0] != namespaces[1],
        "host {host}, services {namespaces:?}"
    );

    for (name, uid) in [("jail", 0), ("jail-user", 1000)] {
        gw.wait_running(name);
        let data = std::path::PathBuf::from(
            gw.inspect(name)["paths"]["data"]
                .as_str()
                .expect("inspect shows the data path"),
        );
        let report = crate::harness::eventually(
            "the probe report in /data",
            Duration::from_secs(15),
            || std::fs::read_to_string(data.join("probe.out")).ok(),
        );
        check_report(&report, &format!("{name}'s own command"), name, uid);

        let exec = gw.shg_ok(&["exec", name, "--", "/bin/probe.sh", "print"]);
        check_report(&exec.stdout, &format!("shg exec in {name}"), name, uid);
    }
}

#[test]
fn a_fork_bomb_stays_inside_its_pids_limit() {
    let mut gw = Gateway::start();
    // busybox sh exits when a fork fails, so an outer loop keeps starting new spawners.
    let bomb = r#"
name = "bomb"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sh", "-c", "while true; do sh -c 'while true; do sleep 1000 & done'; echo spawner-died; done"]

[resources]
cpu = { limit = 0.5 }
pids = { limit = 32 }

[restart]
policy = "never"
"#;
    let bystander = "name = \"bystander\"\nversion = \"1.0.0\"\nprovider = \"e2e\"\n\n[run]\ncommand = [\"/bin/sleep\", \"1000000\"]\n";
    gw.install("bystander", bystander, &[]);
    let calm = gw.wait_running("bystander").pid.unwrap();
    gw.install("bomb", bomb, &[]);
    gw.wait_running("bomb");
    let cgroup = gw.pids_cgroup("bomb");
    let read = |f: &str| {
        std::fs::read_to_string(cgroup.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", cgroup.join(f).display()))
    };
    assert_eq!(read("pids.max").trim(), "32");

    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let current: u32 = read("pids.current").trim().parse().unwrap();
        most = most.max(current);
        assert!(
            current <= 32,
            "the bomb holds {current} processes, over its limit of 32"
        );
        let asked = Instant::now();
        let ps = gw.ps();
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "`shg ps` took {:?} during the bomb",
            asked.elapsed()
        );
        let calm_now = ps.iter().find(|s| s.name == "bystander").unwrap();
        assert_eq!(
            (calm_now.state.as_str(), calm_now.pid),
            ("running", Some(calm)),
            "{calm_now:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        most >= 30,
        "the bomb never reached its limit ({most} processes): the limit was not tested"
    );
    let hits: u64 = read("pids.events")
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .expect("pids.events counts refused forks");
    assert!(hits > 0, "no fork was ever refused");
    assert!(alive(calm));
    let logs = gw.shg_ok(&["logs", "bomb", "--tail", "200"]);
    assert!(
        logs.stderr.contains("can't fork"),
        "the bomb's log shows no refused fork:\n{logs}"
    );
    assert_eq!(gw.svc("bomb").unwrap().state, "running");
}

#[test]
fn a_service_cannot_lift_its_own_limits() {
    let mut gw = Gateway::start();
    let capped = r#"
name = "capped"
version = "1.0.0"
provider = "e2e"

[run]
command = ["/bin/sleep", "1000000"]

[resources]
cpu = { limit = 0.5 }
pids = { limit = 32 }
"#;
    gw.install("capped", capped, &[]);
    gw.wait_running("capped");
    let cgroups = gw.cgroups_path("capped");
    let host = |file: &str| {
        let hierarchy = file.split('.').next().unwrap();
        let path = format!("/sys/fs/cgroup/{hierarchy}{cgroups}/{file}");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        (host("pids.max").as_str(), host("cpu.cfs_quota_us").as_str()),
        ("32", "50000")
    );

    // The service reads its own limits where programs look for them (a JVM sizes its heap,
    // Go its GOMAXPROCS), at the root of its own cgroup, and sees no other hierarchy.
    let inside = gw.shg(&[
        "exec",
        "capped",
        "--",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
         grep -c . /sys/fs/cgroup/memory/memory.limit_in_bytes; grep :pids: /proc/self/cgroup; \
         ls /sys/fs/cgroup",
    ]);
    assert!(inside.ok(), "{inside}");
    let lines: Vec<&str> = inside.stdout.lines().collect();
    assert_eq!(lines[..3], ["32", "50000", "1"][..], "{inside}");
    assert!(lines[3].ends_with(":pids:/"), "{inside}");
    let mut visible = lines[4..].to_vec();
    visible.sort();
    let expected = runtime::spec::visible_hierarchies(std::path::Path::new("/sys/fs/cgroup"))
        .expect("a cgroup v1 host");
    assert!(expected.iter().any(|h| h == "memory"), "{expected:?}");
    assert_eq!(visible, expected, "{inside}");

    for (file, value) in [("pids/pids.max", "max"), ("cpu/cpu.cfs_quota_us", "-1")] {
        let out = gw.shg(&[
            "exec",
            "capped",
            "--",
            "sh",
            "-c",
            &format!("echo {value} > /sys/fs/cgroup/{file}"),
        ]);
        assert!(
            !out.ok(),
            "the service wrote {value} into its own {file}:\n{out}"
        );
    }
    assert_eq!(
        (host("pids.max").as_str(), host("cpu.cfs_quota_us").as_str()),
        ("32", "50000"),
        "the service changed its own limits"
    );
    let out = gw.shg(&[
        "exec",
        "capped",
        "--",
        "mkdir",
        "/sys/fs/cgroup/pids/escape",
    ]);
    let nested = std::path::PathBuf::from(format!("/sys/fs/cgroup/pids{cgroups}/escape"));
    let made = nested.exists();
    let _ = std::fs::remove_dir(&nested); // or the service's cgroup could not be removed
    assert!(
        !out.ok() && !made,
        "the service created a cgroup under its own:\n{out}"
    );
    // The view's root is a directory of the host's (STATE/cgroup-view), bound read-only.
    let out = gw.shg(&["exec", "capped", "--", "mkdir", "/sys/fs/cgroup/mine"]);
    let view = gw.dir.join("cgroup-view");
    let made = view.join("mine").exists();
    let _ = std::fs::remove_dir(view.join("mine"));
    assert!(
        !out.ok() && !made && view.join("pids").is_dir(),
        "the service wrote into the host's {}:\n{out}",
        view.display()
    );
}
