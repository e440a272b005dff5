//! The gateway's TR-369 (USP) agent: the ISP's USP controller manages SHG through the
//! standard `Device.SoftwareModules.` data model, over MQTT.
//!
//! One controller (`[usp] controller_id` in `gateway.toml`) acts as the operator realm: every
//! request goes through the same agent operations as the API — signature, trust and catalog
//! checks, admission, audit — and the data model shows no provider's logs or data. Records
//! from any other endpoint are dropped.
//!
//! - [`schema`]: the supported objects, parameters, commands and events.
//! - [`model`]: the values at one moment, and which objects a path names.
//! - [`book`]: instance numbers and subscriptions, kept in `STATE/usp.json`.
//! - `handle`: one request message in, its response out.
//! - `watch`: value-change, creation and deletion notifications.
//! - `mqtt`: the message transfer protocol.

pub mod book;
mod handle;
pub mod model;
mod mqtt;
pub mod schema;
mod watch;

use std::sync::{Arc, Mutex};

use agent::{Agent, UspConfig};
use rusp_lib::usp::Msg;
use rusp_lib::usp_builder::{MsgBuilder, NotifyBuilder, RecordBuilder};

use book::Book;
use model::Snapshot;

/// The largest USP message the agent reads; a larger one gets an error (7000). MQTT
/// packets above [`MAX_PACKET`] are refused by the transport itself.
pub const MAX_MESSAGE: usize = 64 << 10;
pub const MAX_PACKET: usize = 1 << 20;

/// The USP versions this agent speaks.
pub const VERSIONS: &str = "1.0,1.1,1.2,1.3,1.4";

/// The running USP agent.
pub struct Usp {
    agent: Arc<Agent>,
    cfg: UspConfig,
    book: Mutex<Book>,
    /// Encoded records for the controller's topic.
    out: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    /// Wakes the watcher after a change, so notifications need not wait for its next round.
    wake: tokio::sync::Notify,
    /// At most this many messages handled at once.
    busy: tokio::sync::Semaphore,
    /// The last `Device.LocalAgent.Request.{i}` instance number given.
    next_request: std::sync::atomic::AtomicU32,
    /// The last notification message id given.
    next_message: std::sync::atomic::AtomicU64,
}

/// Starts the USP agent of `agent` if `gateway.toml` has a `[usp]` table: it connects to the
/// broker (and keeps reconnecting) in the background.
pub fn spawn(agent: &Arc<Agent>) {
    let Some(cfg) = agent.usp_config().cloned() else {
        return;
    };
    let (out, rx) = tokio::sync::mpsc::unbounded_channel();
    let usp = Arc::new(Usp {
        book: Mutex::new(Book::load(agent.state_dir())),
        agent: agent.clone(),
        cfg,
        out,
        wake: tokio::sync::Notify::new(),
        busy: tokio::sync::Semaphore::new(8),
        next_request: std::sync::atomic::AtomicU32::new(0),
        next_message: std::sync::atomic::AtomicU64::new(0),
    });
    eprintln!(
        "shg gateway: USP agent {} on {} (controller {})",
        usp.cfg.endpoint_id, usp.cfg.broker, usp.cfg.controller_id
    );
    tokio::spawn(watch::run(usp.clone()));
    tokio::spawn(mqtt::run(usp, rx));
}

impl Usp {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The data model now.
    fn snapshot(&self) -> Result<Snapshot, agent::AgentError> {
        let mut book = self.book();
        self.snapshot_with(&mut book)
    }

    fn snapshot_with(&self, book: &mut Book) -> Result<Snapshot, agent::AgentError> {
        let snap = model::snapshot(&self.agent, &self.cfg.endpoint_id, book);
        if book.dirty {
            book.save();
        }
        snap
    }

    /// Sends `body` to the controller as a message of its own (a notification).
    fn notify(&self, body: rusp_lib::usp::Body) {
        let id = format!(
            "shg-notify-{}",
            self.next_message
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        match MsgBuilder::new().with_msg_id(id).with_body(body).build() {
            Ok(msg) => self.send(&self.cfg.controller_id.clone(), "1.3", &msg),
            Err(e) => tracing::error!("cannot build a USP notification: {e}"),
        }
    }

    /// Sends one notification of `subscription`.
    fn notify_subscriber(&self, builder: NotifyBuilder) {
        match builder.build() {
            Ok(body) => self.notify(body),
            Err(e) => tracing::error!("cannot build a USP notification: {e}"),
        }
    }

    /// Wraps `msg` in a record to `to_id` and queues it for the controller's topic.
    fn send(&self, to_id: &str, version: &str, msg: &Msg) {
        let record = RecordBuilder::new()
            .with_version(version.to_string())
            .with_to_id(to_id.to_string())
            .with_from_id(self.cfg.endpoint_id.clone())
            .with_no_session_context_payload(msg)
            .build()
            .and_then(|r| r.to_vec());
        match record {
            Ok(bytes) => {
                let _ = self.out.send(bytes);
            }
            Err(e) => tracing::error!("cannot encode a USP record: {e}"),
        }
    }

    /// `Device.Boot!` to the subscriptions that survived the restart and ask for it (an
    /// agent start is the gateway's boot as the controller sees it).
    fn boot(&self) {
        let ids: Vec<String> = self
            .book()
            .subscriptions
            .iter()
            .filter(|s| {
                s.enable
                    && s.notif_type == "Event"
                    && s.references()
                        .iter()
                        .any(|r| r == "Device.Boot!" || r == "Device.")
            })
            .map(|s| s.id.clone())
            .collect();
        let args: std::collections::HashMap<String, String> = [
            ("Cause", "LocalReboot"),
            ("CommandKey", ""),
            ("FirmwareUpdated", "false"),
            ("ParameterMap", "{}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for id in ids {
            self.notify_subscriber(NotifyBuilder::new(id).with_event(
                "Device.".to_string(),
                "Boot!".to_string(),
                args.clone(),
            ));
        }
    }

    fn audit(&self, action: &str, status: u16) {
        let who = format!("usp:{}", self.cfg.controller_id);
        if let Err(e) = self.agent.audit(&who, action, status) {
            tracing::error!("cannot write the audit log: {e}");
        }
    }
}
