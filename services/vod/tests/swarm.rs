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

use testdata::free_port;

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
    let data = testdata::scrambled(len);
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
        Swarm::with_origin_args(titles, seed_bps, &[]).await
    }

    /// Like [`Swarm::with_titles`], the origin also given `origin_args`.
    async fn with_origin_args(
        titles: &[(&str, usize)],
        seed_bps: Option<u32>,
        origin_args: &[&str],
    ) -> (Swarm, Vec<u8>) {
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
        args.extend(origin_args.iter().map(|a| a.to_string()));
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

    /// Replaces the origin by one that is a web seed only (same titles, same torrents).
    async fn origin_without_seed(&mut self) {
        let old = &mut self.procs[1].child;
        let _ = old.kill();
        let _ = old.wait();
        let port = self.origin_url.rsplit(':').next().unwrap().to_string();
        let args: Vec<String> = vec![
            "origin".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--titles".into(),
            self.dir.path().join("titles").display().to_string(),
            "--public-url".into(),
            self.origin_url.clone(),
            "--tracker".into(),
            self.tracker_url.clone(),
        ];
        self.procs[1] = spawn(self.dir.path(), "origin-2", &args);
        wait_up(&format!("{}/catalog", self.origin_url), &self.procs[1]).await;
    }

    /// A gateway's peer in `region` that does not prefetch; returns its URL.
    async fn peer(&mut self, label: &str, region: &str, extra: &[&str]) -> String {
        self.peer_prefetching(label, region, extra, false).await
    }

    /// A gateway's peer in `region`, prefetching the popular titles if `prefetch`.
    async fn peer_prefetching(
        &mut self,
        label: &str,
        region: &str,
        extra: &[&str],
        prefetch: bool,
    ) -> String {
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
        ];
        if !prefetch {
            args.push("--no-prefetch".into());
        }
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

/// What a gateway fetches from the origin when a title of `len` bytes enters its cache (the
/// tests' titles have no bitrate: one piece).
fn opening(len: usize) -> u64 {
    vod::peer::opening_len(len as u64, vod::torrent::PIECE_LENGTH, None)
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
    // The opening came with the title; every later piece cost one late read.
    assert_eq!(
        m.late_reads,
        (len as u64 - opening(len)) / vod::torrent::PIECE_LENGTH,
        "one late read per piece after the opening: {m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_origin_served_a_gateway_enters_its_store_and_its_peers_get_it_there() {
    let len = 1 << 20;
    // No seed: the first gateway gets every piece over HTTP, in late reads.
    let (mut swarm, data) = Swarm::start(len, None).await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "200"]).await;
    let (status, got) = play(&a, None).await;
    assert_eq!(status, 200);
    assert!(got == data, "a's bytes differ from the title");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ma = loop {
        let m = metrics(&a).await;
        if m.titles.first().is_some_and(|t| t.have_bytes == len as u64) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the origin's answers never completed a's store: {m:?}\n{}",
            swarm.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(ma.origin_http_bytes, len as u64, "{ma:?}");
    assert_eq!(ma.bridged_bytes, len as u64 - opening(len), "{ma:?}");
    assert_eq!(
        ma.same_region_bytes + ma.other_region_bytes + ma.unknown_peer_bytes,
        0,
        "the bridge counted as a peer: {ma:?}"
    );

    // b waits for peers as long as it must: a seeds it all after the opening.
    let b = swarm.peer("b", "north", &["--deadline-ms", "30000"]).await;
    let (status, got) = play(&b, None).await;
    assert_eq!(status, 200);
    assert!(got == data, "b's bytes differ from the title");
    let mb = metrics(&b).await;
    assert_eq!(
        mb.origin_http_bytes,
        opening(len),
        "{mb:?}\n{}",
        swarm.logs()
    );
    assert!(mb.same_region_bytes >= len as u64 - opening(len), "{mb:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_joins_a_peer_still_downloading_is_told_of_every_piece_it_gets_later() {
    let len = 1 << 20;
    // A slow seed (128 KiB/s): a holds about a quarter of the title when b joins, and b
    // (whose region has a, so it is not given the seed) can get the rest only from a, as a
    // gets it. librqbit tells a peer of new pieces only once it knows what that peer holds:
    // a gateway that joined with nothing was never told, and fell back on the origin.
    let (mut swarm, data) = Swarm::start(len, Some(128 << 10)).await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "60000"]).await;
    let playing = tokio::spawn({
        let a = a.clone();
        async move { play(&a, None).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // b waits for each piece up to 8 s: a gets two a second, and librqbit looks again for
    // pieces to ask a peer for at least every 5 s.
    let b = swarm.peer("b", "north", &["--deadline-ms", "8000"]).await;
    let (status, got) = play(&b, None).await;
    assert_eq!(status, 200);
    assert!(got == data, "b's bytes differ from the title");
    assert!(
        playing.await.unwrap().1 == data,
        "a's bytes differ from the title"
    );
    let mb = metrics(&b).await;
    assert_eq!(
        (mb.origin_http_bytes, mb.late_reads, mb.origin_seed_bytes),
        (opening(len), 0, 0),
        "b got more than its opening from the origin: {mb:?}\n{}",
        swarm.logs()
    );
    assert_eq!(mb.same_region_bytes, len as u64 - opening(len), "{mb:?}");
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

/// What a hostile peer does when a gateway asks it for a block.
#[derive(Clone, Copy, PartialEq)]
enum Hostility {
    /// Answers every request with bytes that are not the title's.
    Corrupts,
    /// Claims every piece and never sends one.
    Lies,
}

/// What the hostile peer saw.
#[derive(Default, Debug)]
struct Seen {
    connections: usize,
    requests: usize,
    blocks_sent: usize,
    /// Connections the gateway closed after it had been sent at least one block.
    closed_after_blocks: usize,
}

/// A BitTorrent peer written here against the wire protocol (BEP 3), that announces itself
/// to the tracker in `region` as a seed of `info_hash` and then misbehaves.
struct HostilePeer {
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    port: u16,
}

impl HostilePeer {
    fn start(info_hash: [u8; 20], pieces: usize, hostility: Hostility) -> HostilePeer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = shared.clone();
                std::thread::spawn(move || {
                    let _ = Self::serve(stream, info_hash, pieces, hostility, &seen);
                });
            }
        });
        HostilePeer { seen, port }
    }

    fn serve(
        mut stream: std::net::TcpStream,
        info_hash: [u8; 20],
        pieces: usize,
        hostility: Hostility,
        seen: &std::sync::Mutex<Seen>,
    ) -> std::io::Result<()> {
        use std::io::{Read, Write};
        seen.lock().unwrap().connections += 1;
        let mut hello = [0u8; 68];
        stream.read_exact(&mut hello)?;
        assert_eq!(&hello[1..20], b"BitTorrent protocol");
        assert_eq!(
            hello[28..48],
            info_hash,
            "the gateway asked for another torrent"
        );
        let mut answer = Vec::from(&hello[..48]);
        answer[20..28].fill(0); // no extensions
        answer.extend_from_slice(b"-XX0001-hostile-peer");
        stream.write_all(&answer)?;
        // Every piece claimed, then unchoked.
        let mut bitfield = vec![0u8; pieces.div_ceil(8)];
        for i in 0..pieces {
            bitfield[i / 8] |= 0x80 >> (i % 8);
        }
        let mut msg = ((bitfield.len() + 1) as u32).to_be_bytes().to_vec();
        msg.push(5);
        msg.extend_from_slice(&bitfield);
        msg.extend_from_slice(&[0, 0, 0, 1, 1]);
        stream.write_all(&msg)?;
        let mut sent = 0;
        loop {
            let mut len = [0u8; 4];
            if stream.read_exact(&mut len).is_err() {
                if sent > 0 {
                    seen.lock().unwrap().closed_after_blocks += 1;
                }
                return Ok(());
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            stream.read_exact(&mut body)?;
            if body.first() != Some(&6) || body.len() != 13 {
                continue;
            }
            seen.lock().unwrap().requests += 1;
            if hostility == Hostility::Lies {
                continue;
            }
            let length = u32::from_be_bytes(body[9..13].try_into().unwrap()) as usize;
            let mut piece = ((9 + length) as u32).to_be_bytes().to_vec();
            piece.push(7);
            piece.extend_from_slice(&body[1..9]);
            piece.resize(piece.len() + length, 0xa5);
            if stream.write_all(&piece).is_err() {
                if sent > 0 {
                    seen.lock().unwrap().closed_after_blocks += 1;
                }
                return Ok(());
            }
            sent += 1;
            seen.lock().unwrap().blocks_sent += 1;
        }
    }

    /// Announces this peer to the tracker as a seed in `region`.
    async fn announce(&self, tracker: &str, region: &str, info_hash: [u8; 20]) {
        let escaped: String = info_hash.iter().map(|b| format!("%{b:02X}")).collect();
        let url = format!(
            "{tracker}/announce/{region}?info_hash={escaped}&peer_id=-XX0001-hostile-peer&port={}&uploaded=0&downloaded=0&left=0&compact=1&event=started",
            self.port
        );
        let answer = reqwest::get(&url).await.unwrap();
        assert!(
            answer.status().is_success(),
            "the tracker refused the announce"
        );
    }
}

async fn film_info_hash(origin: &str) -> [u8; 20] {
    let catalog: serde_json::Value = reqwest::get(format!("{origin}/catalog"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles = catalog.as_array().expect("the catalog is a list");
    let film = titles
        .iter()
        .find(|t| t["name"] == "film.mp4")
        .expect("film.mp4 in the catalog");
    hex::decode(film["info_hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_corrupted_pieces_is_refused_by_hash_and_dropped() {
    let len = 1 << 20;
    // No honest seed: the only peer corrupts, the origin's web seed holds the title.
    let (mut swarm, data) = Swarm::start(len, None).await;
    let info_hash = film_info_hash(&swarm.origin_url).await;
    let pieces = len / vod::torrent::PIECE_LENGTH as usize;
    let hostile = HostilePeer::start(info_hash, pieces, Hostility::Corrupts);
    hostile
        .announce(&swarm.tracker_url, "north", info_hash)
        .await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "1000"]).await;
    let (status, got) = play(&a, None).await;
    assert_eq!(status, 200);
    assert!(
        got == data,
        "corrupted bytes reached the player\n{}",
        swarm.logs()
    );
    let seen = std::mem::take(&mut *hostile.seen.lock().unwrap());
    assert!(
        seen.blocks_sent > 0,
        "the gateway never asked the hostile peer for a block: {seen:?}\n{}",
        swarm.logs()
    );
    assert!(
        seen.closed_after_blocks > 0,
        "the gateway kept the peer that sent it corrupted pieces: {seen:?}"
    );
    let m = metrics(&a).await;
    eprintln!("the corrupting peer saw {seen:?}; the gateway: {m:?}");
    // What the store holds came from the origin (its opening, then its answers through the
    // bridge), none from the peer.
    assert_eq!(
        m.titles[0].have_bytes,
        opening(len) + m.bridged_bytes,
        "a piece from the corrupting peer was kept: {m:?}"
    );
    assert_eq!(m.origin_http_bytes, len as u64, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_announces_pieces_it_does_not_have_costs_only_a_timeout() {
    let len = 1 << 20;
    let (mut swarm, data) = Swarm::start(len, None).await;
    let info_hash = film_info_hash(&swarm.origin_url).await;
    let pieces = len / vod::torrent::PIECE_LENGTH as usize;
    let hostile = HostilePeer::start(info_hash, pieces, Hostility::Lies);
    hostile
        .announce(&swarm.tracker_url, "north", info_hash)
        .await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "500"]).await;
    let (status, got) = play(&a, None).await;
    assert_eq!(status, 200);
    assert!(
        got == data,
        "the bytes differ from the title\n{}",
        swarm.logs()
    );
    let seen = std::mem::take(&mut *hostile.seen.lock().unwrap());
    assert!(
        seen.requests > 0,
        "the gateway never asked the lying peer: {seen:?}\n{}",
        swarm.logs()
    );
    let m = metrics(&a).await;
    eprintln!("the lying peer saw {seen:?}; the gateway: {m:?}");
    assert_eq!(
        m.late_reads,
        pieces as u64 - opening(len) / vod::torrent::PIECE_LENGTH,
        "each piece after the opening should cost one deadline, then come from the origin: {m:?}"
    );
    assert_eq!(m.origin_http_bytes, len as u64, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_mid_transfer_costs_no_stall() {
    let len = 2 << 20;
    let (mut swarm, data) = Swarm::start(len, Some(8 << 20)).await;
    let a = swarm.peer("a", "north", &["--deadline-ms", "20000"]).await;
    assert!(play(&a, None).await.1 == data);
    // From now on only a holds the title over BitTorrent; the origin is a web seed.
    swarm.origin_without_seed().await;
    // b downloads at 512 KiB/s and its player reads at 1 MiB/s, so a leaves (once b's player
    // has a quarter of the title) while b still needs most of it.
    let b = swarm
        .peer(
            "b",
            "north",
            &["--download-bps", "524288", "--deadline-ms", "500"],
        )
        .await;
    let mut answer = reqwest::get(format!("{b}/watch/film.mp4")).await.unwrap();
    let mut got = Vec::new();
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut a_gone = false;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), answer.chunk())
        .await
        .expect("the play went on")
        .expect("the body")
    {
        longest = longest.max(last.elapsed());
        got.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_secs_f64(
            chunk.len() as f64 / (1 << 20) as f64,
        ))
        .await;
        last = Instant::now();
        if !a_gone && got.len() >= len / 4 {
            a_gone = true;
            let a_proc = swarm.procs.remove(2);
            drop(a_proc);
        }
    }
    assert!(
        got == data,
        "b's bytes differ from the title\n{}",
        swarm.logs()
    );
    let m = metrics(&b).await;
    eprintln!("b after a left: longest wait for a chunk {longest:?}; {m:?}");
    assert!(
        m.same_region_bytes > 0,
        "b got nothing from a before it left: {m:?}"
    );
    assert!(
        m.origin_http_bytes > 0,
        "once a left, the rest came from nowhere but the origin: {m:?}"
    );
    // The player never waited much longer than the deadline (0.5 s) and the origin's
    // answer: a player holding a few seconds does not stall.
    assert!(
        longest < Duration::from_secs(2),
        "b's player waited {longest:?} for a chunk once a left\n{}",
        swarm.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_prefetches_the_popular_titles_only() {
    let mib = 1 << 20;
    let (mut swarm, data) = Swarm::with_origin_args(
        &[("film.mp4", mib), ("other.mp4", mib)],
        Some(8 << 20),
        &["--popular", "film.mp4"],
    )
    .await;
    let p = swarm.peer_prefetching("p", "north", &[], true).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics(&p).await;
        if m.titles
            .iter()
            .any(|t| t.name == "film.mp4" && t.have_bytes == mib as u64)
        {
            assert_eq!(m.plays, 0, "nobody watched: {m:?}");
            assert!(
                m.titles.iter().all(|t| t.name == "film.mp4"),
                "only the popular title is prefetched: {m:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "film.mp4 was never prefetched: {m:?}\n{}",
            swarm.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was prefetched is on disk, whole, for the household's first play.
    let cached = std::fs::read(swarm.dir.path().join("p").join("film.mp4")).unwrap();
    assert!(cached == data, "the prefetched file differs from the title");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_seed_sends_each_piece_into_a_region_once() {
    let len = 1 << 20;
    // A seed as fast as a peer, so that a plain one would serve b as much as a does.
    let (mut swarm, data) =
        Swarm::with_origin_args(&[("film.mp4", len)], Some(100 << 20), &["--super-seed"]).await;
    // a is alone in its region: the seed offers it every piece, a few at a time.
    let a = swarm.peer("a", "north", &["--deadline-ms", "30000"]).await;
    let (status, got) = play(&a, None).await;
    assert_eq!(status, 200);
    assert!(got == data, "a's bytes differ from the title");
    let ma = metrics(&a).await;
    assert_eq!(
        ma.origin_seed_bytes,
        len as u64 - opening(len),
        "{ma:?}\n{}",
        swarm.logs()
    );

    // b joins the same region: the seed offers it nothing the region was given, so b gets
    // every piece after its opening from a though the seed holds them all too.
    let b = swarm.peer("b", "north", &["--deadline-ms", "30000"]).await;
    let (status, got) = play(&b, None).await;
    assert_eq!(status, 200);
    assert!(got == data, "b's bytes differ from the title");
    let mb = metrics(&b).await;
    assert_eq!(
        (mb.origin_seed_bytes, mb.origin_http_bytes),
        (0, opening(len)),
        "{mb:?}\n{}",
        swarm.logs()
    );
    assert!(mb.same_region_bytes >= len as u64 - opening(len), "{mb:?}");
    let stats: serde_json::Value = reqwest::get(format!("{}/stats", swarm.origin_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["seed_bytes"], len as u64 - opening(len), "{stats}");
}
