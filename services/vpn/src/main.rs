//! `vpn --data DIR [--listen 0.0.0.0:51820] [--page 0.0.0.0:8095] [--tunnel 10.200.0.1]
//! [--allow CIDR]...`
//!
//! WireGuard on UDP `--listen` (publish it on the WAN side); the household's page on
//! `--page` (LAN side). `--allow` (repeatable) narrows what the tunnel reaches; by default the
//! private ranges, and of those only what the gateway's firewall lets the service reach.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use boringtun::x25519::PublicKey;
use tokio::sync::Notify;
use vpn::page::{self, Page};
use vpn::peers::{load_or_create_secret, Peers};
use vpn::tunnel::{private_ranges, Net, Refused, Shared, Tunnel};

const USAGE: &str = "usage: vpn --data DIR [--listen 0.0.0.0:51820] [--page 0.0.0.0:8095] [--tunnel 10.200.0.1] [--allow CIDR]...";

fn main() {
    if let Err(e) = run() {
        eprintln!("vpn: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut data = None;
    let mut listen: SocketAddr = ([0, 0, 0, 0], 51820).into();
    let mut page_addr: SocketAddr = ([0, 0, 0, 0], 8095).into();
    let mut tunnel = Ipv4Addr::new(10, 200, 0, 1);
    let mut allowed = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| format!("{flag}: `{v}` is not ADDRESS:PORT"))
        };
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value)),
            "--listen" => listen = addr(&value)?,
            "--page" => page_addr = addr(&value)?,
            "--tunnel" => {
                tunnel = value
                    .parse()
                    .map_err(|_| format!("--tunnel: `{value}` is not an IPv4 address"))?
            }
            "--allow" => allowed.push(Net::parse(&value).map_err(|e| format!("--allow: {e}"))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let data = data.ok_or("--data is missing")?;
    if allowed.is_empty() {
        allowed = private_ranges();
    }
    let secret = load_or_create_secret(&data.join("key"))
        .map_err(|e| format!("{}: {e}", data.join("key").display()))?;
    let peers = Peers::load(data.join("peers.json"), tunnel).map_err(|e| e.to_string())?;
    let shared = Arc::new(Mutex::new(Shared {
        peers,
        generation: 0,
        status: Default::default(),
        refused: Refused::default(),
        connections: 0,
    }));
    let wake = Arc::new(Notify::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let udp = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("WireGuard on {listen}: {e}"))?;
        let page = Page {
            shared: shared.clone(),
            wake: wake.clone(),
            public: PublicKey::from(&secret),
            port: listen.port(),
            allowed: allowed.clone(),
        };
        let http = tokio::net::TcpListener::bind(page_addr)
            .await
            .map_err(|e| format!("page on {page_addr}: {e}"))?;
        eprintln!("vpn: WireGuard on udp {listen}, page on {page_addr}, tunnel {tunnel}/24");
        tokio::spawn(async move {
            let _ = axum::serve(http, page::router(page)).await;
        });
        Tunnel {
            secret,
            udp,
            address: tunnel,
            allowed,
            shared,
            wake,
        }
        .run()
        .await
        .map_err(|e| format!("WireGuard socket: {e}"))
    })
}
