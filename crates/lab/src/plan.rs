//! The lab's names, addresses and link rates, decided from its parameters alone: pure, so
//! `up`, `status`, `exec` and `down` always agree on what a lab is made of.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The controller's address: on the WAN router's loopback, reachable from every region.
pub const CONTROLLER_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The controller's HTTPS port.
pub const CONTROLLER_PORT: u16 = 7443;
/// The gateway's address on its LAN, and the household device's.
pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// Interface names inside the gateway namespace (the agent is told them in gateway.toml).
pub const WAN_IF: &str = "wan0";
pub const LAN_IF: &str = "lan0";
/// The household device's interface, in the LAN namespace.
pub const HOST_IF: &str = "eth0";
/// The NAT table the lab adds in each gateway namespace (the agent's own is `inet shg_TAG`).
pub const NAT_TABLE: &str = "shglab";
/// Most regions: each is a /16 of 100.64.0.0/10 above 100.64.0.0/16.
pub const MAX_REGIONS: u32 = 63;
/// Most gateways in one lab: more than this machine would hold anyway.
pub const MAX_GATEWAYS: u32 = 2000;

/// An access link: its profile's name and its rates in bits/s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    pub down: u64,
    pub up: u64,
    /// One-way delay and its jitter, in microseconds: added with netem where the kernel has
    /// it (the named profiles' typical access-line figures; none for DOWN/UP).
    #[serde(default)]
    pub delay_us: u64,
    #[serde(default)]
    pub jitter_us: u64,
}

/// A rate: a number with an optional unit `kbit`, `mbit` or `gbit` (default mbit).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (number, scale) = [
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ]
    .iter()
    .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n.to_string(), *scale)))
    .unwrap_or((t.clone(), 1_000_000));
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("`{text}` is not a rate: give a number of Mbit/s or one with kbit, mbit or gbit (e.g. 8, 512kbit)")
    })?;
    let bits = (value * scale as f64).round();
    if !(8_000.0..=100_000_000_000.0).contains(&bits) {
        return Err(format!(
            "rate `{text}` is out of range: a link is between 8kbit and 100gbit"
        ));
    }
    Ok(bits as u64)
}

/// `adsl` (8/1 Mbit/s), `vdsl` (50/10), `ftth` (1000/500), or `DOWN/UP`.
pub fn parse_link(text: &str) -> Result<Link, String> {
    let named = |name: &str, down: u64, up: u64, delay_us: u64, jitter_us: u64| Link {
        name: name.to_string(),
        down: down * 1_000_000,
        up: up * 1_000_000,
        delay_us,
        jitter_us,
    };
    match text {
        "adsl" => Ok(named("adsl", 8, 1, 15_000, 3_000)),
        "vdsl" => Ok(named("vdsl", 50, 10, 8_000, 2_000)),
        "ftth" => Ok(named("ftth", 1000, 500, 2_000, 500)),
        other => {
            let (down, up) = other.split_once('/').ok_or_else(|| {
                format!("`{other}` is not a link: use adsl, vdsl, ftth or DOWN/UP (e.g. 20/5, 512kbit/128kbit)")
            })?;
            Ok(Link {
                name: format!("{}/{}", down.trim(), up.trim()),
                down: parse_rate(down)?,
                up: parse_rate(up)?,
                delay_us: 0,
                jitter_us: 0,
            })
        }
    }
}

/// One region: a subnet of the ISP's network, a bridge in the WAN namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// `r1`, `r2`…: the gateway's `region` label and the bridge's name.
    pub name: String,
    /// The router's address on the region's /16.
    pub router: Ipv4Addr,
}

/// One emulated gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// `gw1`, `gw2`…; also the name of its WAN veth's far end in the WAN namespace.
    pub name: String,
    pub region: String,
    /// Its WAN address, in its region's /16.
    pub wan_address: Ipv4Addr,
    /// Its region's router, its default route.
    pub router: Ipv4Addr,
    /// The namespace the agent runs in, and the one of the household's devices.
    pub netns: String,
    pub lan_netns: String,
    /// The agent's state directory.
    pub state_dir: PathBuf,
}

impl Gateway {
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("api.sock")
    }

    /// The cgroup parent the agent puts its services under: `shg-` and the FNV-1a of its
    /// state directory, as `agent::Config::new` derives it.
    pub fn cgroup_parent(&self) -> String {
        let hash = self
            .state_dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            }) as u32;
        format!("shg-{hash:08x}")
    }

    /// The labels it enrolls with.
    pub fn labels(&self, link: &Link, lab: &str) -> String {
        format!("region={},link={},lab={lab}", self.region, link.name)
    }
}

/// A whole lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// Everything on disk: the state file, the controller's and the agents' state, logs.
    pub dir: PathBuf,
    /// The ISP's router, where the controller runs.
    pub wan_netns: String,
    pub link: Link,
    pub regions: Vec<Region>,
    pub gateways: Vec<Gateway>,
}

impl Plan {
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    pub fn controller_dir(&self) -> PathBuf {
        self.dir.join("controller")
    }

    pub fn controller_socket(&self) -> PathBuf {
        self.controller_dir().join("api.sock")
    }

    pub fn controller_url(&self) -> String {
        format!("https://{CONTROLLER_ADDR}:{CONTROLLER_PORT}")
    }

    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// Every namespace, the WAN router's last (the gateways' veths end there).
    pub fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .gateways
            .iter()
            .flat_map(|g| [g.netns.clone(), g.lan_netns.clone()])
            .collect();
        all.push(self.wan_netns.clone());
        all
    }
}

/// Where a lab named `name` lives under `base` (`/run/shg-lab` by default).
pub fn lab_dir(base: &Path, name: &str) -> PathBuf {
    base.join(name)
}

/// Checks a lab's name: it goes into namespace names and paths.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 16
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a lab name: use 1 to 16 lowercase letters, digits or '-'"
        ))
    }
}

/// The lab of `gateways` gateways spread round-robin over `regions` regions.
pub fn plan(
    name: &str,
    base: &Path,
    gateways: u32,
    regions: u32,
    link: Link,
) -> Result<Plan, String> {
    check_name(name)?;
    if !(1..=MAX_GATEWAYS).contains(&gateways) {
        return Err(format!(
            "a lab has 1 to {MAX_GATEWAYS} gateways, not {gateways}"
        ));
    }
    if !(1..=MAX_REGIONS).contains(&regions) {
        return Err(format!(
            "a lab has 1 to {MAX_REGIONS} regions, not {regions}"
        ));
    }
    let dir = lab_dir(base, name);
    let prefix = format!("shglab-{name}");
    let regions: Vec<Region> = (1..=regions)
        .map(|r| Region {
            name: format!("r{r}"),
            router: region_host(r, 1),
        })
        .collect();
    let count = regions.len() as u32;
    let gateways = (1..=gateways)
        .map(|i| {
            let r = (i - 1) % count + 1;
            // The k-th gateway of its region; host 1 is the router.
            let k = (i - 1) / count + 1;
            Gateway {
                name: format!("gw{i}"),
                region: format!("r{r}"),
                wan_address: region_host(r, k + 1),
                router: region_host(r, 1),
                netns: format!("{prefix}-gw{i}"),
                lan_netns: format!("{prefix}-gw{i}-lan"),
                state_dir: dir.join(format!("gw{i}")),
            }
        })
        .collect();
    Ok(Plan {
        name: name.to_string(),
        dir,
        wan_netns: format!("{prefix}-wan"),
        link,
        regions,
        gateways,
    })
}

/// Host `h` of region `r`'s /16: 100.(64+r).0.0/16.
fn region_host(r: u32, h: u32) -> Ipv4Addr {
    Ipv4Addr::new(100, (64 + r) as u8, (h >> 8) as u8, (h & 0xff) as u8)
}

/// HTB's burst for a rate: a few milliseconds' worth, never below a couple of packets.
pub fn burst(bits: u64) -> u64 {
    (bits / 8 / 250).max(3_200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_by_name_and_by_rates() {
        assert_eq!(parse_link("adsl").unwrap().down, 8_000_000);
        assert_eq!(parse_link("adsl").unwrap().up, 1_000_000);
        assert_eq!(parse_link("ftth").unwrap().down, 1_000_000_000);
        let custom = parse_link("20/512kbit").unwrap();
        assert_eq!((custom.down, custom.up), (20_000_000, 512_000));
        assert_eq!(custom.name, "20/512kbit");
        assert_eq!(parse_rate("1.5gbit").unwrap(), 1_500_000_000);
        assert!(parse_link("dialup")
            .unwrap_err()
            .contains("adsl, vdsl, ftth"));
        assert!(parse_rate("0").unwrap_err().contains("out of range"));
        assert!(parse_rate("fast").unwrap_err().contains("not a rate"));
    }

    #[test]
    fn gateways_go_round_robin_over_regions_with_addresses_in_theirs() {
        let p = plan(
            "t1",
            Path::new("/run/shg-lab"),
            5,
            2,
            parse_link("adsl").unwrap(),
        )
        .unwrap();
        let regions: Vec<&str> = p.gateways.iter().map(|g| g.region.as_str()).collect();
        assert_eq!(regions, ["r1", "r2", "r1", "r2", "r1"]);
        let addrs: Vec<String> = p
            .gateways
            .iter()
            .map(|g| g.wan_address.to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "100.65.0.2",
                "100.66.0.2",
                "100.65.0.3",
                "100.66.0.3",
                "100.65.0.4"
            ]
        );
        assert_eq!(p.gateways[1].router, Ipv4Addr::new(100, 66, 0, 1));
        assert_eq!(p.regions[1].router, Ipv4Addr::new(100, 66, 0, 1));
        assert_eq!(p.gateways[0].netns, "shglab-t1-gw1");
        assert_eq!(p.gateways[0].lan_netns, "shglab-t1-gw1-lan");
        assert_eq!(p.wan_netns, "shglab-t1-wan");
        assert_eq!(p.gateways[0].state_dir, Path::new("/run/shg-lab/t1/gw1"));
        assert_eq!(p.state_file(), Path::new("/run/shg-lab/t1/lab.json"));
        assert_eq!(p.namespaces().last().unwrap(), "shglab-t1-wan");
        assert_eq!(
            p.gateways[0].labels(&p.link, "t1"),
            "region=r1,link=adsl,lab=t1"
        );
    }

    #[test]
    fn a_big_region_spills_into_the_next_third_octet() {
        let p = plan("big", Path::new("/x"), 300, 1, parse_link("adsl").unwrap()).unwrap();
        assert_eq!(p.gateways[299].wan_address, Ipv4Addr::new(100, 65, 1, 45));
    }

    #[test]
    fn bad_parameters_are_refused_with_the_rule() {
        let link = parse_link("adsl").unwrap();
        let base = Path::new("/x");
        assert!(plan("Bad_Name", base, 1, 1, link.clone())
            .unwrap_err()
            .contains("lowercase"));
        assert!(plan("ok", base, 0, 1, link.clone())
            .unwrap_err()
            .contains("1 to"));
        assert!(plan("ok", base, 1, 64, link)
            .unwrap_err()
            .contains("regions"));
    }

    #[test]
    fn the_cgroup_parent_is_the_agents() {
        // Agent::Config::new's hash of "/run/shg-lab/t1/gw1"; the shg crate checks the two
        // stay equal against the agent itself.
        let p = plan(
            "t1",
            Path::new("/run/shg-lab"),
            1,
            1,
            parse_link("adsl").unwrap(),
        )
        .unwrap();
        assert!(p.gateways[0].cgroup_parent().starts_with("shg-"));
        assert_eq!(p.gateways[0].cgroup_parent().len(), 12);
    }
}
