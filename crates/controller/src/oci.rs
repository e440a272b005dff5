//! The packages' blobs, served through the OCI distribution API (`/v2/PROVIDER/NAME/…`, read
//! only): gateways pull what the catalog lists by digest, with the registry client they use
//! for any registry, and fetch only the layers they do not hold yet.
//!
//! Each published package is kept as its blobs (image manifest, config, layers) and a
//! signature artifact under the tag `sha256-HEX.shgsig`, as `shg push` stores them in any
//! registry. A caller reads a blob only through a package it may see: a gateway the approved
//! ones, a provider its own, the operator all.

use realm::Principal;

use crate::db::str_of;
use crate::{Controller, ControllerError};

/// What `/v2/…/manifests/REFERENCE` answers: the bytes and their digest.
pub struct Manifest {
    pub digest: String,
    pub bytes: Vec<u8>,
}

fn db_error(e: sqlx::Error) -> ControllerError {
    ControllerError::Database(e.to_string())
}

fn not_found(provider: &str, name: &str, what: &str) -> ControllerError {
    ControllerError::NotFound(format!(
        "no {what} in `{provider}/{name}` for you; `shg fleet catalog` lists the packages you may pull"
    ))
}

/// A blob to keep with the package that names it.
pub(crate) struct Blob {
    pub digest: String,
    pub data: Vec<u8>,
}

/// The blobs of the opened package `package`: its image manifest, config, layers and
/// signature artifact, and the artifact manifest's digest.
pub(crate) fn blobs_of(package: &image::Package) -> Result<(Vec<Blob>, String), ControllerError> {
    let dir = package.dir.join("blobs/sha256");
    let read = |digest: &str| -> Result<Blob, ControllerError> {
        let path = dir.join(digest.trim_start_matches("sha256:"));
        let data = std::fs::read(&path).map_err(|e| ControllerError::io(&path, e))?;
        Ok(Blob {
            digest: digest.to_string(),
            data,
        })
    };
    let manifest = read(&package.image_digest)?;
    let json: serde_json::Value = serde_json::from_slice(&manifest.data)
        .map_err(|e| ControllerError::BadPackage(format!("its image manifest: {e}")))?;
    let config = json["config"]["digest"]
        .as_str()
        .ok_or_else(|| ControllerError::BadPackage("its image manifest names no config".into()))?;
    let mut blobs = vec![read(config)?, manifest];
    for layer in &package.layers {
        let data = std::fs::read(&layer.path).map_err(|e| ControllerError::io(&layer.path, e))?;
        blobs.push(Blob {
            digest: layer.digest.clone(),
            data,
        });
    }
    let artifact = registry::SignatureArtifact::new(&package.image_digest, &package.annotations);
    let artifact_digest = format!("sha256:{}", hex::encode(sha2_256(&artifact.manifest)));
    for (digest, data) in artifact.blobs {
        blobs.push(Blob { digest, data });
    }
    blobs.push(Blob {
        digest: artifact_digest.clone(),
        data: artifact.manifest,
    });
    Ok((blobs, artifact_digest))
}

fn sha2_256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

impl Controller {
    /// Keeps `blobs` for `provider`'s `name` `version` (blobs shared with other packages are
    /// kept once).
    pub(crate) async fn store_blobs(
        &self,
        provider: &str,
        name: &str,
        version: &str,
        blobs: Vec<Blob>,
    ) -> Result<(), ControllerError> {
        let mut tx = self.db.pool.begin().await.map_err(db_error)?;
        for blob in blobs {
            sqlx::query(
                "INSERT INTO oci_blobs (digest, data) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
            )
            .bind(blob.digest.clone())
            .bind(blob.data)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query(
                "INSERT INTO package_blobs (provider, name, version, digest) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(provider.to_string())
            .bind(name.to_string())
            .bind(version.to_string())
            .bind(blob.digest)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    /// The manifest `reference` names in `provider/name`: a version (tag), a package's
    /// digest, or the signature tag of one, among the packages `who` may pull.
    pub async fn oci_manifest(
        &self,
        who: &Principal,
        provider: &str,
        name: &str,
        reference: &str,
    ) -> Result<Manifest, ControllerError> {
        let visible = self
            .catalog(who)
            .await?
            .into_iter()
            .filter(|e| e.provider == provider && e.name == name);
        let mut digest = None;
        for entry in visible {
            if reference == entry.version || reference == entry.digest {
                digest = Some(entry.digest);
                break;
            }
            if reference == registry::signature_tag(&entry.digest) {
                let row = self
                    .db
                    .fetch_optional(
                        sqlx::query("SELECT signatures FROM packages WHERE provider = $1 AND name = $2 AND version = $3")
                            .bind(provider.to_string())
                            .bind(name.to_string())
                            .bind(entry.version.clone()),
                    )
                    .await?;
                digest = row
                    .map(|r| str_of(&r, "signatures"))
                    .filter(|d| !d.is_empty());
                break;
            }
        }
        let digest = digest.ok_or_else(|| not_found(provider, name, "such manifest"))?;
        let bytes = self
            .oci_blob(who, provider, name, &digest)
            .await?
            .ok_or_else(|| not_found(provider, name, "such manifest"))?;
        Ok(Manifest { digest, bytes })
    }

    /// The blob `digest` of a package in `provider/name` that `who` may pull.
    pub async fn oci_blob(
        &self,
        who: &Principal,
        provider: &str,
        name: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, ControllerError> {
        let versions: Vec<String> = self
            .catalog(who)
            .await?
            .into_iter()
            .filter(|e| e.provider == provider && e.name == name)
            .map(|e| e.version)
            .collect();
        if versions.is_empty() {
            return Err(not_found(provider, name, "package"));
        }
        let rows = self
            .db
            .fetch_all(
                sqlx::query(
                    "SELECT pb.version, b.data FROM package_blobs pb JOIN oci_blobs b ON b.digest = pb.digest
                     WHERE pb.provider = $1 AND pb.name = $2 AND pb.digest = $3",
                )
                .bind(provider.to_string())
                .bind(name.to_string())
                .bind(digest.to_string()),
            )
            .await?;
        for row in rows {
            if versions.contains(&str_of(&row, "version")) {
                return Ok(Some(sqlx::Row::try_get(&row, "data").map_err(db_error)?));
            }
        }
        Ok(None)
    }
}
