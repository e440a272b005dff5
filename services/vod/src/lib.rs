//! streamco's peer-assisted video on demand (the papers' headline distributed service).
//!
//! One binary, three roles: `vod peer` runs on each gateway (the package's command), plays
//! titles to the household over HTTP while it downloads them over BitTorrent from the closest
//! gateways, falls back on the origin for what no peer delivers in time, keeps titles in its
//! storage and seeds them; `vod origin` serves the titles (HTTP web seed and a capped
//! BitTorrent seed); `vod tracker` answers each gateway with its own region's peers first.

pub mod bencode;
pub mod bridge;
pub mod http;
pub mod origin;
pub mod peer;
pub mod seed;
pub mod torrent;
pub mod tracker;
pub mod wire;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

/// A BitTorrent session for this service: TCP only, on `listen`, no DHT, no local peer
/// discovery, no UPnP (the tracker is the only way peers meet), upload and download capped
/// (bytes per second).
pub async fn session(
    dir: &Path,
    listen: SocketAddr,
    upload_bps: Option<u32>,
    download_bps: Option<u32>,
) -> anyhow::Result<Arc<librqbit::Session>> {
    let opts = librqbit::SessionOptions {
        dht: None,
        disable_local_service_discovery: true,
        listen: Some(librqbit::ListenerOptions {
            mode: librqbit::ListenerMode::TcpOnly,
            listen_addr: listen,
            enable_upnp_port_forwarding: false,
            // Announced even on a loopback address (librqbit announces none there).
            announce_port: Some(listen.port()),
            ipv4_only: true,
            ..Default::default()
        }),
        ipv4_only: true,
        ratelimits: librqbit::limits::LimitsConfig {
            upload_bps: upload_bps.and_then(NonZeroU32::new),
            download_bps: download_bps.and_then(NonZeroU32::new),
        },
        client_name_and_version: Some(format!("shg-vod {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    };
    librqbit::Session::new_with_opts(dir.to_path_buf(), opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start BitTorrent on {listen}: {e:#}"))
}
