//! Torrent files of titles: single-file torrents (BEP 3) whose `url-list` names the origin as
//! a web seed (BEP 19), so any client that speaks BEP 19 falls back on the origin.

use std::io::Read;
use std::path::Path;

use sha1::{Digest, Sha1};

use crate::bencode::Value;

/// Pieces of 256 KiB: small enough that a player's first seconds are a few pieces.
pub const PIECE_LENGTH: u64 = 256 * 1024;

/// A torrent file and what identifies it.
#[derive(Debug, Clone)]
pub struct Torrent {
    pub name: String,
    pub length: u64,
    /// SHA-1 of the bencoded info dictionary.
    pub info_hash: [u8; 20],
    /// The `.torrent` file.
    pub bytes: Vec<u8>,
}

/// Makes the torrent of the title at `path`, named `name`, announced to `announce` and web
/// seeded from `web_seed` (a URL ending in `/`, to which clients append the name).
pub fn make(path: &Path, name: &str, announce: &str, web_seed: &str) -> std::io::Result<Torrent> {
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
    let info = Value::dict([
        ("length", Value::Int(length as i64)),
        ("name", Value::text(name)),
        ("piece length", Value::Int(PIECE_LENGTH as i64)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    let info_hash: [u8; 20] = Sha1::digest(info.encode()).into();
    let bytes = Value::dict([
        ("announce", Value::text(announce)),
        ("info", info),
        ("url-list", Value::List(vec![Value::text(web_seed)])),
    ])
    .encode();
    Ok(Torrent {
        name: name.to_string(),
        length,
        info_hash,
        bytes,
    })
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
        let t = make(&path, "film.mp4", "http://t/announce", "http://o/titles/").unwrap();
        let v = bencode::decode(&t.bytes).unwrap();
        let info = v.get("info").unwrap();
        assert_eq!(
            info.get("length").unwrap().as_int(),
            Some(data.len() as i64)
        );
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
    }

    #[test]
    fn names_are_single_safe_components() {
        assert!(valid_name("big-buck_bunny.mp4"));
        for bad in ["", "../etc", "a/b", ".hidden", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
