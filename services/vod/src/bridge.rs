//! The origin's answers, handed to the BitTorrent store.
//!
//! librqbit has no web seed (BEP 19) and takes pieces only from peers. What a late read
//! fetched from the origin would otherwise be downloaded a second time from the peers, on the
//! very uplinks that the next gateway's urgent pieces need. So the peer offers those pieces to
//! its own BitTorrent session as one more peer: a connection on the loopback that has exactly
//! the pieces the origin sent and nothing else, speaking the plain wire protocol (BEP 3, no
//! extensions). librqbit checks each piece against its hash as it does for any peer, so the
//! bridge adds no trust.
//!
//! Pieces wait in memory until librqbit has taken all of their blocks, at most
//! [`HOLD_BYTES`] in all and [`HOLD_FOR`] each; a piece librqbit got elsewhere meanwhile just
//! ages out.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::wire;

/// How many bytes of pieces the bridge holds for the session at most (the oldest go first):
/// four refills of a late read at 0.5 Mbit/s, within the package's memory reservation.
pub const HOLD_BYTES: usize = 2 << 20;

/// How long a piece is offered before it is dropped.
pub const HOLD_FOR: Duration = Duration::from_secs(120);

/// The longest block a request may ask for (clients ask 16 KiB).
const MAX_BLOCK: u32 = 128 << 10;

/// How often the bridge tells the session it is still there (librqbit drops a peer that says
/// nothing for 10 s).
const KEEP_ALIVE: Duration = Duration::from_secs(4);

/// What the bridge offers for one torrent.
struct Offer {
    /// Piece index → its bytes, when offered, and how many of its bytes librqbit took.
    pieces: BTreeMap<u32, Held>,
    piece_count: u32,
    /// The connection serving this torrent, if one runs: new pieces are announced on it.
    announce: Option<mpsc::UnboundedSender<u32>>,
}

struct Held {
    data: Bytes,
    since: Instant,
    taken: usize,
}

/// The bridge of one BitTorrent session.
pub struct Bridge {
    /// Where the session accepts peers.
    session: SocketAddr,
    peer_id: [u8; 20],
    offers: Mutex<HashMap<[u8; 20], Offer>>,
    /// Bytes the session took from the bridge.
    taken: AtomicU64,
    /// The addresses the bridge's connections came from, as the session sees them.
    sources: Mutex<Vec<SocketAddr>>,
}

impl Bridge {
    /// The bridge to the session listening on `listen` (an unspecified address is reached on
    /// the loopback).
    pub fn new(listen: SocketAddr) -> Arc<Bridge> {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Arc::new(Bridge {
            session: SocketAddr::new(ip, listen.port()),
            peer_id: wire::peer_id(b"-SHGBRIDGE-"),
            offers: Mutex::default(),
            taken: AtomicU64::new(0),
            sources: Mutex::default(),
        })
    }

    /// Whether `addr` is the bridge as the session sees it (its bytes are the origin's, not
    /// a peer's).
    pub fn is_bridge(&self, addr: &SocketAddr) -> bool {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr)
    }

    /// Bytes the session took from the bridge: origin bytes it did not fetch again.
    pub fn taken_bytes(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Offers piece `index` of the torrent `info_hash` (of `piece_count` pieces) to the
    /// session.
    pub fn offer(self: &Arc<Self>, info_hash: [u8; 20], piece_count: u32, index: u32, data: Bytes) {
        if index >= piece_count || data.is_empty() {
            return;
        }
        let mut offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        let offer = offers.entry(info_hash).or_insert_with(|| Offer {
            pieces: BTreeMap::new(),
            piece_count,
            announce: None,
        });
        if offer.piece_count != piece_count || offer.pieces.contains_key(&index) {
            return;
        }
        offer.pieces.insert(
            index,
            Held {
                data,
                since: Instant::now(),
                taken: 0,
            },
        );
        let announced = offer
            .announce
            .as_ref()
            .is_some_and(|tx| tx.send(index).is_ok());
        if !announced {
            let (tx, rx) = mpsc::unbounded_channel();
            offer.announce = Some(tx);
            let bridge = self.clone();
            tokio::spawn(async move {
                if let Err(e) = bridge.serve(info_hash, rx).await {
                    tracing::debug!("the bridge to the BitTorrent session ended: {e}");
                }
                let mut offers = bridge.offers.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(o) = offers.get_mut(&info_hash) {
                    if o.announce.as_ref().is_some_and(|tx| tx.is_closed()) {
                        o.announce = None;
                    }
                }
            });
        }
        Self::trim(&mut offers);
    }

    /// Drops what the bridge offers for `info_hash` (the title left the cache).
    pub fn forget(&self, info_hash: [u8; 20]) {
        self.offers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info_hash);
    }

    /// Keeps the held pieces within [`HOLD_BYTES`] and [`HOLD_FOR`].
    fn trim(offers: &mut HashMap<[u8; 20], Offer>) {
        for offer in offers.values_mut() {
            offer.pieces.retain(|_, h| h.since.elapsed() < HOLD_FOR);
        }
        let mut held: usize = offers
            .values()
            .flat_map(|o| o.pieces.values())
            .map(|h| h.data.len())
            .sum();
        while held > HOLD_BYTES {
            let oldest = offers
                .iter()
                .flat_map(|(hash, o)| o.pieces.iter().map(move |(i, h)| (h.since, *hash, *i)))
                .min();
            let Some((_, hash, index)) = oldest else {
                break;
            };
            match offers.get_mut(&hash).and_then(|o| o.pieces.remove(&index)) {
                Some(gone) => held -= gone.data.len(),
                None => break,
            }
        }
        offers.retain(|_, o| !o.pieces.is_empty() || o.announce.is_some());
    }

    /// One connection to the session for `info_hash`: handshake, the pieces held, then each
    /// new one as it comes, and the blocks librqbit asks for. Ends when the session hangs up,
    /// asks for something not held, or nothing is left to offer.
    async fn serve(
        self: &Arc<Self>,
        info_hash: [u8; 20],
        mut announced: mpsc::UnboundedReceiver<u32>,
    ) -> std::io::Result<()> {
        let stream = TcpStream::connect(self.session).await?;
        stream.set_nodelay(true)?;
        {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            sources.push(stream.local_addr()?);
            // The session's own list of peers forgets old connections too.
            let excess = sources.len().saturating_sub(256);
            sources.drain(..excess);
        }
        let (mut read, mut write) = stream.into_split();
        let hello = wire::handshake(&info_hash, &self.peer_id);
        write.write_all(&hello).await?;
        let mut answer = [0u8; 68];
        read.read_exact(&mut answer).await?;
        if answer[..20] != hello[..20] || answer[28..48] != info_hash {
            return Err(std::io::Error::other(
                "the session answered another handshake",
            ));
        }
        let bitfield = {
            let offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
            let Some(offer) = offers.get(&info_hash) else {
                return Ok(());
            };
            wire::bitfield(offer.piece_count, offer.pieces.keys().copied())
        };
        write.write_all(&wire::message(5, &bitfield)).await?;
        write.write_all(&wire::message(1, &[])).await?;

        // The session's messages are read on their own task, so that a half-read message is
        // never dropped; only requests matter here.
        let (requests_tx, mut requests) = mpsc::channel::<(u32, u32, u32)>(64);
        let reader = tokio::spawn(async move {
            loop {
                if let wire::Message::Request(index, begin, length) = wire::read(&mut read).await? {
                    if requests_tx.send((index, begin, length)).await.is_err() {
                        return Ok::<(), std::io::Error>(());
                    }
                }
            }
        });
        let ended = async {
            let mut tick = tokio::time::interval(KEEP_ALIVE);
            let mut idle_since = Instant::now();
            loop {
                tokio::select! {
                    r = requests.recv() => {
                        let Some((index, begin, length)) = r else { return Ok(()) };
                        let Some(block) = self.block(info_hash, index, begin, length) else {
                            return Err(std::io::Error::other(format!(
                                "the session asked for piece {index} at {begin}, which the bridge does not hold"
                            )));
                        };
                        write.write_all(&wire::piece_head(index, begin, block.len() as u32)).await?;
                        write.write_all(&block).await?;
                        self.taken.fetch_add(block.len() as u64, Ordering::Relaxed);
                        idle_since = Instant::now();
                    }
                    i = announced.recv() => {
                        let Some(i) = i else { return Ok(()) };
                        write.write_all(&wire::message(4, &i.to_be_bytes())).await?;
                        idle_since = Instant::now();
                    }
                    _ = tick.tick() => {
                        let empty = {
                            let mut offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
                            Self::trim(&mut offers);
                            offers.get(&info_hash).is_none_or(|o| o.pieces.is_empty())
                        };
                        if empty && idle_since.elapsed() > HOLD_FOR {
                            return Ok(());
                        }
                        write.write_all(&[0, 0, 0, 0]).await?;
                    }
                }
            }
        };
        let result = ended.await;
        reader.abort();
        result
    }

    /// The block `begin..begin + length` of a held piece, counted as taken; the piece is let
    /// go once all of its bytes were taken.
    fn block(&self, info_hash: [u8; 20], index: u32, begin: u32, length: u32) -> Option<Bytes> {
        let mut offers = self.offers.lock().unwrap_or_else(|p| p.into_inner());
        let offer = offers.get_mut(&info_hash)?;
        let held = offer.pieces.get_mut(&index)?;
        let (begin, length) = (begin as usize, length as usize);
        if length == 0 || length > MAX_BLOCK as usize || begin + length > held.data.len() {
            return None;
        }
        let block = held.data.slice(begin..begin + length);
        held.taken += length;
        if held.taken >= held.data.len() {
            offer.pieces.remove(&index);
        }
        Some(block)
    }
}
