//! The HTTP API: translates requests into calls on [`Agent`] and results into JSON.
//!
//! Served over the Unix socket `STATE_DIR/api.sock` (mode 0600: only root reaches it).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::exec_frames;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Agent, AgentError};

/// An [`AgentError`] on its way to the client.
pub struct ApiError(AgentError);

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::Exists(_) => StatusCode::CONFLICT,
            AgentError::BadPackage(_) => StatusCode::BAD_REQUEST,
            AgentError::BadManifest(_) => StatusCode::BAD_REQUEST,
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Refused(_) => StatusCode::CONFLICT,
            AgentError::StartFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AgentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &self.0 {
            AgentError::Internal(detail) => {
                tracing::error!("internal error: {detail}");
                "internal error in the gateway agent; its log has the details".to_string()
            }
            other => other.to_string(),
        };
        let detail = match &self.0 {
            AgentError::Refused(refusal) => serde_json::to_value(refusal).ok(),
            _ => None,
        };
        let body = api::ErrorBody {
            code: self.0.code().to_string(),
            message,
            detail,
        };
        (status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/gateway", get(gateway))
        .route("/v1/gateway/capacity", get(capacity))
        .route("/v1/stats", get(stats))
        .route("/v1/services", get(list).post(install))
        .route("/v1/services/{name}", get(detail).delete(remove))
        .route("/v1/services/{name}/start", post(start))
        .route("/v1/services/{name}/stop", post(stop))
        .route("/v1/services/{name}/restart", post(restart))
        .route("/v1/services/{name}/priority", post(set_priority))
        .route("/v1/services/{name}/logs", get(logs))
        .route("/v1/services/{name}/exec", post(exec))
        .route("/v1/events", get(events))
        .fallback(|| async {
            let body = api::ErrorBody {
                code: "not-found".into(),
                message: "no such API path; see `shg --help`".into(),
                detail: None,
            };
            (StatusCode::NOT_FOUND, Json(body))
        })
        // Packages stream to disk with their own cap; JSON bodies stay small.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(agent)
}

/// Binds the API socket, replacing a stale one, readable by root only.
pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| AgentError::io(path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| AgentError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| AgentError::io(path, e))?;
    Ok(listener)
}

pub async fn serve(
    agent: Arc<Agent>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    axum::serve(listener, router(agent))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| AgentError::Internal(format!("API server failed: {e}")))
}

pub(crate) fn event_view(e: state::EventRecord) -> api::Event {
    api::Event {
        id: e.id,
        time_ms: e.time_ms,
        service: e.service,
        kind: e.kind,
        message: e.message,
    }
}

async fn gateway(State(agent): State<Arc<Agent>>) -> ApiResult<Json<api::GatewayInfo>> {
    Ok(Json(api::GatewayInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        state_dir: agent.state_dir().display().to_string(),
        services: agent.list()?.len(),
        pid: std::process::id(),
    }))
}

async fn capacity(State(agent): State<Arc<Agent>>) -> ApiResult<Json<api::CapacityView>> {
    Ok(Json(agent.capacity()?))
}

async fn stats(State(agent): State<Arc<Agent>>) -> ApiResult<Json<api::StatsView>> {
    let stats = tokio::task::spawn_blocking(move || agent.stats())
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(Json(stats))
}

async fn list(State(agent): State<Arc<Agent>>) -> ApiResult<Json<Vec<api::ServiceSummary>>> {
    Ok(Json(agent.list()?))
}

async fn detail(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceDetail>> {
    Ok(Json(agent.detail(&name)?))
}

#[derive(Deserialize)]
struct InstallQuery {
    start: Option<bool>,
    dry_run: Option<bool>,
    /// Services the household agreed to stop to make room, comma-separated.
    stop: Option<String>,
}

#[derive(Deserialize)]
struct StartQuery {
    dry_run: Option<bool>,
    stop: Option<String>,
}

/// `stop=a,b` as a list; absent or empty is no list.
fn stop_list(q: &Option<String>) -> Vec<String> {
    q.as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect()
}

async fn install(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<InstallQuery>,
    body: Body,
) -> ApiResult<Response> {
    let upload = agent
        .layout
        .tmp()
        .join(format!("upload-{}.tar", crate::install::unique()));
    let result = async {
        save_body(body, &upload, agent.cfg.max_package).await?;
        if q.dry_run.unwrap_or(false) {
            return agent
                .check_install(&upload)
                .await
                .map(|v| Json(v).into_response());
        }
        let stop = stop_list(&q.stop);
        if !stop.is_empty() && q.start == Some(false) {
            return Err(AgentError::BadRequest(
                "`stop` makes room for a service to run; it cannot go with `start=false`".into(),
            ));
        }
        let detail = agent
            .install(&upload, q.start.unwrap_or(true), &stop)
            .await?;
        Ok((StatusCode::CREATED, Json(detail)).into_response())
    }
    .await;
    let _ = tokio::fs::remove_file(&upload).await;
    Ok(result?)
}

/// Streams a request body into `path`, refusing more than `max` bytes.
async fn save_body(body: Body, path: &Path, max: u64) -> Result<(), AgentError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| AgentError::io(path, e))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| AgentError::BadRequest(format!("the upload broke off: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(AgentError::BadPackage(format!(
                "the package is larger than the {} MiB the gateway accepts",
                max >> 20
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| AgentError::io(path, e))?;
    }
    if total == 0 {
        return Err(AgentError::BadPackage(
            "the upload is empty; send the package file as the request body".into(),
        ));
    }
    file.flush().await.map_err(|e| AgentError::io(path, e))?;
    Ok(())
}

async fn start(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<StartQuery>,
) -> ApiResult<Response> {
    if q.dry_run.unwrap_or(false) {
        return Ok(Json(agent.check_start(&name)?).into_response());
    }
    let stop = stop_list(&q.stop);
    Ok(Json(agent.start_making_room(&name, &stop).await?).into_response())
}

async fn stop(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceSummary>> {
    Ok(Json(agent.stop(&name).await?))
}

async fn restart(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceSummary>> {
    Ok(Json(agent.restart(&name).await?))
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    agent.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_priority(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::PriorityRequest>, JsonRejection>,
) -> ApiResult<Json<api::ServiceSummary>> {
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("priority request: {}", e.body_text())))?;
    Ok(Json(agent.set_priority(&name, req.priority).await?))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<i64>,
    service: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<api::Event>>> {
    let limit = q.limit.unwrap_or(200).min(10_000);
    let events = agent
        .store()
        .events(q.since.unwrap_or(0), q.service.as_deref(), limit)
        .map_err(AgentError::from)?;
    Ok(Json(events.into_iter().map(event_view).collect()))
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
    follow: Option<bool>,
}

fn log_json(line: &runtime::logfile::LogLine) -> Bytes {
    let entry = api::LogEntry {
        time_ms: line.time_ms,
        stream: match line.stream {
            runtime::logfile::Stream::Stdout => "stdout".into(),
            runtime::logfile::Stream::Stderr => "stderr".into(),
        },
        text: line.text.clone(),
    };
    let mut text = serde_json::to_vec(&entry).expect("log entries serialize");
    text.push(b'\n');
    Bytes::from(text)
}

async fn logs(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    agent.store().get(&name).map_err(AgentError::from)?;
    let dir = agent.layout.service(&name).logs();
    let read = |dir: &Path| runtime::logfile::read_all(dir).unwrap_or_default();
    let mut lines = read(&dir);
    if let Some(tail) = q.tail {
        lines.drain(..lines.len().saturating_sub(tail));
    }
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !q.follow.unwrap_or(false) {
        let body: Vec<u8> = lines.iter().flat_map(|l| log_json(l).to_vec()).collect();
        return Ok((headers, body).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        for line in &lines {
            if tx.send(Ok(log_json(line))).await.is_err() {
                return;
            }
        }
        // The log only grows at its end and loses whole segments at its start, so the last
        // line sent is found again at or before its old index.
        let mut last_idx = lines.len().saturating_sub(1);
        let mut last_line = lines.last().cloned();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx.is_closed() || !agent.store().find(&name).is_ok_and(|r| r.is_some()) {
                return;
            }
            let fresh = read(&dir);
            let start = match &last_line {
                None => 0,
                Some(sent) => (0..=last_idx.min(fresh.len().saturating_sub(1)))
                    .rev()
                    .find(|&i| fresh.get(i) == Some(sent))
                    .map(|i| i + 1)
                    .unwrap_or_else(|| {
                        fresh
                            .iter()
                            .position(|l| l.time_ms > sent.time_ms)
                            .unwrap_or(fresh.len())
                    }),
            };
            for line in &fresh[start..] {
                if tx.send(Ok(log_json(line))).await.is_err() {
                    return;
                }
            }
            if fresh.len() > start {
                last_idx = fresh.len() - 1;
                last_line = fresh.last().cloned();
            }
        }
    });
    Ok((headers, Body::from_stream(ReceiverStream::new(rx))).into_response())
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::ExecRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("exec request: {}", e.body_text())))?;
    if req.command.is_empty() {
        return Err(AgentError::BadRequest(
            "exec request: `command` is empty; give the program to run".into(),
        )
        .into());
    }
    let rec = agent.store().get(&name).map_err(AgentError::from)?;
    if rec.pid.is_none() {
        return Err(AgentError::Conflict(format!(
            "`{name}` is not running; start it with `shg start {name}`"
        ))
        .into());
    }
    let manifest = crate::lifecycle::manifest_of(&rec)?;
    let (uid, gid) = manifest.run.user.map(|u| (u.uid, u.gid)).unwrap_or((0, 0));
    let mut child = agent
        .exec_helper(&name, uid, gid, &req.command)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::Internal(format!("cannot run the runtime helper: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(16);
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let (mut out_buf, mut err_buf) = (vec![0u8; 16384], vec![0u8; 16384]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let frame = tokio::select! {
                // The client hung up: end the command inside the container too.
                _ = tx.closed() => {
                    crate::lifecycle::end_helper(&mut child).await;
                    return;
                }
                n = stdout.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => { out_open = false; None }
                    Ok(n) => Some(exec_frames::encode(exec_frames::STDOUT, &out_buf[..n])),
                },
                n = stderr.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => { err_open = false; None }
                    Ok(n) => Some(exec_frames::encode(exec_frames::STDERR, &err_buf[..n])),
                },
            };
            if let Some(frame) = frame {
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    crate::lifecycle::end_helper(&mut child).await;
                    return;
                }
            }
        }
        let code = match child.wait().await {
            Ok(s) => s
                .code()
                .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
            Err(_) => 126,
        };
        let _ = tx
            .send(Ok(Bytes::from(exec_frames::encode_exit(code))))
            .await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.shg.exec-frames")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
