//! The lab's figures (issue 13), on a real lab: `shg lab up` of N gateways (real `shg gateway
//! run` agents enrolled with a real controller, in namespaces behind VDSL-shaped links):
//!
//! 1. time to bring the lab up, and memory per emulated gateway: the host's `MemAvailable`
//!    before and after (everything a gateway costs: agent, namespaces, tmpfs state, its share
//!    of the controller), and each agent's PSS;
//! 2. time from a deployment's start (`shg fleet deploy … --waves 100%`) to the new version
//!    healthy on 95% of the gateways (from the controller's per-gateway outcome times),
//!    against the baseline of one device: `shg install` of the same package on one lab
//!    gateway, to running, in the same run.
//!
//! `SHG_BENCH_LAB_GATEWAYS=N` sets N (default 50; 4 with `SHG_BENCH_QUICK=1`); a run with a
//! larger N (`=250`) shows whether this machine runs that many.
//! Needs root, iproute2, nftables, busybox-static. Run: `cargo bench -p shg --bench lab`.

#[allow(dead_code)]
mod common;
use common::scaled;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const SHG: &str = env!("CARGO_BIN_EXE_shg");

/// Takes the lab down when the bench ends, also halfway through.
struct Down {
    base: PathBuf,
    name: String,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab_cmd(&self.base, &self.name, &["down"]);
    }
}

fn lab_cmd(base: &Path, name: &str, args: &[&str]) -> std::process::Output {
    Command::new(SHG)
        .arg("lab")
        .arg("--dir")
        .arg(base)
        .args(["--name", name])
        .args(args)
        .env_remove("SHG_GATEWAY")
        .env_remove("SHG_CONTROLLER")
        .output()
        .expect("run shg lab")
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemAvailable in /proc/meminfo")
}

fn pss_kib(pid: i64) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lab bench: needs root (namespaces, containers); skipped");
        return;
    }
    common::announce("lab");
    let n: usize = std::env::var("SHG_BENCH_LAB_GATEWAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| scaled(50, 4));
    let base = tempfile::Builder::new()
        .prefix("shg-bench-lab-")
        .tempdir_in("/tmp")
        .unwrap();
    let name = format!("b{}", std::process::id());
    let _down = Down {
        base: base.path().to_path_buf(),
        name: name.clone(),
    };

    // --- up, and memory per gateway -----------------------------------------------------
    let before = mem_available_kib();
    let t = Instant::now();
    let up = lab_cmd(
        base.path(),
        &name,
        &[
            "up",
            "--gateways",
            &n.to_string(),
            "--regions",
            "2",
            "--link",
            "vdsl",
        ],
    );
    let up_s = t.elapsed().as_secs_f64();
    assert!(
        up.status.success(),
        "shg lab up --gateways {n} failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    std::thread::sleep(Duration::from_secs(scaled(10, 2)));
    let after = mem_available_kib();
    let status: Value =
        serde_json::from_slice(&lab_cmd(base.path(), &name, &["status", "--json"]).stdout)
            .expect("lab status");
    let gateways = status["gateways"].as_array().unwrap();
    let online = gateways
        .iter()
        .filter(|g| g["controller"] == "online")
        .count();
    let pss: Vec<u64> = gateways
        .iter()
        .filter_map(|g| pss_kib(g["pid"].as_i64()?))
        .collect();
    let per_gateway_host = before.saturating_sub(after) as f64 / n as f64;
    let mean_pss = pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64;
    let controller_pss = status["controller_pid"]
        .as_i64()
        .and_then(pss_kib)
        .unwrap_or(0) as f64;
    // MemAvailable moves with everything else on the host (run the bench alone); the PSS of
    // the lab's processes (each agent, and its share of the controller) bounds it from the
    // other side. The larger of the two is the cost counted.
    let per_gateway = per_gateway_host.max(mean_pss + controller_pss / n as f64);
    println!("lab of {n} gateways (2 regions, VDSL 50/10 Mbit/s links):");
    println!("  up in                           {up_s:>8.1} s ({online} online)");
    println!(
        "  memory per gateway, all told    {:>8.1} MiB (host MemAvailable {} → {} MiB)",
        per_gateway_host / 1024.0,
        before / 1024,
        after / 1024
    );
    println!(
        "  agent PSS, mean                 {:>8.1} MiB (controller {:.1} MiB)",
        mean_pss / 1024.0,
        controller_pss / 1024.0
    );
    println!(
        "  gateways that fit in {} GiB      {:>8.0} (at the larger of the two, keeping 10% free)",
        before / (1 << 20),
        before as f64 * 0.9 / per_gateway
    );
    assert_eq!(online, n, "every gateway online: {status:#}");

    // --- a deployment to all, against one install ----------------------------------------
    let lab = lab::Lab::load(base.path(), &name, PathBuf::from(SHG)).expect("load the lab");
    let mut sink = std::io::sink();
    let demo = lab::demo::Demo::new(&lab, &mut sink);
    let key = demo.key(lab::demo::PROVIDER).unwrap();
    lab.fleet(&[
        "trust",
        "add",
        "--provider",
        lab::demo::PROVIDER,
        key.with_extension("pub").to_str().unwrap(),
    ])
    .unwrap();
    let manifest = lab::demo::probe("1.0", "while true; do sleep 1; done");
    let pkg = demo.package("probe-1.0", &manifest, &key).unwrap();
    lab.fleet(&["publish", pkg.to_str().unwrap()]).unwrap();
    lab.fleet(&["approve", lab::demo::SERVICE, "1.0"]).unwrap();

    // Baseline: one device, the package already on it. The gateway installs only what its
    // catalog lists: the approval reaches it with its next desired state.
    let listed = Instant::now();
    while lab
        .shg_on(
            "gw1",
            &["install", "--dry-run", pkg.to_str().unwrap()],
            None,
        )
        .is_err()
    {
        assert!(
            listed.elapsed() < Duration::from_secs(30),
            "gw1 never listed the approval"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    lab.shg_on("gw1", &["install", pkg.to_str().unwrap()], None)
        .expect("install on gw1");
    loop {
        let ps: Value =
            serde_json::from_str(&lab.shg_on("gw1", &["ps", "--json"], None).unwrap()).unwrap();
        if ps[0]["state"] == "running" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never ran: {ps}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let single_s = t.elapsed().as_secs_f64();
    lab.shg_on("gw1", &["remove", lab::demo::SERVICE], None)
        .expect("remove on gw1");

    let deployed: Value = serde_json::from_str(
        &lab.fleet(&[
            "deploy",
            "probe:1.0",
            "--selector",
            &format!("lab={name}"),
            "--waves",
            "100%",
            "--soak",
            "0s",
            "--json",
        ])
        .unwrap(),
    )
    .unwrap();
    let id = deployed["id"].as_str().unwrap().to_string();
    let created = deployed["created_ms"].as_i64().unwrap();
    let need = (n as f64 * 0.95).ceil() as usize;
    let t = Instant::now();
    let times = loop {
        let d: Value =
            serde_json::from_str(&lab.fleet(&["deployment", &id, "--json"]).unwrap()).unwrap();
        let mut healthy: Vec<i64> = d["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["outcome"] == "healthy")
            .map(|t| t["since_ms"].as_i64().unwrap() - created)
            .collect();
        if healthy.len() >= need {
            healthy.sort();
            break healthy;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "only {} of {n} healthy after 300 s: {d:#}",
            healthy.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("deployment of a 1 MiB busybox service to all {n} gateways (--waves 100%):");
    println!(
        "  start to healthy on 95% ({need})  {:>8.1} s (first {:.1} s, median {:.1} s)",
        times[need - 1] as f64 / 1000.0,
        times[0] as f64 / 1000.0,
        times[times.len() / 2] as f64 / 1000.0
    );
    println!("  baseline: shg install on one gateway, to running {single_s:>6.1} s");
}
