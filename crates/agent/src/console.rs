//! The web console: one page, one script and one style sheet embedded in the binary, and the
//! cookie sessions that let a browser call the API under the same rules as any other caller.
//!
//! A browser logs in by posting a token in a JSON body (`POST /console/login`); the agent
//! keeps a session in memory holding the token's hash, and the browser holds only a random
//! session id in an `HttpOnly`, `SameSite=Strict` cookie. [`crate::api`]'s `authenticate`
//! takes that cookie in place of `Authorization: Bearer`, looks the token up again on every
//! request (so a revoked token ends its sessions at once) and, for every request that changes
//! something, wants the session's CSRF token in `X-CSRF-Token`. The page's script is a client
//! of `/v1` only; the console adds no operation of its own beyond logging in and out and the
//! catalog of packages under `STATE/samples` (read-only, filtered to what the caller may
//! install).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, Transport};
use crate::auth::{GatewayAction, Principal};
use crate::{Agent, AgentError};

/// The cookie holding the session id.
pub(crate) const COOKIE: &str = "shg_session";
/// The header a cookie-authenticated request that changes something must carry.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 1024;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// The console's pages: no script but our own, no framing, nothing loaded from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Session {
    /// The stored hash of the token the session was opened with.
    hash: String,
    csrf: String,
    last_used: Instant,
}

/// The open console sessions, in memory: an agent restart logs everyone out.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// What a request learns from its session.
pub(crate) struct SessionInfo {
    pub hash: String,
    pub csrf: String,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for the token stored as `hash`: (session id, CSRF token).
    fn open(&self, hash: String) -> Result<(String, String), AgentError> {
        let (id, csrf) = (random_hex()?, random_hex()?);
        let mut map = self.lock();
        map.retain(|_, s| s.last_used.elapsed() < IDLE);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                hash,
                csrf: csrf.clone(),
                last_used: Instant::now(),
            },
        );
        Ok((id, csrf))
    }

    /// The live session `id`, marked as used now; None when unknown or idle too long.
    pub(crate) fn lookup(&self, id: &str) -> Option<SessionInfo> {
        let mut map = self.lock();
        let session = map.get_mut(id)?;
        if session.last_used.elapsed() >= IDLE {
            map.remove(id);
            return None;
        }
        session.last_used = Instant::now();
        Some(SessionInfo {
            hash: session.hash.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Whether session `id` is still open, without counting as a use (for long streams).
    pub(crate) fn open_now(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|s| s.last_used.elapsed() < IDLE)
    }

    fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// 32 random bytes from the kernel, as hex.
fn random_hex() -> Result<String, AgentError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| AgentError::Internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

/// The session id in the request's `Cookie` header, if any.
pub(crate) fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether the request carries the session's CSRF token (compared in constant time).
pub(crate) fn csrf_ok(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers.get(CSRF_HEADER).map(|v| v.as_bytes()) else {
        return false;
    };
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The refusal of a cookie-authenticated change without the CSRF token.
pub(crate) fn csrf_refusal() -> AgentError {
    AgentError::Forbidden(format!(
        "a console session changes something only with its CSRF token in the `X-CSRF-Token` \
         header (`GET /console/session` gives it); log in again if the page is old (cookie \
         `{COOKIE}`)"
    ))
}

/// The console's routes: the pages and log-in (open to all), the session, log-out and the
/// catalog (behind `authenticate`, like the API).
pub(crate) fn router(agent: Arc<Agent>, transport: Transport) -> Router<Arc<Agent>> {
    let guarded = Router::new()
        .route("/console/session", get(session))
        .route("/console/logout", post(logout))
        .route("/console/catalog", get(catalog))
        .route("/console/catalog/{file}", get(catalog_package))
        .route_layer(middleware::from_fn_with_state(
            (agent.clone(), transport),
            crate::api::authenticate,
        ));
    Router::new()
        .route("/", get(page))
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route("/console/login", post(login))
        .merge(guarded)
        .with_state((agent, transport))
}

type Ctx = State<(Arc<Agent>, Transport)>;

/// An embedded file, gzipped once on first use for clients that accept it.
fn asset(
    headers: &HeaderMap,
    content_type: &'static str,
    text: &'static str,
    gz: &'static OnceLock<Vec<u8>>,
) -> Response {
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut response = if gzip_ok {
        let body = gz.get_or_init(|| {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            let _ = enc.write_all(text.as_bytes());
            enc.finish().unwrap_or_default()
        });
        let mut r = Body::from(body.as_slice()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        Body::from(text).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn page(headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    asset(&headers, "text/html; charset=utf-8", INDEX_HTML, &GZ)
}

async fn script(headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    asset(&headers, "text/javascript; charset=utf-8", APP_JS, &GZ)
}

async fn style(headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    asset(&headers, "text/css; charset=utf-8", APP_CSS, &GZ)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    token: String,
}

/// What the page learns about its session.
#[derive(Serialize)]
struct SessionView {
    /// `operator`, `provider` or `home`.
    realm: &'static str,
    provider: Option<String>,
    /// The token to send as `X-CSRF-Token` with every change; None for a caller that did
    /// not come with a session cookie (it needs none).
    csrf: Option<String>,
    /// Where the page's event stream starts (`since`), so it shows the recent journal first.
    events_since: i64,
}

/// How many journal entries back the page's event list starts.
const RECENT_EVENTS: i64 = 200;

fn view(agent: &Agent, who: &Principal, csrf: Option<String>) -> SessionView {
    let (realm, provider) = match who {
        Principal::Operator => ("operator", None),
        Principal::Provider(p) => ("provider", Some(p.clone())),
        Principal::Home => ("home", None),
    };
    let last = agent.store().last_event_id().unwrap_or(0);
    SessionView {
        realm,
        provider,
        csrf,
        events_since: (last - RECENT_EVENTS).max(0),
    }
}

fn cookie(value: &str, max_age: Option<u64>, transport: Transport) -> HeaderValue {
    let secure = if transport == Transport::Remote {
        "; Secure"
    } else {
        ""
    };
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/{secure}{age}"
    ))
    .expect("cookie is ASCII")
}

/// `POST /console/login` with `{"token": "…"}`: opens a session for a live token. JSON only
/// (a cross-site form cannot send it without the page's consent), and a request naming
/// another origin is refused, so no other site can log a browser into an account of its
/// choosing.
async fn login(
    State((agent, transport)): Ctx,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    agent.limiter.take("console-login")?;
    if !same_origin(&headers) {
        return Err(AgentError::Forbidden(
            "the console logs in only from its own pages (the Origin header names another site)"
                .into(),
        )
        .into());
    }
    let Json(req) = body.map_err(|e| {
        AgentError::BadRequest(format!(
            "log-in: send {{\"token\": \"shg_…\"}} as application/json: {}",
            e.body_text()
        ))
    })?;
    let hash = crate::auth::token_hash(req.token.trim());
    let who = agent.principal_by_hash(&hash)?;
    let status = if who.is_some() { 200 } else { 401 };
    let label = who
        .as_ref()
        .map(Principal::label)
        .unwrap_or_else(|| "unknown".into());
    if let Err(e) = agent.store().audit(&label, "POST /console/login", status) {
        tracing::error!("cannot write the audit log: {e}");
    }
    let who = who.ok_or_else(|| {
        AgentError::Unauthorized(
            "the token is not valid or was revoked; ask the gateway's operator for one \
             (`shg token create`)"
                .into(),
        )
    })?;
    // A fresh id at every log-in; the browser's old session, if any, ends.
    if let Some(old) = session_id(&headers) {
        agent.sessions.close(&old);
    }
    let (id, csrf) = agent.sessions.open(hash)?;
    let mut response = Json(view(&agent, &who, Some(csrf))).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&id, None, transport));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// False when the request names an origin other than the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// `GET /console/session`: the caller's realm and, for a cookie session, its CSRF token.
async fn session(
    State((agent, _)): Ctx,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
) -> Response {
    let csrf = session_id(&headers)
        .filter(|_| headers.get(header::AUTHORIZATION).is_none())
        .and_then(|id| agent.sessions.lookup(&id))
        .map(|s| s.csrf);
    let mut response = Json(view(&agent, &who, csrf)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /console/logout`: ends the session and clears the cookie.
async fn logout(State((agent, transport)): Ctx, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        agent.sessions.close(&id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", Some(0), transport));
    response
}

/// One package the caller may install from `STATE/samples`.
#[derive(Serialize)]
struct CatalogEntry {
    /// The file name, for `GET /console/catalog/{file}`.
    file: String,
    name: String,
    provider: String,
    version: String,
    description: String,
    size: u64,
}

fn samples_dir(agent: &Agent) -> PathBuf {
    agent.state_dir().join("samples")
}

/// The packages under `STATE/samples` (as `shg demo` leaves them) the caller may install:
/// for a provider, its own only.
fn read_catalog(agent: &Agent, who: &Principal) -> Vec<CatalogEntry> {
    let dir = samples_dir(agent);
    let mut entries: Vec<CatalogEntry> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .filter_map(|e| {
            let staging = agent
                .layout
                .tmp()
                .join(format!("catalog-{}", crate::install::unique()));
            let opened = image::open(&e.path(), &staging);
            let _ = std::fs::remove_dir_all(&staging);
            let m = manifest::parse(&opened.ok()?.manifest_toml, "shg-service.toml").ok()?;
            who.sees(&m.provider).then(|| CatalogEntry {
                file: e.file_name().to_string_lossy().into_owned(),
                name: m.name,
                provider: m.provider,
                version: m.version,
                description: m.description,
                size: e.metadata().map(|m| m.len()).unwrap_or(0),
            })
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// `GET /console/catalog`: what can be installed from the gateway's own package shelf.
async fn catalog(
    State((agent, _)): Ctx,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<CatalogEntry>>, ApiError> {
    crate::auth::check_gateway(&who, GatewayAction::Install)?;
    let entries = tokio::task::spawn_blocking(move || read_catalog(&agent, &who))
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    Ok(Json(entries))
}

/// `GET /console/catalog/{file}`: the package itself, for the page to send to
/// `POST /v1/services` (with `dry_run=true` first) like any uploaded file.
async fn catalog_package(
    State((agent, _)): Ctx,
    Extension(who): Extension<Principal>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, ApiError> {
    crate::auth::check_gateway(&who, GatewayAction::Install)?;
    let listed = {
        let (agent, who) = (agent.clone(), who.clone());
        tokio::task::spawn_blocking(move || read_catalog(&agent, &who))
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?
    };
    // Only a listed file: no path from the URL reaches the file system otherwise.
    let Some(entry) = listed.into_iter().find(|e| e.file == file) else {
        return Err(AgentError::NotFound(format!("catalog package {file}")).into());
    };
    let path = samples_dir(&agent).join(&entry.file);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| AgentError::io(&path, e))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; shg_session=abc ; b=2"),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("shg_sessionx=1"));
        assert_eq!(session_id(&h), None);
    }

    #[test]
    fn csrf_must_match_exactly() {
        let mut h = HeaderMap::new();
        assert!(!csrf_ok(&h, "abc"));
        h.insert(CSRF_HEADER, HeaderValue::from_static("abd"));
        assert!(!csrf_ok(&h, "abc"));
        h.insert(CSRF_HEADER, HeaderValue::from_static("abc"));
        assert!(csrf_ok(&h, "abc"));
        h.insert(CSRF_HEADER, HeaderValue::from_static("ab"));
        assert!(!csrf_ok(&h, "abc"));
    }

    #[test]
    fn a_login_from_another_site_is_not_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw:8443"));
        assert!(same_origin(&h), "no Origin: a non-browser client");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://gw:8443"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn sessions_end_when_closed() {
        let s = Sessions::default();
        let (id, csrf) = s.open("hash".into()).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        assert_eq!(s.lookup(&id).unwrap().csrf, csrf);
        s.close(&id);
        assert!(s.lookup(&id).is_none());
        assert!(!s.open_now(&id));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let c = cookie("x", None, Transport::Remote);
        let c = c.to_str().unwrap();
        for part in [
            "shg_session=x",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/",
            "Secure",
        ] {
            assert!(c.contains(part), "{c}");
        }
    }

    /// The page loads nothing but its own script and style sheet, and no inline script.
    #[test]
    fn the_page_has_no_inline_script() {
        assert!(INDEX_HTML.contains(r#"<script src="/console/app.js""#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        let handlers = INDEX_HTML.split(" on").skip(1).filter(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "no inline event handlers");
        assert!(!INDEX_HTML.contains("style="), "no inline styles");
    }
}
