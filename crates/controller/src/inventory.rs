//! What the gateways report and what the fleet looks like from it: each gateway's inventory,
//! each service across the fleet, and the Prometheus aggregates.

use std::collections::BTreeMap;

use api::fleet::{GatewayInventory, GatewayRow, Report};
use realm::Principal;

use crate::db::{i64_of, now_ms, opt_i64, opt_str, str_of};
use crate::{Controller, ControllerError};

/// The largest report a gateway may send.
pub const MAX_REPORT: usize = 4 << 20;

/// The SHA-256 of what the controller decides from in a report — each service's version, state
/// and health, the outcomes and the subscriptions — leaving out the use and free figures,
/// which change at every report and decide nothing.
fn decisions_digest(report: &Report) -> String {
    use sha2::{Digest, Sha256};
    let services: Vec<(&str, &str, &str, &str, &str)> = report
        .services
        .iter()
        .map(|s| {
            (
                s.provider.as_str(),
                s.name.as_str(),
                s.version.as_str(),
                s.state.as_str(),
                s.health.as_str(),
            )
        })
        .collect();
    let doc = serde_json::json!([
        report.agent_version,
        services,
        report.outcomes,
        report.subscriptions
    ]);
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

impl Controller {
    /// Takes a gateway's report about itself: its inventory, the outcome of each desired
    /// service, and its household's subscriptions.
    ///
    /// A report that decides nothing new — the same decisions' digest as the last one this
    /// process carried out, stored as the gateway's last (no other replica took a different
    /// one since), with no change in between — is one conditional write of the new figures.
    pub async fn report(&self, gateway: &str, report: &Report) -> Result<(), ControllerError> {
        let generation = self.db.generation();
        let digest = decisions_digest(report);
        let text = serde_json::to_string(report).unwrap_or_default();
        let now = now_ms();
        self.memo.contacted(gateway, now);
        if self.memo.judged(gateway, generation, &digest) {
            let n = self
                .db
                .execute(
                    sqlx::query(
                        "UPDATE gateways SET last_contact_ms = $1, report = $2 WHERE id = $3 AND revoked_ms IS NULL AND report_digest = $4",
                    )
                    .bind(now)
                    .bind(text.clone())
                    .bind(gateway.to_string())
                    .bind(digest.clone()),
                )
                .await?;
            if n == 1 {
                return Ok(());
            }
        }
        let before: Option<Report> = self
            .db
            .fetch_optional(
                sqlx::query("SELECT report FROM gateways WHERE id = $1").bind(gateway.to_string()),
            )
            .await?
            .and_then(|r| opt_str(&r, "report"))
            .and_then(|t| serde_json::from_str(&t).ok());
        // What a gateway could not bring about is news for the operator and the provider.
        for o in report.outcomes.iter().filter(|o| o.result != "admitted") {
            let known = before
                .as_ref()
                .is_some_and(|b| b.outcomes.iter().any(|p| p == o));
            if !known {
                self.db
                    .event(
                        &format!("service-{}", o.result),
                        Some(gateway),
                        Some((&o.provider, &o.name)),
                        &format!(
                            "{gateway}: `{}` {} {}: {}",
                            o.name,
                            o.version,
                            o.result,
                            o.reason.as_deref().unwrap_or("no reason given")
                        ),
                    )
                    .await?;
            }
        }
        self.db
            .execute(
                sqlx::query(
                    "UPDATE gateways SET last_contact_ms = $1, agent_version = $2, report = $3, report_digest = $4 WHERE id = $5 AND revoked_ms IS NULL",
                )
                .bind(now)
                .bind(report.agent_version.clone())
                .bind(text)
                .bind(digest.clone())
                .bind(gateway.to_string()),
            )
            .await?;
        let changed = self
            .sync_subscriptions(gateway, &report.subscriptions)
            .await?;
        self.judge_targets(gateway, report).await?;
        if changed {
            self.db.announce().await;
        }
        self.memo.remember_judged(gateway, generation, &digest);
        Ok(())
    }

    /// Notes that a gateway is in contact (a long-poll).
    pub async fn touch(&self, gateway: &str) -> Result<(), ControllerError> {
        let now = now_ms();
        if !self.memo.contact_due(gateway, now) {
            return Ok(());
        }
        self.db
            .execute(
                sqlx::query("UPDATE gateways SET last_contact_ms = $1 WHERE id = $2")
                    .bind(now)
                    .bind(gateway.to_string()),
            )
            .await?;
        Ok(())
    }

    fn row(&self, r: &sqlx::any::AnyRow) -> GatewayInventory {
        let report: Option<Report> =
            opt_str(r, "report").and_then(|t| serde_json::from_str(&t).ok());
        let last = opt_i64(r, "last_contact_ms");
        let revoked_ms = opt_i64(r, "revoked_ms");
        let row = GatewayRow {
            id: str_of(r, "id"),
            labels: serde_json::from_str(&str_of(r, "labels")).unwrap_or_default(),
            online: revoked_ms.is_none()
                && last.is_some_and(|t| now_ms() - t < self.cfg.offline_after_ms),
            services: report.as_ref().map(|r| r.services.len()).unwrap_or(0),
            last_contact_ms: last,
            agent_version: opt_str(r, "agent_version"),
            revoked: revoked_ms.is_some(),
        };
        GatewayInventory {
            row,
            enrolled_ms: i64_of(r, "enrolled_ms"),
            revoked_ms,
            certificate_expires_ms: opt_i64(r, "cert_expires_ms"),
            report,
        }
    }

    /// Every enrolled gateway whose labels hold all of `selector`.
    pub async fn gateways(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<GatewayInventory>, ControllerError> {
        let rows = self
            .db
            .fetch_all(sqlx::query(
                "SELECT id, labels, enrolled_ms, last_contact_ms, revoked_ms, agent_version, report, cert_expires_ms FROM gateways ORDER BY id",
            ))
            .await?;
        Ok(rows
            .iter()
            .map(|r| self.row(r))
            .filter(|g| selector.iter().all(|(k, v)| g.row.labels.get(k) == Some(v)))
            .collect())
    }

    pub async fn gateway(&self, id: &str) -> Result<GatewayInventory, ControllerError> {
        self.gateways(&BTreeMap::new())
            .await?
            .into_iter()
            .find(|g| g.row.id == id)
            .ok_or_else(|| {
                ControllerError::NotFound(format!(
                    "no gateway `{id}` is enrolled; `shg fleet gateways` lists them"
                ))
            })
    }

    /// Each service across the fleet as `who` sees it (a provider: its own only).
    pub async fn services(
        &self,
        who: &Principal,
    ) -> Result<Vec<api::fleet::FleetService>, ControllerError> {
        let mut by: BTreeMap<(String, String), api::fleet::FleetService> = BTreeMap::new();
        for g in self.gateways(&BTreeMap::new()).await? {
            if g.row.revoked {
                continue;
            }
            for s in g.report.map(|r| r.services).unwrap_or_default() {
                if !who.sees(&s.provider) && *who != Principal::Operator {
                    continue;
                }
                let f = by
                    .entry((s.provider.clone(), s.name.clone()))
                    .or_insert_with(|| api::fleet::FleetService {
                        provider: s.provider.clone(),
                        name: s.name.clone(),
                        ..Default::default()
                    });
                f.gateways += 1;
                let running = s.state == "running";
                f.running += usize::from(running);
                f.healthy +=
                    usize::from(running && matches!(s.health.as_str(), "healthy" | "none"));
                f.failing += usize::from(failing(&s.state, &s.health));
                *f.versions.entry(s.version.clone()).or_default() += 1;
                f.cpu_millicores += s.cpu_millicores.unwrap_or(0);
                f.cpu_reserved_millicores += s.cpu_reserved_millicores.unwrap_or(0);
                f.memory_bytes += s.memory_bytes.unwrap_or(0);
                f.memory_reserved_bytes += s.memory_reserved_bytes.unwrap_or(0);
                // The service's own figures are its provider's data: the operator does not
                // read them here either.
                let own = matches!(who, Principal::Provider(p) if *p == s.provider);
                if let (true, Some(figures)) = (own, s.figures) {
                    for (key, value) in figures.as_object().into_iter().flatten() {
                        if let Some(n) = value.as_f64() {
                            *f.figures_total.entry(key.clone()).or_default() += n;
                        }
                    }
                    f.figures.insert(g.row.id.clone(), figures);
                }
            }
        }
        Ok(by.into_values().collect())
    }

    /// `GET /metrics`: the fleet's aggregates in Prometheus text, scoped to `who`.
    pub async fn metrics(&self, who: &Principal) -> Result<String, ControllerError> {
        use std::fmt::Write;
        let mut out = String::new();
        if *who == Principal::Operator {
            let gateways = self.gateways(&BTreeMap::new()).await?;
            let live: Vec<_> = gateways.iter().filter(|g| !g.row.revoked).collect();
            let online = live.iter().filter(|g| g.row.online).count();
            let _ = writeln!(
                out,
                "# HELP shg_fleet_gateways Enrolled, unrevoked gateways."
            );
            let _ = writeln!(out, "# TYPE shg_fleet_gateways gauge");
            let _ = writeln!(out, "shg_fleet_gateways {}", live.len());
            let _ = writeln!(
                out,
                "# HELP shg_fleet_gateways_online Gateways in contact within the last 90 s."
            );
            let _ = writeln!(out, "# TYPE shg_fleet_gateways_online gauge");
            let _ = writeln!(out, "shg_fleet_gateways_online {online}");
        }
        let services = self.services(who).await?;
        for (metric, help) in [
            ("gateways", "Gateways with the service installed."),
            ("running", "Gateways where the service runs."),
            ("healthy", "Gateways where the service runs and is healthy."),
            ("failing", "Gateways where the service fails."),
            (
                "cpu_millicores",
                "CPU the service uses, summed over the fleet.",
            ),
            (
                "cpu_reserved_millicores",
                "CPU the service reserves, summed over the fleet.",
            ),
            (
                "memory_bytes",
                "Memory the service uses, summed over the fleet.",
            ),
            (
                "memory_reserved_bytes",
                "Memory the service reserves, summed over the fleet.",
            ),
        ] {
            let _ = writeln!(out, "# HELP shg_fleet_service_{metric} {help}");
            let _ = writeln!(out, "# TYPE shg_fleet_service_{metric} gauge");
            for s in &services {
                let value = match metric {
                    "gateways" => s.gateways as u64,
                    "running" => s.running as u64,
                    "healthy" => s.healthy as u64,
                    "failing" => s.failing as u64,
                    "cpu_millicores" => s.cpu_millicores,
                    "cpu_reserved_millicores" => s.cpu_reserved_millicores,
                    "memory_bytes" => s.memory_bytes,
                    _ => s.memory_reserved_bytes,
                };
                let _ = writeln!(
                    out,
                    "shg_fleet_service_{metric}{{provider=\"{}\",service=\"{}\"}} {value}",
                    s.provider, s.name
                );
            }
        }
        Ok(out)
    }

    /// Up to `limit` fleet events after `since` that `who` may see (a provider: its own
    /// services' only).
    pub async fn events(
        &self,
        who: &Principal,
        since: i64,
        limit: i64,
    ) -> Result<(i64, Vec<api::fleet::FleetEvent>), ControllerError> {
        let rows = self
            .db
            .fetch_all(
                sqlx::query(
                    "SELECT id, time_ms, kind, gateway_id, provider, service, message FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(since)
                .bind(limit),
            )
            .await?;
        let last = rows.last().map(|r| i64_of(r, "id")).unwrap_or(since);
        let events = rows
            .iter()
            .map(|r| api::fleet::FleetEvent {
                id: i64_of(r, "id"),
                time_ms: i64_of(r, "time_ms"),
                kind: str_of(r, "kind"),
                gateway: opt_str(r, "gateway_id"),
                provider: opt_str(r, "provider"),
                service: opt_str(r, "service"),
                message: str_of(r, "message"),
            })
            .filter(|e| match who {
                Principal::Operator => true,
                Principal::Provider(p) => e.provider.as_deref() == Some(p.as_str()),
                Principal::Home | Principal::Gateway(_) => false,
            })
            .collect();
        Ok((last, events))
    }

    /// The newest event id.
    pub async fn last_event_id(&self) -> Result<i64, ControllerError> {
        let row = self
            .db
            .fetch_optional(sqlx::query("SELECT MAX(id) AS id FROM events"))
            .await?;
        Ok(row.and_then(|r| opt_i64(&r, "id")).unwrap_or(0))
    }

    /// The audit log.
    pub async fn audit_log(
        &self,
        since: i64,
        limit: i64,
    ) -> Result<Vec<api::AuditEntry>, ControllerError> {
        let rows = self
            .db
            .fetch_all(
                sqlx::query("SELECT id, time_ms, principal, action, status FROM audit WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(since)
                    .bind(limit),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| api::AuditEntry {
                id: i64_of(r, "id"),
                time_ms: i64_of(r, "time_ms") as u64,
                principal: str_of(r, "principal"),
                action: str_of(r, "action"),
                status: i64_of(r, "status") as u16,
            })
            .collect())
    }
}

/// Whether a reported state counts as failing.
pub fn failing(state: &str, health: &str) -> bool {
    matches!(state, "crash-loop" | "failed" | "backoff") || health == "unhealthy"
}
