//! Text without an allocator: a fixed buffer that numbers, JSON strings and messages are
//! written into, and the per-service log (`runtime::logfile` reads what this writes).

use crate::sys::{self, Errno, IoVec};

/// Bytes written into a fixed buffer; what does not fit is cut off.
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text {
            bytes: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub fn push(&mut self, bytes: &[u8]) -> &mut Self {
        let n = bytes.len().min(N - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
        self
    }

    pub fn num(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    /// `bytes` as Rust's `{:?}` shows a string: quoted, with quotes, backslashes and control
    /// characters escaped (bytes that are not UTF-8 are written as they are).
    pub fn quoted(&mut self, bytes: &[u8]) -> &mut Self {
        self.push(b"\"");
        for &b in bytes {
            match b {
                b'"' => self.push(b"\\\""),
                b'\\' => self.push(b"\\\\"),
                b'\n' => self.push(b"\\n"),
                b'\t' => self.push(b"\\t"),
                b'\r' => self.push(b"\\r"),
                0 => self.push(b"\\0"),
                0x01..=0x1f | 0x7f => self.push(b"\\u{").hex(b).push(b"}"),
                _ => self.push(&[b]),
            };
        }
        self.push(b"\"")
    }

    /// `bytes` as a JSON string. Bytes that are not UTF-8 become U+FFFD, as a lossy
    /// conversion would make them.
    pub fn json_string(&mut self, bytes: &[u8]) -> &mut Self {
        self.push(b"\"");
        for chunk in bytes.utf8_chunks() {
            for &b in chunk.valid().as_bytes() {
                match b {
                    b'"' => self.push(b"\\\""),
                    b'\\' => self.push(b"\\\\"),
                    0..=0x1f => self.push(b"\\u00").hex(b),
                    _ => self.push(&[b]),
                };
            }
            if !chunk.invalid().is_empty() {
                self.push("\u{fffd}".as_bytes());
            }
        }
        self.push(b"\"")
    }

    fn hex(&mut self, b: u8) -> &mut Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.push(&[DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]])
    }

    /// An error number as Rust's `io::Error` shows it: `No such file or directory (os error 2)`.
    pub fn errno(&mut self, e: Errno) -> &mut Self {
        self.push(sys::describe(e).as_bytes())
            .push(b" (os error ")
            .num(e.0 as u64)
            .push(b")")
    }
}

/// Lines longer than this are split, so one line cannot hold the buffer hostage (as
/// `runtime::logfile::MAX_LINE`).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Appends `<unix millis> <o|e> <text>` lines to the two segments (descriptors opened for
/// append), switching when the current one is full: the other is emptied and written next.
pub struct Log {
    fds: [i32; 2],
    current: usize,
    written: u64,
    segment: u64,
}

impl Log {
    /// Continues the log in the segment written last; a fresh log starts in segment 0.
    pub fn new(fds: [i32; 2], segment: u64) -> Result<Log, Errno> {
        let sizes = [
            sys::lseek(fds[0], 0, sys::SEEK_END)?,
            sys::lseek(fds[1], 0, sys::SEEK_END)?,
        ];
        // The one written last. Where both were written within one tick of the file
        // system's clock, the one begun last, by its first line's time (as
        // `runtime::logfile::read_all` orders them), if the segments can be read (`runc run`
        // with `3>>log.0` gives them for appending only); failing that, the one less full.
        let age = |fd: i32, other_size: u64| {
            Ok::<_, Errno>((sys::mtime_ns(fd)?, first_time(fd), other_size))
        };
        let current = match sizes {
            [_, 0] => 0,
            [0, _] => 1,
            _ if age(fds[1], sizes[0])? > age(fds[0], sizes[1])? => 1,
            _ => 0,
        };
        Ok(Log {
            fds,
            current,
            written: sizes[current],
            segment: segment.max(1024),
        })
    }

    /// Writes one line; `text` holds no newline (every caller splits at them).
    pub fn line(&mut self, stream: Stream, text: &[u8]) {
        let mut head = Text::<32>::new();
        head.num(sys::now_ms()).push(match stream {
            Stream::Stdout => b" o ",
            Stream::Stderr => b" e ",
        });
        let len = (head.as_bytes().len() + text.len() + 1) as u64;
        if self.written + len > self.segment && self.written > 0 {
            self.current = 1 - self.current;
            let fd = self.fds[self.current];
            if sys::ftruncate(fd, 0).is_err() || sys::lseek(fd, 0, sys::SEEK_SET).is_err() {
                return;
            }
            self.written = 0;
        }
        let parts = [
            IoVec::new(head.as_bytes()),
            IoVec::new(text),
            IoVec::new(b"\n"),
        ];
        if let Ok(n) = sys::writev(self.fds[self.current], &parts) {
            self.written += n as u64;
            // A short write (a full disk) leaves a torn line, which the next line continues;
            // the rest of the line is not retried.
        }
    }
}

/// The time at the start of a segment's first line (0 if it has none, or cannot be read).
fn first_time(fd: i32) -> u64 {
    let mut head = [0u8; 20];
    let n = sys::pread(fd, &mut head, 0).unwrap_or(0);
    head[..n]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |t, &d| {
            t.wrapping_mul(10).wrapping_add((d - b'0') as u64)
        })
}

/// One output stream of the command: bytes read from its pipe wait here until a line is
/// complete (or [`MAX_LINE`] long).
pub struct Lines {
    buf: &'static mut [u8; MAX_LINE],
    len: usize,
    pub stream: Stream,
    pub fd: i32,
    pub open: bool,
}

impl Lines {
    pub fn new(fd: i32, stream: Stream, buf: &'static mut [u8; MAX_LINE]) -> Lines {
        Lines {
            buf,
            len: 0,
            stream,
            fd,
            open: true,
        }
    }

    /// Reads what the pipe holds (as much as fits) and logs every complete line. At the end
    /// of the stream (or an error) logs the unfinished tail and marks the stream closed.
    pub fn pump(&mut self, log: &mut Log) {
        match sys::read(self.fd, &mut self.buf[self.len..]) {
            Err(sys::EINTR) => return,
            Ok(0) | Err(_) => {
                self.open = false;
                self.finish(log);
                return;
            }
            Ok(n) => self.len += n,
        }
        let mut start = 0;
        while let Some(pos) = self.buf[start..self.len].iter().position(|&b| b == b'\n') {
            log.line(self.stream, &self.buf[start..start + pos]);
            start += pos + 1;
        }
        if start == 0 && self.len == MAX_LINE {
            log.line(self.stream, &self.buf[..MAX_LINE]);
            start = MAX_LINE;
        }
        self.buf.copy_within(start..self.len, 0);
        self.len -= start;
    }

    /// Logs what is left when the stream ends.
    pub fn finish(&mut self, log: &mut Log) {
        if self.len > 0 {
            log.line(self.stream, &self.buf[..self.len]);
            self.len = 0;
        }
    }
}
