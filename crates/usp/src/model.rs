//! The data model's values at one moment ([`Snapshot`]), read from the agent as the operator
//! sees it, and the USP path rules: which objects and parameters a requested path names.
//!
//! Each service is one deployment unit and one execution unit with the same instance number,
//! kept for the service's life and never given to another (`book`).

use std::collections::BTreeMap;

use agent::{Agent, AgentError, Principal};
use sha2::{Digest, Sha256};

use crate::book::Book;
use crate::schema;

pub const SM: &str = "Device.SoftwareModules.";
pub const EXEC_ENV: &str = "Device.SoftwareModules.ExecEnv.1.";

/// A USP error: its code (TR-369 table) and a sentence naming the object, the rule and the
/// way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UspError {
    pub code: u32,
    pub message: String,
}

impl UspError {
    pub fn new(code: u32, message: impl Into<String>) -> UspError {
        UspError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_path(path: &str) -> UspError {
        UspError::new(
            7026,
            format!("`{path}` is not in this agent's data model; GetSupportedDM lists what is"),
        )
    }

    pub fn missing(path: &str) -> UspError {
        UspError::new(
            7026,
            format!("`{path}` does not exist; GetInstances lists the instances there are"),
        )
    }
}

/// Objects a path resolved to, each with the parameters (or unique keys) it names.
pub type Found = Vec<(String, Vec<(String, String)>)>;

/// Every object instance there is, by path (ending in `.`), with its parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub objects: BTreeMap<String, BTreeMap<String, String>>,
    /// Each deployment unit's service id (`provider/name`), by instance number.
    pub units: BTreeMap<u32, String>,
}

/// What the agent holds now, as the data model shows it. Gives new services their instance
/// numbers in `book` (the caller persists it).
pub fn snapshot(agent: &Agent, endpoint_id: &str, book: &mut Book) -> Result<Snapshot, AgentError> {
    let who = Principal::Operator;
    let info = agent.info(&who)?;
    let services = agent.list(&who)?;
    let stats = agent.stats(&who)?;
    let mut snap = Snapshot::default();
    let mut units = BTreeMap::new();
    let mut put = |path: &str, params: Vec<(&str, String)>| {
        snap.objects.insert(
            path.to_string(),
            params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        );
    };
    put("Device.", vec![]);
    put(
        "Device.DeviceInfo.",
        vec![
            ("Manufacturer", "SHG".into()),
            ("ModelName", "SHG service-hosting gateway".into()),
            ("SoftwareVersion", info.version.clone()),
        ],
    );
    put(
        "Device.LocalAgent.",
        vec![
            ("EndpointID", endpoint_id.to_string()),
            ("SoftwareVersion", info.version.clone()),
            ("SupportedProtocols", "MQTT".into()),
            (
                "SubscriptionNumberOfEntries",
                book.subscriptions.len().to_string(),
            ),
            ("RequestNumberOfEntries", book.requests.len().to_string()),
        ],
    );
    for sub in &book.subscriptions {
        put(&sub.path(), sub.params());
    }
    for request in &book.requests {
        put(&request.path(), request.params());
    }

    book.forget_except(services.iter().map(|s| s.id.as_str()));
    let mut active = Vec::new();
    for s in &services {
        let i = book.unit(&s.id);
        let key = agent.resolve(&who, &s.id)?;
        // What only the detail view has (it reads the service's journal too): once per
        // release, not at every round of the watcher.
        let (description, source) = match book.described.get(&s.id) {
            Some((version, description, source)) if *version == s.version => {
                (description.clone(), source.clone())
            }
            _ => {
                let detail = agent.detail(&key)?;
                book.described.insert(
                    s.id.clone(),
                    (
                        s.version.clone(),
                        detail.description.clone(),
                        detail.source.clone(),
                    ),
                );
                (detail.description, detail.source)
            }
        };
        let used = stats
            .services
            .iter()
            .find(|u| u.provider == s.provider && u.name == s.name);
        let du = format!("{SM}DeploymentUnit.{i}");
        let eu = format!("{SM}ExecutionUnit.{i}");
        let status = match s.state.as_str() {
            "running" => "Active",
            "starting" | "installing" | "updating" => "Starting",
            "stopping" | "removing" => "Stopping",
            _ => "Idle",
        };
        if status == "Active" {
            active.push(eu.clone());
        }
        let fault = match s.state.as_str() {
            "failed" => "FailureOnStart",
            "backoff" | "crash-loop" => "FailureWhileActive",
            _ => "NoFault",
        };
        let kib = |bytes: Option<u64>| bytes.map_or(-1, |b| (b / 1024) as i64).to_string();
        put(
            &format!("{du}."),
            vec![
                ("UUID", uuid_of(&s.id)),
                ("DUID", s.id.clone()),
                ("Alias", format!("cpe-du-{i}")),
                ("Name", s.name.clone()),
                (
                    "Status",
                    match s.state.as_str() {
                        "installing" => "Installing",
                        "updating" => "Updating",
                        "removing" => "Uninstalling",
                        _ => "Installed",
                    }
                    .into(),
                ),
                ("Resolved", "true".into()),
                ("URL", source.clone().unwrap_or_default()),
                ("Description", description.clone()),
                ("Vendor", s.provider.clone()),
                ("Version", s.version.clone()),
                ("ExecutionUnitList", eu.clone()),
                ("ExecutionEnvRef", EXEC_ENV.trim_end_matches('.').into()),
            ],
        );
        put(
            &format!("{eu}."),
            vec![
                ("EUID", s.id.clone()),
                ("Alias", format!("cpe-eu-{i}")),
                ("Name", s.name.clone()),
                ("ExecEnvLabel", key.clone()),
                ("Status", status.into()),
                (
                    "RequestedState",
                    if s.desired == "running" {
                        "Active"
                    } else {
                        "Idle"
                    }
                    .into(),
                ),
                ("ExecutionFaultCode", fault.into()),
                (
                    "ExecutionFaultMessage",
                    if fault == "NoFault" {
                        String::new()
                    } else {
                        s.reason.clone().unwrap_or_default()
                    },
                ),
                ("AutoStart", (s.desired == "running").to_string()),
                ("RunLevel", "0".into()),
                ("Vendor", s.provider.clone()),
                ("Version", s.version.clone()),
                ("Description", description.clone()),
                ("DiskSpaceInUse", kib(used.and_then(|u| u.storage.used))),
                ("MemoryInUse", kib(used.and_then(|u| u.memory.used))),
                ("References", String::new()),
                ("ExecutionEnvRef", EXEC_ENV.trim_end_matches('.').into()),
                ("X_SHG_Provider", s.provider.clone()),
                ("X_SHG_Health", s.health.clone()),
                ("X_SHG_RestartCount", s.restarts.to_string()),
                ("X_SHG_Priority", s.priority.to_string()),
                (
                    "X_SHG_CPUInUse",
                    used.and_then(|u| u.cpu.used)
                        .map_or(-1, |c| c as i64)
                        .to_string(),
                ),
                (
                    "X_SHG_CPUReserve",
                    used.map_or(0, |u| u.cpu.reserve).to_string(),
                ),
                (
                    "X_SHG_MemoryReserve",
                    used.map_or(0, |u| u.memory.reserve).to_string(),
                ),
            ],
        );
        units.insert(i, s.id.clone());
    }
    let gw = stats
        .gateway
        .ok_or_else(|| AgentError::Internal("the operator sees no gateway totals".into()))?;
    let allocated = |t: &api::ResourceTotals| t.capacity.saturating_sub(t.system_reserve);
    put(
        SM,
        vec![
            ("ExecEnvNumberOfEntries", "1".into()),
            ("DeploymentUnitNumberOfEntries", services.len().to_string()),
            ("ExecutionUnitNumberOfEntries", services.len().to_string()),
        ],
    );
    put(
        EXEC_ENV,
        vec![
            ("Enable", "true".into()),
            ("Status", "Up".into()),
            ("Alias", "cpe-shg".into()),
            ("Name", "shg".into()),
            ("Type", "Linux containers (SHG)".into()),
            ("Vendor", "SHG".into()),
            ("Version", info.version.clone()),
            (
                "AllocatedDiskSpace",
                (allocated(&gw.storage) / 1024).to_string(),
            ),
            ("AvailableDiskSpace", (gw.storage.free / 1024).to_string()),
            (
                "AllocatedMemory",
                (allocated(&gw.memory) / 1024).to_string(),
            ),
            ("AvailableMemory", (gw.memory.free / 1024).to_string()),
            ("ActiveExecutionUnits", active.join(",")),
            ("X_SHG_AllocatedCPU", allocated(&gw.cpu).to_string()),
            ("X_SHG_AvailableCPU", gw.cpu.free.to_string()),
            (
                "X_SHG_AllocatedBandwidthDown",
                allocated(&gw.bandwidth_down).to_string(),
            ),
            (
                "X_SHG_AvailableBandwidthDown",
                gw.bandwidth_down.free.to_string(),
            ),
            (
                "X_SHG_AllocatedBandwidthUp",
                allocated(&gw.bandwidth_up).to_string(),
            ),
            (
                "X_SHG_AvailableBandwidthUp",
                gw.bandwidth_up.free.to_string(),
            ),
        ],
    );
    snap.units = units;
    Ok(snap)
}

/// A stable RFC 4122 name-based UUID of a service id (version 5 layout over SHA-256).
fn uuid_of(id: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(format!("shg:{id}").as_bytes())[..16]
        .try_into()
        .expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Checks a requested path's syntax: `Device.` first, dotted names, instance numbers or `*`.
pub fn check_syntax(path: &str) -> Result<(), UspError> {
    if path.contains('[') || path.contains('#') {
        return Err(UspError::new(
            7008,
            format!("`{path}`: search expressions and references are not supported; use instance numbers or `*`"),
        ));
    }
    let body = path.strip_suffix('.').unwrap_or(path);
    let ok = body.split('.').next() == Some("Device")
        && body.split('.').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-!()*".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(UspError::new(
            7008,
            format!("`{path}` is not a USP path; write e.g. `Device.SoftwareModules.ExecutionUnit.*.Status`"),
        ))
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.strip_suffix('.').unwrap_or(path).split('.').collect()
}

/// Whether the object path `object` lies under (or is) the object or table named by
/// `pattern`, whose segments may be `*` for any instance number.
pub fn under(pattern: &str, object: &str) -> bool {
    let (p, o) = (segments(pattern), segments(object));
    p.len() <= o.len()
        && p.iter().zip(&o).all(|(p, o)| {
            p == o || (*p == "*" && !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Whether `pattern` is a path of the supported model, instance numbers and `*` aside.
pub fn supported(pattern: &str) -> bool {
    let generic = schema::generic(pattern.strip_suffix('.').unwrap_or(pattern));
    let (object, table) = (format!("{generic}."), format!("{generic}.{{i}}."));
    schema::OBJECTS
        .iter()
        .any(|o| o.path == object || o.path == table)
}

impl Snapshot {
    /// `Get` of one path: each object instance it resolves to, with the parameters it names
    /// (all of them, to `max_depth` levels below, for an object path ending in `.`).
    pub fn get(&self, path: &str, max_depth: u32) -> Result<Found, UspError> {
        check_syntax(path)?;
        let wildcard = path.contains('*');
        if path.ends_with('.') {
            if !supported(path) {
                return Err(UspError::invalid_path(path));
            }
            let depth = segments(path).len();
            let found: Vec<_> = self
                .objects
                .iter()
                .filter(|(o, params)| {
                    under(path, o)
                        && !params.is_empty()
                        && (max_depth == 0 || segments(o).len() - depth < max_depth as usize)
                })
                .map(|(o, params)| {
                    (
                        o.clone(),
                        params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )
                })
                .collect();
            let exists = self.objects.keys().any(|o| under(path, o));
            if !exists && !wildcard && !schema::is_table(path) {
                return Err(UspError::missing(path));
            }
            return Ok(found);
        }
        let (object, param) = path
            .rsplit_once('.')
            .map(|(o, p)| (format!("{o}."), p))
            .ok_or_else(|| UspError::invalid_path(path))?;
        let known = supported(&object)
            && schema::object_of(&object.replace('*', "1"))
                .is_some_and(|o| o.param(param).is_some());
        if !known {
            return Err(UspError::invalid_path(path));
        }
        let n = segments(&object).len();
        let found: Vec<_> = self
            .objects
            .iter()
            .filter(|(o, _)| segments(o).len() == n && under(&object, o))
            .filter_map(|(o, params)| {
                params
                    .get(param)
                    .map(|v| (o.clone(), vec![(param.to_string(), v.clone())]))
            })
            .collect();
        if found.is_empty() && !wildcard {
            return Err(UspError::missing(&object));
        }
        Ok(found)
    }

    /// `GetInstances` of one object or table path: each instance below it (only the first
    /// level below with `first_level_only`), with its unique keys.
    pub fn instances(&self, path: &str, first_level_only: bool) -> Result<Found, UspError> {
        check_syntax(path)?;
        if !path.ends_with('.') || !supported(path) {
            return Err(UspError::invalid_path(path));
        }
        let depth = segments(path).len();
        let mut out = Vec::new();
        for (o, params) in &self.objects {
            let segs = segments(o);
            let instance = segs
                .last()
                .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
            if !instance || !under(path, o) {
                continue;
            }
            let numeric = |s: &&&str| s.bytes().all(|b| b.is_ascii_digit());
            let levels = segs
                .get(depth..)
                .unwrap_or(&[])
                .iter()
                .filter(numeric)
                .count();
            if first_level_only && levels != 1 {
                continue;
            }
            let keys = ["Alias", "UUID", "DUID", "EUID", "ID", "Recipient"]
                .iter()
                .filter_map(|k| params.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            out.push((o.clone(), keys));
        }
        if out.is_empty()
            && !path.contains('*')
            && !schema::is_table(path)
            && !self.objects.contains_key(path)
        {
            return Err(UspError::missing(path));
        }
        Ok(out)
    }

    /// The values of the parameters `refs` (parameter or object paths) name, for value
    /// change notifications.
    pub fn watched(&self, refs: &[String]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for r in refs {
            if let Ok(found) = self.get(r, 0) {
                for (object, params) in found {
                    for (k, v) in params {
                        out.insert(format!("{object}{k}"), v);
                    }
                }
            }
        }
        out
    }

    /// The instance paths under the tables `refs` name, for creation and deletion
    /// notifications.
    pub fn instances_under(&self, refs: &[String]) -> std::collections::BTreeSet<String> {
        refs.iter()
            .filter(|r| r.ends_with('.'))
            .flat_map(|r| self.instances(r, false).unwrap_or_default())
            .map(|(o, _)| o)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        for (path, params) in [
            ("Device.", vec![]),
            (
                "Device.SoftwareModules.",
                vec![("ExecutionUnitNumberOfEntries", "2")],
            ),
            (
                "Device.SoftwareModules.ExecutionUnit.1.",
                vec![("Status", "Active"), ("Alias", "cpe-eu-1")],
            ),
            (
                "Device.SoftwareModules.ExecutionUnit.3.",
                vec![("Status", "Idle"), ("Alias", "cpe-eu-3")],
            ),
        ] {
            s.objects.insert(
                path.into(),
                params
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            );
        }
        s
    }

    #[test]
    fn paths_resolve_to_instances_with_wildcards_and_numbers() {
        let s = snap();
        let all = s
            .get("Device.SoftwareModules.ExecutionUnit.*.Status", 0)
            .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].0, "Device.SoftwareModules.ExecutionUnit.3.");
        assert_eq!(all[1].1, vec![("Status".to_string(), "Idle".to_string())]);
        let one = s.get("Device.SoftwareModules.ExecutionUnit.1.", 0).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1.len(), 2);
        let tree = s.get("Device.SoftwareModules.", 0).unwrap();
        assert_eq!(tree.len(), 3, "the object and both instances: {tree:?}");
        let shallow = s.get("Device.SoftwareModules.", 1).unwrap();
        assert_eq!(shallow.len(), 1);
        let none = s.get("Device.LocalAgent.Subscription.*.ID", 0).unwrap();
        assert!(none.is_empty(), "a wildcard may match nothing");
    }

    #[test]
    fn bad_paths_are_refused_with_the_rule() {
        let s = snap();
        let e = s
            .get("Device.SoftwareModules.ExecutionUnit.2.Status", 0)
            .unwrap_err();
        assert_eq!(e.code, 7026);
        assert!(
            e.message.contains("ExecutionUnit.2.` does not exist"),
            "{e:?}"
        );
        let e = s.get("Device.SoftwareModules.Nope.", 0).unwrap_err();
        assert_eq!(e.code, 7026);
        assert!(e.message.contains("not in this agent's data model"));
        let e = s
            .get("Device.SoftwareModules.ExecutionUnit.1.Colour", 0)
            .unwrap_err();
        assert_eq!(e.code, 7026);
        let e = s
            .get(
                "Device.SoftwareModules.ExecutionUnit.[Status==\"Idle\"].",
                0,
            )
            .unwrap_err();
        assert_eq!(e.code, 7008);
        let e = s.get("Device..X", 0).unwrap_err();
        assert_eq!(e.code, 7008);
        let e = s.get("Other.Thing", 0).unwrap_err();
        assert_eq!(e.code, 7008);
    }

    #[test]
    fn instances_list_the_table_with_their_keys() {
        let s = snap();
        let eus = s
            .instances("Device.SoftwareModules.ExecutionUnit.", true)
            .unwrap();
        assert_eq!(eus.len(), 2);
        assert_eq!(
            eus[0].1,
            vec![("Alias".to_string(), "cpe-eu-1".to_string())]
        );
        let below = s.instances("Device.SoftwareModules.", false).unwrap();
        assert_eq!(below.len(), 2);
        assert_eq!(
            s.instances("Device.SoftwareModules.", true).unwrap().len(),
            2
        );
        let itself = s
            .instances("Device.SoftwareModules.ExecutionUnit.3.", false)
            .unwrap();
        assert_eq!(itself.len(), 1);
        let e = s
            .instances("Device.SoftwareModules.ExecutionUnit.2.", false)
            .unwrap_err();
        assert_eq!(e.code, 7026);
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let u = uuid_of("acme/probe");
        assert_eq!(u, uuid_of("acme/probe"));
        assert_ne!(u, uuid_of("vodco/probe"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "5");
    }
}
