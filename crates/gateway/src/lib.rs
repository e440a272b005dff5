//! The gateway process: the agent served as an API on `STATE_DIR/api.sock` and, with
//! `--listen`, over HTTPS, with its web console. `shg gateway run` is [`run`].
//!
//! HTTP is only a translation layer here: each handler checks the caller's realm through the
//! agent, calls one operation on [`agent::Agent`], and turns the result or the error into a
//! response (`api`). The server pieces (listeners, authentication, sessions, rate limit,
//! SSE) are the `server` crate's, shared with the fleet controller.

mod api;
mod console;
pub mod fleet;

use std::sync::Arc;

use agent::{Agent, AgentError};

pub use api::{problem, router, router_in_fleet, OPENAPI};
pub use server::{Listen, Transport};

/// How the agent's state answers the server's questions: who a credential is, where audit
/// entries go.
struct Authority(Arc<Agent>);

impl server::Authority for Authority {
    fn principal<'a>(
        &'a self,
        stored: &'a str,
    ) -> server::BoxFuture<'a, Result<Option<agent::Principal>, server::Problem>> {
        Box::pin(async move { self.0.principal_by_hash(stored).map_err(problem) })
    }

    fn audit<'a>(
        &'a self,
        principal: &'a str,
        action: &'a str,
        status: u16,
    ) -> server::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.0.audit(principal, action, status) {
                tracing::error!("cannot write the audit log: {e}");
            }
        })
    }
}

/// The fleet controller a gateway syncs with.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// `https://HOST:PORT`.
    pub controller: String,
    /// A one-time token (`shg fleet enroll-token`), needed only until the gateway enrolled.
    pub enroll_token: Option<String>,
}

/// The server state of a gateway agent.
pub fn server_for(agent: &Arc<Agent>) -> Arc<server::Server> {
    server::Server::new(
        Arc::new(Authority(agent.clone())),
        "ask the gateway's operator for one (`shg token create`)",
    )
}

/// Runs the gateway until SIGTERM or SIGINT: recovers what a previous run left, serves the
/// API on `STATE_DIR/api.sock` (and over HTTPS with `listen`). Services keep running after
/// the agent exits.
pub fn run(
    mut cfg: agent::Config,
    listen: Option<Listen>,
    fleet: Option<Fleet>,
) -> Result<(), AgentError> {
    cfg.api_port = listen.as_ref().map(|l| l.addr.port());
    cfg.prepare_helpers()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AgentError::Internal(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let agent = Agent::open(cfg)?;
        let _lock = agent.start_up().await?;
        // The ISP's USP controller, when `gateway.toml` names one.
        usp::spawn(&agent);
        // The agent's resident code: what it uses, not all it ever touched.
        server::trim::spawn();
        let link = if let Some(fleet) = fleet {
            let enrollment = fleet::enroll_patiently(
                agent.state_dir(),
                &fleet.controller,
                fleet.enroll_token.as_deref(),
            )
            .await?;
            eprintln!(
                "shg gateway: syncing with {} as {}",
                enrollment.controller, enrollment.gateway_id
            );
            let link = fleet::Link::new(agent.clone(), enrollment)?;
            link.start_catalog().await;
            fleet::spawn(link.clone());
            Some(link)
        } else {
            None
        };
        let server = server_for(&agent);
        let socket = agent.socket();
        let listener = server::bind_unix(&socket).map_err(AgentError::internal)?;
        tracing::info!(socket = %socket.display(), "gateway agent ready");
        eprintln!("shg gateway: serving the API on {}", socket.display());
        let remote = match listen {
            None => None,
            Some(listen) => {
                let config = server::tls_config(agent.state_dir(), &listen)
                    .map_err(|e| AgentError::BadRequest(e.to_string()))?;
                let tcp = server::bind_tcp(listen.addr)
                    .await
                    .map_err(|e| AgentError::BadRequest(e.to_string()))?;
                eprintln!("shg gateway: serving the API on https://{}", listen.addr);
                let app = router_in_fleet(
                    agent.clone(),
                    server.clone(),
                    Transport::Remote,
                    link.clone(),
                );
                Some((tcp, config, app))
            }
        };
        // The services keep running after the agent exits.
        let stopping = agent.clone();
        let app = router_in_fleet(agent, server, Transport::Local, link);
        let served = server::serve_until_signal(listener, app, remote)
            .await
            .map_err(|e| AgentError::Internal(format!("API server failed: {e}")));
        stopping.shut_down();
        served
    })
}
