//! Making the network so: `ip`, `tc` and `nft`, run as commands (the same tools an operator
//! uses to look at what the agent did) through a [`command::Runner`]. Every step is idempotent, so an agent restarted over
//! a running gateway re-adopts what is there instead of failing on it.

use std::sync::Arc;

use command::Runner;

use crate::plan::{self, Member, Names};
use crate::{Config, NetError};

/// The link's capacity and the guaranteed share of the gateway's own forwarding, in bits/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub down: u64,
    pub up: u64,
    pub forward_down: u64,
    pub forward_up: u64,
}

/// One service's bandwidth: guaranteed rate and ceiling per direction, in bits/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub down_rate: u64,
    pub down_ceil: Option<u64>,
    pub up_rate: u64,
    pub up_ceil: Option<u64>,
}

/// Filter preference of the agent's redirect filters on the LAN interface.
const LAN_PREF: u32 = 49152;
/// HTB class of the gateway's own forwarding, and the default class.
const FORWARD_CLASS: &str = "fffe";
/// The smallest rate HTB is given (it refuses 0).
const MIN_RATE: u64 = 8_000;

fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|e| NetError::Sysctl {
        path: path.to_string(),
        value: value.to_string(),
        source: e,
    })
}

fn rate(bits: u64) -> String {
    format!("{}bit", bits.max(MIN_RATE))
}

/// HTB's quantum (bytes a class may send per round when borrowing) in proportion to its rate,
/// kept within what the kernel accepts without complaint.
fn quantum(bits: u64) -> String {
    (bits / 8 / 10).clamp(1514, 200_000).to_string()
}

/// HTB's burst: a few milliseconds at `bits`/s, so timer granularity does not cap fast
/// classes below their rate.
fn burst(bits: u64) -> String {
    (bits / 8 / 250).max(3_200).to_string()
}

/// One agent's network.
#[derive(Clone)]
pub struct Network {
    pub cfg: Config,
    pub names: Names,
    pub link: Link,
    /// The WAN interface: configured, or the default route's when the agent started.
    wan: Option<String>,
    /// Runs `ip`, `tc` and `nft`.
    runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("cfg", &self.cfg)
            .field("names", &self.names)
            .field("link", &self.link)
            .field("wan", &self.wan)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// The network of the agent tagged `tag`, made with this host's tools.
    pub fn new(cfg: Config, tag: &str, link: Link) -> Network {
        Network::with_runner(cfg, tag, link, Arc::new(command::System))
    }

    /// The same, with the tools run by `runner`.
    pub fn with_runner(cfg: Config, tag: &str, link: Link, runner: Arc<dyn Runner>) -> Network {
        let mut net = Network {
            cfg,
            names: Names::new(tag),
            link,
            wan: None,
            runner,
        };
        net.wan = net
            .cfg
            .wan
            .clone()
            .or_else(|| net.default_route_interface());
        net
    }

    /// Runs `program args…`, feeding `input` on stdin; its stdout on success.
    fn run_with(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, NetError> {
        Ok(self.runner.run(program, args, input)?)
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, NetError> {
        self.run_with(program, args, None)
    }

    /// Runs a command whose failure means "already so" (deleting what is gone).
    fn run_quiet(&self, program: &str, args: &[&str]) {
        let _ = self.run(program, args);
    }

    /// Whether an interface of that name exists in this network namespace.
    pub fn link_exists(&self, name: &str) -> bool {
        self.run("ip", &["link", "show", "dev", name]).is_ok()
    }

    /// The interface of the default IPv4 route, if there is one.
    fn default_route_interface(&self) -> Option<String> {
        let text = self
            .run("ip", &["-j", "-4", "route", "show", "default"])
            .ok()?;
        let routes: serde_json::Value = serde_json::from_str(&text).ok()?;
        routes
            .as_array()?
            .iter()
            .find_map(|r| r.get("dev")?.as_str().map(String::from))
    }

    /// Makes or changes HTB class `classid` under `parent` on `dev`: `rate` guaranteed, up to
    /// `ceil`, with a quantum and bursts in proportion.
    fn htb_class(
        &self,
        dev: &str,
        parent: &str,
        classid: &str,
        rate_bits: u64,
        ceil: u64,
    ) -> Result<(), NetError> {
        let (r, c) = (rate(rate_bits), rate(ceil));
        let (quantum, burst, cburst) = (quantum(rate_bits), burst(rate_bits), burst(ceil));
        self.run(
            "tc",
            &[
                "class", "replace", "dev", dev, "parent", parent, "classid", classid, "htb",
                "rate", &r, "ceil", &c, "quantum", &quantum, "burst", &burst, "cburst", &cburst,
            ],
        )
        .map(|_| ())
    }

    pub fn wan(&self) -> Option<&str> {
        self.wan.as_deref()
    }

    /// The resolvers services are given.
    pub fn resolvers(&self) -> Vec<std::net::Ipv4Addr> {
        if !self.cfg.dns.is_empty() {
            return self.cfg.dns.clone();
        }
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        crate::config::host_resolvers(&host)
    }

    /// The bridge, forwarding, and the two shaping devices. Safe to call again.
    pub fn ensure_base(&self) -> Result<(), NetError> {
        let bridge = self.names.bridge();
        if !self.link_exists(&bridge) {
            self.run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        }
        // A bridge without an address of its own takes its lowest port's, so its MAC would
        // change as services come and go, and every service's ARP entry for the gateway
        // would go stale. A fixed, locally administered one from the tag.
        self.run(
            "ip",
            &["link", "set", &bridge, "address", &self.names.bridge_mac()],
        )?;
        let cidr = format!("{}/24", self.cfg.gateway_address());
        self.run("ip", &["addr", "replace", &cidr, "dev", &bridge])?;
        // The bridge answers ARP for every service (its ports are isolated), sends no ICMP
        // redirects (that would invite services to talk past the firewall), and routes.
        for (path, value) in [
            (
                format!("/proc/sys/net/ipv4/conf/{bridge}/proxy_arp_pvlan"),
                "1",
            ),
            (
                format!("/proc/sys/net/ipv4/conf/{bridge}/send_redirects"),
                "0",
            ),
            (
                format!("/proc/sys/net/ipv4/neigh/{bridge}/proxy_delay"),
                "0",
            ),
            ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
        ] {
            write_sysctl(&path, value)?;
        }
        self.run("ip", &["link", "set", &bridge, "up"])?;

        let (down, up) = (self.names.ifb_down(), self.names.ifb_up());
        for (ifb, cap, forward) in [
            (&down, self.link.down, self.link.forward_down),
            (&up, self.link.up, self.link.forward_up),
        ] {
            if !self.link_exists(ifb) {
                self.run("ip", &["link", "add", ifb, "type", "ifb"])?;
            }
            self.run("ip", &["link", "set", ifb, "up"])?;
            let qdiscs = self.run("tc", &["-j", "qdisc", "show", "dev", ifb, "root"])?;
            if !qdiscs.contains("\"htb\"") {
                self.run(
                    "tc",
                    &[
                        "qdisc",
                        "replace",
                        "dev",
                        ifb,
                        "root",
                        "handle",
                        "1:",
                        "htb",
                        "default",
                        FORWARD_CLASS,
                    ],
                )?;
            }
            self.htb_class(ifb, "1:", "1:1", cap, cap)?;
            self.htb_class(
                ifb,
                "1:1",
                &format!("1:{FORWARD_CLASS}"),
                forward.min(cap),
                cap,
            )?;
        }
        if let Some(lan) = self.cfg.lan.as_deref().filter(|l| self.link_exists(l)) {
            // LAN hosts' traffic through the gateway shares the link with the services: it
            // is fed to the same trees, into the forwarding class.
            self.redirect(lan, Some(LAN_PREF))?;
        }
        Ok(())
    }

    /// Feeds what `dev` sends into the download tree and what it receives into the upload
    /// tree (a clsact qdisc with two mirred filters).
    fn redirect(&self, dev: &str, pref: Option<u32>) -> Result<(), NetError> {
        let qdiscs = self.run("tc", &["-j", "qdisc", "show", "dev", dev])?;
        if !qdiscs.contains("\"clsact\"") {
            self.run("tc", &["qdisc", "add", "dev", dev, "clsact"])?;
        }
        let pref = pref.map(|p| p.to_string());
        for (direction, ifb) in [
            ("egress", self.names.ifb_down()),
            ("ingress", self.names.ifb_up()),
        ] {
            let mut args = vec!["filter", "add", "dev", dev, direction];
            if let Some(pref) = &pref {
                self.run_quiet(
                    "tc",
                    &["filter", "del", "dev", dev, direction, "pref", pref],
                );
                args.extend(["pref", pref.as_str()]);
            } else if self
                .run("tc", &["filter", "show", "dev", dev, direction])?
                .contains("mirred")
            {
                continue;
            }
            args.extend([
                "protocol",
                "all",
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "mirred",
                "egress",
                "redirect",
                "dev",
                ifb.as_str(),
            ]);
            self.run("tc", &args)?;
        }
        Ok(())
    }

    /// Replaces the agent's nftables table with the rules for `members` (the installed
    /// services), in one transaction.
    pub fn apply_rules(&self, members: &[Member]) -> Result<(), NetError> {
        let script = plan::ruleset(&self.cfg, &self.names, self.wan(), members);
        self.run_with("nft", &["-f", "-"], Some(&script))
            .map(|_| ())
    }

    /// Gives the service in `slot` (its veth is on the bridge) its HTB classes and feeds its
    /// traffic to them.
    pub fn shape(&self, slot: u8, shape: &Shape) -> Result<(), NetError> {
        let address = format!("{}/32", self.cfg.address(slot));
        let class = format!("1:{slot:x}");
        let pref = slot.to_string();
        for (ifb, cap, reserve, limit, field) in [
            (
                self.names.ifb_down(),
                self.link.down,
                shape.down_rate,
                shape.down_ceil,
                "dst",
            ),
            (
                self.names.ifb_up(),
                self.link.up,
                shape.up_rate,
                shape.up_ceil,
                "src",
            ),
        ] {
            let ceil = limit.unwrap_or(cap).min(cap);
            let r = reserve.min(ceil);
            self.htb_class(&ifb, "1:1", &class, r, ceil)?;
            // fq_codel keeps a bulk flow from queueing in front of the service's other
            // flows, where the kernel has it; HTB's default FIFO otherwise.
            let _ = self.run(
                "tc",
                &[
                    "qdisc", "replace", "dev", &ifb, "parent", &class, "fq_codel",
                ],
            );
            self.run_quiet(
                "tc",
                &["filter", "del", "dev", &ifb, "parent", "1:", "pref", &pref],
            );
            self.run(
                "tc",
                &[
                    "filter", "add", "dev", &ifb, "parent", "1:", "pref", &pref, "protocol", "ip",
                    "u32", "match", "ip", field, &address, "flowid", &class,
                ],
            )?;
        }
        self.redirect(&self.names.host_if(slot), None)
    }

    /// Takes away the service's classes and its veth (gone already when its namespace died).
    pub fn unshape(&self, slot: u8) {
        let class = format!("1:{slot:x}");
        let pref = slot.to_string();
        for ifb in [self.names.ifb_down(), self.names.ifb_up()] {
            self.run_quiet(
                "tc",
                &["filter", "del", "dev", &ifb, "parent", "1:", "pref", &pref],
            );
            self.run_quiet("tc", &["class", "del", "dev", &ifb, "classid", &class]);
        }
        let host_if = self.names.host_if(slot);
        if self.link_exists(&host_if) {
            self.run_quiet("ip", &["link", "del", &host_if]);
        }
    }

    /// Removes everything the agent made: table, veths, bridge, shaping devices, LAN filters.
    pub fn teardown(&self) {
        self.run_quiet("nft", &["delete", "table", "inet", &self.names.table()]);
        // Services' veths too (when networking is switched off under running services).
        let veth = format!("shv{}", self.names.tag);
        let veths = self.present().into_iter().filter(|n| n.starts_with(&veth));
        let devices = [
            self.names.bridge(),
            self.names.ifb_down(),
            self.names.ifb_up(),
        ];
        for dev in veths.chain(devices) {
            if self.link_exists(&dev) {
                self.run_quiet("ip", &["link", "del", &dev]);
            }
        }
        if let Some(lan) = self.cfg.lan.as_deref().filter(|l| self.link_exists(l)) {
            let pref = LAN_PREF.to_string();
            for direction in ["egress", "ingress"] {
                self.run_quiet(
                    "tc",
                    &["filter", "del", "dev", lan, direction, "pref", &pref],
                );
            }
            let left = ["egress", "ingress"].iter().any(|d| {
                self.run("tc", &["filter", "show", "dev", lan, d])
                    .is_ok_and(|t| !t.trim().is_empty())
            });
            if !left {
                self.run_quiet("tc", &["qdisc", "del", "dev", lan, "clsact"]);
            }
        }
    }

    /// What of the agent's network exists now (for `shg doctor`-style checks and tests):
    /// interface names and the table.
    pub fn present(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Ok(text) = self.run("ip", &["-j", "link", "show"]) {
            let links: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            for l in links.as_array().into_iter().flatten() {
                if let Some(name) = l.get("ifname").and_then(|n| n.as_str()) {
                    if name.contains(&self.names.tag) {
                        found.push(name.to_string());
                    }
                }
            }
        }
        if self
            .run("nft", &["list", "table", "inet", &self.names.table()])
            .is_ok()
        {
            found.push(format!("nft table inet {}", self.names.table()));
        }
        found
    }

    /// Bytes sent so far by each HTB class, per direction: (down, up) by class minor (a
    /// service's slot; 1 for the whole link, 0xfffe for the gateway's forwarding).
    pub fn class_bytes(&self) -> std::collections::HashMap<u32, (u64, u64)> {
        let mut out: std::collections::HashMap<u32, (u64, u64)> = Default::default();
        for (i, ifb) in [self.names.ifb_down(), self.names.ifb_up()]
            .iter()
            .enumerate()
        {
            let Ok(text) = self.run("tc", &["-s", "class", "show", "dev", ifb]) else {
                continue;
            };
            for (minor, bytes) in parse_class_bytes(&text) {
                let entry = out.entry(minor).or_default();
                if i == 0 {
                    entry.0 = bytes;
                } else {
                    entry.1 = bytes;
                }
            }
        }
        out
    }
}

/// Bytes sent per HTB class (by minor number) from `tc -s class show` (whose `-j` form this
/// iproute2 does not have for classes): a `class htb 1:MINOR …` line, then ` Sent N bytes …`.
pub fn parse_class_bytes(text: &str) -> std::collections::HashMap<u32, u64> {
    let mut out = std::collections::HashMap::new();
    let mut current = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("class"), Some(_kind), Some(handle)) => {
                current = handle
                    .split_once(':')
                    .and_then(|(_, minor)| u32::from_str_radix(minor, 16).ok());
            }
            (Some("Sent"), Some(bytes), Some("bytes")) => {
                if let (Some(minor), Ok(bytes)) = (current.take(), bytes.parse()) {
                    out.insert(minor, bytes);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use command::Recorder;

    const LINK: Link = Link {
        down: 100_000_000,
        up: 20_000_000,
        forward_down: 10_000_000,
        forward_up: 2_000_000,
    };

    /// A network on a fake runner; the WAN is configured, so making it runs nothing.
    fn network() -> (Network, Arc<Recorder>) {
        let fake = Arc::new(Recorder::new());
        let cfg = Config {
            wan: Some("wan0".into()),
            ..Config::default()
        };
        let net = Network::with_runner(cfg, "0000beef", LINK, fake.clone());
        (net, fake)
    }

    #[test]
    fn the_wan_is_the_default_routes_interface_unless_configured() {
        let fake = Arc::new(Recorder::new());
        fake.answer(
            "ip -j -4 route show default",
            r#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth9"}]"#,
        );
        let net = Network::with_runner(Config::default(), "0000beef", LINK, fake.clone());
        assert_eq!(net.wan(), Some("eth9"));
        assert_eq!(fake.lines(), ["ip -j -4 route show default"]);
        let (configured, fake) = network();
        assert_eq!(configured.wan(), Some("wan0"));
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn the_rules_go_to_nft_in_one_transaction() {
        let (net, fake) = network();
        net.apply_rules(&[]).unwrap();
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].line(), "nft -f -");
        let script = calls[0].stdin.as_deref().unwrap();
        assert_eq!(
            script,
            plan::ruleset(&net.cfg, &net.names, Some("wan0"), &[])
        );
    }

    #[test]
    fn a_service_is_shaped_on_both_trees_and_unshaped_again() {
        let (net, fake) = network();
        let shape = Shape {
            down_rate: 8_000_000,
            down_ceil: None,
            up_rate: 1_000_000,
            up_ceil: Some(4_000_000),
        };
        net.shape(3, &shape).unwrap();
        let lines = fake.lines();
        let classes: Vec<&String> = lines.iter().filter(|l| l.starts_with("tc class")).collect();
        assert_eq!(classes.len(), 2, "{lines:#?}");
        assert!(classes[0].starts_with(
            "tc class replace dev shgd0000beef parent 1:1 classid 1:3 htb rate 8000000bit ceil 100000000bit"
        ));
        assert!(classes[1].starts_with(
            "tc class replace dev shgu0000beef parent 1:1 classid 1:3 htb rate 1000000bit ceil 4000000bit"
        ));
        assert!(lines
            .iter()
            .any(|l| l.ends_with("match ip dst 10.77.0.3/32 flowid 1:3")));
        assert!(lines
            .iter()
            .any(|l| l.ends_with("match ip src 10.77.0.3/32 flowid 1:3")));
        // Its veth's traffic is fed to both trees.
        assert!(lines
            .iter()
            .any(|l| l.contains("dev shv0000beef3 egress") && l.ends_with("dev shgd0000beef")));

        let fake_lines_before = fake.lines().len();
        net.unshape(3);
        let after: Vec<String> = fake.lines().split_off(fake_lines_before);
        assert!(after.contains(&"tc class del dev shgd0000beef classid 1:3".to_string()));
        assert!(after.contains(&"tc class del dev shgu0000beef classid 1:3".to_string()));
        assert!(
            after.contains(&"ip link del shv0000beef3".to_string()),
            "{after:#?}"
        );
    }

    #[test]
    fn a_failed_tool_names_its_command_and_what_it_said() {
        let (net, fake) = network();
        fake.fail(
            "tc class replace",
            "RTNETLINK answers: No such file or directory",
        );
        let err = net
            .shape(
                3,
                &Shape {
                    down_rate: 1,
                    down_ceil: None,
                    up_rate: 1,
                    up_ceil: None,
                },
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("`tc class replace dev shgd0000beef parent 1:1 classid 1:3 htb")
                && text.ends_with("failed: RTNETLINK answers: No such file or directory"),
            "{text}"
        );
    }

    #[test]
    fn teardown_takes_away_the_table_veths_and_devices_of_this_agent_only() {
        let (net, fake) = network();
        fake.answer(
            "ip -j link show",
            r#"[{"ifname":"lo"},{"ifname":"shgb0000beef"},{"ifname":"shv0000beef2"},{"ifname":"shv1111beef2"},{"ifname":"shgd0000beef"}]"#,
        );
        net.teardown();
        let lines = fake.lines();
        assert_eq!(lines[0], "nft delete table inet shg_0000beef");
        for dev in [
            "shv0000beef2",
            "shgb0000beef",
            "shgd0000beef",
            "shgu0000beef",
        ] {
            assert!(
                lines.contains(&format!("ip link del {dev}")),
                "{dev}: {lines:#?}"
            );
        }
        assert!(!lines
            .iter()
            .any(|l| l.contains("shv1111beef2") && l.contains("del")));
    }

    #[test]
    fn class_bytes_come_from_tc_text() {
        let text = "class htb 1:fffe parent 1:1 prio 0 rate 10Mbit ceil 50Mbit burst 1600b cburst 1600b \n Sent 1429 bytes 20 pkt (dropped 0, overlimits 0 requeues 0) \n backlog 0b 0p requeues 0\nclass htb 1:1 root rate 50Mbit ceil 50Mbit burst 1600b cburst 1600b \n Sent 50090429 bytes 33113 pkt (dropped 0, overlimits 1810 requeues 0) \nclass htb 1:2 parent 1:1 prio 0 rate 10Mbit \n Sent 7 bytes 1 pkt\n";
        let got = parse_class_bytes(text);
        assert_eq!(got.get(&0xfffe), Some(&1429));
        assert_eq!(got.get(&1), Some(&50090429));
        assert_eq!(got.get(&2), Some(&7));
    }
}
