//! Who is calling: a bearer token, else a console session (its token looked up again), else
//! a pinned client certificate, else the operator on the local socket. Every guarded request
//! passes [`authenticate`], which also applies the rate limit, wants a console session's CSRF
//! token for a change, and writes the audit entry of every call that changes something.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, Method};
use axum::middleware;
use axum::response::{IntoResponse, Response};

use crate::{console, ClientCert, Principal, Problem, Server, Transport};

/// What the caller authenticated with: as stored (a token's hash or a pinned certificate),
/// or None for root on the local socket, and the console session it came through, if any;
/// long streams check it is still live.
#[derive(Debug, Clone)]
pub struct Credential {
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
    pub async fn live(&self, server: &Server) -> bool {
        let session_open = self
            .session
            .as_deref()
            .is_none_or(|id| server.sessions.open_now(id));
        session_open
            && match &self.hash {
                None => true,
                Some(hash) => server
                    .authority
                    .principal(hash)
                    .await
                    .is_ok_and(|p| p.is_some()),
            }
    }
}

/// How often an open stream (events, logs) checks that its caller's credential still holds.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// A credential as a long stream holds it: looked up again at most every five seconds.
pub struct Watched {
    server: Arc<Server>,
    credential: Credential,
    checked: Instant,
}

impl Watched {
    pub fn new(server: Arc<Server>, credential: Credential) -> Watched {
        Watched {
            server,
            credential,
            checked: Instant::now(),
        }
    }

    /// False once the credential was revoked (noticed within five seconds).
    pub async fn holds(&mut self) -> bool {
        if self.checked.elapsed() < RECHECK_EVERY {
            return true;
        }
        self.checked = Instant::now();
        self.credential.live(&self.server).await
    }
}

async fn identify(
    server: &Server,
    token: Option<String>,
    session: Option<&str>,
    cert: Option<ClientCert>,
    transport: Transport,
) -> Result<(Principal, Credential), Problem> {
    let authority = &server.authority;
    if let Some(token) = token {
        let hash = realm::token_hash(&token);
        let who = authority.principal(&hash).await?.ok_or_else(|| {
            Problem::unauthorized(format!(
                "the token is not valid or was revoked; {}",
                server.token_hint
            ))
        })?;
        return Ok((who, Credential::stored(hash)));
    }
    if let Some(id) = session {
        let ended = || {
            Problem::unauthorized(
                "the console session ended (logged out, idle for 12 hours, the server restarted \
                 or its token was revoked); log in again",
            )
        };
        let found = server.sessions.lookup(id).ok_or_else(ended)?;
        let who = authority.principal(&found.hash).await?.ok_or_else(ended)?;
        return Ok((
            who,
            Credential {
                hash: Some(found.hash),
                session: Some(id.to_string()),
            },
        ));
    }
    if let Some(ClientCert(fingerprint)) = cert {
        let hash = format!("{}{fingerprint}", realm::CERT_PREFIX);
        let who = authority.principal(&hash).await?.ok_or_else(|| {
            Problem::unauthorized(format!(
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
        Transport::Remote => Err(Problem::unauthorized(
            "this API needs a token (`Authorization: Bearer TOKEN`; the CLI reads SHG_TOKEN) \
             or a registered client certificate",
        )),
    }
}

/// Finds out who is calling, wants the CSRF token of a console session that changes
/// something, holds remote callers to a request rate, and writes every mutating call into the
/// audit log. Use as `route_layer(middleware::from_fn_with_state((server, transport),
/// authenticate))`.
pub async fn authenticate(
    State((server, transport)): State<(Arc<Server>, Transport)>,
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
        None => console::session_id(req.headers()),
        Some(_) => None,
    };
    let cert = req.extensions().get::<ClientCert>().cloned();
    let (who, credential) =
        match identify(&server, token, session.as_deref(), cert, transport).await {
            Ok(found) => found,
            Err(e) => return e.into_response(),
        };
    if transport == Transport::Remote {
        if let Err(e) = server.limiter.take(&who.label()) {
            return e.into_response();
        }
    }
    let mutating = !matches!(req.method(), &Method::GET | &Method::HEAD);
    let action = format!("{} {}", req.method(), req.uri().path());
    // A cookie is sent by the browser whoever made the page: a change needs the token only
    // the console's own script can read.
    if let (true, Some(id)) = (mutating, &credential.session) {
        let expected = server.sessions.lookup(id).map(|s| s.csrf);
        if !expected.is_some_and(|csrf| console::csrf_ok(req.headers(), &csrf)) {
            server.authority.audit(&who.label(), &action, 403).await;
            return console::csrf_refusal().into_response();
        }
    }
    let label = who.label();
    req.extensions_mut().insert(who);
    req.extensions_mut().insert(credential);
    let response = next.run(req).await;
    if mutating {
        server
            .authority
            .audit(&label, &action, response.status().as_u16())
            .await;
    }
    response
}
