//! The peer-assisted swarm against the origin alone, in one run, on emulated links: `G`
//! gateways, each a network namespace joined to a shared access network by an ADSL-like link
//! (token buckets: 8 Mbit/s down, 1 Mbit/s up), in two regions (10.1/16 north, 10.2/16
//! south, placed by the tracker from their addresses); the origin and the tracker in a
//! namespace of their own on an unshaped link. Each gateway runs a real `vod peer` (as its
//! package does: up to 1 Mbit/s of upload, its limit; 512 kbit/s reserved), and the household's
//! player runs beside it in the gateway's namespace, playing at the title's bitrate. Starts are staggered. Then the same
//! players stream from the origin alone, over the same links.
//!
//! Reports the share of bytes not served by the origin (as the origin counted them), the
//! share of peer bytes from the same region, the time to first frame and the stalls.
//!
//! Needs root (namespaces, veths, tc). `SHG_BENCH_QUICK=1`: 4 gateways and a short title, to
//! check the bench works. `SHG_VOD_BENCH_SEED_X=N`: the origin's BitTorrent seed capped at N
//! times the bitrate (4 unless set; 0: no seed, the origin is a web seed only).
//! `SHG_VOD_BENCH_SUPER_SEED=1`: the seed sends each piece into a region once (`--super-seed`).
//! `SHG_VOD_BENCH_KEEP=1` keeps the logs; `SHG_VOD_BENCH_LOG` sets their filter (`RUST_LOG`'s
//! syntax).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vod::origin::OriginStats;
use vod::peer::Metrics;

const VOD: &str = env!("CARGO_BIN_EXE_vod");
const ORIGIN: &str = "10.0.0.1";

fn quick() -> bool {
    std::env::var_os("SHG_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// A process of the lab, killed (by its PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lab's namespaces, deleted when dropped (drop the processes in them first).
struct Net {
    core: String,
    namespaces: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().chain([&self.core]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new(tag: &str) -> Net {
        let core = format!("vb{tag}c");
        run(&["ip", "netns", "add", &core]);
        let net = Net {
            core,
            namespaces: Vec::new(),
        };
        let c = net.core.as_str();
        run(&["ip", "-n", c, "link", "set", "lo", "up"]);
        run(&["ip", "-n", c, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", c, "link", "set", "br0", "up"]);
        net
    }

    /// A namespace `ns` at `addr` on the access network; with `(down, up)`, its link is
    /// shaped by token buckets at those rates (tc's syntax, e.g. `8mbit`).
    fn attach(&mut self, ns: &str, addr: &str, shape: Option<(&str, &str)>) {
        run(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        let port = format!("v{}", self.namespaces.len());
        let c = self.core.as_str();
        run(&[
            "ip", "-n", c, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ]);
        run(&["ip", "-n", c, "link", "set", &port, "master", "br0", "up"]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/8"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        if let Some((down, up)) = shape {
            // Up: what leaves the gateway; down: what the access network sends it.
            for (netns, dev, rate) in [(ns, "eth0", up), (c, port.as_str(), down)] {
                run(&[
                    "tc", "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                    "burst", "16kb", "latency", "200ms",
                ]);
            }
        }
    }
}

fn spawn_in(ns: &str, args: &[String], log: &Path) -> Proc {
    Proc(
        Command::new("ip")
            .args(["netns", "exec", ns, VOD])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SHG_VOD_BENCH_LOG")
                    .unwrap_or_else(|_| "info,vod=debug,librqbit=warn,librqbit_core=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("run vod"),
    )
}

/// GETs `url` from inside `ns`.
fn get_in(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_up(ns: &str, url: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_in(ns, url).is_none() {
        assert!(
            Instant::now() < deadline,
            "{url} never answered in {ns}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How a play went, as its viewer saw it.
#[derive(Debug, Clone, Copy)]
struct Play {
    /// From the request to two seconds of picture buffered.
    first_frame: Duration,
    stalls: u32,
    stalled: Duration,
}

/// Plays `url` at `bitrate` bytes/s as a browser's player does: starts once two seconds are
/// buffered, stops reading while thirty seconds are buffered ahead (the body waits in the
/// connection), stalls when the playhead meets the end of what arrived (and resumes when two
/// seconds are buffered again).
async fn play(url: &str, len: u64, bitrate: f64) -> Play {
    let asked = Instant::now();
    let mut answer = reqwest::get(url).await.expect("the player's request");
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    let prebuffer = 2.0 * bitrate;
    let (mut received, mut started, mut first_frame) = (0u64, None::<Instant>, Duration::ZERO);
    let (mut played_before, mut stalls, mut stalled, mut stall_at) =
        (0.0f64, 0u32, Duration::ZERO, None::<Instant>);
    loop {
        if let (Some(since), None) = (started, stall_at) {
            let head = played_before + since.elapsed().as_secs_f64() * bitrate;
            let ahead = (received as f64 - head) / bitrate;
            if ahead > 30.0 {
                tokio::time::sleep(Duration::from_secs_f64(ahead - 30.0)).await;
            }
        }
        let Some(chunk) = answer.chunk().await.expect("the body") else {
            break;
        };
        received += chunk.len() as u64;
        let now = Instant::now();
        match (started, stall_at) {
            (None, _) if received as f64 >= prebuffer.min(len as f64) => {
                started = Some(now);
                first_frame = now - asked;
            }
            (Some(since), None) => {
                let head = played_before + since.elapsed().as_secs_f64() * bitrate;
                if head >= received as f64 && received < len {
                    // The playhead caught up with the download before this chunk came.
                    stalls += 1;
                    stall_at = Some(now);
                    played_before = received as f64;
                }
            }
            (Some(_), Some(at))
                if received as f64 - played_before
                    >= prebuffer.min((len - played_before as u64) as f64) =>
            {
                stalled += now - at;
                stall_at = None;
                started = Some(now);
            }
            _ => {}
        }
    }
    assert_eq!(received, len, "{url} ended early");
    Play {
        first_frame,
        stalls,
        stalled,
    }
}

/// Starts a player in `ns` (this bench's own binary, see [`main`]).
fn start_player(ns: &str, url: &str, len: u64, bitrate: f64) -> Child {
    let me = std::env::current_exe().expect("the bench's own path");
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(me)
        .args(["--player", url, &len.to_string(), &bitrate.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a player")
}

fn finish_player(child: Child) -> Play {
    let out = child.wait_with_output().expect("a player");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    assert!(
        out.status.success() && fields.len() == 3,
        "a player failed: {text}"
    );
    Play {
        first_frame: Duration::from_secs_f64(fields[0] / 1e3),
        stalls: fields[1] as u32,
        stalled: Duration::from_secs_f64(fields[2] / 1e3),
    }
}

/// The players of `urls[i]` in `namespaces[i]`, started `stagger` apart.
fn play_all(
    namespaces: &[String],
    urls: &[String],
    len: u64,
    bitrate: f64,
    stagger: Duration,
) -> Vec<Play> {
    let started = Instant::now();
    let mut players = Vec::new();
    for (i, (ns, url)) in namespaces.iter().zip(urls).enumerate() {
        let at = started + stagger * i as u32;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        players.push(start_player(ns, url, len, bitrate));
    }
    players.into_iter().map(finish_player).collect()
}

fn summary(plays: &[Play]) -> String {
    let mut ff: Vec<f64> = plays
        .iter()
        .map(|p| p.first_frame.as_secs_f64() * 1e3)
        .collect();
    ff.sort_by(f64::total_cmp);
    let stalls: u32 = plays.iter().map(|p| p.stalls).sum();
    let stalled: f64 = plays.iter().map(|p| p.stalled.as_secs_f64()).sum();
    format!(
        "first frame median {:.0} ms (max {:.0}); {stalls} stalls, {stalled:.1} s stalled in all",
        ff[ff.len() / 2],
        ff[ff.len() - 1]
    )
}

fn origin_stats(ns: &str) -> OriginStats {
    let text = get_in(ns, &format!("http://{ORIGIN}:8080/stats")).expect("the origin's stats");
    serde_json::from_str(&text).expect("the origin's stats are JSON")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--player") {
        // A player, started by the bench inside a gateway's namespace.
        let (len, bitrate) = (args[3].parse().unwrap(), args[4].parse().unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let p = rt.block_on(play(&args[2], len, bitrate));
        println!(
            "{} {} {}",
            p.first_frame.as_secs_f64() * 1e3,
            p.stalls,
            p.stalled.as_secs_f64() * 1e3
        );
        return;
    }
    if !is_root() {
        eprintln!("vod swarm bench: needs root (namespaces, veths, tc); skipped");
        return;
    }
    let quick = quick();
    // Bitrates in bytes/s: 0.5 Mbit/s video (1 Mbit/s in the quick mode, so its plays are
    // short).
    let (gateways, len, stagger, bitrate) = if quick {
        (4usize, 1u64 << 20, Duration::from_secs(1), 125_000.0)
    } else {
        (20, 4 << 20, Duration::from_secs(3), 62_500.0)
    };
    // The origin's BitTorrent seed, capped at four times the bitrate: what it sends there
    // enters the swarm (what it serves over HTTP to a late read does not).
    let seed_x: f64 = std::env::var("SHG_VOD_BENCH_SEED_X")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0);
    let seed = (seed_x * bitrate) as u32;
    let super_seed = std::env::var_os("SHG_VOD_BENCH_SUPER_SEED").is_some();
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("SHG_VOD_BENCH_KEEP").is_some() {
        eprintln!("keeping the logs in {}", dir.path().display());
    }
    std::fs::create_dir_all(dir.path().join("titles")).unwrap();
    let data = testdata::scrambled(len as usize);
    std::fs::write(dir.path().join("titles/film.mp4"), &data).unwrap();

    let tag = format!("{:05}", std::process::id() % 100_000);
    let mut net = Net::new(&tag);
    let o = format!("vb{tag}o");
    net.attach(&o, ORIGIN, None);
    let mut gws = Vec::new();
    for i in 0..gateways {
        let ns = format!("vb{tag}g{i}");
        let addr = if i % 2 == 0 {
            format!("10.1.0.{}", i + 1)
        } else {
            format!("10.2.0.{}", i + 1)
        };
        net.attach(&ns, &addr, Some(("8mbit", "1mbit")));
        gws.push(ns);
    }

    let tracker = format!("http://{ORIGIN}:6969");
    let origin = format!("http://{ORIGIN}:8080");
    let mut procs = Vec::new();
    let log = dir.path().join("tracker.log");
    procs.push(spawn_in(
        &o,
        &[
            "tracker".into(),
            "--listen".into(),
            "0.0.0.0:6969".into(),
            "--region".into(),
            "10.1.0.0/16=north".into(),
            "--region".into(),
            "10.2.0.0/16=south".into(),
        ],
        &log,
    ));
    wait_up(&o, &format!("{tracker}/region"), &log);
    let log = dir.path().join("origin.log");
    let mut origin_args: Vec<String> = vec![
        "origin".into(),
        "--listen".into(),
        "0.0.0.0:8080".into(),
        "--titles".into(),
        dir.path().join("titles").display().to_string(),
        "--public-url".into(),
        origin.clone(),
        "--tracker".into(),
        tracker.clone(),
        "--bitrate".into(),
        format!("film.mp4={}", (bitrate * 8.0) as u64),
    ];
    if seed > 0 {
        origin_args.extend([
            "--seed-listen".into(),
            "0.0.0.0:6882".into(),
            "--seed-upload-bps".into(),
            seed.to_string(),
        ]);
        if super_seed {
            origin_args.push("--super-seed".into());
        }
    }
    procs.push(spawn_in(&o, &origin_args, &log));
    wait_up(&o, &format!("{origin}/catalog"), &log);
    for (i, ns) in gws.iter().enumerate() {
        let log = dir.path().join(format!("gw{i}.log"));
        // What the package runs (its manifest's command), the cache in a scratch directory.
        procs.push(spawn_in(
            ns,
            &[
                "peer".into(),
                "--listen".into(),
                "0.0.0.0:8090".into(),
                "--bt-listen".into(),
                "0.0.0.0:6881".into(),
                "--origin".into(),
                origin.clone(),
                "--tracker".into(),
                tracker.clone(),
                "--cache".into(),
                dir.path().join(format!("gw{i}")).display().to_string(),
                "--upload-bps".into(),
                "125000".into(),
                "--no-prefetch".into(),
            ],
            &log,
        ));
        wait_up(ns, "http://127.0.0.1:8090/metrics", &log);
    }

    // The swarm: each household plays from its gateway.
    let before = origin_stats(&o);
    let urls = vec!["http://127.0.0.1:8090/watch/film.mp4".to_string(); gateways];
    let t = Instant::now();
    let swarm = play_all(&gws, &urls, len, bitrate, stagger);
    let swarm_time = t.elapsed();
    let after = origin_stats(&o);
    let from_origin =
        (after.http_bytes - before.http_bytes) + (after.seed_bytes - before.seed_bytes);
    let mut total = Metrics::default();
    let mut rows = Vec::new();
    for (i, ns) in gws.iter().enumerate() {
        let text = get_in(ns, "http://127.0.0.1:8090/metrics").expect("a gateway's metrics");
        let m: Metrics = serde_json::from_str(&text).expect("metrics are JSON");
        rows.push(format!(
            "    gw{i:<3} {:<6} origin {:>5.2} MiB HTTP ({:>2} late reads, {:>5.2} MiB bridged) {:>5.2} MiB seed; peers {:>5.2} MiB same region, {:>5.2} MiB other; uploaded {:>5.2} MiB",
            m.region,
            m.origin_http_bytes as f64 / 1048576.0,
            m.late_reads,
            m.bridged_bytes as f64 / 1048576.0,
            m.origin_seed_bytes as f64 / 1048576.0,
            m.same_region_bytes as f64 / 1048576.0,
            m.other_region_bytes as f64 / 1048576.0,
            m.uploaded_bytes as f64 / 1048576.0,
        ));
        total.same_region_bytes += m.same_region_bytes;
        total.other_region_bytes += m.other_region_bytes;
        total.unknown_peer_bytes += m.unknown_peer_bytes;
        total.late_reads += m.late_reads;
        total.origin_http_bytes += m.origin_http_bytes;
        total.bridged_bytes += m.bridged_bytes;
        total.origin_seed_bytes += m.origin_seed_bytes;
    }
    let peers = total.same_region_bytes + total.other_region_bytes + total.unknown_peer_bytes;
    let needed = gateways as u64 * len;

    // The baseline: the same players over the same links, from the origin alone.
    let before = origin_stats(&o);
    let urls = vec![format!("{origin}/titles/film.mp4"); gateways];
    let alone = play_all(&gws, &urls, len, bitrate, stagger);
    let after = origin_stats(&o);
    let alone_bytes = after.http_bytes - before.http_bytes;

    if quick {
        println!("vod swarm bench: QUICK mode (SHG_BENCH_QUICK=1): few gateways, a short title; the figures are not comparable");
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "vod swarm: {gateways} gateways in 2 regions on token-bucket links (8 Mbit/s down, 1 Mbit/s up), a {:.1} MiB title at {:.1} Mbit/s, starts {:.1} s apart; the origin's seed at {:.1} Mbit/s{}",
        mib(len),
        bitrate * 8.0 / 1e6,
        stagger.as_secs_f64(),
        seed as f64 * 8.0 / 1e6,
        if super_seed { ", super-seeding" } else { "" }
    );
    println!(
        "  origin served (its own count)      {:>7.1} MiB  (swarm; {:.1} MiB over HTTP in {} late reads, of which the stores took {:.1} MiB; {:.1} MiB from its seed)",
        mib(from_origin),
        mib(total.origin_http_bytes),
        total.late_reads,
        mib(total.bridged_bytes),
        mib(total.origin_seed_bytes)
    );
    println!(
        "  origin served, origin alone        {:>7.1} MiB  (the players needed {:.1} MiB)",
        mib(alone_bytes),
        mib(needed)
    );
    println!(
        "  bytes not served by the origin     {:>7.1} %   (1 - swarm / origin alone)",
        100.0 * (1.0 - from_origin as f64 / alone_bytes.max(1) as f64)
    );
    println!(
        "  peer bytes from the same region    {:>7.1} %   ({:.1} MiB same, {:.1} MiB other, {:.1} MiB unknown)",
        100.0 * total.same_region_bytes as f64
            / (total.same_region_bytes + total.other_region_bytes).max(1) as f64,
        mib(total.same_region_bytes),
        mib(total.other_region_bytes),
        mib(total.unknown_peer_bytes)
    );
    println!(
        "  swarm:        {} ({:.0} s in all)",
        summary(&swarm),
        swarm_time.as_secs_f64()
    );
    println!("  origin alone: {}", summary(&alone));
    println!("  per gateway, in the order they started (the provider's view):");
    for row in rows {
        println!("{row}");
    }
    // The quick mode's players start too close together for the first gateways to share.
    assert!(quick || peers > 0, "no gateway got anything from another");
    drop(procs);
    drop(net);
    if std::env::var_os("SHG_VOD_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
}
