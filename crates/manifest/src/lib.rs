//! Parses and validates `shg-service.toml`, the manifest that says what a service runs, what it
//! may use, which ports it serves and to whom.
//!
//! Parsing walks the TOML table by hand rather than through serde derives, so every error can name
//! the exact field (`ports[1].port`, `resources.memory.limit`) and unknown fields are refused at
//! every level with the list of allowed ones. The first error found is returned.

mod defaults;
pub mod units;

pub use defaults::{complete, ImageDefaults};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use toml::{Table, Value};

use units::{format_bits, format_bytes, format_duration, serialize_duration};

/// The manifest's file name inside a service bundle.
pub const FILE_NAME: &str = "shg-service.toml";

/// A manifest that was read and checked; every value in it obeys the rules in this crate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub provider: String,
    /// May be empty.
    pub description: String,
    pub run: Run,
    pub resources: Resources,
    pub ports: Vec<Port>,
    pub exports: Vec<Export>,
    pub imports: Vec<Import>,
    pub health: Option<Health>,
    /// `[metrics] http`: a URL inside the service (host 127.0.0.1 or localhost) whose answer
    /// its provider reads through the gateway (`GET /v1/services/NAME/metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// `[network] egress`: whether the service may open connections to the WAN.
    pub egress: Egress,
    pub restart: Restart,
}

/// `[network] egress`: where a service may open connections of its own. Answers to what
/// reaches it (its published ports) always go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// The WAN (the Internet), as every service by default.
    #[default]
    Wan,
    /// Nowhere but what imports and the household's LAN grants open.
    None,
}

/// How to start the service's process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Program and arguments; `command[0]` is an absolute path.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<User>,
    /// Absolute path inside the service's filesystem.
    pub workdir: Option<String>,
    /// Time between SIGTERM and SIGKILL; default 10s. Serialized as a string such as "10s".
    #[serde(serialize_with = "serialize_duration")]
    pub stop_timeout: Duration,
}

/// Numeric user and group the process runs as. Written "1000" (gid = uid) or "1000:100".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// What the service reserves (guaranteed) and its limits (caps). A missing table means no
/// reservation and no limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: Memory,
    pub storage: Storage,
    pub bandwidth_down: Bandwidth,
    pub bandwidth_up: Bandwidth,
    pub pids: Pids,
}

/// CPU in cores (0.25 = a quarter of one core).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Cpu {
    pub reserve: f64,
    pub limit: Option<f64>,
}

/// Memory in bytes (serialized as an integer number of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Memory {
    pub reserve: u64,
    pub limit: Option<u64>,
}

/// Size of the data volume in bytes (serialized as an integer number of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Storage {
    pub reserve: u64,
    pub limit: Option<u64>,
}

/// Bandwidth in bits per second (serialized as an integer number of bits per second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Bandwidth {
    pub reserve: u64,
    pub limit: Option<u64>,
}

/// Most processes and threads the service may hold at once; default 256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pids {
    pub limit: u32,
}

impl Default for Pids {
    fn default() -> Self {
        Pids { limit: 256 }
    }
}

/// A port the service listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Port {
    pub port: u16,
    pub protocol: Protocol,
    pub publish: Publish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// Who outside the gateway can reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Publish {
    /// Devices on the home network.
    Lan,
    /// The internet side.
    Wan,
    /// Nobody outside the gateway (other services only, through exports).
    #[default]
    None,
}

/// A port offered to services of other providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Export {
    /// Always one of the manifest's `ports`.
    pub port: u16,
    /// Either exactly `["*"]` (every provider) or provider names.
    pub to: Vec<String>,
}

/// Another service this one wants to reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Import {
    pub service: String,
    pub provider: String,
}

/// How the gateway decides the service is healthy. Serialized with the check flattened in, as
/// written: `{"http": "...", "interval": "5s", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    #[serde(flatten)]
    pub check: HealthCheck,
    /// Default 10s, at least 1s.
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// Default 3s, or the interval if that is shorter; never above the interval.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Failures in a row before the service counts as unhealthy; default 3.
    pub retries: u32,
    /// Grace time after start during which failures do not count; default 0s.
    #[serde(serialize_with = "serialize_duration")]
    pub start_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// Run this command inside the service; exit status 0 means healthy.
    Exec(Vec<String>),
    /// Connect to this port on the service's own 127.0.0.1.
    Tcp(u16),
    /// GET this URL (host 127.0.0.1 or localhost, inside the service); 2xx/3xx means healthy.
    Http(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Restart {
    pub policy: RestartPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    #[default]
    OnFailure,
    Never,
}

/// Why a manifest was refused. `origin` is the file name or path given by the caller.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {origin}: {error}")]
    Read {
        origin: String,
        error: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{origin}: line {line}, column {column}: invalid TOML: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A field is unknown, has the wrong type or breaks a rule.
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

impl ManifestError {
    /// The path of the offending field, such as `ports[1].port`, when the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { field, .. } => Some(field),
            ManifestError::Read { .. } | ManifestError::Syntax { .. } => None,
        }
    }
}

/// Reads and checks the manifest at `path`; messages name the path.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
        origin: origin.clone(),
        error,
    })?;
    parse(&text, &origin)
}

/// Parses and checks manifest text; `origin` (usually [`FILE_NAME`]) starts every message.
pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
    let table = table_of(text, origin)?;
    manifest(&table).map_err(|Bad { field, reason }| ManifestError::Invalid {
        origin: origin.to_string(),
        field,
        reason,
    })
}

/// The TOML table of `text`; a syntax error names the line and column.
fn table_of(text: &str, origin: &str) -> Result<Table, ManifestError> {
    text.parse().map_err(|e: toml::de::Error| {
        let mut offset = e.span().map_or(0, |span| span.start).min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        let message = e.message().trim_end_matches('\n').to_string();
        ManifestError::Syntax {
            origin: origin.to_string(),
            line,
            column,
            message,
        }
    })
}

/// An error before the origin is known: the field path and what is wrong with it.
struct Bad {
    field: String,
    reason: String,
}

type R<T> = Result<T, Bad>;

/// `bail!(field, "reason {x}")` returns a `Bad` from the enclosing function.
macro_rules! bail {
    ($field:expr, $($reason:tt)+) => {
        return Err(bad($field, format!($($reason)+)))
    };
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> Bad {
    Bad {
        field: field.into(),
        reason: reason.into(),
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "version",
    "provider",
    "description",
    "run",
    "resources",
    "ports",
    "exports",
    "imports",
    "health",
    "metrics",
    "network",
    "restart",
];
const NAME_RULE: &str =
    "use 1 to 63 lowercase letters, digits and '-', starting with a letter and not ending with '-'";

fn manifest(t: &Table) -> R<Manifest> {
    check_keys(t, "", "the top level", TOP_KEYS)?;
    let name = required(
        get_str(t, "", "name")?,
        "name",
        "add `name = \"my-service\"`",
    )?;
    check_name(name, "name")?;
    let version = required(
        get_str(t, "", "version")?,
        "version",
        "add `version = \"1.0.0\"`",
    )?;
    check_version(version)?;
    let provider = required(
        get_str(t, "", "provider")?,
        "provider",
        "add `provider = \"my-company\"`",
    )?;
    check_name(provider, "provider")?;
    let description = get_str(t, "", "description")?.unwrap_or("");
    if description.chars().count() > 512 {
        bail!(
            "description",
            "{} characters is too long; keep it to 512",
            description.chars().count()
        );
    }
    let run_table = required(
        get_table(t, "", "run")?,
        "run",
        "add a [run] table with `command = [\"/path/to/program\"]`",
    )?;
    let run = run(run_table)?;
    let resources = resources(get_table(t, "", "resources")?)?;
    let ports = ports(t)?;
    let exports = exports(t, &ports)?;
    let imports = imports(t, name, provider)?;
    let health = get_table(t, "", "health")?.map(health).transpose()?;
    let metrics = match get_table(t, "", "metrics")? {
        None => None,
        Some(m) => {
            check_keys(m, "metrics", "[metrics]", &["http"])?;
            let Some(url) = get_str(m, "metrics", "http")? else {
                bail!(
                    "metrics",
                    "[metrics] names no URL; write http = \"http://127.0.0.1:8080/metrics\" or drop the table"
                );
            };
            check_loopback_url(
                url,
                "http://127.0.0.1:8080/metrics",
                "the gateway asks it inside the service",
            )
            .map_err(|reason| bad("metrics.http", reason))?;
            Some(url.to_string())
        }
    };
    let egress = match get_table(t, "", "network")? {
        None => Egress::default(),
        Some(n) => {
            check_keys(n, "network", "[network]", &["egress"])?;
            let choices = [("wan", Egress::Wan), ("none", Egress::None)];
            get_choice(n, "network", "egress", &choices)?.unwrap_or_default()
        }
    };
    let restart = match get_table(t, "", "restart")? {
        None => Restart::default(),
        Some(r) => {
            check_keys(r, "restart", "[restart]", &["policy"])?;
            let choices = [
                ("always", RestartPolicy::Always),
                ("on-failure", RestartPolicy::OnFailure),
                ("never", RestartPolicy::Never),
            ];
            Restart {
                policy: get_choice(r, "restart", "policy", &choices)?.unwrap_or_default(),
            }
        }
    };
    Ok(Manifest {
        name: name.to_string(),
        version: version.to_string(),
        provider: provider.to_string(),
        description: description.to_string(),
        run,
        resources,
        ports,
        exports,
        imports,
        health,
        metrics,
        egress,
        restart,
    })
}

fn run(t: &Table) -> R<Run> {
    check_keys(
        t,
        "run",
        "[run]",
        &["command", "env", "user", "workdir", "stop_timeout"],
    )?;
    let command = required(
        get_str_array(t, "run", "command")?,
        "run.command",
        "add `command = [\"/path/to/program\"]`",
    )?;
    check_command(&command, "run.command")?;
    let mut env = BTreeMap::new();
    if let Some(env_table) = get_table(t, "run", "env")? {
        for (key, value) in env_table {
            let field = join("run.env", key);
            if !valid_env_name(key) {
                bail!(
                    field,
                    "{key:?} is not a valid variable name; \
                     use letters, digits and '_', not starting with a digit"
                );
            }
            let Value::String(value) = value else {
                bail!(
                    field,
                    "expected a string, found {}; quote the value: {key} = \"...\"",
                    describe(value)
                );
            };
            if value.contains('\0') {
                bail!(
                    field,
                    "contains a NUL character, which no environment variable can hold"
                );
            }
            env.insert(key.clone(), value.clone());
        }
    }
    let user = match t.get("user") {
        None => None,
        Some(Value::String(s)) => Some(parse_user(s).map_err(|reason| bad("run.user", reason))?),
        Some(Value::Integer(n)) => {
            let uid = check_id(u64::try_from(*n).ok(), &n.to_string(), "uid")
                .map_err(|reason| bad("run.user", reason))?;
            Some(User { uid, gid: uid })
        }
        Some(other) => {
            bail!(
                "run.user",
                "expected \"uid\" or \"uid:gid\" like \"1000:1000\", found {}",
                describe(other)
            )
        }
    };
    let workdir = get_str(t, "run", "workdir")?;
    if let Some(dir) = workdir {
        check_path(dir, "run.workdir", "the working directory")?;
    }
    Ok(Run {
        command,
        env,
        user,
        workdir: workdir.map(str::to_string),
        stop_timeout: get_duration(t, "run", "stop_timeout")?.unwrap_or(Duration::from_secs(10)),
    })
}

/// Letters, digits and '_', not starting with a digit.
fn valid_env_name(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_user(text: &str) -> Result<User, String> {
    let (uid, gid) = text.split_once(':').unwrap_or((text, text));
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(uid) || !numeric(gid) {
        return Err(format!(
            "{text:?} is not numeric; user and group names are not looked up, \
             use numeric ids like \"1000\" or \"1000:1000\""
        ));
    }
    Ok(User {
        uid: check_id(uid.parse().ok(), uid, "uid")?,
        gid: check_id(gid.parse().ok(), gid, "gid")?,
    })
}

/// Ids must fit in 32 bits, and 4294967295 is refused: to setuid/setgid it means "leave unchanged",
/// which would keep the process running as whoever started it.
fn check_id(id: Option<u64>, text: &str, what: &str) -> Result<u32, String> {
    match id.and_then(|id| u32::try_from(id).ok()) {
        Some(id) if id != u32::MAX => Ok(id),
        _ => Err(format!(
            "{what} {text} is out of range; use 0 to 4294967294"
        )),
    }
}

fn resources(t: Option<&Table>) -> R<Resources> {
    let Some(t) = t else {
        return Ok(Resources::default());
    };
    check_keys(
        t,
        "resources",
        "[resources]",
        &[
            "cpu",
            "memory",
            "storage",
            "bandwidth_down",
            "bandwidth_up",
            "pids",
        ],
    )?;
    let memory = reserve_limit(t, "memory", get_size, format_bytes)?;
    if let Some(limit) = memory.1 {
        if limit < 4 * 1024 * 1024 {
            let limit = format_bytes(limit);
            bail!(
                "resources.memory.limit",
                "limit {limit} is below the 4 MiB a process needs to start; \
                 raise it to at least \"4MiB\""
            );
        }
    }
    let storage = reserve_limit(t, "storage", get_size, format_bytes)?;
    let down = reserve_limit(t, "bandwidth_down", get_bandwidth, format_bits)?;
    let up = reserve_limit(t, "bandwidth_up", get_bandwidth, format_bits)?;
    let pids = match get_table(t, "resources", "pids")? {
        None => Pids::default(),
        Some(p) => {
            check_keys(p, "resources.pids", "resources.pids", &["limit"])?;
            match get_int(p, "resources.pids", "limit")? {
                None => Pids::default(),
                Some(n @ 1..=65536) => Pids { limit: n as u32 },
                Some(n) => {
                    bail!(
                        "resources.pids.limit",
                        "{n} is out of range; use 1 to 65536"
                    )
                }
            }
        }
    };
    Ok(Resources {
        cpu: cpu(t)?,
        memory: Memory {
            reserve: memory.0,
            limit: memory.1,
        },
        storage: Storage {
            reserve: storage.0,
            limit: storage.1,
        },
        bandwidth_down: Bandwidth {
            reserve: down.0,
            limit: down.1,
        },
        bandwidth_up: Bandwidth {
            reserve: up.0,
            limit: up.1,
        },
        pids,
    })
}

/// More cores than any gateway has; the cap keeps later arithmetic (cgroup quotas) in range.
const MAX_CORES: f64 = 1024.0;

fn cpu(t: &Table) -> R<Cpu> {
    let Some(c) = get_table(t, "resources", "cpu")? else {
        return Ok(Cpu::default());
    };
    check_keys(c, "resources.cpu", "resources.cpu", &["reserve", "limit"])?;
    let cores = |key: &str| -> R<Option<f64>> {
        let field = format!("resources.cpu.{key}");
        let n = match c.get(key) {
            None => return Ok(None),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(n)) => *n as f64,
            Some(other) => {
                let found = describe(other);
                bail!(field, "expected a number of cores like 0.5, found {found}");
            }
        };
        // `contains` is false for NaN, so this refuses NaN and infinities too.
        if !(0.0..=MAX_CORES).contains(&n) {
            bail!(field, "{n} cores is out of range; use 0 to {MAX_CORES}");
        }
        Ok(Some(n))
    };
    let reserve = cores("reserve")?.unwrap_or(0.0);
    let limit = cores("limit")?;
    if let Some(limit) = limit {
        if limit == 0.0 {
            let reason =
                "a limit of 0 cores would never let the service run; raise it or omit `limit`";
            return Err(bad("resources.cpu.limit", reason));
        }
        if limit < reserve {
            bail!(
                "resources.cpu.limit",
                "limit {limit} cores is below the reservation {reserve} cores; \
                     raise the limit or lower the reservation"
            );
        }
    }
    Ok(Cpu { reserve, limit })
}

type Getter = fn(&Table, &str, &str) -> R<Option<u64>>;

/// Reads `{ reserve = .., limit = .. }` and checks 0 < limit >= reserve.
fn reserve_limit(
    t: &Table,
    key: &str,
    get: Getter,
    format: fn(u64) -> String,
) -> R<(u64, Option<u64>)> {
    let Some(inner) = get_table(t, "resources", key)? else {
        return Ok((0, None));
    };
    let path = format!("resources.{key}");
    check_keys(inner, &path, &path, &["reserve", "limit"])?;
    let reserve = get(inner, &path, "reserve")?.unwrap_or(0);
    let limit = get(inner, &path, "limit")?;
    if let Some(limit) = limit {
        let field = format!("{path}.limit");
        if limit == 0 {
            bail!(
                field,
                "a limit of 0 leaves the service no {}; omit `limit` for no limit",
                key.replace('_', " ")
            );
        }
        if limit < reserve {
            bail!(
                field,
                "limit {} is below the reservation {}; raise the limit or lower the reservation",
                format(limit),
                format(reserve)
            );
        }
    }
    Ok((reserve, limit))
}

fn ports(t: &Table) -> R<Vec<Port>> {
    let mut ports: Vec<Port> = Vec::new();
    for (i, p) in get_tables(t, "ports")?.into_iter().enumerate() {
        let path = format!("ports[{i}]");
        check_keys(
            p,
            &path,
            "each [[ports]] entry",
            &["port", "protocol", "publish"],
        )?;
        let port = required(
            get_port(p, &path, "port")?,
            &format!("{path}.port"),
            "add `port = <number>`",
        )?;
        let protocol = get_choice(
            p,
            &path,
            "protocol",
            &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)],
        )?
        .unwrap_or_default();
        let publish = get_choice(
            p,
            &path,
            "publish",
            &[
                ("lan", Publish::Lan),
                ("wan", Publish::Wan),
                ("none", Publish::None),
            ],
        )?
        .unwrap_or_default();
        if let Some(j) = ports
            .iter()
            .position(|q| q.port == port && q.protocol == protocol)
        {
            let proto = if protocol == Protocol::Tcp {
                "tcp"
            } else {
                "udp"
            };
            bail!(
                format!("{path}.port"),
                "port {port}/{proto} is already listed at ports[{j}]; remove one of them"
            );
        }
        ports.push(Port {
            port,
            protocol,
            publish,
        });
    }
    Ok(ports)
}

fn exports(t: &Table, ports: &[Port]) -> R<Vec<Export>> {
    let mut exports: Vec<Export> = Vec::new();
    for (i, e) in get_tables(t, "exports")?.into_iter().enumerate() {
        let path = format!("exports[{i}]");
        check_keys(e, &path, "each [[exports]] entry", &["port", "to"])?;
        let port = required(
            get_port(e, &path, "port")?,
            &format!("{path}.port"),
            "add `port = <number>`",
        )?;
        if !ports.iter().any(|p| p.port == port) {
            bail!(
                format!("{path}.port"),
                "port {port} is not listed in [[ports]]; \
                 add a [[ports]] entry with `port = {port}`"
            );
        }
        if let Some(j) = exports.iter().position(|x| x.port == port) {
            bail!(
                format!("{path}.port"),
                "port {port} is already exported at exports[{j}]; merge the two `to` lists"
            );
        }
        let to_field = format!("{path}.to");
        let to = required(
            get_str_array(e, &path, "to")?,
            &to_field,
            "add `to = [\"*\"]` or a list of provider names",
        )?;
        if to.is_empty() {
            bail!(
                to_field,
                "the list is empty; use [\"*\"] for every provider or list provider names"
            );
        }
        for (k, entry) in to.iter().enumerate() {
            if entry == "*" {
                if to.len() > 1 {
                    bail!(
                        to_field,
                        "\"*\" already means every provider; remove either \"*\" or the names"
                    );
                }
                continue;
            }
            check_name(entry, &format!("{to_field}[{k}]"))?;
            if to[..k].contains(entry) {
                bail!(
                    format!("{to_field}[{k}]"),
                    "provider {entry:?} is listed twice; remove one"
                );
            }
        }
        exports.push(Export { port, to });
    }
    Ok(exports)
}

fn imports(t: &Table, name: &str, provider: &str) -> R<Vec<Import>> {
    let mut imports: Vec<Import> = Vec::new();
    for (i, im) in get_tables(t, "imports")?.into_iter().enumerate() {
        let path = format!("imports[{i}]");
        check_keys(
            im,
            &path,
            "each [[imports]] entry",
            &["service", "provider"],
        )?;
        let service = required(
            get_str(im, &path, "service")?,
            &format!("{path}.service"),
            "add `service = \"name\"`",
        )?;
        check_name(service, &format!("{path}.service"))?;
        let from = required(
            get_str(im, &path, "provider")?,
            &format!("{path}.provider"),
            "add `provider = \"name\"`",
        )?;
        check_name(from, &format!("{path}.provider"))?;
        if service == name && from == provider {
            bail!(path, "a service cannot import itself; remove this import");
        }
        let import = Import {
            service: service.to_string(),
            provider: from.to_string(),
        };
        if let Some(j) = imports.iter().position(|x| *x == import) {
            bail!(
                path,
                "{from}/{service} is already imported at imports[{j}]; remove one"
            );
        }
        imports.push(import);
    }
    Ok(imports)
}

fn health(t: &Table) -> R<Health> {
    check_keys(
        t,
        "health",
        "[health]",
        &[
            "exec",
            "tcp",
            "http",
            "interval",
            "timeout",
            "retries",
            "start_period",
        ],
    )?;
    let given: Vec<&str> = ["exec", "tcp", "http"]
        .into_iter()
        .filter(|k| t.contains_key(*k))
        .collect();
    let check = match given.as_slice() {
        [] => {
            bail!(
                "health",
                "no check given; add exactly one of `exec = [\"/bin/check\"]`, \
                 `tcp = <port>` or `http = \"http://127.0.0.1:<port>/\"`"
            )
        }
        ["exec"] => {
            let command = get_str_array(t, "health", "exec")?.unwrap_or_default();
            check_command(&command, "health.exec")?;
            HealthCheck::Exec(command)
        }
        ["tcp"] => HealthCheck::Tcp(get_port(t, "health", "tcp")?.unwrap_or_default()),
        ["http"] => {
            let url = get_str(t, "health", "http")?.unwrap_or_default();
            check_loopback_url(
                url,
                "http://127.0.0.1:8080/health",
                "the check runs inside the service",
            )
            .map_err(|reason| bad("health.http", reason))?;
            HealthCheck::Http(url.to_string())
        }
        several => bail!(
            "health",
            "{} are all given; keep exactly one check",
            several.join(", ")
        ),
    };
    let interval = get_duration(t, "health", "interval")?.unwrap_or(Duration::from_secs(10));
    if interval < Duration::from_secs(1) {
        bail!(
            "health.interval",
            "{} is too short; check at most once a second (\"1s\")",
            format_duration(interval)
        );
    }
    let timeout =
        get_duration(t, "health", "timeout")?.unwrap_or(Duration::from_secs(3).min(interval));
    if timeout.is_zero() {
        bail!(
            "health.timeout",
            "a timeout of 0s would fail every check; use at least \"1ms\""
        );
    }
    if timeout > interval {
        bail!(
            "health.timeout",
            "timeout {} is longer than the interval {}; lower the timeout or raise the interval",
            format_duration(timeout),
            format_duration(interval)
        );
    }
    let retries = match get_int(t, "health", "retries")? {
        None => 3,
        Some(n) if n >= 1 && n <= i64::from(u32::MAX) => n as u32,
        Some(n) => {
            bail!("health.retries", "{n} is out of range; use at least 1")
        }
    };
    let start_period = get_duration(t, "health", "start_period")?.unwrap_or(Duration::ZERO);
    Ok(Health {
        check,
        interval,
        timeout,
        retries,
        start_period,
    })
}

/// The check runs inside the service's network namespace, so only its own loopback makes sense.
/// A URL the gateway GETs inside the service: `http://` on its own loopback.
fn check_loopback_url(url: &str, example: &str, why: &str) -> Result<(), String> {
    let way_out = format!("write it like {example:?} ({why})");
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{url:?} contains whitespace or control characters; {way_out}"
        ));
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("{url:?} does not start with http://; {way_out}"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
    if host != "127.0.0.1" && host != "localhost" {
        return Err(format!(
            "host {host:?} is not 127.0.0.1 or localhost; {way_out}"
        ));
    }
    if authority.contains(':') && !matches!(port.parse::<u16>(), Ok(1..)) {
        return Err(format!(
            "port {port:?} is not a number from 1 to 65535; {way_out}"
        ));
    }
    Ok(())
}

fn check_command(command: &[String], field: &str) -> R<()> {
    let Some(program) = command.first() else {
        bail!(
            field,
            "the command is empty; give at least the program, like [\"/usr/bin/server\"]"
        );
    };
    check_path(program, &format!("{field}[0]"), "the program")?;
    if let Some(i) = command.iter().position(|arg| arg.contains('\0')) {
        bail!(
            format!("{field}[{i}]"),
            "contains a NUL character, which no argument can hold"
        );
    }
    Ok(())
}

fn check_path(path: &str, field: &str, what: &str) -> R<()> {
    if !path.starts_with('/') {
        bail!(
            field,
            "{path:?} is not an absolute path; give {what} as a path starting with '/'"
        );
    }
    if path.contains('\0') {
        bail!(field, "contains a NUL character, which no path can hold");
    }
    Ok(())
}

/// The key a service of `provider` named `name` is kept under on the host when another
/// provider's service already holds the bare name: `PROVIDER+NAME`. Names have no `+`, so such
/// a key never meets a bare one, and it is safe as a directory, cgroup and container id.
pub fn service_key(provider: &str, name: &str) -> String {
    format!("{provider}+{name}")
}

/// The service's own name inside its host key (see [`service_key`]): `probe` for both
/// `probe` and `acme+probe`.
pub fn bare_name(key: &str) -> &str {
    key.split_once('+').map_or(key, |(_, name)| name)
}

/// How a person reads a host key: `probe` for `probe`, `acme/probe` for `acme+probe` (the
/// id every command accepts).
pub fn shown_key(key: &str) -> String {
    key.replacen('+', "/", 1)
}

/// Whether `name` is a valid service or provider name (see [`check_name`]).
pub fn valid_name(name: &str) -> bool {
    check_name(name, "name").is_ok()
}

/// Service and provider names become hostnames, directory names and cgroup names.
fn check_name(name: &str, field: &str) -> R<()> {
    let length = name.chars().count();
    let problem = if name.is_empty() {
        "is empty".to_string()
    } else if length > 63 {
        format!("is {length} characters long")
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        format!("contains {c:?}")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        "does not start with a letter".to_string()
    } else if name.ends_with('-') {
        "ends with '-'".to_string()
    } else {
        return Ok(());
    };
    bail!(
        field,
        "{name:?} {problem}; {NAME_RULE} \
         (it becomes a hostname, a directory name and a cgroup name)"
    )
}

fn check_version(version: &str) -> R<()> {
    const RULE: &str = "use up to 64 letters, digits and '.', '_', '+', '-', like \"1.2.0\"";
    if version.is_empty() {
        bail!("version", "is empty; {RULE}");
    }
    if version.chars().count() > 64 {
        bail!(
            "version",
            "is {} characters long; {RULE}",
            version.chars().count()
        );
    }
    if let Some(c) = version
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-_+".contains(*c)))
    {
        bail!("version", "{version:?} contains {c:?}; {RULE}");
    }
    Ok(())
}

// ---- Reading typed values out of TOML tables, each error naming the full field path. ----

/// `path.key`, quoting the key when TOML would need quotes for it.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

fn check_keys(t: &Table, path: &str, label: &str, allowed: &[&str]) -> R<()> {
    let Some(unknown) = t.keys().find(|k| !allowed.contains(&k.as_str())) else {
        return Ok(());
    };
    let mut reason = format!(
        "unknown field `{unknown}`; {label} allows {}",
        allowed.join(", ")
    );
    // A typo or a shortened name ("proto" for "protocol"); short keys match too much to guess.
    let near = |a: &&&str| edit_distance(a, unknown) <= 2 || a.starts_with(unknown.as_str());
    if let Some(near) = allowed.iter().find(near).filter(|_| unknown.len() > 2) {
        reason.push_str(&format!(" (did you mean `{near}`?)"));
    }
    Err(bad(join(path, unknown), reason))
}

/// Levenshtein distance, only used to suggest a field name for a typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A value as a message shows it: `integer 5`, `string "x"`, `table`.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => format!("{} {v}", v.type_str()),
        _ => v.type_str().to_string(),
    }
}

fn required<T>(value: Option<T>, field: &str, hint: &str) -> R<T> {
    value.ok_or_else(|| bad(field, format!("missing; {hint}")))
}

fn get_str<'t>(t: &'t Table, path: &str, key: &str) -> R<Option<&'t str>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(
            join(path, key),
            format!("expected a string, found {}", describe(other)),
        )),
    }
}

fn get_int(t: &Table, path: &str, key: &str) -> R<Option<i64>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) => Ok(Some(*n)),
        Some(other) => Err(bad(
            join(path, key),
            format!("expected an integer, found {}", describe(other)),
        )),
    }
}

fn get_table<'t>(t: &'t Table, path: &str, key: &str) -> R<Option<&'t Table>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Table(inner)) => Ok(Some(inner)),
        Some(other) => Err(bad(
            join(path, key),
            format!("expected a table, found {}", describe(other)),
        )),
    }
}

/// An array of tables (`[[key]]`) at the top level; absent means empty.
fn get_tables<'t>(t: &'t Table, key: &str) -> R<Vec<&'t Table>> {
    let items = match t.get(key) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            bail!(
                key,
                "expected an array of tables written [[{key}]], found {}",
                describe(other)
            )
        }
    };
    let tables = items.iter().enumerate().map(|(i, item)| match item {
        Value::Table(inner) => Ok(inner),
        other => Err(bad(
            format!("{key}[{i}]"),
            format!(
                "expected a table, found {}; write each entry as a [[{key}]] table",
                describe(other)
            ),
        )),
    });
    tables.collect()
}

fn get_str_array(t: &Table, path: &str, key: &str) -> R<Option<Vec<String>>> {
    let field = join(path, key);
    let items = match t.get(key) {
        None => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            bail!(
                field,
                "expected an array of strings, found {}",
                describe(other)
            )
        }
    };
    let strings = items.iter().enumerate().map(|(i, item)| match item {
        Value::String(s) => Ok(s.clone()),
        other => Err(bad(
            format!("{field}[{i}]"),
            format!("expected a string, found {}", describe(other)),
        )),
    });
    strings.collect::<R<Vec<String>>>().map(Some)
}

fn get_port(t: &Table, path: &str, key: &str) -> R<Option<u16>> {
    match get_int(t, path, key)? {
        None => Ok(None),
        Some(n @ 1..=65535) => Ok(Some(n as u16)),
        Some(n) => Err(bad(
            join(path, key),
            format!("port {n} is out of range; use 1 to 65535"),
        )),
    }
}

fn get_choice<T: Copy>(t: &Table, path: &str, key: &str, choices: &[(&str, T)]) -> R<Option<T>> {
    let Some(text) = get_str(t, path, key)? else {
        return Ok(None);
    };
    match choices.iter().find(|(name, _)| *name == text) {
        Some((_, value)) => Ok(Some(*value)),
        None => {
            let names: Vec<String> = choices
                .iter()
                .map(|(name, _)| format!("{name:?}"))
                .collect();
            Err(bad(
                join(path, key),
                format!("unknown value {text:?}; use one of {}", names.join(", ")),
            ))
        }
    }
}

/// A quantity written as an integer or a string with a unit, parsed by `parse_text`.
fn get_quantity(
    t: &Table,
    path: &str,
    key: &str,
    parse_text: fn(&str) -> Result<u64, String>,
    example: &str,
) -> R<Option<u64>> {
    let field = join(path, key);
    match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) => u64::try_from(*n)
            .map(Some)
            .map_err(|_| bad(field, format!("{n} is negative; write {example}"))),
        Some(Value::String(s)) => parse_text(s).map(Some).map_err(|reason| bad(field, reason)),
        Some(other) => Err(bad(
            field,
            format!("expected {example}, found {}", describe(other)),
        )),
    }
}

fn get_size(t: &Table, path: &str, key: &str) -> R<Option<u64>> {
    get_quantity(
        t,
        path,
        key,
        units::parse_size,
        "a size like \"32MiB\" or a number of bytes",
    )
}

fn get_bandwidth(t: &Table, path: &str, key: &str) -> R<Option<u64>> {
    get_quantity(
        t,
        path,
        key,
        units::parse_bandwidth,
        "a bandwidth like \"5Mbit\" or a number of bits per second",
    )
}

fn get_duration(t: &Table, path: &str, key: &str) -> R<Option<Duration>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => units::parse_duration(s)
            .map(Some)
            .map_err(|reason| bad(join(path, key), reason)),
        Some(other) => Err(bad(
            join(path, key),
            format!("expected a duration like \"5s\", found {}", describe(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"name = "camera"
version = "1.2.0"
provider = "acme"
description = "Remote surveillance: serves the camera's pictures on the LAN"

[run]
command = ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
env = { MODE = "prod" }

[resources]
cpu = { reserve = 0.25, limit = 1.0 }          # cores
memory = { reserve = "32MiB", limit = "64MiB" }
storage = { reserve = "100MiB" }               # the data volume
bandwidth_down = { reserve = "5Mbit", limit = "20Mbit" }
bandwidth_up = { reserve = "1Mbit" }
pids = { limit = 64 }

[[ports]]
port = 8080
publish = "lan"                                # lan | wan | none

[[exports]]                                    # offer a port to other providers' services
port = 8080
to = ["*"]                                     # or provider names

[health]
http = "http://127.0.0.1:8080/"
interval = "5s"

[restart]
policy = "on-failure"                          # always | on-failure | never
"#;

    const MIB: u64 = 1024 * 1024;

    /// The smallest valid manifest, then `tail`; lines of `tail` before any table header land
    /// in [run].
    #[test]
    fn egress_is_the_wan_unless_the_manifest_says_none() {
        let open = parse(&minimal(""), "t").unwrap();
        assert_eq!(open.egress, Egress::Wan);
        let closed = parse(&minimal("[network]\negress = \"none\""), "t").unwrap();
        assert_eq!(closed.egress, Egress::None);
        assert_eq!(serde_json::to_value(&closed).unwrap()["egress"], "none");
    }

    fn minimal(tail: &str) -> String {
        let head = "name = \"svc\"\nversion = \"1\"\nprovider = \"p\"\n";
        format!("{head}[run]\ncommand = [\"/bin/x\"]\n{tail}")
    }

    /// Parses `text`, expecting a refusal of `field` whose reason contains `reason`.
    fn refused(text: &str, field: &str, reason: &str) {
        let err = parse(text, FILE_NAME).expect_err(text);
        let message = err.to_string();
        assert_eq!(err.field(), Some(field), "{message}\nfrom:\n{text}");
        assert!(
            message.starts_with(&format!("{FILE_NAME}: {field}: ")),
            "{message}"
        );
        assert!(message.contains(reason), "{message:?} lacks {reason:?}");
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let m = parse(EXAMPLE, FILE_NAME).unwrap();
        assert_eq!(
            (m.name.as_str(), m.version.as_str(), m.provider.as_str()),
            ("camera", "1.2.0", "acme")
        );
        assert_eq!(m.run.command[0], "/bin/httpd");
        assert_eq!(m.run.env["MODE"], "prod");
        assert_eq!(m.run.stop_timeout, Duration::from_secs(10));
        let r = &m.resources;
        assert_eq!(
            r.cpu,
            Cpu {
                reserve: 0.25,
                limit: Some(1.0)
            }
        );
        assert_eq!(
            r.memory,
            Memory {
                reserve: 32 * MIB,
                limit: Some(64 * MIB)
            }
        );
        assert_eq!(
            r.storage,
            Storage {
                reserve: 100 * MIB,
                limit: None
            }
        );
        assert_eq!(
            r.bandwidth_down,
            Bandwidth {
                reserve: 5_000_000,
                limit: Some(20_000_000)
            }
        );
        assert_eq!(
            r.bandwidth_up,
            Bandwidth {
                reserve: 1_000_000,
                limit: None
            }
        );
        assert_eq!(r.pids.limit, 64);
        assert_eq!(
            m.ports,
            [Port {
                port: 8080,
                protocol: Protocol::Tcp,
                publish: Publish::Lan
            }]
        );
        assert_eq!(
            m.exports,
            [Export {
                port: 8080,
                to: vec!["*".to_string()]
            }]
        );
        let health = m.health.unwrap();
        assert_eq!(
            health.check,
            HealthCheck::Http("http://127.0.0.1:8080/".into())
        );
        assert_eq!(health.interval, Duration::from_secs(5));
        assert_eq!(health.timeout, Duration::from_secs(3));
        assert_eq!((health.retries, health.start_period), (3, Duration::ZERO));
        assert_eq!(m.restart.policy, RestartPolicy::OnFailure);
    }

    #[test]
    fn run_extras_and_imports_are_read() {
        let text = EXAMPLE
            .replace("name = \"camera\"", "name = \"viewer\"")
            .replace(
                "env = { MODE = \"prod\" }",
                r#"env = { MODE = "prod" }
user = "1000:1000"
workdir = "/srv"
stop_timeout = "5s""#,
            )
            + "\n[[imports]]\nservice = \"camera\"\nprovider = \"acme\"\n";
        let m = parse(&text, FILE_NAME).unwrap();
        assert_eq!(
            m.run.user,
            Some(User {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(m.run.workdir.as_deref(), Some("/srv"));
        assert_eq!(m.run.stop_timeout, Duration::from_secs(5));
        assert_eq!(
            m.imports,
            [Import {
                service: "camera".into(),
                provider: "acme".into()
            }]
        );
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let m = parse(&minimal(""), FILE_NAME).unwrap();
        assert_eq!(m.resources, Resources::default());
        assert_eq!(m.resources.pids.limit, 256);
        assert_eq!(m.description, "");
        assert!(m.ports.is_empty() && m.exports.is_empty() && m.imports.is_empty());
        assert_eq!(
            (m.health, m.restart.policy),
            (None, RestartPolicy::OnFailure)
        );
        let text = minimal(
            r#"user = 1000
[[ports]]
port = 53
protocol = "udp"
[health]
tcp = 53
interval = "1s""#,
        );
        let m = parse(&text, FILE_NAME).unwrap();
        assert_eq!(
            m.run.user,
            Some(User {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            m.ports[0],
            Port {
                port: 53,
                protocol: Protocol::Udp,
                publish: Publish::None
            }
        );
        let health = m.health.unwrap();
        assert_eq!(health.check, HealthCheck::Tcp(53));
        // The 3s default timeout would exceed a 1s interval, so it shrinks to the interval.
        assert_eq!(health.timeout, Duration::from_secs(1));
    }

    #[test]
    fn units_are_accepted_in_every_form() {
        let m = parse(
            &minimal(
                r#"[resources]
memory = { reserve = 1048576, limit = "1G" }
storage = { reserve = "2GB", limit = "3 GiB" }
bandwidth_down = { reserve = 1000, limit = "500kbit" }
bandwidth_up = { reserve = "1Mbps", limit = "1Gbit" }
cpu = { limit = 2 }"#,
            ),
            FILE_NAME,
        )
        .unwrap();
        let r = m.resources;
        assert_eq!(
            r.memory,
            Memory {
                reserve: MIB,
                limit: Some(1024 * MIB)
            }
        );
        assert_eq!(
            r.storage,
            Storage {
                reserve: 2_000_000_000,
                limit: Some(3 * 1024 * MIB)
            }
        );
        assert_eq!(
            r.bandwidth_down,
            Bandwidth {
                reserve: 1000,
                limit: Some(500_000)
            }
        );
        assert_eq!(
            r.bandwidth_up,
            Bandwidth {
                reserve: 1_000_000,
                limit: Some(1_000_000_000)
            }
        );
        assert_eq!(
            r.cpu,
            Cpu {
                reserve: 0.0,
                limit: Some(2.0)
            }
        );
    }

    #[test]
    fn serializes_durations_as_strings_and_sizes_as_integers() {
        let json = serde_json::to_value(parse(EXAMPLE, FILE_NAME).unwrap()).unwrap();
        assert_eq!(json["resources"]["memory"]["reserve"], 32 * MIB);
        assert_eq!(json["resources"]["bandwidth_down"]["reserve"], 5_000_000);
        assert_eq!(json["health"]["http"], "http://127.0.0.1:8080/");
        assert_eq!(json["health"]["interval"], "5s");
        assert_eq!(json["run"]["stop_timeout"], "10s");
        assert_eq!(json["restart"]["policy"], "on-failure");
        assert_eq!(json["ports"][0]["publish"], "lan");
        assert_eq!(json["ports"][0]["protocol"], "tcp");
    }

    /// Each case: manifest text, the field the error must name, a piece of its reason.
    type Case = (String, &'static str, &'static str);

    fn refuse_all(cases: Vec<Case>) {
        for (text, field, reason) in cases {
            refused(&text, field, reason);
        }
    }

    // The tables below stay one case per line: rustfmt would spread each over five.
    #[rustfmt::skip]
    #[test]
    fn top_level_rules() {
        let top = |name: &str, version: &str, provider: &str| {
            let run = "[run]\ncommand = [\"/x\"]";
            format!("name = {name:?}\nversion = {version:?}\nprovider = {provider:?}\n{run}")
        };
        let long_description = format!("description = {:?}\n{}", "x".repeat(513), minimal(""));
        refuse_all(vec![
            (top("Camera", "1", "p"), "name", "contains 'C'"),
            (top("1cam", "1", "p"), "name", "does not start with a letter"),
            (top("cam-", "1", "p"), "name", "ends with '-'"),
            (top("", "1", "p"), "name", "is empty"),
            (top(&"a".repeat(64), "1", "p"), "name", "64 characters"),
            (top("cam_1", "1", "p"), "name", "it becomes a hostname"),
            (top("cam", "", "p"), "version", "is empty"),
            (top("cam", "1.0 beta", "p"), "version", "contains ' '"),
            (top("cam", &"1".repeat(65), "p"), "version", "65 characters"),
            (top("cam", "1", "Acme"), "provider", "contains 'A'"),
            (long_description, "description", "513 characters"),
            ("version = \"1\"\nprovider = \"p\"\n[run]\ncommand = [\"/x\"]".into(), "name",
             "missing; add `name"),
            ("name = \"a\"\nversion = \"1\"\nprovider = \"p\"".into(), "run",
             "missing; add a [run] table"),
            ("name = 5\nversion = \"1\"\nprovider = \"p\"".into(), "name",
             "expected a string, found integer 5"),
        ]);
        assert!(parse(&top(&"a".repeat(63), &"1".repeat(64), "a-1"), FILE_NAME).is_ok());
    }

    #[rustfmt::skip]
    #[test]
    fn run_rules() {
        let command = |args: &str| minimal("").replace("[\"/bin/x\"]", args);
        refuse_all(vec![
            (command("[]"), "run.command", "the command is empty"),
            (command("[\"httpd\"]"), "run.command[0]", "not an absolute path"),
            (command("[\"/bin/x\", \"a\\u0000b\"]"), "run.command[1]", "NUL"),
            (command("[\"/bin/x\", 5]"), "run.command[1]", "expected a string"),
            (command("\"/bin/x\""), "run.command", "expected an array of strings"),
            (minimal("").replace("command = [\"/bin/x\"]", ""), "run.command", "missing"),
            (minimal("env = { 1BAD = \"x\" }"), "run.env.1BAD", "not a valid variable name"),
            (minimal("env = { \"A B\" = \"x\" }"), "run.env.\"A B\"", "not a valid variable name"),
            (minimal("env = { PORT = 8080 }"), "run.env.PORT", "quote the value"),
            (minimal("env = { A = \"x\\u0000\" }"), "run.env.A", "NUL"),
            (minimal("user = \"www-data\""), "run.user", "use numeric ids"),
            (minimal("user = \"1000:staff\""), "run.user", "use numeric ids"),
            (minimal("user = \"1000:\""), "run.user", "use numeric ids"),
            (minimal("user = \"4294967296\""), "run.user", "out of range"),
            (minimal("user = \"0:4294967295\""), "run.user", "gid 4294967295 is out of range"),
            (minimal("user = -1"), "run.user", "out of range"),
            (minimal("workdir = \"srv\""), "run.workdir", "not an absolute path"),
            (minimal("stop_timeout = 5"), "run.stop_timeout", "like \"5s\""),
            (minimal("stop_timeout = \"5\""), "run.stop_timeout", "no unit"),
        ]);
        let m = parse(&minimal("user = \"0:100\""), FILE_NAME).unwrap();
        assert_eq!(m.run.user, Some(User { uid: 0, gid: 100 }));
    }

    #[rustfmt::skip]
    #[test]
    fn resource_rules() {
        let res = |line: &str| minimal(&format!("[resources]\n{line}"));
        refuse_all(vec![
            (res("memory = { reserve = \"32MiB\", limit = \"16MiB\" }"), "resources.memory.limit",
             "limit 16 MiB is below the reservation 32 MiB; raise the limit or lower the reservation"),
            (res("memory = { limit = \"1MiB\" }"), "resources.memory.limit", "below the 4 MiB"),
            (res("memory = { reserve = -1 }"), "resources.memory.reserve", "negative"),
            (res("memory = { reserve = \"\" }"), "resources.memory.reserve", "empty"),
            (res("memory = { reserve = \"32Mb\" }"), "resources.memory.reserve",
             "unknown size unit"),
            (res("memory = { reserve = 1.5 }"), "resources.memory.reserve", "found float 1.5"),
            (res("memory = \"64MiB\""), "resources.memory", "expected a table"),
            (res("storage = { reserve = \"2GiB\", limit = \"1GiB\" }"), "resources.storage.limit",
             "below the reservation"),
            (res("storage = { limit = 0 }"), "resources.storage.limit", "omit `limit`"),
            (res("bandwidth_up = { reserve = \"5Mbit\", limit = \"1Mbit\" }"), "resources.bandwidth_up.limit",
             "limit 1 Mbit/s is below the reservation 5 Mbit/s"),
            (res("bandwidth_down = { reserve = \"5MB\" }"), "resources.bandwidth_down.reserve",
             "unknown bandwidth unit"),
            (res("bandwidth_down = { limit = \"99999999999Gbit\" }"), "resources.bandwidth_down.limit",
             "too large"),
            (res("cpu = { reserve = 2, limit = 1 }"), "resources.cpu.limit",
             "below the reservation"),
            (res("cpu = { limit = 0 }"), "resources.cpu.limit", "never let the service run"),
            (res("cpu = { reserve = -0.5 }"), "resources.cpu.reserve", "out of range"),
            (res("cpu = { limit = nan }"), "resources.cpu.limit", "out of range"),
            (res("cpu = { limit = inf }"), "resources.cpu.limit", "out of range"),
            (res("cpu = { limit = \"1\" }"), "resources.cpu.limit", "expected a number of cores"),
            (res("pids = { limit = 0 }"), "resources.pids.limit", "use 1 to 65536"),
            (res("pids = { limit = 65537 }"), "resources.pids.limit", "use 1 to 65536"),
        ]);
        let pids = parse(&res("pids = { limit = 65536 }"), FILE_NAME).unwrap().resources.pids;
        assert_eq!(pids.limit, 65536);
    }

    #[rustfmt::skip]
    #[test]
    fn port_export_and_import_rules() {
        let port = |n: &str| minimal(&format!("[[ports]]\nport = {n}"));
        let export = |to: &str| minimal(&format!("[[ports]]\nport = 80\n[[exports]]\nport = 80\nto = {to}"));
        let import = |service: &str, provider: &str| {
            minimal(&format!("[[imports]]\nservice = {service:?}\nprovider = {provider:?}"))
        };
        refuse_all(vec![
            (port("0"), "ports[0].port", "use 1 to 65535"),
            (port("65536"), "ports[0].port", "use 1 to 65535"),
            (port("\"80\""), "ports[0].port", "expected an integer"),
            (minimal("[[ports]]\npublish = \"lan\""), "ports[0].port", "missing"),
            (minimal("[[ports]]\nport = 80\n[[ports]]\nport = 80"), "ports[1].port",
             "80/tcp is already listed at ports[0]"),
            (minimal("[[ports]]\nport = 80\nprotocol = \"sctp\""), "ports[0].protocol",
             "use one of \"tcp\", \"udp\""),
            (minimal("[[ports]]\nport = 80\npublish = \"internet\""), "ports[0].publish",
             "\"lan\", \"wan\", \"none\""),
            (minimal("[ports]\nport = 80"), "ports", "[[ports]]"),
            (format!("ports = [80]\n{}", minimal("")), "ports[0]",
             "expected a table, found integer 80"),
            (minimal("[[ports]]\nport = 80\n[[exports]]\nport = 81\nto = [\"*\"]"), "exports[0].port",
             "port 81 is not listed in [[ports]]"),
            (export("[\"*\"]\n[[exports]]\nport = 80\nto = [\"a\"]"), "exports[1].port",
             "already exported at exports[0]"),
            (export("[]"), "exports[0].to", "the list is empty"),
            (export("[\"*\", \"acme\"]"), "exports[0].to", "already means every provider"),
            (export("[\"Acme\"]"), "exports[0].to[0]", "contains 'A'"),
            (export("[\"acme\", \"acme\"]"), "exports[0].to[1]", "listed twice"),
            (minimal("[[ports]]\nport = 80\n[[exports]]\nport = 80"), "exports[0].to", "missing"),
            (import("svc", "p"), "imports[0]", "cannot import itself"),
            (import("Cam", "acme"), "imports[0].service", "contains 'C'"),
            (import("cam", "acme-"), "imports[0].provider", "ends with '-'"),
            (import("cam", "acme") + "\n[[imports]]\nservice = \"cam\"\nprovider = \"acme\"", "imports[1]",
             "already imported"),
        ]);
        let udp_too = minimal("[[ports]]\nport = 53\n[[ports]]\nport = 53\nprotocol = \"udp\"");
        assert!(parse(&udp_too, FILE_NAME).is_ok());
        let exports = parse(&export("[\"acme\", \"globex\"]"), FILE_NAME).unwrap().exports;
        assert_eq!(exports[0].to, ["acme", "globex"]);
        assert!(parse(&import("svc", "other"), FILE_NAME).is_ok());
    }

    #[rustfmt::skip]
    #[test]
    fn health_rules() {
        let health = |body: &str| minimal(&format!("[health]\n{body}"));
        let url = |url: &str| health(&format!("http = {url:?}"));
        let way_out = "like \"http://127.0.0.1:8080/health\"";
        refuse_all(vec![
            (health("interval = \"5s\""), "health", "no check given"),
            (health("tcp = 80\nhttp = \"http://127.0.0.1/\""), "health", "keep exactly one check"),
            (health("exec = []"), "health.exec", "the command is empty"),
            (health("exec = [\"check\"]"), "health.exec[0]", "not an absolute path"),
            (health("tcp = 0"), "health.tcp", "out of range"),
            (url("https://127.0.0.1/"), "health.http", way_out),
            (url("http://example.com/"), "health.http", way_out),
            (url("http://127.0.0.1.evil.com/"), "health.http", way_out),
            (url("http://localhost@evil/"), "health.http", way_out),
            (url("http://localhost:0/"), "health.http", way_out),
            (url("http://127.0.0.1:x/"), "health.http", way_out),
            (url("http://127.0.0.1/ x"), "health.http", way_out),
            (health("tcp = 80\ninterval = \"500ms\""), "health.interval", "at most once a second"),
            (health("tcp = 80\ninterval = \"5s\"\ntimeout = \"10s\""), "health.timeout",
             "timeout 10s is longer than the interval 5s"),
            (health("tcp = 80\ntimeout = \"0s\""), "health.timeout", "would fail every check"),
            (health("tcp = 80\nretries = 0"), "health.retries", "at least 1"),
            (health("tcp = 80\nstart_period = \"1x\""), "health.start_period",
             "unknown duration unit"),
        ]);
        for ok in ["http://127.0.0.1", "http://localhost:8080/healthz?full=1", "http://127.0.0.1:80/"] {
            assert!(parse(&url(ok), FILE_NAME).is_ok(), "{ok}");
        }
    }

    #[test]
    fn exec_checks_and_health_settings_are_read() {
        let text = minimal(
            r#"[health]
exec = ["/bin/check", "-q"]
retries = 5
start_period = "2m"
timeout = "500ms""#,
        );
        let h = parse(&text, FILE_NAME).unwrap().health.unwrap();
        assert_eq!(
            h.check,
            HealthCheck::Exec(vec!["/bin/check".into(), "-q".into()])
        );
        assert_eq!(h.retries, 5);
        assert_eq!(h.start_period, Duration::from_secs(120));
        assert_eq!(h.timeout, Duration::from_millis(500));
    }

    #[rustfmt::skip]
    #[test]
    fn restart_rules() {
        for (text, policy) in [("always", RestartPolicy::Always), ("never", RestartPolicy::Never)] {
            let m = parse(&minimal(&format!("[restart]\npolicy = {text:?}")), FILE_NAME).unwrap();
            assert_eq!(m.restart.policy, policy);
        }
        refuse_all(vec![
            (minimal("[restart]\npolicy = \"sometimes\""), "restart.policy",
             "\"always\", \"on-failure\", \"never\""),
            (minimal("[restart]\npolicy = \"on_failure\""), "restart.policy", "unknown value"),
            (minimal("[network]\negress = \"lan\""), "network.egress", "unknown value"),
            (minimal("[network]\nwan = false"), "network.wan", "unknown field"),
            (format!("restart = \"always\"\n{}", minimal("")), "restart",
             "expected a table, found string"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        refuse_all(vec![
            (format!("colour = \"red\"\n{}", minimal("")), "colour",
             "unknown field `colour`; the top level allows name, version, provider"),
            (minimal("comand = [\"/x\"]"), "run.comand",
             "[run] allows command, env, user, workdir, stop_timeout (did you mean `command`?)"),
            (minimal("[resources]\nmemroy = {}"), "resources.memroy", "did you mean `memory`?"),
            (minimal("[resources]\nmemory = { reserve = 1, max = 2 }"), "resources.memory.max",
             "resources.memory allows reserve, limit"),
            (minimal("[resources]\ncpu = { shares = 2 }"), "resources.cpu.shares",
             "allows reserve, limit"),
            (minimal("[resources]\npids = { max = 2 }"), "resources.pids.max", "allows limit"),
            (minimal("[[ports]]\nport = 80\nproto = \"udp\""), "ports[0].proto",
             "did you mean `protocol`?"),
            (minimal("[[ports]]\nport = 80\n[[exports]]\nport = 80\nto = [\"*\"]\nfrom = 1"), "exports[0].from",
             "each [[exports]] entry allows port, to"),
            (minimal("[[imports]]\nservice = \"a\"\nprovider = \"b\"\nversion = \"1\""), "imports[0].version",
             "each [[imports]] entry allows service, provider"),
            (minimal("[health]\ntcp = 80\nport = 80"), "health.port",
             "[health] allows exec, tcp, http"),
            (minimal("[restart]\npolicy = \"never\"\ndelay = \"1s\""), "restart.delay",
             "[restart] allows policy"),
        ]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("name = \"camera\"\nversion = 1.2.0\n", FILE_NAME).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, ManifestError::Syntax { line: 2, .. }),
            "{message}"
        );
        assert!(
            message.starts_with("shg-service.toml: line 2, column "),
            "{message}"
        );
        assert!(message.contains("invalid TOML"), "{message}");
        let err = parse("name = \"a\"\nname = \"b\"\n", FILE_NAME).unwrap_err();
        assert!(
            matches!(err, ManifestError::Syntax { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = std::env::temp_dir().join(format!("shg-manifest-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(load(&path).unwrap().name, "camera");
        std::fs::write(&path, EXAMPLE.replace("\"64MiB\"", "\"16MiB\"")).unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: resources.memory.limit: ", path.display())),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, ManifestError::Read { .. })
                && err.to_string().starts_with("cannot read "),
            "{err}"
        );
    }
}
