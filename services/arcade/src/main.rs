//! `arcade lobby --parts N [--listen 0.0.0.0:7100]` — the provider's side: gives each gateway
//! that joins a stripe of the maze and tells every gateway where the others are.
//!
//! `arcade gateway [--lobby URL] [--lan 0.0.0.0:8097] [--wan 0.0.0.0:7001] [--key-file FILE]`
//! — on each gateway:
//! the household's players on the LAN port (`/` the page, `/join`, `/input`, `/world`); the
//! other gateways on the WAN port (`/view`, `/handoff`, `/steer`), which the lobby gives out at
//! the address it saw the gateway join from. Without `--lobby`, the whole maze is this
//! gateway's alone and nothing listens on the WAN.
//!
//! A gateway makes a random key (kept in `--key-file` if given, made there on the first
//! start, so a restart keeps it) and joins with its SHA-256 only; the lobby
//! gives every gateway the others' hashes with their addresses. A call between gateways
//! carries the caller's key (`authorization: Bearer KEY`) and is answered only if it comes
//! from a gateway's address with the key that gateway joined with: knowing the hashes does
//! not let one gateway pass for another. A gateway joins again (after a restart) only with
//! the key it first joined with.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arcade::{columns, merge, Dir, Held, Refusal, Stripe, View, MAZE};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

const USAGE: &str = "usage: arcade lobby --parts N [--listen 0.0.0.0:7100]\n       arcade gateway [--lobby URL] [--lan 0.0.0.0:8097] [--wan 0.0.0.0:7001] [--key-file FILE]";
const TICK: Duration = Duration::from_millis(100);
/// A neighbour's view older than this is no longer shown.
const STALE: Duration = Duration::from_secs(2);
const PAGE: &str = include_str!("page.html");

fn main() {
    if let Err(e) = run() {
        eprintln!("arcade: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let role = args.next().ok_or("say lobby or gateway")?;
    let mut flags = std::collections::BTreeMap::new();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        flags.insert(flag, value);
    }
    let addr = |flag: &str, default: &str| -> Result<SocketAddr, String> {
        let text = flags.get(flag).map(String::as_str).unwrap_or(default);
        text.parse()
            .map_err(|_| format!("{flag}: `{text}` is not ADDRESS:PORT"))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match role.as_str() {
        "lobby" => {
            let parts: usize = flags
                .get("--parts")
                .and_then(|p| p.parse().ok())
                .filter(|p| (1..=8).contains(p))
                .ok_or("--parts: a number of gateways from 1 to 8")?;
            let listen = addr("--listen", "0.0.0.0:7100")?;
            runtime.block_on(lobby(listen, parts))
        }
        "gateway" => {
            let lobby_url = flags.get("--lobby").cloned();
            let lan = addr("--lan", "0.0.0.0:8097")?;
            let wan = addr("--wan", "0.0.0.0:7001")?;
            let key = match flags.get("--key-file") {
                Some(file) => key_from(std::path::Path::new(file))?,
                None => random_hex(32),
            };
            runtime.block_on(gateway(lobby_url, lan, wan, key))
        }
        other => Err(format!("unknown role `{other}`")),
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn refusal(r: Refusal) -> Response {
    let status = match r {
        Refusal::Bad(_) => StatusCode::BAD_REQUEST,
        Refusal::Unknown(_) => StatusCode::NOT_FOUND,
        Refusal::WrongKey => StatusCode::FORBIDDEN,
    };
    refuse(status, r.to_string())
}

/// Parses a JSON body by hand, so that garbage gets our own sentence.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: {e}"))
}

// ---- a small HTTP client ------------------------------------------------------------------

/// Plain HTTP/1.1 to the lobby and the other gateways, one connection a request, everything
/// within `TIMEOUT`. (Not reqwest: built with the workspace's features it insists on a CA
/// bundle, which the package does not carry and plain HTTP does not need.)
mod client {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper::{Method, Request};
    use hyper_util::rt::TokioIo;

    pub const TIMEOUT: Duration = Duration::from_millis(800);

    /// (status, body) of `method url` with an optional JSON body, and with `key` as its
    /// bearer credential if given.
    pub async fn call(
        method: Method,
        url: &str,
        json: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        tokio::time::timeout(TIMEOUT, exchange(method, url, json, key))
            .await
            .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
    }

    async fn exchange(
        method: Method,
        url: &str,
        json: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        tokio::spawn(connection);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{host}:{port}"));
        if json.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = key {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// A call to the lobby, which needs no key.
    pub async fn get(url: &str) -> Result<(u16, Bytes), String> {
        call(Method::GET, url, None, None).await
    }

    /// A call to the lobby, which needs no key.
    pub async fn post(url: &str, json: Vec<u8>) -> Result<(u16, Bytes), String> {
        call(Method::POST, url, Some(json), None).await
    }
}

// ---- the lobby -------------------------------------------------------------------------------

#[derive(Default)]
struct Lobby {
    parts: usize,
    /// The WAN URL of each stripe's gateway, in joining order.
    urls: Vec<String>,
    /// The SHA-256 (hex) of each one's key, by part.
    key_hashes: Vec<String>,
}

async fn lobby(listen: SocketAddr, parts: usize) -> Result<(), String> {
    let state = Arc::new(Mutex::new(Lobby {
        parts,
        urls: Vec::new(),
        key_hashes: Vec::new(),
    }));
    let app = Router::new()
        .route("/join", post(lobby_join))
        .route("/parts", get(lobby_parts))
        .layer(DefaultBodyLimit::max(1024))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?;
    eprintln!("arcade lobby on {listen}: {parts} parts");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct Join {
    port: u16,
    /// The SHA-256 (64 hex digits) of the key the gateway will call the others with.
    key_hash: String,
}

async fn lobby_join(
    State(state): State<Arc<Mutex<Lobby>>>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    bytes: axum::body::Bytes,
) -> Response {
    let join: Join = match body(&bytes, "join") {
        Ok(j) => j,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let hash = join.key_hash.to_ascii_lowercase();
    if !is_hex64(&hash) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "join: `key_hash` must be the SHA-256 of the gateway's key, 64 hex digits",
        );
    }
    let url = format!("http://{}:{}", from.ip(), join.port);
    let mut lobby = state.lock().unwrap_or_else(|p| p.into_inner());
    let part = match lobby.urls.iter().position(|u| *u == url) {
        // The same gateway again (it restarted, keeping its key): its part. Another key from
        // the same address and port could be any device behind the same home's NAT.
        Some(part) if lobby.key_hashes[part] == hash => part,
        Some(part) => {
            return refuse(
                StatusCode::CONFLICT,
                format!(
                    "part {part} is held by the gateway at {url}, which joined with another key; \
                     a gateway keeps its key in --key-file (restore it), or the provider restarts the lobby"
                ),
            )
        }
        None if lobby.urls.len() < lobby.parts => {
            lobby.urls.push(url);
            lobby.key_hashes.push(hash);
            lobby.urls.len() - 1
        }
        None => {
            return refuse(
                StatusCode::CONFLICT,
                format!("all {} parts of the maze have their gateway", lobby.parts),
            )
        }
    };
    Json(json!({ "part": part, "parts": lobby.parts })).into_response()
}

async fn lobby_parts(State(state): State<Arc<Mutex<Lobby>>>) -> Json<serde_json::Value> {
    let lobby = state.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({ "parts": lobby.parts, "urls": lobby.urls, "key_hashes": lobby.key_hashes }))
}

// ---- a gateway -------------------------------------------------------------------------------

struct Game {
    stripe: Mutex<Stripe>,
    /// This gateway's key for its calls to the others (only its hash leaves it otherwise).
    key: String,
    /// The stripes' gateways, by part, as the lobby last said.
    roster: Mutex<Vec<Member>>,
    /// The other stripes as last seen.
    views: Mutex<Vec<Option<(Instant, View)>>>,
}

type Shared = Arc<Game>;

/// One stripe's gateway: its WAN URL and the SHA-256 (hex) of its key.
struct Member {
    url: String,
    key_hash: String,
}

/// Whether `text` has the shape of a key or of a key's hash: 64 hex digits.
fn is_hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `bytes` random bytes in hex, for keys and ids. No randomness, no game: keys of zeros
/// would let anyone steer any player or pass for any gateway.
fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("arcade: /dev/urandom gives no random bytes");
    hex::encode(buf)
}

/// The gateway's key kept in `file`: read, or made and written there (owner only) when the
/// file does not exist yet.
fn key_from(file: &std::path::Path) -> Result<String, String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let key = text.trim().to_string();
            if is_hex64(&key) {
                Ok(key)
            } else {
                Err(format!(
                    "--key-file: {} does not hold a key (64 hex digits); remove it to make a new one",
                    file.display()
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_hex(32);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .and_then(|mut f| f.write_all(format!("{key}\n").as_bytes()))
                .map_err(|e| format!("--key-file: cannot write {}: {e}", file.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("--key-file: cannot read {}: {e}", file.display())),
    }
}

async fn gateway(
    lobby_url: Option<String>,
    lan: SocketAddr,
    wan: SocketAddr,
    key: String,
) -> Result<(), String> {
    let lan_listener = tokio::net::TcpListener::bind(lan)
        .await
        .map_err(|e| format!("{lan}: {e}"))?;
    let Some(lobby_url) = lobby_url else {
        eprintln!("arcade: the whole maze, alone (no --lobby); players on {lan}");
        let game: Shared = Arc::new(Game {
            stripe: Mutex::new(Stripe::new(0, 1, u64::from_le_bytes(*b"arcade!!"))),
            key,
            roster: Mutex::new(Vec::new()),
            views: Mutex::new(vec![None]),
        });
        tokio::spawn(ticks(game.clone()));
        return axum::serve(lan_listener, lan_app(game))
            .await
            .map_err(|e| e.to_string());
    };
    let wan_listener = tokio::net::TcpListener::bind(wan)
        .await
        .map_err(|e| format!("{wan}: {e}"))?;
    // Join the lobby: which stripe is ours.
    let key_hash = sha256_hex(&key);
    let (part, parts) = loop {
        let join = json!({ "port": wan.port(), "key_hash": key_hash })
            .to_string()
            .into_bytes();
        match client::post(&format!("{lobby_url}/join"), join).await {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if let (Some(p), Some(n)) = (v["part"].as_u64(), v["parts"].as_u64()) {
                    break (p as usize, n as usize);
                }
            }
            Ok((status, body)) => eprintln!(
                "arcade: the lobby refused us ({status}): {}",
                String::from_utf8_lossy(&body)
            ),
            Err(e) => eprintln!("arcade: the lobby: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (a, b) = columns(part, parts);
    eprintln!(
        "arcade: part {part} of {parts} (columns {a} to {}), players on {lan}, gateways on {wan}",
        b - 1
    );
    let game: Shared = Arc::new(Game {
        stripe: Mutex::new(Stripe::new(
            part,
            parts,
            u64::from_le_bytes(*b"arcade!!") ^ part as u64,
        )),
        key,
        roster: Mutex::new(Vec::new()),
        views: Mutex::new(vec![None; parts]),
    });
    tokio::spawn(ticks(game.clone()));
    tokio::spawn(roster(game.clone(), lobby_url));
    tokio::spawn(neighbours(game.clone()));
    let wan_app = Router::new()
        .route("/view", get(view))
        .route("/handoff", post(handoff))
        .route("/steer", post(steer_here))
        .layer(DefaultBodyLimit::max(4096))
        .layer(axum::middleware::from_fn_with_state(
            game.clone(),
            gateways_only,
        ))
        .with_state(game.clone());
    tokio::spawn(async move {
        let app = wan_app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(wan_listener, app).await;
    });
    axum::serve(lan_listener, lan_app(game))
        .await
        .map_err(|e| e.to_string())
}

/// The household's side: the page, joining, steering, the whole maze.
fn lan_app(game: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/join", post(join))
        .route("/input", post(input))
        .route("/world", get(world))
        .layer(DefaultBodyLimit::max(4096))
        .with_state(game)
}

impl Game {
    fn stripe(&self) -> std::sync::MutexGuard<'_, Stripe> {
        self.stripe.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn roster(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.roster.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn url_of(&self, part: usize) -> Option<String> {
        self.roster().get(part).map(|m| m.url.clone())
    }

    /// Whether a call from `from` with `key` comes from one of the maze's gateways: from the
    /// address the lobby saw it join from, with the key it joined with. Only they may look at
    /// this stripe, hand players over or steer them here.
    fn is_gateway(&self, from: std::net::IpAddr, key: &str) -> bool {
        let hash = sha256_hex(key);
        self.roster().iter().any(|m| {
            m.key_hash == hash
                && m.url
                    .strip_prefix("http://")
                    .and_then(|rest| rest.rsplit_once(':'))
                    .and_then(|(host, _)| host.parse::<std::net::IpAddr>().ok())
                    == Some(from)
        })
    }

    /// `GET url` as this gateway, with its key.
    async fn get(&self, url: &str) -> Result<(u16, bytes::Bytes), String> {
        client::call(hyper::Method::GET, url, None, Some(&self.key)).await
    }

    /// `POST url` as this gateway, with its key.
    async fn post(&self, url: &str, json: Vec<u8>) -> Result<(u16, bytes::Bytes), String> {
        client::call(hyper::Method::POST, url, Some(json), Some(&self.key)).await
    }

    fn fresh_views(&self) -> Vec<View> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .iter()
            .flatten()
            .filter(|(at, _)| at.elapsed() < STALE)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The stripe's clock: a step every tick, and the players who walked out handed over.
async fn ticks(game: Shared) {
    let mut clock = tokio::time::interval(TICK);
    loop {
        clock.tick().await;
        let leaving = game.stripe().step();
        for out in leaving {
            let back = out.held.player.x - out.held.player.dir.delta().0;
            let handed = match game.url_of(out.to) {
                Some(url) => {
                    let held = serde_json::to_vec(&out.held).unwrap_or_default();
                    matches!(
                        game.post(&format!("{url}/handoff"), held).await,
                        Ok((204, _))
                    )
                }
                None => false,
            };
            if !handed {
                // The neighbour is not there: the player stays on our side of the border.
                game.stripe().stay(out.held, back);
            }
        }
    }
}

/// Learns the gateways and their keys' hashes from the lobby: every half second until every
/// stripe has its gateway, then every few seconds (the provider may restart its lobby).
async fn roster(game: Shared, lobby_url: String) {
    let parts = game.stripe().parts;
    loop {
        let roster = match client::get(&format!("{lobby_url}/parts")).await {
            Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let urls: Vec<String> = serde_json::from_value(v["urls"].clone()).ok()?;
                    let hashes: Vec<String> =
                        serde_json::from_value(v["key_hashes"].clone()).ok()?;
                    (urls.len() == hashes.len()).then(|| {
                        let members = urls.into_iter().zip(hashes);
                        members
                            .map(|(url, key_hash)| Member { url, key_hash })
                            .collect::<Vec<_>>()
                    })
                }),
            _ => None,
        };
        let mut complete = false;
        if let Some(roster) = roster {
            complete = roster.len() == parts;
            *game.roster() = roster;
        }
        let pause = if complete { 3000 } else { 500 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Watches the other stripes every tick, as their gateways show them.
async fn neighbours(game: Shared) {
    let (part, parts) = {
        let s = game.stripe();
        (s.part, s.parts)
    };
    let mut clock = tokio::time::interval(TICK);
    loop {
        clock.tick().await;
        for other in (0..parts).filter(|p| *p != part) {
            let Some(url) = game.url_of(other) else {
                continue;
            };
            let seen: Option<View> = match game.get(&format!("{url}/view")).await {
                Ok((200, body)) => serde_json::from_slice(&body).ok(),
                _ => None,
            };
            if let Some(view) = seen.filter(|v| v.part == other) {
                game.views.lock().unwrap_or_else(|p| p.into_inner())[other] =
                    Some((Instant::now(), view));
            }
        }
    }
}

fn stranger(from: SocketAddr, key: Option<&str>) -> Response {
    let why = match key {
        None => {
            "carries no gateway key (`authorization: Bearer KEY`, the key it joined the lobby with)"
        }
        Some(_) => "is not from one of the maze's gateways with the key it joined the lobby with",
    };
    refuse(
        StatusCode::FORBIDDEN,
        format!("this call from {} {why}", from.ip()),
    )
}

/// The WAN side answers the maze's gateways only: from their address, with their key.
async fn gateways_only(
    State(game): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let key = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match key {
        Some(key) if game.is_gateway(from.ip(), &key) => next.run(request).await,
        key => stranger(from, key.as_deref()),
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// 204, or the refusal's status and sentence.
fn done(result: Result<(), Refusal>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => refusal(r),
    }
}

async fn view(State(game): State<Shared>) -> Json<View> {
    Json(game.stripe().view())
}

async fn handoff(State(game): State<Shared>, bytes: axum::body::Bytes) -> Response {
    match body::<Held>(&bytes, "hand-over") {
        Ok(held) => done(game.stripe().arrive(held)),
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
struct Steer {
    id: String,
    key: String,
    dir: Dir,
}

async fn steer_here(State(game): State<Shared>, bytes: axum::body::Bytes) -> Response {
    match body::<Steer>(&bytes, "steering") {
        Ok(s) => done(game.stripe().steer(&s.id, &s.key, s.dir)),
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
struct NewPlayer {
    name: String,
}

async fn join(State(game): State<Shared>, bytes: axum::body::Bytes) -> Response {
    let new: NewPlayer = match body(&bytes, "join") {
        Ok(n) => n,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let (id, key) = (random_hex(8), random_hex(16));
    match game.stripe().join(id, key, new.name.trim()) {
        Ok(held) => Json(json!({
            "id": held.player.id,
            "key": held.key,
            "part": held.player.home,
        }))
        .into_response(),
        Err(r) => refusal(r),
    }
}

/// A player's steering, sent on to the gateway that holds the player now.
async fn input(State(game): State<Shared>, bytes: axum::body::Bytes) -> Response {
    let s: Steer = match body(&bytes, "steering") {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    match game.stripe().steer(&s.id, &s.key, s.dir) {
        Err(Refusal::Unknown(_)) => {}
        here => return done(here),
    }
    let holder = game
        .fresh_views()
        .into_iter()
        .find(|v| v.players.iter().any(|p| p.id == s.id))
        .map(|v| v.part);
    let Some(url) = holder.and_then(|p| game.url_of(p)) else {
        return refusal(Refusal::Unknown(s.id));
    };
    let steer = json!({ "id": s.id, "key": s.key, "dir": s.dir })
        .to_string()
        .into_bytes();
    match game.post(&format!("{url}/steer"), steer).await {
        Ok((204, _)) => StatusCode::NO_CONTENT.into_response(),
        Ok((status, _)) => refuse(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            format!("the gateway holding the player answered {status}"),
        ),
        Err(e) => refuse(
            StatusCode::BAD_GATEWAY,
            format!("the gateway holding the player is unreachable: {e}"),
        ),
    }
}

/// The whole maze as this gateway's players see it.
async fn world(State(game): State<Shared>) -> Json<serde_json::Value> {
    let (own, parts) = {
        let stripe = game.stripe();
        (stripe.view(), stripe.parts)
    };
    let part = own.part;
    let mut views = game.fresh_views();
    views.push(own);
    let players = merge(&views);
    let pellets: Vec<(i32, i32)> = views.iter().flat_map(|v| v.pellets.clone()).collect();
    let ghosts: Vec<(i32, i32)> = views.iter().map(|v| v.ghost).collect();
    let shown: Vec<usize> = views.iter().map(|v| v.part).collect();
    Json(json!({
        "maze": MAZE,
        "part": part,
        "parts": (0..parts).map(|p| {
            let (a, b) = columns(p, parts);
            json!({ "part": p, "from": a, "to": b - 1, "shown": shown.contains(&p) })
        }).collect::<Vec<_>>(),
        "pellets": pellets,
        "ghosts": ghosts,
        "players": players,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_is_made_once_then_read_back_and_a_file_of_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.key");
        let made = key_from(&file).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(key_from(&file).unwrap(), made, "a restart keeps its key");
        let mode = std::fs::metadata(&file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
            0,
            "the key is the owner's only"
        );
        std::fs::write(&file, "not a key\n").unwrap();
        let refused = key_from(&file).unwrap_err();
        assert!(refused.contains("remove it to make a new one"), "{refused}");
        assert_ne!(random_hex(32), random_hex(32));
    }
}
