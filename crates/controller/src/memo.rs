//! What one controller process remembers of each gateway between its calls, so that the
//! steady state of a large fleet — long-polls that find nothing new — costs no database work.
//!
//! Nothing here is needed by another process or survives a restart: forgetting it only costs
//! the queries it spares. The ETag of a gateway's desired state is kept with the change
//! generation it was computed at (`Db::subscribe`: bumped by every change the gateways follow,
//! here or, through `LISTEN/NOTIFY`, in another replica); once the generation moves, or after
//! [`ETAG_LIFE`] whatever happened, it is computed again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest an ETag is trusted without recomputing it, in case a change notice was lost.
pub const ETAG_LIFE: Duration = Duration::from_secs(60);

/// How stale a gateway's last contact in the database may be: an offline gateway is one
/// silent for 90 s (by default), so writing each contact more than once in 10 s buys nothing.
pub const CONTACT_EVERY_MS: i64 = 10_000;

#[derive(Default)]
pub struct Memo {
    etags: Mutex<HashMap<String, (u64, Instant, String)>>,
    contacts: Mutex<HashMap<String, i64>>,
}

impl Memo {
    /// Whether `gateway`'s desired state is known to still carry `etag` at `generation`.
    pub fn unchanged(&self, gateway: &str, generation: u64, etag: Option<&str>) -> bool {
        let Some(etag) = etag else { return false };
        let etags = self.etags.lock().unwrap_or_else(|e| e.into_inner());
        etags.get(gateway).is_some_and(|(g, at, known)| {
            *g == generation && at.elapsed() < ETAG_LIFE && known == etag
        })
    }

    /// Remembers the ETag computed for `gateway` at `generation` (read before computing).
    pub fn remember(&self, gateway: &str, generation: u64, etag: &str) {
        let mut etags = self.etags.lock().unwrap_or_else(|e| e.into_inner());
        etags.insert(
            gateway.to_string(),
            (generation, Instant::now(), etag.to_string()),
        );
    }

    /// Whether a contact of `gateway` at `now_ms` should be written (and notes it if so).
    pub fn contact_due(&self, gateway: &str, now_ms: i64) -> bool {
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        match contacts.get(gateway) {
            Some(last) if now_ms - *last < CONTACT_EVERY_MS => false,
            _ => {
                contacts.insert(gateway.to_string(), now_ms);
                true
            }
        }
    }

    /// Notes a contact written by other means (a report).
    pub fn contacted(&self, gateway: &str, now_ms: i64) {
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        contacts.insert(gateway.to_string(), now_ms);
    }

    /// Forgets a gateway (revoked).
    pub fn forget(&self, gateway: &str) {
        self.etags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gateway);
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(gateway);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_holds_only_at_its_generation() {
        let memo = Memo::default();
        assert!(!memo.unchanged("gw", 1, Some("\"a\"")));
        memo.remember("gw", 1, "\"a\"");
        assert!(memo.unchanged("gw", 1, Some("\"a\"")));
        assert!(!memo.unchanged("gw", 1, Some("\"b\"")), "another tag");
        assert!(!memo.unchanged("gw", 2, Some("\"a\"")), "a change since");
        assert!(!memo.unchanged("gw", 1, None), "a first fetch");
        assert!(!memo.unchanged("other", 1, Some("\"a\"")));
        memo.forget("gw");
        assert!(!memo.unchanged("gw", 1, Some("\"a\"")));
    }

    #[test]
    fn contacts_are_written_at_most_every_ten_seconds() {
        let memo = Memo::default();
        assert!(memo.contact_due("gw", 1_000));
        assert!(!memo.contact_due("gw", 5_000));
        assert!(memo.contact_due("gw", 11_000));
        memo.contacted("gw", 20_000);
        assert!(!memo.contact_due("gw", 25_000));
    }
}
