//! `shg fleet …`: the operator's and the providers' commands against the fleet controller,
//! over its socket (root is the operator) or HTTPS with a token.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use api::fleet::{
    CatalogEntry, DeployRequest, Deployment, FleetService, GatewayInventory, GatewayRow,
};
use api::Client;
use clap::Subcommand;
use serde::Serialize;

use crate::cli::{TokenCommand, TrustCommand};
use crate::output;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Make a one-time enrollment token for a gateway, and print it (operator)
    EnrollToken {
        /// Labels of the gateway enrolled with it, comma-separated (region=lyon,model=x)
        #[arg(long, value_name = "K=V,…")]
        labels: Option<String>,
        /// How long the token stays usable (default 24h)
        #[arg(long, value_name = "SPAN", default_value = "24h")]
        expires_in: String,
    },
    /// List the enrolled gateways: id, labels, online, services, last contact (operator)
    Gateways {
        /// Only gateways whose labels hold all of these (region=lyon,access=adsl)
        #[arg(long, value_name = "K=V,…")]
        selector: Option<String>,
    },
    /// Show one gateway's inventory (operator)
    Gateway {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Revoke a gateway: its certificate is refused at once (operator)
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Publish a signed package to the controller (a provider its own; the operator any)
    Publish {
        #[arg(value_name = "PKG")]
        package: PathBuf,
    },
    /// Approve a published version for the fleet (operator)
    Approve {
        /// NAME, or PROVIDER/NAME when several providers publish that name
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "VERSION")]
        release: String,
    },
    /// List the published packages (a provider sees its own)
    Catalog,
    /// Deploy a service version to gateways in health-gated waves
    Deploy {
        /// SERVICE[:VERSION] (PROVIDER/SERVICE where several providers publish the name);
        /// the newest approved version when none is given
        #[arg(value_name = "SERVICE[:VERSION]")]
        service: String,
        /// Gateways whose labels hold all of these
        #[arg(long, value_name = "K=V,…", group = "targets", required = true)]
        selector: Option<String>,
        /// Or these gateways, by id
        #[arg(long, value_name = "ID,…", group = "targets", required = true)]
        gateways: Option<String>,
        /// Cumulative waves: counts or shares of the targets
        #[arg(long, value_name = "WAVES", default_value = "1,10%,50%,100%")]
        waves: String,
        /// Failures (a count or a share of the gateways reached) past which it aborts and
        /// rolls back
        #[arg(long, value_name = "N|P%", default_value = "10%")]
        max_failures: String,
        /// How long each wave's gateways must stay healthy before the next wave
        #[arg(long, value_name = "SPAN", default_value = "60s")]
        soak: String,
    },
    /// List the deployments (a provider sees those of its services)
    Deployments,
    /// Show a deployment wave by wave, with each gateway's outcome
    Deployment {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Pause a deployment: no new wave starts
    Pause {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Resume a paused deployment
    Resume {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Cancel a deployment: no new wave ever starts (the gateways reached keep the version)
    Cancel {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Each service across the fleet: gateways running it, healthy, failing, use; for a
    /// provider, also the figures its service keeps, summed over the gateways
    Services,
    /// Show the fleet's events
    Events {
        /// Keep following (Server-Sent Events)
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the controller's Prometheus metrics
    Metrics,
    /// Show the audit log (operator)
    Audit,
    /// The trust policy: which provider keys may publish which services (operator)
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Tokens for the operator and providers (operator)
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Where each provider may deploy its own services (set and clear: operator)
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Open the gateways matching any of the selectors to a provider's deployments (replaces
    /// its policy)
    Set {
        #[arg(long, value_name = "NAME")]
        provider: String,
        /// Labels a gateway must hold (region=lyon,model=x); repeat for "or"
        #[arg(long, value_name = "K=V,…", required_unless_present = "everywhere")]
        selector: Vec<String>,
        /// Every gateway of the fleet
        #[arg(long, conflicts_with = "selector")]
        everywhere: bool,
    },
    /// Show where each provider may deploy (a provider sees its own)
    List,
    /// Close every gateway to a provider's deployments
    Clear {
        #[arg(long, value_name = "NAME")]
        provider: String,
    },
}

/// `k=v,k2=v2` as a map.
fn labels(text: Option<&str>) -> anyhow::Result<BTreeMap<String, String>> {
    text.unwrap_or("")
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
            None => bail!("`{pair}`: give labels as key=value, comma-separated"),
        })
        .collect()
}

fn print<T: Serialize>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn ago(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            format!("{} ago", output::duration((now - t).max(0) as u64))
        }
    }
}

/// `expires in 8 months` or `expired 3 days ago`.
fn until(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    if ms >= now {
        format!("expires in {}", output::duration((ms - now) as u64))
    } else {
        format!("expired {} ago", output::duration((now - ms) as u64))
    }
}

fn label_text(labels: &BTreeMap<String, String>) -> String {
    let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(",")
    }
}

fn gateways_table(out: &mut impl Write, rows: &[GatewayRow]) -> io::Result<()> {
    writeln!(
        out,
        "{:<18} {:<8} {:>8} {:<14} LABELS",
        "ID", "ONLINE", "SERVICES", "LAST CONTACT"
    )?;
    for g in rows {
        let online = if g.revoked {
            "revoked"
        } else if g.online {
            "yes"
        } else {
            "no"
        };
        writeln!(
            out,
            "{:<18} {:<8} {:>8} {:<14} {}",
            g.id,
            online,
            g.services,
            ago(g.last_contact_ms),
            label_text(&g.labels)
        )?;
    }
    Ok(())
}

fn inventory(out: &mut impl Write, g: &GatewayInventory) -> io::Result<()> {
    writeln!(out, "gateway:       {}", g.row.id)?;
    writeln!(out, "labels:        {}", label_text(&g.row.labels))?;
    writeln!(
        out,
        "online:        {}{}",
        if g.row.online { "yes" } else { "no" },
        if g.row.revoked { " (revoked)" } else { "" }
    )?;
    writeln!(out, "last contact:  {}", ago(g.row.last_contact_ms))?;
    writeln!(
        out,
        "agent:         {}",
        g.row.agent_version.as_deref().unwrap_or("-")
    )?;
    if let Some(expires) = g.certificate_expires_ms {
        writeln!(out, "certificate:   {}", until(expires))?;
    }
    let Some(report) = &g.report else {
        return writeln!(out, "no report yet");
    };
    writeln!(out, "available:     {}", report.available)?;
    writeln!(out, "free:          {}", report.free)?;
    writeln!(
        out,
        "\n{:<16} {:<10} {:<10} {:<11} {:<9} RESTARTS",
        "SERVICE", "PROVIDER", "VERSION", "STATE", "HEALTH"
    )?;
    for s in &report.services {
        writeln!(
            out,
            "{:<16} {:<10} {:<10} {:<11} {:<9} {}",
            s.name, s.provider, s.version, s.state, s.health, s.restarts
        )?;
    }
    for o in report.outcomes.iter().filter(|o| o.result != "admitted") {
        writeln!(
            out,
            "{} {} {}: {}",
            o.name,
            o.version,
            o.result,
            o.reason.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

fn catalog_table(out: &mut impl Write, entries: &[CatalogEntry]) -> io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<10} {:<10} {:<9} {:>9} DIGEST",
        "NAME", "PROVIDER", "VERSION", "APPROVED", "SIZE"
    )?;
    for e in entries {
        writeln!(
            out,
            "{:<16} {:<10} {:<10} {:<9} {:>9} {}",
            e.name,
            e.provider,
            e.version,
            if e.approved { "yes" } else { "no" },
            output::size(e.size),
            &e.digest[..e.digest.len().min(19)]
        )?;
    }
    Ok(())
}

fn deployment_text(out: &mut impl Write, d: &Deployment) -> io::Result<()> {
    writeln!(
        out,
        "deployment {}: `{}` {} of {}: {}{}",
        d.id,
        d.service,
        d.version,
        d.provider,
        d.state,
        d.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "waves {} (now wave {}), soak {}s, max failures {}",
        d.waves.join(","),
        d.wave + 1,
        d.soak_s,
        d.max_failures
    )?;
    writeln!(
        out,
        "{:<18} {:<6} {:<12} REASON",
        "GATEWAY", "WAVE", "OUTCOME"
    )?;
    for t in &d.targets {
        writeln!(
            out,
            "{:<18} {:<6} {:<12} {}",
            t.gateway_id,
            t.wave
                .map(|w| (w + 1).to_string())
                .unwrap_or_else(|| "-".into()),
            t.outcome,
            t.reason.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

fn deployments_table(out: &mut impl Write, ds: &[Deployment]) -> io::Result<()> {
    writeln!(
        out,
        "{:<14} {:<16} {:<10} {:<10} {:<6} {:>8} {:>8} {:>7}",
        "ID", "SERVICE", "VERSION", "STATE", "WAVE", "REACHED", "HEALTHY", "FAILED"
    )?;
    for d in ds {
        let reached = d.targets.iter().filter(|t| t.wave.is_some()).count();
        let healthy = d.targets.iter().filter(|t| t.outcome == "healthy").count();
        let failed = d
            .targets
            .iter()
            .filter(|t| matches!(t.outcome.as_str(), "failed" | "refused"))
            .count();
        writeln!(
            out,
            "{:<14} {:<16} {:<10} {:<10} {:<6} {:>8} {:>8} {:>7}",
            d.id,
            d.service,
            d.version,
            d.state,
            format!("{}/{}", d.wave + 1, d.waves.len()),
            format!("{reached}/{}", d.targets.len()),
            healthy,
            failed
        )?;
    }
    Ok(())
}

fn services_table(out: &mut impl Write, services: &[FleetService]) -> io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>12}",
        "SERVICE", "PROVIDER", "GATEWAYS", "RUNNING", "HEALTHY", "FAILING", "CPU", "MEMORY"
    )?;
    for s in services {
        writeln!(
            out,
            "{:<16} {:<10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>12}",
            s.name,
            s.provider,
            s.gateways,
            s.running,
            s.healthy,
            s.failing,
            format!("{}m", s.cpu_millicores),
            output::size(s.memory_bytes)
        )?;
    }
    // A provider's own figures (`[metrics]`), summed; per gateway in `--json`.
    for s in services.iter().filter(|s| !s.figures_total.is_empty()) {
        let total: Vec<String> = s
            .figures_total
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(
            out,
            "{} over {} gateways: {}",
            s.name,
            s.figures.len(),
            total.join(" ")
        )?;
    }
    Ok(())
}

/// The catalog entry `NAME` or `PROVIDER/NAME` at `version`.
async fn find(client: &Client, name: &str, version: &str) -> anyhow::Result<CatalogEntry> {
    let entries: Vec<CatalogEntry> = client.get_json("/v1/catalog").await?;
    let (provider, name) = match name.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, name),
    };
    let found: Vec<CatalogEntry> = entries
        .into_iter()
        .filter(|e| e.name == name && e.version == version)
        .filter(|e| provider.is_none_or(|p| p == e.provider))
        .collect();
    match found.len() {
        0 => bail!("no package `{name}` {version} was published; `shg fleet catalog` lists them"),
        1 => Ok(found.into_iter().next().expect("one")),
        _ => bail!(
            "`{name}` {version} is published by several providers; say which, e.g. `{}/{name}`",
            found[0].provider
        ),
    }
}

/// Runs one `shg fleet` command; returns the exit code.
pub async fn run(client: &Client, command: FleetCommand, json: bool) -> anyhow::Result<i32> {
    let mut out = io::stdout().lock();
    match command {
        FleetCommand::EnrollToken {
            labels: l,
            expires_in,
        } => {
            let req = api::fleet::EnrollTokenRequest {
                labels: labels(l.as_deref())?,
                expires_in_s: Some(crate::commands::parse_span(&expires_in)?.as_secs()),
            };
            let token: api::fleet::EnrollToken =
                client.send_json("POST", "/v1/enroll-tokens", &req).await?;
            if json {
                print(&mut out, &token)?;
            } else {
                writeln!(out, "{}", token.token)?;
            }
        }
        FleetCommand::Gateways { selector } => {
            let uri = match selector {
                Some(s) => format!("/v1/gateways?selector={}", encode(&s)),
                None => "/v1/gateways".into(),
            };
            let rows: Vec<GatewayRow> = client.get_json(&uri).await?;
            if json {
                print(&mut out, &rows)?;
            } else {
                gateways_table(&mut out, &rows)?;
            }
        }
        FleetCommand::Gateway { id } => {
            let g: GatewayInventory = client
                .get_json(&format!("/v1/gateways/{}", encode(&id)))
                .await?;
            if json {
                print(&mut out, &g)?;
            } else {
                inventory(&mut out, &g)?;
            }
        }
        FleetCommand::Revoke { id } => {
            client
                .send_empty("POST", &format!("/v1/gateways/{}/revoke", encode(&id)))
                .await?;
            if !json {
                writeln!(out, "revoked {id}: its certificate is refused from now on")?;
            }
        }
        FleetCommand::Publish { package } => {
            let entry: CatalogEntry = client
                .post_file("/v1/packages", &package)
                .await
                .with_context(|| format!("publishing {}", package.display()))?;
            if json {
                print(&mut out, &entry)?;
            } else {
                writeln!(
                    out,
                    "published `{}` {} of {} ({}); the operator approves it with `shg fleet approve {} {}`",
                    entry.name, entry.version, entry.provider, entry.digest, entry.name, entry.version
                )?;
            }
        }
        FleetCommand::Approve { name, release } => {
            let e = find(client, &name, &release).await?;
            let entry: CatalogEntry = client
                .send_json(
                    "POST",
                    &format!(
                        "/v1/packages/{}/{}/{}/approve",
                        encode(&e.provider),
                        encode(&e.name),
                        encode(&e.version)
                    ),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                print(&mut out, &entry)?;
            } else {
                writeln!(
                    out,
                    "approved `{}` {} for the fleet",
                    entry.name, entry.version
                )?;
            }
        }
        FleetCommand::Catalog => {
            let entries: Vec<CatalogEntry> = client.get_json("/v1/catalog").await?;
            if json {
                print(&mut out, &entries)?;
            } else {
                catalog_table(&mut out, &entries)?;
            }
        }
        FleetCommand::Deploy {
            service,
            selector,
            gateways,
            waves,
            max_failures,
            soak,
        } => {
            let (service, version) = match service.split_once(':') {
                Some((s, v)) => (s.to_string(), Some(v.to_string())),
                None => (service, None),
            };
            let req = DeployRequest {
                service,
                version,
                selector: labels(selector.as_deref())?,
                gateways: gateways
                    .unwrap_or_default()
                    .split(',')
                    .filter(|g| !g.trim().is_empty())
                    .map(|g| g.trim().to_string())
                    .collect(),
                waves: waves.split(',').map(|w| w.trim().to_string()).collect(),
                max_failures: Some(max_failures),
                soak_s: Some(crate::commands::parse_span(&soak)?.as_secs()),
            };
            let d: Deployment = client.send_json("POST", "/v1/deployments", &req).await?;
            if json {
                print(&mut out, &d)?;
            } else {
                deployment_text(&mut out, &d)?;
            }
        }
        FleetCommand::Deployments => {
            let ds: Vec<Deployment> = client.get_json("/v1/deployments").await?;
            if json {
                print(&mut out, &ds)?;
            } else {
                deployments_table(&mut out, &ds)?;
            }
        }
        FleetCommand::Deployment { id } => {
            let d: Deployment = client
                .get_json(&format!("/v1/deployments/{}", encode(&id)))
                .await?;
            if json {
                print(&mut out, &d)?;
            } else {
                deployment_text(&mut out, &d)?;
            }
        }
        FleetCommand::Pause { id } => control(client, &mut out, &id, "pause", json).await?,
        FleetCommand::Resume { id } => control(client, &mut out, &id, "resume", json).await?,
        FleetCommand::Cancel { id } => control(client, &mut out, &id, "cancel", json).await?,
        FleetCommand::Services => {
            let services: Vec<FleetService> = client.get_json("/v1/services").await?;
            if json {
                print(&mut out, &services)?;
            } else {
                services_table(&mut out, &services)?;
            }
        }
        FleetCommand::Events { follow } => {
            if follow {
                let code = client
                    .follow_events(None, |e| {
                        let mut out = io::stdout().lock();
                        if json {
                            let _ =
                                writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
                        } else {
                            let _ = writeln!(
                                out,
                                "{} {:<20} {}",
                                output::time_ms(e.time_ms),
                                e.kind,
                                e.message
                            );
                        }
                        out.flush()
                    })
                    .await;
                code?;
                return Ok(0);
            }
            let events: Vec<api::fleet::FleetEvent> =
                client.get_json("/v1/events?limit=1000").await?;
            if json {
                print(&mut out, &events)?;
            } else {
                for e in &events {
                    writeln!(
                        out,
                        "{} {:<20} {}",
                        output::time_ms(e.time_ms as u64),
                        e.kind,
                        e.message
                    )?;
                }
            }
        }
        FleetCommand::Metrics => {
            let text = client.metrics().await?;
            write!(out, "{text}")?;
        }
        FleetCommand::Audit => {
            let entries = client.audit(None).await?;
            if json {
                print(&mut out, &entries)?;
            } else {
                output::audit(&mut out, &entries)?;
            }
        }
        FleetCommand::Trust { command } => match command {
            TrustCommand::Add {
                provider,
                key,
                services,
            } => {
                let public_key = std::fs::read_to_string(&key)
                    .with_context(|| format!("cannot read {}", key.display()))?;
                let req = api::TrustRequest {
                    provider,
                    public_key,
                    services: services
                        .unwrap_or_default()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                };
                let rule: api::TrustRule = client.send_json("POST", "/v1/trust", &req).await?;
                if json {
                    print(&mut out, &rule)?;
                } else {
                    writeln!(
                        out,
                        "the fleet trusts key {} of provider `{}`; it reaches every gateway with its desired state",
                        rule.key_id, rule.provider
                    )?;
                }
            }
            TrustCommand::List => {
                let rules: Vec<api::TrustRule> = client.get_json("/v1/trust").await?;
                if json {
                    print(&mut out, &rules)?;
                } else {
                    output::trust_rules(&mut out, &rules)?;
                }
            }
            TrustCommand::Remove { key_id } => {
                client
                    .send_empty("DELETE", &format!("/v1/trust/{}", encode(&key_id)))
                    .await?;
            }
        },
        FleetCommand::Policy { command } => match command {
            PolicyCommand::Set {
                provider,
                selector,
                everywhere,
            } => {
                let selectors = if everywhere {
                    vec![BTreeMap::new()]
                } else {
                    selector
                        .iter()
                        .map(|s| labels(Some(s)))
                        .collect::<anyhow::Result<Vec<_>>>()?
                };
                let req = api::fleet::PolicyRequest { selectors };
                let uri = format!("/v1/policy/{}", encode(&provider));
                let policy: api::fleet::DeployPolicy = client.send_json("PUT", &uri, &req).await?;
                if json {
                    print(&mut out, &policy)?;
                } else {
                    writeln!(
                        out,
                        "provider `{}` may deploy to gateways matching {}",
                        policy.provider,
                        output::selectors(&policy.selectors)
                    )?;
                }
            }
            PolicyCommand::List => {
                let policies: Vec<api::fleet::DeployPolicy> = client.get_json("/v1/policy").await?;
                if json {
                    print(&mut out, &policies)?;
                } else {
                    writeln!(out, "{:<20} MAY DEPLOY TO", "PROVIDER")?;
                    for p in &policies {
                        writeln!(
                            out,
                            "{:<20} {}",
                            p.provider,
                            output::selectors(&p.selectors)
                        )?;
                    }
                }
            }
            PolicyCommand::Clear { provider } => {
                client
                    .send_empty("DELETE", &format!("/v1/policy/{}", encode(&provider)))
                    .await?;
                if !json {
                    writeln!(out, "provider `{provider}` may no longer deploy")?;
                }
            }
        },
        FleetCommand::Token { command } => match command {
            TokenCommand::Create {
                provider,
                operator,
                home,
                cert,
            } => {
                if home || cert.is_some() {
                    bail!("the controller makes operator and provider tokens only (`--operator` or `--provider NAME`); households use their own gateway");
                }
                let realm = if operator { "operator" } else { "provider" };
                let t = client
                    .create_token(&api::TokenRequest {
                        realm: realm.into(),
                        provider,
                        client_cert: None,
                    })
                    .await?;
                if json {
                    print(&mut out, &t)?;
                } else {
                    writeln!(out, "{}", t.token.unwrap_or_default())?;
                }
            }
            TokenCommand::List => {
                let tokens = client.tokens().await?;
                if json {
                    print(&mut out, &tokens)?;
                } else {
                    output::tokens(&mut out, &tokens)?;
                }
            }
            TokenCommand::Revoke { id } => client.revoke_token(id).await?,
        },
    }
    Ok(0)
}

async fn control(
    client: &Client,
    out: &mut impl Write,
    id: &str,
    action: &str,
    json: bool,
) -> anyhow::Result<()> {
    let d: Deployment = client
        .send_json(
            "POST",
            &format!("/v1/deployments/{}/{action}", encode(id)),
            &serde_json::json!({}),
        )
        .await?;
    if json {
        print(out, &d)?;
    } else {
        deployment_text(out, &d)?;
    }
    Ok(())
}

/// A path segment or query value, percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
