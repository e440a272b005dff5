//! The fleet's catalog as TUF metadata (the `catalog` crate): every approved package listed as
//! `PROVIDER/NAME/VERSION` with its image manifest's digest, signed by the controller's
//! targets, snapshot and timestamp keys. Enrollment pins the catalog's root on each gateway,
//! which from then on installs only what the catalog lists *and* its provider signed: the
//! two-key rule.
//!
//! The keys and the current publication live in the database, so any replica serves and
//! publishes it; publications are serialized by the version in `tuf_state` (a replica that
//! lost the race publishes again on top of the winner's). The root key is not kept there: the
//! replica that made the catalog writes it to `STATE_DIR/catalog/root.pk8`, for the operator
//! to move offline (it is needed only to rotate the root).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use realm::Principal;

use crate::db::{i64_of, now_ms, str_of};
use crate::{Controller, ControllerError};

/// How long a publication is valid.
const LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// A publication this close to its expiry is renewed.
const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The keys the controller signs publications with (the root key stays out of the database).
const ONLINE_ROLES: [&str; 3] = ["targets", "snapshot", "timestamp"];

fn tuf_error(action: &str, e: impl std::fmt::Display) -> ControllerError {
    ControllerError::Internal(format!("cannot {action} the fleet's catalog: {e}"))
}

fn db_error(e: sqlx::Error) -> ControllerError {
    ControllerError::Database(e.to_string())
}

use api::fleet::catalog_metadata_name as metadata_name;

impl Controller {
    /// Makes the catalog on the first start (keys, root, an empty first publication); of
    /// replicas starting together, one makes it and the others use it.
    pub(crate) async fn open_catalog(&self) -> Result<(), ControllerError> {
        if self.catalog_state().await?.is_some() {
            return Ok(());
        }
        let work = self.work_dir()?;
        let (repo, keys) = (work.path().join("repo"), work.path().join("keys"));
        catalog::init(&repo, &keys, SystemTime::now() + LIFETIME)
            .await
            .map_err(|e| tuf_error("make", e))?;
        let expires = now_ms() + LIFETIME.as_millis() as i64;
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        let made = sqlx::query(
            "INSERT INTO tuf_state (id, version, expires_ms, approved) VALUES (1, 1, $1, 0) ON CONFLICT (id) DO NOTHING",
        )
        .bind(expires)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?
        .rows_affected();
        if made == 0 {
            // Another replica made it first.
            return Ok(());
        }
        for role in ONLINE_ROLES {
            let path = catalog::key_path(&keys, role);
            let key = std::fs::read(&path).map_err(|e| ControllerError::io(&path, e))?;
            sqlx::query("INSERT INTO tuf_keys (role, pk8) VALUES ($1, $2)")
                .bind(role)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        for (name, data) in read_metadata(&repo.join(catalog::METADATA_DIR))? {
            sqlx::query("INSERT INTO tuf_files (name, data) VALUES ($1, $2)")
                .bind(name)
                .bind(data)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        let offline = self.cfg.state_dir.join("catalog");
        std::fs::create_dir_all(&offline).map_err(|e| ControllerError::io(&offline, e))?;
        let root_key = catalog::key_path(&offline, "root");
        std::fs::copy(catalog::key_path(&keys, "root"), &root_key)
            .map_err(|e| ControllerError::io(&root_key, e))?;
        tracing::info!(
            "made the fleet's catalog; its root key is {} (keep it offline: it is needed only to rotate the root)",
            root_key.display()
        );
        Ok(())
    }

    /// The current publication's version, its expiry and how many approved packages it lists.
    async fn catalog_state(&self) -> Result<Option<(u64, i64, i64)>, ControllerError> {
        let row = self
            .db
            .fetch_optional(sqlx::query(
                "SELECT version, expires_ms, approved FROM tuf_state WHERE id = 1",
            ))
            .await?;
        Ok(row.map(|r| {
            (
                i64_of(&r, "version") as u64,
                i64_of(&r, "expires_ms"),
                i64_of(&r, "approved"),
            )
        }))
    }

    /// The version of the current publication (0 before the catalog exists).
    pub(crate) async fn catalog_version(&self) -> Result<u64, ControllerError> {
        Ok(self.catalog_state().await?.map_or(0, |(v, _, _)| v))
    }

    /// Writes the next publication: every approved package, valid for two weeks. Returns its
    /// version.
    pub(crate) async fn publish_catalog(&self) -> Result<u64, ControllerError> {
        // A replica that loses the race to another's publication builds on top of it.
        for _ in 0..5 {
            let Some((version, _, _)) = self.catalog_state().await? else {
                return Err(tuf_error("publish", "it was never made"));
            };
            let work = self.work_dir()?;
            let (repo, keys) = (work.path().join("repo"), work.path().join("keys"));
            let metadata = repo.join(catalog::METADATA_DIR);
            for dir in [&metadata, &repo.join(catalog::TARGETS_DIR), &keys] {
                std::fs::create_dir_all(dir).map_err(|e| ControllerError::io(dir, e))?;
            }
            for (name, data) in self.catalog_files().await? {
                let path = metadata.join(&name);
                std::fs::write(&path, data).map_err(|e| ControllerError::io(&path, e))?;
            }
            for row in self
                .db
                .fetch_all(sqlx::query("SELECT role, pk8 FROM tuf_keys"))
                .await?
            {
                let key: Vec<u8> = sqlx::Row::try_get(&row, "pk8").map_err(db_error)?;
                let path = catalog::key_path(&keys, &str_of(&row, "role"));
                write_private(&path, &key)?;
            }
            let entries = self.approved_entries().await?;
            let approved = entries.len() as i64;
            let next = catalog::publish(&repo, &keys, &entries, SystemTime::now() + LIFETIME)
                .await
                .map_err(|e| tuf_error("publish", e))?;
            let files = read_metadata(&metadata)?;
            let mut tx = self.db.pool.begin().await.map_err(db_error)?;
            let won = sqlx::query(
                "UPDATE tuf_state SET version = $1, expires_ms = $2, approved = $3 WHERE id = 1 AND version = $4",
            )
            .bind(next as i64)
            .bind(now_ms() + LIFETIME.as_millis() as i64)
            .bind(approved)
            .bind(version as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
            if won == 0 {
                continue;
            }
            let current = |name: &str| {
                name == "timestamp.json"
                    || name.ends_with(".root.json")
                    || name == format!("{next}.snapshot.json")
                    || name == format!("{next}.targets.json")
            };
            for (name, data) in &files {
                let query = if current(name) {
                    sqlx::query(
                        "INSERT INTO tuf_files (name, data) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                    )
                    .bind(name.clone())
                    .bind(data.clone())
                } else {
                    // Older publications: gateways never need them again.
                    sqlx::query("DELETE FROM tuf_files WHERE name = $1").bind(name.clone())
                };
                query.execute(&mut *tx).await.map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
            tracing::info!("published the fleet's catalog version {next} ({approved} packages)");
            return Ok(next);
        }
        Err(tuf_error(
            "publish",
            "other controller processes kept publishing at the same time; try again",
        ))
    }

    /// Publishes again when the catalog is due for renewal or does not list every approved
    /// package yet (an approval whose publication failed, say).
    pub(crate) async fn refresh_catalog(&self) -> Result<(), ControllerError> {
        let Some((_, expires_ms, listed)) = self.catalog_state().await? else {
            return Ok(());
        };
        let approved = self
            .db
            .fetch_optional(sqlx::query(
                "SELECT COUNT(*) AS n FROM packages WHERE approved_ms IS NOT NULL",
            ))
            .await?
            .map_or(0, |r| i64_of(&r, "n"));
        if approved != listed || expires_ms - now_ms() < RENEW_BEFORE.as_millis() as i64 {
            self.publish_catalog().await?;
            self.db.announce().await;
        }
        Ok(())
    }

    /// The current publication for a gateway (or the operator): each metadata file's text.
    pub async fn catalog_metadata(
        &self,
        who: &Principal,
    ) -> Result<api::fleet::CatalogMetadata, ControllerError> {
        match who {
            Principal::Gateway(_) | Principal::Operator => {}
            _ => {
                return Err(ControllerError::Forbidden(
                    "the catalog's metadata is for the gateways and the operator; `shg fleet catalog` lists your packages".into(),
                ))
            }
        }
        let version = self.catalog_version().await?;
        let files = self
            .catalog_files()
            .await?
            .into_iter()
            .map(|(name, data)| (name, String::from_utf8_lossy(&data).into_owned()))
            .collect();
        Ok(api::fleet::CatalogMetadata { version, files })
    }

    /// The root a gateway pins when it enrolls.
    pub(crate) async fn catalog_root(&self) -> Result<String, ControllerError> {
        let row = self
            .db
            .fetch_optional(
                sqlx::query("SELECT data FROM tuf_files WHERE name = $1").bind("1.root.json"),
            )
            .await?
            .ok_or_else(|| tuf_error("read", "it has no root"))?;
        let data: Vec<u8> = sqlx::Row::try_get(&row, "data").map_err(db_error)?;
        String::from_utf8(data).map_err(|e| tuf_error("read the root of", e))
    }

    async fn catalog_files(&self) -> Result<BTreeMap<String, Vec<u8>>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query("SELECT name, data FROM tuf_files"))
            .await?;
        let mut files = BTreeMap::new();
        for row in rows {
            let name = str_of(&row, "name");
            if !metadata_name(&name) {
                return Err(tuf_error(
                    "read",
                    format!("a stored file is named {name:?}"),
                ));
            }
            let data: Vec<u8> = sqlx::Row::try_get(&row, "data").map_err(db_error)?;
            files.insert(name, data);
        }
        Ok(files)
    }

    /// Every approved package as a catalog entry, with its image manifest from the blobs.
    async fn approved_entries(&self) -> Result<Vec<catalog::NewEntry>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT p.provider, p.name, p.version, b.data FROM packages p JOIN oci_blobs b ON b.digest = p.digest
                 WHERE p.approved_ms IS NOT NULL ORDER BY p.provider, p.name, p.version",
            ))
            .await?;
        rows.iter()
            .map(|r| {
                Ok(catalog::NewEntry {
                    service: str_of(r, "name"),
                    version: str_of(r, "version"),
                    provider: str_of(r, "provider"),
                    reference: None,
                    manifest_json: sqlx::Row::try_get(r, "data").map_err(db_error)?,
                })
            })
            .collect()
    }

    /// A private scratch directory in the state directory, removed when dropped.
    fn work_dir(&self) -> Result<tempfile::TempDir, ControllerError> {
        tempfile::Builder::new()
            .prefix("tuf-")
            .tempdir_in(&self.cfg.state_dir)
            .map_err(|e| ControllerError::io(&self.cfg.state_dir, e))
    }
}

/// The metadata files in `dir`, by name.
fn read_metadata(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, ControllerError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ControllerError::io(dir, e))? {
        let entry = entry.map_err(|e| ControllerError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if metadata_name(&name) {
            let data = std::fs::read(entry.path()).map_err(|e| ControllerError::io(dir, e))?;
            files.insert(name, data);
        }
    }
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ControllerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| ControllerError::io(path, e))
}

/// Keeps the catalog fresh: renewed a week before it expires, and published again if an
/// approval's publication failed.
pub(crate) async fn keep_fresh(controller: std::sync::Arc<Controller>) {
    loop {
        if let Err(e) = controller.refresh_catalog().await {
            tracing::warn!("the fleet's catalog: {e}");
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}
