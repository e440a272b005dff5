//! Torrent files of titles: single-file torrents (BEP 3) whose `url-list` names the origin as
//! a web seed (BEP 19), so any client that speaks BEP 19 falls back on the origin.

use std::io::Read;
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::bencode::Value;

/// Pieces of 64 KiB: a piece is a second of 0.5 Mbit/s video and half a second of a gateway's
/// 1 Mbit/s upload, so the pieces at a playhead come from several peers at once, and what a
/// late read costs the origin stays small.
pub const PIECE_LENGTH: u64 = 64 * 1024;

/// A torrent file and what identifies it.
#[derive(Debug, Clone)]
pub struct Torrent {
    pub name: String,
    pub length: u64,
    /// SHA-1 of the bencoded info dictionary.
    pub info_hash: [u8; 20],
    /// The title's bitrate in bits per second, as the provider declared it.
    pub bitrate: Option<u64>,
    /// The `.torrent` file.
    pub bytes: Vec<u8>,
}

/// The key outside `info` that carries the title's bitrate (bits per second). Clients that do
/// not know it ignore it, and it does not change the info hash.
pub const BITRATE_KEY: &str = "x-bitrate";

/// Makes the torrent of the title at `path`, named `name`, announced to `announce` and web
/// seeded from `web_seed` (a URL ending in `/`, to which clients append the name), with the
/// `bitrate` the provider declared for it.
pub fn make(
    path: &Path,
    name: &str,
    announce: &str,
    web_seed: &str,
    bitrate: Option<u64>,
) -> std::io::Result<Torrent> {
    let mut file = std::fs::File::open(path)?;
    let mut pieces = Vec::new();
    let mut length = 0u64;
    let mut buf = vec![0u8; PIECE_LENGTH as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        length += filled as u64;
        pieces.extend_from_slice(&Sha1::digest(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    if length == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is empty; a title needs at least one byte",
                path.display()
            ),
        ));
    }
    // Private (BEP 27): peers come from the provider's tracker only, never from peer
    // exchange or the DHT, so that the tracker's choice of the closest peers holds.
    let info = Value::dict([
        ("length", Value::Int(length as i64)),
        ("name", Value::text(name)),
        ("piece length", Value::Int(PIECE_LENGTH as i64)),
        ("pieces", Value::Bytes(pieces)),
        ("private", Value::Int(1)),
    ]);
    let info_hash: [u8; 20] = Sha1::digest(info.encode()).into();
    let mut meta = vec![
        ("announce", Value::text(announce)),
        ("info", info),
        ("url-list", Value::List(vec![Value::text(web_seed)])),
    ];
    if let Some(b) = bitrate {
        meta.push((BITRATE_KEY, Value::Int(b as i64)));
    }
    let bytes = Value::dict(meta).encode();
    Ok(Torrent {
        name: name.to_string(),
        length,
        info_hash,
        bitrate,
        bytes,
    })
}

/// The torrent `bytes` announcing to `announce` instead (a private torrent's clients use
/// its first tracker only: this is how a gateway names its region). `None` when the torrent
/// is not in canonical form, so that rewriting it could change its info hash.
pub fn with_announce(bytes: &[u8], announce: &str) -> Option<Vec<u8>> {
    let meta = crate::bencode::decode(bytes).ok()?;
    if meta.encode() != bytes {
        return None;
    }
    let Value::Dict(mut entries) = meta else {
        return None;
    };
    entries.insert(b"announce".to_vec(), Value::text(announce));
    Some(Value::Dict(entries).encode())
}

/// Whether `name` may name a title: one path component of letters, digits, `.`, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode;

    #[test]
    fn a_torrent_hashes_each_piece_and_names_the_origin_as_web_seed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("film.mp4");
        let data: Vec<u8> = (0..PIECE_LENGTH * 2 + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let t = make(
            &path,
            "film.mp4",
            "http://t/announce",
            "http://o/titles/",
            Some(500_000),
        )
        .unwrap();
        let v = bencode::decode(&t.bytes).unwrap();
        let info = v.get("info").unwrap();
        assert_eq!(
            info.get("length").unwrap().as_int(),
            Some(data.len() as i64)
        );
        assert_eq!(info.get("private").unwrap().as_int(), Some(1));
        let pieces = info.get("pieces").unwrap().as_bytes().unwrap();
        assert_eq!(pieces.len(), 3 * 20);
        let last: [u8; 20] = Sha1::digest(&data[2 * PIECE_LENGTH as usize..]).into();
        assert_eq!(&pieces[40..], &last);
        let Some(bencode::Value::List(seeds)) = v.get("url-list") else {
            panic!("no url-list");
        };
        assert_eq!(seeds[0].as_bytes(), Some(&b"http://o/titles/"[..]));
        let hash: [u8; 20] = Sha1::digest(info.encode()).into();
        assert_eq!(t.info_hash, hash);
        assert_eq!(v.get(BITRATE_KEY).and_then(|b| b.as_int()), Some(500_000));
        let plain = make(
            &path,
            "film.mp4",
            "http://t/announce",
            "http://o/titles/",
            None,
        )
        .unwrap();
        assert_eq!(
            plain.info_hash, t.info_hash,
            "the bitrate is outside the info hash"
        );
        assert!(bencode::decode(&plain.bytes)
            .unwrap()
            .get(BITRATE_KEY)
            .is_none());

        let moved = with_announce(&t.bytes, "http://t/announce/north").unwrap();
        let m = bencode::decode(&moved).unwrap();
        assert_eq!(
            m.get("announce").unwrap().as_bytes(),
            Some(&b"http://t/announce/north"[..])
        );
        assert_eq!(
            m.get("info"),
            v.get("info"),
            "the info, hence the hash, is unchanged"
        );
        let mut odd = t.bytes.clone();
        odd.insert(1, b'0'); // a key out of order: not canonical
        assert!(with_announce(&odd, "http://t/announce/north").is_none());
    }

    #[test]
    fn names_are_single_safe_components() {
        assert!(valid_name("big-buck_bunny.mp4"));
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
