//! The household's page on the LAN and its JSON: the gateway's public key, the peers and
//! how they are doing; add a device (its public key in, its config out) or remove one.
//! `GET /metrics` holds no names or keys: only counts, for the provider.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{delete, get};
use axum::Router;
use boringtun::x25519::PublicKey;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::peers::encode_key;
use crate::tunnel::{Net, Shared};

/// What the page needs besides the shared state.
#[derive(Clone)]
pub struct Page {
    pub shared: Arc<Mutex<Shared>>,
    pub wake: Arc<Notify>,
    pub public: PublicKey,
    /// The UDP port WireGuard listens on (published on the WAN side).
    pub port: u16,
    pub allowed: Vec<Net>,
}

pub fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/v1/peers", get(list).post(add))
        .route("/v1/peers/{name}", delete(remove))
        .route("/metrics", get(metrics))
        .with_state(page)
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl Page {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> serde_json::Value {
        let shared = self.lock();
        let peers: Vec<_> = shared
            .peers
            .list()
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "public_key": p.public_key,
                    "address": p.address.to_string(),
                    "status": shared.status.get(&p.name).cloned().unwrap_or_default(),
                })
            })
            .collect();
        json!({
            "public_key": encode_key(self.public.as_bytes()),
            "port": self.port,
            "allowed": self.allowed.iter().map(Net::to_string).collect::<Vec<_>>(),
            "peers": peers,
            "connections": shared.connections,
            "refused": shared.refused,
        })
    }

    /// The device's WireGuard configuration (wg-quick format), but for its private key and
    /// the gateway's WAN address, which only the household knows.
    fn config(&self, address: std::net::Ipv4Addr) -> String {
        let allowed: Vec<String> = self.allowed.iter().map(Net::to_string).collect();
        format!(
            "[Interface]\nPrivateKey = <this device's private key>\nAddress = {address}/32\n\n\
             [Peer]\nPublicKey = {}\nEndpoint = <the gateway's WAN address>:{}\n\
             AllowedIPs = {}\nPersistentKeepalive = 25\n",
            encode_key(self.public.as_bytes()),
            self.port,
            allowed.join(", ")
        )
    }
}

async fn list(State(page): State<Page>) -> Json<serde_json::Value> {
    Json(page.state())
}

#[derive(Deserialize)]
struct NewPeer {
    name: String,
    public_key: String,
}

async fn add(
    State(page): State<Page>,
    body: Result<Json<NewPeer>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(new)) = body else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "send JSON {\"name\": \"laptop\", \"public_key\": \"<what `wg pubkey` prints>\"}"
                .into(),
        );
    };
    let added = {
        let mut shared = page.lock();
        let added = shared.peers.add(&new.name, &new.public_key, &page.public);
        if added.is_ok() {
            shared.generation += 1;
        }
        added
    };
    match added {
        Ok(peer) => {
            page.wake.notify_one();
            let config = page.config(peer.address);
            (
                StatusCode::CREATED,
                Json(json!({ "peer": peer, "config": config })),
            )
                .into_response()
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, e),
    }
}

async fn remove(State(page): State<Page>, Path(name): Path<String>) -> Response {
    let removed = {
        let mut shared = page.lock();
        let removed = shared.peers.remove(&name);
        if let Ok(true) = removed {
            shared.generation += 1;
            shared.status.remove(&name);
        }
        removed
    };
    match removed {
        Ok(true) => {
            page.wake.notify_one();
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => refuse(
            StatusCode::NOT_FOUND,
            format!("no peer named `{name}`; GET /v1/peers lists them"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn metrics(State(page): State<Page>) -> Json<serde_json::Value> {
    let shared = page.lock();
    let (mut rx, mut tx, mut recent) = (0u64, 0u64, 0usize);
    for s in shared.status.values() {
        rx += s.rx_bytes;
        tx += s.tx_bytes;
        // A WireGuard session lives at most three minutes without a new handshake.
        recent += usize::from(s.last_handshake_s.is_some_and(|t| t < 180));
    }
    Json(json!({
        "peers": shared.peers.list().len(),
        "peers_connected": recent,
        "connections": shared.connections,
        "rx_bytes": rx,
        "tx_bytes": tx,
        "refused": shared.refused,
    }))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index(State(page): State<Page>) -> Html<String> {
    let state = page.state();
    let mut rows = String::new();
    for p in state["peers"].as_array().into_iter().flatten() {
        let status = &p["status"];
        let seen = match status["last_handshake_s"].as_u64() {
            Some(s) => format!("{s} s ago"),
            None => "never".into(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{seen}</td><td>{} / {}</td></tr>\n",
            escape(p["name"].as_str().unwrap_or("")),
            escape(p["address"].as_str().unwrap_or("")),
            escape(p["public_key"].as_str().unwrap_or("")),
            status["rx_bytes"],
            status["tx_bytes"],
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>VPN</title></head><body>\n\
         <h1>Reach home from anywhere</h1>\n\
         <p>The gateway's WireGuard public key: <code id=key>{}</code>, UDP port {} on its WAN address.</p>\n\
         <p>Devices reach: {} — and of those, only the hosts you allowed on the gateway (<code>shg lan vpn HOST</code>).</p>\n\
         <table><tr><th>device</th><th>address</th><th>key</th><th>last handshake</th><th>bytes in / out</th></tr>\n{rows}</table>\n\
         <p>Add a device: <code>curl -X POST -H 'content-type: application/json' -d '{{\"name\":\"laptop\",\"public_key\":\"…\"}}' http://THIS-PAGE/v1/peers</code> gives its configuration.</p>\n\
         </body></html>\n",
        escape(state["public_key"].as_str().unwrap_or("")),
        page.port,
        page.allowed
            .iter()
            .map(Net::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    ))
}
