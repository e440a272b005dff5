//! The controller's state, in SQLite (embedded, the default) or PostgreSQL (several
//! controller processes in front of one database), through one code path: `sqlx`'s `Any`
//! driver, the same SQL for both (`$N` placeholders in order, `ON CONFLICT` upserts), and
//! migrations that differ only in how an auto-numbered key is spelt.
//!
//! No controller process holds state another needs: every decision is a row, and every
//! change that concerns the gateways is announced (`NOTIFY shg_fleet` on PostgreSQL, an
//! in-process signal on SQLite) so that long-polls held by any process wake up.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::ControllerError;

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The schema, in order; `{serial}` is the auto-numbered key of the backend.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        realm TEXT NOT NULL,
        provider TEXT,
        hash TEXT NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    )",
    "CREATE TABLE enroll_tokens (
        hash TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        used_ms BIGINT,
        gateway_id TEXT
    )",
    "CREATE TABLE gateways (
        id TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        cert_sha256 TEXT NOT NULL UNIQUE,
        enrolled_ms BIGINT NOT NULL,
        last_contact_ms BIGINT,
        revoked_ms BIGINT,
        agent_version TEXT,
        report TEXT
    )",
    "CREATE TABLE trust (
        key_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        public_key TEXT NOT NULL,
        services TEXT NOT NULL,
        added_ms BIGINT NOT NULL
    )",
    "CREATE TABLE packages (
        provider TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        size BIGINT NOT NULL,
        signer TEXT NOT NULL,
        description TEXT NOT NULL,
        published_ms BIGINT NOT NULL,
        approved_ms BIGINT,
        PRIMARY KEY (provider, name, version)
    )",
    "CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        service TEXT NOT NULL,
        version TEXT NOT NULL,
        target TEXT NOT NULL,
        waves TEXT NOT NULL,
        max_failures TEXT NOT NULL,
        soak_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        wave BIGINT NOT NULL,
        wave_started_ms BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        created_by TEXT NOT NULL,
        reason TEXT
    )",
    "CREATE TABLE deployment_targets (
        deployment_id TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        position BIGINT NOT NULL,
        wave BIGINT,
        previous_version TEXT,
        outcome TEXT NOT NULL,
        reason TEXT,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (deployment_id, gateway_id)
    )",
    "CREATE TABLE subscriptions (
        gateway_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        service TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (gateway_id, provider, service)
    )",
    "CREATE TABLE events (
        id {serial},
        time_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        gateway_id TEXT,
        provider TEXT,
        service TEXT,
        message TEXT NOT NULL
    )",
    "CREATE TABLE ca (
        id BIGINT PRIMARY KEY,
        cert TEXT NOT NULL,
        key TEXT NOT NULL
    )",
    "CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        data BYTEA NOT NULL
    )",
    "CREATE TABLE audit (
        id {serial},
        time_ms BIGINT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        status BIGINT NOT NULL
    )",
    "ALTER TABLE gateways ADD COLUMN report_digest TEXT",
    "CREATE TABLE deploy_policy (
        provider TEXT PRIMARY KEY,
        selectors TEXT NOT NULL,
        set_ms BIGINT NOT NULL
    )",
    "CREATE TABLE oci_blobs (
        digest TEXT PRIMARY KEY,
        data BYTEA NOT NULL
    )",
    "CREATE TABLE package_blobs (
        provider TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (provider, name, version, digest)
    )",
    "ALTER TABLE packages ADD COLUMN signatures TEXT",
    "CREATE TABLE tuf_state (
        id BIGINT PRIMARY KEY,
        version BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        approved BIGINT NOT NULL
    )",
    "CREATE TABLE tuf_keys (
        role TEXT PRIMARY KEY,
        pk8 BYTEA NOT NULL
    )",
    "CREATE TABLE tuf_files (
        name TEXT PRIMARY KEY,
        data BYTEA NOT NULL
    )",
    "ALTER TABLE gateways ADD COLUMN cert_expires_ms BIGINT",
    "ALTER TABLE gateways ADD COLUMN previous_cert_sha256 TEXT",
    "ALTER TABLE gateways ADD COLUMN previous_expires_ms BIGINT",
    "CREATE INDEX gateways_previous_cert ON gateways (previous_cert_sha256)",
];

/// A query ready to run.
pub type Q<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// The channel on which PostgreSQL announces changes to every controller process.
pub const CHANNEL: &str = "shg_fleet";

/// The database and the signal that wakes the long-polls of this process.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    changed: tokio::sync::watch::Sender<u64>,
}

fn db_error(e: sqlx::Error) -> ControllerError {
    ControllerError::Database(e.to_string())
}

impl Db {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Db, ControllerError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(ControllerError::BadRequest(format!(
                "`{url}` is not a database URL this controller speaks; give postgres://USER@HOST/DB (or nothing for the embedded SQLite)"
            )));
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            });
        let pool = options.connect(url).await.map_err(|e| {
            ControllerError::Database(format!("cannot open the database {}: {e}", redact(url)))
        })?;
        let (changed, _) = tokio::sync::watch::channel(0);
        let db = Db {
            pool,
            backend,
            changed,
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), ControllerError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        if self.backend == Backend::Postgres {
            // Replicas starting together: one migrates, the others wait.
            sqlx::query("SELECT pg_advisory_lock(7274)")
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        let result = async {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
            )
            .execute(&mut *conn)
            .await?;
            let done: i64 = sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations")
                .fetch_one(&mut *conn)
                .await?
                .try_get("n")?;
            let serial = match self.backend {
                Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                Backend::Postgres => "BIGSERIAL PRIMARY KEY",
            };
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(done as usize) {
                sqlx::query(&sql.replace("{serial}", serial))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                    .bind(i as i64 + 1)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock(7274)")
                .execute(&mut *conn)
                .await;
        }
        result.map_err(db_error)
    }

    /// A receiver that changes whenever something the gateways follow changed, here or (on
    /// PostgreSQL) in any other controller process.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The number of changes announced so far, here or by another process: anything
    /// remembered at one generation may be stale at the next.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Wakes this process's long-polls (called for changes announced by another process).
    pub fn wake(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Announces a change the gateways follow, to every controller process.
    pub async fn announce(&self) {
        self.wake();
        if self.backend == Backend::Postgres {
            if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&self.pool)
                .await
            {
                tracing::warn!("cannot announce a change to the other controllers: {e}");
            }
        }
    }

    pub async fn execute<'q>(&self, query: Q<'q>) -> Result<u64, ControllerError> {
        query
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(db_error)
    }

    pub async fn fetch_all<'q>(&self, query: Q<'q>) -> Result<Vec<AnyRow>, ControllerError> {
        query.fetch_all(&self.pool).await.map_err(db_error)
    }

    pub async fn fetch_optional<'q>(
        &self,
        query: Q<'q>,
    ) -> Result<Option<AnyRow>, ControllerError> {
        query.fetch_optional(&self.pool).await.map_err(db_error)
    }

    /// Journals a fleet event.
    pub async fn event(
        &self,
        kind: &str,
        gateway: Option<&str>,
        service: Option<(&str, &str)>,
        message: &str,
    ) -> Result<(), ControllerError> {
        self.execute(
            sqlx::query(
                "INSERT INTO events (time_ms, kind, gateway_id, provider, service, message) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(now_ms())
            .bind(kind.to_string())
            .bind(gateway.map(String::from))
            .bind(service.map(|s| s.0.to_string()))
            .bind(service.map(|s| s.1.to_string()))
            .bind(message.to_string()),
        )
        .await?;
        Ok(())
    }

    /// Records a call made through the API.
    pub async fn audit(
        &self,
        principal: &str,
        action: &str,
        status: u16,
    ) -> Result<(), ControllerError> {
        self.execute(
            sqlx::query(
                "INSERT INTO audit (time_ms, principal, action, status) VALUES ($1, $2, $3, $4)",
            )
            .bind(now_ms())
            .bind(principal.to_string())
            .bind(action.to_string())
            .bind(i64::from(status)),
        )
        .await?;
        Ok(())
    }
}

/// A database URL fit for a message: no password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A column that may be NULL.
pub fn opt_str(row: &AnyRow, col: &str) -> Option<String> {
    row.try_get::<Option<String>, _>(col).ok().flatten()
}

pub fn opt_i64(row: &AnyRow, col: &str) -> Option<i64> {
    row.try_get::<Option<i64>, _>(col).ok().flatten()
}

pub fn str_of(row: &AnyRow, col: &str) -> String {
    row.try_get::<String, _>(col).unwrap_or_default()
}

pub fn i64_of(row: &AnyRow, col: &str) -> i64 {
    row.try_get::<i64, _>(col).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redact("postgres://shg:s3cret@db.example/fleet"),
            "postgres://shg@db.example/fleet"
        );
        assert_eq!(
            redact("sqlite:///var/lib/shg/c.db"),
            "sqlite:///var/lib/shg/c.db"
        );
    }

    #[tokio::test]
    async fn migrations_run_once_and_the_schema_takes_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let db = Db::open(&url).await.unwrap();
        db.event("enrolled", Some("gw-1"), None, "hello")
            .await
            .unwrap();
        drop(db);
        let db = Db::open(&url).await.unwrap();
        let rows = db
            .fetch_all(sqlx::query(
                "SELECT id, kind, gateway_id, provider FROM events",
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(str_of(&rows[0], "kind"), "enrolled");
        assert_eq!(opt_str(&rows[0], "gateway_id").as_deref(), Some("gw-1"));
        assert_eq!(opt_str(&rows[0], "provider"), None);
        assert_eq!(i64_of(&rows[0], "id"), 1);
    }
}
