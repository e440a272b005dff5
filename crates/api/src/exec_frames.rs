//! Framing of an exec's output on one HTTP body: stdout, stderr and the exit code.
//!
//! A frame is one tag byte, a big-endian u32 length, then that many bytes. Tag 1 is stdout,
//! 2 is stderr, 3 is the exit code (4 bytes, big-endian i32) and always comes last.

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;

pub fn encode(tag: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(tag);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn encode_exit(code: i32) -> Vec<u8> {
    encode(EXIT, &code.to_be_bytes())
}

/// Incremental decoder: feed bytes as they arrive, take whole frames out.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        let tag = self.buf[0];
        let data = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Some((tag, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let mut wire = encode(STDOUT, b"hello");
        wire.extend(encode(STDERR, b""));
        wire.extend(encode_exit(-3));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in wire {
            d.feed(&[b]);
            while let Some(f) = d.next_frame() {
                got.push(f);
            }
        }
        assert_eq!(got[0], (STDOUT, b"hello".to_vec()));
        assert_eq!(got[1], (STDERR, vec![]));
        assert_eq!(got[2], (EXIT, (-3i32).to_be_bytes().to_vec()));
    }
}
