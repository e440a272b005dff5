//! `cargo bench -p shg --bench gateway`: the gateway core's figures, measured on this machine
//! against runc in the same run.
//!
//! 1. install-to-running and run-to-exit of a `/bin/true` service, against `runc run` of the
//!    very same bundle, its overlay root mounted as README (Containers) tells an operator;
//! 2. the agent's memory (PSS) idle and with 50 sleeping services, each sleeper's init's
//!    memory, and the start-to-exit and `runc run` pairs of 1. again while those 50 run;
//! 3. what sampling every service's cgroup once a second costs the agent with those 50;
//! 4. the CPU share a service reserving half a core keeps while a neighbour spins.
//!
//! `SHG_BENCH_QUICK=1` runs the same steps with 3 runs, 5 sleepers and windows of seconds;
//! `SHG_BENCH_AGENT_LOG=FILE` keeps the agent's log.
//! Needs root, busybox-static and runc (scripts/setup.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{package_with, scaled};

/// How much of each figure a run takes: the full bench, or the quick mode's few runs.
struct Scale {
    /// Runs of install-to-running.
    runs: usize,
    /// Pairs of one `shg start` to exit and one `runc run` of the same bundle, with no other
    /// service running and again beside the sleepers: the ratio sits near its aim, so each
    /// median has 40 samples behind it in the full bench.
    pairs: usize,
    /// Sleeping services for the memory and sampling figures.
    sleepers: usize,
    /// The quiet window over which the agent's sampling CPU is measured.
    sampling: Duration,
    /// The window over which the reserved service's CPU share is measured.
    contention: Duration,
}

/// Where the agent's log goes: the file `SHG_BENCH_AGENT_LOG` names (with
/// `RUST_LOG=agent::lifecycle=debug`, each start's and exit's steps), else nowhere.
fn agent_log() -> Stdio {
    match std::env::var_os("SHG_BENCH_AGENT_LOG") {
        Some(path) => std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("SHG_BENCH_AGENT_LOG {path:?}: {e}"))
            .into(),
        None => Stdio::null(),
    }
}

/// The agent this bench started; dropped (also when the bench fails halfway), it removes its
/// services first, so no container, mount or cgroup outlives the bench.
struct Agent {
    child: Child,
    shg: PathBuf,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        common::remove_all_and_stop(&self.shg, &self.socket, &mut self.child);
    }
}

/// One `shg start` of the exited service `truth` and one `runc run` of its bundle, in turn.
struct Pairs<'a> {
    client: &'a api::Client,
    runc_root: &'a Path,
    bundle: &'a Path,
    rootfs: &'a Path,
    logs: &'a Path,
}

impl Pairs<'_> {
    /// `runs` pairs; the times (ms) of the starts, to the exit seen on the event stream
    /// (`exited`), and of the runc runs. `tag` keeps the runc container ids apart.
    fn run(
        &self,
        rt: &tokio::runtime::Runtime,
        tag: &str,
        runs: usize,
        exited: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (client, runc_root, bundle, rootfs, logs) = (
            self.client,
            self.runc_root,
            self.bundle,
            self.rootfs,
            self.logs,
        );
        let mut run_ms = Vec::new();
        let mut runc_ms = Vec::new();
        for i in 0..runs {
            // The same quiet before each side, so both meet the kernel in the same state: on
            // cgroup v1 the first cgroup move after a quiet spell waits for an RCU grace period
            // (up to 30 ms here while the machine is busy), and runc's run would otherwise come
            // right before this start, warming it for shg alone.
            std::thread::sleep(Duration::from_millis(50));
            rt.block_on(async {
                let t = Instant::now();
                client.start("truth").await.expect("start");
                let message = tokio::time::timeout(Duration::from_secs(30), exited.recv())
                    .await
                    .expect("truth exited within 30 s")
                    .expect("the event stream ended");
                run_ms.push(ms(t.elapsed()));
                assert!(
                    message.ends_with("exited with code 0"),
                    "truth did not exit cleanly: {message}"
                );
            });
            // The agent removes the container (2-3 ms) after it records the exit: let it finish,
            // so that runc does not share the machine with it.
            std::thread::sleep(Duration::from_millis(50));
            let id = format!("{tag}-{i}");
            let t = Instant::now();
            let status = runc_run(runc_root, bundle, logs, &id);
            runc_ms.push(ms(t.elapsed()));
            // Outside the time: `runc run` removes its container as it ends, as the agent does
            // after the exit it records; this only catches a run that failed halfway.
            runc_delete(runc_root, &id);
            assert!(
                status,
                "runc run of the shg bundle {} failed (its root {} mounted as README says); run it by hand to see why",
                bundle.display(),
                rootfs.display()
            );
        }
        (run_ms, runc_ms)
    }
}

fn main() {
    if !nix_is_root() {
        eprintln!("gateway bench: needs root (it starts containers); skipped");
        return;
    }
    common::announce("gateway");
    let scale = Scale {
        runs: scaled(20, 3),
        pairs: scaled(40, 3),
        sleepers: scaled(50, 5),
        sampling: scaled(Duration::from_secs(30), Duration::from_secs(3)),
        contention: scaled(Duration::from_secs(10), Duration::from_secs(2)),
    };
    let runs = scale.runs;
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
    let socket = state.path().join("api.sock");
    let agent = Agent {
        child: Command::new(&shg)
            .args(["gateway", "run", "--state-dir"])
            .arg(state.path())
            .stdout(Stdio::null())
            .stderr(agent_log())
            .spawn()
            .expect("start the agent"),
        shg: shg.clone(),
        socket: socket.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
    // Every package of this bench is packed under `work`, so all are signed with the one key
    // trusted here.
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

    // --- install-to-running -------------------------------------------------------------
    let mut install_ms = Vec::new();
    rt.block_on(async {
        for _ in 0..runs {
            let t = Instant::now();
            client.install(&true_pkg, true).await.expect("install");
            install_ms.push(ms(t.elapsed()));
            wait_exit_0(&client, "truth").await;
            client.remove("truth").await.expect("remove");
        }
    });

    // --- start-to-exit against runc run of the same bundle, interleaved -----------------
    // The agent writes the bundle at every start, so the file runc gets is the one of a start
    // like those measured: install, run once, exited. (An install without a start writes a
    // bundle whose root does not exist yet; README says so.)
    rt.block_on(async {
        client.install(&true_pkg, true).await.expect("install");
        wait_exit_0(&client, "truth").await;
    });
    let bundle = state.path().join("services/truth/bundle");
    let rootfs = root_of(&bundle);
    // The agent leaves a started release's root mounted until the service is removed, but
    // after a reboot a stopped service's root is not mounted. Start from there and mount it
    // the way README tells an operator, so a wrong instruction fails this bench.
    unmount_if_mounted(&rootfs);
    mount_release_root(state.path(), &rootfs);
    // Both runtimes keep their containers' state in memory: the agent on the tmpfs it mounts
    // at STATE/containers, runc on one mounted here (as `/run/runc` is on most hosts).
    assert!(
        is_mounted(&state.path().join("containers")),
        "the agent's containers' state is not on a tmpfs of its own: the comparison with runc \
         would be unequal; see the agent's log (SHG_BENCH_AGENT_LOG)"
    );
    let runc_root = state.path().join("runc");
    let _runc_state = Tmpfs::mount(&runc_root);
    let logs = state.path().join("runc-logs");
    std::fs::create_dir_all(&logs).unwrap();
    // The exit is seen on the event stream (`shg events -f`), as a script would wait for it,
    // not by asking the agent for its list every millisecond, which would load the agent
    // while it works. One shg start and one runc run in turn, so both meet the same machine
    // (this 2-core machine's speed drifts between minutes).
    let (exits, mut exited) = tokio::sync::mpsc::unbounded_channel();
    let follower = {
        let client = client.clone();
        rt.spawn(async move {
            let _ = client
                .follow_events(Some("truth"), |event| {
                    if event.kind == "exited" {
                        let _ = exits.send(event.message);
                    }
                })
                .await;
        })
    };
    // Give the stream time to open, then one start not measured: it checks the stream sees
    // exits, and warms what a first start pays alone.
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.start("truth").await.expect("start");
        tokio::time::timeout(Duration::from_secs(30), exited.recv())
            .await
            .expect("the event stream shows truth's exit within 30 s");
    });
    let pairs = Pairs {
        client: &client,
        runc_root: &runc_root,
        bundle: &bundle,
        rootfs: &rootfs,
        logs: &logs,
    };
    let (mut run_ms, mut runc_ms) = pairs.run(&rt, "bench", scale.pairs, &mut exited);
    // --- memory -----------------------------------------------------------------------
    let pid = agent.child.id() as i32;
    std::thread::sleep(Duration::from_millis(500));
    let after_work = memory(pid);
    // Idle: nothing asked of the agent for longer than it takes to drop the code it no longer
    // runs (every 10 s, server::trim).
    std::thread::sleep(Duration::from_secs(12));
    let idle = memory(pid);
    rt.block_on(async {
        for i in 0..scale.sleepers {
            let pkg = package(
                &shg,
                &work,
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
    // Each sleeper's PID 1 (`shg-init`): its resident memory, and the part of it that is its
    // own (anonymous; its program's pages are the same file in every container).
    let inits: Vec<(u64, u64)> = rt
        .block_on(client.list())
        .expect("list")
        .iter()
        .filter(|s| s.name.starts_with("sleeper-"))
        .filter_map(|s| s.pid)
        .map(|init| {
            let text = std::fs::read_to_string(format!("/proc/{init}/smaps_rollup"))
                .unwrap_or_else(|e| panic!("/proc/{init}/smaps_rollup of a sleeper's init: {e}"));
            let field = |name: &str| -> u64 {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in the init's smaps_rollup: {text}"))
            };
            (field("Rss:"), field("Anonymous:"))
        })
        .collect();
    assert_eq!(
        inits.len(),
        scale.sleepers,
        "the agent lists {} running sleepers with an init, of {}",
        inits.len(),
        scale.sleepers
    );
    let (mut init_rss, mut init_own): (Vec<f64>, Vec<f64>) =
        inits.iter().map(|&(r, a)| (r as f64, a as f64)).unzip();
    // The same pairs again, beside the running sleepers: every one of them adds its root and
    // its volume to the host's mount table, which the runtimes read at each start.
    let (mut crowded_ms, mut crowded_runc_ms) = pairs.run(&rt, "crowded", scale.pairs, &mut exited);
    follower.abort();
    // Removal unmounts everything under the service's directory, the bench's mount included.
    rt.block_on(async { client.remove("truth").await.expect("remove") });
    assert!(
        !is_mounted(&rootfs),
        "{} is still mounted after the removal of its service",
        rootfs.display()
    );
    // The agent's own growth per service is its anonymous memory: its file pages are shared
    // with the runtime helper and its children, so their share moves with the processes.
    let per_service = (busy.anon as f64 - idle.anon as f64) / scale.sleepers as f64;

    // Each shg start and the runc run right after it met the machine in the same minute: the
    // median of their ratios drifts less than the ratio of the two medians.
    let mut pair_ratios: Vec<f64> = run_ms.iter().zip(&runc_ms).map(|(s, r)| s / r).collect();
    println!(
        "gateway core figures ({runs} installs, {} start and runc pairs, medians; this machine)",
        scale.pairs
    );
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
    println!(
        "  ratio, median of the {} pairs         {:>8.2}",
        pair_ratios.len(),
        median(&mut pair_ratios)
    );
    let mut crowded_pairs: Vec<f64> = crowded_ms
        .iter()
        .zip(&crowded_runc_ms)
        .map(|(s, r)| s / r)
        .collect();
    let crowd = format!("({} services running)", scale.sleepers);
    println!(
        "  shg start-to-exit {crowd:<19}{:>8.1} ms",
        median(&mut crowded_ms)
    );
    println!(
        "  runc run to exit  {crowd:<19}{:>8.1} ms",
        median(&mut crowded_runc_ms)
    );
    println!(
        "  ratio, median of the {} pairs, crowded {:>6.2}",
        crowded_pairs.len(),
        median(&mut crowded_pairs)
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let busy_label = format!("with {} sleeping services", scale.sleepers);
    for (label, m) in [
        ("0.5 s after the starts", &after_work),
        ("idle (12 s quiet)", &idle),
        (busy_label.as_str(), &busy),
    ] {
        println!(
            "  agent PSS {label:<27}{:>6.1} MiB (anon {:.1}, file {:.1})",
            mib(m.pss),
            mib(m.anon),
            mib(m.file)
        );
    }
    println!("  agent anon memory per service        {per_service:>8.1} KiB");
    println!(
        "  container init (shg-init), each      {:>8.0} KiB RSS, {:.0} KiB its own (anon)",
        median(&mut init_rss),
        median(&mut init_own)
    );

    // --- sampling cost --------------------------------------------------------------------
    // Nothing else runs periodically in an agent whose services have no health checks: its
    // CPU time over a quiet window is what sampling the sleepers once a second costs.
    let (cpu0, t0) = (cpu_ns(pid), Instant::now());
    std::thread::sleep(scale.sampling);
    let share = (cpu_ns(pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
    let stats = rt.block_on(client.stats()).expect("stats");
    let sampled = stats
        .services
        .iter()
        .filter(|s| s.memory.used.is_some())
        .count();
    assert_eq!(
        sampled, scale.sleepers,
        "the sampler reported memory for {sampled} of {} running sleepers; the sampling figure would cover fewer services than it says",
        scale.sleepers
    );
    println!(
        "  agent CPU, {sampled} services sampled at 1/s  {:>7.2} % of one core ({:.0} s window)",
        share * 100.0,
        scale.sampling.as_secs_f64()
    );

    rt.block_on(async {
        for i in 0..scale.sleepers {
            let name = format!("sleeper-{i}");
            client
                .remove(&name)
                .await
                .unwrap_or_else(|e| panic!("remove {name}: {e}"));
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
    std::thread::sleep(scaled(Duration::from_secs(2), Duration::from_secs(1)));
    let usage = |name: &str| cgroup_cpu_ns(state.path(), name);
    let (g0, h0, t0) = (usage("guaranteed"), usage("hog"), Instant::now());
    std::thread::sleep(scale.contention);
    let elapsed = t0.elapsed().as_nanos() as f64;
    let got = (usage("guaranteed") - g0) as f64 / elapsed;
    let hogged = (usage("hog") - h0) as f64 / elapsed;
    println!(
        "  reserved 0.5 core beside a 6-way spinner: got {got:.3} cores ({:.0} % of the reservation; hog {hogged:.2}; {:.0} s window)",
        got / 0.5 * 100.0,
        scale.contention.as_secs_f64()
    );
    // Both spin without a pause: a share near nothing means the figure measured no CPU.
    assert!(
        got > 0.05 && hogged > 0.05,
        "the spinning services got {got:.3} and {hogged:.3} cores: their cpuacct counters did not move"
    );
    rt.block_on(async {
        for name in ["guaranteed", "hog"] {
            client
                .remove(name)
                .await
                .unwrap_or_else(|e| panic!("remove {name}: {e}"));
        }
    });
    drop(agent);
}

/// The root a bundle names (`root.path` of its `config.json`).
fn root_of(bundle: &Path) -> PathBuf {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config: serde_json::Value = serde_json::from_str(&text).expect("bundle JSON");
    PathBuf::from(
        config["root"]["path"]
            .as_str()
            .expect("root.path in the bundle"),
    )
}

/// Mounts a stopped service's root before `runc run`, as README (Containers) tells an
/// operator and as the agent's `mount_rootfs` does before each start: on
/// `releases/HEX/rootfs`, an overlay whose lower directories are `STATE/layers/sha256/L` for
/// each line L of `releases/HEX/layers` (top layer first, the order `lowerdir=` takes; a
/// layer named twice only at its first line, as overlayfs refuses a directory twice), with
/// `releases/HEX/upper` and `releases/HEX/work` taking the runtime's mount points, `nodev`
/// and `nosuid`.
fn mount_release_root(state: &Path, rootfs: &Path) {
    let release = rootfs.parent().expect("a release directory");
    let list = release.join("layers");
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the bundle's root {} is not a release of shared layers (an agent older than the layer store unpacked it whole, and nothing is to be mounted)",
            list.display(),
            rootfs.display()
        )
    });
    let mut seen = std::collections::HashSet::new();
    let lowers: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty() && seen.insert(*l))
        .map(|l| state.join("layers/sha256").join(l).display().to_string())
        .collect();
    assert!(
        !lowers.is_empty(),
        "{} names no layer; the release is incomplete, reinstall the service",
        list.display()
    );
    let (upper, work) = (release.join("upper"), release.join("work"));
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let options = format!(
        "nodev,nosuid,lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(rootfs)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mounting the overlay root {} (-o {options}) failed: {}; dmesg says why",
        rootfs.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A tmpfs mounted for as long as this lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0700,size=8m", "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {}",
            path.display()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn unmount_if_mounted(path: &Path) {
    if is_mounted(path) {
        let status = Command::new("umount")
            .arg(path)
            .status()
            .expect("run umount");
        assert!(
            status.success(),
            "cannot unmount {}; is a process still using it?",
            path.display()
        );
    }
}

fn is_mounted(path: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(path)
        .status()
        .expect("run mountpoint (util-linux)")
        .success()
}

/// Waits until `name` has exited and checks it exited with status 0: a start-to-exit time of
/// a service that failed would time something else.
async fn wait_exit_0(client: &api::Client, name: &str) {
    let summary = wait_state(client, name, &["exited"]).await;
    assert_eq!(
        summary.exit_code,
        Some(0),
        "{name} exited with {:?}: {:?}",
        summary.exit_code,
        summary.reason
    );
}

/// CPU time of a process (user + system), in ns.
fn cpu_ns(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat of the agent: {e}; did the agent exit?"));
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
    // v1 only, like the figures in BENCHMARKS.md; on a v2-only host this names the file.
    let file = format!("/sys/fs/cgroup/cpuacct{path}/cpuacct.usage");
    std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read {file}: the bench reads v1 cpuacct counters"))
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

async fn wait_state(client: &api::Client, name: &str, states: &[&str]) -> api::ServiceSummary {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = client.list().await.expect("list");
        if let Some(found) = list
            .iter()
            .find(|s| s.name == name && states.contains(&s.state.as_str()))
        {
            return found.clone();
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
    let open = |n: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(n))
            .unwrap()
    };
    let files = [open("log.0"), open("log.1"), open("status")];
    let mut cmd = Command::new("runc");
    cmd.arg("--root")
        .arg(root)
        .args(["run", "--preserve-fds", "3", "--bundle"])
        .arg(bundle)
        .arg(id);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    testdata::hand_over_from_3(&mut cmd, &[&files[0], &files[1], &files[2]]);
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    drop(files);
    ok
}

/// `runc delete -f` of a run's container, in case the run failed before removing it.
fn runc_delete(root: &Path, id: &str) {
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "-f", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

struct Memory {
    pss: u64,
    anon: u64,
    file: u64,
}

/// PSS of `pid` and its anonymous and file-backed parts, in KiB.
fn memory(pid: i32) -> Memory {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/smaps_rollup of the agent: {e}"));
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let pss = field("Pss:");
    assert!(pss > 0, "no Pss in /proc/{pid}/smaps_rollup: {text:?}");
    Memory {
        pss,
        anon: field("Pss_Anon:"),
        file: field("Pss_File:"),
    }
}
