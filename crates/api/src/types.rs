//! The JSON bodies of the gateway API, shared by the agent (server) and the CLI (client).

use serde::{Deserialize, Serialize};

/// One service as `GET /v1/services` lists it and `shg ps --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// The service's own name; two providers may each have one of the same name.
    pub name: String,
    /// `PROVIDER/NAME`: the service's identity on the gateway, unique whoever asks. A command
    /// or URL may use the bare name where the caller sees only one service of that name.
    #[serde(default)]
    pub id: String,
    pub provider: String,
    pub version: String,
    /// `installing`, `created`, `starting`, `running`, `stopping`, `stopped`, `exited`,
    /// `backoff` (waiting to restart), `crash-loop` (restarting too often), `failed`, `removing`.
    pub state: String,
    /// `none` (no check), `starting`, `healthy`, `unhealthy`.
    pub health: String,
    /// Host PID of the container's init while it runs.
    pub pid: Option<i32>,
    /// What should run: `running` or `stopped`.
    pub desired: String,
    pub restarts: u32,
    /// The household's ranking, 0..=100 (default 50); higher is more important.
    pub priority: i32,
    pub exit_code: Option<i32>,
    /// Unix milliseconds.
    pub started_at_ms: Option<u64>,
    /// A sentence on why the service is in its state, when it is not simply running.
    pub reason: Option<String>,
    /// Id of the trusted provider key whose signature admitted the package; `None` for a
    /// package the operator installed unsigned (`--allow-unsigned`).
    #[serde(default)]
    pub signed_by: Option<String>,
    /// True when the service runs a package no trusted key signed.
    #[serde(default)]
    pub unsigned: bool,
    /// The LAN hosts the household lets it reach (`HOST` or `HOST:PORT`); empty: none, the
    /// firewall keeps every service off the LAN.
    #[serde(default)]
    pub lan: Vec<String>,
}

/// `GET /v1/services/{name}`: the summary plus what it was installed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDetail {
    #[serde(flatten)]
    pub summary: ServiceSummary,
    pub description: String,
    /// Digest of the OCI image manifest the service was installed from.
    pub image_digest: String,
    pub installed_at_ms: u64,
    /// The validated service manifest.
    pub manifest: serde_json::Value,
    /// Its IPv4 address on the gateway's service network (`None` when networking is off).
    #[serde(default)]
    pub address: Option<String>,
    /// The version `shg rollback` would go back to, when an update kept one.
    #[serde(default)]
    pub previous_version: Option<String>,
    /// The registry reference the running version was pulled from, if it came from one.
    #[serde(default)]
    pub source: Option<String>,
    /// Host paths, for operators.
    pub paths: ServicePaths,
    /// The most recent events of this service, oldest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePaths {
    pub rootfs: String,
    pub data: String,
    pub bundle: String,
    pub logs: String,
}

/// Something that happened to a service or the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub time_ms: u64,
    /// The service concerned, if any.
    pub service: Option<String>,
    /// Machine-readable kind: `installed`, `started`, `exited`, `restarting`, `crash-loop`,
    /// `stopped`, `removed`, `health`, `adopted`, `install-failed`, `start-failed`, …
    pub kind: String,
    /// A sentence a person understands.
    pub message: String,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code: `not-found`, `conflict`, `bad-package`, `bad-manifest`,
    /// `bad-request`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// Machine-readable detail: for `admission-refused`, the refusal (shortages per resource
    /// with the services holding them, and the proposal of services to stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// `GET /v1/gateway/capacity`: per resource (`cpu` in millicores, `memory` and `storage` in
/// bytes, `bandwidth_down`/`bandwidth_up` in bits per second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityView {
    pub capacity: serde_json::Value,
    pub system_reserve: serde_json::Value,
    /// Capacity minus the system reserve: what services may reserve in total.
    pub available: serde_json::Value,
    /// Held by the services that should run.
    pub reserved: serde_json::Value,
    pub free: serde_json::Value,
    /// Per provider (with a cap or an installed service): its cap and what it holds.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, Tenant>,
}

/// A provider as the gateway's capacity sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// Most its services may reserve together; None where uncapped.
    pub cap: AmountsCap,
    /// What its services hold now (the `Amounts` of `GET /v1/gateway/capacity`).
    pub reserved: serde_json::Value,
}

/// A provider's cap per resource, in the units of [`CapacityView`]; None is no cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AmountsCap {
    pub cpu: Option<u64>,
    pub memory: Option<u64>,
    pub storage: Option<u64>,
    pub bandwidth_down: Option<u64>,
    pub bandwidth_up: Option<u64>,
}

/// Answer of a `dry_run` request that would succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub service: String,
    pub admitted: bool,
    pub message: String,
}

/// Body of `POST /v1/services/{name}/exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
}

/// Body of `POST /v1/services/{name}/priority`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityRequest {
    /// 0..=100; higher is more important.
    pub priority: i32,
}

/// Body of `POST /v1/services/{name}/lan`: the whole list of LAN hosts the household lets the
/// service reach, each `HOST` (every port) or `HOST:PORT`; empty to close the LAN to it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanRequest {
    pub hosts: Vec<String>,
}

/// A line of `GET /v1/services/{name}/logs` (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub time_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub text: String,
}

/// `GET /v1/gateway`: the agent itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub version: String,
    pub state_dir: String,
    pub services: usize,
    pub pid: u32,
}

/// `GET /v1/stats`: what every service uses against what it reserved and may use, and the
/// gateway's totals. CPU in millicores (1000 = one core), sizes in bytes, rates in bit/s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    /// When the numbers were sampled (Unix milliseconds); the agent samples once a second.
    pub sampled_at_ms: u64,
    /// `v1` or `v2`: the cgroup interface the numbers came from.
    pub cgroups: String,
    /// The gateway's totals; absent for a provider, which sees only its own services.
    pub gateway: Option<GatewayUse>,
    pub services: Vec<ServiceUse>,
}

/// Per resource: what the hardware has, what is kept back, what services reserved, what is
/// used now and what is still free to reserve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayUse {
    pub cpu: ResourceTotals,
    pub memory: ResourceTotals,
    pub storage: ResourceTotals,
    pub bandwidth_down: ResourceTotals,
    pub bandwidth_up: ResourceTotals,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceTotals {
    pub capacity: u64,
    pub system_reserve: u64,
    /// Held by services (see `GET /v1/gateway/capacity`).
    pub reserved: u64,
    /// Used on the whole host now; None where it is not measured (bandwidth, for now).
    pub used: Option<u64>,
    /// Capacity minus the system reserve minus what services reserved.
    pub free: u64,
}

/// One service's use. A field is None where the service does not run or the host's cgroups
/// do not expose the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceUse {
    pub name: String,
    pub provider: String,
    pub state: String,
    pub priority: i32,
    pub cpu: CpuUse,
    pub memory: MemoryUse,
    pub pids: PidsUse,
    pub io: IoUse,
    pub storage: StorageUse,
    /// Traffic towards the service, in bits/s.
    #[serde(default)]
    pub bandwidth_down: BandwidthUse,
    /// Traffic from the service, in bits/s.
    #[serde(default)]
    pub bandwidth_up: BandwidthUse,
}

/// One direction of a service's traffic, as its HTB class counts it (frames on the wire).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BandwidthUse {
    /// Average rate since the previous reading of the counters (a few seconds apart when
    /// something polls; `None` on the first reading or without networking).
    pub used: Option<u64>,
    pub reserve: u64,
    pub limit: Option<u64>,
    /// Bytes the class has sent since the service started (for a counter-based rate).
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// Average over the last sampling interval.
    pub used: Option<u64>,
    pub reserve: u64,
    pub limit: Option<u64>,
    /// Scheduler periods in which the service hit its limit, and all periods with a limit,
    /// since it started.
    pub throttled_periods: Option<u64>,
    pub periods: Option<u64>,
    pub throttled_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryUse {
    /// Working set: what the service uses less the file cache the kernel can drop.
    pub used: Option<u64>,
    pub cache: Option<u64>,
    pub reserve: u64,
    pub limit: Option<u64>,
    /// Processes of this service the kernel killed for lack of memory (from the journal).
    pub oom_kills: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidsUse {
    pub current: Option<u64>,
    pub limit: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoUse {
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageUse {
    /// Bytes used on the data volume (measured whether or not the service runs).
    pub used: Option<u64>,
    pub reserve: u64,
    /// The volume's size: writes beyond it fail with ENOSPC.
    pub limit: u64,
    /// The service's log (two segments at most).
    pub logs: u64,
}

/// Body of `POST /v1/pull`: the gateway pulls an image from a registry and installs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// `REGISTRY/REPOSITORY[:TAG|@sha256:HEX]`.
    pub reference: String,
    /// Start it once installed (default true).
    #[serde(default = "yes")]
    pub start: bool,
    /// Operator only, for local development: install without a trusted signature.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The text of the service manifest, for an image without the `org.shg.manifest` label
    /// (a standard image): what `--manifest FILE` gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

fn yes() -> bool {
    true
}

/// Body of `POST /v1/trust` (operator only): trust a provider's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRequest {
    /// The provider the key publishes for; it must be the name in the `.pub` file.
    pub provider: String,
    /// The text of the provider's `.pub` file (`shg-ed25519 PROVIDER BASE64`).
    pub public_key: String,
    /// Patterns of the service names the key may publish (`camera`, `cam-*`); empty: any.
    #[serde(default)]
    pub services: Vec<String>,
}

/// One rule of the trust policy, as `GET /v1/trust` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustRule {
    pub key_id: String,
    pub provider: String,
    /// Patterns of the service names the key may publish; empty: any.
    pub services: Vec<String>,
    pub public_key: String,
    pub added_ms: u64,
}

/// Body of `POST /v1/tokens` (operator only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `operator`, `provider` or `home`.
    pub realm: String,
    /// The provider's name, for a `provider` token.
    #[serde(default)]
    pub provider: Option<String>,
    /// A PEM client certificate to accept instead of a token: TLS clients presenting it (and
    /// proving they hold its key) act for this realm.
    #[serde(default)]
    pub client_cert: Option<String>,
}

/// Answer of `POST /v1/tokens`: the token itself appears here once and is never shown again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: i64,
    pub realm: String,
    pub provider: Option<String>,
    /// The bearer token; absent when a client certificate was registered instead.
    pub token: Option<String>,
    /// SHA-256 of the registered client certificate (DER), in hex.
    pub client_cert_sha256: Option<String>,
}

/// A token as `GET /v1/tokens` lists it: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    pub realm: String,
    pub provider: Option<String>,
    /// `token` or `client-cert`.
    pub kind: String,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
}

/// One mutating API call, as `GET /v1/audit` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub time_ms: u64,
    /// `operator`, `provider:NAME` or `home`.
    pub principal: String,
    /// Method and path, e.g. `POST /v1/services/camera/stop`.
    pub action: String,
    /// The HTTP status it ended with.
    pub status: u16,
}

/// One package on the gateway's own shelf (`GET /console/catalog`) that the caller may
/// install.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShelfEntry {
    /// The file name, for `GET /console/catalog/{file}`.
    pub file: String,
    pub name: String,
    pub provider: String,
    pub version: String,
    pub description: String,
    /// Bytes of the package file.
    pub size: u64,
}
