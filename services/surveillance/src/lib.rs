//! acme's remote surveillance (issue 16): the camera on the LAN sends its pictures to the
//! service (`PUT /snapshot`, as IP cameras push to a recorder: a service may not open
//! connections to LAN hosts, the gateway's default deny); the service records them in its
//! storage within a retention rule (the newest N pictures, at most B bytes), raises a motion
//! event when a picture changed, shows the latest on a page for the TV on the LAN, and serves
//! the same page on the WAN side only behind the household's login.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at_ms: u64,
    pub picture: String,
    pub what: String,
}

/// The recorder: pictures in `DIR/pictures/MS.jpg`, the household's password hash in
/// `DIR/password`.
pub struct Recorder {
    pub dir: PathBuf,
    pub keep: usize,
    pub max_bytes: u64,
    last_hash: Option<[u8; 32]>,
    pub events: VecDeque<Event>,
}

/// Why a picture was refused.
#[derive(Debug, PartialEq)]
pub enum Refused {
    NotJpeg,
    TooLarge(u64),
    Io(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotJpeg => write!(f, "not a JPEG picture (it must start with FF D8)"),
            Refused::TooLarge(max) => write!(f, "a picture may take at most {max} bytes"),
            Refused::Io(e) => write!(f, "cannot record the picture: {e}"),
        }
    }
}

impl Recorder {
    pub fn open(dir: &Path, keep: usize, max_bytes: u64) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir.join("pictures"))?;
        let mut r = Recorder {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            max_bytes,
            last_hash: None,
            events: VecDeque::new(),
        };
        r.last_hash = r
            .pictures()
            .last()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| Sha256::digest(&b).into());
        Ok(r)
    }

    /// The recorded pictures, oldest first.
    pub fn pictures(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(self.dir.join("pictures"))
            .map(|e| {
                e.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
                    .collect()
            })
            .unwrap_or_default();
        all.sort();
        all
    }

    /// Records one picture; a motion event when it differs from the one before.
    pub fn record(&mut self, jpeg: &[u8], at_ms: u64) -> Result<Option<Event>, Refused> {
        if !jpeg.starts_with(&[0xff, 0xd8]) {
            return Err(Refused::NotJpeg);
        }
        if jpeg.len() as u64 > self.max_bytes {
            return Err(Refused::TooLarge(self.max_bytes));
        }
        let name = format!("{at_ms:015}.jpg");
        std::fs::write(self.dir.join("pictures").join(&name), jpeg)
            .map_err(|e| Refused::Io(e.to_string()))?;
        let hash: [u8; 32] = Sha256::digest(jpeg).into();
        let changed = self.last_hash.is_some_and(|h| h != hash);
        self.last_hash = Some(hash);
        self.prune();
        if !changed {
            return Ok(None);
        }
        let event = Event {
            at_ms,
            picture: name,
            what: "motion: the picture changed".into(),
        };
        self.events.push_back(event.clone());
        while self.events.len() > 100 {
            self.events.pop_front();
        }
        Ok(Some(event))
    }

    /// The retention rule: the newest `keep` pictures, together at most `max_bytes`.
    fn prune(&self) {
        let mut all = self.pictures();
        while all.len() > self.keep {
            let _ = std::fs::remove_file(all.remove(0));
        }
        let size = |p: &PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        while all.len() > 1 && all.iter().map(size).sum::<u64>() > self.max_bytes {
            let _ = std::fs::remove_file(all.remove(0));
        }
    }

    pub fn latest(&self) -> Option<Vec<u8>> {
        std::fs::read(self.pictures().last()?).ok()
    }

    pub fn set_password(&self, password: &str) -> Result<(), String> {
        if password.chars().count() < 8 {
            return Err("a password has at least 8 characters".into());
        }
        std::fs::write(self.dir.join("password"), hash_password(password))
            .map_err(|e| e.to_string())
    }

    /// `None` while the household has set no password; else whether `password` is it.
    pub fn check_password(&self, password: &str) -> Option<bool> {
        let stored = std::fs::read_to_string(self.dir.join("password")).ok()?;
        Some(stored.trim() == hash_password(password))
    }

    pub fn page(&self) -> String {
        let mut events = String::new();
        for e in self.events.iter().rev().take(20) {
            events.push_str(&format!("<li>{} ({})</li>\n", e.what, e.picture));
        }
        format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Camera</title>\
             <meta http-equiv=\"refresh\" content=\"5\"></head><body>\n<h1>Camera</h1>\n\
             <img src=\"latest.jpg\" alt=\"the latest picture\">\n\
             <p>{} pictures kept (the newest {}, at most {} bytes).</p>\n\
             <h2>Motion</h2>\n<ul>\n{events}</ul>\n</body></html>\n",
            self.pictures().len(),
            self.keep,
            self.max_bytes
        )
    }
}

/// Failed remote logins: after `MAX_FAILURES` within a minute, every attempt is refused until
/// the oldest of them is a minute old (guessing the household's password from the WAN stays
/// slow).
#[derive(Debug, Default)]
pub struct Throttle {
    failures: VecDeque<u64>,
}

pub const MAX_FAILURES: usize = 5;
const WINDOW_MS: u64 = 60_000;

impl Throttle {
    /// Whether an attempt may be judged now.
    pub fn allowed(&mut self, now_ms: u64) -> bool {
        while self
            .failures
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= WINDOW_MS)
        {
            self.failures.pop_front();
        }
        self.failures.len() < MAX_FAILURES
    }

    pub fn failed(&mut self, now_ms: u64) {
        self.failures.push_back(now_ms);
    }
}

/// The stored form of a password: SHA-256 over a fixed context and the password.
fn hash_password(password: &str) -> String {
    hex::encode(Sha256::digest(
        format!("shg-surveillance:{password}").as_bytes(),
    ))
}

/// The password of an `Authorization: Basic` header (any user name).
pub fn basic_password(header: &str) -> Option<String> {
    let encoded = header.strip_prefix("Basic ")?.trim();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut count, mut out) = (0u32, 0, Vec::new());
    for c in encoded.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | ALPHABET.iter().position(|a| *a == c)? as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = &[0xff, 0xd8, 1, 2, 3];
    const B: &[u8] = &[0xff, 0xd8, 9, 9, 9];

    #[test]
    fn a_changed_picture_is_motion_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::open(dir.path(), 3, 1 << 20).unwrap();
        assert_eq!(r.record(A, 1).unwrap(), None);
        assert_eq!(
            r.record(A, 2).unwrap(),
            None,
            "the same picture is no motion"
        );
        let motion = r.record(B, 3).unwrap().expect("motion");
        assert_eq!(motion.picture, "000000000000003.jpg");
        r.record(B, 4).unwrap();
        r.record(B, 5).unwrap();
        let kept: Vec<String> = r
            .pictures()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            kept,
            [
                "000000000000003.jpg",
                "000000000000004.jpg",
                "000000000000005.jpg"
            ]
        );
        assert_eq!(r.latest().unwrap(), B);
        assert_eq!(r.record(b"GIF89a", 6), Err(Refused::NotJpeg));
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Recorder::open(dir.path(), 100, 12).unwrap();
        for t in 1..=4 {
            r.record(A, t).unwrap();
        }
        assert_eq!(r.pictures().len(), 2, "two 5-byte pictures fit in 12 bytes");
        assert_eq!(
            r.record(&[0xff, 0xd8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 9),
            Err(Refused::TooLarge(12))
        );
    }

    #[test]
    fn guessing_is_slowed_to_five_tries_a_minute() {
        let mut t = Throttle::default();
        for i in 0..MAX_FAILURES as u64 {
            assert!(t.allowed(i));
            t.failed(i);
        }
        assert!(!t.allowed(10), "the sixth try within the minute is refused");
        assert!(!t.allowed(59_999));
        assert!(t.allowed(60_000), "the oldest failure is a minute old");
    }

    #[test]
    fn the_login_is_the_households_password() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder::open(dir.path(), 3, 1 << 20).unwrap();
        assert_eq!(
            r.check_password("anything"),
            None,
            "no password set: nobody gets in"
        );
        assert!(r.set_password("short").is_err());
        r.set_password("correct horse").unwrap();
        assert_eq!(r.check_password("correct horse"), Some(true));
        assert_eq!(r.check_password("wrong"), Some(false));
        // "household:correct horse"
        assert_eq!(
            basic_password("Basic aG91c2Vob2xkOmNvcnJlY3QgaG9yc2U="),
            Some("correct horse".into())
        );
        assert_eq!(basic_password("Bearer x"), None);
    }
}
