//! The per-service log: two size-capped segments written by the init, read by the agent.
//!
//! Each line is `<unix millis> <o|e> <text>`. The init appends to the current segment; when it
//! reaches the segment size it truncates the other segment and switches to it. So a service can
//! never use more than two segments of disk for its logs, however chatty it is.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// File names of the two segments in a service's log directory.
pub const SEGMENTS: [&str; 2] = ["log.0", "log.1"];

/// Lines longer than this are split, so one line cannot hold the buffer hostage.
pub const MAX_LINE: usize = 16 * 1024;

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

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Paths of the two segments under `dir`.
pub fn segment_paths(dir: &Path) -> [PathBuf; 2] {
    SEGMENTS.map(|s| dir.join(s))
}

/// Appends lines to the two segments, switching when the current one is full.
pub struct LogWriter {
    files: [File; 2],
    current: usize,
    written: u64,
    segment: u64,
}

impl LogWriter {
    /// Continues the log held by two open segment files (opened for append).
    pub fn new(mut files: [File; 2], segment: u64) -> io::Result<Self> {
        let sizes = [
            files[0].seek(SeekFrom::End(0))?,
            files[1].seek(SeekFrom::End(0))?,
        ];
        let newest = |f: &File| f.metadata().and_then(|m| m.modified()).ok();
        // Continue in the segment written last; a fresh log starts in segment 0.
        let current = match (sizes, newest(&files[0]), newest(&files[1])) {
            ([_, 0], _, _) => 0,
            ([0, _], _, _) => 1,
            (_, Some(a), Some(b)) if b > a => 1,
            _ => 0,
        };
        Ok(LogWriter {
            files,
            current,
            written: sizes[current],
            segment: segment.max(1024),
        })
    }

    pub fn write_line(&mut self, stream: Stream, text: &[u8]) -> io::Result<()> {
        let tag = match stream {
            Stream::Stdout => 'o',
            Stream::Stderr => 'e',
        };
        let mut line = format!("{} {tag} ", now_ms()).into_bytes();
        line.extend(text.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
        line.push(b'\n');
        if self.written + line.len() as u64 > self.segment && self.written > 0 {
            self.current = 1 - self.current;
            self.files[self.current].set_len(0)?;
            self.files[self.current].seek(SeekFrom::Start(0))?;
            self.written = 0;
        }
        self.files[self.current].write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}

/// Splits a byte stream into lines for a [`LogWriter`], keeping the unfinished tail.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Feeds bytes in and hands out every complete line (or every [`MAX_LINE`] chunk).
    pub fn feed(&mut self, bytes: &[u8], mut out: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            out(&self.pending[start..start + pos]);
            start += pos + 1;
        }
        while self.pending.len() - start >= MAX_LINE {
            out(&self.pending[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.pending.drain(..start);
    }

    /// Hands out what is left when the stream ends.
    pub fn finish(&mut self, mut out: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            out(&self.pending);
            self.pending.clear();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(dir: &Path) -> [File; 2] {
        segment_paths(dir).map(|p| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(p)
                .unwrap()
        })
    }

    #[test]
    fn log_never_exceeds_two_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::new(open(dir.path()), 4096).unwrap();
        for i in 0..10_000 {
            w.write_line(Stream::Stdout, format!("line {i}").as_bytes())
                .unwrap();
        }
        let total: u64 = segment_paths(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 2 * 4096, "log uses {total} bytes");
        let lines = read_all(dir.path()).unwrap();
        assert_eq!(lines.last().unwrap().text, "line 9999");
        // Oldest first, no gaps inside what is kept.
        let numbers: Vec<u32> = lines.iter().map(|l| l.text[5..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1));
    }

    #[test]
    fn writer_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::new(open(dir.path()), 1 << 20).unwrap();
        w.write_line(Stream::Stdout, b"first").unwrap();
        drop(w);
        let mut w = LogWriter::new(open(dir.path()), 1 << 20).unwrap();
        w.write_line(Stream::Stderr, b"second").unwrap();
        let lines = read_all(dir.path()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].stream, Stream::Stderr);
    }

    #[test]
    fn line_buffer_splits_and_keeps_tail() {
        let mut b = LineBuffer::default();
        let mut got = Vec::new();
        b.feed(b"a\nbc", |l| got.push(l.to_vec()));
        b.feed(b"d\n", |l| got.push(l.to_vec()));
        b.feed(b"tail", |l| got.push(l.to_vec()));
        b.finish(|l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"a".to_vec(), b"bcd".to_vec(), b"tail".to_vec()]);
    }
}
