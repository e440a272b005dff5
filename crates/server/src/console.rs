//! A web console's plumbing: its embedded page, script and style sheet, and the cookie
//! sessions that let a browser call the API under the same rules as any other caller.
//!
//! A browser logs in by posting a token in a JSON body (`POST /console/login`); the server
//! keeps a session in memory holding the token's hash, and the browser holds only a random
//! session id in an `HttpOnly`, `SameSite=Strict` cookie. [`crate::authenticate`] takes that
//! cookie in place of `Authorization: Bearer`, looks the token up again on every request (so
//! a revoked token ends its sessions at once) and, for every request that changes something,
//! wants the session's CSRF token in `X-CSRF-Token`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use serde::Deserialize;

use crate::{Principal, Problem, Server, Transport};

/// The cookie holding the session id.
pub const COOKIE: &str = "shg_session";
/// The header a cookie-authenticated request that changes something must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 1024;

/// The console's pages: no script but our own, no framing, nothing loaded from elsewhere.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Session {
    /// The stored hash of the token the session was opened with.
    hash: String,
    csrf: String,
    last_used: Instant,
}

/// The open console sessions, in memory: a restart logs everyone out.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// What a request learns from its session.
pub struct SessionInfo {
    pub hash: String,
    pub csrf: String,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for the token stored as `hash`: (session id, CSRF token).
    pub fn open(&self, hash: String) -> Result<(String, String), realm::CredentialError> {
        let (id, csrf) = (realm::random_hex(32)?, realm::random_hex(32)?);
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
    pub fn lookup(&self, id: &str) -> Option<SessionInfo> {
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
    pub fn open_now(&self, id: &str) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|s| s.last_used.elapsed() < IDLE)
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The session id in the request's `Cookie` header, if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
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
pub fn csrf_ok(headers: &HeaderMap, expected: &str) -> bool {
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
pub fn csrf_refusal() -> Problem {
    Problem::forbidden(format!(
        "a console session changes something only with its CSRF token in the `X-CSRF-Token` \
         header (`GET /console/session` gives it); log in again if the page is old (cookie \
         `{COOKIE}`)"
    ))
}

/// The files of one console, embedded in the binary.
#[derive(Clone, Copy)]
pub struct Pages {
    pub html: &'static str,
    pub js: &'static str,
    pub css: &'static str,
}

/// What the page learns about its session, from the caller and its CSRF token (None for a
/// caller that did not come with a session cookie: it needs none). The application adds
/// what its page needs (where the event list starts, say).
pub type SessionView = Arc<dyn Fn(&Principal, Option<String>) -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
struct Console {
    server: Arc<Server>,
    transport: Transport,
    pages: Pages,
    view: SessionView,
}

/// The console's own routes: the page, its script and style sheet, log-in (open to all), and
/// the session and log-out (behind [`crate::authenticate`], like the API). The application
/// merges them into its router beside its API and its own console routes.
pub fn router<S: Clone + Send + Sync + 'static>(
    server: Arc<Server>,
    transport: Transport,
    pages: Pages,
    view: SessionView,
) -> Router<S> {
    let console = Console {
        server: server.clone(),
        transport,
        pages,
        view,
    };
    let guarded = Router::new()
        .route("/console/session", get(session))
        .route("/console/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(
            (server, transport),
            crate::authenticate,
        ));
    Router::new()
        .route("/", get(page))
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .route("/console/login", post(login))
        .merge(guarded)
        .with_state(console)
}

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

// One server process serves one console, so one gzipped copy of each file is enough.
async fn page(State(c): State<Console>, headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    asset(&headers, "text/html; charset=utf-8", c.pages.html, &GZ)
}

async fn script(State(c): State<Console>, headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    asset(&headers, "text/javascript; charset=utf-8", c.pages.js, &GZ)
}

async fn style(State(c): State<Console>, headers: HeaderMap) -> Response {
    static GZ: OnceLock<Vec<u8>> = OnceLock::new();
    asset(&headers, "text/css; charset=utf-8", c.pages.css, &GZ)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    token: String,
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
    State(c): State<Console>,
    headers: HeaderMap,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let server = &c.server;
    server.limiter.take("console-login")?;
    if !same_origin(&headers) {
        return Err(Problem::forbidden(
            "the console logs in only from its own pages (the Origin header names another site)",
        ));
    }
    let Json(req) = body.map_err(|e| {
        Problem::bad_request(format!(
            "log-in: send {{\"token\": \"shg_…\"}} as application/json: {}",
            e.body_text()
        ))
    })?;
    let hash = realm::token_hash(req.token.trim());
    let who = server.authority.principal(&hash).await?;
    let status = if who.is_some() { 200 } else { 401 };
    let label = who
        .as_ref()
        .map(Principal::label)
        .unwrap_or_else(|| "unknown".into());
    server
        .authority
        .audit(&label, "POST /console/login", status)
        .await;
    let who = who.ok_or_else(|| {
        Problem::unauthorized(format!(
            "the token is not valid or was revoked; {}",
            server.token_hint
        ))
    })?;
    // A fresh id at every log-in; the browser's old session, if any, ends.
    if let Some(old) = session_id(&headers) {
        server.sessions.close(&old);
    }
    let (id, csrf) = server
        .sessions
        .open(hash)
        .map_err(|e| Problem::internal("the server", e))?;
    let mut response = Json((c.view)(&who, Some(csrf))).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&id, None, c.transport));
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
    State(c): State<Console>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
) -> Response {
    let csrf = session_id(&headers)
        .filter(|_| headers.get(header::AUTHORIZATION).is_none())
        .and_then(|id| c.server.sessions.lookup(&id))
        .map(|s| s.csrf);
    let mut response = Json((c.view)(&who, csrf)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /console/logout`: ends the session and clears the cookie.
async fn logout(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        c.server.sessions.close(&id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", Some(0), c.transport));
    response
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
}
