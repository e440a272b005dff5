//! Deployments, subscriptions and each gateway's desired state.
//!
//! A deployment sends one service version to the gateways a selector or a list names, in
//! cumulative waves (a canary count, then shares of the targets). A wave is reached by
//! writing its number on its targets; the gateways then find the version in their desired
//! state. The next wave starts only when every reached gateway is healthy and has stayed so
//! for the soak time; past the failure threshold the deployment aborts, and the gateways it
//! reached go back to the version they had (or lose the service if they had none). Every step
//! is a conditional row update, so any number of controller processes may judge at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use api::fleet::{Deployment, DeploymentTarget, Desired, DesiredService, Report, ServiceRef};
use realm::Principal;
use sha2::{Digest, Sha256};

use crate::db::{i64_of, now_ms, opt_i64, opt_str, str_of};
use crate::{Controller, ControllerError};

/// A wave: an absolute count of gateways or a share of the targets, cumulative.
fn wave_size(spec: &str, total: usize) -> Option<usize> {
    let spec = spec.trim();
    if let Some(pct) = spec.strip_suffix('%') {
        let pct: f64 = pct.trim().parse().ok()?;
        if !(0.0..=100.0).contains(&pct) || pct == 0.0 {
            return None;
        }
        Some(((total as f64 * pct / 100.0).ceil() as usize).clamp(1, total.max(1)))
    } else {
        let n: usize = spec.parse().ok()?;
        (n > 0).then_some(n.min(total))
    }
}

/// How many failures among `reached` gateways abort: more than this many.
fn failures_allowed(spec: &str, reached: usize) -> Option<usize> {
    let spec = spec.trim();
    if let Some(pct) = spec.strip_suffix('%') {
        let pct: f64 = pct.trim().parse().ok()?;
        (0.0..=100.0)
            .contains(&pct)
            .then(|| (reached as f64 * pct / 100.0).floor() as usize)
    } else {
        spec.parse().ok()
    }
}

impl Controller {
    /// Starts a deployment; `who` is the operator, or a provider deploying its own service.
    pub async fn deploy(
        &self,
        who: &Principal,
        req: &api::fleet::DeployRequest,
    ) -> Result<Deployment, ControllerError> {
        let (provider, name) = self.resolve_service(who, &req.service).await?;
        if let Principal::Provider(p) = who {
            if *p != provider {
                return Err(ControllerError::NotFound(format!(
                    "no service `{}` in the catalog; `shg fleet catalog` lists yours",
                    req.service
                )));
            }
        }
        let entry = match &req.version {
            Some(v) => self.package(&Principal::Operator, &provider, &name, v).await?,
            None => self.latest_approved(&provider, &name).await?.ok_or_else(|| {
                ControllerError::Conflict(format!(
                    "`{name}` of provider `{provider}` has no approved version; the operator approves one with `shg fleet approve {name} VERSION`"
                ))
            })?,
        };
        if !entry.approved {
            return Err(ControllerError::Conflict(format!(
                "`{name}` {} is not approved yet; the operator approves it with `shg fleet approve {name} {}`",
                entry.version, entry.version
            )));
        }
        if req.selector.is_empty() == req.gateways.is_empty() {
            return Err(ControllerError::BadRequest(
                "give the gateways either by label (`--selector k=v`) or by id (`--gateways ID,…`), not both or neither".into(),
            ));
        }
        crate::enroll::check_labels(&req.selector)?;
        let all = self.gateways(&req.selector).await?;
        let mut targets: Vec<String> = if req.gateways.is_empty() {
            all.iter()
                .filter(|g| !g.row.revoked)
                .map(|g| g.row.id.clone())
                .collect()
        } else {
            let known: BTreeSet<String> = all
                .iter()
                .filter(|g| !g.row.revoked)
                .map(|g| g.row.id.clone())
                .collect();
            if let Some(unknown) = req.gateways.iter().find(|g| !known.contains(*g)) {
                return Err(ControllerError::BadRequest(format!(
                    "no enrolled, unrevoked gateway `{unknown}`; `shg fleet gateways` lists them"
                )));
            }
            req.gateways.clone()
        };
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            return Err(ControllerError::BadRequest(
                "no enrolled gateway matches; `shg fleet gateways --selector k=v` shows which would".into(),
            ));
        }
        if let Principal::Provider(p) = who {
            let labels: BTreeMap<&str, &BTreeMap<String, String>> = all
                .iter()
                .map(|g| (g.row.id.as_str(), &g.row.labels))
                .collect();
            self.check_policy(
                p,
                targets
                    .iter()
                    .filter_map(|t| labels.get(t.as_str()).map(|l| (t.as_str(), *l))),
            )
            .await?;
        }
        let waves = if req.waves.is_empty() {
            vec!["100%".to_string()]
        } else {
            req.waves.clone()
        };
        if let Some(bad) = waves.iter().find(|w| wave_size(w, targets.len()).is_none()) {
            return Err(ControllerError::BadRequest(format!(
                "wave `{bad}`: give a count of gateways (`1`) or a share (`10%`), e.g. --waves 1,10%,50%,100%"
            )));
        }
        let max_failures = req.max_failures.clone().unwrap_or_else(|| "10%".into());
        if failures_allowed(&max_failures, 1).is_none() {
            return Err(ControllerError::BadRequest(format!(
                "--max-failures `{max_failures}`: give a count (`2`) or a share (`10%`)"
            )));
        }
        let soak_s = req.soak_s.unwrap_or(60);
        if soak_s > 24 * 3600 {
            return Err(ControllerError::BadRequest(format!(
                "a soak time of {soak_s} s is longer than a day; give at most 86400"
            )));
        }
        let id = format!(
            "d-{}",
            realm::random_hex(5).map_err(|e| ControllerError::Internal(e.to_string()))?
        );
        let now = now_ms();
        let target_doc = serde_json::json!({ "selector": req.selector, "gateways": req.gateways });
        self.db
            .execute(
                sqlx::query(
                    "INSERT INTO deployments (id, provider, service, version, target, waves, max_failures, soak_ms, state, wave, wave_started_ms, created_ms, created_by)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', 0, $9, $10, $11)",
                )
                .bind(id.clone())
                .bind(provider.clone())
                .bind(name.clone())
                .bind(entry.version.clone())
                .bind(target_doc.to_string())
                .bind(serde_json::to_string(&waves).unwrap_or_default())
                .bind(max_failures)
                .bind(soak_s as i64 * 1000)
                .bind(now)
                .bind(now)
                .bind(who.label()),
            )
            .await?;
        let first = wave_size(&waves[0], targets.len()).unwrap_or(1);
        let inventories: BTreeMap<String, Option<Report>> =
            all.into_iter().map(|g| (g.row.id, g.report)).collect();
        for (position, gateway) in targets.iter().enumerate() {
            let previous = inventories
                .get(gateway)
                .and_then(|r| r.as_ref())
                .and_then(|r| {
                    r.services
                        .iter()
                        .find(|s| s.provider == provider && s.name == name)
                        .map(|s| s.version.clone())
                });
            self.db
                .execute(
                    sqlx::query(
                        "INSERT INTO deployment_targets (deployment_id, gateway_id, position, wave, previous_version, outcome, updated_ms) VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
                    )
                    .bind(id.clone())
                    .bind(gateway.clone())
                    .bind(position as i64)
                    .bind((position < first).then_some(0i64))
                    .bind(previous)
                    .bind(now),
                )
                .await?;
        }
        self.db
            .event(
                "deployment-started",
                None,
                Some((&provider, &name)),
                &format!(
                    "deployment {id}: `{name}` {} to {} gateway(s) in waves {}",
                    entry.version,
                    targets.len(),
                    waves.join(",")
                ),
            )
            .await?;
        self.db.announce().await;
        self.deployment(who, &id).await
    }

    /// `NAME` or `PROVIDER/NAME` to the provider and name of a published service.
    async fn resolve_service(
        &self,
        who: &Principal,
        text: &str,
    ) -> Result<(String, String), ControllerError> {
        if let Some((p, n)) = text.split_once('/') {
            return Ok((p.to_string(), n.to_string()));
        }
        let owners: BTreeSet<String> = self
            .catalog(who)
            .await?
            .into_iter()
            .filter(|e| e.name == text)
            .map(|e| e.provider)
            .collect();
        match owners.len() {
            0 => Err(ControllerError::NotFound(format!(
                "no service `{text}` in the catalog; `shg fleet catalog` lists them"
            ))),
            1 => Ok((
                owners.into_iter().next().unwrap_or_default(),
                text.to_string(),
            )),
            _ => Err(ControllerError::BadRequest(format!(
                "`{text}` is published by several providers ({}); say which, e.g. `{}/{text}`",
                owners.iter().cloned().collect::<Vec<_>>().join(", "),
                owners.iter().next().cloned().unwrap_or_default()
            ))),
        }
    }

    fn deployment_of(row: &sqlx::any::AnyRow, targets: Vec<DeploymentTarget>) -> Deployment {
        Deployment {
            id: str_of(row, "id"),
            provider: str_of(row, "provider"),
            service: str_of(row, "service"),
            version: str_of(row, "version"),
            state: str_of(row, "state"),
            wave: i64_of(row, "wave"),
            waves: serde_json::from_str(&str_of(row, "waves")).unwrap_or_default(),
            max_failures: str_of(row, "max_failures"),
            soak_s: (i64_of(row, "soak_ms") / 1000) as u64,
            created_ms: i64_of(row, "created_ms"),
            reason: opt_str(row, "reason"),
            targets,
        }
    }

    async fn targets(&self, id: &str) -> Result<Vec<DeploymentTarget>, ControllerError> {
        let rows = self
            .db
            .fetch_all(
                sqlx::query(
                    "SELECT gateway_id, wave, outcome, reason, previous_version, updated_ms FROM deployment_targets WHERE deployment_id = $1 ORDER BY position",
                )
                .bind(id.to_string()),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeploymentTarget {
                gateway_id: str_of(r, "gateway_id"),
                wave: opt_i64(r, "wave"),
                outcome: str_of(r, "outcome"),
                reason: opt_str(r, "reason"),
                previous_version: opt_str(r, "previous_version"),
                since_ms: i64_of(r, "updated_ms"),
            })
            .collect())
    }

    /// The deployments `who` sees (a provider: those of its services), newest first.
    pub async fn deployments(&self, who: &Principal) -> Result<Vec<Deployment>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT * FROM deployments ORDER BY created_ms DESC",
            ))
            .await?;
        let mut out = Vec::new();
        for r in rows.iter().filter(|r| sees_deployment(who, r)) {
            let targets = self.targets(&str_of(r, "id")).await?;
            out.push(Self::deployment_of(r, targets));
        }
        Ok(out)
    }

    pub async fn deployment(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<Deployment, ControllerError> {
        let row = self
            .db
            .fetch_optional(
                sqlx::query("SELECT * FROM deployments WHERE id = $1").bind(id.to_string()),
            )
            .await?
            .filter(|r| sees_deployment(who, r))
            .ok_or_else(|| {
                ControllerError::NotFound(format!(
                    "no deployment `{id}`; `shg fleet deployments` lists them"
                ))
            })?;
        let targets = self.targets(id).await?;
        Ok(Self::deployment_of(&row, targets))
    }

    /// `pause`, `resume` or `cancel`. A paused deployment starts no new wave; a cancelled
    /// one starts none ever again (the gateways it reached keep the new version).
    pub async fn control(
        &self,
        who: &Principal,
        id: &str,
        action: &str,
    ) -> Result<Deployment, ControllerError> {
        let current = self.deployment(who, id).await?;
        let (from, to): (&[&str], &str) = match action {
            "pause" => (&["running"], "paused"),
            "resume" => (&["paused"], "running"),
            "cancel" => (&["running", "paused"], "cancelled"),
            other => {
                return Err(ControllerError::BadRequest(format!(
                    "`{other}`: a deployment is paused, resumed or cancelled"
                )))
            }
        };
        if !from.contains(&current.state.as_str()) {
            return Err(ControllerError::Conflict(format!(
                "deployment {id} is {}; it cannot be {}",
                current.state,
                match action {
                    "pause" => "paused",
                    "resume" => "resumed",
                    _ => "cancelled",
                }
            )));
        }
        let n = self
            .db
            .execute(
                sqlx::query("UPDATE deployments SET state = $1, wave_started_ms = $2 WHERE id = $3 AND state = $4")
                    .bind(to.to_string())
                    .bind(now_ms())
                    .bind(id.to_string())
                    .bind(current.state.clone()),
            )
            .await?;
        if n == 1 {
            self.db
                .event(
                    &format!("deployment-{to}"),
                    None,
                    Some((&current.provider, &current.service)),
                    &format!("deployment {id} {to} by {}", who.label()),
                )
                .await?;
            self.db.announce().await;
        }
        self.deployment(who, id).await
    }

    /// Records the household's subscriptions as the gateway reports them; true if they
    /// changed.
    pub async fn sync_subscriptions(
        &self,
        gateway: &str,
        now: &[ServiceRef],
    ) -> Result<bool, ControllerError> {
        let rows = self
            .db
            .fetch_all(
                sqlx::query("SELECT provider, service FROM subscriptions WHERE gateway_id = $1")
                    .bind(gateway.to_string()),
            )
            .await?;
        let before: BTreeSet<ServiceRef> = rows
            .iter()
            .map(|r| ServiceRef {
                provider: str_of(r, "provider"),
                name: str_of(r, "service"),
            })
            .collect();
        let after: BTreeSet<ServiceRef> = now.iter().cloned().collect();
        for gone in before.difference(&after) {
            self.db
                .execute(
                    sqlx::query("DELETE FROM subscriptions WHERE gateway_id = $1 AND provider = $2 AND service = $3")
                        .bind(gateway.to_string())
                        .bind(gone.provider.clone())
                        .bind(gone.name.clone()),
                )
                .await?;
        }
        for new in after.difference(&before) {
            self.db
                .execute(
                    sqlx::query("INSERT INTO subscriptions (gateway_id, provider, service, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                        .bind(gateway.to_string())
                        .bind(new.provider.clone())
                        .bind(new.name.clone())
                        .bind(now_ms()),
                )
                .await?;
            self.db
                .event(
                    "subscribed",
                    Some(gateway),
                    Some((&new.provider, &new.name)),
                    &format!("the household of {gateway} subscribed to `{}`", new.name),
                )
                .await?;
        }
        Ok(before != after)
    }

    /// A gateway's desired state: the trust policy, the services its subscriptions and the
    /// deployments that reached it name. Later deployments win over earlier ones for the
    /// same service; an aborted deployment sends the gateways it reached back to the version
    /// they had.
    pub async fn desired(&self, gateway: &str) -> Result<Desired, ControllerError> {
        let mut services: BTreeMap<(String, String), DesiredService> = BTreeMap::new();
        let subs = self
            .db
            .fetch_all(
                sqlx::query("SELECT provider, service FROM subscriptions WHERE gateway_id = $1 ORDER BY provider, service")
                    .bind(gateway.to_string()),
            )
            .await?;
        for s in &subs {
            let (provider, name) = (str_of(s, "provider"), str_of(s, "service"));
            if let Some(entry) = self.latest_approved(&provider, &name).await? {
                services.insert(
                    (provider.clone(), name.clone()),
                    DesiredService {
                        provider,
                        name,
                        version: entry.version,
                        digest: entry.digest,
                        cause: "subscription".into(),
                    },
                );
            }
        }
        let rows = self
            .db
            .fetch_all(
                sqlx::query(
                    "SELECT d.id, d.provider, d.service, d.version, d.state, t.previous_version FROM deployment_targets t
                     JOIN deployments d ON d.id = t.deployment_id
                     WHERE t.gateway_id = $1 AND t.wave IS NOT NULL ORDER BY d.created_ms",
                )
                .bind(gateway.to_string()),
            )
            .await?;
        for r in &rows {
            let (provider, name) = (str_of(r, "provider"), str_of(r, "service"));
            let key = (provider.clone(), name.clone());
            let version = if str_of(r, "state") == "aborted" {
                match opt_str(r, "previous_version") {
                    Some(v) => v,
                    None => {
                        // Back to not having it, unless the household subscribed to it.
                        if services
                            .get(&key)
                            .is_some_and(|s| s.cause.starts_with("deployment:"))
                        {
                            services.remove(&key);
                        }
                        continue;
                    }
                }
            } else {
                str_of(r, "version")
            };
            let Ok(entry) = self
                .package(&Principal::Operator, &provider, &name, &version)
                .await
            else {
                continue;
            };
            services.insert(
                key,
                DesiredService {
                    provider,
                    name,
                    version,
                    digest: entry.digest,
                    cause: format!("deployment:{}", str_of(r, "id")),
                },
            );
        }
        let mut desired = Desired {
            etag: String::new(),
            trust: self.trust_rules().await?,
            services: services.into_values().collect(),
            catalog_version: self.catalog_version().await?,
        };
        // The tag covers what the gateway acts on and why: a new deployment of the version a
        // gateway already runs reaches it too, so that its next report (at once) judges it.
        let mut hash = Sha256::new();
        hash.update(format!("catalog {}\n", desired.catalog_version));
        for t in &desired.trust {
            hash.update(format!(
                "{}|{}|{}\n",
                t.key_id,
                t.public_key,
                t.services.join(",")
            ));
        }
        for s in &desired.services {
            hash.update(format!(
                "{}|{}|{}|{}|{}\n",
                s.provider, s.name, s.version, s.digest, s.cause
            ));
        }
        desired.etag = format!("\"{}\"", &hex::encode(hash.finalize())[..32]);
        Ok(desired)
    }

    /// Updates the outcome of every deployment target of `gateway` from its report.
    pub async fn judge_targets(
        &self,
        gateway: &str,
        report: &Report,
    ) -> Result<(), ControllerError> {
        let rows = self
            .db
            .fetch_all(
                sqlx::query(
                    "SELECT d.id, d.provider, d.service, d.version, d.state, t.outcome, t.previous_version FROM deployment_targets t
                     JOIN deployments d ON d.id = t.deployment_id
                     WHERE t.gateway_id = $1 AND t.wave IS NOT NULL AND d.state <> 'cancelled'",
                )
                .bind(gateway.to_string()),
            )
            .await?;
        for r in &rows {
            let (id, provider, name) =
                (str_of(r, "id"), str_of(r, "provider"), str_of(r, "service"));
            let version = str_of(r, "version");
            let old = str_of(r, "outcome");
            let running = report
                .services
                .iter()
                .find(|s| s.provider == provider && s.name == name);
            let attempt = report
                .outcomes
                .iter()
                .find(|o| o.provider == provider && o.name == name && o.version == version);
            let (outcome, reason) = if str_of(r, "state") == "aborted" {
                let back = match (running, opt_str(r, "previous_version")) {
                    (Some(s), Some(prev)) => s.version == prev,
                    (None, None) => true,
                    _ => false,
                };
                if !back || old == "rolled-back" {
                    continue;
                }
                (
                    "rolled-back",
                    Some("the deployment was aborted".to_string()),
                )
            } else {
                match (running, attempt) {
                    (_, Some(a)) if a.result == "refused" || a.result == "failed" => {
                        (a.result.as_str(), a.reason.clone())
                    }
                    (Some(s), _)
                        if s.version == version
                            && crate::inventory::failing(&s.state, &s.health) =>
                    {
                        (
                            "failed",
                            Some(format!(
                                "`{name}` {version} is {} (health {})",
                                s.state, s.health
                            )),
                        )
                    }
                    (Some(s), _)
                        if s.version == version
                            && s.state == "running"
                            && matches!(s.health.as_str(), "healthy" | "none") =>
                    {
                        ("healthy", None)
                    }
                    (Some(s), _) if s.version == version => ("admitted", None),
                    // Admitted, then gone back: the gateway's own health window rolled it back.
                    (Some(s), Some(a)) if a.result == "admitted" => (
                        "failed",
                        Some(format!(
                            "`{name}` {version} was admitted, then the gateway went back to {} (its health window rolled the update back)",
                            s.version
                        )),
                    ),
                    _ => continue,
                }
            };
            if old == outcome {
                continue;
            }
            self.db
                .execute(
                    sqlx::query("UPDATE deployment_targets SET outcome = $1, reason = $2, updated_ms = $3 WHERE deployment_id = $4 AND gateway_id = $5")
                        .bind(outcome.to_string())
                        .bind(reason.clone())
                        .bind(now_ms())
                        .bind(id.clone())
                        .bind(gateway.to_string()),
                )
                .await?;
            let text = match &reason {
                Some(why) => format!("deployment {id}: {gateway} {outcome}: {why}"),
                None => format!("deployment {id}: {gateway} {outcome}"),
            };
            self.db
                .event(
                    &format!("target-{outcome}"),
                    Some(gateway),
                    Some((&provider, &name)),
                    &text,
                )
                .await?;
        }
        Ok(())
    }

    /// Judges every running deployment once: abort past the failure threshold, advance a
    /// wave whose gateways all stayed healthy for the soak time, finish after the last.
    pub async fn judge_deployments(&self) -> Result<(), ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT * FROM deployments WHERE state = 'running'",
            ))
            .await?;
        for row in &rows {
            let d = Self::deployment_of(row, self.targets(&str_of(row, "id")).await?);
            let started = i64_of(row, "wave_started_ms");
            let reached: Vec<&DeploymentTarget> =
                d.targets.iter().filter(|t| t.wave.is_some()).collect();
            let failed: Vec<&&DeploymentTarget> = reached
                .iter()
                .filter(|t| matches!(t.outcome.as_str(), "failed" | "refused"))
                .collect();
            let allowed = failures_allowed(&d.max_failures, reached.len()).unwrap_or(0);
            if failed.len() > allowed {
                let first = failed
                    .first()
                    .map(|t| {
                        format!(
                            "{}: {}",
                            t.gateway_id,
                            t.reason.clone().unwrap_or_else(|| t.outcome.clone())
                        )
                    })
                    .unwrap_or_default();
                let reason = format!(
                    "{} of {} gateway(s) reached failed (more than the {} allowed); first: {first}",
                    failed.len(),
                    reached.len(),
                    d.max_failures
                );
                let n = self
                    .db
                    .execute(
                        sqlx::query("UPDATE deployments SET state = 'aborted', reason = $1 WHERE id = $2 AND state = 'running'")
                            .bind(reason.clone())
                            .bind(d.id.clone()),
                    )
                    .await?;
                if n == 1 {
                    self.db
                        .event(
                            "deployment-aborted",
                            None,
                            Some((&d.provider, &d.service)),
                            &format!("deployment {}: aborted, rolling back: {reason}", d.id),
                        )
                        .await?;
                    self.db.announce().await;
                }
                continue;
            }
            // Each gateway of the wave must have stayed healthy for the soak time (its
            // outcome changes, and its clock restarts, with every report that says otherwise).
            let soak = d.soak_s as i64 * 1000;
            let settled = reached
                .iter()
                .all(|t| t.outcome == "healthy" && now_ms() - t.since_ms >= soak);
            if !settled || now_ms() - started < soak {
                continue;
            }
            let next = d.wave + 1;
            if next as usize >= d.waves.len() || reached.len() == d.targets.len() {
                let n = self
                    .db
                    .execute(
                        sqlx::query("UPDATE deployments SET state = 'done' WHERE id = $1 AND state = 'running' AND wave = $2")
                            .bind(d.id.clone())
                            .bind(d.wave),
                    )
                    .await?;
                if n == 1 {
                    self.db
                        .event(
                            "deployment-done",
                            None,
                            Some((&d.provider, &d.service)),
                            &format!(
                                "deployment {}: `{}` {} healthy on {} gateway(s)",
                                d.id,
                                d.service,
                                d.version,
                                reached.len()
                            ),
                        )
                        .await?;
                }
                continue;
            }
            let size =
                wave_size(&d.waves[next as usize], d.targets.len()).unwrap_or(d.targets.len());
            let n = self
                .db
                .execute(
                    sqlx::query("UPDATE deployments SET wave = $1, wave_started_ms = $2 WHERE id = $3 AND state = 'running' AND wave = $4")
                        .bind(next)
                        .bind(now_ms())
                        .bind(d.id.clone())
                        .bind(d.wave),
                )
                .await?;
            if n != 1 {
                continue; // another controller process advanced it
            }
            self.db
                .execute(
                    sqlx::query("UPDATE deployment_targets SET wave = $1 WHERE deployment_id = $2 AND wave IS NULL AND position < $3")
                        .bind(next)
                        .bind(d.id.clone())
                        .bind(size as i64),
                )
                .await?;
            self.db
                .event(
                    "deployment-wave",
                    None,
                    Some((&d.provider, &d.service)),
                    &format!(
                        "deployment {}: wave {} ({}) to {size} gateway(s) in all",
                        d.id,
                        next + 1,
                        d.waves[next as usize]
                    ),
                )
                .await?;
            self.db.announce().await;
        }
        Ok(())
    }
}

fn sees_deployment(who: &Principal, row: &sqlx::any::AnyRow) -> bool {
    match who {
        Principal::Operator => true,
        Principal::Provider(p) => *p == str_of(row, "provider"),
        Principal::Home | Principal::Gateway(_) => false,
    }
}

/// Judges the deployments every tick, for as long as the controller runs.
pub async fn judge(controller: Arc<Controller>) {
    loop {
        if let Err(e) = controller.judge_deployments().await {
            tracing::warn!("judging the deployments failed: {e}");
        }
        tokio::time::sleep(controller.cfg.tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_are_counts_or_shares_of_the_targets() {
        assert_eq!(wave_size("1", 50), Some(1));
        assert_eq!(wave_size("10%", 50), Some(5));
        assert_eq!(wave_size("10%", 3), Some(1));
        assert_eq!(wave_size("100%", 7), Some(7));
        assert_eq!(wave_size("200", 7), Some(7));
        for bad in ["0", "0%", "abc", "150%", "-1"] {
            assert_eq!(wave_size(bad, 10), None, "{bad}");
        }
    }

    #[test]
    fn a_canary_failure_is_past_a_ten_percent_threshold() {
        assert_eq!(failures_allowed("10%", 1), Some(0));
        assert_eq!(failures_allowed("10%", 25), Some(2));
        assert_eq!(failures_allowed("3", 25), Some(3));
        assert_eq!(failures_allowed("x", 25), None);
    }
}
