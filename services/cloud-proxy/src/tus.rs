//! A tus 1.0.0 server (core protocol and the `creation` extension, <https://tus.io>): uploads
//! kept in a directory, each as `ID.part` (the bytes received so far: its length is the
//! upload's offset) and `ID.json` (its declared length, metadata and, on the gateway, how far
//! it reached the cloud). A broken PATCH keeps what arrived; the client resumes from the
//! offset a HEAD gives it. The gateway and the cloud both serve it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

pub const VERSION: &str = "1.0.0";

/// What is known of one upload besides its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    /// Declared with `Upload-Length`.
    pub length: u64,
    /// `Upload-Metadata` as sent (comma-separated `key base64value`).
    pub metadata: String,
    /// On the gateway: the cloud's URL of this upload, once created there.
    #[serde(default)]
    pub cloud: Option<String>,
    /// On the gateway: bytes the cloud acknowledged.
    #[serde(default)]
    pub sent: u64,
}

/// One upload as `GET /uploads` shows it to the household.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub id: String,
    pub name: Option<String>,
    pub length: u64,
    pub received: u64,
    pub sent: u64,
    pub done: bool,
}

/// The uploads' directory, and the largest upload it takes.
pub struct Store {
    pub dir: PathBuf,
    pub max_size: u64,
    /// Serialises writes of the `.json` files.
    lock: tokio::sync::Mutex<()>,
    /// Woken when an upload is complete (the gateway's sender waits on it).
    pub complete: tokio::sync::Notify,
}

impl Store {
    pub fn open(dir: &Path, max_size: u64) -> std::io::Result<Arc<Store>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(Store {
            dir: dir.to_path_buf(),
            max_size,
            lock: tokio::sync::Mutex::new(()),
            complete: tokio::sync::Notify::new(),
        }))
    }

    pub fn data(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub fn meta(&self, id: &str) -> Option<Meta> {
        if !valid_id(id) {
            return None;
        }
        let text = std::fs::read(self.meta_path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes `meta` atomically (a crash leaves the old or the new file).
    pub async fn save(&self, meta: &Meta) -> std::io::Result<()> {
        let _guard = self.lock.lock().await;
        let tmp = self.dir.join(format!("{}.json.tmp", meta.id));
        let bytes = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, self.meta_path(&meta.id)).await
    }

    /// Bytes received so far.
    pub fn offset(&self, id: &str) -> u64 {
        std::fs::metadata(self.data(id)).map_or(0, |m| m.len())
    }

    pub fn all(&self) -> Vec<Meta> {
        let mut all: Vec<Meta> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        self.meta(name.strip_suffix(".json")?)
                    })
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file name a client gave in `Upload-Metadata` (`filename` or `name`), if any.
pub fn file_name(metadata: &str) -> Option<String> {
    metadata.split(',').find_map(|pair| {
        let (key, value) = pair.trim().split_once(' ')?;
        matches!(key, "filename" | "name").then(|| decode_base64(value.trim()))?
    })
}

fn decode_base64(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The tus routes under `/files/`, and `GET /uploads` (the household's progress view).
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/files/", on(MethodFilter::OPTIONS, options).post(create))
        .route("/files/{id}", on(MethodFilter::HEAD, head).patch(append))
        .route("/uploads", axum::routing::get(progress))
        .with_state(store)
}

fn tus(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("Tus-Resumable", HeaderValue::from_static(VERSION));
    response
}

fn refuse(status: StatusCode, why: String) -> Response {
    tus((status, why).into_response())
}

/// Every request but OPTIONS must speak tus 1.0.0: the refusal of one that does not.
fn wrong_version(headers: &HeaderMap) -> Option<Response> {
    match headers.get("Tus-Resumable").and_then(|v| v.to_str().ok()) {
        Some(VERSION) => None,
        other => Some(refuse(
            StatusCode::PRECONDITION_FAILED,
            format!("this server speaks tus {VERSION}; the request said {other:?}"),
        )),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn options(State(store): State<Arc<Store>>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("Tus-Version", HeaderValue::from_static(VERSION));
    h.insert("Tus-Extension", HeaderValue::from_static("creation"));
    h.insert("Tus-Max-Size", HeaderValue::from(store.max_size));
    tus(r)
}

async fn create(State(store): State<Arc<Store>>, headers: HeaderMap) -> Response {
    if let Some(r) = wrong_version(&headers) {
        return r;
    }
    let Some(length) = header_u64(&headers, "Upload-Length") else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Upload-Length is missing: give the file's size in bytes".into(),
        );
    };
    if length > store.max_size {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{length} bytes is more than the {} this proxy holds (its storage reservation)",
                store.max_size
            ),
        );
    }
    let metadata = headers
        .get("Upload-Metadata")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let meta = Meta {
        id: new_id(),
        length,
        metadata,
        cloud: None,
        sent: 0,
    };
    let made = async {
        tokio::fs::File::create(store.data(&meta.id)).await?;
        store.save(&meta).await
    };
    if let Err(e) = made.await {
        return refuse(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("cannot keep the upload: {e}"),
        );
    }
    let mut r = StatusCode::CREATED.into_response();
    let location = format!("/files/{}", meta.id);
    r.headers_mut().insert(
        "Location",
        HeaderValue::from_str(&location).expect("hex id"),
    );
    tus(r)
}

async fn head(State(store): State<Arc<Store>>, UrlPath(id): UrlPath<String>) -> Response {
    let Some(meta) = store.meta(&id) else {
        return refuse(StatusCode::NOT_FOUND, format!("no upload {id}"));
    };
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    h.insert("Upload-Offset", HeaderValue::from(store.offset(&id)));
    h.insert("Upload-Length", HeaderValue::from(meta.length));
    h.insert("Cache-Control", HeaderValue::from_static("no-store"));
    tus(r)
}

async fn append(
    State(store): State<Arc<Store>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = wrong_version(&headers) {
        return r;
    }
    let Some(meta) = store.meta(&id) else {
        return refuse(StatusCode::NOT_FOUND, format!("no upload {id}"));
    };
    if headers.get("Content-Type").and_then(|v| v.to_str().ok())
        != Some("application/offset+octet-stream")
    {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a PATCH carries Content-Type: application/offset+octet-stream".into(),
        );
    }
    let offset = store.offset(&id);
    if header_u64(&headers, "Upload-Offset") != Some(offset) {
        return refuse(
            StatusCode::CONFLICT,
            format!("the upload is at offset {offset}; HEAD it and resume from there"),
        );
    }
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(store.data(&id))
        .await;
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")),
    };
    let mut body = body;
    let mut at = offset;
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        let chunk = match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        };
        if at + chunk.len() as u64 > meta.length {
            broken = Some(format!("more bytes than the {} declared", meta.length));
            break;
        }
        if let Err(e) = file.write_all(&chunk).await {
            broken = Some(e.to_string());
            break;
        }
        at += chunk.len() as u64;
    }
    // What arrived is kept, whole, for the client to resume after.
    let _ = file.sync_data().await;
    if let Some(why) = broken {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("the upload stopped at {at}: {why}"),
        );
    }
    if at == meta.length {
        store.complete.notify_one();
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert("Upload-Offset", HeaderValue::from(at));
    tus(r)
}

async fn progress(State(store): State<Arc<Store>>) -> Json<Vec<Progress>> {
    Json(
        store
            .all()
            .into_iter()
            .map(|m| {
                let received = store.offset(&m.id);
                Progress {
                    name: file_name(&m.metadata),
                    done: received == m.length && m.sent == m.length,
                    id: m.id,
                    length: m.length,
                    received,
                    sent: m.sent,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_the_file() {
        // "report.pdf" in base64
        assert_eq!(
            file_name("filetype dGV4dA==,filename cmVwb3J0LnBkZg=="),
            Some("report.pdf".into())
        );
        assert_eq!(file_name(""), None);
    }

    #[test]
    fn ids_are_hex_and_checked() {
        let id = new_id();
        assert!(valid_id(&id), "{id}");
        assert!(!valid_id("../../etc/passwd"));
    }
}
