//! Value-change, object-creation and object-deletion notifications: while a subscription
//! asks for one, the watcher compares the data model with what it last notified, once a
//! second and right after a change the agent made for the controller.

use std::sync::Arc;
use std::time::Duration;

use rusp_lib::usp_builder::NotifyBuilder;

use crate::book::Seen;
use crate::Usp;

const ROUND: Duration = Duration::from_secs(1);

fn watched(kind: &str) -> bool {
    matches!(kind, "ValueChange" | "ObjectCreation" | "ObjectDeletion")
}

pub(crate) async fn run(usp: Arc<Usp>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(ROUND) => {}
            () = usp.wake.notified() => {}
        }
        let notes = {
            let mut book = usp.book();
            if !book
                .subscriptions
                .iter()
                .any(|s| s.enable && watched(&s.notif_type))
            {
                continue;
            }
            let snap = match usp.snapshot_with(&mut book) {
                Ok(snap) => snap,
                Err(e) => {
                    tracing::warn!("USP: cannot read the data model for notifications: {e}");
                    continue;
                }
            };
            let mut notes = Vec::new();
            for sub in book
                .subscriptions
                .iter_mut()
                .filter(|s| s.enable && watched(&s.notif_type))
            {
                let refs = sub.references();
                let now = Seen {
                    values: if sub.notif_type == "ValueChange" {
                        snap.watched(&refs)
                    } else {
                        Default::default()
                    },
                    instances: if sub.notif_type == "ValueChange" {
                        Default::default()
                    } else {
                        snap.instances_under(&refs)
                    },
                };
                if let Some(before) = &sub.seen {
                    let id = || NotifyBuilder::new(sub.id.clone());
                    for (path, value) in &now.values {
                        // A new object's parameters are its creation, not a change.
                        if before.values.get(path).is_some_and(|old| old != value) {
                            notes.push(id().with_value_change(path.clone(), value.clone()));
                        }
                    }
                    if sub.notif_type == "ObjectCreation" {
                        for path in now.instances.difference(&before.instances) {
                            let keys = snap
                                .instances(path, false)
                                .ok()
                                .and_then(|found| found.into_iter().find(|(p, _)| p == path))
                                .map(|(_, keys)| keys.into_iter().collect())
                                .unwrap_or_default();
                            notes.push(id().with_object_creation(path.clone(), keys));
                        }
                    }
                    if sub.notif_type == "ObjectDeletion" {
                        for path in before.instances.difference(&now.instances) {
                            notes.push(id().with_object_deletion(path.clone()));
                        }
                    }
                }
                sub.seen = Some(now);
            }
            notes
        };
        for note in notes {
            usp.notify_subscriber(note);
        }
    }
}
