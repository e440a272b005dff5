//! The per-service log: two size-capped segments written by the init (`init/text.rs`), read
//! by the agent.
//!
//! Each line is `<unix millis> <o|e> <text>`. The init appends to the current segment; when it
//! reaches the segment size it truncates the other segment and switches to it. So a service can
//! never use more than two segments of disk for its logs, however chatty it is. Lines longer
//! than 16 KiB are split, so one line cannot hold the init's buffer hostage.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// File names of the two segments in a service's log directory.
pub const SEGMENTS: [&str; 2] = ["log.0", "log.1"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a service's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub time_ms: u64,
    pub stream: Stream,
    pub text: String,
}

/// Paths of the two segments under `dir`.
pub fn segment_paths(dir: &Path) -> [PathBuf; 2] {
    SEGMENTS.map(|s| dir.join(s))
}

/// Reads a service's whole log, oldest line first.
pub fn read_all(dir: &Path) -> io::Result<Vec<LogLine>> {
    let mut segments: Vec<Vec<LogLine>> = Vec::new();
    for path in segment_paths(dir) {
        let mut text = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut text)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        segments.push(parse(&text));
    }
    segments.sort_by_key(|lines| lines.first().map(|l| l.time_ms).unwrap_or(u64::MAX));
    Ok(segments.into_iter().flatten().collect())
}

/// Parses log text; a damaged line (a torn write) is skipped, not fatal.
pub fn parse(text: &[u8]) -> Vec<LogLine> {
    text.split(|&b| b == b'\n')
        .filter_map(|raw| {
            let raw = String::from_utf8_lossy(raw);
            let (time, rest) = raw.split_once(' ')?;
            let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let stream = match tag {
                "o" => Stream::Stdout,
                "e" => Stream::Stderr,
                _ => return None,
            };
            Some(LogLine {
                time_ms: time.parse().ok()?,
                stream,
                text: text.to_string(),
            })
        })
        .collect()
}
