//! `surveillance --data DIR [--lan 0.0.0.0:8090] [--wan 0.0.0.0:8091] [--keep 100] [--max-bytes 16777216]`
//!
//! LAN side: `PUT /snapshot` (the camera), `GET /`, `/latest.jpg`, `/events`, and
//! `POST /password` (the household sets the remote login). WAN side: `GET /`, `/latest.jpg`,
//! `/events`, behind HTTP Basic with that password; nothing at all until one is set.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use axum::Router;
use surveillance::{basic_password, Recorder, Throttle};

const USAGE: &str = "usage: surveillance --data DIR [--lan 0.0.0.0:8090] [--wan 0.0.0.0:8091] [--keep 100] [--max-bytes 16777216]";

type Shared = Arc<Mutex<Recorder>>;

/// The recorder and the WAN side's failed logins.
#[derive(Clone)]
struct Remote {
    recorder: Shared,
    throttle: Arc<Mutex<Throttle>>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("surveillance: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let (mut data, mut lan, mut wan, mut keep, mut max_bytes) = (
        None,
        "0.0.0.0:8090".to_string(),
        "0.0.0.0:8091".to_string(),
        100usize,
        16u64 << 20,
    );
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data" => data = Some(PathBuf::from(value)),
            "--lan" => lan = value,
            "--wan" => wan = value,
            "--keep" => {
                keep = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not a count"))?
            }
            "--max-bytes" => {
                max_bytes = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not bytes"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let data = data.ok_or("--data is missing")?;
    let recorder =
        Recorder::open(&data, keep, max_bytes).map_err(|e| format!("{}: {e}", data.display()))?;
    let shared: Shared = Arc::new(Mutex::new(recorder));
    let limit = DefaultBodyLimit::max(max_bytes as usize + 1);
    let lan_app = Router::new()
        .route("/", get(page))
        .route("/latest.jpg", get(latest))
        .route("/events", get(events))
        .route("/snapshot", put(snapshot).post(snapshot))
        .route("/password", post(password))
        .layer(limit)
        .with_state(shared.clone());
    let wan_app = Router::new()
        .route("/", get(page))
        .route("/latest.jpg", get(latest))
        .route("/events", get(events))
        .layer(axum::middleware::from_fn_with_state(
            Remote {
                recorder: shared.clone(),
                throttle: Arc::new(Mutex::new(Throttle::default())),
            },
            login,
        ))
        .with_state(shared);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let lan_listener = tokio::net::TcpListener::bind(&lan)
            .await
            .map_err(|e| format!("cannot listen on {lan}: {e}"))?;
        let wan_listener = tokio::net::TcpListener::bind(&wan)
            .await
            .map_err(|e| format!("cannot listen on {wan}: {e}"))?;
        eprintln!("surveillance: LAN page and camera on {lan}, remote page on {wan} (login)");
        let remote = tokio::spawn(async move { axum::serve(wan_listener, wan_app).await });
        let local = axum::serve(lan_listener, lan_app).await;
        remote.abort();
        local.map_err(|e| e.to_string())
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Recorder> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn page(State(s): State<Shared>) -> Html<String> {
    Html(lock(&s).page())
}

async fn latest(State(s): State<Shared>) -> Response {
    match lock(&s).latest() {
        Some(jpeg) => ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response(),
        None => (StatusCode::NOT_FOUND, "no picture yet").into_response(),
    }
}

async fn events(State(s): State<Shared>) -> Json<Vec<surveillance::Event>> {
    Json(lock(&s).events.iter().cloned().collect())
}

async fn snapshot(State(s): State<Shared>, body: Bytes) -> Response {
    match lock(&s).record(&body, now_ms()) {
        Ok(Some(e)) => {
            eprintln!("surveillance: {} ({})", e.what, e.picture);
            StatusCode::CREATED.into_response()
        }
        Ok(None) => StatusCode::CREATED.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn password(State(s): State<Shared>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).trim().to_string();
    match lock(&s).set_password(&text) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// The WAN side's gate: the household's password, or nothing; five wrong tries a minute.
async fn login(
    State(remote): State<Remote>,
    headers: HeaderMap,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let now = now_ms();
    if !remote
        .throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allowed(now)
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            "too many wrong passwords; try again in a minute",
        )
            .into_response();
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_password);
    let verdict = lock(&remote.recorder).check_password(given.as_deref().unwrap_or(""));
    match (verdict, given) {
        (None, _) => (
            StatusCode::FORBIDDEN,
            "remote viewing is off until the household sets a password on the LAN page",
        )
            .into_response(),
        (Some(true), Some(_)) => next.run(request).await,
        (Some(_), given) => {
            if given.is_some() {
                remote
                    .throttle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failed(now);
            }
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"camera\"")],
                "log in with the household's password",
            )
                .into_response()
        }
    }
}
