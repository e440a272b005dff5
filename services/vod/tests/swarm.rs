//! A real swarm on loopback: the `vod` binary as tracker, origin and gateways' peers (each
//! its own process), and Debian's aria2c as a standard BitTorrent client.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vod::peer::Metrics;

const VOD: &str = env!("CARGO_BIN_EXE_vod");

/// A process of the swarm, ended (by its PID) when the test ends, even by a panic.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &Path, label: &str, args: &[String]) -> Proc {
    let log = dir.join(format!("{label}.log"));
    let child = Command::new(VOD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {VOD}: {e}"));
    Proc { child, log }
}

/// A title of `len` bytes that compress badly, the same at every run.
fn title(path: &Path, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

async fn wait_up(url: &str, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(url).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered; its log:\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Swarm {
    dir: tempfile::TempDir,
    tracker_url: String,
    origin_url: String,
    procs: Vec<Proc>,
}

impl Swarm {
    /// A tracker and an origin holding `film.mp4`; with `seed_bps`, the origin also seeds
    /// it over BitTorrent at that rate.
    async fn start(len: usize, seed_bps: Option<u32>) -> (Swarm, Vec<u8>) {
        Swarm::with_titles(&[("film.mp4", len)], seed_bps).await
    }

    /// Like [`Swarm::start`] with several titles; returns the first's bytes.
    async fn with_titles(titles: &[(&str, usize)], seed_bps: Option<u32>) -> (Swarm, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("titles")).unwrap();
        let mut first = Vec::new();
        for (i, (name, len)) in titles.iter().enumerate() {
            let bytes = title(&dir.path().join("titles").join(name), *len);
            if i == 0 {
                first = bytes;
            }
        }
        let data = first;
        let (tp, op) = (free_port(), free_port());
        let tracker_url = format!("http://127.0.0.1:{tp}");
        let origin_url = format!("http://127.0.0.1:{op}");
        let tracker = spawn(
            dir.path(),
            "tracker",
            &[
                "tracker".into(),
                "--listen".into(),
                format!("127.0.0.1:{tp}"),
            ],
        );
        wait_up(&format!("{tracker_url}/peers/{}", "0".repeat(40)), &tracker).await;
        let mut args: Vec<String> = vec![
            "origin".into(),
            "--listen".into(),
            format!("127.0.0.1:{op}"),
            "--titles".into(),
            dir.path().join("titles").display().to_string(),
            "--public-url".into(),
            origin_url.clone(),
            "--tracker".into(),
            tracker_url.clone(),
        ];
        if let Some(bps) = seed_bps {
            args.extend([
                "--seed-listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--seed-upload-bps".into(),
                bps.to_string(),
            ]);
        }
        let origin = spawn(dir.path(), "origin", &args);
        wait_up(&format!("{origin_url}/catalog"), &origin).await;
        let swarm = Swarm {
            dir,
            tracker_url,
            origin_url,
            procs: vec![tracker, origin],
        };
        (swarm, data)
    }

    /// A gateway's peer in `region`; returns its URL.
    async fn peer(&mut self, label: &str, region: &str, extra: &[&str]) -> String {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "peer".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--bt-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--origin".into(),
            self.origin_url.clone(),
            "--tracker".into(),
            self.tracker_url.clone(),
            "--region".into(),
            region.into(),
            "--cache".into(),
            self.dir.path().join(label).display().to_string(),
            "--no-prefetch".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = spawn(self.dir.path(), label, &args);
        let url = format!("http://127.0.0.1:{port}");
        wait_up(&format!("{url}/metrics"), &proc).await;
        self.procs.push(proc);
        url
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {}\n{}", p.log.display(), p.log()))
            .collect()
    }
}

async fn play(url: &str, range: Option<(u64, u64)>) -> (u16, Vec<u8>) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("{url}/watch/film.mp4"));
    if let Some((a, b)) = range {
        req = req.header("range", format!("bytes={a}-{b}"));
    }
    let answer = tokio::time::timeout(Duration::from_secs(120), req.send())
        .await
        .expect("the play started within 120 s")
        .expect("the peer answered");
    let status = answer.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(120), answer.bytes())
        .await
        .expect("the play ended within 120 s")
        .expect("the whole body");
    (status, body.to_vec())
}

async fn metrics(url: &str) -> Metrics {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_play_the_title_from_their_region_first_and_every_byte_matches() {
    let len = 6 << 20;
    // The origin's seed is slow (512 KiB/s): what the gateways play fast comes from each other.
    let (mut swarm, data) = Swarm::start(len, Some(512 << 10)).await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "20000"]).await;
    let (status, got) = play(&a, None).await;
    assert_eq!(status, 200);
    assert!(
        got == data,
        "the first gateway's bytes differ from the title\n{}",
        swarm.logs()
    );

    let b = swarm.peer("b", "north", &["--deadline-ms", "20000"]).await;
    let c = swarm.peer("c", "south", &["--deadline-ms", "20000"]).await;
    let ((sb, got_b), (sc, got_c)) =
        tokio::join!(play(&b, None), play(&c, Some((1_000_000, 1_999_999))));
    assert_eq!((sb, sc), (200, 206));
    assert!(
        got_b == data,
        "b's bytes differ from the title\n{}",
        swarm.logs()
    );
    assert!(
        got_c == data[1_000_000..2_000_000],
        "c's range differs from the title's"
    );

    let mb = metrics(&b).await;
    let from_origin = mb.origin_seed_bytes + mb.origin_http_bytes;
    assert!(
        mb.same_region_bytes > from_origin,
        "b (north, beside a which holds the title) got more from the origin than from its region: {mb:?}\n{}",
        swarm.logs()
    );
    assert_eq!(
        mb.other_region_bytes, 0,
        "b's region had enough peers: {mb:?}"
    );
    let mc = metrics(&c).await;
    assert!(
        mc.other_region_bytes > 0,
        "c, alone in its region, got nothing from the other's gateways: {mc:?}"
    );
    let ma = metrics(&a).await;
    assert!(ma.uploaded_bytes > 0, "a seeded nothing: {ma:?}");
    assert_eq!(ma.titles[0].have_bytes, len as u64);
    assert!(!mb.first_byte_ms.is_empty() && mb.plays == 1, "{mb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_no_peer_delivers_in_time_comes_from_the_origin() {
    let len = 1 << 20;
    // No seed at all: only the origin's web seed has the title.
    let (mut swarm, data) = Swarm::start(len, None).await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "200"]).await;
    let (status, got) = play(&a, None).await;
    assert_eq!(status, 200);
    assert!(
        got == data,
        "the bytes differ from the title\n{}",
        swarm.logs()
    );
    let m = metrics(&a).await;
    assert_eq!(m.origin_http_bytes, len as u64, "{m:?}");
    assert_eq!(m.late_reads, 4, "one late read per 256 KiB piece: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_client_fetches_a_title_from_the_gateways_alone() {
    if Command::new("aria2c").arg("--version").output().is_err() {
        panic!("aria2c is missing; scripts/setup.sh installs it (apt-get install aria2)");
    }
    let (mut swarm, data) = Swarm::start(2 << 20, Some(1 << 20)).await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "20000"]).await;
    let (_, got) = play(&a, None).await;
    assert!(got == data);
    // The torrent as any client gets it; then the origin goes, seed and web seed both.
    let torrent = reqwest::get(format!("{}/torrents/film.mp4", swarm.origin_url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let torrent_path = swarm.dir.path().join("film.torrent");
    std::fs::write(&torrent_path, &torrent).unwrap();
    drop(swarm.procs.remove(1));
    let out = swarm.dir.path().join("aria2");
    let run = Command::new("aria2c")
        .arg("--dir")
        .arg(&out)
        .args([
            "--seed-time=0",
            "--enable-dht=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--listen-port=16900-16999",
            "--bt-stop-timeout=60",
            "--summary-interval=0",
            "--console-log-level=warn",
        ])
        .arg(&torrent_path)
        .output()
        .expect("run aria2c");
    assert!(
        run.status.success(),
        "aria2c failed: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        swarm.logs()
    );
    let fetched = std::fs::read(out.join("film.mp4")).expect("aria2c's file");
    assert!(fetched == data, "aria2c's file differs from the title");
    let m = metrics(&a).await;
    assert!(
        m.uploaded_bytes >= data.len() as u64,
        "a did not serve aria2c: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_titles_within_its_size_and_evicts_the_least_recently_watched() {
    let mib = 1 << 20;
    let (mut swarm, _) = Swarm::with_titles(
        &[
            ("a.mp4", mib),
            ("b.mp4", mib),
            ("c.mp4", mib),
            ("big.mp4", 3 * mib),
        ],
        Some(4 << 20),
    )
    .await;
    let cache_bytes = (2 * mib + mib / 2).to_string();
    let p = swarm
        .peer(
            "p",
            "north",
            &["--cache-bytes", &cache_bytes, "--deadline-ms", "20000"],
        )
        .await;
    let client = reqwest::Client::new();
    for name in ["a.mp4", "b.mp4", "a.mp4", "c.mp4"] {
        let body = client
            .get(format!("{p}/watch/{name}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len(), mib, "{name}");
    }
    let mut kept: Vec<String> = metrics(&p)
        .await
        .titles
        .into_iter()
        .map(|t| t.name)
        .collect();
    kept.sort();
    assert_eq!(kept, ["a.mp4", "c.mp4"], "b was the least recently watched");
    let cache = swarm.dir.path().join("p");
    assert!(
        !cache.join("b.mp4").exists(),
        "b's file stayed in the cache"
    );
    assert!(cache.join("a.mp4").exists() && cache.join("c.mp4").exists());

    let too_big = client
        .get(format!("{p}/watch/big.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status().as_u16(), 507);
    let why = too_big.text().await.unwrap();
    assert!(
        why.contains("big.mp4") && why.contains(&cache_bytes),
        "{why}"
    );
    let missing = client
        .get(format!("{p}/watch/nothing.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let bad = client
        .get(format!("{p}/watch/..%2Fetc"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 404);
}
