//! `vod peer`: what the package runs on each gateway.
//!
//! The household's player asks `GET /watch/NAME` with `Range`; the peer adds the title's
//! torrent (from the origin) to its BitTorrent session and streams the file as it arrives:
//! librqbit fetches the pieces at the read position first, then the rest in order. A read
//! that no peer answers within the deadline is served from the origin's web seed instead
//! (to the end of that piece), so the player does not stall. Titles stay in the cache (within
//! `--cache-bytes`, the least recently watched evicted first) and are seeded; when idle the
//! peer prefetches the titles the provider lists as popular.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::origin::Title;
use crate::torrent;
use crate::tracker::{PeerView, ORIGIN_REGION};

/// How long the first read of a request waits for peers before the origin serves it.
pub const STARTUP_DEADLINE: Duration = Duration::from_millis(300);

/// When a title's bitrate is known, a read waits for peers until this long before the
/// player would run dry: the time the origin needs to serve a piece, with room to spare.
pub const ORIGIN_MARGIN: Duration = Duration::from_secs(2);

/// What a late read asks of the origin when the player holds little: enough whole pieces
/// to hold this much again (with the title's bitrate; else the rest of the piece).
pub const REFILL: Duration = Duration::from_secs(8);

/// What the first read of a request asks of the origin, with the title's bitrate: what a
/// player wants before it shows the first frame, so the picture starts fast.
pub const STARTUP_REFILL: Duration = Duration::from_secs(2);

/// Where the origin's answer to a late read at `pos` ends (inclusive): the end of that
/// piece (of `piece_length` bytes), or further, to whole pieces, until the player would hold [`REFILL`] of picture,
/// `sent` bytes into a request whose first byte left `since_first` ago (`None`: nothing sent
/// yet). Never past `end`.
pub fn refill_end(
    pos: u64,
    end: u64,
    piece_length: u64,
    bitrate: Option<u64>,
    sent: u64,
    since_first: Option<Duration>,
) -> u64 {
    let piece_end = (pos / piece_length + 1) * piece_length - 1;
    let mut last = piece_end;
    if let Some(bitrate) = bitrate.filter(|b| *b > 0) {
        let per_second = bitrate as f64 / 8.0;
        let (played, target) = match since_first {
            Some(d) => (d.as_secs_f64(), REFILL),
            None => (0.0, STARTUP_REFILL),
        };
        let held = sent as f64 / per_second - played;
        let short = ((target.as_secs_f64() - held) * per_second).max(0.0) as u64;
        let want = (pos + short).saturating_sub(1);
        if want > piece_end {
            last = (want / piece_length + 1) * piece_length - 1;
        }
    }
    last.min(end)
}

/// How long a gateway waits for a title's opening from the origin.
const OPENING_WITHIN: Duration = Duration::from_secs(5);

/// How many bytes of a title of `length` a gateway fetches from the origin when the title
/// enters its cache (see `Peer::write_opening`): the whole pieces a first read asks for,
/// [`STARTUP_REFILL`] of picture with the title's `bitrate`, else one piece.
pub fn opening_len(length: u64, piece_length: u64, bitrate: Option<u64>) -> u64 {
    refill_end(0, length - 1, piece_length, bitrate, 0, None) + 1
}

/// How long a read may wait for peers, `sent` bytes into a request whose first byte left
/// `since_first` ago: with the title's `bitrate` (bits/s), until [`ORIGIN_MARGIN`] before the
/// player runs dry (taken to play from its first byte on, which underestimates what it
/// holds); never less than `floor`.
pub fn read_deadline(
    floor: Duration,
    bitrate: Option<u64>,
    sent: u64,
    since_first: Duration,
) -> Duration {
    let Some(bitrate) = bitrate.filter(|b| *b > 0) else {
        return floor;
    };
    let buffered = sent as f64 * 8.0 / bitrate as f64 - since_first.as_secs_f64();
    let wait = buffered - ORIGIN_MARGIN.as_secs_f64();
    if wait > floor.as_secs_f64() {
        Duration::from_secs_f64(wait.min(3600.0))
    } else {
        floor
    }
}

/// How many block requests (16 KiB each) the gateway keeps outstanding with one peer.
/// librqbit's default, 128 (2 MiB), queues half a title behind one 1 Mbit/s uplink: the piece
/// at the playhead then waits behind pieces not needed for a minute, and an idle peer steals
/// the slow ones, so the first uploader's bytes are thrown away. Two pieces keep a link busy
/// and the playhead near the front of every queue.
pub const REQUEST_WINDOW: usize = 8;

/// How many peers a title's swarm connects this gateway with at most (both ways). An uplink
/// of 1 Mbit/s shared by every gateway of the swarm moves each one's pieces so slowly that
/// idle peers steal them, and the bytes already sent are thrown away (librqbit counts them
/// and drops them): with all 20 gateways of the bench connected, peers sent 87 MiB for 67 MiB
/// of pieces; with six each, 67 MiB. The bridge of the origin's answers is one of them.
pub const PEER_LIMIT: usize = 6;

/// How the peer is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The origin's base URL.
    pub origin_url: String,
    /// The tracker's base URL.
    pub tracker_url: String,
    /// This gateway's region (its access network), announced to the tracker; `None`: the
    /// one the tracker places it in from its address.
    pub region: Option<String>,
    /// Where titles are kept.
    pub cache_dir: PathBuf,
    /// How many bytes of titles the cache may hold (the service's storage reservation, less
    /// room for its own files).
    pub cache_bytes: u64,
    /// Where BitTorrent listens.
    pub bt_listen: SocketAddr,
    /// Upload cap to peers, bytes per second (the manifest's upload reservation).
    pub upload_bps: Option<u32>,
    /// Download cap, bytes per second.
    pub download_bps: Option<u32>,
    /// How long a read waits for peers before the origin serves it.
    pub deadline: Duration,
    /// Prefetch popular titles when idle.
    pub prefetch: bool,
}

struct Cached {
    handle: Arc<librqbit::ManagedTorrent>,
    length: u64,
    info_hash: String,
    /// The torrent's pieces: their length and number.
    piece_length: u64,
    piece_count: u32,
    /// Bits per second, when the provider declared it.
    bitrate: Option<u64>,
    last_watched: Instant,
}

/// Where the bytes of the titles came from, and how plays went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    pub region: String,
    /// Bytes the origin served this gateway over HTTP (reads no peer answered in time).
    pub origin_http_bytes: u64,
    /// Of those, bytes the BitTorrent store took from the origin's answers (so that it does
    /// not fetch them again from peers).
    pub bridged_bytes: u64,
    /// Bytes from the origin's BitTorrent seed.
    pub origin_seed_bytes: u64,
    /// Bytes from gateways of this region.
    pub same_region_bytes: u64,
    /// Bytes from gateways of other regions.
    pub other_region_bytes: u64,
    /// Bytes from peers the tracker does not know (standard clients, say).
    pub unknown_peer_bytes: u64,
    /// Bytes this gateway uploaded to peers.
    pub uploaded_bytes: u64,
    /// Requests of the household's players.
    pub plays: u64,
    /// Time to the first byte of each play's first request, ms (the last 100).
    pub first_byte_ms: Vec<u64>,
    /// Reads no peer answered within the deadline (each a fallback on the origin).
    pub late_reads: u64,
    /// Titles in the cache.
    pub titles: Vec<CachedTitle>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CachedTitle {
    pub name: String,
    pub length: u64,
    pub have_bytes: u64,
}

pub struct Peer {
    cfg: PeerConfig,
    /// The region named in the configuration or learnt from the tracker.
    region: std::sync::OnceLock<String>,
    session: Arc<librqbit::Session>,
    bridge: Arc<crate::bridge::Bridge>,
    http: reqwest::Client,
    cached: tokio::sync::Mutex<HashMap<String, Cached>>,
    origin_http_bytes: AtomicU64,
    plays: AtomicU64,
    late_reads: AtomicU64,
    streaming: AtomicUsize,
    first_byte_ms: Mutex<Vec<u64>>,
}

impl Peer {
    /// Starts the BitTorrent session and seeds again what the cache holds.
    pub async fn open(cfg: PeerConfig) -> anyhow::Result<Arc<Peer>> {
        std::fs::create_dir_all(cfg.cache_dir.join(".torrents")).map_err(|e| {
            anyhow::anyhow!("cannot create the cache {}: {e}", cfg.cache_dir.display())
        })?;
        let session = crate::session(
            &cfg.cache_dir,
            cfg.bt_listen,
            cfg.upload_bps,
            cfg.download_bps,
        )
        .await?;
        let peer = Arc::new(Peer {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            region: match &cfg.region {
                Some(r) => std::sync::OnceLock::from(r.clone()),
                None => std::sync::OnceLock::new(),
            },
            bridge: crate::bridge::Bridge::new(cfg.bt_listen),
            cfg,
            session,
            cached: tokio::sync::Mutex::default(),
            origin_http_bytes: AtomicU64::new(0),
            plays: AtomicU64::new(0),
            late_reads: AtomicU64::new(0),
            streaming: AtomicUsize::new(0),
            first_byte_ms: Mutex::default(),
        });
        let kept: Vec<(String, Vec<u8>)> = std::fs::read_dir(peer.cfg.cache_dir.join(".torrents"))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let name = name.strip_suffix(".torrent")?.to_string();
                Some((name, std::fs::read(e.path()).ok()?))
            })
            .collect();
        for (name, bytes) in kept {
            if let Err(e) = peer.add(&name, bytes).await {
                tracing::warn!("cannot seed `{name}` again: {e:#}");
            }
        }
        Ok(peer)
    }

    /// The title `name` in the session, added (its torrent fetched from the origin) if
    /// needed.
    async fn ensure(
        &self,
        name: &str,
    ) -> Result<Arc<librqbit::ManagedTorrent>, (StatusCode, String)> {
        if !torrent::valid_name(name) {
            return Err((
                StatusCode::NOT_FOUND,
                format!("`{name}` is not a title name"),
            ));
        }
        if let Some(c) = self.cached.lock().await.get_mut(name) {
            c.last_watched = Instant::now();
            return Ok(c.handle.clone());
        }
        let url = format!(
            "{}/torrents/{name}",
            self.cfg.origin_url.trim_end_matches('/')
        );
        let bad_gateway = |e: String| (StatusCode::BAD_GATEWAY, e);
        let answer = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| bad_gateway(format!("the origin cannot be reached ({url}): {e}")))?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Err((
                StatusCode::NOT_FOUND,
                format!("the provider has no title `{name}`"),
            ));
        }
        if !answer.status().is_success() {
            return Err(bad_gateway(format!(
                "the origin answered {} for {url}",
                answer.status()
            )));
        }
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| bad_gateway(format!("the origin's answer broke off: {e}")))?;
        self.add(name, bytes.to_vec())
            .await
            .map_err(|e| (StatusCode::INSUFFICIENT_STORAGE, format!("{e:#}")))
    }

    /// Adds a title's torrent to the session, making room in the cache first.
    async fn add(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<Arc<librqbit::ManagedTorrent>> {
        let meta = crate::bencode::decode(&bytes)
            .map_err(|e| anyhow::anyhow!("the torrent of `{name}` is malformed: {e}"))?;
        let info = meta
            .get("info")
            .ok_or_else(|| anyhow::anyhow!("the torrent of `{name}` has no info"))?;
        if info.get("name").and_then(|n| n.as_bytes()) != Some(name.as_bytes()) {
            anyhow::bail!("the torrent fetched for `{name}` is of another title");
        }
        let length = info
            .get("length")
            .and_then(|l| l.as_int())
            .filter(|l| *l > 0)
            .ok_or_else(|| anyhow::anyhow!("the torrent of `{name}` is not of one file"))?
            as u64;
        let piece_length = info
            .get("piece length")
            .and_then(|l| l.as_int())
            .filter(|l| *l > 0)
            .ok_or_else(|| anyhow::anyhow!("the torrent of `{name}` has no piece length"))?
            as u64;
        let piece_count = u32::try_from(length.div_ceil(piece_length))
            .map_err(|_| anyhow::anyhow!("the torrent of `{name}` has too many pieces"))?;
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.get(name) {
            return Ok(c.handle.clone());
        }
        self.make_room(&mut cached, name, length).await?;
        // A configured region is announced in the URL (the torrent is private: its clients
        // use its own tracker only, so the torrent is given that URL); otherwise the
        // torrent's own URL lets the tracker place this gateway by its address.
        let bitrate = meta
            .get(torrent::BITRATE_KEY)
            .and_then(|b| b.as_int())
            .and_then(|b| u64::try_from(b).ok())
            .filter(|b| *b > 0);
        let bytes = match &self.cfg.region {
            Some(r) => {
                let url = format!(
                    "{}/announce/{r}",
                    self.cfg.tracker_url.trim_end_matches('/')
                );
                torrent::with_announce(&bytes, &url).ok_or_else(|| {
                    anyhow::anyhow!("the torrent of `{name}` is not in canonical form")
                })?
            }
            None => bytes,
        };
        let file = self.cfg.cache_dir.join(name);
        if !file.exists() {
            self.write_opening(name, &file, length, piece_length, bitrate)
                .await;
        }
        let added = self
            .session
            .add_torrent(
                librqbit::AddTorrent::TorrentFileBytes(bytes.clone().into()),
                Some(librqbit::AddTorrentOptions {
                    overwrite: true,
                    peer_limit: Some(PEER_LIMIT),
                    peer_opts: Some(librqbit::PeerConnectionOptions {
                        max_request_window: Some(REQUEST_WINDOW),
                        ..Default::default()
                    }),
                    output_folder: Some(self.cfg.cache_dir.display().to_string()),
                    ..Default::default()
                }),
            )
            .await?;
        let handle = added
            .into_handle()
            .ok_or_else(|| anyhow::anyhow!("the session did not keep `{name}`"))?;
        std::fs::write(
            self.cfg
                .cache_dir
                .join(".torrents")
                .join(format!("{name}.torrent")),
            &bytes,
        )?;
        cached.insert(
            name.to_string(),
            Cached {
                handle: handle.clone(),
                length,
                info_hash: handle.info_hash().as_string(),
                piece_length,
                piece_count,
                bitrate,
                last_watched: Instant::now(),
            },
        );
        Ok(handle)
    }

    /// Writes the opening of a title new to the cache (the pieces a player wants before its
    /// first frame, [`STARTUP_REFILL`]; one piece without a bitrate), fetched from the origin,
    /// where the BitTorrent session will find and check it.
    ///
    /// A gateway that holds nothing sends its peers no bitfield, and librqbit then takes the
    /// peer for one that has every piece: it never tells it of a piece it gets later. A new
    /// gateway saw only what its peers held when it connected, drained that, and fell back on
    /// the origin for the rest of the title while those peers' uplinks idled. Holding one
    /// piece is enough to be told of the others. A first play reads these very bytes, so they
    /// cost the origin nothing it would not have served anyway. Best effort: without them
    /// the title still plays.
    async fn write_opening(
        &self,
        name: &str,
        file: &std::path::Path,
        length: u64,
        piece_length: u64,
        bitrate: Option<u64>,
    ) {
        let last = opening_len(length, piece_length, bitrate) - 1;
        // Under the cache's lock: an origin that stalls must not hold every play up.
        let written = tokio::time::timeout(OPENING_WITHIN, self.fetch_from_origin(name, 0, last))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {OPENING_WITHIN:?}")))
            .and_then(|body| Ok(std::fs::write(file, &body)?));
        if let Err(e) = written {
            tracing::info!("`{name}`: no opening from the origin ({e:#}); peers will send it");
        }
    }

    /// Evicts the least recently watched titles until `length` more bytes fit.
    async fn make_room(
        &self,
        cached: &mut HashMap<String, Cached>,
        name: &str,
        length: u64,
    ) -> anyhow::Result<()> {
        if length > self.cfg.cache_bytes {
            anyhow::bail!(
                "`{name}` needs {length} bytes and the cache holds {}; the provider raises the service's storage reservation",
                self.cfg.cache_bytes
            );
        }
        loop {
            let used: u64 = cached.values().map(|c| c.length).sum();
            if used + length <= self.cfg.cache_bytes {
                return Ok(());
            }
            let Some(oldest) = cached
                .iter()
                .min_by_key(|(_, c)| c.last_watched)
                .map(|(n, _)| n.clone())
            else {
                return Ok(());
            };
            let gone = cached.remove(&oldest).expect("the title just found");
            self.bridge.forget(gone.handle.info_hash().0);
            tracing::info!(
                "evicting `{oldest}` ({} bytes) to make room for `{name}`",
                gone.length
            );
            self.session
                .delete(librqbit::api::TorrentIdOrHash::Id(gone.handle.id()), true)
                .await?;
            let _ = std::fs::remove_file(
                self.cfg
                    .cache_dir
                    .join(".torrents")
                    .join(format!("{oldest}.torrent")),
            );
        }
    }

    /// Fetches `start..=end` of `name` from the origin.
    async fn fetch_from_origin(
        &self,
        name: &str,
        start: u64,
        end: u64,
    ) -> anyhow::Result<bytes::Bytes> {
        let url = format!(
            "{}/titles/{name}",
            self.cfg.origin_url.trim_end_matches('/')
        );
        let answer = self
            .http
            .get(&url)
            .header(header::RANGE, format!("bytes={start}-{end}"))
            .send()
            .await?;
        if answer.status() != StatusCode::PARTIAL_CONTENT {
            anyhow::bail!(
                "the origin answered {} to a range of {url}",
                answer.status()
            );
        }
        let body = answer.bytes().await?;
        if body.len() as u64 != end - start + 1 {
            anyhow::bail!(
                "the origin sent {} bytes for a range of {}",
                body.len(),
                end - start + 1
            );
        }
        self.origin_http_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }

    /// Fetches `pos..=last` of `name` from the origin for the player, asking for the whole
    /// pieces around it so that the BitTorrent store can take them (through the bridge) and
    /// never fetches them again from peers.
    async fn fetch_pieces(
        &self,
        name: &str,
        pieces: &Pieces,
        pos: u64,
        last: u64,
        len: u64,
    ) -> anyhow::Result<bytes::Bytes> {
        let from = pos - pos % pieces.length;
        let to = ((last / pieces.length + 1) * pieces.length).min(len) - 1;
        let body = self.fetch_from_origin(name, from, to).await?;
        for (i, at) in (from..=to).step_by(pieces.length as usize).enumerate() {
            let piece = body.slice(
                (at - from) as usize..((at - from + pieces.length).min(to - from + 1)) as usize,
            );
            let index = (from / pieces.length) as u32 + i as u32;
            self.bridge
                .offer(pieces.info_hash, pieces.count, index, piece);
        }
        Ok(body.slice((pos - from) as usize..=(last - from) as usize))
    }

    /// The peers of each swarm and their regions, as the tracker knows them.
    async fn regions(&self, info_hash: &str) -> Vec<PeerView> {
        let url = format!(
            "{}/peers/{info_hash}",
            self.cfg.tracker_url.trim_end_matches('/')
        );
        match self.http.get(&url).send().await {
            Ok(a) => a.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// This gateway's region: configured, or asked of the tracker (once it answers).
    async fn region(&self) -> String {
        if let Some(r) = self.region.get() {
            return r.clone();
        }
        let url = format!("{}/region", self.cfg.tracker_url.trim_end_matches('/'));
        let asked: Option<serde_json::Value> = match self.http.get(&url).send().await {
            Ok(a) => a.json().await.ok(),
            Err(_) => None,
        };
        match asked.as_ref().and_then(|v| v["region"].as_str()) {
            Some(r) => self.region.get_or_init(|| r.to_string()).clone(),
            None => "unknown".into(),
        }
    }

    pub async fn metrics(&self) -> Metrics {
        let region = self.region().await;
        let mut m = Metrics {
            region: region.clone(),
            origin_http_bytes: self.origin_http_bytes.load(Ordering::Relaxed),
            bridged_bytes: self.bridge.taken_bytes(),
            plays: self.plays.load(Ordering::Relaxed),
            late_reads: self.late_reads.load(Ordering::Relaxed),
            first_byte_ms: self
                .first_byte_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..Default::default()
        };
        let titles: Vec<(String, Arc<librqbit::ManagedTorrent>, String, u64)> = self
            .cached
            .lock()
            .await
            .iter()
            .map(|(n, c)| (n.clone(), c.handle.clone(), c.info_hash.clone(), c.length))
            .collect();
        for (name, handle, info_hash, length) in titles {
            let stats = handle.stats();
            m.titles.push(CachedTitle {
                name,
                length,
                have_bytes: stats.progress_bytes,
            });
            m.uploaded_bytes += stats.uploaded_bytes;
            let Some(live) = handle.live() else { continue };
            let known = self.regions(&info_hash).await;
            // Every peer met, not only those still connected (seeds part once both are
            // complete). librqbit does not export the filter's type; its serde form is stable.
            let all = serde_json::from_str(r#"{"state":"all"}"#).unwrap_or_default();
            let snapshot = live.per_peer_stats_snapshot(all);
            for (addr, peer) in snapshot.peers {
                if addr
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| self.bridge.is_bridge(&a))
                {
                    // The origin's answers, counted as such when they came.
                    continue;
                }
                let fetched = peer.counters.fetched_bytes;
                match region_of(&known, &addr) {
                    Some(r) if r == ORIGIN_REGION => m.origin_seed_bytes += fetched,
                    Some(r) if r == region => m.same_region_bytes += fetched,
                    Some(_) => m.other_region_bytes += fetched,
                    None => m.unknown_peer_bytes += fetched,
                }
            }
        }
        m
    }

    /// Prefetches the popular titles not cached yet, while nobody watches.
    async fn prefetch_once(&self) {
        if self.streaming.load(Ordering::Relaxed) > 0 {
            return;
        }
        let url = format!("{}/catalog", self.cfg.origin_url.trim_end_matches('/'));
        let Ok(answer) = self.http.get(&url).send().await else {
            return;
        };
        let Ok(catalog) = answer.json::<Vec<Title>>().await else {
            return;
        };
        for title in catalog.into_iter().filter(|t| t.popular) {
            if self.cached.lock().await.contains_key(&title.name) {
                continue;
            }
            if let Err((_, e)) = self.ensure(&title.name).await {
                tracing::info!("not prefetching `{}`: {e}", title.name);
            }
        }
    }
}

/// What the bridge needs to know of a title's torrent.
struct Pieces {
    info_hash: [u8; 20],
    length: u64,
    count: u32,
}

/// The region of a peer known by `addr` (`IP:PORT`): the tracker's entry with that address,
/// else the one with that IP if only one region has it (an incoming connection comes from
/// another port than the one announced).
fn region_of(known: &[PeerView], addr: &str) -> Option<String> {
    if let Some(p) = known.iter().find(|p| p.addr == addr) {
        return Some(p.region.clone());
    }
    let ip = addr.rsplit_once(':').map(|(ip, _)| ip)?;
    let mut regions = known
        .iter()
        .filter(|p| p.addr.rsplit_once(':').map(|(i, _)| i) == Some(ip))
        .map(|p| p.region.as_str());
    let first = regions.next()?;
    regions.all(|r| r == first).then(|| first.to_string())
}

/// Runs the prefetching every minute, while `peer` lives.
pub fn spawn_prefetch(peer: &Arc<Peer>) {
    if !peer.cfg.prefetch {
        return;
    }
    let weak = Arc::downgrade(peer);
    tokio::spawn(async move {
        loop {
            let Some(peer) = weak.upgrade() else { return };
            peer.prefetch_once().await;
            drop(peer);
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
}

/// The household's and the provider's routes: `/` (a page of the catalog with a player),
/// `/watch/NAME`, `/metrics`.
pub fn router(peer: Arc<Peer>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/watch/{name}", get(watch))
        .route(
            "/metrics",
            get(|State(p): State<Arc<Peer>>| async move { Json(p.metrics().await) }),
        )
        .with_state(peer)
}

async fn page(State(p): State<Arc<Peer>>) -> Response {
    let url = format!("{}/catalog", p.cfg.origin_url.trim_end_matches('/'));
    let catalog: Vec<Title> = match p.http.get(&url).send().await {
        Ok(a) => a.json().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut items = String::new();
    for t in &catalog {
        let name = html_escape(&t.name);
        items.push_str(&format!(
            "<li><a href=\"#\" onclick=\"play('{name}');return false\">{name}</a> ({:.1} MB)</li>",
            t.length as f64 / 1e6
        ));
    }
    if catalog.is_empty() {
        items.push_str("<li>The provider's catalog cannot be reached right now.</li>");
    }
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>streamco</title>\
         <h1>streamco</h1><ul>{items}</ul><video id=player controls width=640></video>\
         <script>function play(n){{const v=document.getElementById('player');\
         v.src='/watch/'+encodeURIComponent(n);v.play();}}</script>"
    ))
    .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

async fn watch(
    State(p): State<Arc<Peer>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let asked = Instant::now();
    let handle = match p.ensure(&name).await {
        Ok(h) => h,
        Err((status, why)) => return (status, why).into_response(),
    };
    let (len, bitrate, pieces) = match p.cached.lock().await.get(&name) {
        Some(c) => (
            c.length,
            c.bitrate,
            Pieces {
                info_hash: c.handle.info_hash().0,
                length: c.piece_length,
                count: c.piece_count,
            },
        ),
        None => {
            return (
                StatusCode::CONFLICT,
                format!("`{name}` was evicted; ask again"),
            )
                .into_response()
        }
    };
    let range = match crate::http::requested_range(&headers, len) {
        Ok(r) => r,
        Err(crate::http::Unsatisfiable) => return crate::http::unsatisfiable(len),
    };
    let (start, end) = range.unwrap_or((0, len - 1));
    let mut stream = match handle.clone().stream(0).await {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot stream `{name}`: {e:#}"),
            )
                .into_response()
        }
    };
    if let Err(e) = stream.seek(std::io::SeekFrom::Start(start)).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot stream `{name}`: {e}"),
        )
            .into_response();
    }
    p.plays.fetch_add(1, Ordering::Relaxed);
    let (status, head) = crate::http::head(range, len, crate::http::content_type(&name));
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let peer = p.clone();
    tokio::spawn(async move {
        peer.streaming.fetch_add(1, Ordering::Relaxed);
        let mut pos = start;
        let mut first = true;
        let mut first_sent = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        while pos <= end {
            let want = ((end - pos + 1) as usize).min(buf.len());
            // The picture starts (or resumes after a seek) fast: the first read waits for peers
            // only briefly before the origin serves it; later ones as long as the player's
            // buffer allows.
            let deadline = if first {
                STARTUP_DEADLINE.min(peer.cfg.deadline)
            } else {
                read_deadline(
                    peer.cfg.deadline,
                    bitrate,
                    pos - start,
                    first_sent.elapsed(),
                )
            };
            let chunk = match tokio::time::timeout(deadline, stream.read(&mut buf[..want])).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => bytes::Bytes::copy_from_slice(&buf[..n]),
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                Err(_) => {
                    // No peer delivered in time: the origin serves to the end of this piece, or
                    // more when the player holds little.
                    peer.late_reads.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        "`{name}` at {pos}: no peer within {deadline:?}, the origin serves it"
                    );
                    let since = (!first).then(|| first_sent.elapsed());
                    let last = refill_end(pos, end, pieces.length, bitrate, pos - start, since);
                    match peer.fetch_pieces(&name, &pieces, pos, last, len).await {
                        Ok(b) => {
                            if stream
                                .seek(std::io::SeekFrom::Start(pos + b.len() as u64))
                                .await
                                .is_err()
                            {
                                let _ = tx
                                    .send(Err(std::io::Error::other(
                                        "the stream cannot skip what the origin sent",
                                    )))
                                    .await;
                                break;
                            }
                            b
                        }
                        Err(e) => {
                            tracing::warn!(
                                "`{name}` at {pos}: no peer in time and the origin failed: {e:#}"
                            );
                            continue;
                        }
                    }
                }
            };
            if first {
                first = false;
                first_sent = Instant::now();
                let mut fb = peer.first_byte_ms.lock().unwrap_or_else(|p| p.into_inner());
                fb.push(asked.elapsed().as_millis() as u64);
                let excess = fb.len().saturating_sub(100);
                fb.drain(..excess);
            }
            pos += chunk.len() as u64;
            if tx.send(Ok(chunk)).await.is_err() {
                break;
            }
        }
        peer.streaming.fetch_sub(1, Ordering::Relaxed);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (status, head, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_waits_for_peers_as_long_as_the_players_buffer_allows() {
        let floor = Duration::from_millis(1500);
        // Unknown bitrate: the configured deadline.
        assert_eq!(read_deadline(floor, None, 10 << 20, Duration::ZERO), floor);
        // 1 Mbit/s; 2.5 MB sent (20 s of picture) 5 s after the first byte: 15 s buffered,
        // so the read may wait 13 s.
        let wait = read_deadline(floor, Some(1_000_000), 2_500_000, Duration::from_secs(5));
        assert!((wait.as_secs_f64() - 13.0).abs() < 1e-6, "{wait:?}");
        // A player about to run dry (or paused for long): the configured deadline.
        let dry = read_deadline(floor, Some(1_000_000), 2_500_000, Duration::from_secs(19));
        assert_eq!(dry, floor);
        let paused = read_deadline(floor, Some(1_000_000), 2_500_000, Duration::from_secs(600));
        assert_eq!(paused, floor);
    }

    #[test]
    fn a_late_read_refills_the_players_buffer_in_whole_pieces() {
        let p = crate::torrent::PIECE_LENGTH;
        // Unknown bitrate: the rest of the piece.
        assert_eq!(refill_end(10, 100 * p, p, None, 0, None), p - 1);
        // 0.5 Mbit/s (62,500 B/s), nothing sent: the first read asks for 2 s (125,000
        // bytes), rounded up to whole pieces; a later one, holding 1 s, for 8 s.
        let first = refill_end(0, 100 * p, p, Some(500_000), 0, None);
        assert_eq!(first, 125_000u64.div_ceil(p) * p - 1);
        let low = refill_end(0, 100 * p, p, Some(500_000), 62_500, Some(Duration::ZERO));
        assert_eq!(low, 437_500u64.div_ceil(p) * p - 1);
        // Holding plenty: only the rest of the piece.
        let full = refill_end(
            5 * p,
            100 * p,
            p,
            Some(500_000),
            1_000_000,
            Some(Duration::from_secs(2)),
        );
        assert_eq!(full, 6 * p - 1);
        // Never past the end of the request.
        assert_eq!(refill_end(0, 1000, p, Some(500_000), 0, None), 1000);
    }
}
