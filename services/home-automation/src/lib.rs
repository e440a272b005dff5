//! The energy provider's home automation (issue 16, provider `voltwise`): the home's devices
//! publish their power to an MQTT broker the service embeds (`home/DEVICE/power`, watts); the
//! service keeps their history in its own storage, applies the household's rule (a device
//! above the power limit is told `off` on `home/DEVICE/set`), shows a page to the household,
//! and sends the provider only what the household allows: aggregates by default.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub watts: f64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub at_ms: u64,
    pub device: String,
    pub what: String,
}

/// What leaves the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// How many devices report and their total power; no device is named.
    Aggregates,
    /// Each device's last reading too, when the household allows it.
    Readings,
}

/// The home as the service knows it.
#[derive(Debug)]
pub struct Home {
    pub limit_w: f64,
    pub latest: BTreeMap<String, Reading>,
    pub actions: Vec<Action>,
    /// `DATA/history.csv`: `ms,device,watts`, one line a reading.
    pub history: PathBuf,
    /// Readings dropped for a bad topic or payload.
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub window_end_ms: u64,
    pub devices: usize,
    pub total_w: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings: Option<BTreeMap<String, f64>>,
}

fn valid_device(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Home {
    pub fn new(limit_w: f64, history: PathBuf) -> Home {
        Home {
            limit_w,
            latest: BTreeMap::new(),
            actions: Vec::new(),
            history,
            rejected: 0,
        }
    }

    /// One message from the broker. Returns the device to switch off, when the reading
    /// crosses the limit (once per crossing).
    pub fn message(&mut self, topic: &str, payload: &[u8], at_ms: u64) -> Option<String> {
        let device = topic
            .strip_prefix("home/")
            .and_then(|rest| rest.strip_suffix("/power"))
            .filter(|d| valid_device(d));
        let watts = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|w| w.is_finite() && *w >= 0.0);
        let (Some(device), Some(watts)) = (device, watts) else {
            self.rejected += 1;
            return None;
        };
        let was_over = self
            .latest
            .get(device)
            .is_some_and(|r| r.watts > self.limit_w);
        self.latest
            .insert(device.to_string(), Reading { watts, at_ms });
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.history)
        {
            let _ = writeln!(f, "{at_ms},{device},{watts}");
        }
        (watts > self.limit_w && !was_over).then(|| {
            self.actions.push(Action {
                at_ms,
                device: device.to_string(),
                what: format!(
                    "switched off: {watts} W is above the {} W limit",
                    self.limit_w
                ),
            });
            device.to_string()
        })
    }

    /// What the provider gets now.
    pub fn report(&self, share: Share, now_ms: u64) -> Report {
        Report {
            window_end_ms: now_ms,
            devices: self.latest.len(),
            total_w: self.latest.values().map(|r| r.watts).sum(),
            readings: (share == Share::Readings).then(|| {
                self.latest
                    .iter()
                    .map(|(d, r)| (d.clone(), r.watts))
                    .collect()
            }),
        }
    }

    /// The household's page.
    pub fn page(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut rows = String::new();
        for (device, r) in &self.latest {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{} W</td></tr>\n",
                esc(device),
                r.watts
            ));
        }
        let mut actions = String::new();
        for a in self.actions.iter().rev().take(20) {
            actions.push_str(&format!("<li>{}: {}</li>\n", esc(&a.device), esc(&a.what)));
        }
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Home energy</title></head><body>\n\
             <h1>Home energy</h1>\n<p>Rule: a device above {} W is switched off. \
             Only totals leave the home unless you allow more.</p>\n\
             <table><tr><th>device</th><th>power</th></tr>\n{rows}</table>\n\
             <h2>What the rule did</h2>\n<ul>\n{actions}</ul>\n</body></html>\n",
            self.limit_w
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (Home, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (Home::new(2000.0, dir.path().join("history.csv")), dir)
    }

    #[test]
    fn a_device_over_the_limit_is_switched_off_once_per_crossing() {
        let (mut h, _dir) = home();
        assert_eq!(h.message("home/plug1/power", b"150", 1), None);
        assert_eq!(
            h.message("home/plug1/power", b"2500", 2),
            Some("plug1".into())
        );
        assert_eq!(
            h.message("home/plug1/power", b"2600", 3),
            None,
            "still over: told once"
        );
        assert_eq!(h.message("home/plug1/power", b"100", 4), None);
        assert_eq!(
            h.message("home/plug1/power", b"2100", 5),
            Some("plug1".into())
        );
        assert_eq!(h.actions.len(), 2);
        let history = std::fs::read_to_string(&h.history).unwrap();
        assert_eq!(history.lines().count(), 5);
        assert!(history.starts_with("1,plug1,150\n"), "{history}");
    }

    #[test]
    fn bad_topics_and_payloads_are_dropped() {
        let (mut h, _dir) = home();
        for (topic, payload) in [
            ("home/plug1/power", &b"lots"[..]),
            ("home/plug1/power", b"-5"),
            ("home/../power", b"5"),
            ("office/plug1/power", b"5"),
            ("home/Plug/power", b"5"),
        ] {
            assert_eq!(h.message(topic, payload, 1), None);
        }
        assert_eq!(h.rejected, 5);
        assert!(h.latest.is_empty());
    }

    #[test]
    fn only_totals_leave_unless_the_household_allows_readings() {
        let (mut h, _dir) = home();
        h.message("home/fridge/power", b"120", 1);
        h.message("home/oven/power", b"1800", 2);
        let r = h.report(Share::Aggregates, 10);
        assert_eq!((r.devices, r.total_w), (2, 1920.0));
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("fridge") && !text.contains("oven"), "{text}");
        let r = h.report(Share::Readings, 10);
        assert_eq!(r.readings.unwrap()["oven"], 1800.0);
    }

    #[test]
    fn the_page_escapes_what_devices_send() {
        let (mut h, _dir) = home();
        h.message("home/plug1/power", b"2500", 1);
        let page = h.page();
        assert!(page.contains("<td>plug1</td><td>2500 W</td>"), "{page}");
        assert!(page.contains("above the 2000 W limit"));
    }
}
