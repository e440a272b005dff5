//! The operator's trust policy and the signature check every install and update passes.

use crate::auth::Principal;
use crate::{Agent, AgentError, CatalogConfig};

impl Agent {
    /// Adds (or replaces) the rule for a provider's key.
    pub fn add_trust(&self, req: &api::TrustRequest) -> Result<api::TrustRule, AgentError> {
        let key = trust::PublicKey::parse(&req.public_key, "the public key")
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        if key.provider != req.provider {
            return Err(AgentError::BadRequest(format!(
                "the key is provider `{}`'s, not `{}`'s: trust it for `{}` or use `{}`'s own key",
                key.provider, req.provider, key.provider, req.provider
            )));
        }
        if let Some(bad) = req.services.iter().find(|p| !trust::valid_pattern(p)) {
            return Err(AgentError::BadRequest(format!(
                "`{bad}` is not a pattern of service names: use lowercase letters, digits, '-' and '*' (e.g. `cam-*`)"
            )));
        }
        let rule = state::TrustRecord {
            key_id: key.id(),
            provider: key.provider.clone(),
            public_key: key.to_text().trim_end().to_string(),
            services: req.services.clone(),
            added_ms: state::now_ms(),
        };
        let new = self.store().put_trust(&rule)?;
        let names = if rule.services.is_empty() {
            "any service".to_string()
        } else {
            rule.services.join(", ")
        };
        self.store().record(
            None,
            state::Note::new(
                "trust-added",
                format!(
                    "the operator {} key {} of provider `{}` for {names}",
                    if new { "trusts" } else { "changed the rule of" },
                    rule.key_id,
                    rule.provider
                ),
            ),
        )?;
        Ok(to_api(rule))
    }

    pub fn trust_rules(&self) -> Result<Vec<api::TrustRule>, AgentError> {
        Ok(self
            .store()
            .trust_rules()?
            .into_iter()
            .map(to_api)
            .collect())
    }

    /// Removes a key's rule. Services it admitted keep running; their next update needs a
    /// key that is trusted then.
    pub fn remove_trust(&self, key_id: &str) -> Result<(), AgentError> {
        let Some(rule) = self.store().trust_rule(key_id)? else {
            return Err(AgentError::NoTrust(key_id.to_string()));
        };
        self.store().remove_trust(key_id)?;
        self.store().record(
            None,
            state::Note::new(
                "trust-removed",
                format!(
                    "the operator no longer trusts key {key_id} of provider `{}`",
                    rule.provider
                ),
            ),
        )?;
        Ok(())
    }

    /// Checks a package's signatures against the trust policy. Returns the id of the key that
    /// admitted it, or `None` for an unsigned install the operator allowed explicitly.
    pub(crate) fn verify_signature(
        &self,
        who: &Principal,
        manifest: &manifest::Manifest,
        package: &image::Package,
        allow_unsigned: bool,
    ) -> Result<Option<String>, AgentError> {
        if allow_unsigned && *who != Principal::Operator {
            return Err(AgentError::Forbidden(
                "only the operator may install unsigned packages (`--allow-unsigned`, for local development)".into(),
            ));
        }
        let rules: Vec<trust::Rule> = self
            .store()
            .trust_rules()?
            .into_iter()
            .filter_map(|r| {
                Some(trust::Rule {
                    key: trust::PublicKey::parse(&r.public_key, "a stored key").ok()?,
                    services: r.services,
                })
            })
            .collect();
        // The package's digest covers the manifest given beside a standard image too, and
        // only signatures made for that manifest count.
        match trust::check_annotations(
            &rules,
            &manifest.name,
            &manifest.provider,
            &package.digest,
            package.manifest_digest.as_deref(),
            &package.annotations,
        ) {
            Ok(key) => Ok(Some(key)),
            // A forged or broken signature, or one for another manifest beside the image, is
            // refused even in development: what was signed is not what came.
            Err(
                e @ (trust::TrustError::BadSignature { .. }
                | trust::TrustError::OtherManifest { .. }),
            ) => Err(AgentError::Signature(e)),
            Err(_) if allow_unsigned => Ok(None),
            Err(e) => Err(AgentError::Signature(e)),
        }
    }
}

impl Agent {
    /// The catalog's half of the two-key rule: with a catalog (`[catalog]` in gateway.toml, or
    /// the fleet controller's once enrolled), the package must be listed there, under its
    /// provider, with exactly this digest. The metadata is verified from the pinned root at
    /// every check, and the versions seen are remembered in `STATE/catalog` (rollback
    /// protection across restarts).
    pub(crate) async fn check_catalog(
        &self,
        manifest: &manifest::Manifest,
        package: &image::Package,
    ) -> Result<(), AgentError> {
        let cfg = self.catalog.lock().await;
        let Some(cfg) = cfg.as_ref() else {
            return Ok(());
        };
        let catalog = self.load_catalog(cfg).await?;
        catalog
            .admit(
                &manifest.provider,
                &manifest.name,
                &manifest.version,
                &package.digest,
            )
            .map_err(|source| AgentError::Catalog {
                loading: false,
                source: Box::new(source),
            })?;
        Ok(())
    }

    /// Makes `cfg` the catalog every install and update must be listed in, once it loads:
    /// verified from its pinned root, and not older than any catalog this gateway has seen.
    /// A catalog that does not load changes nothing. Returns the publication's version.
    pub async fn use_catalog(&self, cfg: CatalogConfig) -> Result<u64, AgentError> {
        let mut current = self.catalog.lock().await;
        let catalog = self.load_catalog(&cfg).await?;
        *current = Some(cfg);
        Ok(catalog.version())
    }

    /// Loads the catalog `cfg` names; the caller holds the catalog lock.
    async fn load_catalog(&self, cfg: &CatalogConfig) -> Result<catalog::Catalog, AgentError> {
        let datastore = self.layout.root.join("catalog");
        catalog::Catalog::load(&cfg.metadata, &cfg.targets, &cfg.root, &datastore)
            .await
            .map_err(|source| AgentError::Catalog {
                loading: true,
                source: Box::new(source),
            })
    }
}

fn to_api(r: state::TrustRecord) -> api::TrustRule {
    api::TrustRule {
        key_id: r.key_id,
        provider: r.provider,
        services: r.services,
        public_key: r.public_key,
        added_ms: r.added_ms,
    }
}
