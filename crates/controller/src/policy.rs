//! The operator's deployment policy: where each provider may deploy its own services.
//!
//! A provider's deployment reaches only gateways its policy opens (any of its label
//! selectors matches); a provider without a policy deploys nowhere. The operator's own
//! deployments and the households' subscriptions are not bound by it: the operator owns the
//! fleet, and a household chooses for its own gateway.

use std::collections::BTreeMap;

use api::fleet::{DeployPolicy, PolicyRequest};
use realm::Principal;

use crate::db::{i64_of, now_ms, str_of};
use crate::{Controller, ControllerError};

/// At most this many selectors per provider: a policy is a short list of regions or models.
const MAX_SELECTORS: usize = 64;

/// Whether `labels` match `selector` (every pair of it).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A selector as a user types it (`region=lyon,model=x`; `*` for every gateway).
pub fn show(selector: &BTreeMap<String, String>) -> String {
    if selector.is_empty() {
        return "*".into();
    }
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Controller {
    /// Sets (replaces) where `provider` may deploy.
    pub async fn set_policy(
        &self,
        provider: &str,
        req: &PolicyRequest,
    ) -> Result<DeployPolicy, ControllerError> {
        if !manifest::valid_name(provider) {
            return Err(ControllerError::BadRequest(format!(
                "`{provider}` is not a provider name: lowercase letters, digits and '-', starting with a letter"
            )));
        }
        if req.selectors.len() > MAX_SELECTORS {
            return Err(ControllerError::BadRequest(format!(
                "{} selectors for provider `{provider}`: give at most {MAX_SELECTORS}, e.g. one per region",
                req.selectors.len()
            )));
        }
        for selector in &req.selectors {
            crate::enroll::check_labels(selector)?;
        }
        let policy = DeployPolicy {
            provider: provider.to_string(),
            selectors: req.selectors.clone(),
            set_ms: now_ms(),
        };
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO deploy_policy (provider, selectors, set_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (provider) DO UPDATE SET selectors = excluded.selectors, set_ms = excluded.set_ms",
                )
                .bind(policy.provider.clone())
                .bind(serde_json::to_string(&policy.selectors).unwrap_or_default())
                .bind(policy.set_ms),
            )
            .await?;
        let shown: Vec<String> = policy.selectors.iter().map(show).collect();
        self.db
            .event(
                "policy-set",
                None,
                None,
                &format!(
                    "provider `{provider}` may deploy to gateways matching {}",
                    if shown.is_empty() {
                        "nothing".to_string()
                    } else {
                        shown.join(" or ")
                    }
                ),
            )
            .await?;
        Ok(policy)
    }

    /// Removes `provider`'s policy: its deployments reach no gateway any more (those already
    /// running go on; the operator cancels them with `shg fleet cancel`).
    pub async fn clear_policy(&self, provider: &str) -> Result<(), ControllerError> {
        let n = self
            .db
            .execute(
                sqlx::query("DELETE FROM deploy_policy WHERE provider = $1")
                    .bind(provider.to_string()),
            )
            .await?;
        if n == 0 {
            return Err(ControllerError::NotFound(format!(
                "provider `{provider}` has no deployment policy; `shg fleet policy list` shows them"
            )));
        }
        self.db
            .event(
                "policy-cleared",
                None,
                None,
                &format!("provider `{provider}` may no longer deploy"),
            )
            .await?;
        Ok(())
    }

    /// The policies `who` may read: every provider's for the operator, its own for a provider.
    pub async fn policies(&self, who: &Principal) -> Result<Vec<DeployPolicy>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT provider, selectors, set_ms FROM deploy_policy ORDER BY provider",
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeployPolicy {
                provider: str_of(r, "provider"),
                selectors: serde_json::from_str(&str_of(r, "selectors")).unwrap_or_default(),
                set_ms: i64_of(r, "set_ms"),
            })
            .filter(|p| match who {
                Principal::Operator => true,
                Principal::Provider(name) => *name == p.provider,
                _ => false,
            })
            .collect())
    }

    /// Checks that `provider` may deploy to every one of `targets` (id and labels); the
    /// refusal says how many fall outside, where the provider may deploy, and who can change
    /// it.
    pub async fn check_policy<'a>(
        &self,
        provider: &str,
        targets: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
    ) -> Result<(), ControllerError> {
        let policy = self
            .policies(&Principal::Provider(provider.to_string()))
            .await?
            .into_iter()
            .next();
        let Some(policy) = policy.filter(|p| !p.selectors.is_empty()) else {
            return Err(ControllerError::Forbidden(format!(
                "the operator has not opened any gateway to provider `{provider}`'s deployments; the operator does so with `shg fleet policy set --provider {provider} --selector k=v`"
            )));
        };
        let outside: Vec<&str> = targets
            .filter(|(_, labels)| !policy.selectors.iter().any(|s| matches(s, labels)))
            .map(|(id, _)| id)
            .collect();
        if outside.is_empty() {
            return Ok(());
        }
        let allowed: Vec<String> = policy.selectors.iter().map(show).collect();
        Err(ControllerError::Forbidden(format!(
            "{} of the gateways named are outside where the operator lets provider `{provider}` deploy (gateways matching {}); narrow the selector to those labels",
            outside.len(),
            allowed.join(" or ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_selector_matches_gateways_holding_all_its_labels() {
        let gw = labels(&[("region", "lyon"), ("model", "x")]);
        assert!(matches(&labels(&[("region", "lyon")]), &gw));
        assert!(matches(&labels(&[]), &gw));
        assert!(!matches(&labels(&[("region", "paris")]), &gw));
        assert!(!matches(
            &labels(&[("region", "lyon"), ("tier", "gold")]),
            &gw
        ));
        assert_eq!(show(&labels(&[])), "*");
        assert_eq!(show(&gw), "model=x,region=lyon");
    }
}
