//! `cargo bench -p shg --bench gateway`: the gateway core's figures, measured on this machine
//! against runc in the same run.
//!
//! 1. install-to-running and run-to-exit of a `/bin/true` service, against `runc run` of the
//!    very same bundle;
//! 2. the agent's memory (PSS) idle and with 50 sleeping services;
//! 3. what sampling every service's cgroup once a second costs the agent with those 50;
//! 4. the CPU share a service reserving half a core keeps while a neighbour spins.
//!
//! Needs root, busybox-static and runc (scripts/setup.sh installs them).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::package_with;

const RUNS: usize = 20;
const SLEEPERS: usize = 50;

fn main() {
    if !nix_is_root() {
        eprintln!("gateway bench: needs root (it starts containers); skipped");
        return;
    }
    let shg = PathBuf::from(env!("CARGO_BIN_EXE_shg"));
    let state = tempfile::Builder::new()
        .prefix("shg-bench-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    // The core's figures, on the host's own network namespace: no service network here
    // (benches/network.rs measures that, in namespaces of its own).
    std::fs::write(
        state.path().join("gateway.toml"),
        "[network]\nenabled = false\n",
    )
    .expect("write gateway.toml");
    let mut agent = Command::new(&shg)
        .args(["gateway", "run", "--state-dir"])
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = state.path().join("api.sock");
    let client = api::Client::new(&socket.display().to_string()).unwrap();
    rt.block_on(async {
        for _ in 0..200 {
            if client.gateway().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let busybox = samples::find_busybox().expect("busybox-static");
    let work = state.path().join("work");
    let (_, public) = common::bench_key(&shg, &work);
    rt.block_on(async {
        let public_key = std::fs::read_to_string(&public).expect("the bench key");
        client
            .add_trust(&api::TrustRequest {
                provider: "bench".into(),
                public_key,
                services: Vec::new(),
            })
            .await
            .expect("trust the bench key");
    });
    let true_pkg = package(
        &shg,
        &work,
        &busybox,
        "truth",
        r#"command = ["/bin/true"]"#,
        "never",
    );

    // --- install-to-running and run-to-exit --------------------------------------------
    let mut install_ms = Vec::new();
    let mut run_ms = Vec::new();
    rt.block_on(async {
        for _ in 0..RUNS {
            let t = Instant::now();
            client.install(&true_pkg, true).await.expect("install");
            install_ms.push(ms(t.elapsed()));
            wait_state(&client, "truth", &["exited"]).await;
            let t = Instant::now();
            client.start("truth").await.expect("start");
            wait_state(&client, "truth", &["exited"]).await;
            run_ms.push(ms(t.elapsed()));
            client.remove("truth").await.expect("remove");
        }
    });

    // runc run of the same bundle: install once more, keep it stopped, reuse its config.json.
    rt.block_on(async { client.install(&true_pkg, false).await.expect("install") });
    let bundle = state.path().join("services/truth/bundle");
    let runc_root = state.path().join("runc");
    let logs = state.path().join("runc-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut runc_ms = Vec::new();
    for i in 0..RUNS {
        let t = Instant::now();
        let status = runc_run(&runc_root, &bundle, &logs, &format!("bench-{i}"));
        runc_ms.push(ms(t.elapsed()));
        assert!(status, "runc run of the shg bundle failed");
    }
    rt.block_on(async { client.remove("truth").await.expect("remove") });

    // --- memory -----------------------------------------------------------------------
    let pid = agent.id() as i32;
    std::thread::sleep(Duration::from_millis(500));
    let idle = memory(pid);
    rt.block_on(async {
        for i in 0..SLEEPERS {
            let dir = work.join(format!("sleeper-{i}"));
            let pkg = package(
                &shg,
                &dir,
                &busybox,
                &format!("sleeper-{i}"),
                r#"command = ["/bin/sleep", "100000"]"#,
                "never",
            );
            client.install(&pkg, true).await.expect("install sleeper");
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let busy = memory(pid);
    // The binary's file pages are shared with every container's init (the same file), so
    // PSS falls as services start; the agent's own growth is its anonymous memory.
    let per_service = (busy.anon as f64 - idle.anon as f64) / SLEEPERS as f64;

    println!("gateway core figures ({RUNS} runs each, medians; this machine)");
    println!(
        "  shg install-to-running (/bin/true)   {:>8.1} ms",
        median(&mut install_ms)
    );
    println!(
        "  shg start-to-exit      (/bin/true)   {:>8.1} ms",
        median(&mut run_ms)
    );
    println!(
        "  runc run to exit       (same bundle) {:>8.1} ms",
        median(&mut runc_ms)
    );
    println!(
        "  ratio shg start-to-exit / runc run   {:>8.2}",
        median(&mut run_ms) / median(&mut runc_ms)
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (label, m) in [("idle", &idle), ("with 50 sleeping services", &busy)] {
        println!(
            "  agent PSS {label:<27}{:>6.1} MiB (anon {:.1}, file {:.1})",
            mib(m.pss),
            mib(m.anon),
            mib(m.file)
        );
    }
    println!("  agent anon memory per service        {per_service:>8.1} KiB");

    // --- sampling cost --------------------------------------------------------------------
    // Nothing else runs periodically in an agent whose services have no health checks: its
    // CPU time over a quiet half minute is what sampling 50 services a second costs.
    let window = Duration::from_secs(30);
    let (cpu0, t0) = (cpu_ns(pid), Instant::now());
    std::thread::sleep(window);
    let share = (cpu_ns(pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
    let stats = rt.block_on(client.stats()).expect("stats");
    let sampled = stats
        .services
        .iter()
        .filter(|s| s.memory.used.is_some())
        .count();
    println!(
        "  agent CPU, {sampled} services sampled at 1/s  {:>7.2} % of one core",
        share * 100.0
    );

    rt.block_on(async {
        for i in 0..SLEEPERS {
            let _ = client.remove(&format!("sleeper-{i}")).await;
        }
    });

    // --- CPU guarantee under contention ------------------------------------------------------
    let spin = "while :; do :; done";
    let guaranteed = package_with(
        &shg,
        &work,
        &busybox,
        "guaranteed",
        &format!("command = [\"/bin/sh\", \"-c\", \"{spin}\"]"),
        "never",
        "cpu = { reserve = 0.5 }",
    );
    let hog = package_with(
        &shg,
        &work,
        &busybox,
        "hog",
        &format!(
            "command = [\"/bin/sh\", \"-c\", \"for i in 1 2 3 4 5 6; do ({spin}) & done; wait\"]"
        ),
        "never",
        "cpu = { reserve = 0.1 }",
    );
    rt.block_on(async {
        client.install(&guaranteed, true).await.expect("install");
        client.install(&hog, true).await.expect("install");
        wait_state(&client, "guaranteed", &["running"]).await;
        wait_state(&client, "hog", &["running"]).await;
    });
    std::thread::sleep(Duration::from_secs(2));
    let usage = |name: &str| cgroup_cpu_ns(state.path(), name);
    let (g0, h0, t0) = (usage("guaranteed"), usage("hog"), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let elapsed = t0.elapsed().as_nanos() as f64;
    let got = (usage("guaranteed") - g0) as f64 / elapsed;
    let hogged = (usage("hog") - h0) as f64 / elapsed;
    println!(
        "  reserved 0.5 core beside a 6-way spinner: got {got:.3} cores ({:.0} % of the reservation; hog {hogged:.2})",
        got / 0.5 * 100.0
    );
    rt.block_on(async {
        for name in ["guaranteed", "hog"] {
            let _ = client.remove(name).await;
        }
    });
    stop(&mut agent);
}

/// CPU time of a process (user + system), in ns.
fn cpu_ns(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command; in
    // clock ticks of 10 ms.
    (fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)) * 10_000_000
}

/// CPU time of a service's cgroup (v1 cpuacct), in ns; its path comes from its bundle.
fn cgroup_cpu_ns(state: &Path, name: &str) -> u64 {
    let config = std::fs::read_to_string(state.join(format!("services/{name}/bundle/config.json")))
        .expect("bundle");
    let config: serde_json::Value = serde_json::from_str(&config).expect("bundle JSON");
    let path = config["linux"]["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath");
    std::fs::read_to_string(format!("/sys/fs/cgroup/cpuacct{path}/cpuacct.usage"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn wait_state(client: &api::Client, name: &str, states: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = client.list().await.expect("list");
        if list
            .iter()
            .any(|s| s.name == name && states.contains(&s.state.as_str()))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {states:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Writes a busybox service and packs it; returns the package path.
fn package(
    shg: &Path,
    work: &Path,
    busybox: &Path,
    name: &str,
    command: &str,
    policy: &str,
) -> PathBuf {
    package_with(
        shg,
        work,
        busybox,
        name,
        command,
        policy,
        "memory = { reserve = \"4MiB\", limit = \"16MiB\" }\npids = { limit = 8 }",
    )
}

/// `runc run` of the bundle, handing the init its log and status files as fds 3, 4 and 5.
fn runc_run(root: &Path, bundle: &Path, logs: &Path, id: &str) -> bool {
    use std::os::fd::AsRawFd;
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(n))
            .unwrap()
    };
    let files = [open("log.0"), open("log.1"), open("status")];
    let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new("runc");
    cmd.arg("--root")
        .arg(root)
        .args(["run", "--preserve-fds", "3", "--bundle"])
        .arg(bundle)
        .arg(id);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only dup2 between fork and exec, on descriptors this process owns.
    unsafe {
        cmd.pre_exec(move || {
            let high: Vec<i32> = fds
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))
                .collect();
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "-f", id])
        .status();
    drop(files);
    ok
}

struct Memory {
    pss: u64,
    anon: u64,
    file: u64,
}

/// PSS of `pid` and its anonymous and file-backed parts, in KiB.
fn memory(pid: i32) -> Memory {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        pss: field("Pss:"),
        anon: field("Pss_Anon:"),
        file: field("Pss_File:"),
    }
}

fn stop(agent: &mut Child) {
    // SAFETY: kill on the PID of the agent this bench started.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
}
