//! The three realms: who is calling, and what each may do.
//!
//! - The **operator** runs the gateway: capacity, tokens, the audit log, every service's state
//!   and use. It does not read a provider's logs or run commands inside its services.
//! - A **provider** sees and manages its own services only; another provider's service is
//!   answered exactly like one that does not exist (404), so competitors learn nothing.
//! - The **home** user (the household) sees every service, starts and stops them, ranks them,
//!   installs and removes them; it does not read providers' logs or enter their services.
//!
//! Callers on the local socket (root only) are the operator unless they present a token;
//! callers over TCP must present one. Tokens are random, shown once, and stored as SHA-256.

pub use realm::Principal;

use crate::{Agent, AgentError};

/// What a call does to one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    /// Summary, detail, stats, events.
    Read,
    /// Start, stop, restart.
    Run,
    Remove,
    Priority,
    /// The LAN hosts the service may reach: the household's to grant.
    Lan,
    /// The provider's data: its logs, commands run inside, and the figures its service
    /// keeps (`[metrics]`).
    Logs,
    Exec,
    Metrics,
}

/// What a call does to the gateway as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAction {
    /// Version and the services this caller sees; the list of services; stats, events and
    /// metrics (each filtered to what the caller sees).
    Read,
    /// Capacity, system reserve and what everyone reserved.
    Capacity,
    Install,
    /// Tokens and the audit log.
    Administer,
    /// The household's subscriptions to the fleet's catalog.
    Subscribe,
}

/// May `who` do `action` to a service of `provider` named `name`? A provider asking about
/// another provider's service gets the same `NotFound` as for a missing one.
pub fn check_service(
    who: &Principal,
    name: &str,
    provider: &str,
    action: ServiceAction,
) -> Result<(), AgentError> {
    if !who.sees(provider) {
        return Err(AgentError::NotFound(name.to_string()));
    }
    match (who, action) {
        (Principal::Operator, ServiceAction::Metrics) => Err(AgentError::Forbidden(format!(
            "the operator does not read the metrics `{name}` keeps: they are provider `{provider}`'s data (the gateway's own figures are in `shg stats`); use a token of `{provider}`"
        ))),
        (Principal::Home, ServiceAction::Metrics) => Err(AgentError::Forbidden(format!(
            "the household sees the resource use of `{name}` (`shg stats`), not the figures provider `{provider}` keeps"
        ))),
        (Principal::Operator, ServiceAction::Logs | ServiceAction::Exec) => {
            Err(AgentError::Forbidden(format!(
                "the operator does not read the logs of `{name}` or run commands inside it: they are provider `{provider}`'s data; use a token of `{provider}`"
            )))
        }
        (Principal::Home, ServiceAction::Logs | ServiceAction::Exec) => {
            Err(AgentError::Forbidden(format!(
                "the household sees the state and resource use of `{name}`, not provider `{provider}`'s logs or the inside of its service"
            )))
        }
        (Principal::Provider(_), ServiceAction::Priority) => Err(AgentError::Forbidden(
            format!("priorities are the household's to set; ask it to rank `{name}`"),
        )),
        (Principal::Provider(_), ServiceAction::Lan) => Err(AgentError::Forbidden(format!(
            "the home's LAN is the household's to open; ask it to let `{name}` reach a host (`shg lan {name} HOST`)"
        ))),
        (Principal::Operator, ServiceAction::Lan) => Err(AgentError::Forbidden(format!(
            "the home's LAN is the household's to open, not the operator's; the household lets `{name}` reach a host with its own token (`shg lan {name} HOST`)"
        ))),
        _ => Ok(()),
    }
}

/// May `who` do `action` to the gateway?
pub fn check_gateway(who: &Principal, action: GatewayAction) -> Result<(), AgentError> {
    match (who, action) {
        // A gateway's credential is the fleet controller's business, never a caller here.
        (Principal::Gateway(id), _) => Err(AgentError::Forbidden(format!(
            "gateway `{id}` has no business with another gateway's API"
        ))),
        (Principal::Provider(p), GatewayAction::Capacity) => Err(AgentError::Forbidden(format!(
            "the gateway's capacity and everyone's reservations are for the operator and the household; provider `{p}` sees its own services with `shg stats`"
        ))),
        (Principal::Provider(p), GatewayAction::Subscribe) => Err(AgentError::Forbidden(format!(
            "subscriptions are the household's choice; provider `{p}` deploys through the fleet controller"
        ))),
        (Principal::Provider(_) | Principal::Home, GatewayAction::Administer) => {
            Err(AgentError::Forbidden(
                "tokens and the audit log are the operator's; use the gateway's local socket as root"
                    .into(),
            ))
        }
        _ => Ok(()),
    }
}

/// May `who` install a package whose manifest names `provider`?
pub fn check_install(who: &Principal, name: &str, provider: &str) -> Result<(), AgentError> {
    check_gateway(who, GatewayAction::Install)?;
    match who {
        Principal::Provider(p) if p != provider => Err(AgentError::Forbidden(format!(
            "`{name}` belongs to provider `{provider}`; provider `{p}` installs only its own services"
        ))),
        _ => Ok(()),
    }
}

impl Agent {
    /// The principal a stored credential stands for: a token's hash ([`token_hash`]) or
    /// `cert:` and a pinned certificate's SHA-256; None when unknown or revoked.
    pub fn principal_by_hash(&self, hash: &str) -> Result<Option<Principal>, AgentError> {
        let Some(rec) = self.store().token_by_hash(hash)? else {
            return Ok(None);
        };
        Ok(Principal::from_stored(&rec.realm, rec.provider))
    }

    /// Makes a token for a realm; the token is returned once and only its hash is kept.
    pub fn create_token(&self, req: &api::TokenRequest) -> Result<api::NewToken, AgentError> {
        let (realm, provider) = match (req.realm.as_str(), &req.provider) {
            ("provider", Some(p)) if manifest::valid_name(p) => ("provider", Some(p.as_str())),
            ("provider", Some(p)) => {
                return Err(AgentError::BadRequest(format!(
                    "`{p}` is not a provider name: use lowercase letters, digits and dashes"
                )))
            }
            ("provider", None) => {
                return Err(AgentError::BadRequest(
                    "a provider token needs the provider's name (`--provider NAME`)".into(),
                ))
            }
            ("home" | "operator", None) => (req.realm.as_str(), None),
            (r @ ("home" | "operator"), Some(_)) => {
                return Err(AgentError::BadRequest(format!(
                    "a {r} token names no provider; drop `provider`"
                )))
            }
            (other, _) => {
                return Err(AgentError::BadRequest(format!(
                    "unknown realm `{other}`; use `operator`, `provider` or `home`"
                )))
            }
        };
        if let Some(pem) = &req.client_cert {
            let fingerprint = realm::cert_fingerprint_pem(pem)
                .map_err(|e| AgentError::BadRequest(e.to_string()))?;
            let stored = format!("{}{fingerprint}", state::CERT_PREFIX);
            let id = self.store().add_token(realm, provider, &stored)?;
            return Ok(api::NewToken {
                id,
                realm: realm.to_string(),
                provider: provider.map(String::from),
                token: None,
                client_cert_sha256: Some(fingerprint),
            });
        }
        let token = realm::new_token().map_err(AgentError::Credential)?;
        let id = self
            .store()
            .add_token(realm, provider, &realm::token_hash(&token))?;
        Ok(api::NewToken {
            id,
            realm: realm.to_string(),
            provider: provider.map(String::from),
            token: Some(token),
            client_cert_sha256: None,
        })
    }

    pub fn list_tokens(&self) -> Result<Vec<api::TokenInfo>, AgentError> {
        Ok(self
            .store()
            .tokens()?
            .into_iter()
            .map(|t| api::TokenInfo {
                id: t.id,
                realm: t.realm,
                provider: t.provider,
                kind: t.kind,
                created_ms: t.created_ms,
                revoked_ms: t.revoked_ms,
            })
            .collect())
    }

    pub fn revoke_token(&self, id: i64) -> Result<(), AgentError> {
        if self.store().revoke_token(id)? {
            Ok(())
        } else {
            Err(AgentError::NoToken(id))
        }
    }

    /// The services `who` sees.
    pub fn list(&self, who: &Principal) -> Result<Vec<api::ServiceSummary>, AgentError> {
        Ok(self
            .store()
            .list()?
            .iter()
            .filter(|r| who.sees(&r.provider))
            .map(crate::lifecycle::summary)
            .collect())
    }

    /// Up to `limit` events after `since` that `who` may see.
    pub fn events_for(
        &self,
        who: &Principal,
        since: i64,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<api::Event>, AgentError> {
        let mut found = Vec::new();
        let mut since = since;
        while found.len() < limit {
            let (next, mut page) = self.events_after(who, since, service, limit - found.len())?;
            if next == since {
                break;
            }
            found.append(&mut page);
            since = next;
        }
        Ok(found)
    }

    /// One page of the journal after `since` (at most `page` events read), filtered to what
    /// `who` may see; returns the last id read, so the caller pages on from there.
    pub fn events_after(
        &self,
        who: &Principal,
        since: i64,
        service: Option<&str>,
        page: usize,
    ) -> Result<(i64, Vec<api::Event>), AgentError> {
        let events = self.store().events(since, service, page)?;
        let last = events.last().map(|e| e.id).unwrap_or(since);
        let Principal::Provider(provider) = who else {
            return Ok((last, events.into_iter().map(crate::event_view).collect()));
        };
        // A provider sees the events of its services since they were installed (a name may
        // have belonged to another provider before), and no gateway-wide events.
        let owned: Vec<(String, u64)> = self
            .store()
            .list()?
            .into_iter()
            .filter(|r| &r.provider == provider)
            .map(|r| (r.name, r.installed_at_ms))
            .collect();
        let visible = events
            .into_iter()
            .filter(|e| {
                e.service.as_ref().is_some_and(|s| {
                    owned
                        .iter()
                        .any(|(name, since)| name == s && e.time_ms >= *since)
                })
            })
            .map(crate::event_view)
            .collect();
        Ok((last, visible))
    }

    /// The key of the service `who` means by `name`: `PROVIDER/NAME`, or the bare name when
    /// the services `who` sees hold only one of that name. A service `who` does not see is
    /// `NotFound`, exactly like a missing one; a bare name two visible providers share is a
    /// `BadRequest` listing both ids.
    ///
    /// A key `PROVIDER+NAME` (as admission names the holders it would stop) is taken as the
    /// id `PROVIDER/NAME`.
    pub fn resolve(&self, who: &Principal, name: &str) -> Result<String, AgentError> {
        let (provider, bare) = match name.split_once(['/', '+']) {
            Some((provider, bare)) => (Some(provider), bare),
            None => (None, name),
        };
        let matches: Vec<state::ServiceRecord> = self
            .store()
            .named(bare)?
            .into_iter()
            .filter(|r| who.sees(&r.provider))
            .filter(|r| manifest::bare_name(&r.name) == bare)
            .filter(|r| provider.is_none_or(|p| p == r.provider))
            .collect();
        match &matches[..] {
            [] => Err(AgentError::NotFound(name.to_string())),
            [one] => Ok(one.name.clone()),
            several => {
                let ids: Vec<String> = several
                    .iter()
                    .map(|r| format!("`{}/{bare}`", r.provider))
                    .collect();
                Err(AgentError::BadRequest(format!(
                    "`{bare}` names services of {} providers ({}); say which one as PROVIDER/NAME",
                    several.len(),
                    ids.join(", ")
                )))
            }
        }
    }

    /// The key a new service of `provider` named `name` is kept under: its name, unless
    /// another provider's service holds it already (then `PROVIDER+NAME`). `Exists` when
    /// `provider` has a service of that name.
    pub(crate) fn new_key(&self, provider: &str, name: &str) -> Result<String, AgentError> {
        let records = self.store().named(name)?;
        if records
            .iter()
            .any(|r| r.provider == provider && manifest::bare_name(&r.name) == name)
        {
            return Err(AgentError::Exists(format!("{provider}/{name}")));
        }
        Ok(if records.iter().any(|r| r.name == name) {
            manifest::service_key(provider, name)
        } else {
            name.to_string()
        })
    }

    /// The record of `name` if `who` may do `action` to it; `NotFound` when it does not exist
    /// for that caller.
    pub fn access(
        &self,
        who: &Principal,
        name: &str,
        action: ServiceAction,
    ) -> Result<state::ServiceRecord, AgentError> {
        let rec = self.store().get(name)?;
        check_service(who, name, &rec.provider, action)?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Principal {
        Principal::Provider("acme".into())
    }

    #[test]
    fn a_provider_cannot_tell_a_rivals_service_from_a_missing_one() {
        let rival = check_service(&acme(), "vod", "vodco", ServiceAction::Read).unwrap_err();
        assert!(matches!(rival, AgentError::NotFound(ref n) if n == "vod"));
        for action in [
            ServiceAction::Read,
            ServiceAction::Run,
            ServiceAction::Remove,
            ServiceAction::Logs,
            ServiceAction::Exec,
            ServiceAction::Metrics,
        ] {
            check_service(&acme(), "camera", "acme", action).unwrap();
        }
        assert!(matches!(
            check_service(&acme(), "camera", "acme", ServiceAction::Priority),
            Err(AgentError::Forbidden(_))
        ));
    }

    #[test]
    fn neither_operator_nor_household_reads_provider_data() {
        for who in [Principal::Operator, Principal::Home] {
            for action in [
                ServiceAction::Logs,
                ServiceAction::Exec,
                ServiceAction::Metrics,
            ] {
                assert!(matches!(
                    check_service(&who, "camera", "acme", action),
                    Err(AgentError::Forbidden(_))
                ));
            }
            for action in [
                ServiceAction::Read,
                ServiceAction::Run,
                ServiceAction::Remove,
                ServiceAction::Priority,
            ] {
                check_service(&who, "camera", "acme", action).unwrap();
            }
        }
    }

    #[test]
    fn only_the_operator_administers() {
        check_gateway(&Principal::Operator, GatewayAction::Administer).unwrap();
        for who in [acme(), Principal::Home] {
            assert!(check_gateway(&who, GatewayAction::Administer).is_err());
        }
        assert!(check_gateway(&acme(), GatewayAction::Capacity).is_err());
        check_gateway(&Principal::Home, GatewayAction::Capacity).unwrap();
    }

    #[test]
    fn providers_install_only_their_own_services() {
        check_install(&acme(), "camera", "acme").unwrap();
        let err = check_install(&acme(), "vod", "vodco").unwrap_err();
        assert!(
            err.to_string().contains("belongs to provider `vodco`"),
            "{err}"
        );
        check_install(&Principal::Home, "vod", "vodco").unwrap();
    }
}
