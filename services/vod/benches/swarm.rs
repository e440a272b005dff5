//! The peer-assisted swarm against the origin alone, in one run: `G` gateways' peers (real
//! `vod peer` processes, each capped at ADSL-like rates by its BitTorrent session: 8 Mbit/s
//! down, 1 Mbit/s up) in two regions watch the same title with staggered starts, through a
//! player that plays at the title's bitrate. Then the same players stream from the origin
//! alone.
//!
//! Reports the share of bytes not served by the origin, the share of peer bytes from the same
//! region, the time to first frame and the stalls. On loopback: the rates are the peers' own
//! caps, not emulated links (the origin's HTTP is not capped, which favours the baseline).
//!
//! `SHG_BENCH_QUICK=1`: 4 gateways and a short title, to check the bench works.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vod::peer::Metrics;

const VOD: &str = env!("CARGO_BIN_EXE_vod");

fn quick() -> bool {
    std::env::var_os("SHG_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[String], log: &Path) -> Proc {
    Proc(
        Command::new(VOD)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("run vod"),
    )
}

async fn wait_up(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(url).await.is_err() {
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
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
async fn play(url: String, len: u64, bitrate: f64) -> Play {
    let asked = Instant::now();
    let mut answer = reqwest::get(&url).await.expect("the player's request");
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

#[tokio::main]
async fn main() {
    let quick = quick();
    // 0.5 Mbit/s video (4 Mbit/s in the quick mode, so its plays are short); peers: 8 Mbit/s
    // down, 1 Mbit/s up; the origin's seed: 0.5 Mbit/s.
    let (gateways, len, stagger, bitrate) = if quick {
        (4usize, 2u64 << 20, Duration::from_secs(1), 500_000.0)
    } else {
        (20, 4 << 20, Duration::from_secs(3), 62_500.0)
    };
    let (down, up, seed) = (1_000_000u32, 125_000u32, 62_500u32);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("titles")).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(dir.path().join("titles/film.mp4"), &data).unwrap();
    let (tp, op) = (free_port(), free_port());
    let tracker_url = format!("http://127.0.0.1:{tp}");
    let origin_url = format!("http://127.0.0.1:{op}");
    let mut procs = vec![spawn(
        &[
            "tracker".into(),
            "--listen".into(),
            format!("127.0.0.1:{tp}"),
        ],
        &dir.path().join("tracker.log"),
    )];
    wait_up(&format!("{tracker_url}/region")).await;
    procs.push(spawn(
        &[
            "origin".into(),
            "--listen".into(),
            format!("127.0.0.1:{op}"),
            "--titles".into(),
            dir.path().join("titles").display().to_string(),
            "--public-url".into(),
            origin_url.clone(),
            "--tracker".into(),
            tracker_url.clone(),
            "--seed-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--seed-upload-bps".into(),
            seed.to_string(),
        ],
        &dir.path().join("origin.log"),
    ));
    wait_up(&format!("{origin_url}/catalog")).await;
    let mut urls = Vec::new();
    for i in 0..gateways {
        let port = free_port();
        let region = if i % 2 == 0 { "north" } else { "south" };
        procs.push(spawn(
            &[
                "peer".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--bt-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--origin".into(),
                origin_url.clone(),
                "--tracker".into(),
                tracker_url.clone(),
                "--region".into(),
                region.into(),
                "--cache".into(),
                dir.path().join(format!("gw{i}")).display().to_string(),
                "--upload-bps".into(),
                up.to_string(),
                "--download-bps".into(),
                down.to_string(),
                "--deadline-ms".into(),
                "2000".into(),
                "--no-prefetch".into(),
            ],
            &dir.path().join(format!("gw{i}.log")),
        ));
        let url = format!("http://127.0.0.1:{port}");
        wait_up(&format!("{url}/metrics")).await;
        urls.push(url);
    }

    // The swarm: staggered starts.
    let started = Instant::now();
    let mut plays = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        tokio::time::sleep_until((started + stagger * i as u32).into()).await;
        plays.push(tokio::spawn(play(
            format!("{url}/watch/film.mp4"),
            len,
            bitrate,
        )));
    }
    let mut swarm = Vec::new();
    for p in plays {
        swarm.push(p.await.expect("a player"));
    }
    let swarm_time = started.elapsed();
    let mut total = Metrics::default();
    for url in &urls {
        let m: Metrics = reqwest::get(format!("{url}/metrics"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total.origin_http_bytes += m.origin_http_bytes;
        total.origin_seed_bytes += m.origin_seed_bytes;
        total.same_region_bytes += m.same_region_bytes;
        total.other_region_bytes += m.other_region_bytes;
        total.unknown_peer_bytes += m.unknown_peer_bytes;
        total.late_reads += m.late_reads;
    }
    let origin = total.origin_http_bytes + total.origin_seed_bytes;
    let peers = total.same_region_bytes + total.other_region_bytes + total.unknown_peer_bytes;
    let all = origin + peers;
    // What the players needed: what the origin alone would have sent.
    let needed = gateways as u64 * len;

    // The baseline: the same players, the same staggering, from the origin alone.
    let started = Instant::now();
    let mut plays = Vec::new();
    for i in 0..gateways {
        tokio::time::sleep_until((started + stagger * i as u32).into()).await;
        plays.push(tokio::spawn(play(
            format!("{origin_url}/titles/film.mp4"),
            len,
            bitrate,
        )));
    }
    let mut alone = Vec::new();
    for p in plays {
        alone.push(p.await.expect("a player"));
    }

    if quick {
        println!("vod swarm bench: QUICK mode (SHG_BENCH_QUICK=1): few gateways, a short title; the figures are not comparable");
    }
    println!(
        "vod swarm: {gateways} gateways in 2 regions, a {:.1} MiB title at {:.1} Mbit/s, starts {:.1} s apart; peers capped at {:.0} Mbit/s down, {:.0} Mbit/s up; the origin's seed at {:.1} Mbit/s",
        len as f64 / 1048576.0,
        bitrate * 8.0 / 1e6,
        stagger.as_secs_f64(),
        down as f64 * 8.0 / 1e6,
        up as f64 * 8.0 / 1e6,
        seed as f64 * 8.0 / 1e6
    );
    println!(
        "  origin's bytes against the origin alone  {:>6.1} %  ({:.1} of {:.1} MiB the players needed)",
        100.0 * origin as f64 / needed as f64,
        origin as f64 / 1048576.0,
        needed as f64 / 1048576.0,
    );
    println!(
        "  bytes not served by the origin   {:>6.1} %  ({:.1} of {:.1} MiB fetched; origin: {:.1} MiB over HTTP in {} late reads, {:.1} MiB from its seed)",
        100.0 * peers as f64 / all.max(1) as f64,
        peers as f64 / 1048576.0,
        all as f64 / 1048576.0,
        total.origin_http_bytes as f64 / 1048576.0,
        total.late_reads,
        total.origin_seed_bytes as f64 / 1048576.0
    );
    println!(
        "  peer bytes from the same region  {:>6.1} %",
        100.0 * total.same_region_bytes as f64
            / (total.same_region_bytes + total.other_region_bytes).max(1) as f64
    );
    println!(
        "  swarm: {} ({:.0} s in all)",
        summary(&swarm),
        swarm_time.as_secs_f64()
    );
    println!(
        "  origin alone: {} (bytes not served by the origin: 0 %)",
        summary(&alone)
    );
    assert!(peers > 0, "no gateway got anything from another");
}
