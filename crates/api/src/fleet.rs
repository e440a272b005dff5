//! The fleet controller's API as its clients see it: the CLI (`shg fleet …`), the gateways
//! that enrolled with it, and the tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of `POST /v1/enroll-tokens` (operator).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollTokenRequest {
    /// Labels the gateway enrolled with this token carries (`region`, `model`, `access`…).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Seconds the token stays usable (default one day).
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

/// Answer of `POST /v1/enroll-tokens`: the token appears here once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollToken {
    /// `shgjoin.SECRET.CA_SHA256`: all a gateway is given, with the controller's address.
    pub token: String,
    pub labels: BTreeMap<String, String>,
    pub expires_ms: i64,
}

/// Body of `POST /v1/enroll` (a gateway, with its token).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PEM certificate request for the key pair the gateway made.
    pub csr: String,
    pub agent_version: String,
}

/// Answer of `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    pub gateway_id: String,
    /// The gateway's client certificate (PEM), signed by the controller's CA.
    pub certificate: String,
    /// The CA (PEM): what the gateway trusts the controller by from now on.
    pub ca: String,
    pub labels: BTreeMap<String, String>,
    /// The fleet catalog's TUF root (`1.root.json`), which the gateway pins: from then on it
    /// installs only what that catalog lists (and its provider signed).
    #[serde(default)]
    pub catalog_root: String,
}

/// `POST /v1/sync/certificate`: a gateway's request for a new certificate (of a new key),
/// authenticated with its current one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// PEM certificate request of the gateway's new key.
    pub csr: String,
}

/// The renewed certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renewed {
    /// PEM, signed by the controller's CA.
    pub certificate: String,
    /// When it expires (ms since the epoch); the gateway renews it after two thirds.
    pub expires_ms: i64,
}

/// Whether `name` is a TUF metadata file of a catalog repository (`N.root.json`,
/// `timestamp.json`, `N.snapshot.json`, `N.targets.json`), and so a safe file name.
pub fn catalog_metadata_name(name: &str) -> bool {
    if name == "timestamp.json" {
        return true;
    }
    let Some((n, role)) = name.split_once('.') else {
        return false;
    };
    !n.is_empty()
        && n.len() <= 20
        && n.bytes().all(|b| b.is_ascii_digit())
        && ["root.json", "snapshot.json", "targets.json"].contains(&role)
}

/// `GET /v1/catalog/metadata`: the fleet catalog's current publication, each TUF metadata
/// file (`N.root.json`, `timestamp.json`, `N.snapshot.json`, `N.targets.json`) by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogMetadata {
    pub version: u64,
    pub files: BTreeMap<String, String>,
}

/// One gateway, as `shg fleet gateways` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayRow {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// In contact within the last 90 seconds, and not revoked.
    pub online: bool,
    pub services: usize,
    pub last_contact_ms: Option<i64>,
    pub agent_version: Option<String>,
    pub revoked: bool,
}

/// One gateway's inventory, as `shg fleet gateway ID` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayInventory {
    #[serde(flatten)]
    pub row: GatewayRow,
    pub enrolled_ms: i64,
    pub revoked_ms: Option<i64>,
    /// When the gateway's current certificate expires (it renews it two thirds in).
    #[serde(default)]
    pub certificate_expires_ms: Option<i64>,
    /// What the gateway last reported; None before its first report.
    pub report: Option<Report>,
}

/// What a gateway reports about itself (`POST /v1/sync/report`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub agent_version: String,
    /// Per resource: capacity minus the system reserve, and what is free of it.
    pub available: serde_json::Value,
    pub free: serde_json::Value,
    pub services: Vec<ReportedService>,
    /// What became of each desired service the gateway tried to bring about.
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    /// The services the household subscribed to on this gateway.
    #[serde(default)]
    pub subscriptions: Vec<ServiceRef>,
}

/// A provider's service, by identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceRef {
    pub provider: String,
    pub name: String,
}

/// One service on a gateway, as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedService {
    pub provider: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub health: String,
    pub restarts: u32,
    /// CPU in millicores and memory in bytes in use, where sampled.
    #[serde(default)]
    pub cpu_millicores: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Reservations.
    #[serde(default)]
    pub cpu_reserved_millicores: Option<u64>,
    #[serde(default)]
    pub memory_reserved_bytes: Option<u64>,
    /// The figures the service keeps for its provider (its `[metrics]` answer, when that is a
    /// JSON object of at most [`FIGURES_MAX_BYTES`]), for the provider's fleet view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<serde_json::Value>,
}

/// The most of a service's own figures a gateway reports.
pub const FIGURES_MAX_BYTES: usize = 16 * 1024;

/// The result of the gateway's attempt at one desired service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub provider: String,
    pub name: String,
    pub version: String,
    /// `admitted` (installed or updated and started), `refused` (admission, trust), `failed`
    /// (anything else), `removed`.
    pub result: String,
    pub reason: Option<String>,
}

/// A gateway's desired state (`GET /v1/sync/desired`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// Changes whenever anything below changes.
    pub etag: String,
    /// The operator's trust policy, the same on every gateway.
    pub trust: Vec<crate::TrustRule>,
    /// What should run, by provider and name.
    pub services: Vec<DesiredService>,
    /// The fleet catalog's publication that lists them (`GET /v1/catalog/metadata`).
    #[serde(default)]
    pub catalog_version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredService {
    pub provider: String,
    pub name: String,
    pub version: String,
    /// The package's digest, as the controller verified it.
    pub digest: String,
    /// `deployment:ID` or `subscription`.
    pub cause: String,
}

/// A published package, as `shg fleet catalog` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogEntry {
    pub provider: String,
    pub name: String,
    pub version: String,
    pub digest: String,
    pub size: u64,
    pub signer: String,
    pub description: String,
    pub published_ms: i64,
    pub approved: bool,
}

/// Body of `POST /v1/deployments`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// `NAME`, or `PROVIDER/NAME` where the name alone is ambiguous.
    pub service: String,
    /// The version; the newest approved one when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// Gateways whose labels hold all of these.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Or these gateways, by id.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Cumulative waves: a count (`1`) or a share (`10%`); the last should be `100%`.
    #[serde(default)]
    pub waves: Vec<String>,
    /// Failures (count or share of the gateways reached) past which the deployment aborts.
    #[serde(default)]
    pub max_failures: Option<String>,
    /// Seconds the gateways of a wave must stay healthy before the next wave starts.
    #[serde(default)]
    pub soak_s: Option<u64>,
}

/// Where a provider may deploy its services (`GET /v1/policy`): the gateways matching any
/// of `selectors` (an empty selector matches every gateway; no selector, none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployPolicy {
    pub provider: String,
    pub selectors: Vec<BTreeMap<String, String>>,
    /// When the operator last set it (Unix milliseconds).
    pub set_ms: i64,
}

/// Body of `PUT /v1/policy/{provider}` (operator only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Label selectors; a gateway matching any of them is open to the provider's
    /// deployments. `[{}]` opens every gateway; `[]` none.
    pub selectors: Vec<BTreeMap<String, String>>,
}

/// One gateway of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentTarget {
    pub gateway_id: String,
    /// The wave that reached it; None while not reached yet.
    pub wave: Option<i64>,
    /// `pending`, `admitted`, `healthy`, `refused`, `failed`, `rolled-back`.
    pub outcome: String,
    pub reason: Option<String>,
    pub previous_version: Option<String>,
    /// When the outcome last changed (Unix milliseconds).
    pub since_ms: i64,
}

/// A deployment and each gateway's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub provider: String,
    pub service: String,
    pub version: String,
    /// `running`, `paused`, `done`, `aborted`, `cancelled`.
    pub state: String,
    /// Index of the current wave (0 is the first).
    pub wave: i64,
    pub waves: Vec<String>,
    pub max_failures: String,
    pub soak_s: u64,
    pub created_ms: i64,
    pub reason: Option<String>,
    pub targets: Vec<DeploymentTarget>,
}

/// One service across the fleet (`shg fleet services`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetService {
    pub provider: String,
    pub name: String,
    /// Gateways with it installed, running, healthy (running and healthy or without check),
    /// failing (crash-loop, failed, unhealthy, exited with an error).
    pub gateways: usize,
    pub running: usize,
    pub healthy: usize,
    pub failing: usize,
    pub versions: BTreeMap<String, usize>,
    pub cpu_millicores: u64,
    pub cpu_reserved_millicores: u64,
    pub memory_bytes: u64,
    pub memory_reserved_bytes: u64,
    /// For the service's provider only: the figures its service keeps (`[metrics]`), per
    /// gateway id as last reported…
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, serde_json::Value>,
    /// …and each top-level number of them summed over those gateways.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures_total: BTreeMap<String, f64>,
}

/// Body of `POST /v1/sync/subscriptions` (a gateway, for its household).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRequest {
    pub provider: String,
    pub name: String,
    pub subscribe: bool,
}

/// A fleet event (`GET /v1/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetEvent {
    pub id: i64,
    pub time_ms: i64,
    pub kind: String,
    pub gateway: Option<String>,
    pub provider: Option<String>,
    pub service: Option<String>,
    pub message: String,
}

/// The prefix of an enrollment token.
const TOKEN_PREFIX: &str = "shgjoin";

/// An enrollment token: a one-time secret and the controller CA's SHA-256, as one string
/// (`shgjoin.SECRET.CA_SHA256`), so that `--controller URL --enroll-token TOKEN` is all a
/// gateway needs to find and trust its controller.
pub fn enroll_token(secret: &str, ca_fingerprint: &str) -> String {
    format!("{TOKEN_PREFIX}.{secret}.{ca_fingerprint}")
}

/// The secret and the CA fingerprint of an enrollment token.
pub fn parse_enroll_token(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.trim().split('.');
    let (prefix, secret, fingerprint) = (parts.next()?, parts.next()?, parts.next()?);
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (prefix == TOKEN_PREFIX && parts.next().is_none() && hex64(secret) && hex64(fingerprint))
        .then_some((secret, fingerprint))
}

/// A gateway's subscriptions (`GET /v1/subscriptions` on the gateway).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subscriptions {
    /// The controller the gateway syncs with; None when it is not in a fleet.
    pub controller: Option<String>,
    pub gateway_id: Option<String>,
    pub subscriptions: Vec<ServiceRef>,
}

/// Body of `POST /v1/subscriptions` on the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    pub name: String,
    /// Needed only where several providers publish `name`.
    #[serde(default)]
    pub provider: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::catalog_metadata_name as metadata_name;

    #[test]
    fn only_metadata_files_are_metadata() {
        for good in [
            "timestamp.json",
            "1.root.json",
            "12.snapshot.json",
            "3.targets.json",
        ] {
            assert!(metadata_name(good), "{good}");
        }
        for bad in [
            "../1.root.json",
            "root.json",
            ".root.json",
            "1.keys.json",
            "1/2.root.json",
            "x.targets.json",
        ] {
            assert!(!metadata_name(bad), "{bad}");
        }
    }
}
