//! The controller's HTTP API: translates requests into calls on [`Controller`].
//!
//! Served on `STATE_DIR/api.sock` (root is the operator) and over HTTPS, where the operator
//! and providers come with tokens and gateways with the certificate they got by enrolling
//! (mutual TLS). `POST /v1/enroll` is the only call without a credential: its token is in the
//! body. Every handler checks the caller's realm before acting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{middleware, Extension, Json, Router};
use futures_util::StreamExt;
use realm::Principal;
use serde::Deserialize;
use server::{Credential, Problem, Server, Transport, Watched};
use tokio::io::AsyncWriteExt;

use crate::{Controller, ControllerError};

/// The OpenAPI document of this API, kept beside the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The largest package accepted.
const MAX_PACKAGE: u64 = 2 << 30;

/// What a controller error tells the client; an exhaustive match.
pub fn problem(e: ControllerError) -> Problem {
    match kind(&e) {
        (StatusCode::INTERNAL_SERVER_ERROR, _) => Problem::internal("the fleet controller", &e),
        (status, code) => Problem::new(status, code, e.to_string()),
    }
}

/// The status and stable code of each error.
fn kind(e: &ControllerError) -> (StatusCode, &'static str) {
    match e {
        ControllerError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
        ControllerError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        ControllerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        ControllerError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        ControllerError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        ControllerError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
        ControllerError::BadPackage(_) => (StatusCode::BAD_REQUEST, "bad-package"),
        ControllerError::Io { .. }
        | ControllerError::Database(_)
        | ControllerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

/// A controller error or a problem on its way to the client.
pub struct ApiError(Problem);

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
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

type ApiResult<T> = Result<T, ApiError>;

#[derive(Clone)]
pub struct Ctx {
    controller: Arc<Controller>,
    server: Arc<Server>,
    /// Enrollments, all callers together: 500 a second, bursts of 1000.
    enrollments: Arc<server::Limiter>,
}

/// The controller's router for callers arriving over `transport`.
pub fn router(controller: Arc<Controller>, server: Arc<Server>, transport: Transport) -> Router {
    let guarded = Router::new()
        .route("/v1/enroll-tokens", post(enroll_token))
        .route("/v1/gateways", get(gateways))
        .route("/v1/gateways/{id}", get(gateway))
        .route("/v1/gateways/{id}/revoke", post(revoke))
        .route("/v1/tokens", get(tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/trust", get(trust_list).post(trust_add))
        .route("/v1/trust/{key_id}", delete(trust_remove))
        .route("/v1/packages", post(publish))
        .route(
            "/v1/packages/{provider}/{name}/{version}",
            get(package_file),
        )
        .route(
            "/v1/packages/{provider}/{name}/{version}/approve",
            post(approve),
        )
        .route("/v1/policy", get(policy_list))
        .route(
            "/v1/policy/{provider}",
            put(policy_set).delete(policy_clear),
        )
        .route("/v1/catalog", get(catalog))
        .route("/v1/catalog/metadata", get(catalog_metadata))
        .route("/v2/", get(oci_base))
        .route(
            "/v2/{provider}/{name}/manifests/{reference}",
            get(oci_manifest),
        )
        .route("/v2/{provider}/{name}/blobs/{digest}", get(oci_blob))
        .route("/v1/deployments", get(deployments).post(deploy))
        .route("/v1/deployments/{id}", get(deployment))
        .route("/v1/deployments/{id}/{action}", post(control))
        .route("/v1/services", get(services))
        .route("/v1/events", get(events))
        .route("/v1/audit", get(audit))
        .route("/metrics", get(metrics))
        .route("/v1/sync/desired", get(desired))
        .route("/v1/sync/report", post(report))
        .route("/v1/sync/certificate", post(renew_certificate))
        .route_layer(middleware::from_fn_with_state(
            (server.clone(), transport),
            server::authenticate,
        ));
    let console = crate::console::router(server.clone(), transport);
    let ctx = Ctx {
        controller,
        server,
        enrollments: Arc::new(server::Limiter::new(500.0, 1000.0)),
    };
    Router::new()
        .merge(server::openapi_route(OPENAPI))
        .merge(console)
        .route("/v1/enroll", post(enroll))
        .merge(guarded)
        .fallback(server::no_such_path)
        .layer(DefaultBodyLimit::max(crate::inventory::MAX_REPORT))
        .layer(middleware::map_response(server::json_errors))
        .with_state(ctx)
}

fn operator(who: &Principal) -> Result<(), ControllerError> {
    match who {
        Principal::Operator => Ok(()),
        _ => Err(ControllerError::Forbidden(
            "this is the fleet operator's; use an operator token or the controller's socket as root".into(),
        )),
    }
}

fn operator_or_provider(who: &Principal) -> Result<(), ControllerError> {
    match who {
        Principal::Operator | Principal::Provider(_) => Ok(()),
        _ => Err(ControllerError::Forbidden(
            "this is for the fleet's operator and providers".into(),
        )),
    }
}

fn gateway_of(who: &Principal) -> Result<&str, ControllerError> {
    match who {
        Principal::Gateway(id) => Ok(id),
        _ => Err(ControllerError::Forbidden(
            "only an enrolled gateway syncs, with the certificate it got by enrolling".into(),
        )),
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>, what: &str) -> Result<T, ControllerError> {
    body.map(|Json(b)| b).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ControllerError::TooLarge(format!(
                "{what}: the body is larger than the {} MiB this call accepts",
                crate::inventory::MAX_REPORT >> 20
            ))
        } else {
            ControllerError::BadRequest(format!("{what}: {}", e.body_text()))
        }
    })
}

async fn enroll_token(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::fleet::EnrollTokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    operator(&who)?;
    let req = json_body(body, "enrollment token request")?;
    let token = ctx.controller.enroll_token(&req).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

/// `POST /v1/enroll`: a gateway with a one-time token and a certificate request.
async fn enroll(
    State(ctx): State<Ctx>,
    body: Result<Json<api::fleet::EnrollRequest>, JsonRejection>,
) -> ApiResult<Response> {
    // Guessing tokens costs a rate-limited request each (a token is 256 random bits, so
    // the limit mostly keeps a mass first boot from eating the controller's CPU).
    ctx.enrollments.take("enroll")?;
    let req = json_body(body, "enrollment request")?;
    let result = ctx.controller.enroll(&req).await;
    let status = match &result {
        Ok(_) => 201,
        Err(e) => kind(e).0.as_u16(),
    };
    let label = match &result {
        Ok(e) => format!("gateway:{}", e.gateway_id),
        Err(_) => "unknown".into(),
    };
    if let Err(e) = ctx
        .controller
        .db
        .audit(&label, "POST /v1/enroll", status)
        .await
    {
        tracing::error!("cannot write the audit log: {e}");
    }
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

#[derive(Deserialize)]
struct SelectorQuery {
    /// `k=v,k2=v2`.
    selector: Option<String>,
}

/// `k=v,k2=v2` as a map.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, ControllerError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| {
                    ControllerError::BadRequest(format!(
                        "selector `{pair}`: give labels as key=value, comma-separated"
                    ))
                })
        })
        .collect()
}

async fn gateways(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    Query(q): Query<SelectorQuery>,
) -> ApiResult<Json<Vec<api::fleet::GatewayRow>>> {
    operator(&who)?;
    let selector = parse_selector(q.selector.as_deref().unwrap_or(""))?;
    let rows = ctx.controller.gateways(&selector).await?;
    Ok(Json(rows.into_iter().map(|g| g.row).collect()))
}

async fn gateway(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<api::fleet::GatewayInventory>> {
    operator(&who)?;
    Ok(Json(ctx.controller.gateway(&id).await?))
}

async fn revoke(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    operator(&who)?;
    ctx.controller.revoke(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn tokens(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::TokenInfo>>> {
    operator(&who)?;
    Ok(Json(ctx.controller.list_tokens().await?))
}

async fn create_token(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::TokenRequest>, JsonRejection>,
) -> ApiResult<Response> {
    operator(&who)?;
    let req = json_body(body, "token request")?;
    Ok((
        StatusCode::CREATED,
        Json(ctx.controller.create_token(&req).await?),
    )
        .into_response())
}

async fn revoke_token(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    operator(&who)?;
    let id: i64 = id.parse().map_err(|_| {
        ControllerError::BadRequest(format!(
            "`{id}` is not a token id; `shg fleet token list` shows them"
        ))
    })?;
    ctx.controller.revoke_token(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trust_list(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::TrustRule>>> {
    operator(&who)?;
    Ok(Json(ctx.controller.trust_rules().await?))
}

async fn trust_add(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::TrustRequest>, JsonRejection>,
) -> ApiResult<Response> {
    operator(&who)?;
    let req = json_body(body, "trust request")?;
    Ok((
        StatusCode::CREATED,
        Json(ctx.controller.add_trust(&req).await?),
    )
        .into_response())
}

async fn trust_remove(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(key_id): UrlPath<String>,
) -> ApiResult<StatusCode> {
    operator(&who)?;
    ctx.controller.remove_trust(&key_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn policy_list(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::fleet::DeployPolicy>>> {
    operator_or_provider(&who)?;
    Ok(Json(ctx.controller.policies(&who).await?))
}

async fn policy_set(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(provider): UrlPath<String>,
    body: Result<Json<api::fleet::PolicyRequest>, JsonRejection>,
) -> ApiResult<Json<api::fleet::DeployPolicy>> {
    operator(&who)?;
    let req = json_body(body, "policy")?;
    Ok(Json(ctx.controller.set_policy(&provider, &req).await?))
}

async fn policy_clear(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(provider): UrlPath<String>,
) -> ApiResult<StatusCode> {
    operator(&who)?;
    ctx.controller.clear_policy(&provider).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An upload under the state directory, deleted when dropped.
struct Upload(std::path::PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn publish(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Body,
) -> ApiResult<Response> {
    operator_or_provider(&who)?;
    let upload = Upload(ctx.controller.cfg.state_dir.join(format!(
        "upload-{}.tar",
        realm::random_hex(8).map_err(|e| ControllerError::Internal(e.to_string()))?
    )));
    let mut file = tokio::fs::File::create(&upload.0)
        .await
        .map_err(|e| ControllerError::io(&upload.0, e))?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ControllerError::BadRequest(format!("the upload broke off: {e}")))?;
        total += chunk.len() as u64;
        if total > MAX_PACKAGE {
            return Err(ControllerError::BadPackage(format!(
                "the package is larger than the {} MiB the controller accepts",
                MAX_PACKAGE >> 20
            ))
            .into());
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ControllerError::io(&upload.0, e))?;
    }
    file.flush()
        .await
        .map_err(|e| ControllerError::io(&upload.0, e))?;
    if total == 0 {
        return Err(ControllerError::BadPackage(
            "the upload is empty; send the package file as the request body".into(),
        )
        .into());
    }
    let entry = ctx.controller.publish(&who, &upload.0).await?;
    Ok((StatusCode::CREATED, Json(entry)).into_response())
}

async fn approve(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath((provider, name, version)): UrlPath<(String, String, String)>,
) -> ApiResult<Json<api::fleet::CatalogEntry>> {
    operator(&who)?;
    Ok(Json(
        ctx.controller.approve(&provider, &name, &version).await?,
    ))
}

async fn catalog(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::fleet::CatalogEntry>>> {
    Ok(Json(ctx.controller.catalog(&who).await?))
}

/// `POST /v1/sync/certificate`: a gateway renews its own certificate.
async fn renew_certificate(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::fleet::RenewRequest>, JsonRejection>,
) -> ApiResult<Json<api::fleet::Renewed>> {
    let Principal::Gateway(gateway) = &who else {
        return Err(ControllerError::Forbidden(
            "only a gateway renews its certificate, with the one it holds".into(),
        )
        .into());
    };
    let req = json_body(body, "certificate renewal")?;
    Ok(Json(ctx.controller.renew_certificate(gateway, &req).await?))
}

/// `GET /v1/catalog/metadata`: the fleet catalog's current TUF publication.
async fn catalog_metadata(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<api::fleet::CatalogMetadata>> {
    Ok(Json(ctx.controller.catalog_metadata(&who).await?))
}

/// `GET /v2/`: the OCI distribution API is here (read only).
async fn oci_base() -> Response {
    (
        [("Docker-Distribution-API-Version", "registry/2.0")],
        Json(serde_json::json!({})),
    )
        .into_response()
}

/// `GET /v2/{provider}/{name}/manifests/{reference}`: by version, digest or signature tag.
async fn oci_manifest(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath((provider, name, reference)): UrlPath<(String, String, String)>,
) -> ApiResult<Response> {
    let manifest = ctx
        .controller
        .oci_manifest(&who, &provider, &name, &reference)
        .await?;
    Ok((
        [
            (header::CONTENT_TYPE.as_str(), registry::MEDIA_MANIFEST),
            ("Docker-Content-Digest", manifest.digest.as_str()),
        ],
        manifest.bytes,
    )
        .into_response())
}

/// `GET /v2/{provider}/{name}/blobs/{digest}`: a blob of a package the caller may pull.
async fn oci_blob(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath((provider, name, digest)): UrlPath<(String, String, String)>,
) -> ApiResult<Response> {
    let bytes = ctx
        .controller
        .oci_blob(&who, &provider, &name, &digest)
        .await?
        .ok_or_else(|| {
            ControllerError::NotFound(format!(
                "no blob {digest} in `{provider}/{name}` for you; `shg fleet catalog` lists the packages you may pull"
            ))
        })?;
    Ok((
        [
            (header::CONTENT_TYPE.as_str(), "application/octet-stream"),
            ("Docker-Content-Digest", digest.as_str()),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /v1/packages/{provider}/{name}/{version}`: the package file, for the gateways (an
/// approved one only) and for its provider and the operator.
async fn package_file(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath((provider, name, version)): UrlPath<(String, String, String)>,
) -> ApiResult<Response> {
    let bytes = ctx
        .controller
        .package_bytes(&who, &provider, &name, &version)
        .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/vnd.oci.image.layout.v1+tar",
        )],
        bytes,
    )
        .into_response())
}

async fn deployments(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::fleet::Deployment>>> {
    operator_or_provider(&who)?;
    Ok(Json(ctx.controller.deployments(&who).await?))
}

async fn deploy(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::fleet::DeployRequest>, JsonRejection>,
) -> ApiResult<Response> {
    operator_or_provider(&who)?;
    let req = json_body(body, "deployment request")?;
    Ok((
        StatusCode::CREATED,
        Json(ctx.controller.deploy(&who, &req).await?),
    )
        .into_response())
}

async fn deployment(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Json<api::fleet::Deployment>> {
    operator_or_provider(&who)?;
    Ok(Json(ctx.controller.deployment(&who, &id).await?))
}

async fn control(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    UrlPath((id, action)): UrlPath<(String, String)>,
) -> ApiResult<Json<api::fleet::Deployment>> {
    operator_or_provider(&who)?;
    Ok(Json(ctx.controller.control(&who, &id, &action).await?))
}

async fn services(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<api::fleet::FleetService>>> {
    operator_or_provider(&who)?;
    Ok(Json(ctx.controller.services(&who).await?))
}

async fn metrics(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Response> {
    operator_or_provider(&who)?;
    let text = ctx.controller.metrics(&who).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<i64>,
    limit: Option<i64>,
    follow: Option<bool>,
}

async fn events(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    Extension(credential): Extension<Credential>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    operator_or_provider(&who)?;
    if !(server::sse::wanted(&headers) || q.follow.unwrap_or(false)) {
        let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
        let (_, events) = ctx
            .controller
            .events(&who, q.since.unwrap_or(0), limit)
            .await?;
        return Ok(Json(events).into_response());
    }
    let since = match server::sse::last_event_id(&headers).or(q.since) {
        Some(id) => id,
        None => ctx.controller.last_event_id().await?,
    };
    Ok(server::sse::stream(FleetJournal {
        controller: ctx.controller.clone(),
        who,
        since,
        credential: Watched::new(ctx.server.clone(), credential),
    }))
}

struct FleetJournal {
    controller: Arc<Controller>,
    who: Principal,
    since: i64,
    credential: Watched,
}

impl server::sse::Source for FleetJournal {
    async fn next(&mut self) -> Option<Vec<server::sse::Event>> {
        if !self.credential.holds().await {
            return None;
        }
        let (next, events) = self
            .controller
            .events(&self.who, self.since, 500)
            .await
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
}

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<api::AuditEntry>>> {
    operator(&who)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    Ok(Json(
        ctx.controller
            .audit_log(q.since.unwrap_or(0), limit)
            .await?,
    ))
}

#[derive(Deserialize)]
struct DesiredQuery {
    /// Seconds to hold the request open while the desired state equals `If-None-Match`.
    wait: Option<u64>,
}

/// `GET /v1/sync/desired`: the calling gateway's desired state. With `If-None-Match` equal to
/// the current ETag, the answer waits (up to `wait` seconds, at most the controller's long
/// poll) for a change, then says 304 if there was none.
async fn desired(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    Query(q): Query<DesiredQuery>,
) -> ApiResult<Response> {
    let gateway = gateway_of(&who)?.to_string();
    let controller = &ctx.controller;
    controller.touch(&gateway).await?;
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let wait = Duration::from_secs(q.wait.unwrap_or(0)).min(controller.cfg.long_poll);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = controller.db.subscribe();
    loop {
        // The generation is read before the state is computed, so a change made meanwhile
        // leaves the memo stale for that generation only.
        let generation = *changes.borrow_and_update();
        if !controller
            .memo
            .unchanged(&gateway, generation, known.as_deref())
        {
            let desired = controller.desired(&gateway).await?;
            controller
                .memo
                .remember(&gateway, generation, &desired.etag);
            if known.as_deref() != Some(desired.etag.as_str()) {
                let etag = desired.etag.clone();
                return Ok(([(header::ETAG, etag)], Json(desired)).into_response());
            }
        }
        let timed_out = tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err();
        if timed_out {
            let etag = known.unwrap_or_default();
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
    }
}

async fn report(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    body: Result<Json<api::fleet::Report>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let gateway = gateway_of(&who)?.to_string();
    let report = json_body(body, "report")?;
    ctx.controller.report(&gateway, &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path the router serves is in the OpenAPI document, and nothing else is.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let source = include_str!("api.rs").split("#[cfg(test)]").next().unwrap();
        let mut routed: Vec<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .map(String::from)
            .collect();
        routed.push("/openapi.json".into());
        routed.sort();
        routed.dedup();
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        documented.sort();
        assert_eq!(routed, documented);
    }

    #[test]
    fn selectors_are_comma_separated_pairs() {
        let s = parse_selector("region=lyon, model=x").unwrap();
        assert_eq!(s.get("region").map(String::as_str), Some("lyon"));
        assert_eq!(s.len(), 2);
        assert!(parse_selector("").unwrap().is_empty());
        assert!(parse_selector("region").is_err());
    }
}
