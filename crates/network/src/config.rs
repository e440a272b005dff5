//! The `[network]` table of `STATE/gateway.toml`.
//!
//! ```toml
//! [network]
//! enabled = true              # false: services get a loopback only (no bridge, no rules)
//! subnet = "10.77.0.0/24"     # the services' addresses; a /24, the gateway is .1
//! wan = "eth0"                # NAT out and `publish = "wan"` here; default: the default route's
//! lan = "br-lan"              # `publish = "lan"` here; default: every interface but wan
//! dns = ["192.0.2.53"]        # resolvers for services; default: the host's own (not loopback)
//! reserved_ports = [22, 53, 67, 68, 80, 443]   # the gateway's own: never published
//! ```
//!
//! The link's capacity and the share kept for the gateway's own forwarding are the
//! `bandwidth_down`/`bandwidth_up` keys of `[capacity]` and `[reserve]`.

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::NetError;

/// What the operator may write.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub enabled: Option<bool>,
    pub subnet: Option<String>,
    pub wan: Option<String>,
    pub lan: Option<String>,
    pub dns: Option<Vec<String>>,
    pub reserved_ports: Option<Vec<u16>>,
}

/// Ports a home gateway serves itself (SSH, DNS, DHCP, its web pages).
pub const DEFAULT_RESERVED_PORTS: &[u16] = &[22, 53, 67, 68, 80, 443];

/// The checked `[network]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub enabled: bool,
    /// First three octets of the services' /24.
    pub prefix: [u8; 3],
    pub wan: Option<String>,
    pub lan: Option<String>,
    /// Empty: take the host's resolvers.
    pub dns: Vec<Ipv4Addr>,
    pub reserved_ports: Vec<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            prefix: [10, 77, 0],
            wan: None,
            lan: None,
            dns: Vec::new(),
            reserved_ports: DEFAULT_RESERVED_PORTS.to_vec(),
        }
    }
}

fn bad(field: &str, reason: impl Into<String>) -> NetError {
    NetError::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `name` can be a Linux interface name.
pub fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Config {
    pub fn from_raw(raw: &RawNetwork) -> Result<Config, NetError> {
        let mut cfg = Config {
            enabled: raw.enabled.unwrap_or(true),
            ..Config::default()
        };
        if let Some(text) = &raw.subnet {
            let (addr, len) = text
                .split_once('/')
                .ok_or_else(|| bad("subnet", format!("{text:?} is not ADDRESS/24")))?;
            let addr: Ipv4Addr = addr
                .parse()
                .map_err(|_| bad("subnet", format!("{addr:?} is not an IPv4 address")))?;
            if len != "24" {
                return Err(bad(
                    "subnet",
                    format!("{text:?}: services get a /24 (254 addresses); write it as x.y.z.0/24"),
                ));
            }
            let [a, b, c, d] = addr.octets();
            if d != 0 {
                return Err(bad(
                    "subnet",
                    format!("{text:?}: a /24 starts at .0; write {a}.{b}.{c}.0/24"),
                ));
            }
            cfg.prefix = [a, b, c];
        }
        for (field, value, slot) in [
            ("wan", &raw.wan, &mut cfg.wan),
            ("lan", &raw.lan, &mut cfg.lan),
        ] {
            if let Some(name) = value {
                if !valid_interface(name) {
                    return Err(bad(
                        field,
                        format!("{name:?} is not an interface name (1 to 15 letters, digits, `-`, `_`, `.`)"),
                    ));
                }
                *slot = Some(name.clone());
            }
        }
        if cfg.wan.is_some() && cfg.wan == cfg.lan {
            return Err(bad(
                "lan",
                "the LAN and the WAN cannot be the same interface",
            ));
        }
        for (i, text) in raw.dns.iter().flatten().enumerate() {
            let addr: Ipv4Addr = text.parse().map_err(|_| {
                bad(
                    &format!("dns[{i}]"),
                    format!("{text:?} is not an IPv4 address"),
                )
            })?;
            cfg.dns.push(addr);
        }
        if let Some(ports) = &raw.reserved_ports {
            if let Some(i) = ports.iter().position(|p| *p == 0) {
                return Err(bad(&format!("reserved_ports[{i}]"), "port 0 is not a port"));
            }
            cfg.reserved_ports = ports.clone();
        }
        Ok(cfg)
    }

    /// The address of slot `slot` (the gateway is slot 1).
    pub fn address(&self, slot: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, slot)
    }

    pub fn gateway_address(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// `a.b.c.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/24", self.address(0))
    }
}

/// The resolvers of a host's resolv.conf that a service can reach (not loopback ones).
pub fn host_resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_private_24_with_the_usual_gateway_ports_kept() {
        let cfg = Config::from_raw(&RawNetwork::default()).unwrap();
        assert!(cfg.enabled);
        assert_eq!(cfg.subnet(), "10.77.0.0/24");
        assert_eq!(cfg.gateway_address(), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(cfg.address(7), Ipv4Addr::new(10, 77, 0, 7));
        assert!(cfg.reserved_ports.contains(&53));
    }

    #[test]
    fn bad_values_name_the_field_and_the_fix() {
        let cases = [
            (
                RawNetwork {
                    subnet: Some("10.1.0.0/16".into()),
                    ..Default::default()
                },
                "subnet",
                "/24",
            ),
            (
                RawNetwork {
                    subnet: Some("10.1.0.5/24".into()),
                    ..Default::default()
                },
                "subnet",
                "write 10.1.0.0/24",
            ),
            (
                RawNetwork {
                    wan: Some("a very long interface".into()),
                    ..Default::default()
                },
                "wan",
                "interface name",
            ),
            (
                RawNetwork {
                    wan: Some("eth0".into()),
                    lan: Some("eth0".into()),
                    ..Default::default()
                },
                "lan",
                "same interface",
            ),
            (
                RawNetwork {
                    dns: Some(vec!["1.1.1.1".into(), "dns.example".into()]),
                    ..Default::default()
                },
                "dns[1]",
                "not an IPv4",
            ),
        ];
        for (raw, field, words) in cases {
            let err = Config::from_raw(&raw).unwrap_err().to_string();
            assert!(err.contains(&format!("[network] {field}:")), "{err}");
            assert!(err.contains(words), "{err}");
        }
    }

    #[test]
    fn host_resolvers_skip_loopback_ones() {
        let text =
            "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\nnameserver ::1\n";
        assert_eq!(host_resolvers(text), vec![Ipv4Addr::new(192, 0, 2, 53)]);
    }
}
