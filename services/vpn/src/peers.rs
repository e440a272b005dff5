//! The endpoint's own key and the household's list of remote peers, kept in the service's
//! storage: `key` (the private key, base64, mode 0600) and `peers.json`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::{Deserialize, Serialize};

/// The most peers one gateway serves (the tunnel is a /24 and the gateway is `.1`).
pub const MAX_PEERS: usize = 200;

/// A WireGuard key as WireGuard's tools write it: 32 bytes in standard base64.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| format!("{text:?} is not base64; a WireGuard public key is what `wg pubkey` prints (44 characters ending in `=`)"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "{text:?} holds {} bytes; a WireGuard key holds 32 (what `wg pubkey` prints)",
            b.len()
        )
    })
}

pub fn encode_key(key: &[u8; 32]) -> String {
    B64.encode(key)
}

/// The endpoint's private key from `path`, made from the kernel's random source on first use.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<StaticSecret> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = parse_key(&text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            Ok(StaticSecret::from(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            use std::io::Read as _;
            std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
            let secret = StaticSecret::from(key);
            write_private(path, &encode_key(&secret.to_bytes()))?;
            Ok(secret)
        }
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// One remote device the household let in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub public_key: String,
    /// Its address inside the tunnel; packets from it must carry this source.
    pub address: Ipv4Addr,
}

impl Peer {
    pub fn key(&self) -> [u8; 32] {
        // Checked when the peer was added.
        parse_key(&self.public_key).unwrap_or_default()
    }
}

/// The peers, saved to `peers.json` after each change.
#[derive(Debug)]
pub struct Peers {
    path: PathBuf,
    /// `.1` is the gateway's end of the tunnel; peers get `.2` and up.
    prefix: [u8; 3],
    list: Vec<Peer>,
}

impl Peers {
    pub fn load(path: PathBuf, tunnel: Ipv4Addr) -> std::io::Result<Peers> {
        let [a, b, c, _] = tunnel.octets();
        let list = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Peers {
            path,
            prefix: [a, b, c],
            list,
        })
    }

    pub fn list(&self) -> &[Peer] {
        &self.list
    }

    /// Adds a peer; it gets the lowest free tunnel address.
    pub fn add(&mut self, name: &str, public_key: &str, own: &PublicKey) -> Result<Peer, String> {
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "peer name {name:?}: use 1 to 32 lowercase letters, digits and `-` (e.g. `laptop`)"
            ));
        }
        let key = parse_key(public_key)?;
        if key == *own.as_bytes() {
            return Err("that is the gateway's own public key; give the laptop's (`wg pubkey < laptop.key`)".into());
        }
        if let Some(p) = self.list.iter().find(|p| p.name == name) {
            return Err(format!(
                "a peer named `{}` exists already; remove it first or pick another name",
                p.name
            ));
        }
        if let Some(p) = self.list.iter().find(|p| p.key() == key) {
            return Err(format!(
                "this key is peer `{}`'s already; each device has its own key",
                p.name
            ));
        }
        if self.list.len() >= MAX_PEERS {
            return Err(format!(
                "{MAX_PEERS} peers at most; remove one you no longer use"
            ));
        }
        let [a, b, c] = self.prefix;
        let address = (2..=254u8)
            .map(|d| Ipv4Addr::new(a, b, c, d))
            .find(|addr| !self.list.iter().any(|p| p.address == *addr))
            .ok_or("no tunnel address left; remove a peer")?;
        let peer = Peer {
            name: name.to_string(),
            public_key: encode_key(&key),
            address,
        };
        self.list.push(peer.clone());
        if let Err(e) = self.save() {
            self.list.pop();
            return Err(format!("cannot save the peer: {e}"));
        }
        Ok(peer)
    }

    /// Removes the peer named `name`; false when there is none.
    pub fn remove(&mut self, name: &str) -> Result<bool, String> {
        let Some(i) = self.list.iter().position(|p| p.name == name) else {
            return Ok(false);
        };
        let gone = self.list.remove(i);
        if let Err(e) = self.save() {
            self.list.insert(i, gone);
            return Err(format!("cannot save the peers: {e}"));
        }
        Ok(true)
    }

    fn save(&self) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&self.list).map_err(std::io::Error::other)?;
        write_private(&self.path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> PublicKey {
        PublicKey::from(&StaticSecret::from([7u8; 32]))
    }

    #[test]
    fn keys_are_checked_and_addresses_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let mut peers = Peers::load(path.clone(), Ipv4Addr::new(10, 200, 0, 1)).unwrap();
        let k1 = encode_key(&[1u8; 32]);
        let k2 = encode_key(&[2u8; 32]);
        assert_eq!(
            peers.add("laptop", &k1, &own()).unwrap().address,
            Ipv4Addr::new(10, 200, 0, 2)
        );
        assert!(peers
            .add("phone", &k1, &own())
            .unwrap_err()
            .contains("`laptop`"));
        assert!(peers
            .add("laptop", &k2, &own())
            .unwrap_err()
            .contains("exists"));
        assert!(peers
            .add("Bad Name", &k2, &own())
            .unwrap_err()
            .contains("lowercase"));
        assert!(peers
            .add("phone", "not-a-key", &own())
            .unwrap_err()
            .contains("base64"));
        assert!(peers
            .add("phone", "AAAA", &own())
            .unwrap_err()
            .contains("3 bytes"));
        let mine = encode_key(own().as_bytes());
        assert!(peers
            .add("me", &mine, &own())
            .unwrap_err()
            .contains("own public key"));
        assert_eq!(
            peers.add("phone", &k2, &own()).unwrap().address,
            Ipv4Addr::new(10, 200, 0, 3)
        );
        assert!(peers.remove("laptop").unwrap());
        assert!(!peers.remove("laptop").unwrap());
        // Saved, and the freed address is given again.
        let mut again = Peers::load(path, Ipv4Addr::new(10, 200, 0, 1)).unwrap();
        assert_eq!(again.list().len(), 1);
        let k3 = encode_key(&[3u8; 32]);
        assert_eq!(
            again.add("tablet", &k3, &own()).unwrap().address,
            Ipv4Addr::new(10, 200, 0, 2)
        );
    }

    #[test]
    fn the_private_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let a = load_or_create_secret(&path).unwrap();
        let b = load_or_create_secret(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
