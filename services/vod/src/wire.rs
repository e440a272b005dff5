//! The few pieces of the BitTorrent wire protocol (BEP 3) that the bridge and the origin's
//! seed speak themselves: the handshake, the messages they send, and those they read.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest message read (a bitfield of a huge title is the longest a peer sends us).
const MAX_MESSAGE: usize = 1 << 20;

/// A message the bridge or the seed acts on; the others are `Other`.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Have(u32),
    Bitfield(Vec<u8>),
    /// Piece, offset, length.
    Request(u32, u32, u32),
    /// Piece, offset, length.
    Cancel(u32, u32, u32),
    Other,
}

/// Reads the next message, skipping keep-alives; a message over 1 MiB is an error.
pub async fn read(from: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Message> {
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            continue;
        }
        if len > MAX_MESSAGE {
            return Err(std::io::Error::other("a message longer than 1 MiB"));
        }
        let mut body = vec![0u8; len];
        from.read_exact(&mut body).await?;
        let word = |at: usize| u32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        return Ok(match (body[0], body.len()) {
            (4, 5) => Message::Have(word(1)),
            (5, _) => Message::Bitfield(body[1..].to_vec()),
            (6, 13) => Message::Request(word(1), word(5), word(9)),
            (8, 13) => Message::Cancel(word(1), word(5), word(9)),
            _ => Message::Other,
        });
    }
}

/// The handshake for `info_hash` from `peer_id`, with no extension bits.
pub fn handshake(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut hello = Vec::with_capacity(68);
    hello.push(19);
    hello.extend_from_slice(b"BitTorrent protocol");
    hello.extend_from_slice(&[0; 8]);
    hello.extend_from_slice(info_hash);
    hello.extend_from_slice(peer_id);
    hello
}

/// Whether `hello` (68 bytes) is a BitTorrent handshake; its info hash if so.
pub fn info_hash_of(hello: &[u8; 68]) -> Option<[u8; 20]> {
    (hello[0] == 19 && &hello[1..20] == b"BitTorrent protocol")
        .then(|| hello[28..48].try_into().expect("20 bytes"))
}

/// A peer id: `prefix` (an Azureus-style client tag) padded with digits of the clock, so
/// that two runs of the same program are told apart.
pub fn peer_id(prefix: &[u8]) -> [u8; 20] {
    let mut id = [b'0'; 20];
    let prefix = &prefix[..prefix.len().min(12)];
    id[..prefix.len()].copy_from_slice(prefix);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let digits = format!("{nanos:09}");
    id[20 - digits.len()..].copy_from_slice(digits.as_bytes());
    id
}

/// The `bitfield` message's payload for a title of `count` pieces holding `pieces`.
pub fn bitfield(count: u32, pieces: impl IntoIterator<Item = u32>) -> Vec<u8> {
    let mut bits = vec![0u8; count.div_ceil(8) as usize];
    for i in pieces.into_iter().filter(|i| *i < count) {
        bits[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    bits
}

/// Whether piece `index` is set in a `bitfield` payload.
pub fn has_piece(bits: &[u8], index: usize) -> bool {
    bits.get(index / 8)
        .is_some_and(|b| b & (0x80 >> (index % 8)) != 0)
}

/// A message: length, id, payload.
pub fn message(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + payload.len());
    m.extend_from_slice(&(1 + payload.len() as u32).to_be_bytes());
    m.push(id);
    m.extend_from_slice(payload);
    m
}

/// The head of a `piece` message carrying `length` bytes of piece `index` from `begin`; the
/// block follows it.
pub fn piece_head(index: u32, begin: u32, length: u32) -> [u8; 13] {
    let mut head = [0u8; 13];
    head[..4].copy_from_slice(&(9 + length).to_be_bytes());
    head[4] = 7;
    head[5..9].copy_from_slice(&index.to_be_bytes());
    head[9..].copy_from_slice(&begin.to_be_bytes());
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handshake_names_the_protocol_the_title_and_the_peer() {
        let hello = handshake(&[7; 20], &[9; 20]);
        assert_eq!(hello.len(), 68);
        let hello: [u8; 68] = hello.try_into().unwrap();
        assert_eq!(info_hash_of(&hello), Some([7; 20]));
        assert_eq!(&hello[48..], &[9; 20]);
        let mut other = hello;
        other[1] = b'b';
        assert_eq!(info_hash_of(&other), None);
    }

    #[tokio::test]
    async fn messages_are_read_past_keep_alives_and_long_ones_refused() {
        let mut stream: Vec<u8> = [0, 0, 0, 0].to_vec();
        stream.extend(message(6, &[0, 0, 0, 2, 0, 0, 64, 0, 0, 0, 64, 0]));
        stream.extend(message(4, &7u32.to_be_bytes()));
        stream.extend(message(2, &[]));
        let mut from = stream.as_slice();
        assert_eq!(
            read(&mut from).await.unwrap(),
            Message::Request(2, 16384, 16384)
        );
        assert_eq!(read(&mut from).await.unwrap(), Message::Have(7));
        assert_eq!(read(&mut from).await.unwrap(), Message::Other);
        assert!(read(&mut from).await.is_err(), "the end of the stream");
        let long = ((2u32 << 20).to_be_bytes()).to_vec();
        assert!(read(&mut long.as_slice()).await.is_err());
    }

    #[test]
    fn bitfields_set_and_read_the_pieces_high_bit_first() {
        let bits = bitfield(10, [0, 9, 12]);
        assert_eq!(bits, [0x80, 0x40]);
        assert!(has_piece(&bits, 0) && has_piece(&bits, 9));
        assert!(!has_piece(&bits, 1) && !has_piece(&bits, 12));
        let id = peer_id(b"-SHGSEED0-");
        assert_eq!(&id[..10], b"-SHGSEED0-");
        assert!(id[10..].iter().all(u8::is_ascii_digit));
    }

    #[test]
    fn messages_are_length_prefixed() {
        assert_eq!(message(4, &5u32.to_be_bytes()), [0, 0, 0, 5, 4, 0, 0, 0, 5]);
        assert_eq!(message(1, &[]), [0, 0, 0, 1, 1]);
        assert_eq!(
            piece_head(3, 16384, 16384),
            [0, 0, 64, 9, 7, 0, 0, 0, 3, 0, 0, 64, 0]
        );
    }
}
