//! What one controller process remembers of each gateway between its calls, so that the
//! steady state of a large fleet — long-polls that find nothing new — costs no database work.
//!
//! Nothing here is needed by another process or survives a restart: forgetting it only costs
//! the queries it spares. The ETag of a gateway's desired state is kept with the change
//! generation it was computed at (`Db::subscribe`: bumped by every change the gateways follow,
//! here or, through `LISTEN/NOTIFY`, in another replica); once the generation moves, or after
//! [`ETAG_LIFE`] whatever happened, it is computed again. The same holds for which gateway a
//! certificate stands for (a revocation is a change) and for the last report whose decisions
//! (deployment outcomes, subscriptions, refusals) this process carried out.

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
    /// Enrolled gateways by certificate fingerprint, with the certificate's expiry (ms).
    gateways: Mutex<HashMap<String, (u64, Instant, String, i64)>>,
    /// The digest of each gateway's last report whose decisions this process carried out.
    judged: Mutex<HashMap<String, (u64, Instant, String)>>,
}

/// A value kept with the generation and time it was learnt, valid while both hold.
fn fresh<'a>(
    map: &'a HashMap<String, (u64, Instant, String)>,
    key: &str,
    generation: u64,
) -> Option<&'a str> {
    map.get(key)
        .filter(|(g, at, _)| *g == generation && at.elapsed() < ETAG_LIFE)
        .map(|(_, _, v)| v.as_str())
}

fn keep(
    map: &Mutex<HashMap<String, (u64, Instant, String)>>,
    key: &str,
    generation: u64,
    value: &str,
) {
    map.lock().unwrap_or_else(|e| e.into_inner()).insert(
        key.to_string(),
        (generation, Instant::now(), value.to_string()),
    );
}

impl Memo {
    /// The gateway id of an unrevoked certificate, if learnt at `generation` (a revocation
    /// is a change, so it ends every entry).
    /// An expired certificate is forgotten at once.
    pub fn gateway(&self, fingerprint: &str, generation: u64, now_ms: i64) -> Option<String> {
        let map = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        map.get(fingerprint)
            .filter(|(g, at, _, expires_ms)| {
                *g == generation && at.elapsed() < ETAG_LIFE && now_ms < *expires_ms
            })
            .map(|(_, _, id, _)| id.clone())
    }

    pub fn remember_gateway(&self, fingerprint: &str, generation: u64, id: &str, expires_ms: i64) {
        self.gateways
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                fingerprint.to_string(),
                (generation, Instant::now(), id.to_string(), expires_ms),
            );
    }

    /// Whether this process carried out the decisions of a report with `digest` from
    /// `gateway` at `generation`.
    pub fn judged(&self, gateway: &str, generation: u64, digest: &str) -> bool {
        let map = self.judged.lock().unwrap_or_else(|e| e.into_inner());
        fresh(&map, gateway, generation) == Some(digest)
    }

    pub fn remember_judged(&self, gateway: &str, generation: u64, digest: &str) {
        keep(&self.judged, gateway, generation, digest);
    }

    /// Whether `gateway`'s desired state is known to still carry `etag` at `generation`.
    pub fn unchanged(&self, gateway: &str, generation: u64, etag: Option<&str>) -> bool {
        let Some(etag) = etag else { return false };
        let etags = self.etags.lock().unwrap_or_else(|e| e.into_inner());
        fresh(&etags, gateway, generation) == Some(etag)
    }

    /// Remembers the ETag computed for `gateway` at `generation` (read before computing).
    pub fn remember(&self, gateway: &str, generation: u64, etag: &str) {
        keep(&self.etags, gateway, generation, etag);
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
        for map in [&self.etags, &self.judged] {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(gateway);
        }
        self.gateways
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, _, id, _)| id != gateway);
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
    fn a_certificate_is_known_until_the_next_change_its_expiry_or_a_revocation() {
        let memo = Memo::default();
        memo.remember_gateway("f1", 3, "gw-1", 1_000);
        assert_eq!(memo.gateway("f1", 3, 999).as_deref(), Some("gw-1"));
        assert_eq!(memo.gateway("f1", 3, 1_000), None, "expired");
        assert_eq!(memo.gateway("f1", 4, 999), None);
        memo.forget("gw-1");
        assert_eq!(memo.gateway("f1", 3, 999), None);
        memo.remember_judged("gw-1", 3, "d");
        assert!(memo.judged("gw-1", 3, "d"));
        assert!(!memo.judged("gw-1", 3, "e"));
        assert!(!memo.judged("gw-1", 4, "d"));
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
