//! The HTTP server pieces the gateway agent and the fleet controller share: the listeners
//! (a Unix socket for root, HTTPS for everyone else), authentication of every request to a
//! principal (token, console session or pinned client certificate), the per-principal rate
//! limit, the audit hook, JSON error bodies, Server-Sent Events, the OpenAPI route and the web
//! console's cookie sessions and assets.
//!
//! What a server knows of its domain comes in through [`Authority`]: which principal a stored
//! credential stands for, and where audit entries go. Each application builds its own router
//! of handlers and wraps it with [`authenticate`]; handlers find the caller as
//! `Extension<Principal>` and its credential as `Extension<Credential>`.

mod auth;
pub mod console;
mod limit;
mod listen;
mod problem;
pub mod sse;
pub mod trim;

use std::sync::Arc;

pub use auth::{authenticate, Credential, Watched};
pub use limit::Limiter;
pub use listen::{
    bind_tcp, bind_unix, serve_tls, serve_unix, serve_until_signal, tls_config, write_private,
    ClientCert, Listen, ListenError,
};
pub use problem::{json_errors, no_such_path, openapi_route, Problem};
pub use realm::Principal;

/// How a request reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The Unix socket (mode 0600): root on the host, the operator unless a token says
    /// otherwise.
    Local,
    /// TCP with TLS: a token, a console session or a registered certificate is required.
    Remote,
}

/// A future an [`Authority`] returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the server asks of its application.
pub trait Authority: Send + Sync + 'static {
    /// The principal a stored credential stands for: a token's hash ([`realm::token_hash`]) or
    /// [`realm::CERT_PREFIX`] and a pinned certificate's SHA-256; None when unknown or
    /// revoked.
    fn principal<'a>(
        &'a self,
        stored: &'a str,
    ) -> BoxFuture<'a, Result<Option<Principal>, Problem>>;

    /// Records a call that changed something (or tried to).
    fn audit<'a>(&'a self, principal: &'a str, action: &'a str, status: u16) -> BoxFuture<'a, ()>;
}

/// One server's shared state: its authority, the console sessions and the rate limiter.
pub struct Server {
    pub authority: Arc<dyn Authority>,
    pub sessions: console::Sessions,
    pub limiter: Limiter,
    /// Where a caller without a valid token gets one, for messages: "ask the gateway's
    /// operator for one (`shg token create`)".
    pub token_hint: &'static str,
}

impl Server {
    /// A server with the default limits: 20 requests a second per remote principal, bursts
    /// of 100.
    pub fn new(authority: Arc<dyn Authority>, token_hint: &'static str) -> Arc<Server> {
        Arc::new(Server {
            authority,
            sessions: console::Sessions::default(),
            limiter: Limiter::new(20.0, 100.0),
            token_hint,
        })
    }
}
