//! What the USP agent keeps between messages and across restarts (`STATE/usp.json`): the
//! instance number of each service's deployment and execution unit, and the controller's
//! subscriptions (the persistent ones survive a restart).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::UspError;
use crate::schema;

pub const SUBSCRIPTIONS: &str = "Device.LocalAgent.Subscription.";

/// The kinds of notification a subscription may ask for.
pub const NOTIF_TYPES: &[&str] = &[
    "ValueChange",
    "ObjectCreation",
    "ObjectDeletion",
    "OperationComplete",
    "Event",
];

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Book {
    #[serde(skip)]
    file: PathBuf,
    /// Whether something changed since the last save.
    #[serde(skip)]
    pub dirty: bool,
    next_unit: u32,
    /// Instance number by service id (`provider/name`).
    units: BTreeMap<String, u32>,
    next_subscription: u32,
    pub subscriptions: Vec<Subscription>,
    /// Asynchronous commands still running (`Device.LocalAgent.Request.{i}.`): each is
    /// listed from its `Operate` until its completion is notified, not kept across restarts.
    #[serde(skip)]
    pub requests: Vec<Request>,
    /// Each service's description and source, by id, for the version they were read at.
    #[serde(skip)]
    pub described: BTreeMap<String, (String, String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub instance: u32,
    pub originator: String,
    pub command: String,
    pub command_key: String,
}

impl Request {
    pub fn path(&self) -> String {
        format!("Device.LocalAgent.Request.{}.", self.instance)
    }

    pub fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Originator", self.originator.clone()),
            ("Command", self.command.clone()),
            ("CommandKey", self.command_key.clone()),
            ("Status", "Active".into()),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub instance: u32,
    pub alias: String,
    pub enable: bool,
    pub recipient: String,
    pub id: String,
    pub created: String,
    pub notif_type: String,
    /// Comma-separated paths.
    pub reference_list: String,
    pub persistent: bool,
    pub time_to_live: u32,
    pub notif_retry: bool,
    pub notif_expiration: u32,
    /// What the notifications are relative to: the watched values and instances as last
    /// notified (set when the subscription is made or changed).
    #[serde(skip)]
    pub seen: Option<Seen>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub values: BTreeMap<String, String>,
    pub instances: BTreeSet<String>,
}

impl Book {
    /// The book in `state_dir`, with the persistent subscriptions of the last run.
    pub fn load(state_dir: &Path) -> Book {
        let file = state_dir.join("usp.json");
        let mut book: Book = std::fs::read(&file)
            .ok()
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(book) => Some(book),
                Err(e) => {
                    tracing::warn!("{}: unreadable, starting afresh: {e}", file.display());
                    None
                }
            })
            .unwrap_or_default();
        book.subscriptions.retain(|s| s.persistent);
        book.file = file;
        book
    }

    /// Writes the book (the persistent subscriptions only) beside the agent's state.
    pub fn save(&mut self) {
        self.dirty = false;
        let kept = Book {
            file: PathBuf::new(),
            dirty: false,
            next_unit: self.next_unit,
            units: self.units.clone(),
            next_subscription: self.next_subscription,
            subscriptions: self
                .subscriptions
                .iter()
                .filter(|s| s.persistent)
                .cloned()
                .collect(),
            requests: Vec::new(),
            described: BTreeMap::new(),
        };
        let tmp = self.file.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&kept)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = written {
            tracing::error!("cannot write {}: {e}", self.file.display());
        }
    }

    /// The instance number of a service's units, given on first sight and never reused.
    pub fn unit(&mut self, id: &str) -> u32 {
        if let Some(i) = self.units.get(id) {
            return *i;
        }
        self.next_unit += 1;
        self.dirty = true;
        self.units.insert(id.to_string(), self.next_unit);
        self.next_unit
    }

    /// Drops the numbers of services that are gone.
    pub fn forget_except<'a>(&mut self, ids: impl Iterator<Item = &'a str>) {
        let present: BTreeSet<&str> = ids.collect();
        let before = self.units.len();
        self.units.retain(|id, _| present.contains(id.as_str()));
        self.described.retain(|id, _| present.contains(id.as_str()));
        self.dirty |= self.units.len() != before;
    }

    /// `Add Device.LocalAgent.Subscription.` with `settings`: checks every name, type and
    /// value first, so a refusal adds nothing.
    pub fn add_subscription(
        &mut self,
        settings: &[(String, String)],
        now: String,
    ) -> Result<&mut Subscription, UspError> {
        let instance = self.next_subscription + 1;
        let mut sub = Subscription {
            instance,
            alias: format!("cpe-sub-{instance}"),
            enable: false,
            recipient: "Device.LocalAgent.Controller.1".into(),
            id: format!("shg-{instance}"),
            created: now,
            notif_type: String::new(),
            reference_list: String::new(),
            persistent: false,
            time_to_live: 0,
            notif_retry: false,
            notif_expiration: 0,
            seen: None,
        };
        for (param, value) in settings {
            sub.set(param, value)?;
        }
        if self
            .subscriptions
            .iter()
            .any(|s| s.id == sub.id || s.alias == sub.alias)
        {
            return Err(UspError::new(
                7025,
                format!(
                    "a subscription with ID `{}` or Alias `{}` exists already; pick another or delete it first",
                    sub.id, sub.alias
                ),
            ));
        }
        sub.check()?;
        self.next_subscription = instance;
        self.subscriptions.push(sub);
        Ok(self.subscriptions.last_mut().expect("just pushed"))
    }

    pub fn subscription_mut(&mut self, path: &str) -> Option<&mut Subscription> {
        self.subscriptions.iter_mut().find(|s| s.path() == path)
    }
}

impl Subscription {
    pub fn path(&self) -> String {
        format!("{SUBSCRIPTIONS}{}.", self.instance)
    }

    pub fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Alias", self.alias.clone()),
            ("Enable", self.enable.to_string()),
            ("Recipient", self.recipient.clone()),
            ("ID", self.id.clone()),
            ("CreationDate", self.created.clone()),
            ("NotifType", self.notif_type.clone()),
            ("ReferenceList", self.reference_list.clone()),
            ("Persistent", self.persistent.to_string()),
            ("TimeToLive", self.time_to_live.to_string()),
            ("NotifRetry", self.notif_retry.to_string()),
            ("NotifExpiration", self.notif_expiration.to_string()),
        ]
    }

    pub fn references(&self) -> Vec<String> {
        self.reference_list
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Sets one parameter, checking its name, that it is writable and its type.
    pub fn set(&mut self, param: &str, value: &str) -> Result<(), UspError> {
        let object = &schema::OBJECTS
            .iter()
            .find(|o| o.path == "Device.LocalAgent.Subscription.{i}.")
            .expect("in the schema");
        let path = format!("{SUBSCRIPTIONS}{{i}}.{param}");
        let def = object.param(param).ok_or_else(|| {
            UspError::new(
                7010,
                format!("`{path}` is not a parameter of a subscription"),
            )
        })?;
        if !def.writable {
            return Err(UspError::new(7013, format!("`{path}` is read-only")));
        }
        if !def.ty.accepts(value) {
            return Err(UspError::new(
                7011,
                format!(
                    "`{path}` is of type {}; `{value}` is not one",
                    def.ty.name()
                ),
            ));
        }
        let boolean = matches!(value, "true" | "1");
        match param {
            "Alias" => self.alias = value.to_string(),
            "Enable" => self.enable = boolean,
            "Recipient" => self.recipient = value.to_string(),
            "ID" => self.id = value.to_string(),
            "NotifType" => {
                if !NOTIF_TYPES.contains(&value) {
                    return Err(UspError::new(
                        7012,
                        format!(
                            "`{path}`: `{value}` is not a notification type; use one of {}",
                            NOTIF_TYPES.join(", ")
                        ),
                    ));
                }
                self.notif_type = value.to_string();
            }
            "ReferenceList" => self.reference_list = value.to_string(),
            "Persistent" => self.persistent = boolean,
            "TimeToLive" => self.time_to_live = value.parse().unwrap_or(0),
            "NotifRetry" => self.notif_retry = boolean,
            "NotifExpiration" => self.notif_expiration = value.parse().unwrap_or(0),
            _ => unreachable!("every writable parameter is handled"),
        }
        self.seen = None;
        Ok(())
    }

    /// What must hold once all parameters are set.
    pub fn check(&self) -> Result<(), UspError> {
        if self.id.is_empty() {
            return Err(UspError::new(7012, "a subscription needs a non-empty ID"));
        }
        if self.enable && self.notif_type.is_empty() {
            return Err(UspError::new(
                7021,
                "an enabled subscription needs its NotifType (ValueChange, ObjectCreation, ObjectDeletion, OperationComplete or Event)",
            ));
        }
        for r in self.references() {
            crate::model::check_syntax(&r)?;
            let target = r.trim_end_matches("()").trim_end_matches('!');
            let object = match target.rsplit_once('.') {
                Some((o, _)) if !target.ends_with('.') => format!("{o}."),
                _ => target.to_string(),
            };
            if !crate::model::supported(&object) {
                return Err(UspError::invalid_path(&r));
            }
        }
        Ok(())
    }
}
