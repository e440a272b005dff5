//! The agent's durable state: one SQLite database (WAL) holding every service record and the
//! journal of events.
//!
//! Every change to a service is written together with the event that explains it, in one
//! transaction: the record and the journal never disagree, and a crash at any instant leaves
//! either the state before the change or the state after it.

mod access;

pub use access::{AuditRecord, TokenRecord, TrustRecord, CERT_PREFIX};

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or used.
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// No record by that name.
    #[error("no service named `{0}` is installed; `shg ps` lists the installed services")]
    NotFound(String),
    /// A record by that name already exists.
    #[error("a service named `{0}` is already installed; remove it first with `shg remove {0}`")]
    Exists(String),
}

/// Where a service is in its install / remove life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Being unpacked; rolled back if the agent dies now.
    Installing,
    Installed,
    /// Being removed; finished if the agent dies now.
    Removing,
    /// A new release ([`ServiceRecord::next`]) is being prepared beside the current one; if
    /// the agent dies now, the next start finishes the switch when the new release is fully
    /// in place and drops it otherwise.
    Updating,
}

/// What should be true of the service's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    Running,
    Stopped,
}

/// What is true of the service's container, as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Exited,
    Backoff,
    CrashLoop,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

macro_rules! text_enum {
    ($t:ty) => {
        impl $t {
            pub fn as_str(&self) -> String {
                serde_json::to_value(self)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .expect("unit variants serialize to strings")
            }

            pub fn parse(s: &str) -> Option<Self> {
                serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
            }
        }
    };
}
text_enum!(Phase);
text_enum!(Desired);
text_enum!(RunState);
text_enum!(Health);

/// One installed service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub name: String,
    pub provider: String,
    pub version: String,
    pub image_digest: String,
    /// The manifest text as the package carried it.
    pub manifest: String,
    pub phase: Phase,
    pub desired: Desired,
    pub state: RunState,
    pub health: Health,
    /// Host PID of the container's init while it runs.
    pub pid: Option<i32>,
    /// Its start time in clock ticks, telling it from a later process with the same PID.
    pub pid_start: Option<u64>,
    pub exit_code: Option<i32>,
    /// Restarts done by the restart policy since install.
    pub restarts: u32,
    /// Failures in a row without a stable run in between; drives the back-off.
    pub failures: u32,
    pub reason: Option<String>,
    pub installed_at_ms: u64,
    pub started_at_ms: Option<u64>,
    /// The household's ranking, 0..=100, higher is more important: who bursts first, whose
    /// memory is reclaimed last, who is stopped last.
    pub priority: i32,
    /// Its place on the gateway's service network (address `.slot`), fixed from install to
    /// removal; given by [`Store::insert`].
    pub slot: Option<u8>,
    /// Id of the trusted key whose signature admitted the package; `None` when the operator
    /// installed it with `--allow-unsigned` (or an agent older than signatures did).
    pub signer: Option<String>,
    /// The registry reference the package was pulled from, when it came from one.
    pub source: Option<String>,
    /// The release this one replaced, kept for `shg rollback`.
    pub previous: Option<Release>,
    /// The release an update in progress ([`Phase::Updating`]) is switching to.
    pub next: Option<Release>,
    /// Until when (Unix ms) a freshly updated release must stay up and healthy; if it fails
    /// before, the agent rolls back to [`ServiceRecord::previous`] by itself.
    pub probation_until_ms: Option<u64>,
    /// The LAN hosts the household lets the service reach (`HOST` or `HOST:PORT`), which the
    /// firewall otherwise closes to every service.
    pub lan: Vec<String>,
}

/// One version of a service's package, as an update switches between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub image_digest: String,
    /// The manifest text as the package carried it.
    pub manifest: String,
    pub signer: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
}

impl ServiceRecord {
    /// The release the record runs now.
    pub fn release(&self) -> Release {
        Release {
            version: self.version.clone(),
            image_digest: self.image_digest.clone(),
            manifest: self.manifest.clone(),
            signer: self.signer.clone(),
            source: self.source.clone(),
        }
    }

    /// Makes `release` the current one (its fields only; the rest of the record stays).
    pub fn set_release(&mut self, release: Release) {
        self.version = release.version;
        self.image_digest = release.image_digest;
        self.manifest = release.manifest;
        self.signer = release.signer;
        self.source = release.source;
    }

    /// A record for a service about to be installed.
    pub fn new(name: &str, provider: &str, version: &str, digest: &str, manifest: &str) -> Self {
        ServiceRecord {
            name: name.into(),
            provider: provider.into(),
            version: version.into(),
            image_digest: digest.into(),
            manifest: manifest.into(),
            phase: Phase::Installing,
            desired: Desired::Stopped,
            state: RunState::Created,
            health: Health::None,
            pid: None,
            pid_start: None,
            exit_code: None,
            restarts: 0,
            failures: 0,
            reason: None,
            installed_at_ms: now_ms(),
            started_at_ms: None,
            priority: DEFAULT_PRIORITY,
            slot: None,
            signer: None,
            source: None,
            previous: None,
            next: None,
            probation_until_ms: None,
            lan: Vec::new(),
        }
    }
}

/// An entry of the journal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub time_ms: u64,
    pub service: Option<String>,
    pub kind: String,
    pub message: String,
}

/// What an event says: a machine-readable kind and a sentence.
#[derive(Debug, Clone)]
pub struct Note {
    pub kind: &'static str,
    pub message: String,
}

impl Note {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Note {
            kind,
            message: message.into(),
        }
    }
}

/// Priority of a service nobody ranked yet.
pub const DEFAULT_PRIORITY: i32 = 50;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS services (
    name TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    version TEXT NOT NULL,
    image_digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    phase TEXT NOT NULL,
    desired TEXT NOT NULL,
    state TEXT NOT NULL,
    health TEXT NOT NULL,
    pid INTEGER,
    pid_start INTEGER,
    exit_code INTEGER,
    restarts INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    reason TEXT,
    installed_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    priority INTEGER NOT NULL DEFAULT 50,
    slot INTEGER,
    signer TEXT,
    source TEXT,
    previous TEXT,
    next TEXT,
    probation_until_ms INTEGER,
    lan TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    service TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_service ON events(service, id);
";

/// Events kept in the journal; older ones are dropped so the database stays small.
const EVENTS_KEPT: i64 = 10_000;

/// The state database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Called after each committed journal entry (see [`Store::on_journal`]).
    journaled: Option<Box<dyn Fn() + Send>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        let db = |source| StateError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.execute_batch(access::SCHEMA).map_err(db)?;
        migrate(&conn).map_err(db)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            journaled: None,
        })
    }

    /// Has `hook` called after each event is committed to the journal, so followers of the
    /// journal wake at once instead of polling it.
    pub fn on_journal(&mut self, hook: impl Fn() + Send + 'static) {
        self.journaled = Some(Box::new(hook));
    }

    fn announce(&self) {
        if let Some(hook) = &self.journaled {
            hook();
        }
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        |source| StateError::Db {
            path: self.path.clone(),
            source,
        }
    }

    pub fn list(&self) -> Result<Vec<ServiceRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT * FROM services ORDER BY name")
            .map_err(self.db())?;
        let rows = stmt.query_map([], from_row).map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }

    pub fn get(&self, name: &str) -> Result<ServiceRecord, StateError> {
        self.find(name)?
            .ok_or_else(|| StateError::NotFound(name.to_string()))
    }

    pub fn find(&self, name: &str) -> Result<Option<ServiceRecord>, StateError> {
        find(&self.conn, name).map_err(self.db())
    }

    /// The records whose name without its provider (`PROVIDER+`) is `bare`: the service
    /// named `bare` and any other provider's of that name, in name order.
    pub fn named(&self, bare: &str) -> Result<Vec<ServiceRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT * FROM services WHERE name = ?1
                 OR (length(name) > length(?1) + 1 AND substr(name, -length(?1) - 1) = '+' || ?1)
                 ORDER BY name",
            )
            .map_err(self.db())?;
        let rows = stmt.query_map([bare], from_row).map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }

    /// Adds a new record and its event; refuses a name already taken.
    pub fn insert(&mut self, rec: &ServiceRecord, note: Note) -> Result<(), StateError> {
        let tx = self.conn.transaction().map_err(|source| StateError::Db {
            path: self.path.clone(),
            source,
        })?;
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM services WHERE name = ?1",
                [&rec.name],
                |_| Ok(true),
            )
            .optional()
            .map_err(|source| StateError::Db {
                path: self.path.clone(),
                source,
            })?
            .unwrap_or(false);
        if exists {
            return Err(StateError::Exists(rec.name.clone()));
        }
        let mut rec = rec.clone();
        if rec.slot.is_none() {
            rec.slot = free_slot(&tx).map_err(|source| StateError::Db {
                path: self.path.clone(),
                source,
            })?;
        }
        write(&tx, &rec, true)
            .and_then(|_| journal(&tx, Some(&rec.name), &note))
            .and_then(|_| tx.commit())
            .map_err(|source| StateError::Db {
                path: self.path.clone(),
                source,
            })?;
        self.announce();
        Ok(())
    }

    /// Changes a record and journals why, atomically; returns the record as written.
    pub fn update(
        &mut self,
        name: &str,
        note: Option<Note>,
        change: impl FnOnce(&mut ServiceRecord),
    ) -> Result<ServiceRecord, StateError> {
        let path = self.path.clone();
        let db = move |source| StateError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&db)?;
        let mut rec = find(&tx, name)
            .map_err(&db)?
            .ok_or_else(|| StateError::NotFound(name.to_string()))?;
        change(&mut rec);
        write(&tx, &rec, false).map_err(&db)?;
        let noted = note.is_some();
        if let Some(note) = note {
            journal(&tx, Some(name), &note).map_err(&db)?;
        }
        tx.commit().map_err(&db)?;
        if noted {
            self.announce();
        }
        Ok(rec)
    }

    /// Gives `name` a network slot if it has none (a record older than slots); returns it.
    pub fn give_slot(&mut self, name: &str) -> Result<Option<u8>, StateError> {
        let path = self.path.clone();
        let db = move |source| StateError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&db)?;
        let current: Option<u8> = tx
            .query_row("SELECT slot FROM services WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&db)?
            .ok_or_else(|| StateError::NotFound(name.to_string()))?;
        if current.is_some() {
            return Ok(current);
        }
        let slot = free_slot(&tx).map_err(&db)?;
        tx.execute(
            "UPDATE services SET slot = ?1 WHERE name = ?2",
            params![slot, name],
        )
        .map_err(&db)?;
        tx.commit().map_err(&db)?;
        Ok(slot)
    }

    /// Deletes a record, journaling why.
    pub fn delete(&mut self, name: &str, note: Note) -> Result<(), StateError> {
        let path = self.path.clone();
        let db = move |source| StateError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&db)?;
        tx.execute("DELETE FROM services WHERE name = ?1", [name])
            .map_err(&db)?;
        journal(&tx, Some(name), &note).map_err(&db)?;
        tx.commit().map_err(&db)?;
        self.announce();
        Ok(())
    }

    /// Journals an event that changes no record.
    pub fn record(&mut self, service: Option<&str>, note: Note) -> Result<(), StateError> {
        journal(&self.conn, service, &note).map_err(self.db())?;
        self.announce();
        Ok(())
    }

    /// The first `limit` events after `since`, oldest first, optionally of one service (page
    /// through the journal by passing the last id seen as `since`).
    pub fn events(
        &self,
        since: i64,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, time_ms, service, kind, message FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR service = ?2) ORDER BY id ASC LIMIT ?3",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![since, service, limit as i64], event_from_row)
            .map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }

    /// The most recent `limit` events of one service, oldest first.
    pub fn recent_events(
        &self,
        service: &str,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, time_ms, service, kind, message FROM events
                 WHERE service = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![service, limit as i64], event_from_row)
            .map_err(self.db())?;
        let mut events = rows.collect::<Result<Vec<_>, _>>().map_err(self.db())?;
        events.reverse();
        Ok(events)
    }

    /// The id of the newest event, 0 for an empty journal.
    pub fn last_event_id(&self) -> Result<i64, StateError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })
            .map_err(self.db())
    }

    /// How many events of `kind` the journal holds for `service` from `since_ms` on.
    pub fn count_events(
        &self,
        service: &str,
        kind: &str,
        since_ms: u64,
    ) -> Result<u64, StateError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM events WHERE service = ?1 AND kind = ?2 AND time_ms >= ?3",
                params![service, kind, since_ms as i64],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.db())
    }

    /// Checks the database file is sound (used at start and by tests).
    pub fn integrity_ok(&self) -> Result<bool, StateError> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.db())?;
        Ok(verdict == "ok")
    }
}

/// Brings a database written by an older agent up to the current schema.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_priority: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('services') WHERE name = 'priority'")?
        .exists([])?;
    if !has_priority {
        conn.execute_batch("ALTER TABLE services ADD COLUMN priority INTEGER NOT NULL DEFAULT 50")?;
    }
    let has_slot: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('services') WHERE name = 'slot'")?
        .exists([])?;
    if !has_slot {
        conn.execute_batch("ALTER TABLE services ADD COLUMN slot INTEGER")?;
    }
    let has_signer: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('services') WHERE name = 'signer'")?
        .exists([])?;
    if !has_signer {
        conn.execute_batch(
            "ALTER TABLE services ADD COLUMN signer TEXT;
             ALTER TABLE services ADD COLUMN source TEXT;
             ALTER TABLE services ADD COLUMN previous TEXT;
             ALTER TABLE services ADD COLUMN next TEXT;
             ALTER TABLE services ADD COLUMN probation_until_ms INTEGER;",
        )?;
    }
    let has_lan: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('services') WHERE name = 'lan'")?
        .exists([])?;
    if !has_lan {
        conn.execute_batch("ALTER TABLE services ADD COLUMN lan TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

fn write(conn: &Connection, rec: &ServiceRecord, insert: bool) -> rusqlite::Result<()> {
    let verb = if insert { "INSERT" } else { "REPLACE" };
    conn.prepare_cached(&format!(
        "{verb} INTO services (name, provider, version, image_digest, manifest, phase, desired,
         state, health, pid, pid_start, exit_code, restarts, failures, reason, installed_at_ms,
         started_at_ms, priority, slot, signer, source, previous, next, probation_until_ms, lan)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23,?24,?25)"
    ))?
    .execute(params![
            rec.name,
            rec.provider,
            rec.version,
            rec.image_digest,
            rec.manifest,
            rec.phase.as_str(),
            rec.desired.as_str(),
            rec.state.as_str(),
            rec.health.as_str(),
            rec.pid,
            rec.pid_start.map(|v| v as i64),
            rec.exit_code,
            rec.restarts,
            rec.failures,
            rec.reason,
            rec.installed_at_ms as i64,
            rec.started_at_ms.map(|v| v as i64),
            rec.priority,
            rec.slot,
            rec.signer,
            rec.source,
            rec.previous.as_ref().map(release_json),
            rec.next.as_ref().map(release_json),
            rec.probation_until_ms.map(|v| v as i64),
            rec.lan.join(","),
        ],
    )?;
    Ok(())
}

/// The record of `name`, through the connection's statement cache (the hottest query).
fn find(conn: &Connection, name: &str) -> rusqlite::Result<Option<ServiceRecord>> {
    conn.prepare_cached("SELECT * FROM services WHERE name = ?1")?
        .query_row([name], from_row)
        .optional()
}

fn release_json(release: &Release) -> String {
    serde_json::to_string(release).expect("a release serializes")
}

fn release_from(r: &Row<'_>, column: &str) -> rusqlite::Result<Option<Release>> {
    let text: Option<String> = r.get(column)?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

/// The lowest network slot (2..=254) no service holds; `None` when all are taken.
fn free_slot(conn: &Connection) -> rusqlite::Result<Option<u8>> {
    let mut stmt = conn.prepare("SELECT slot FROM services WHERE slot IS NOT NULL")?;
    let taken: Vec<u8> = stmt
        .query_map([], |r| r.get::<_, u8>(0))?
        .collect::<Result<_, _>>()?;
    Ok((2..=254).find(|s| !taken.contains(s)))
}

fn journal(conn: &Connection, service: Option<&str>, note: &Note) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (time_ms, service, kind, message) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![now_ms() as i64, service, note.kind, note.message])?;
    let id = conn.last_insert_rowid();
    if id % 1000 == 0 {
        conn.execute("DELETE FROM events WHERE id <= ?1", [id - EVENTS_KEPT])?;
    }
    Ok(())
}

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: r.get(0)?,
        time_ms: r.get::<_, i64>(1)? as u64,
        service: r.get(2)?,
        kind: r.get(3)?,
        message: r.get(4)?,
    })
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<ServiceRecord> {
    let text_enum = |idx: usize| -> rusqlite::Result<String> { r.get(idx) };
    let bad = |idx: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("unknown {what}").into(),
        )
    };
    Ok(ServiceRecord {
        name: r.get("name")?,
        provider: r.get("provider")?,
        version: r.get("version")?,
        image_digest: r.get("image_digest")?,
        manifest: r.get("manifest")?,
        phase: Phase::parse(&text_enum(5)?).ok_or_else(|| bad(5, "phase"))?,
        desired: Desired::parse(&text_enum(6)?).ok_or_else(|| bad(6, "desired state"))?,
        state: RunState::parse(&text_enum(7)?).ok_or_else(|| bad(7, "state"))?,
        health: Health::parse(&text_enum(8)?).ok_or_else(|| bad(8, "health"))?,
        pid: r.get("pid")?,
        pid_start: r.get::<_, Option<i64>>("pid_start")?.map(|v| v as u64),
        exit_code: r.get("exit_code")?,
        restarts: r.get("restarts")?,
        failures: r.get("failures")?,
        reason: r.get("reason")?,
        installed_at_ms: r.get::<_, i64>("installed_at_ms")? as u64,
        started_at_ms: r.get::<_, Option<i64>>("started_at_ms")?.map(|v| v as u64),
        priority: r.get("priority")?,
        slot: r.get("slot")?,
        signer: r.get("signer")?,
        source: r.get("source")?,
        previous: release_from(r, "previous")?,
        next: release_from(r, "next")?,
        probation_until_ms: r
            .get::<_, Option<i64>>("probation_until_ms")?
            .map(|v| v as u64),
        lan: r
            .get::<_, String>("lan")?
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn each_service_holds_its_own_slot_until_removed() {
        let (_dir, mut s) = store();
        for name in ["a", "b", "c"] {
            let rec = ServiceRecord::new(name, "acme", "1", "sha256:00", "");
            s.insert(&rec, Note::new("installing", "")).unwrap();
        }
        let slot = |s: &Store, n: &str| s.get(n).unwrap().slot;
        assert_eq!(
            (slot(&s, "a"), slot(&s, "b"), slot(&s, "c")),
            (Some(2), Some(3), Some(4))
        );
        // An update keeps it; a removal frees it for the next install.
        s.update("b", None, |r| r.priority = 7).unwrap();
        assert_eq!(slot(&s, "b"), Some(3));
        s.delete("b", Note::new("removed", "")).unwrap();
        let rec = ServiceRecord::new("d", "acme", "1", "sha256:00", "");
        s.insert(&rec, Note::new("installing", "")).unwrap();
        assert_eq!(slot(&s, "d"), Some(3));
    }

    #[test]
    fn insert_update_delete_journal_each_step() {
        let (_dir, mut s) = store();
        let rec = ServiceRecord::new("camera", "acme", "1.2.0", "sha256:00", "name = 'camera'");
        s.insert(&rec, Note::new("installing", "installing camera"))
            .unwrap();
        let got = s
            .update(
                "camera",
                Some(Note::new("started", "camera started")),
                |r| {
                    r.state = RunState::Running;
                    r.pid = Some(42);
                },
            )
            .unwrap();
        assert_eq!(got.state, RunState::Running);
        assert_eq!(s.get("camera").unwrap().pid, Some(42));
        assert!(s.get("camera").unwrap().lan.is_empty());
        s.update("camera", None, |r| {
            r.lan = vec!["192.168.1.20".into(), "192.168.1.30:554".into()]
        })
        .unwrap();
        assert_eq!(
            s.get("camera").unwrap().lan,
            ["192.168.1.20", "192.168.1.30:554"]
        );
        s.delete("camera", Note::new("removed", "camera removed"))
            .unwrap();
        assert!(s.find("camera").unwrap().is_none());
        let kinds: Vec<String> = s
            .events(0, Some("camera"), 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["installing", "started", "removed"]);
    }

    #[test]
    fn named_finds_a_bare_name_under_every_provider_and_nothing_else() {
        let (_dir, mut s) = store();
        for (key, provider) in [
            ("probe", "acme"),
            ("rival+probe", "rival"),
            ("probes", "acme"),
            ("x+probe2", "x"),
            ("robe", "acme"),
        ] {
            let rec = ServiceRecord::new(key, provider, "1", "sha256:00", "");
            s.insert(&rec, Note::new("installing", "")).unwrap();
        }
        let names = |bare: &str| -> Vec<String> {
            s.named(bare).unwrap().into_iter().map(|r| r.name).collect()
        };
        assert_eq!(names("probe"), ["probe", "rival+probe"]);
        assert_eq!(names("robe"), ["robe"]);
        assert_eq!(names("probe2"), ["x+probe2"]);
        assert!(names("ghost").is_empty());
        assert!(names("").is_empty());
    }

    #[test]
    fn duplicate_name_is_refused_and_changes_nothing() {
        let (_dir, mut s) = store();
        let rec = ServiceRecord::new("camera", "acme", "1.2.0", "sha256:00", "");
        s.insert(&rec, Note::new("installing", "x")).unwrap();
        let other = ServiceRecord::new("camera", "other", "9", "sha256:11", "");
        let err = s.insert(&other, Note::new("installing", "y")).unwrap_err();
        assert!(err.to_string().contains("already installed"), "{err}");
        assert_eq!(s.get("camera").unwrap().provider, "acme");
        assert_eq!(s.events(0, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn update_of_missing_service_is_not_found() {
        let (_dir, mut s) = store();
        let err = s.update("ghost", None, |_| {}).unwrap_err();
        assert!(matches!(err, StateError::NotFound(_)));
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut s = Store::open(&path).unwrap();
            let rec = ServiceRecord::new("meter", "energy", "1", "sha256:22", "");
            s.insert(&rec, Note::new("installing", "x")).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.integrity_ok().unwrap());
        assert_eq!(s.get("meter").unwrap().phase, Phase::Installing);
    }
}
