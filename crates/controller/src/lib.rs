//! The fleet controller: enrolls gateways and gives each its own identity (a key pair it made,
//! a certificate from the controller's CA, mutual TLS from then on); keeps their inventory;
//! holds the operator's trust policy and the catalog of approved packages (TUF metadata, the
//! blobs served through the OCI distribution API); computes each
//! gateway's desired state from the deployments and its household's subscriptions; and rolls
//! deployments out in health-gated waves.
//!
//! Gateways connect outward (they sit behind home NAT): they long-poll their desired state
//! with an ETag and push reports. Every decision is a database row (`db`), so several
//! controller processes can serve one PostgreSQL database; the gateway's own admission
//! always has the last word on what it runs.

mod api;
mod ca;
mod console;
mod db;
mod deploy;
mod enroll;
mod inventory;
mod memo;
mod oci;
mod packages;
mod policy;
mod tuf;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use api::router;
pub use ca::parse_enroll_token;
pub use db::{Backend, Db};

/// The controller's errors, each a sentence for the person who can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The request is malformed or breaks a rule.
    #[error("{0}")]
    BadRequest(String),
    /// No such object (or none the caller may see).
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A credential (an enrollment token) is unknown, used, expired or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// The request is valid but the object's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The request body is larger than this call accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The package is unreadable, tampered with or not signed by a trusted key.
    #[error("package refused: {0}")]
    BadPackage(String),
    /// A file of the controller's.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error("the controller's database: {0}")]
    Database(String),
    /// Anything else: a bug or a host failure.
    #[error("{0}")]
    Internal(String),
}

impl ControllerError {
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        ControllerError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// HTTPS for the gateways, the providers and remote operators.
    pub listen: SocketAddr,
    /// `postgres://…`; None: the embedded SQLite in the state directory.
    pub database: Option<String>,
    /// A gateway silent for longer than this shows as offline.
    pub offline_after_ms: i64,
    /// How long a long-poll of the desired state is held open without a change.
    pub long_poll: std::time::Duration,
    /// How often deployments are judged.
    pub tick: std::time::Duration,
    /// How long a gateway's certificate is valid; gateways renew theirs after two thirds.
    pub gateway_cert_validity: std::time::Duration,
}

impl Config {
    pub fn new(state_dir: PathBuf, listen: SocketAddr) -> Config {
        Config {
            state_dir,
            listen,
            database: None,
            offline_after_ms: 90_000,
            long_poll: std::time::Duration::from_secs(60),
            tick: std::time::Duration::from_secs(1),
            gateway_cert_validity: std::time::Duration::from_secs(365 * 24 * 3600),
        }
    }

    fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.state_dir.join("controller.db").display()
            ),
        }
    }
}

/// One controller process.
pub struct Controller {
    pub cfg: Config,
    pub db: Db,
    ca: ca::Authority,
    memo: memo::Memo,
}

impl Controller {
    /// Opens (or makes) the state directory, the CA and the database.
    pub async fn open(cfg: Config) -> Result<Arc<Controller>, ControllerError> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| ControllerError::io(&cfg.state_dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ControllerError::io(&cfg.state_dir, e))?;
        let db = Db::open(&cfg.database_url()).await?;
        let ca = ca::Authority::open(&db).await?;
        // For clients to trust (`--ca-cert`); the key stays in the database.
        let ca_dir = cfg.state_dir.join("ca");
        std::fs::create_dir_all(&ca_dir).map_err(|e| ControllerError::io(&ca_dir, e))?;
        ca.write_ca(&ca_dir.join("ca.pem"))?;
        let controller = Controller {
            cfg,
            db,
            ca,
            memo: memo::Memo::default(),
        };
        controller.open_catalog().await?;
        Ok(Arc::new(controller))
    }

    /// The CA's SHA-256, as enrollment tokens carry it.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca.fingerprint
    }

    /// The API socket, `STATE_DIR/api.sock`: root there is the operator.
    pub fn socket(&self) -> PathBuf {
        self.cfg.state_dir.join("api.sock")
    }
}

/// What the server asks of the controller.
struct Authority(Arc<Controller>);

impl server::Authority for Authority {
    fn principal<'a>(
        &'a self,
        stored: &'a str,
    ) -> server::BoxFuture<'a, Result<Option<realm::Principal>, server::Problem>> {
        Box::pin(async move { self.0.principal(stored).await.map_err(api::problem) })
    }

    fn audit<'a>(
        &'a self,
        principal: &'a str,
        action: &'a str,
        status: u16,
    ) -> server::BoxFuture<'a, ()> {
        Box::pin(async move {
            // A gateway's routine report is no one's decision: only its failures are kept,
            // or a fleet would write millions of rows an hour.
            if action == "POST /v1/sync/report" && status < 400 {
                return;
            }
            if let Err(e) = self.0.db.audit(principal, action, status).await {
                tracing::error!("cannot write the audit log: {e}");
            }
        })
    }
}

/// The server state of a controller.
pub fn server_for(controller: &Arc<Controller>) -> Arc<server::Server> {
    server::Server::new(
        Arc::new(Authority(controller.clone())),
        "ask the fleet's operator for one (`shg fleet token create`)",
    )
}

/// Runs the controller until SIGTERM or SIGINT: the API on `STATE_DIR/api.sock` (the operator
/// as root) and over HTTPS on `listen`, the deployments' judge, and (on PostgreSQL) the
/// listener that hears the other replicas' changes.
pub fn run(cfg: Config) -> Result<(), ControllerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ControllerError::Internal(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let controller = Controller::open(cfg).await?;
        let server = server_for(&controller);
        let names = ca::local_names(controller.cfg.listen.ip());
        let (cert, key) = controller
            .ca
            .server_cert(&controller.cfg.state_dir.join("tls"), &names)?;
        let listen = server::Listen {
            addr: controller.cfg.listen,
            cert: Some(cert),
            key: Some(key),
        };
        let tls = server::tls_config(&controller.cfg.state_dir, &listen)
            .map_err(|e| ControllerError::BadRequest(e.to_string()))?;
        let tcp = server::bind_tcp(listen.addr)
            .await
            .map_err(|e| ControllerError::BadRequest(e.to_string()))?;
        let socket = controller.socket();
        let unix =
            server::bind_unix(&socket).map_err(|e| ControllerError::Internal(e.to_string()))?;
        if let Some(url) = &controller.cfg.database {
            tokio::spawn(listen_for_changes(controller.db.clone(), url.clone()));
        }
        tokio::spawn(deploy::judge(controller.clone()));
        tokio::spawn(tuf::keep_fresh(controller.clone()));
        // Its resident code: what it runs, not all it ever touched.
        server::trim::spawn();
        let remote = router(
            controller.clone(),
            server.clone(),
            server::Transport::Remote,
        );
        eprintln!(
            "shg controller: serving the API on {} and https://{} (CA sha256 {})",
            socket.display(),
            controller.cfg.listen,
            controller.ca_fingerprint()
        );
        let local = router(controller, server, server::Transport::Local);
        server::serve_until_signal(unix, local, Some((tcp, tls, remote)))
            .await
            .map_err(|e| ControllerError::Internal(format!("API server failed: {e}")))
    })
}

/// Hears the changes other controller processes announce on PostgreSQL and wakes this
/// process's long-polls; reconnects after a broken connection.
async fn listen_for_changes(db: Db, url: String) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(db::CHANNEL).await {
                    tracing::warn!("cannot listen for the other controllers' changes: {e}");
                } else {
                    loop {
                        match listener.recv().await {
                            Ok(_) => db.wake(),
                            Err(e) => {
                                tracing::warn!("the change listener broke: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot connect the change listener: {e}"),
        }
        // Whatever happened meanwhile: let the long-polls look again.
        db.wake();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
