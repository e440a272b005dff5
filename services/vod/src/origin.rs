//! `vod origin`: the provider's origin. It serves each title over HTTP with `Range` (the
//! web seed of BEP 19 that every torrent names, and the source of last resort of the
//! gateways), the titles' torrent files and the catalog, and seeds the titles over
//! BitTorrent with a capped upload, so gateways get pieces from each other first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::torrent::{self, Torrent};

/// A title as the catalog lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Title {
    pub name: String,
    pub length: u64,
    pub info_hash: String,
    /// The provider lists it as popular: gateways prefetch it when idle.
    pub popular: bool,
    /// Its bitrate in bits per second, when the provider declared it: gateways then know
    /// how far ahead a player is and wait for peers accordingly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u64>,
}

/// What the origin has served, for the provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OriginStats {
    /// Bytes of titles served over HTTP (web seed, last resort, or plain streaming).
    pub http_bytes: u64,
    /// Bytes uploaded to peers by the origin's BitTorrent seed.
    pub seed_bytes: u64,
}

pub struct Origin {
    dir: PathBuf,
    titles: BTreeMap<String, (Torrent, bool)>,
    http_bytes: AtomicU64,
    seed: Option<Arc<crate::seed::Seed>>,
}

/// How the origin is set up.
pub struct OriginConfig {
    /// The directory of titles (one file each).
    pub dir: PathBuf,
    /// The URL gateways reach this origin at (e.g. `http://203.0.113.10:8080`).
    pub public_url: String,
    /// The tracker's base URL (e.g. `http://203.0.113.11:6969`).
    pub tracker_url: String,
    /// Titles gateways should prefetch.
    pub popular: Vec<String>,
    /// Titles' bitrates, bits per second.
    pub bitrates: Vec<(String, u64)>,
    /// Where the BitTorrent seed listens; `None`: no seed (web seed only).
    pub seed_listen: Option<SocketAddr>,
    /// The seed's upload cap, bytes per second.
    pub seed_upload_bps: Option<u32>,
    /// The seed sends each piece into a region once (`crate::seed`).
    pub super_seed: bool,
}

impl Origin {
    /// Reads the titles of `cfg.dir`, makes their torrents and starts seeding them.
    pub async fn open(cfg: OriginConfig) -> anyhow::Result<Arc<Origin>> {
        let announce = format!("{}/announce", cfg.tracker_url.trim_end_matches('/'));
        let web_seed = format!("{}/titles/", cfg.public_url.trim_end_matches('/'));
        let mut titles = BTreeMap::new();
        let mut names: Vec<String> = std::fs::read_dir(&cfg.dir)
            .map_err(|e| anyhow::anyhow!("cannot read the titles in {}: {e}", cfg.dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| torrent::valid_name(n))
            .collect();
        names.sort();
        for name in names {
            let path = cfg.dir.join(&name);
            let t = tokio::task::spawn_blocking({
                let (announce, web_seed, name) = (announce.clone(), web_seed.clone(), name.clone());
                let bitrate = cfg
                    .bitrates
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, b)| *b);
                move || torrent::make(&path, &name, &announce, &web_seed, bitrate)
            })
            .await??;
            let popular = cfg.popular.contains(&name);
            titles.insert(name, (t, popular));
        }
        for (b, _) in &cfg.bitrates {
            if !titles.contains_key(b) {
                anyhow::bail!(
                    "--bitrate names `{b}`, which is not in {}; add its file or drop it",
                    cfg.dir.display()
                );
            }
        }
        for p in &cfg.popular {
            if !titles.contains_key(p) {
                anyhow::bail!(
                    "the popular title `{p}` is not in {}; add its file or drop it from --popular",
                    cfg.dir.display()
                );
            }
        }
        let seed = match cfg.seed_listen {
            None => None,
            Some(listen) => {
                let seeded = titles
                    .values()
                    .map(|(t, _)| crate::seed::SeedTitle {
                        info_hash: t.info_hash,
                        path: cfg.dir.join(&t.name),
                        length: t.length,
                        piece_length: torrent::PIECE_LENGTH,
                    })
                    .collect();
                Some(
                    crate::seed::Seed::start(
                        seeded,
                        listen,
                        &cfg.tracker_url,
                        cfg.seed_upload_bps,
                        cfg.super_seed,
                    )
                    .await?,
                )
            }
        };
        Ok(Arc::new(Origin {
            dir: cfg.dir,
            titles,
            http_bytes: AtomicU64::new(0),
            seed,
        }))
    }

    pub fn catalog(&self) -> Vec<Title> {
        self.titles
            .values()
            .map(|(t, popular)| Title {
                name: t.name.clone(),
                length: t.length,
                info_hash: hex::encode(t.info_hash),
                popular: *popular,
                bitrate: t.bitrate,
            })
            .collect()
    }

    pub fn stats(&self) -> OriginStats {
        let seed_bytes = self.seed.as_ref().map_or(0, |s| s.uploaded_bytes());
        OriginStats {
            http_bytes: self.http_bytes.load(Ordering::Relaxed),
            seed_bytes,
        }
    }

    fn path_of(&self, name: &str) -> Option<(PathBuf, u64)> {
        let (t, _) = self.titles.get(name)?;
        Some((self.dir.join(FsPath::new(&t.name)), t.length))
    }
}

/// The origin's routes: `/titles/NAME`, `/torrents/NAME`, `/catalog`, `/stats`.
pub fn router(origin: Arc<Origin>) -> Router {
    Router::new()
        .route("/titles/{name}", get(title))
        .route("/torrents/{name}", get(torrent_file))
        .route(
            "/catalog",
            get(|State(o): State<Arc<Origin>>| async move { Json(o.catalog()) }),
        )
        .route(
            "/stats",
            get(|State(o): State<Arc<Origin>>| async move { Json(o.stats()) }),
        )
        .with_state(origin)
}

fn no_title(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no title `{name}` here; GET /catalog lists the titles"),
    )
        .into_response()
}

async fn torrent_file(State(o): State<Arc<Origin>>, Path(name): Path<String>) -> Response {
    match o.titles.get(&name) {
        Some((t, _)) => (
            [("content-type", "application/x-bittorrent")],
            t.bytes.clone(),
        )
            .into_response(),
        None => no_title(&name),
    }
}

async fn title(
    State(o): State<Arc<Origin>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some((path, len)) = o.path_of(&name) else {
        return no_title(&name);
    };
    let range = match crate::http::requested_range(&headers, len) {
        Ok(r) => r,
        Err(crate::http::Unsatisfiable) => return crate::http::unsatisfiable(len),
    };
    let (start, end) = range.unwrap_or((0, len - 1));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read `{name}`: {e}"),
            )
                .into_response()
        }
    };
    if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read `{name}`: {e}"),
        )
            .into_response();
    }
    let (status, head) = crate::http::head(range, len, crate::http::content_type(&name));
    let counted = Counted {
        inner: tokio_util::io::ReaderStream::new(file.take(end - start + 1)),
        origin: o.clone(),
    };
    (status, head, Body::from_stream(counted)).into_response()
}

/// A body stream that adds what it sends to the origin's HTTP byte count.
struct Counted<S> {
    inner: S,
    origin: Arc<Origin>,
}

impl<S> futures_core::Stream for Counted<S>
where
    S: futures_core::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(b))) = &next {
            self.origin
                .http_bytes
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        next
    }
}
