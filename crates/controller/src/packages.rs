//! The operator's trust policy, and the catalog: packages published by providers (or the
//! operator), verified and kept by digest, listed for the gateways once the operator approved
//! them.

use std::path::Path;

use realm::Principal;

use crate::db::{i64_of, now_ms, opt_i64, str_of};
use crate::{Controller, ControllerError};

impl Controller {
    /// Adds (or replaces) a trusted provider key; it reaches every gateway with its desired
    /// state.
    pub async fn add_trust(
        &self,
        req: &api::TrustRequest,
    ) -> Result<api::TrustRule, ControllerError> {
        let key = trust::PublicKey::parse(&req.public_key, "the public key")
            .map_err(|e| ControllerError::BadRequest(e.to_string()))?;
        if key.provider != req.provider {
            return Err(ControllerError::BadRequest(format!(
                "the key is provider `{}`'s, not `{}`'s: trust it for `{}` or use `{}`'s own key",
                key.provider, req.provider, key.provider, req.provider
            )));
        }
        if let Some(bad) = req.services.iter().find(|p| !trust::valid_pattern(p)) {
            return Err(ControllerError::BadRequest(format!(
                "`{bad}` is not a pattern of service names: use lowercase letters, digits, '-' and '*' (e.g. `cam-*`)"
            )));
        }
        let rule = api::TrustRule {
            key_id: key.id(),
            provider: key.provider.clone(),
            services: req.services.clone(),
            public_key: key.to_text().trim_end().to_string(),
            added_ms: now_ms() as u64,
        };
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO trust (key_id, provider, public_key, services, added_ms) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (key_id) DO UPDATE SET provider = excluded.provider, public_key = excluded.public_key, services = excluded.services, added_ms = excluded.added_ms",
                )
                .bind(rule.key_id.clone())
                .bind(rule.provider.clone())
                .bind(rule.public_key.clone())
                .bind(serde_json::to_string(&rule.services).unwrap_or_default())
                .bind(rule.added_ms as i64),
            )
            .await?;
        self.db
            .event(
                "trust-added",
                None,
                None,
                &format!(
                    "the operator trusts key {} of provider `{}`",
                    rule.key_id, rule.provider
                ),
            )
            .await?;
        self.db.announce().await;
        Ok(rule)
    }

    pub async fn trust_rules(&self) -> Result<Vec<api::TrustRule>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT key_id, provider, public_key, services, added_ms FROM trust ORDER BY key_id",
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| api::TrustRule {
                key_id: str_of(r, "key_id"),
                provider: str_of(r, "provider"),
                services: serde_json::from_str(&str_of(r, "services")).unwrap_or_default(),
                public_key: str_of(r, "public_key"),
                added_ms: i64_of(r, "added_ms") as u64,
            })
            .collect())
    }

    pub async fn remove_trust(&self, key_id: &str) -> Result<(), ControllerError> {
        let n = self
            .db
            .execute(sqlx::query("DELETE FROM trust WHERE key_id = $1").bind(key_id.to_string()))
            .await?;
        if n == 0 {
            return Err(ControllerError::NotFound(format!(
                "no trusted key has id `{key_id}`; `shg fleet trust list` shows them"
            )));
        }
        self.db.announce().await;
        Ok(())
    }

    /// Publishes the package in `file` (an upload): verified (every digest, the manifest, a
    /// signature by a key the operator trusts for that provider and name), kept by digest,
    /// and listed as awaiting the operator's approval.
    pub async fn publish(
        &self,
        who: &Principal,
        file: &Path,
    ) -> Result<api::fleet::CatalogEntry, ControllerError> {
        let staging = self.cfg.state_dir.join(format!(
            "tmp-{}",
            realm::random_hex(8).map_err(|e| ControllerError::Internal(e.to_string()))?
        ));
        // The blobs are read from the staging directory, then it goes.
        let opened = {
            let (file, staging) = (file.to_path_buf(), staging.clone());
            tokio::task::spawn_blocking(move || {
                let opened = image::open(&file, &staging)
                    .map_err(|e| ControllerError::BadPackage(e.to_string()))
                    .and_then(|p| crate::oci::blobs_of(&p).map(|blobs| (p, blobs)));
                let _ = std::fs::remove_dir_all(&staging);
                opened
            })
            .await
            .map_err(|e| ControllerError::Internal(e.to_string()))??
        };
        let (opened, (blobs, signature_artifact)) = opened;
        let manifest = manifest::parse(&opened.manifest_toml, "shg-service.toml")
            .map_err(|e| ControllerError::BadPackage(e.to_string()))?;
        match who {
            Principal::Operator => {}
            Principal::Provider(p) if *p == manifest.provider => {}
            Principal::Provider(p) => {
                return Err(ControllerError::Forbidden(format!(
                    "`{}` belongs to provider `{}`; provider `{p}` publishes only its own services",
                    manifest.name, manifest.provider
                )))
            }
            _ => {
                return Err(ControllerError::Forbidden(
                    "only providers and the operator publish packages".into(),
                ))
            }
        }
        let rules: Vec<trust::Rule> = self
            .trust_rules()
            .await?
            .into_iter()
            .filter_map(|r| {
                Some(trust::Rule {
                    key: trust::PublicKey::parse(&r.public_key, "a stored key").ok()?,
                    services: r.services,
                })
            })
            .collect();
        let signatures: Vec<trust::Signature> = opened
            .annotations
            .iter()
            .filter_map(|(k, v)| trust::Signature::from_annotation(k, v))
            .collect();
        let signer = trust::check(
            &rules,
            &manifest.name,
            &manifest.provider,
            &opened.digest,
            &signatures,
        )
        .map_err(|e| {
            ControllerError::BadPackage(format!(
                "{e}; the operator trusts keys with `shg fleet trust add`"
            ))
        })?;
        let existing = self
            .db
            .fetch_optional(
                sqlx::query("SELECT digest FROM packages WHERE provider = $1 AND name = $2 AND version = $3")
                    .bind(manifest.provider.clone())
                    .bind(manifest.name.clone())
                    .bind(manifest.version.clone()),
            )
            .await?;
        if let Some(row) = existing {
            if str_of(&row, "digest") != opened.digest {
                return Err(ControllerError::Conflict(format!(
                    "`{}` {} of provider `{}` is already published with another digest; publish it under a new version",
                    manifest.name, manifest.version, manifest.provider
                )));
            }
        }
        // The package itself goes into the database, so any controller process serves it:
        // whole (`/v1/packages/…`) and as blobs (`/v2/…`, what the gateways pull).
        self.store_blobs(&manifest.provider, &manifest.name, &manifest.version, blobs)
            .await?;
        let bytes = tokio::fs::read(file)
            .await
            .map_err(|e| ControllerError::io(file, e))?;
        let size = bytes.len() as u64;
        self.db
            .execute(
                sqlx::query("INSERT INTO blobs (digest, data) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING")
                    .bind(opened.digest.clone())
                    .bind(bytes),
            )
            .await?;
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO packages (provider, name, version, digest, size, signer, description, published_ms, signatures) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (provider, name, version) DO NOTHING",
                )
                .bind(manifest.provider.clone())
                .bind(manifest.name.clone())
                .bind(manifest.version.clone())
                .bind(opened.digest.clone())
                .bind(size as i64)
                .bind(signer.clone())
                .bind(manifest.description.clone())
                .bind(now_ms())
                .bind(signature_artifact),
            )
            .await?;
        self.db
            .event(
                "published",
                None,
                Some((&manifest.provider, &manifest.name)),
                &format!(
                    "`{}` {} published by {}; awaiting the operator's approval",
                    manifest.name,
                    manifest.version,
                    who.label()
                ),
            )
            .await?;
        self.package(who, &manifest.provider, &manifest.name, &manifest.version)
            .await
    }

    /// Lists a published version for the gateways.
    pub async fn approve(
        &self,
        provider: &str,
        name: &str,
        version: &str,
    ) -> Result<api::fleet::CatalogEntry, ControllerError> {
        let n = self
            .db
            .execute(
                sqlx::query("UPDATE packages SET approved_ms = $1 WHERE provider = $2 AND name = $3 AND version = $4 AND approved_ms IS NULL")
                    .bind(now_ms())
                    .bind(provider.to_string())
                    .bind(name.to_string())
                    .bind(version.to_string()),
            )
            .await?;
        let entry = self
            .package(&Principal::Operator, provider, name, version)
            .await?;
        if n == 1 {
            // Listed in the catalog before any gateway hears of it. Should this fail, the
            // approval stands and the catalog's keeper publishes it within half a minute.
            let listed = self.publish_catalog().await;
            self.db
                .event(
                    "approved",
                    None,
                    Some((provider, name)),
                    &format!("`{name}` {version} approved for the fleet"),
                )
                .await?;
            self.db.announce().await;
            listed?;
        }
        Ok(entry)
    }

    /// The catalog as `who` sees it: a provider its own packages, a gateway the approved
    /// ones, the operator everything.
    pub async fn catalog(
        &self,
        who: &Principal,
    ) -> Result<Vec<api::fleet::CatalogEntry>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT provider, name, version, digest, size, signer, description, published_ms, approved_ms FROM packages ORDER BY provider, name, published_ms",
            ))
            .await?;
        Ok(rows
            .iter()
            .map(entry)
            .filter(|e| match who {
                Principal::Operator => true,
                Principal::Provider(p) => *p == e.provider,
                Principal::Gateway(_) | Principal::Home => e.approved,
            })
            .collect())
    }

    /// One package `who` may see; NotFound otherwise (a rival's looks like a missing one).
    pub async fn package(
        &self,
        who: &Principal,
        provider: &str,
        name: &str,
        version: &str,
    ) -> Result<api::fleet::CatalogEntry, ControllerError> {
        self.catalog(who)
            .await?
            .into_iter()
            .find(|e| e.provider == provider && e.name == name && e.version == version)
            .ok_or_else(|| {
                ControllerError::NotFound(format!(
                    "no package `{name}` {version} of provider `{provider}`; `shg fleet catalog` lists them"
                ))
            })
    }

    /// The bytes of a package `who` may fetch.
    pub async fn package_bytes(
        &self,
        who: &Principal,
        provider: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<u8>, ControllerError> {
        let entry = self.package(who, provider, name, version).await?;
        let row = self
            .db
            .fetch_optional(
                sqlx::query("SELECT data FROM blobs WHERE digest = $1").bind(entry.digest.clone()),
            )
            .await?
            .ok_or_else(|| {
                ControllerError::Internal(format!("the blob of {} is missing", entry.digest))
            })?;
        sqlx::Row::try_get::<Vec<u8>, _>(&row, "data")
            .map_err(|e| ControllerError::Database(e.to_string()))
    }

    /// The newest approved version of a service.
    pub async fn latest_approved(
        &self,
        provider: &str,
        name: &str,
    ) -> Result<Option<api::fleet::CatalogEntry>, ControllerError> {
        let row = self
            .db
            .fetch_optional(
                sqlx::query(
                    "SELECT provider, name, version, digest, size, signer, description, published_ms, approved_ms FROM packages
                     WHERE provider = $1 AND name = $2 AND approved_ms IS NOT NULL ORDER BY approved_ms DESC LIMIT 1",
                )
                .bind(provider.to_string())
                .bind(name.to_string()),
            )
            .await?;
        Ok(row.as_ref().map(entry))
    }
}

fn entry(r: &sqlx::any::AnyRow) -> api::fleet::CatalogEntry {
    api::fleet::CatalogEntry {
        provider: str_of(r, "provider"),
        name: str_of(r, "name"),
        version: str_of(r, "version"),
        digest: str_of(r, "digest"),
        size: i64_of(r, "size") as u64,
        signer: str_of(r, "signer"),
        description: str_of(r, "description"),
        published_ms: i64_of(r, "published_ms"),
        approved: opt_i64(r, "approved_ms").is_some(),
    }
}
