//! `vod peer|origin|tracker`: see the crate's documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vod", about = "streamco's peer-assisted video on demand")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// The gateway's peer (what the package runs): plays titles to the household while it
    /// fetches them from the closest gateways, the origin as last resort.
    Peer {
        /// Where the household's players and the provider's metrics are served.
        #[arg(long, default_value = "0.0.0.0:8090")]
        listen: SocketAddr,
        /// Where BitTorrent listens (publish this port on the WAN side).
        #[arg(long, default_value = "0.0.0.0:6881")]
        bt_listen: SocketAddr,
        /// The origin's URL.
        #[arg(long, env = "VOD_ORIGIN")]
        origin: String,
        /// The tracker's URL.
        #[arg(long, env = "VOD_TRACKER")]
        tracker: String,
        /// This gateway's region (its access network); without it, the tracker places the
        /// gateway by its address.
        #[arg(long, env = "VOD_REGION")]
        region: Option<String>,
        /// The cache of titles.
        #[arg(long, default_value = "/data/titles")]
        cache: PathBuf,
        /// Bytes of titles the cache may hold.
        #[arg(long, default_value_t = 256 << 20)]
        cache_bytes: u64,
        /// Upload cap to peers, bytes per second.
        #[arg(long)]
        upload_bps: Option<u32>,
        /// Download cap from peers, bytes per second.
        #[arg(long)]
        download_bps: Option<u32>,
        /// How long a read waits for peers before the origin serves it, ms.
        #[arg(long, default_value_t = 1500)]
        deadline_ms: u64,
        /// Do not prefetch the popular titles.
        #[arg(long)]
        no_prefetch: bool,
    },
    /// The provider's origin: the titles over HTTP (web seed) and a capped BitTorrent seed.
    Origin {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The directory of titles.
        #[arg(long)]
        titles: PathBuf,
        /// The URL gateways reach this origin at.
        #[arg(long)]
        public_url: String,
        /// The tracker's URL.
        #[arg(long)]
        tracker: String,
        /// A title gateways prefetch (repeat for more).
        #[arg(long)]
        popular: Vec<String>,
        /// A title's bitrate, `NAME=BITS_PER_SECOND` (repeat for more): gateways then wait
        /// for peers as long as the player's buffer allows before asking the origin.
        #[arg(long, value_parser = parse_bitrate)]
        bitrate: Vec<(String, u64)>,
        /// Where the BitTorrent seed listens; without it, the origin is a web seed only.
        #[arg(long)]
        seed_listen: Option<SocketAddr>,
        /// The seed's upload cap, bytes per second.
        #[arg(long)]
        seed_upload_bps: Option<u32>,
        /// The seed offers each piece to one peer per region, which pass it on (after
        /// BEP 16), instead of every piece to every peer.
        #[arg(long)]
        super_seed: bool,
    },
    /// The tracker: each gateway gets its region's peers first.
    Tracker {
        #[arg(long, default_value = "0.0.0.0:6969")]
        listen: SocketAddr,
        /// An address range and its region, `CIDR=NAME` (repeat for more), for clients whose
        /// announce URL names none.
        #[arg(long)]
        region: Vec<vod::tracker::RegionRange>,
    },
}

fn parse_bitrate(text: &str) -> Result<(String, u64), String> {
    let (name, bits) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=BITS_PER_SECOND (e.g. film.mp4=2500000)"))?;
    let bits: u64 = bits
        .parse()
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("`{bits}` is not a bitrate in bits per second above 0"))?;
    Ok((name.to_string(), bits))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librqbit=warn,librqbit_core=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse().role).await {
        eprintln!("vod: {e:#}");
        std::process::exit(1);
    }
}

async fn run(role: Role) -> anyhow::Result<()> {
    let (listen, app) = match role {
        Role::Peer {
            listen,
            bt_listen,
            origin,
            tracker,
            region,
            cache,
            cache_bytes,
            upload_bps,
            download_bps,
            deadline_ms,
            no_prefetch,
        } => {
            let peer = vod::peer::Peer::open(vod::peer::PeerConfig {
                origin_url: origin,
                tracker_url: tracker,
                region,
                cache_dir: cache,
                cache_bytes,
                bt_listen,
                upload_bps,
                download_bps,
                deadline: Duration::from_millis(deadline_ms),
                prefetch: !no_prefetch,
            })
            .await?;
            vod::peer::spawn_prefetch(&peer);
            (listen, vod::peer::router(peer))
        }
        Role::Origin {
            listen,
            titles,
            public_url,
            tracker,
            popular,
            bitrate,
            seed_listen,
            seed_upload_bps,
            super_seed,
        } => {
            let origin = vod::origin::Origin::open(vod::origin::OriginConfig {
                dir: titles,
                public_url,
                tracker_url: tracker,
                popular,
                bitrates: bitrate,
                seed_listen,
                seed_upload_bps,
                super_seed,
            })
            .await?;
            (listen, vod::origin::router(origin))
        }
        Role::Tracker { listen, region } => (
            listen,
            vod::tracker::router(vod::tracker::Tracker::new(region)),
        ),
    };
    let socket = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!("serving on {listen}");
    axum::serve(
        socket,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
