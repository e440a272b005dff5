//! The HTTP API: translates requests into calls on [`Agent`] and results into JSON.
//!
//! Served over the Unix socket `STATE_DIR/api.sock` (mode 0600: only root reaches it) and,
//! with `--listen`, over TCP with TLS. Every route but `/openapi.json` goes through
//! `authenticate`, and every handler checks the caller's realm (`auth`) before acting.
//! The web console's routes (`console`) are merged in here; its pages call this same API.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api::exec_frames;
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::Method;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{middleware, Extension, Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{GatewayAction, Principal, ServiceAction};
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
            AgentError::Untrusted(_) => StatusCode::FORBIDDEN,
            AgentError::BadManifest(_) => StatusCode::BAD_REQUEST,
            AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Refused(_) => StatusCode::CONFLICT,
            AgentError::StartFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AgentError::Forbidden(_) => StatusCode::FORBIDDEN,
            AgentError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AgentError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            AgentError::NoToken(_) | AgentError::NoTrust(_) => StatusCode::NOT_FOUND,
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

/// How a request reached the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket (mode 0600): root on the gateway, the operator unless a token says
    /// otherwise.
    Local,
    /// TCP with TLS: a token is required.
    Remote,
}

/// The OpenAPI document of this API, kept in the repository beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub fn router(agent: Arc<Agent>, transport: Transport) -> Router {
    let guarded = Router::new()
        .route("/v1/gateway", get(gateway))
        .route("/v1/gateway/capacity", get(capacity))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/v1/services", get(list).post(install))
        .route("/v1/services/{name}", get(detail).delete(remove))
        .route("/v1/services/{name}/start", post(start))
        .route("/v1/services/{name}/stop", post(stop))
        .route("/v1/services/{name}/restart", post(restart))
        .route("/v1/services/{name}/priority", post(set_priority))
        .route("/v1/services/{name}/update", post(update))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/services/{name}/logs", get(logs))
        .route("/v1/services/{name}/exec", post(exec))
        .route("/v1/events", get(events))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/audit", get(audit))
        .route("/v1/pull", post(pull))
        .route("/v1/trust", get(trust_list).post(trust_add))
        .route("/v1/trust/{key_id}", delete(trust_remove))
        .route_layer(middleware::from_fn_with_state(
            (agent.clone(), transport),
            authenticate,
        ));
    Router::new()
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(guarded)
        .merge(crate::console::router(agent.clone(), transport))
        .fallback(|| async {
            let body = api::ErrorBody {
                code: "not-found".into(),
                message: "no such API path; `GET /openapi.json` lists them".into(),
                detail: None,
            };
            (StatusCode::NOT_FOUND, Json(body))
        })
        // Packages stream to disk with their own cap; JSON bodies stay small.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::map_response(json_errors))
        .with_state(agent)
}

/// Rejections made by axum itself (a query or path that does not parse, a wrong method, a
/// body too large) come as plain text; every error of this API is an [`api::ErrorBody`].
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    // axum says 422 for a body of the right syntax and the wrong shape: a bad request here.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            "this path does not take that method; `GET /openapi.json` lists what each takes".into()
        }
        (_, true) => status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_string(),
        (_, false) => text,
    };
    let body = api::ErrorBody {
        code: code.into(),
        message,
        detail: None,
    };
    (status, Json(body)).into_response()
}

/// The caller: the token's principal, else the console session's (its token looked up
/// again), else the pinned client certificate's, else the operator on the local socket; a
/// remote caller with none of them is refused.
fn identify(
    agent: &Agent,
    token: Option<String>,
    session: Option<&str>,
    cert: Option<crate::tls::ClientCert>,
    transport: Transport,
) -> Result<(Principal, Credential), AgentError> {
    if let Some(token) = token {
        let hash = crate::auth::token_hash(&token);
        let who = agent.principal_by_hash(&hash)?.ok_or_else(|| {
            AgentError::Unauthorized(
                "the token is not valid or was revoked; ask the gateway's operator for one \
                 (`shg token create`)"
                    .into(),
            )
        })?;
        return Ok((who, Credential::stored(hash)));
    }
    if let Some(id) = session {
        let ended = || {
            AgentError::Unauthorized(
                "the console session ended (logged out, idle for 12 hours, the agent restarted \
                 or its token was revoked); log in again"
                    .into(),
            )
        };
        let found = agent.sessions.lookup(id).ok_or_else(ended)?;
        let who = agent.principal_by_hash(&found.hash)?.ok_or_else(ended)?;
        return Ok((
            who,
            Credential {
                hash: Some(found.hash),
                session: Some(id.to_string()),
            },
        ));
    }
    if let Some(crate::tls::ClientCert(fingerprint)) = cert {
        let hash = format!("{}{fingerprint}", state::CERT_PREFIX);
        let who = agent.principal_by_hash(&hash)?.ok_or_else(|| {
            AgentError::Unauthorized(format!(
                "the client certificate (sha256 {fingerprint}) is not registered; the \
                 operator registers it with `shg token create --cert FILE`"
            ))
        })?;
        return Ok((who, Credential::stored(hash)));
    }
    match transport {
        Transport::Local => Ok((
            Principal::Operator,
            Credential {
                hash: None,
                session: None,
            },
        )),
        Transport::Remote => Err(AgentError::Unauthorized(
            "this API needs a token (`Authorization: Bearer TOKEN`; the CLI reads SHG_TOKEN) \
             or a registered client certificate"
                .into(),
        )),
    }
}

/// What the caller authenticated with: as stored (a token's hash or a pinned certificate),
/// or None for root on the local socket, and the console session it came through, if any;
/// long streams check it is still live.
#[derive(Debug, Clone)]
pub(crate) struct Credential {
    hash: Option<String>,
    session: Option<String>,
}

impl Credential {
    fn stored(hash: String) -> Credential {
        Credential {
            hash: Some(hash),
            session: None,
        }
    }

    /// False once the token or certificate was revoked, or the console session ended.
    fn live(&self, agent: &Agent) -> bool {
        let session_open = self
            .session
            .as_deref()
            .is_none_or(|id| agent.sessions.open_now(id));
        session_open
            && match &self.hash {
                None => true,
                Some(hash) => agent.principal_by_hash(hash).is_ok_and(|p| p.is_some()),
            }
    }
}

/// How often an open stream (events, logs) checks that its caller's credential still holds.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// A credential as a long stream holds it: looked up again at most every [`RECHECK_EVERY`].
struct Watched {
    credential: Credential,
    checked: std::time::Instant,
}

impl Watched {
    fn new(credential: Credential) -> Watched {
        Watched {
            credential,
            checked: std::time::Instant::now(),
        }
    }

    /// False once the credential was revoked (noticed within [`RECHECK_EVERY`]).
    fn holds(&mut self, agent: &Agent) -> bool {
        if self.checked.elapsed() < RECHECK_EVERY {
            return true;
        }
        self.checked = std::time::Instant::now();
        self.credential.live(agent)
    }
}

/// Finds out who is calling (a bearer token, a console session, or the operator on the local
/// socket), wants the CSRF token of a console session that changes something, holds remote
/// callers to a request rate, and writes every mutating call into the audit log.
pub(crate) async fn authenticate(
    State((agent, transport)): State<(Arc<Agent>, Transport)>,
    mut req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    // The console's cookie counts only where no token is given.
    let session = match token {
        None => crate::console::session_id(req.headers()),
        Some(_) => None,
    };
    let cert = req.extensions().get::<crate::tls::ClientCert>().cloned();
    let (who, credential) = match identify(&agent, token, session.as_deref(), cert, transport) {
        Ok(found) => found,
        Err(e) => return ApiError(e).into_response(),
    };
    if transport == Transport::Remote {
        if let Err(e) = agent.limiter.take(&who.label()) {
            return ApiError(e).into_response();
        }
    }
    let mutating = !matches!(req.method(), &Method::GET | &Method::HEAD);
    // A cookie is sent by the browser whoever made the page: a change needs the token only
    // the console's own script can read.
    if let (true, Some(id)) = (mutating, &credential.session) {
        let expected = agent.sessions.lookup(id).map(|s| s.csrf);
        if !expected.is_some_and(|csrf| crate::console::csrf_ok(req.headers(), &csrf)) {
            let response = ApiError(crate::console::csrf_refusal()).into_response();
            let action = format!("{} {}", req.method(), req.uri().path());
            if let Err(e) = agent.store().audit(&who.label(), &action, 403) {
                tracing::error!("cannot write the audit log: {e}");
            }
            return response;
        }
    }
    let action = format!("{} {}", req.method(), req.uri().path());
    let label = who.label();
    req.extensions_mut().insert(who);
    req.extensions_mut().insert(credential);
    let response = next.run(req).await;
    if mutating {
        if let Err(e) = agent
            .store()
            .audit(&label, &action, response.status().as_u16())
        {
            tracing::error!("cannot write the audit log: {e}");
        }
    }
    response
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
    axum::serve(listener, router(agent, Transport::Local))
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

async fn gateway(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::GatewayInfo>> {
    check(&who, GatewayAction::Read)?;
    Ok(Json(api::GatewayInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        state_dir: agent.state_dir().display().to_string(),
        services: agent.list(&who)?.len(),
        pid: std::process::id(),
    }))
}

fn check(who: &Principal, action: GatewayAction) -> Result<(), AgentError> {
    crate::auth::check_gateway(who, action)
}

async fn capacity(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::CapacityView>> {
    check(&who, GatewayAction::Capacity)?;
    Ok(Json(agent.capacity()?))
}

async fn stats(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::StatsView>> {
    check(&who, GatewayAction::Read)?;
    let stats = tokio::task::spawn_blocking(move || agent.stats(&who))
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok(Json(stats))
}

async fn metrics(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Read)?;
    let text = tokio::task::spawn_blocking(move || agent.metrics(&who))
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))??;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn list(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::ServiceSummary>>> {
    check(&who, GatewayAction::Read)?;
    Ok(Json(agent.list(&who)?))
}

async fn detail(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceDetail>> {
    agent.access(&who, &name, ServiceAction::Read)?;
    Ok(Json(agent.detail(&name)?))
}

#[derive(Deserialize)]
struct InstallQuery {
    start: Option<bool>,
    dry_run: Option<bool>,
    /// Services the household agreed to stop to make room, comma-separated.
    stop: Option<String>,
    /// The operator's explicit override for local development: install without a trusted
    /// signature.
    allow_unsigned: Option<bool>,
    /// The registry reference the package was pulled from.
    source: Option<String>,
}

#[derive(Deserialize)]
struct UpdateQuery {
    allow_unsigned: Option<bool>,
    /// Seconds the new release has to stay up (and become healthy) before the update is done.
    window_s: Option<u64>,
    source: Option<String>,
}

/// A `source` query parameter: a registry reference, or nothing.
fn source_of(q: &Option<String>) -> Result<Option<String>, AgentError> {
    match q.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => ::api::registry::Reference::parse(text)
            .map(|r| Some(r.to_string()))
            .ok_or_else(|| {
                AgentError::BadRequest(format!(
                    "`source` must be a registry reference (REGISTRY/REPOSITORY[:TAG|@DIGEST]), not {text:?}"
                ))
            }),
    }
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
    Extension(who): Extension<Principal>,
    Query(q): Query<InstallQuery>,
    body: Body,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Install)?;
    let upload = receive(&agent, body).await?;
    if q.dry_run.unwrap_or(false) {
        let verdict = agent
            .check_install(&who, &upload.0, q.allow_unsigned.unwrap_or(false))
            .await
            .map_err(|e| redact(&who, e))?;
        return Ok(Json(verdict).into_response());
    }
    let stop = stop_list(&q.stop);
    if !stop.is_empty() && q.start == Some(false) {
        return Err(AgentError::BadRequest(
            "`stop` makes room for a service to run; it cannot go with `start=false`".into(),
        )
        .into());
    }
    for name in &stop {
        agent.access(&who, name, ServiceAction::Run)?;
    }
    let detail = agent
        .install(
            &who,
            &upload.0,
            &crate::install::InstallOptions {
                start: q.start.unwrap_or(true),
                stop,
                allow_unsigned: q.allow_unsigned.unwrap_or(false),
                source: source_of(&q.source)?,
            },
        )
        .await
        .map_err(|e| redact(&who, e))?;
    Ok((StatusCode::CREATED, Json(detail)).into_response())
}

/// An uploaded package in the agent's `tmp/`, deleted when dropped (whatever the request
/// came to).
struct Upload(std::path::PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams a request body (a package) into a fresh file under `tmp/`.
async fn receive(agent: &Agent, body: Body) -> Result<Upload, AgentError> {
    let upload = Upload(
        agent
            .layout
            .tmp()
            .join(format!("upload-{}.tar", crate::install::unique())),
    );
    save_body(body, &upload.0, agent.cfg.max_package).await?;
    Ok(upload)
}

async fn update(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<UpdateQuery>,
    body: Body,
) -> ApiResult<Json<api::ServiceDetail>> {
    agent.access(&who, &name, ServiceAction::Run)?;
    let window = match q.window_s {
        None => crate::update::DEFAULT_WINDOW,
        Some(s) if s <= crate::update::MAX_WINDOW.as_secs() => std::time::Duration::from_secs(s),
        Some(s) => {
            return Err(AgentError::BadRequest(format!(
                "a health window of {s}s is too long; give at most {}s",
                crate::update::MAX_WINDOW.as_secs()
            ))
            .into())
        }
    };
    let source = source_of(&q.source)?;
    let upload = receive(&agent, body).await?;
    let detail = agent
        .update(
            &who,
            &name,
            &upload.0,
            q.allow_unsigned.unwrap_or(false),
            window,
            source,
        )
        .await
        .map_err(|e| redact(&who, e))?;
    Ok(Json(detail))
}

async fn pull(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::PullRequest>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Install)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("pull request: {}", e.body_text())))?;
    let opts = crate::install::InstallOptions {
        start: req.start,
        allow_unsigned: req.allow_unsigned,
        ..Default::default()
    };
    let detail = agent
        .pull_and_install(&who, &req.reference, &opts)
        .await
        .map_err(|e| redact(&who, e))?;
    Ok((StatusCode::CREATED, Json(detail)).into_response())
}

async fn rollback(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceDetail>> {
    agent.access(&who, &name, ServiceAction::Run)?;
    Ok(Json(
        agent.rollback(&name).await.map_err(|e| redact(&who, e))?,
    ))
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
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<StartQuery>,
) -> ApiResult<Response> {
    agent.access(&who, &name, ServiceAction::Run)?;
    if q.dry_run.unwrap_or(false) {
        return Ok(Json(agent.check_start(&name).map_err(|e| redact(&who, e))?).into_response());
    }
    let stop = stop_list(&q.stop);
    for other in &stop {
        agent.access(&who, other, ServiceAction::Run)?;
    }
    let started = agent
        .start_making_room(&name, &stop)
        .await
        .map_err(|e| redact(&who, e))?;
    Ok(Json(started).into_response())
}

/// A refusal as the caller may read it: a provider does not learn its rivals' services.
fn redact(who: &Principal, e: AgentError) -> AgentError {
    match (who, e) {
        (Principal::Provider(p), AgentError::Refused(mut refusal)) => {
            refusal.redact_for(p);
            AgentError::Refused(refusal)
        }
        (_, e) => e,
    }
}

async fn stop(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceSummary>> {
    agent.access(&who, &name, ServiceAction::Run)?;
    Ok(Json(agent.stop(&name).await?))
}

async fn restart(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceSummary>> {
    agent.access(&who, &name, ServiceAction::Run)?;
    Ok(Json(
        agent.restart(&name).await.map_err(|e| redact(&who, e))?,
    ))
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    agent.access(&who, &name, ServiceAction::Remove)?;
    agent.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_priority(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::PriorityRequest>, JsonRejection>,
) -> ApiResult<Json<api::ServiceSummary>> {
    agent.access(&who, &name, ServiceAction::Priority)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("priority request: {}", e.body_text())))?;
    Ok(Json(agent.set_priority(&name, req.priority).await?))
}

async fn tokens(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::TokenInfo>>> {
    check(&who, GatewayAction::Administer)?;
    Ok(Json(agent.list_tokens()?))
}

async fn create_token(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::TokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Administer)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("token request: {}", e.body_text())))?;
    Ok((StatusCode::CREATED, Json(agent.create_token(&req)?)).into_response())
}

async fn trust_list(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::TrustRule>>> {
    check(&who, GatewayAction::Administer)?;
    Ok(Json(agent.trust_rules()?))
}

async fn trust_add(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::TrustRequest>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Administer)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("trust request: {}", e.body_text())))?;
    Ok((StatusCode::CREATED, Json(agent.add_trust(&req)?)).into_response())
}

async fn trust_remove(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(key_id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    check(&who, GatewayAction::Administer)?;
    agent.remove_trust(&key_id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_token(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    check(&who, GatewayAction::Administer)?;
    let id: i64 = id.parse().map_err(|_| {
        AgentError::BadRequest(format!(
            "`{id}` is not a token id; `shg token list` shows them"
        ))
    })?;
    agent.revoke_token(id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<i64>,
    limit: Option<usize>,
}

async fn audit(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<api::AuditEntry>>> {
    check(&who, GatewayAction::Administer)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let entries = agent
        .store()
        .audit_log(q.since.unwrap_or(0), limit)
        .map_err(AgentError::from)?;
    Ok(Json(
        entries
            .into_iter()
            .map(|a| api::AuditEntry {
                id: a.id,
                time_ms: a.time_ms,
                principal: a.principal,
                action: a.action,
                status: a.status,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<i64>,
    service: Option<String>,
    limit: Option<usize>,
    /// Keep the response open and send new events as they happen (Server-Sent Events); the
    /// same as asking for `Accept: text/event-stream`.
    follow: Option<bool>,
}

/// `GET /v1/events`: the journal as a JSON list, or as a Server-Sent Events stream that
/// follows it; either way only the events the caller may see.
async fn events(
    State(agent): State<Arc<Agent>>,
    Extension(who): Extension<Principal>,
    Extension(credential): Extension<Credential>,
    headers: axum::http::HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Read)?;
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    // No existence check on `service`: a removed service still has its history, and a
    // provider asking about a rival's gets the same empty answer as for a name never used.
    if !(wants_stream || q.follow.unwrap_or(false)) {
        let limit = q.limit.unwrap_or(200).min(10_000);
        let events = agent.events_for(&who, q.since.unwrap_or(0), q.service.as_deref(), limit)?;
        return Ok(Json(events).into_response());
    }
    // A reconnecting EventSource says where it stopped.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let mut since = match resume.or(q.since) {
        Some(id) => id,
        // From now on: the newest id so far.
        None => agent.store().last_event_id().map_err(AgentError::from)?,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        // A comment first, so the client sees the stream open at once.
        if tx
            .send(Ok(Bytes::from_static(b": shg events\n\n")))
            .await
            .is_err()
        {
            return;
        }
        let mut idle = Duration::ZERO;
        let mut credential = Watched::new(credential);
        loop {
            // A revoked token or certificate ends its streams too.
            if !credential.holds(&agent) {
                return;
            }
            let batch = agent
                .events_after(&who, since, q.service.as_deref(), 500)
                .unwrap_or_default();
            let (next, events) = batch;
            since = next;
            for e in events {
                let data = serde_json::to_string(&e).expect("events serialize");
                let frame = format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind);
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    return;
                }
                idle = Duration::ZERO;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            idle += Duration::from_millis(250);
            // Keeps proxies from closing a quiet stream, and finds out when the client left.
            if idle >= Duration::from_secs(15) {
                idle = Duration::ZERO;
                if tx
                    .send(Ok(Bytes::from_static(b": keep-alive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
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
    Extension(who): Extension<Principal>,
    Extension(credential): Extension<Credential>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    agent.access(&who, &name, ServiceAction::Logs)?;
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
        let mut credential = Watched::new(credential);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !credential.holds(&agent) {
                return;
            }
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
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::ExecRequest>, JsonRejection>,
) -> ApiResult<Response> {
    agent.access(&who, &name, ServiceAction::Exec)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path the router serves is in the OpenAPI document, and nothing else is.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        // The code above the tests: the router's `.route(` calls.
        let source = include_str!("api.rs").split("#[cfg(test)]").next().unwrap();
        let mut routed: Vec<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .map(String::from)
            .collect();
        routed.sort();
        routed.dedup();
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        assert_eq!(routed, documented);
    }
}
