//! The few pieces of the BitTorrent wire protocol (BEP 3) that the bridge and the origin's
//! seed speak themselves: the handshake and the messages they send.

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
