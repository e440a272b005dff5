//! The gateway's HTTP API: translates requests into calls on [`Agent`] and results into JSON.
//!
//! Served over the Unix socket `STATE_DIR/api.sock` (mode 0600: only root reaches it) and,
//! with `--listen`, over TCP with TLS. Every route but `/openapi.json` goes through
//! `server::authenticate`, and every handler checks the caller's realm (through the agent)
//! before acting. The web console's routes (`console`) are merged in here; its pages call
//! this same API.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::{Agent, AgentError, GatewayAction, Principal, ServiceAction};
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{middleware, Extension, Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use server::{Credential, Problem, Server, Transport, Watched};
use tokio::io::AsyncWriteExt;
use tokio_stream::wrappers::ReceiverStream;

/// What an agent error tells the client. An exhaustive match: a new kind of error forces a
/// decision about its status.
pub fn problem(e: AgentError) -> Problem {
    let status = match &e {
        AgentError::NotFound(_) => StatusCode::NOT_FOUND,
        AgentError::Exists(_) => StatusCode::CONFLICT,
        AgentError::BadPackage(_) => StatusCode::BAD_REQUEST,
        AgentError::Untrusted(_) => StatusCode::FORBIDDEN,
        AgentError::BadManifest(_) => StatusCode::BAD_REQUEST,
        AgentError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AgentError::Conflict(_) => StatusCode::CONFLICT,
        AgentError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        AgentError::Refused(_) => StatusCode::CONFLICT,
        // Like a storage refusal: the package is sound, it does not fit what the service or
        // its provider may hold now (a larger reservation or allowance lets it in).
        AgentError::ImageTooLarge { .. } => StatusCode::CONFLICT,
        AgentError::StartFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        AgentError::Forbidden(_) => StatusCode::FORBIDDEN,
        AgentError::NoToken(_) | AgentError::NoTrust(_) => StatusCode::NOT_FOUND,
        AgentError::Image(_) | AgentError::Manifest(_) => StatusCode::BAD_REQUEST,
        AgentError::Signature(_) | AgentError::Catalog { .. } => StatusCode::FORBIDDEN,
        AgentError::Io { .. }
        | AgentError::Store(_)
        | AgentError::Runtime(_)
        | AgentError::StoredManifest { .. }
        | AgentError::Layers(_)
        | AgentError::Helper(_)
        | AgentError::Network(_)
        | AgentError::Task(_)
        | AgentError::Credential(_)
        | AgentError::Internal(_) => {
            return Problem::internal("the gateway agent", &e);
        }
    };
    let code = match &e {
        AgentError::NotFound(_) | AgentError::NoToken(_) | AgentError::NoTrust(_) => "not-found",
        AgentError::Exists(_) | AgentError::Conflict(_) => "conflict",
        AgentError::BadPackage(_) | AgentError::Image(_) => "bad-package",
        AgentError::Untrusted(_) | AgentError::Signature(_) | AgentError::Catalog { .. } => {
            "untrusted-package"
        }
        AgentError::BadManifest(_) | AgentError::Manifest(_) => "bad-manifest",
        AgentError::BadRequest(_) => "bad-request",
        AgentError::Busy(_) => "unavailable",
        AgentError::Refused(_) | AgentError::ImageTooLarge { .. } => "admission-refused",
        AgentError::StartFailed(_) => "start-failed",
        AgentError::Forbidden(_) => "forbidden",
        AgentError::Io { .. }
        | AgentError::Store(_)
        | AgentError::Runtime(_)
        | AgentError::StoredManifest { .. }
        | AgentError::Layers(_)
        | AgentError::Helper(_)
        | AgentError::Network(_)
        | AgentError::Task(_)
        | AgentError::Credential(_)
        | AgentError::Internal(_) => "internal",
    };
    let detail = match &e {
        AgentError::Refused(refusal) => serde_json::to_value(refusal).ok(),
        AgentError::ImageTooLarge { service, source } => image_detail(service, source),
        _ => None,
    };
    Problem::new(status, code, e.to_string()).with_detail(detail)
}

/// The `detail` of an image refusal: what unpacks to how much, against which allowance.
fn image_detail(service: &str, e: &image::ImageError) -> Option<serde_json::Value> {
    let image::ImageError::OverAllowance {
        what,
        size,
        at_least,
        limit,
        allowance,
    } = e
    else {
        return None;
    };
    let (kind, holder) = match allowance {
        image::Allowance::Storage { service, .. } => ("storage", service),
        image::Allowance::Provider { provider, .. } => ("provider", provider),
    };
    Some(serde_json::json!({
        "service": service,
        "image": {
            "layers": what,
            "size": size,
            "at_least": at_least,
            "limit": limit,
            "allowance": { "kind": kind, "of": holder, "bytes": allowance.bytes() },
        },
    }))
}

/// An [`AgentError`] or a [`Problem`] on its way to the client.
pub struct ApiError(Problem);

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        ApiError(problem(e))
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError(p)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// What every handler holds: the agent and the server it is served by.
#[derive(Clone)]
pub struct Ctx {
    pub agent: Arc<Agent>,
    pub server: Arc<Server>,
    /// The link to the fleet controller, when the gateway is in a fleet.
    pub fleet: Option<Arc<crate::fleet::Link>>,
}

type ApiResult<T> = Result<T, ApiError>;

/// The OpenAPI document of this API, kept in the repository beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The gateway's router for callers arriving over `transport`: the API, `/openapi.json`
/// and the web console. Tested in process: a request in, a response out.
pub fn router(agent: Arc<Agent>, server: Arc<Server>, transport: Transport) -> Router {
    router_in_fleet(agent, server, transport, None)
}

/// [`router`] of a gateway in a fleet: subscriptions and the catalog go to its controller.
pub fn router_in_fleet(
    agent: Arc<Agent>,
    server: Arc<Server>,
    transport: Transport,
    fleet: Option<Arc<crate::fleet::Link>>,
) -> Router {
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
        .route("/v1/services/{name}/lan", post(set_lan))
        .route("/v1/services/{name}/update", post(update))
        .route("/v1/services/{name}/rollback", post(rollback))
        .route("/v1/services/{name}/logs", get(logs))
        .route("/v1/services/{name}/metrics", get(service_metrics))
        .route("/v1/services/{name}/exec", post(exec))
        .route("/v1/events", get(events))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/audit", get(audit))
        .route("/v1/pull", post(pull))
        .route("/v1/trust", get(trust_list).post(trust_add))
        .route("/v1/trust/{key_id}", delete(trust_remove))
        .route("/v1/subscriptions", get(subscriptions).post(subscribe))
        .route("/v1/subscriptions/{name}", delete(unsubscribe))
        .route("/v1/fleet/catalog", get(fleet_catalog))
        .route_layer(middleware::from_fn_with_state(
            (server.clone(), transport),
            server::authenticate,
        ));
    let ctx = Ctx {
        agent,
        server,
        fleet,
    };
    Router::new()
        .merge(server::openapi_route(OPENAPI))
        .merge(guarded)
        .merge(crate::console::router(&ctx, transport))
        .fallback(server::no_such_path)
        // Packages stream to disk with their own cap; JSON bodies stay small.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::map_response(server::json_errors))
        .with_state(ctx)
}

async fn gateway(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::GatewayInfo>> {
    check(&who, GatewayAction::Read)?;
    Ok(Json(agent.info(&who)?))
}

fn check(who: &Principal, action: GatewayAction) -> Result<(), AgentError> {
    agent::check_gateway(who, action)
}

async fn capacity(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::CapacityView>> {
    check(&who, GatewayAction::Capacity)?;
    Ok(Json(agent.capacity()?))
}

async fn stats(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::StatsView>> {
    check(&who, GatewayAction::Read)?;
    let stats = tokio::task::spawn_blocking(move || agent.stats(&who))
        .await
        .map_err(AgentError::Task)??;
    Ok(Json(stats))
}

async fn metrics(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Read)?;
    let text = tokio::task::spawn_blocking(move || agent.metrics(&who))
        .await
        .map_err(AgentError::Task)??;
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
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::ServiceSummary>>> {
    check(&who, GatewayAction::Read)?;
    Ok(Json(agent.list(&who)?))
}

async fn detail(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceDetail>> {
    let name = agent.resolve(&who, &name)?;
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
        Some(text) => registry::Reference::parse(text)
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

/// `stop=a,b` as a list of the keys of the services the caller means; absent or empty is no
/// list.
fn stop_list(
    agent: &Agent,
    who: &Principal,
    q: &Option<String>,
) -> Result<Vec<String>, AgentError> {
    q.as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| agent.resolve(who, n))
        .collect()
}

/// The service manifest given beside a standard image: the [`api::MANIFEST_HEADER`] header,
/// base64 of the file's bytes, which must be UTF-8 text of at most [`api::MAX_MANIFEST`]
/// bytes. `None` without the header (the package carries its manifest as a label).
fn manifest_beside(headers: &HeaderMap) -> Result<Option<String>, AgentError> {
    use base64::Engine as _;
    let Some(value) = headers.get(api::MANIFEST_HEADER) else {
        return Ok(None);
    };
    let way_out = "send the bytes of shg-service.toml base64-encoded (standard alphabet, padded)";
    let bad = |why: String| {
        AgentError::BadRequest(format!(
            "the {} header {why}; {way_out}",
            api::MANIFEST_HEADER
        ))
    };
    // Base64 of the largest manifest, and a little slack for stray whitespace.
    let limit = api::MAX_MANIFEST.div_ceil(3) * 4 + 16;
    if value.len() > limit {
        return Err(bad(format!(
            "holds more than a manifest of {} bytes",
            api::MAX_MANIFEST
        )));
    }
    let text = value
        .to_str()
        .map_err(|_| bad("is not ASCII".into()))?
        .trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| bad(format!("is not base64 ({e})")))?;
    if bytes.len() > api::MAX_MANIFEST {
        return Err(bad(format!(
            "holds {} bytes, more than the {} a manifest may have",
            bytes.len(),
            api::MAX_MANIFEST
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| bad("does not decode to UTF-8 text".into()))
}

async fn install(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    Query(q): Query<InstallQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Install)?;
    let beside = manifest_beside(&headers)?;
    let upload = receive(&agent, body).await?;
    if q.dry_run.unwrap_or(false) {
        let verdict = agent
            .check_install(
                &who,
                &upload.0,
                q.allow_unsigned.unwrap_or(false),
                beside.as_deref(),
            )
            .await
            .map_err(|e| redact(&who, e))?;
        return Ok(Json(verdict).into_response());
    }
    let stop = stop_list(&agent, &who, &q.stop)?;
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
            &agent::InstallOptions {
                start: q.start.unwrap_or(true),
                stop,
                allow_unsigned: q.allow_unsigned.unwrap_or(false),
                source: source_of(&q.source)?,
                manifest: beside,
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
    let upload = Upload(agent.upload_path());
    save_body(body, &upload.0, agent.max_package()).await?;
    Ok(upload)
}

async fn update(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<UpdateQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<api::ServiceDetail>> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Run)?;
    let beside = manifest_beside(&headers)?;
    let window = match q.window_s {
        None => agent::DEFAULT_WINDOW,
        Some(s) if s <= agent::MAX_WINDOW.as_secs() => std::time::Duration::from_secs(s),
        Some(s) => {
            return Err(AgentError::BadRequest(format!(
                "a health window of {s}s is too long; give at most {}s",
                agent::MAX_WINDOW.as_secs()
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
            beside.as_deref(),
            q.allow_unsigned.unwrap_or(false),
            window,
            source,
        )
        .await
        .map_err(|e| redact(&who, e))?;
    Ok(Json(detail))
}

async fn pull(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::PullRequest>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Install)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("pull request: {}", e.body_text())))?;
    let opts = agent::InstallOptions {
        start: req.start,
        allow_unsigned: req.allow_unsigned,
        manifest: req.manifest,
        ..Default::default()
    };
    let detail = agent
        .pull_and_install(&who, &req.reference, &opts)
        .await
        .map_err(|e| redact(&who, e))?;
    Ok((StatusCode::CREATED, Json(detail)).into_response())
}

async fn rollback(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceDetail>> {
    let name = agent.resolve(&who, &name)?;
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
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<StartQuery>,
) -> ApiResult<Response> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Run)?;
    if q.dry_run.unwrap_or(false) {
        return Ok(Json(agent.check_start(&name).map_err(|e| redact(&who, e))?).into_response());
    }
    let stop = stop_list(&agent, &who, &q.stop)?;
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
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceSummary>> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Run)?;
    Ok(Json(agent.stop(&name).await?))
}

async fn restart(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<api::ServiceSummary>> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Run)?;
    Ok(Json(
        agent.restart(&name).await.map_err(|e| redact(&who, e))?,
    ))
}

async fn remove(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Remove)?;
    agent.remove(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_priority(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::PriorityRequest>, JsonRejection>,
) -> ApiResult<Json<api::ServiceSummary>> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Priority)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("priority request: {}", e.body_text())))?;
    Ok(Json(agent.set_priority(&name, req.priority).await?))
}

async fn set_lan(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::LanRequest>, JsonRejection>,
) -> ApiResult<Json<api::ServiceSummary>> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Lan)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("LAN hosts: {}", e.body_text())))?;
    Ok(Json(agent.set_lan(&name, &req.hosts).await?))
}

async fn tokens(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::TokenInfo>>> {
    check(&who, GatewayAction::Administer)?;
    Ok(Json(agent.list_tokens()?))
}

async fn create_token(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::TokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Administer)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("token request: {}", e.body_text())))?;
    Ok((StatusCode::CREATED, Json(agent.create_token(&req)?)).into_response())
}

async fn trust_list(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::TrustRule>>> {
    check(&who, GatewayAction::Administer)?;
    Ok(Json(agent.trust_rules()?))
}

async fn trust_add(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::TrustRequest>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Administer)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("trust request: {}", e.body_text())))?;
    Ok((StatusCode::CREATED, Json(agent.add_trust(&req)?)).into_response())
}

async fn trust_remove(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(key_id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    check(&who, GatewayAction::Administer)?;
    agent.remove_trust(&key_id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_token(
    State(Ctx { agent, .. }): State<Ctx>,
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
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<api::AuditEntry>>> {
    check(&who, GatewayAction::Administer)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    Ok(Json(agent.audit_log(q.since.unwrap_or(0), limit)?))
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
    State(Ctx { agent, server, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    Extension(credential): Extension<Credential>,
    headers: axum::http::HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Read)?;
    // No existence check on `service`: a removed service still has its history, and a
    // provider asking about a rival's gets the same empty answer as for a name never used.
    // A service the caller sees is found by its name or id; any other name is taken as the
    // key it would have had.
    let mut q = q;
    q.service = q.service.map(|s| {
        agent
            .resolve(&who, &s)
            .unwrap_or_else(|_| s.replacen('/', "+", 1))
    });
    if !(server::sse::wanted(&headers) || q.follow.unwrap_or(false)) {
        let limit = q.limit.unwrap_or(200).min(10_000);
        let events = agent.events_for(&who, q.since.unwrap_or(0), q.service.as_deref(), limit)?;
        return Ok(Json(events).into_response());
    }
    let since = match server::sse::last_event_id(&headers).or(q.since) {
        Some(id) => id,
        // From now on: the newest id so far.
        None => agent.last_event_id()?,
    };
    Ok(server::sse::stream(Journal {
        changes: agent.journal_changes(),
        agent,
        who,
        service: q.service,
        since,
        credential: Watched::new(server, credential),
    }))
}

/// The journal as an event stream sees it: what `who` may see, after `since`, for as long
/// as its credential holds.
struct Journal {
    agent: Arc<Agent>,
    changes: tokio::sync::watch::Receiver<u64>,
    who: Principal,
    service: Option<String>,
    since: i64,
    credential: Watched,
}

impl server::sse::Source for Journal {
    async fn next(&mut self) -> Option<Vec<server::sse::Event>> {
        // A revoked token or certificate ends its streams too.
        if !self.credential.holds().await {
            return None;
        }
        let (next, events) = self
            .agent
            .events_after(&self.who, self.since, self.service.as_deref(), 500)
            .unwrap_or((self.since, Vec::new()));
        self.since = next;
        Some(
            events
                .into_iter()
                .map(|e| server::sse::Event {
                    id: e.id,
                    kind: e.kind.clone(),
                    data: serde_json::to_string(&e).unwrap_or_default(),
                })
                .collect(),
        )
    }

    async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // The agent is going away; the stream ends with the server.
            std::future::pending::<()>().await;
        }
    }
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
    State(Ctx { agent, server, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    Extension(credential): Extension<Credential>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let name = agent.resolve(&who, &name)?;
    let (lines, mut follower) = agent.logs(&who, &name, q.tail)?;
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
        let mut credential = Watched::new(server, credential);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !credential.holds().await || tx.is_closed() {
                return;
            }
            let Some(fresh) = follower.poll(&agent) else {
                return;
            };
            for line in &fresh {
                if tx.send(Ok(log_json(line))).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok((headers, Body::from_stream(ReceiverStream::new(rx))).into_response())
}

/// The service's own figures, from its `[metrics]` URL, for its provider.
async fn service_metrics(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Response> {
    let name = agent.resolve(&who, &name)?;
    let m = agent.service_metrics(&who, &name).await?;
    // The service's own answer, never rendered by a browser as the gateway's page.
    let content_type = HeaderValue::from_str(&m.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox"),
            ),
        ],
        m.body,
    )
        .into_response())
}

async fn exec(
    State(Ctx { agent, .. }): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<api::ExecRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let name = agent.resolve(&who, &name)?;
    agent.access(&who, &name, ServiceAction::Exec)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("exec request: {}", e.body_text())))?;
    let frames = agent.exec(&who, &name, &req.command)?;
    let body = ReceiverStream::new(frames).map(|f| Ok::<_, Infallible>(Bytes::from(f)));
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.shg.exec-frames")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The gateway's link to its controller, or the refusal of a gateway in no fleet.
fn link(ctx: &Ctx) -> Result<&Arc<crate::fleet::Link>, AgentError> {
    ctx.fleet.as_ref().ok_or_else(|| {
        AgentError::Conflict(
            "this gateway is in no fleet: the catalog and subscriptions come from a fleet controller (`shg gateway run --controller URL --enroll-token TOKEN`)".into(),
        )
    })
}

/// `GET /v1/subscriptions`: what the household subscribed to from the fleet's catalog.
async fn subscriptions(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::fleet::Subscriptions>> {
    check(&who, GatewayAction::Subscribe)?;
    Ok(Json(match &ctx.fleet {
        None => api::fleet::Subscriptions::default(),
        Some(link) => api::fleet::Subscriptions {
            controller: Some(link.controller().to_string()),
            gateway_id: Some(link.gateway_id().to_string()),
            subscriptions: link.subscriptions(),
        },
    }))
}

/// `GET /v1/fleet/catalog`: the approved packages of the fleet's catalog.
async fn fleet_catalog(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::fleet::CatalogEntry>>> {
    check(&who, GatewayAction::Subscribe)?;
    Ok(Json(link(&ctx)?.catalog().await?))
}

/// `POST /v1/subscriptions`: the household subscribes to a service of the fleet's catalog;
/// the controller hears of it at once and makes it part of this gateway's desired state,
/// and the gateway's own admission still decides whether it runs.
async fn subscribe(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::fleet::Subscribe>, JsonRejection>,
) -> ApiResult<Response> {
    check(&who, GatewayAction::Subscribe)?;
    let Json(req) =
        body.map_err(|e| AgentError::BadRequest(format!("subscription: {}", e.body_text())))?;
    let link = link(&ctx)?;
    let entries = link.catalog().await?;
    let mut owners: Vec<String> = entries
        .iter()
        .filter(|e| e.name == req.name)
        .filter(|e| req.provider.as_ref().is_none_or(|p| *p == e.provider))
        .map(|e| e.provider.clone())
        .collect();
    owners.sort();
    owners.dedup();
    let provider = match owners.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(AgentError::NotFound(format!(
                "`{}` is not in the fleet's catalog; `shg subscriptions --catalog` lists what is",
                req.name
            ))
            .into())
        }
        several => {
            return Err(AgentError::BadRequest(format!(
                "`{}` is published by several providers ({}); say which with `--provider`",
                req.name,
                several.join(", ")
            ))
            .into())
        }
    };
    let service = api::fleet::ServiceRef {
        provider,
        name: req.name,
    };
    link.subscribe(service.clone(), true);
    Ok((StatusCode::CREATED, Json(service)).into_response())
}

/// `DELETE /v1/subscriptions/{name}`: the household leaves a service; the controller drops
/// it from the desired state and the gateway removes it.
async fn unsubscribe(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    check(&who, GatewayAction::Subscribe)?;
    let link = link(&ctx)?;
    let Some(service) = link.subscriptions().into_iter().find(|s| s.name == name) else {
        return Err(AgentError::NotFound(format!(
            "this household is not subscribed to `{name}`; `shg subscriptions` lists what it is"
        ))
        .into());
    };
    link.subscribe(service, false);
    Ok(StatusCode::NO_CONTENT)
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
        // The document itself is served by `server::openapi_route`.
        routed.push("/openapi.json".into());
        routed.sort();
        routed.dedup();
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        assert_eq!(routed, documented);
    }

    /// An image over its allowance is refused like a reservation that does not fit: 409,
    /// `admission-refused`, the sentence, and what unpacks to how much against what.
    #[test]
    fn an_image_too_large_is_an_admission_refusal_with_its_sizes() {
        let source = image::ImageError::OverAllowance {
            what: "layer sha256:ab".into(),
            size: 3000 << 20,
            at_least: true,
            limit: 16 << 20,
            allowance: image::Allowance::Storage {
                service: "zeros".into(),
                reserve: 16 << 20,
            },
        };
        let p = problem(AgentError::ImageTooLarge {
            service: "zeros".into(),
            source,
        });
        assert_eq!(
            (p.status, p.code),
            (StatusCode::CONFLICT, "admission-refused")
        );
        assert_eq!(
            p.message,
            "cannot admit `zeros`: layer sha256:ab unpacks to at least 3000 MiB, more than the \
             16 MiB of storage `zeros` reserves; raise `resources.storage` in shg-service.toml \
             or ask the operator for a larger image allowance"
        );
        assert_eq!(
            p.detail.unwrap(),
            serde_json::json!({
                "service": "zeros",
                "image": {
                    "layers": "layer sha256:ab",
                    "size": 3000u64 << 20,
                    "at_least": true,
                    "limit": 16u64 << 20,
                    "allowance": { "kind": "storage", "of": "zeros", "bytes": 16u64 << 20 },
                },
            })
        );
    }
}
