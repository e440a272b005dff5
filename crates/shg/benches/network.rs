//! `cargo bench -p shg --bench network`: the service network's figures, on a gateway agent
//! running in a network namespace of its own between an emulated WAN host and LAN host.
//!
//! 1. Shaping accuracy under contention: two services reserving 20 and 60 Mbit/s upload as
//!    fast as they can while a LAN host floods the WAN through the gateway (forwarding
//!    reserve 20 Mbit/s) on a 100 Mbit/s link; each one's rate against its reservation, at
//!    the receiver (goodput) and in HTB's own counters (bytes on the wire).
//! 2. CPU cost per Gbit of a service's traffic through the shaped path (veth → IFB → HTB →
//!    NAT) against the same path with the IFB redirect taken out.
//!
//! `SHG_BENCH_QUICK=1` runs the same steps with windows of 2 s.
//! Needs root, iperf3, nftables, busybox-static (scripts/setup.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::scaled;

const GW: &str = "shgbench-gw";
const WAN: &str = "shgbench-wan";
const LAN: &str = "shgbench-lan";

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("network bench: needs root (namespaces, containers); skipped");
        return;
    }
    common::announce("network");
    // The accuracy window, and how long each iperf3 run lasts.
    let window = scaled(Duration::from_secs(20), Duration::from_secs(2));
    let iperf_secs = scaled(10, 2);
    let shg = PathBuf::from(env!("CARGO_BIN_EXE_shg"));
    let _lab = Lab::new();
    let state = tempfile::Builder::new()
        .prefix("shg-netbench-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let busybox = samples::find_busybox().expect("busybox-static");
    let work = state.path().join("work");

    // --- 1. accuracy ---------------------------------------------------------------
    let config = |link: &str, forward: &str| {
        format!(
            "[capacity]\nbandwidth_down = \"{link}\"\nbandwidth_up = \"{link}\"\n\
             [reserve]\nbandwidth_down = \"{forward}\"\nbandwidth_up = \"{forward}\"\n\
             [network]\nwan = \"wan0\"\nlan = \"lan0\"\ndns = [\"203.0.113.2\"]\n"
        )
    };
    std::fs::write(
        state.path().join("gateway.toml"),
        config("100Mbit", "20Mbit"),
    )
    .unwrap();
    let agent = Agent::start(&shg, state.path());
    let counter = spawn_in(WAN, &["python3", "-c", COUNTER, "5001", "5002", "5003"]);
    std::thread::sleep(Duration::from_millis(500));
    for (name, port, reserve) in [("twenty", 5001, "20Mbit"), ("sixty", 5002, "60Mbit")] {
        let command = format!(
            "command = [\"/bin/sh\", \"-c\", \"while true; do nc 203.0.113.2 {port} < /dev/zero; sleep 0.2; done\"]"
        );
        let resources = format!("bandwidth_up = {{ reserve = \"{reserve}\" }}");
        let pkg = package(&shg, &work, &busybox, name, &command, &resources);
        agent.trust_bench_key(&shg, &work);
        agent.shg(&["install", pkg.to_str().unwrap()]);
    }
    let flood = spawn_in(LAN, &["python3", "-c", FLOOD, "203.0.113.2", "5003"]);
    std::thread::sleep(scaled(Duration::from_secs(3), Duration::from_secs(1)));
    let tag = agent.tag();
    let before = (read_counter(), htb_bytes(&tag));
    let started = Instant::now();
    std::thread::sleep(window);
    let after = (read_counter(), htb_bytes(&tag));
    let secs = started.elapsed().as_secs_f64();
    drop(flood);
    drop(counter);

    println!("shaping accuracy: 100 Mbit/s uplink, every class saturated, {secs:.1} s window");
    println!("  class        reserved   goodput (ratio)     on the wire, HTB (ratio)");
    let rows = [
        ("twenty", 20.0, 5001u16, 2u32),
        ("sixty", 60.0, 5002, 3),
        ("forwarding", 20.0, 5003, 0xfffe),
    ];
    for (name, reserved, port, class) in rows {
        let good = (after.0.get(&port).copied().unwrap_or(0)
            - before.0.get(&port).copied().unwrap_or(0)) as f64
            * 8.0
            / secs
            / 1e6;
        let wire = (after.1.get(&class).copied().unwrap_or(0)
            - before.1.get(&class).copied().unwrap_or(0)) as f64
            * 8.0
            / secs
            / 1e6;
        println!(
            "  {name:<12} {reserved:>5.0} Mbit/s  {good:>6.2} Mbit/s ({:>5.3})  {wire:>6.2} Mbit/s ({:>5.3})",
            good / reserved,
            wire / reserved
        );
        // Every class is saturated: one that moved nothing means its sender, the counter or
        // the HTB class is missing, and its ratios would be meaningless.
        assert!(
            good > 0.0 && wire > 0.0,
            "class {name} moved nothing in the window (goodput {good:.2}, HTB {wire:.2} Mbit/s); is its sender running and its class 1:{class:x} in the upload tree?"
        );
    }
    for name in ["twenty", "sixty"] {
        agent.shg(&["remove", name]);
    }
    agent.stop();

    // --- 2. CPU per Gbit -------------------------------------------------------------
    std::fs::write(state.path().join("gateway.toml"), config("40Gbit", "1Gbit")).unwrap();
    let agent = Agent::start(&shg, state.path());
    let pkg = package(
        &shg,
        &work,
        &busybox,
        "blaster",
        "command = [\"/bin/sleep\", \"100000\"]",
        "bandwidth_up = { reserve = \"1Gbit\" }",
    );
    agent.trust_bench_key(&shg, &work);
    agent.shg(&["install", pkg.to_str().unwrap()]);
    let pid = agent.pid_of("blaster");
    let server = spawn_in(WAN, &["iperf3", "-s", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(500));
    let shaped = iperf_cpu(pid, iperf_secs);
    // Unshaped: the same path without the redirect into the IFB and its HTB tree.
    let veth = format!("shv{tag}2");
    run_in(GW, &["tc", "qdisc", "del", "dev", &veth, "clsact"]);
    let unshaped = iperf_cpu(pid, iperf_secs);
    drop(server);
    agent.shg(&["remove", "blaster"]);
    agent.stop();

    println!(
        "forwarding cost, service -> WAN host through the gateway (iperf3, {iperf_secs} s, all CPUs)"
    );
    for (what, (gbits, cpu_s)) in [("shaped (IFB + HTB)", shaped), ("unshaped", unshaped)] {
        println!(
            "  {what:<20} {:>6.2} Gbit/s  {:>6.3} CPU-s per Gbit",
            gbits / iperf_secs as f64,
            cpu_s / gbits
        );
    }
}

/// Counts bytes received per port; writes `port bytes` lines to /tmp/shg-netbench-counts.
const COUNTER: &str = r#"
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
counts = {}
for p in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(p))); s.listen(8); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, ("listen", int(p))); counts[int(p)] = 0
last = 0
while True:
    for key, _ in sel.select(0.1):
        kind, port = key.data
        if kind == "listen":
            c, _ = key.fileobj.accept(); c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, ("conn", port))
        else:
            try:
                d = key.fileobj.recv(262144)
            except BlockingIOError:
                continue
            if not d:
                sel.unregister(key.fileobj); key.fileobj.close()
            counts[port] += len(d)
    if time.time() - last > 0.2:
        last = time.time()
        with open("/tmp/shg-netbench-counts.tmp", "w") as f:
            f.write("".join(f"{p} {n}\n" for p, n in counts.items()))
        import os; os.replace("/tmp/shg-netbench-counts.tmp", "/tmp/shg-netbench-counts")
"#;

/// Sends zeros to HOST PORT as fast as the path takes them, reconnecting if cut.
const FLOOD: &str = r#"
import socket, sys, time
buf = bytes(65536)
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
        while True:
            s.sendall(buf)
    except OSError:
        time.sleep(0.2)
"#;

fn read_counter() -> std::collections::HashMap<u16, u64> {
    // Sampled right after a write by the counter (every 0.2 s).
    std::thread::sleep(Duration::from_millis(250));
    std::fs::read_to_string("/tmp/shg-netbench-counts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (p, n) = l.split_once(' ')?;
            Some((p.parse().ok()?, n.parse().ok()?))
        })
        .collect()
}

/// Bytes sent by each class of the upload tree, by class minor.
fn htb_bytes(tag: &str) -> std::collections::HashMap<u32, u64> {
    let text = run_in(
        GW,
        &["tc", "-s", "class", "show", "dev", &format!("shgu{tag}")],
    );
    network::ops::parse_class_bytes(&text)
}

/// Runs iperf3 for `secs` from the service's network namespace to the WAN host; returns the
/// Gbit received and the CPU seconds the whole machine spent meanwhile.
fn iperf_cpu(pid: i32, secs: u32) -> (f64, f64) {
    let busy_before = busy_seconds();
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args([
            "iperf3",
            "-c",
            "203.0.113.2",
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .expect("run iperf3");
    let busy = busy_seconds() - busy_before;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J");
    let bytes = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        bytes > 0.0,
        "iperf3 from the service's namespace (PID {pid}) to the WAN host received nothing: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (bytes * 8.0 / 1e9, busy)
}

/// CPU seconds all CPUs spent not idle since boot (/proc/stat, 100 ticks a second).
fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: f64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// The three namespaces and their links, removed when dropped.
struct Lab;

impl Lab {
    fn new() -> Lab {
        for ns in [GW, WAN, LAN] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let script = format!(
            "set -e
for n in {GW} {WAN} {LAN}; do ip netns add $n; ip -n $n link set lo up; done
ip link add wan0 netns {GW} type veth peer name eth0 netns {WAN}
ip link add lan0 netns {GW} type veth peer name eth0 netns {LAN}
ip -n {GW} addr add 203.0.113.1/24 dev wan0; ip -n {GW} link set wan0 up
ip -n {GW} addr add 192.168.77.1/24 dev lan0; ip -n {GW} link set lan0 up
ip -n {WAN} addr add 203.0.113.2/24 dev eth0; ip -n {WAN} link set eth0 up
ip -n {LAN} addr add 192.168.77.2/24 dev eth0; ip -n {LAN} link set eth0 up
ip -n {GW} route add default via 203.0.113.2
ip -n {LAN} route add default via 192.168.77.1
ip -n {WAN} route add 192.168.77.0/24 via 203.0.113.1
"
        );
        let status = Command::new("sh").arg("-c").arg(script).status().unwrap();
        assert!(status.success(), "cannot build the bench's namespaces");
        Lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [GW, WAN, LAN] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_file("/tmp/shg-netbench-counts");
    }
}

/// A helper process in one of the lab's namespaces, killed when dropped (also when the bench
/// fails halfway), so no sender or receiver outlives the bench.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `args` in namespace `ns` (`ip netns exec` execs it: the child is the process).
fn spawn_in(ns: &str, args: &[&str]) -> Spawned {
    Spawned(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace"),
    )
}

fn run_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("run in namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An agent in the gateway namespace; dropped (also when the bench fails halfway), it removes
/// its services and stops, so no container, veth or HTB class outlives the bench.
struct Agent {
    child: Child,
    shg: PathBuf,
    state: PathBuf,
}

impl Agent {
    fn start(shg: &Path, state: &Path) -> Agent {
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{GW}"))
            .arg(shg)
            .args(["gateway", "run", "--state-dir"])
            .arg(state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        let agent = Agent {
            child,
            shg: shg.to_path_buf(),
            state: state.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.try_shg(&["ps"]).status.success() {
            assert!(Instant::now() < deadline, "the agent did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn try_shg(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.shg)
            .args(args)
            .env("SHG_GATEWAY", self.state.join("api.sock"))
            .output()
            .expect("run shg")
    }

    fn shg(&self, args: &[&str]) -> String {
        let out = self.try_shg(args);
        assert!(
            out.status.success(),
            "shg {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Trusts the `bench` provider's signing key (the packages are signed with it).
    fn trust_bench_key(&self, shg: &Path, work: &Path) {
        let (_, public) = common::bench_key(shg, work);
        self.shg(&[
            "trust",
            "add",
            "--provider",
            "bench",
            public.to_str().unwrap(),
        ]);
    }

    fn pid_of(&self, name: &str) -> i32 {
        let detail: serde_json::Value =
            serde_json::from_str(&self.shg(&["inspect", name, "--json"])).expect("inspect JSON");
        detail["pid"].as_i64().expect("running") as i32
    }

    /// The agent's network tag: its bridge is `shgb<tag>`.
    fn tag(&self) -> String {
        let links = run_in(GW, &["ip", "-br", "link"]);
        links
            .lines()
            .find_map(|l| {
                l.split_whitespace()
                    .next()?
                    .strip_prefix("shgb")
                    .map(String::from)
            })
            .expect("the agent's bridge")
    }

    fn stop(self) {
        drop(self);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        common::remove_all_and_stop(&self.shg, &self.state.join("api.sock"), &mut self.child);
    }
}

/// A busybox service with `command` and `resources`, packed; returns the package path.
fn package(
    shg: &Path,
    work: &Path,
    busybox: &Path,
    name: &str,
    command: &str,
    resources: &str,
) -> PathBuf {
    common::package_with(shg, work, busybox, name, command, "never", resources)
}
