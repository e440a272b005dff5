//! `vod tracker`: an HTTP tracker (BEP 3, compact peer lists of BEP 23) that answers each
//! gateway with the gateways of its own region first, and with other regions' only when its
//! own has too few, so that most peer bytes stay inside a region. The origin's seed, announced
//! in the region `origin`, comes last in every answer.
//!
//! A gateway's region is the one its announce URL names (`/announce/REGION`), else the one
//! its address falls in (`--region CIDR=NAME`), else `unknown`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::bencode::Value;

/// The region the origin's seed announces itself in.
pub const ORIGIN_REGION: &str = "origin";
/// How often gateways are asked to announce again.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// With fewer peers than this in its own region, a gateway is also given other regions'.
/// One: only a region's first gateway reaches across (connections, once made, last), and
/// whatever its region cannot deliver in time comes from the origin's web seed.
pub const MIN_LOCAL: usize = 1;

/// An address range and the region it belongs to.
#[derive(Debug, Clone)]
pub struct RegionRange {
    pub net: Ipv4Addr,
    pub prefix: u8,
    pub region: String,
}

impl std::str::FromStr for RegionRange {
    type Err = String;

    /// `10.1.0.0/16=north`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not CIDR=REGION (e.g. 10.1.0.0/16=north)");
        let (cidr, region) = s.split_once('=').ok_or_else(bad)?;
        let (net, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let net: Ipv4Addr = net.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 || !valid_region(region) {
            return Err(bad());
        }
        Ok(RegionRange {
            net,
            prefix,
            region: region.to_string(),
        })
    }
}

impl RegionRange {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(ip) & mask == u32::from(self.net) & mask
    }
}

fn valid_region(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Where an announce's region came from.
enum Region {
    /// Its URL named it.
    Named(String),
    /// From its address.
    Guessed(String),
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddrV4,
    region: String,
    /// Its first announce (kept across its later ones).
    joined: Instant,
    seen: Instant,
}

/// The tracker's swarms.
#[derive(Default)]
pub struct Tracker {
    ranges: Vec<RegionRange>,
    swarms: Mutex<HashMap<[u8; 20], Vec<Peer>>>,
}

/// One peer of a swarm as `GET /peers/HASH` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PeerView {
    pub addr: String,
    pub region: String,
}

impl Tracker {
    pub fn new(ranges: Vec<RegionRange>) -> Arc<Tracker> {
        Arc::new(Tracker {
            ranges,
            swarms: Mutex::default(),
        })
    }

    fn region_of(&self, ip: Ipv4Addr) -> String {
        self.ranges
            .iter()
            .find(|r| r.contains(ip))
            .map(|r| r.region.clone())
            .unwrap_or_else(|| "unknown".into())
    }

    /// Records an announce and returns the peers to give the announcer, best first.
    fn announce(
        &self,
        info_hash: [u8; 20],
        addr: SocketAddrV4,
        region: Region,
        stopped: bool,
        numwant: usize,
    ) -> Vec<SocketAddrV4> {
        let mut swarms = self.swarms.lock().unwrap_or_else(|p| p.into_inner());
        let swarm = swarms.entry(info_hash).or_default();
        let now = Instant::now();
        // A client announces to every tracker of its torrent: the URL its torrent names
        // (region guessed) and the one naming its region. The named region stays.
        let known = swarm.iter().find(|p| p.addr == addr);
        let joined = known.map_or(now, |p| p.joined);
        let region = match (region, known) {
            (Region::Named(r), _) => r,
            (Region::Guessed(_), Some(known)) => known.region.clone(),
            (Region::Guessed(r), None) => r,
        };
        swarm.retain(|p| p.addr != addr && now.duration_since(p.seen) < INTERVAL * 3);
        let answer = choose(swarm, &region, joined, numwant);
        if !stopped {
            swarm.push(Peer {
                addr,
                region,
                joined,
                seen: now,
            });
        }
        answer
    }

    fn peers(&self, info_hash: [u8; 20]) -> Vec<PeerView> {
        let swarms = self.swarms.lock().unwrap_or_else(|p| p.into_inner());
        swarms
            .get(&info_hash)
            .map(|s| {
                s.iter()
                    .map(|p| PeerView {
                        addr: p.addr.to_string(),
                        region: p.region.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A region with this many gateways or more feeds itself: its newcomers are not given the
/// origin's seed (a late read still reaches the origin's web seed).
pub const SEEDED_BELOW: usize = 1;

/// How many gateways of its own region a gateway is given: those that joined the swarm
/// just before it. Viewers who start one after the other form a chain: each is a little ahead
/// of the next, so holds what the next needs soon. Given every gateway of its region, each
/// newcomer asked the first ones too, and a first gateway's uplink (1 Mbit/s, shared by
/// everyone who asks) fed nobody in time: the second gateway, whose only source it is, fell
/// back on the origin. With two each, an uplink feeds at most the two that follow it.
pub const FEEDERS: usize = 2;

/// The answer to a peer of `region` that first announced at `joined`: the [`FEEDERS`]
/// gateways of its region that joined just before it (the latest first), then other
/// regions' if its own has fewer than [`MIN_LOCAL`] such, then the origin's seeds if its own
/// has fewer than [`SEEDED_BELOW`]. Gateways that join later are not given: they find this
/// one themselves. The origin's seed itself gets none.
fn choose(swarm: &[Peer], region: &str, joined: Instant, numwant: usize) -> Vec<SocketAddrV4> {
    // The origin's seed holds every piece and waits to be asked: it is given no peers, so
    // it never reaches out to a region that feeds itself.
    if region == ORIGIN_REGION {
        return Vec::new();
    }
    let mut before: Vec<&Peer> = swarm.iter().filter(|p| p.joined < joined).collect();
    before.sort_by_key(|p| std::cmp::Reverse(p.joined));
    let local: Vec<&Peer> = before
        .iter()
        .copied()
        .filter(|p| p.region == region && p.region != ORIGIN_REGION)
        .collect();
    let mut answer: Vec<SocketAddrV4> = local.iter().take(FEEDERS).map(|p| p.addr).collect();
    if local.len() < MIN_LOCAL {
        answer.extend(
            before
                .iter()
                .filter(|p| p.region != region && p.region != ORIGIN_REGION)
                .take(FEEDERS)
                .map(|p| p.addr),
        );
    }
    answer.truncate(numwant.saturating_sub(1).max(1));
    if local.len() < SEEDED_BELOW {
        // Whenever the seed joined: it holds every piece.
        answer.extend(
            swarm
                .iter()
                .filter(|p| p.region == ORIGIN_REGION)
                .map(|p| p.addr),
        );
    }
    answer.truncate(numwant);
    answer
}

/// The tracker's routes: `/announce`, `/announce/REGION`, `/peers/HASH` and `/region`
/// (JSON).
pub fn router(tracker: Arc<Tracker>) -> Router {
    Router::new()
        .route("/announce", get(announce_anywhere))
        .route("/announce/{region}", get(announce_in))
        .route("/peers/{hash}", get(peers))
        .route("/region", get(region_of_caller))
        .with_state(tracker)
}

/// `GET /region`: the region the tracker places the caller in, from its address.
async fn region_of_caller(
    State(t): State<Arc<Tracker>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
) -> Response {
    let region = match from {
        SocketAddr::V4(a) => t.region_of(*a.ip()),
        SocketAddr::V6(_) => "unknown".into(),
    };
    Json(serde_json::json!({ "region": region })).into_response()
}

async fn announce_anywhere(
    State(t): State<Arc<Tracker>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    bencoded(answer(&t, from, None, query.as_deref().unwrap_or("")))
}

async fn announce_in(
    State(t): State<Arc<Tracker>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Path(region): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    bencoded(answer(
        &t,
        from,
        Some(region),
        query.as_deref().unwrap_or(""),
    ))
}

async fn peers(State(t): State<Arc<Tracker>>, Path(hash): Path<String>) -> Response {
    match hex::decode(&hash)
        .ok()
        .and_then(|b| <[u8; 20]>::try_from(b).ok())
    {
        Some(h) => Json(t.peers(h)).into_response(),
        None => (
            axum::http::StatusCode::BAD_REQUEST,
            format!("`{hash}` is not an info hash; give its 40 hex digits"),
        )
            .into_response(),
    }
}

fn bencoded(v: Value) -> Response {
    ([("content-type", "text/plain")], v.encode()).into_response()
}

fn failure(why: String) -> Value {
    Value::dict([("failure reason", Value::Bytes(why.into_bytes()))])
}

fn answer(t: &Tracker, from: SocketAddr, region: Option<String>, query: &str) -> Value {
    let params = parse_query(query);
    let get = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let Some(info_hash) = get("info_hash").and_then(|v| <[u8; 20]>::try_from(v.clone()).ok())
    else {
        return failure("the announce has no info_hash of 20 bytes".into());
    };
    let Some(port) = get("port")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .filter(|p| *p != 0)
    else {
        return failure("the announce has no port".into());
    };
    let SocketAddr::V4(from) = from else {
        return failure("this tracker serves IPv4 peers only".into());
    };
    let region = match region {
        Some(r) if valid_region(&r) => Region::Named(r),
        Some(r) => return failure(format!("`{r}` is not a region name (letters, digits, -)")),
        None => Region::Guessed(t.region_of(*from.ip())),
    };
    let numwant = get("numwant")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 200);
    let stopped = get("event").is_some_and(|e| e.as_slice() == b"stopped");
    let peers = t.announce(
        info_hash,
        SocketAddrV4::new(*from.ip(), port),
        region,
        stopped,
        numwant,
    );
    let mut compact = Vec::with_capacity(peers.len() * 6);
    for p in peers {
        compact.extend_from_slice(&p.ip().octets());
        compact.extend_from_slice(&p.port().to_be_bytes());
    }
    Value::dict([
        ("interval", Value::Int(INTERVAL.as_secs() as i64)),
        ("peers", Value::Bytes(compact)),
    ])
}

/// `a=b&c=%41` as raw bytes (info hashes are binary).
fn parse_query(query: &str) -> Vec<(String, Vec<u8>)> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((
                String::from_utf8_lossy(&unescape(k)).into_owned(),
                unescape(v),
            ))
        })
        .collect()
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, region: &str, age: u64) -> Peer {
        Peer {
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 6881),
            region: region.into(),
            joined: Instant::now() - Duration::from_secs(age),
            seen: Instant::now() - Duration::from_secs(age),
        }
    }

    fn ids(got: &[SocketAddrV4]) -> Vec<u8> {
        got.iter().map(|a| a.ip().octets()[3]).collect()
    }

    #[test]
    fn a_gateway_is_given_the_two_of_its_region_that_joined_just_before_it() {
        let now = Instant::now();
        let swarm = vec![
            peer(1, "north", 9),
            peer(2, "south", 2),
            peer(3, "north", 1),
            peer(4, ORIGIN_REGION, 30),
            peer(5, "north", 5),
        ];
        // A newcomer: the two latest of its region (3 then 5), not the first (1), whose
        // uplink feeds those two. Its region feeds itself: no seed, no other region.
        assert_eq!(ids(&choose(&swarm, "north", now, 50)), vec![3, 5]);
        // 5 announces again: only 1 joined before it. Those after it find it themselves.
        let five = swarm[4].joined;
        assert_eq!(ids(&choose(&swarm, "north", five, 50)), vec![1]);
        // 1, the region's first: nobody of its region before it, so the other region's
        // gateways that joined before it (none) and the origin's seed.
        let first = swarm[0].joined;
        assert_eq!(ids(&choose(&swarm, "north", first, 50)), vec![4]);
        assert!(
            choose(&swarm, ORIGIN_REGION, now, 50).is_empty(),
            "the seed is asked, never asks"
        );
    }

    #[test]
    fn a_regions_first_gateway_also_gets_the_others_and_the_origin_is_never_cut() {
        let now = Instant::now();
        let swarm = vec![
            peer(2, "south", 1),
            peer(3, "south", 2),
            peer(6, "south", 3),
            peer(4, ORIGIN_REGION, 1),
        ];
        assert_eq!(ids(&choose(&swarm, "north", now, 50)), vec![2, 3, 4]);
        assert_eq!(ids(&choose(&swarm, "north", now, 2)), vec![2, 4]);
        // The seed is given even when it joined after the gateway (an origin restarted).
        let early = now - Duration::from_secs(60);
        assert_eq!(ids(&choose(&swarm, "north", early, 50)), vec![4]);
    }

    #[test]
    fn announces_are_parsed_from_raw_bytes_and_bad_ones_refused() {
        let t = Tracker::new(vec!["10.1.0.0/16=north".parse().unwrap()]);
        let hash = "%01%02%03%04%05%06%07%08%09%0a%0b%0c%0d%0e%0f%10%11%12%13%14";
        let from: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let ok = answer(
            &t,
            from,
            None,
            &format!("info_hash={hash}&port=6881&left=0"),
        );
        assert_eq!(ok.get("interval").and_then(Value::as_int), Some(30));
        let peers = t.peers(core::array::from_fn(|i| i as u8 + 1));
        assert_eq!(
            peers,
            vec![PeerView {
                addr: "10.1.2.3:6881".into(),
                region: "north".into()
            }]
        );
        for bad in [
            "port=1",
            &format!("info_hash={hash}"),
            "info_hash=short&port=1",
        ] {
            let v = answer(&t, from, None, bad);
            assert!(v.get("failure reason").is_some(), "{bad} was accepted");
        }
        let v = answer(
            &t,
            from,
            Some("no/pe".into()),
            &format!("info_hash={hash}&port=1"),
        );
        assert!(v.get("failure reason").is_some());
    }
}
