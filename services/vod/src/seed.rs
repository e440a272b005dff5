//! The origin's BitTorrent seed.
//!
//! Plain BEP 3, no extensions: a handshake, a bitfield, `unchoke`, and a `piece` for each
//! request, within one upload cap shared by all connections. Any piece a peer asks for is
//! served. By default the bitfield holds every piece.
//!
//! With super-seeding (after BEP 16; `vod origin --super-seed`) the seed offers each peer
//! only pieces that no peer of its region has had from it lately, a few at a time and the
//! lowest first (a player needs them in order): the first in the bitfield, the next in
//! `have` messages. The region's gateways then trade the pieces among themselves, and the
//! origin sends about one copy of the title per region. A piece the region was given is
//! offered again after [`GIVEN_FOR`], in case the peers that had it left.
//!
//! A peer's region is the one the tracker placed it in (`GET /peers/HASH` of the tracker,
//! by the peer's IP address). A peer the tracker does not know, or knows in several regions
//! at that address, is a region of its own address.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::wire::{self, Message};

/// How many offered pieces a peer may hold not yet asked for: enough that it always finds
/// one when it looks, few enough that the rest of the title goes to its neighbours.
pub const OFFERED_AHEAD: usize = 2;

/// How long an offer a peer has not asked for holds its place among the [`OFFERED_AHEAD`].
pub const OFFER_UNTAKEN: Duration = Duration::from_secs(3);

/// How long a piece counts as given to a region (or promised to one of its peers), after
/// which it may be offered again.
pub const GIVEN_FOR: Duration = Duration::from_secs(60);

/// How often offers are reconsidered (pieces given to a region long ago come back) and a
/// keep-alive is considered.
const TICK: Duration = Duration::from_millis(500);

/// A keep-alive at least this often (librqbit drops a peer silent for 10 s).
const KEEP_ALIVE: Duration = Duration::from_secs(4);

/// How long a peer that connected has to send its handshake.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// How long the tracker has to answer an announce or a lookup of regions.
const TRACKER_WITHIN: Duration = Duration::from_secs(5);

/// Peers connected at once; each costs two tasks and a lookup at the tracker.
const MAX_PEERS: usize = 512;

/// Blocks a peer may have asked for and not yet received (librqbit asks at most 8 here,
/// clients rarely more than a few hundred).
const MAX_QUEUED: usize = 1024;

/// The longest block a request may ask for (clients ask 16 KiB).
const MAX_BLOCK: u32 = 128 << 10;

/// A title the seed serves.
#[derive(Debug, Clone)]
pub struct SeedTitle {
    pub info_hash: [u8; 20],
    pub path: PathBuf,
    pub length: u64,
    pub piece_length: u64,
}

impl SeedTitle {
    fn piece_count(&self) -> u32 {
        self.length.div_ceil(self.piece_length) as u32
    }

    fn piece_len(&self, index: u32) -> u64 {
        let start = index as u64 * self.piece_length;
        self.piece_length.min(self.length.saturating_sub(start))
    }
}

/// What one region had from the seed, per title.
#[derive(Default)]
struct RegionPieces {
    /// Piece → when a peer of the region was sent all of it.
    given: HashMap<u32, Instant>,
    /// Piece → when it was offered to one of the region's peers, not yet taken.
    promised: HashMap<u32, Instant>,
}

/// The BitTorrent seed of the origin's titles.
pub struct Seed {
    titles: HashMap<[u8; 20], SeedTitle>,
    tracker_url: String,
    peer_id: [u8; 20],
    listen_port: u16,
    /// Each piece into a region once (else every piece to every peer).
    super_seed: bool,
    /// (title, region) → what the region had.
    regions: Mutex<HashMap<([u8; 20], String), RegionPieces>>,
    /// The upload cap: when the next byte may go out, and the rate.
    cap: Option<(Mutex<Instant>, f64)>,
    uploaded: AtomicU64,
    /// For the tracker; every request within [`TRACKER_WITHIN`].
    http: reqwest::Client,
}

impl Seed {
    /// A seed of `titles` listening on `listen`, announcing to `tracker_url` (its base URL)
    /// as the origin's region, sending at most `upload_bps` bytes per second in all; with
    /// `super_seed`, each piece into a region once, else every piece to whoever asks.
    pub async fn start(
        titles: Vec<SeedTitle>,
        listen: SocketAddr,
        tracker_url: &str,
        upload_bps: Option<u32>,
        super_seed: bool,
    ) -> anyhow::Result<Arc<Seed>> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for BitTorrent peers on {listen}: {e}"))?;
        let seed = Arc::new(Seed {
            titles: titles.into_iter().map(|t| (t.info_hash, t)).collect(),
            tracker_url: tracker_url.trim_end_matches('/').to_string(),
            peer_id: wire::peer_id(b"-SHGSEED0-"),
            listen_port: listener.local_addr()?.port(),
            super_seed,
            regions: Mutex::default(),
            cap: upload_bps
                .filter(|b| *b > 0)
                .map(|b| (Mutex::new(Instant::now()), b as f64)),
            uploaded: AtomicU64::new(0),
            http: reqwest::Client::builder().timeout(TRACKER_WITHIN).build()?,
        });
        tokio::spawn(seed.clone().accept(listener));
        tokio::spawn(seed.clone().announce());
        Ok(seed)
    }

    /// Bytes of pieces sent to peers.
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_PEERS));
        loop {
            let Ok((stream, from)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Beyond the limit a peer is refused at once (it tries again later, or elsewhere).
            let Ok(slot) = open.clone().try_acquire_owned() else {
                tracing::debug!(peer = %from, "refused: {MAX_PEERS} peers connected already");
                continue;
            };
            let seed = self.clone();
            tokio::spawn(async move {
                if let Err(e) = seed.serve(stream, from).await {
                    tracing::debug!(peer = %from, "seed connection ended: {e}");
                }
                drop(slot);
            });
        }
    }

    /// Tells the tracker, every 30 s, that the origin's seed has every title.
    async fn announce(self: Arc<Self>) {
        let client = &self.http;
        let url = format!(
            "{}/announce/{}",
            self.tracker_url,
            crate::tracker::ORIGIN_REGION
        );
        loop {
            for hash in self.titles.keys() {
                let query = format!(
                    "info_hash={}&peer_id={}&port={}&uploaded=0&downloaded=0&left=0&compact=1",
                    escape(hash),
                    escape(&self.peer_id),
                    self.listen_port
                );
                if let Err(e) = client.get(format!("{url}?{query}")).send().await {
                    tracing::warn!("the seed cannot announce to the tracker: {e}");
                }
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }

    /// The region the tracker placed `ip` in for `info_hash`, or the address itself.
    async fn region_of(&self, info_hash: &[u8; 20], ip: IpAddr) -> String {
        #[derive(serde::Deserialize)]
        struct PeerView {
            addr: String,
            region: String,
        }
        let url = format!("{}/peers/{}", self.tracker_url, hex::encode(info_hash));
        let asked = async { self.http.get(&url).send().await?.json().await };
        let peers: Vec<PeerView> = asked.await.unwrap_or_default();
        // Gateways behind one address (or all on one host) may sit in several regions: the
        // address alone then tells none of them.
        let mut regions: Vec<String> = peers
            .into_iter()
            .filter(|p| p.region != crate::tracker::ORIGIN_REGION)
            .filter(|p| p.addr.parse::<SocketAddr>().is_ok_and(|a| a.ip() == ip))
            .map(|p| p.region)
            .collect();
        regions.sort();
        regions.dedup();
        match <[String; 1]>::try_from(regions) {
            Ok([region]) => region,
            Err(_) => format!("address {ip}"),
        }
    }

    /// One peer: handshake, offers, and the blocks it asks for.
    ///
    /// librqbit looks for a piece to ask for when a request slot frees, and when it finds
    /// none it sleeps for seconds (a `have` does not wake it). So the seed keeps
    /// [`OFFERED_AHEAD`] offered pieces not yet asked for at all, offering the next as soon
    /// as the first block of one is asked for, ahead of the blocks already asked for.
    async fn serve(self: Arc<Self>, stream: TcpStream, from: SocketAddr) -> std::io::Result<()> {
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let mut hello = [0u8; 68];
        tokio::time::timeout(HANDSHAKE_WITHIN, read.read_exact(&mut hello))
            .await
            .map_err(|_| std::io::Error::other("no handshake in time"))??;
        let info_hash = wire::info_hash_of(&hello)
            .ok_or_else(|| std::io::Error::other("not a BitTorrent handshake"))?;
        let Some(title) = self.titles.get(&info_hash).cloned() else {
            return Err(std::io::Error::other("a title this seed does not have"));
        };
        write
            .write_all(&wire::handshake(&info_hash, &self.peer_id))
            .await?;
        // Regions matter to super-seeding only.
        let region = if self.super_seed {
            self.region_of(&info_hash, from.ip()).await
        } else {
            String::new()
        };
        let count = title.piece_count();
        let mut has = vec![false; count as usize];
        // Offered pieces not yet asked for → when they were offered. The first offers go in
        // the bitfield: librqbit looks for pieces as soon as it is unchoked.
        let mut offered: BTreeMap<u32, Instant> = BTreeMap::new();
        let bitfield = if self.super_seed {
            for i in self.offers(&info_hash, &region, &has, &offered) {
                offered.insert(i, Instant::now());
            }
            wire::bitfield(count, offered.keys().copied())
        } else {
            wire::bitfield(count, 0..count)
        };
        write.write_all(&wire::message(5, &bitfield)).await?;
        write.write_all(&wire::message(1, &[])).await?;

        let (events_tx, mut events) = mpsc::channel::<Message>(256);
        let reader = tokio::spawn(read_messages(read, events_tx));
        let out = Arc::new(Outbox::default());
        let writer =
            tokio::spawn(
                self.clone()
                    .write_out(write, out.clone(), title.clone(), region.clone()),
            );
        let mut tick = tokio::time::interval(TICK);
        let ended: std::io::Result<()> = async {
            loop {
                tokio::select! {
                    event = events.recv() => {
                        let Some(event) = event else { return Ok(()) };
                        match event {
                            Message::Have(i) => {
                                if let Some(h) = has.get_mut(i as usize) {
                                    *h = true;
                                }
                            }
                            Message::Bitfield(bits) => {
                                for (i, h) in has.iter_mut().enumerate() {
                                    *h |= wire::has_piece(&bits, i);
                                }
                            }
                            Message::Request(index, begin, length) => {
                                if index >= count
                                    || length == 0
                                    || length > MAX_BLOCK
                                    || begin as u64 + length as u64 > title.piece_len(index)
                                {
                                    return Err(std::io::Error::other(format!(
                                        "a request for piece {index} at {begin} ({length} bytes) outside the title"
                                    )));
                                }
                                offered.remove(&index);
                                if !out.push(Out::Block(index, begin, length)) {
                                    return Err(std::io::Error::other(format!(
                                        "more than {MAX_QUEUED} requests waiting"
                                    )));
                                }
                            }
                            Message::Cancel(index, begin, length) => {
                                out.cancel(index, begin, length);
                            }
                            Message::Other => {}
                        }
                    }
                    _ = tick.tick() => {
                        if writer.is_finished() {
                            return Ok(());
                        }
                        let _ = out.push(Out::KeepAlive);
                    }
                }
                offered.retain(|i, _| !has[*i as usize]);
                if !self.super_seed {
                    continue;
                }
                for i in self.offers(&info_hash, &region, &has, &offered) {
                    offered.insert(i, Instant::now());
                    let _ = out.push(Out::Have(i));
                }
            }
        }
        .await;
        reader.abort();
        writer.abort();
        // What was promised to this peer and not taken goes back to the region.
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = regions.get_mut(&(info_hash, region)) {
            for i in offered.keys() {
                r.promised.remove(i);
            }
        }
        ended
    }

    /// Sends a peer what `out` holds: offers and keep-alives first, then the blocks asked
    /// for, within the upload cap. A piece all of whose bytes went out counts as given to
    /// the peer's region.
    async fn write_out(
        self: Arc<Self>,
        mut write: tokio::net::tcp::OwnedWriteHalf,
        out: Arc<Outbox>,
        title: SeedTitle,
        region: String,
    ) -> std::io::Result<()> {
        let file = std::fs::File::open(&title.path)?;
        let mut sent: HashMap<u32, u64> = HashMap::new();
        let mut last_write = Instant::now();
        loop {
            let next = out.pop();
            let Some(next) = next else {
                out.wake.notified().await;
                continue;
            };
            match next {
                Out::Have(i) => write.write_all(&wire::message(4, &i.to_be_bytes())).await?,
                Out::KeepAlive => {
                    if last_write.elapsed() < KEEP_ALIVE {
                        continue;
                    }
                    write.write_all(&[0, 0, 0, 0]).await?;
                }
                Out::Block(index, begin, length) => {
                    self.pace(length).await;
                    let mut block = vec![0u8; length as usize];
                    file.read_exact_at(
                        &mut block,
                        index as u64 * title.piece_length + begin as u64,
                    )?;
                    write
                        .write_all(&wire::piece_head(index, begin, length))
                        .await?;
                    write.write_all(&block).await?;
                    self.uploaded.fetch_add(length as u64, Ordering::Relaxed);
                    if self.super_seed {
                        let total = sent.entry(index).or_default();
                        *total += length as u64;
                        if *total >= title.piece_len(index) {
                            sent.remove(&index);
                            self.given(&title.info_hash, &region, index);
                        }
                    }
                }
            }
            last_write = Instant::now();
        }
    }

    /// The pieces to offer a peer of `region` that has `has` and was offered `offered` (not
    /// asked for yet, with when): the lowest it lacks that its region was neither given nor
    /// promised lately. An offer left unasked for [`OFFER_UNTAKEN`] no longer holds a place
    /// (librqbit may be fetching that piece from elsewhere).
    fn offers(
        &self,
        info_hash: &[u8; 20],
        region: &str,
        has: &[bool],
        offered: &BTreeMap<u32, Instant>,
    ) -> Vec<u32> {
        let waiting = offered
            .values()
            .filter(|at| at.elapsed() < OFFER_UNTAKEN)
            .count();
        let room = OFFERED_AHEAD.saturating_sub(waiting);
        if room == 0 {
            return Vec::new();
        }
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let r = regions.entry((*info_hash, region.to_string())).or_default();
        r.given.retain(|_, at| at.elapsed() < GIVEN_FOR);
        r.promised.retain(|_, at| at.elapsed() < GIVEN_FOR);
        let chosen: Vec<u32> = (0..has.len() as u32)
            .filter(|i| {
                !has[*i as usize]
                    && !offered.contains_key(i)
                    && !r.given.contains_key(i)
                    && !r.promised.contains_key(i)
            })
            .take(room)
            .collect();
        for i in &chosen {
            r.promised.insert(*i, Instant::now());
        }
        chosen
    }

    /// Records that a peer of `region` was sent all of piece `index`.
    fn given(&self, info_hash: &[u8; 20], region: &str, index: u32) {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let r = regions.entry((*info_hash, region.to_string())).or_default();
        r.promised.remove(&index);
        r.given.insert(index, Instant::now());
    }

    /// Waits until `bytes` more may go out within the upload cap.
    async fn pace(&self, bytes: u32) {
        let Some((next, rate)) = &self.cap else {
            return;
        };
        let at = {
            let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + Duration::from_secs_f64(bytes as f64 / rate);
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// What goes out to a peer.
enum Out {
    Have(u32),
    KeepAlive,
    Block(u32, u32, u32),
}

/// What waits to go out to a peer: offers and keep-alives ahead of blocks.
#[derive(Default)]
struct Outbox {
    queue: Mutex<(VecDeque<Out>, VecDeque<Out>)>,
    wake: tokio::sync::Notify,
}

impl Outbox {
    /// Queues `out`; false when the peer has more blocks waiting than [`MAX_QUEUED`].
    fn push(&self, out: Out) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        match out {
            Out::Block(..) if q.1.len() >= MAX_QUEUED => return false,
            Out::Block(..) => q.1.push_back(out),
            // One keep-alive waiting is enough, however long the peer stops reading.
            Out::KeepAlive if q.0.iter().any(|o| matches!(o, Out::KeepAlive)) => {}
            _ => q.0.push_back(out),
        }
        self.wake.notify_one();
        true
    }

    fn pop(&self) -> Option<Out> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.0.pop_front().or_else(|| q.1.pop_front())
    }

    /// Drops a block asked for and then cancelled (the peer got it elsewhere).
    fn cancel(&self, index: u32, begin: u32, length: u32) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.1.retain(|o| !matches!(o, Out::Block(i, b, l) if (*i, *b, *l) == (index, begin, length)));
    }
}

/// Passes on a peer's messages that matter to the seed until it hangs up.
async fn read_messages(
    mut read: tokio::net::tcp::OwnedReadHalf,
    events: mpsc::Sender<Message>,
) -> std::io::Result<()> {
    loop {
        let message = wire::read(&mut read).await?;
        if message != Message::Other && events.send(message).await.is_err() {
            return Ok(());
        }
    }
}

/// Percent-encodes every byte (info hashes and peer ids are binary).
fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}
