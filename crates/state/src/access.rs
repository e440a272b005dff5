//! Who may use the API: tokens (stored as hashes only) and the audit log of every mutating call.

use rusqlite::{params, OptionalExtension, Row};

use crate::{now_ms, StateError, Store};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    realm TEXT NOT NULL,
    provider TEXT,
    hash TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE TABLE IF NOT EXISTS trust (
    key_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    public_key TEXT NOT NULL,
    services TEXT NOT NULL,
    added_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    status INTEGER NOT NULL
);
";

/// How a pinned client certificate's SHA-256 is stored beside tokens' hashes.
pub const CERT_PREFIX: &str = realm::CERT_PREFIX;

/// Audit entries kept; older ones are dropped.
const AUDIT_KEPT: i64 = 100_000;

/// A token as stored: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    /// `operator`, `provider` or `home`.
    pub realm: String,
    /// The provider, for a provider's token.
    pub provider: Option<String>,
    /// `token` (a bearer token) or `client-cert` (a pinned TLS client certificate).
    pub kind: String,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
}

/// One mutating API call: who, what, when, and how it ended (the HTTP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub time_ms: u64,
    pub principal: String,
    pub action: String,
    pub status: u16,
}

fn token_from_row(row: &Row) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get("id")?,
        realm: row.get("realm")?,
        provider: row.get("provider")?,
        kind: if row.get::<_, String>("hash")?.starts_with(CERT_PREFIX) {
            "client-cert".into()
        } else {
            "token".into()
        },
        created_ms: row.get::<_, i64>("created_ms")? as u64,
        revoked_ms: row.get::<_, Option<i64>>("revoked_ms")?.map(|t| t as u64),
    })
}

/// One rule of the operator's trust policy: a provider's public key and the service names
/// (patterns) it may publish; no patterns means any name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRecord {
    pub key_id: String,
    pub provider: String,
    /// The text of the `.pub` file.
    pub public_key: String,
    pub services: Vec<String>,
    pub added_ms: u64,
}

fn trust_from_row(row: &Row) -> rusqlite::Result<TrustRecord> {
    let services: String = row.get("services")?;
    Ok(TrustRecord {
        key_id: row.get("key_id")?,
        provider: row.get("provider")?,
        public_key: row.get("public_key")?,
        services: services
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        added_ms: row.get::<_, i64>("added_ms")? as u64,
    })
}

impl Store {
    /// Adds a trust rule, or replaces the rule of the same key; true when it is new.
    pub fn put_trust(&mut self, rule: &TrustRecord) -> Result<bool, StateError> {
        let existed = self.trust_rule(&rule.key_id)?.is_some();
        self.conn
            .execute(
                "REPLACE INTO trust (key_id, provider, public_key, services, added_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    rule.key_id,
                    rule.provider,
                    rule.public_key,
                    rule.services.join(","),
                    rule.added_ms as i64
                ],
            )
            .map_err(self.db())?;
        Ok(!existed)
    }

    pub fn trust_rule(&self, key_id: &str) -> Result<Option<TrustRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT * FROM trust WHERE key_id = ?1",
                params![key_id],
                trust_from_row,
            )
            .optional()
            .map_err(self.db())
    }

    /// The trust policy, by provider then key.
    pub fn trust_rules(&self) -> Result<Vec<TrustRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM trust ORDER BY provider, key_id")
            .map_err(self.db())?;
        let rows = stmt.query_map([], trust_from_row).map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }

    /// Removes the rule of a key; false when there is none.
    pub fn remove_trust(&mut self, key_id: &str) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute("DELETE FROM trust WHERE key_id = ?1", params![key_id])
            .map_err(self.db())?;
        Ok(n == 1)
    }

    /// Stores a new token by its hash; returns its id.
    pub fn add_token(
        &mut self,
        realm: &str,
        provider: Option<&str>,
        hash: &str,
    ) -> Result<i64, StateError> {
        self.conn
            .execute(
                "INSERT INTO tokens (realm, provider, hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![realm, provider, hash, now_ms() as i64],
            )
            .map_err(self.db())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The live (not revoked) token with this hash.
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StateError> {
        self.conn
            .query_row(
                "SELECT * FROM tokens WHERE hash = ?1 AND revoked_ms IS NULL",
                params![hash],
                token_from_row,
            )
            .optional()
            .map_err(self.db())
    }

    /// Every token, revoked ones too, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM tokens ORDER BY id")
            .map_err(self.db())?;
        let rows = stmt.query_map([], token_from_row).map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }

    /// Revokes a token; false when no live token has that id.
    pub fn revoke_token(&mut self, id: i64) -> Result<bool, StateError> {
        let n = self
            .conn
            .execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now_ms() as i64],
            )
            .map_err(self.db())?;
        Ok(n == 1)
    }

    /// Appends to the audit log.
    pub fn audit(&mut self, principal: &str, action: &str, status: u16) -> Result<(), StateError> {
        let path = self.path.clone();
        let db = |source| StateError::Db {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(db)?;
        tx.execute(
            "INSERT INTO audit (time_ms, principal, action, status) VALUES (?1, ?2, ?3, ?4)",
            params![now_ms() as i64, principal, action, status],
        )
        .map_err(db)?;
        tx.execute(
            "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?1",
            params![AUDIT_KEPT],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// The audit log after `since`, oldest first, at most `limit` entries.
    pub fn audit_log(&self, since: i64, limit: usize) -> Result<Vec<AuditRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(self.db())?;
        let rows = stmt
            .query_map(params![since, limit as i64], |row| {
                Ok(AuditRecord {
                    id: row.get("id")?,
                    time_ms: row.get::<_, i64>("time_ms")? as u64,
                    principal: row.get("principal")?,
                    action: row.get("action")?,
                    status: row.get::<_, i64>("status")? as u16,
                })
            })
            .map_err(self.db())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.db())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let id = store.add_token("provider", Some("acme"), "abc").unwrap();
        let found = store.token_by_hash("abc").unwrap().unwrap();
        assert_eq!(
            (found.realm.as_str(), found.provider.as_deref()),
            ("provider", Some("acme"))
        );
        assert!(store.token_by_hash("abd").unwrap().is_none());
        assert!(store.revoke_token(id).unwrap());
        assert!(!store.revoke_token(id).unwrap(), "revoked once");
        assert!(store.token_by_hash("abc").unwrap().is_none());
        assert!(store.tokens().unwrap()[0].revoked_ms.is_some());
    }

    #[test]
    fn the_audit_log_keeps_who_what_and_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        store
            .audit("provider:acme", "POST /v1/services/camera/stop", 200)
            .unwrap();
        store.audit("home", "DELETE /v1/services/x", 404).unwrap();
        let log = store.audit_log(0, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].principal, "provider:acme");
        assert_eq!(log[1].status, 404);
        assert_eq!(store.audit_log(log[0].id, 10).unwrap().len(), 1);
    }
}
