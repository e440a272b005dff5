//! Enrollment and credentials: one-time enrollment tokens (with labels), the gateway's
//! certificate request signed by the CA, revocation, and which principal a stored credential
//! stands for (API tokens of the operator and providers, and gateways by certificate).

use std::collections::BTreeMap;

use realm::Principal;

use crate::db::{i64_of, now_ms, opt_i64, opt_str, str_of};
use crate::{Controller, ControllerError};

/// How long an enrollment token lives unless told otherwise.
const DEFAULT_TOKEN_LIFE_S: u64 = 24 * 3600;
/// The longest an enrollment token may live.
const MAX_TOKEN_LIFE_S: u64 = 365 * 24 * 3600;

/// Checks a label key or value: what a selector can name and a shell can type.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ControllerError> {
    let ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    for (k, v) in labels {
        if !ok(k, 63) || !ok(v, 63) {
            return Err(ControllerError::BadRequest(format!(
                "label `{k}={v}`: keys and values are 1 to 63 letters, digits, '-', '_', '.' or '/'"
            )));
        }
    }
    Ok(())
}

impl Controller {
    /// The principal a stored credential stands for: an API token's hash, or `cert:` and an
    /// enrolled gateway's certificate SHA-256; None when unknown or revoked.
    pub async fn principal(&self, stored: &str) -> Result<Option<Principal>, ControllerError> {
        if let Some(fingerprint) = stored.strip_prefix(realm::CERT_PREFIX) {
            let generation = self.db.generation();
            let now = now_ms();
            if let Some(id) = self.memo.gateway(fingerprint, generation, now) {
                return Ok(Some(Principal::Gateway(id)));
            }
            // The current certificate, or the one it replaced (until it expires: a gateway
            // that crashed before keeping its new certificate still gets in). Two lookups,
            // each by an indexed column.
            let mut row = self
                .db
                .fetch_optional(
                    sqlx::query(
                        "SELECT id, cert_expires_ms AS expires_ms FROM gateways WHERE cert_sha256 = $1
                         AND revoked_ms IS NULL AND (cert_expires_ms IS NULL OR cert_expires_ms > $2)",
                    )
                    .bind(fingerprint.to_string())
                    .bind(now),
                )
                .await?;
            if row.is_none() {
                row = self
                    .db
                    .fetch_optional(
                        sqlx::query(
                            "SELECT id, previous_expires_ms AS expires_ms FROM gateways WHERE previous_cert_sha256 = $1
                             AND revoked_ms IS NULL AND previous_expires_ms > $2",
                        )
                        .bind(fingerprint.to_string())
                        .bind(now),
                    )
                    .await?;
            }
            let id = row.as_ref().map(|r| str_of(r, "id"));
            if let (Some(id), Some(row)) = (&id, &row) {
                let expires_ms = opt_i64(row, "expires_ms").unwrap_or(i64::MAX);
                self.memo
                    .remember_gateway(fingerprint, generation, id, expires_ms);
            }
            return Ok(id.map(Principal::Gateway));
        }
        let row = self
            .db
            .fetch_optional(
                sqlx::query(
                    "SELECT realm, provider FROM tokens WHERE hash = $1 AND revoked_ms IS NULL",
                )
                .bind(stored.to_string()),
            )
            .await?;
        Ok(row.and_then(|r| Principal::from_stored(&str_of(&r, "realm"), opt_str(&r, "provider"))))
    }

    /// Makes an API token for the operator or a provider; only its hash is kept.
    pub async fn create_token(
        &self,
        req: &api::TokenRequest,
    ) -> Result<api::NewToken, ControllerError> {
        let (kind, provider) = match (req.realm.as_str(), &req.provider) {
            ("provider", Some(p)) if manifest::valid_name(p) => ("provider", Some(p.clone())),
            ("provider", Some(p)) => {
                return Err(ControllerError::BadRequest(format!(
                    "`{p}` is not a provider name: use lowercase letters, digits and dashes"
                )))
            }
            ("provider", None) => {
                return Err(ControllerError::BadRequest(
                    "a provider token needs the provider's name (`--provider NAME`)".into(),
                ))
            }
            ("operator", None) => ("operator", None),
            (other, _) => {
                return Err(ControllerError::BadRequest(format!(
                    "the fleet has `operator` and `provider` tokens, not `{other}` ones (households use their own gateway)"
                )))
            }
        };
        if req.client_cert.is_some() {
            return Err(ControllerError::BadRequest(
                "the controller takes tokens, not client certificates (gateways get theirs by enrolling)".into(),
            ));
        }
        let token = realm::new_token().map_err(|e| ControllerError::Internal(e.to_string()))?;
        let id = realm::random_hex(6).map_err(|e| ControllerError::Internal(e.to_string()))?;
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO tokens (id, realm, provider, hash, created_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(id.clone())
                .bind(kind.to_string())
                .bind(provider.clone())
                .bind(realm::token_hash(&token))
                .bind(now_ms()),
            )
            .await?;
        Ok(api::NewToken {
            id: i64::from_str_radix(&id, 16).unwrap_or(0),
            realm: kind.to_string(),
            provider,
            token: Some(token),
            client_cert_sha256: None,
        })
    }

    pub async fn list_tokens(&self) -> Result<Vec<api::TokenInfo>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT id, realm, provider, created_ms, revoked_ms FROM tokens ORDER BY created_ms",
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| api::TokenInfo {
                id: i64::from_str_radix(&str_of(r, "id"), 16).unwrap_or(0),
                realm: str_of(r, "realm"),
                provider: opt_str(r, "provider"),
                kind: "token".into(),
                created_ms: i64_of(r, "created_ms") as u64,
                revoked_ms: opt_i64(r, "revoked_ms").map(|v| v as u64),
            })
            .collect())
    }

    pub async fn revoke_token(&self, id: i64) -> Result<(), ControllerError> {
        let n = self
            .db
            .execute(
                sqlx::query(
                    "UPDATE tokens SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
                )
                .bind(now_ms())
                .bind(format!("{id:012x}")),
            )
            .await?;
        if n == 0 {
            return Err(ControllerError::NotFound(format!(
                "no live token with id {id}; `shg fleet token list` shows them"
            )));
        }
        Ok(())
    }

    /// A one-time enrollment token carrying `labels`, usable for `expires_in_s` seconds.
    pub async fn enroll_token(
        &self,
        req: &api::fleet::EnrollTokenRequest,
    ) -> Result<api::fleet::EnrollToken, ControllerError> {
        check_labels(&req.labels)?;
        let life = req.expires_in_s.unwrap_or(DEFAULT_TOKEN_LIFE_S);
        if life == 0 || life > MAX_TOKEN_LIFE_S {
            return Err(ControllerError::BadRequest(format!(
                "an enrollment token lives between 1 second and 365 days, not {life} s"
            )));
        }
        let secret = realm::random_hex(32).map_err(|e| ControllerError::Internal(e.to_string()))?;
        let expires_ms = now_ms() + life as i64 * 1000;
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO enroll_tokens (hash, labels, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
                )
                .bind(realm::token_hash(&secret))
                .bind(serde_json::to_string(&req.labels).unwrap_or_default())
                .bind(now_ms())
                .bind(expires_ms),
            )
            .await?;
        Ok(api::fleet::EnrollToken {
            token: crate::ca::enroll_token(&secret, &self.ca.fingerprint),
            labels: req.labels.clone(),
            expires_ms,
        })
    }

    /// Enrolls a gateway: the token is used up (atomically, whichever controller process
    /// answers), the gateway gets an id and a certificate for the key it made.
    pub async fn enroll(
        &self,
        req: &api::fleet::EnrollRequest,
    ) -> Result<api::fleet::Enrolled, ControllerError> {
        let refused = || {
            ControllerError::Unauthorized(
                "the enrollment token is unknown, used or expired; ask the operator for a new one (`shg fleet enroll-token`)"
                    .into(),
            )
        };
        let (secret, fingerprint) =
            crate::ca::parse_enroll_token(&req.token).ok_or_else(refused)?;
        if fingerprint != self.ca.fingerprint {
            return Err(refused());
        }
        let hash = realm::token_hash(secret);
        let id = format!(
            "gw-{}",
            realm::random_hex(6).map_err(|e| ControllerError::Internal(e.to_string()))?
        );
        // Checked before the token is spent: a broken request does not cost the token.
        let validity = self.cfg.gateway_cert_validity;
        let (certificate, cert_sha256) = self.ca.sign_gateway(&req.csr, &id, validity)?;
        let now = now_ms();
        let used = self
            .db
            .execute(
                sqlx::query(
                    "UPDATE enroll_tokens SET used_ms = $1, gateway_id = $2 WHERE hash = $3 AND used_ms IS NULL AND expires_ms > $4",
                )
                .bind(now)
                .bind(id.clone())
                .bind(hash.clone())
                .bind(now),
            )
            .await?;
        if used != 1 {
            return Err(refused());
        }
        let row = self
            .db
            .fetch_optional(
                sqlx::query("SELECT labels FROM enroll_tokens WHERE hash = $1").bind(hash),
            )
            .await?
            .ok_or_else(refused)?;
        let labels: BTreeMap<String, String> =
            serde_json::from_str(&str_of(&row, "labels")).unwrap_or_default();
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO gateways (id, labels, cert_sha256, cert_expires_ms, enrolled_ms, last_contact_ms, agent_version) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(id.clone())
                .bind(serde_json::to_string(&labels).unwrap_or_default())
                .bind(cert_sha256)
                .bind(now + validity.as_millis() as i64)
                .bind(now)
                .bind(now)
                .bind(req.agent_version.clone()),
            )
            .await?;
        self.db
            .event(
                "enrolled",
                Some(&id),
                None,
                &format!("gateway {id} enrolled"),
            )
            .await?;
        Ok(api::fleet::Enrolled {
            gateway_id: id,
            certificate,
            ca: self.ca.ca_pem.clone(),
            labels,
            catalog_root: self.catalog_root().await?,
        })
    }

    /// Renews `gateway`'s certificate: signs its new key's request for another validity
    /// period. The certificate it replaces stays good until it expires, so a gateway that
    /// crashed before keeping the new one is not locked out; revocation ends both.
    pub async fn renew_certificate(
        &self,
        gateway: &str,
        req: &api::fleet::RenewRequest,
    ) -> Result<api::fleet::Renewed, ControllerError> {
        let validity = self.cfg.gateway_cert_validity;
        let (certificate, cert_sha256) = self.ca.sign_gateway(&req.csr, gateway, validity)?;
        let expires_ms = now_ms() + validity.as_millis() as i64;
        let n = self
            .db
            .execute(
                sqlx::query(
                    "UPDATE gateways SET previous_cert_sha256 = cert_sha256, previous_expires_ms = cert_expires_ms,
                     cert_sha256 = $1, cert_expires_ms = $2 WHERE id = $3 AND revoked_ms IS NULL",
                )
                .bind(cert_sha256)
                .bind(expires_ms)
                .bind(gateway.to_string()),
            )
            .await?;
        if n != 1 {
            return Err(ControllerError::NotFound(format!(
                "gateway {gateway} is not enrolled (or was revoked); enroll it again with a new token"
            )));
        }
        self.db
            .event(
                "certificate-renewed",
                Some(gateway),
                None,
                &format!("gateway {gateway} renewed its certificate"),
            )
            .await?;
        Ok(api::fleet::Renewed {
            certificate,
            expires_ms,
        })
    }

    /// Revokes a gateway: its certificate is refused from the next request on.
    pub async fn revoke(&self, id: &str) -> Result<(), ControllerError> {
        self.memo.forget(id);
        let n = self
            .db
            .execute(
                sqlx::query(
                    "UPDATE gateways SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL",
                )
                .bind(now_ms())
                .bind(id.to_string()),
            )
            .await?;
        if n == 0 {
            return Err(ControllerError::NotFound(format!(
                "no enrolled, unrevoked gateway `{id}`; `shg fleet gateways` lists them"
            )));
        }
        self.db
            .event(
                "revoked",
                Some(id),
                None,
                &format!("gateway {id} revoked by the operator"),
            )
            .await?;
        self.db.announce().await;
        Ok(())
    }
}
