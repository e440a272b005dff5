//! What the network should look like, decided without touching it: interface names, the
//! nftables ruleset, the allowed paths between services, each service's hosts file, and
//! published-port conflicts. Everything here is a pure function, tested on its text.

use std::fmt::Write as _;

use manifest::{Egress, Export, Import, Manifest, Port, Protocol, Publish};

use crate::Config;

/// The names of one agent's network objects; `tag` is 8 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub tag: String,
}

impl Names {
    pub fn new(tag: &str) -> Names {
        Names {
            tag: tag.to_string(),
        }
    }
    pub fn bridge(&self) -> String {
        format!("shgb{}", self.tag)
    }
    /// The bridge's MAC: locally administered, unicast, from the tag.
    pub fn bridge_mac(&self) -> String {
        let t = self.tag.as_bytes();
        let hex = |i: usize| std::str::from_utf8(&t[i..i + 2]).unwrap_or("00");
        if t.len() == 8 && t.iter().all(u8::is_ascii_hexdigit) {
            format!("02:{}:{}:{}:{}:01", hex(0), hex(2), hex(4), hex(6))
        } else {
            "02:53:48:47:00:01".to_string()
        }
    }
    /// The service's end on the bridge.
    pub fn host_if(&self, slot: u8) -> String {
        format!("shv{}{slot}", self.tag)
    }
    /// The service's end before it is moved in and renamed `eth0`.
    pub fn peer_if(&self, slot: u8) -> String {
        format!("shp{}{slot}", self.tag)
    }
    pub fn ifb_down(&self) -> String {
        format!("shgd{}", self.tag)
    }
    pub fn ifb_up(&self) -> String {
        format!("shgu{}", self.tag)
    }
    /// The nftables table (family `inet`).
    pub fn table(&self) -> String {
        format!("shg_{}", self.tag)
    }
}

/// One installed service as the network sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The service's own name (what its importers resolve).
    pub name: String,
    /// Its key on the host (its directory): the name, or `PROVIDER+NAME` when another
    /// provider's service held the name first (`manifest::service_key`).
    pub key: String,
    pub provider: String,
    /// Its address is `.slot` of the subnet; fixed from install to removal.
    pub slot: u8,
    pub ports: Vec<Port>,
    pub exports: Vec<Export>,
    pub imports: Vec<Import>,
    /// The LAN hosts the household lets it reach.
    pub lan: Vec<LanGrant>,
    /// Whether it may open connections to the WAN.
    pub egress: Egress,
}

impl Member {
    pub fn new(manifest: &Manifest, slot: u8) -> Member {
        Member {
            name: manifest::bare_name(&manifest.name).to_string(),
            key: manifest.name.clone(),
            provider: manifest.provider.clone(),
            slot,
            ports: manifest.ports.clone(),
            exports: manifest.exports.clone(),
            imports: manifest.imports.clone(),
            lan: Vec::new(),
            egress: manifest.egress,
        }
    }
}

/// A LAN host the household lets one service reach: every port of it, or one port (TCP and
/// UDP). Without one, the firewall keeps every service off the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanGrant {
    pub host: std::net::Ipv4Addr,
    pub port: Option<u16>,
}

impl LanGrant {
    /// `HOST` or `HOST:PORT`; refuses what is no LAN host: the services' own subnet (services
    /// reach each other by imports and exports), loopback, multicast, broadcast, 0.0.0.0.
    pub fn parse(text: &str, cfg: &Config) -> Result<LanGrant, String> {
        let (host, port) = match text.split_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("LAN host `{text}`: `{p}` is not a port from 1 to 65535")
                })?;
                (h, Some(port))
            }
            None => (text, None),
        };
        let host: std::net::Ipv4Addr = host.parse().map_err(|_| {
            format!("LAN host `{text}`: give an IPv4 address, optionally with a port (192.168.1.20 or 192.168.1.20:554)")
        })?;
        let [a, b, c, _] = host.octets();
        if [a, b, c] == cfg.prefix {
            return Err(format!(
                "LAN host `{text}` is in the services' own subnet {}; a service reaches another by importing what it exports",
                cfg.subnet()
            ));
        }
        if host.is_loopback()
            || host.is_multicast()
            || host.is_broadcast()
            || host.is_unspecified()
            || host.is_link_local()
        {
            return Err(format!(
                "LAN host `{text}` is not a host's address on the LAN (loopback, link-local, multicast, broadcast or 0.0.0.0)"
            ));
        }
        Ok(LanGrant { host, port })
    }
}

impl std::fmt::Display for LanGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// A path the firewall lets through: service `from` may open connections to `port` of `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub from: u8,
    pub to: u8,
    pub protocol: Protocol,
    pub port: u16,
}

/// The allowed paths: `from` imports `to` by name and provider, and `to` exports the port to
/// `from`'s provider or to everyone. Both sides must agree; neither alone opens anything.
pub fn allowed(members: &[Member]) -> Vec<Allow> {
    let mut out = Vec::new();
    for importer in members {
        for import in &importer.imports {
            let Some(exporter) = members
                .iter()
                .find(|m| m.name == import.service && m.provider == import.provider)
            else {
                continue;
            };
            for export in &exporter.exports {
                let to_them = export
                    .to
                    .iter()
                    .any(|p| p == "*" || *p == importer.provider);
                if !to_them {
                    continue;
                }
                for port in exporter.ports.iter().filter(|p| p.port == export.port) {
                    out.push(Allow {
                        from: importer.slot,
                        to: exporter.slot,
                        protocol: port.protocol,
                        port: port.port,
                    });
                }
            }
        }
    }
    out
}

/// The whole nftables table, as one `nft -f` script that replaces the old table atomically.
/// `wan` is the WAN interface when known.
pub fn ruleset(cfg: &Config, names: &Names, wan: Option<&str>, members: &[Member]) -> String {
    let table = names.table();
    let bridge = names.bridge();
    let mut s = String::new();
    // Create-then-delete makes the delete valid whether or not the table existed; the three
    // statements run as one transaction.
    let _ = writeln!(s, "table inet {table} {{}}\ndelete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");

    let elements = |items: Vec<String>| {
        if items.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", items.join(", "))
        }
    };
    let allow: Vec<String> = allowed(members)
        .iter()
        .map(|a| {
            format!(
                "{} . {} . {} . {}",
                cfg.address(a.from),
                cfg.address(a.to),
                proto(a.protocol),
                a.port
            )
        })
        .collect();
    let _ = write!(
        s,
        "\tset allow {{\n\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service\n{}\t}}\n",
        elements(allow)
    );
    // The household's grants: a service to a whole LAN host, or to one port of it.
    let mut hosts = Vec::new();
    let mut host_ports = Vec::new();
    for m in members {
        for g in &m.lan {
            let from = cfg.address(m.slot);
            match g.port {
                None => hosts.push(format!("{from} . {}", g.host)),
                Some(port) => host_ports.push(format!("{from} . {} . {port}", g.host)),
            }
        }
    }
    let _ = write!(
        s,
        "\tset lan_host {{\n\t\ttype ipv4_addr . ipv4_addr\n{}\t}}\n",
        elements(hosts)
    );
    let _ = write!(
        s,
        "\tset lan_port {{\n\t\ttype ipv4_addr . ipv4_addr . inet_service\n{}\t}}\n",
        elements(host_ports)
    );
    // Services whose manifest says `[network] egress = "none"`.
    let closed: Vec<String> = members
        .iter()
        .filter(|m| m.egress == Egress::None)
        .map(|m| cfg.address(m.slot).to_string())
        .collect();
    let _ = write!(
        s,
        "\tset no_egress {{\n\t\ttype ipv4_addr\n{}\t}}\n",
        elements(closed)
    );
    for (map, side) in [("pub_lan", Publish::Lan), ("pub_wan", Publish::Wan)] {
        let items: Vec<String> = members
            .iter()
            .flat_map(|m| {
                m.ports
                    .iter()
                    .filter(move |p| p.publish == side)
                    .map(move |p| {
                        format!(
                            "{} . {} : {} . {}",
                            proto(p.protocol),
                            p.port,
                            cfg.address(m.slot),
                            p.port
                        )
                    })
            })
            .collect();
        let _ = write!(
            s,
            "\tmap {map} {{\n\t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n{}\t}}\n",
            elements(items)
        );
    }

    // Published ports: only traffic addressed to the gateway itself, on the right side.
    let lan_match = match (&cfg.lan, wan) {
        (Some(lan), _) => format!("iifname \"{lan}\""),
        (None, Some(wan)) => format!("iifname != {{ \"{wan}\", \"{bridge}\", \"lo\" }}"),
        (None, None) => format!("iifname != {{ \"{bridge}\", \"lo\" }}"),
    };
    let _ = writeln!(
        s,
        "\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\t{lan_match} fib daddr type local dnat ip to meta l4proto . th dport map @pub_lan"
    );
    if let Some(wan) = wan {
        let _ = writeln!(
            s,
            "\t\tiifname \"{wan}\" fib daddr type local dnat ip to meta l4proto . th dport map @pub_wan"
        );
    }
    let _ = writeln!(s, "\t}}");

    let subnet = cfg.subnet();
    let _ = writeln!(
        s,
        "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n\t}}"
    );

    let _ = writeln!(
        s,
        "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"{bridge}\" jump from_service\n\t\toifname \"{bridge}\" jump to_service\n\t}}"
    );
    // From a service: replies, allowed imports, then the WAN only.
    let _ = writeln!(s, "\tchain from_service {{");
    let _ = writeln!(s, "\t\tmeta nfproto ipv6 drop");
    let _ = writeln!(s, "\t\tct state established,related accept");
    let _ = writeln!(
        s,
        "\t\tip saddr . ip daddr . meta l4proto . th dport @allow accept"
    );
    let _ = writeln!(s, "\t\tip saddr . ip daddr @lan_host accept");
    let _ = writeln!(
        s,
        "\t\tmeta l4proto {{ tcp, udp }} ip saddr . ip daddr . th dport @lan_port accept"
    );
    let _ = writeln!(s, "\t\tip saddr @no_egress drop");
    let _ = writeln!(s, "\t\toifname \"{bridge}\" drop");
    if let Some(lan) = &cfg.lan {
        let _ = writeln!(s, "\t\toifname \"{lan}\" drop");
    }
    match wan {
        Some(wan) => {
            let _ = writeln!(s, "\t\toifname \"{wan}\" accept\n\t\tdrop");
        }
        None => {
            let _ = writeln!(s, "\t\taccept");
        }
    }
    let _ = writeln!(s, "\t}}");
    // To a service: replies and published ports only.
    let _ = writeln!(
        s,
        "\tchain to_service {{\n\t\tmeta nfproto ipv6 drop\n\t\tct state established,related accept\n\t\tct status dnat accept\n\t\tdrop\n\t}}"
    );
    // Services never reach the gateway itself (its API, its DNS, its admin pages).
    let _ = writeln!(
        s,
        "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"{bridge}\" ct state established,related accept\n\t\tiifname \"{bridge}\" drop\n\t}}"
    );
    let _ = writeln!(s, "}}");
    s
}

/// The `/etc/hosts` of `member`: itself, and every service it imports that is installed,
/// by name.
pub fn hosts(cfg: &Config, member: &Member, members: &[Member]) -> String {
    let mut s = format!(
        "127.0.0.1\tlocalhost\n{}\t{}\n",
        cfg.address(member.slot),
        member.name
    );
    for import in &member.imports {
        if let Some(m) = members
            .iter()
            .find(|m| m.name == import.service && m.provider == import.provider)
        {
            let _ = writeln!(s, "{}\t{}", cfg.address(m.slot), m.name);
        }
    }
    s
}

/// The `/etc/resolv.conf` of every service.
pub fn resolv_conf(servers: &[std::net::Ipv4Addr]) -> String {
    let mut s = String::from("# written by the shg gateway agent\n");
    for server in servers {
        let _ = writeln!(s, "nameserver {server}");
    }
    s
}

/// Why a service's published port cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub port: u16,
    pub protocol: Protocol,
    pub side: Publish,
    /// The installed service publishing it already; `None` when the gateway keeps it.
    pub holder: Option<String>,
}

impl Conflict {
    /// The sentence, naming the holder as `holder` says (a rival provider's service is not
    /// named to a provider).
    pub fn message(&self, holder: Option<&str>) -> String {
        let side = match self.side {
            Publish::Lan => "LAN",
            Publish::Wan => "WAN",
            Publish::None => "no",
        };
        let (port, proto) = (self.port, proto(self.protocol));
        match holder {
            Some(holder) => format!(
                "port {port}/{proto} is already published on the {side} side by {holder}; \
                 remove it or stop publishing the port there, or publish another port"
            ),
            None => format!(
                "port {port}/{proto} on the {side} side belongs to the gateway itself \
                 (`[network] reserved_ports` or its own API); publish another port"
            ),
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let holder = self.holder.as_ref().map(|h| format!("`{h}`"));
        f.write_str(&self.message(holder.as_deref()))
    }
}

/// The first published port of `new` that the gateway keeps (`reserved`, which includes the
/// API's own port) or that another installed service already publishes on the same side.
pub fn port_conflict(new: &Member, others: &[Member], reserved: &[u16]) -> Option<Conflict> {
    for p in new.ports.iter().filter(|p| p.publish != Publish::None) {
        let conflict = |holder: Option<String>| Conflict {
            port: p.port,
            protocol: p.protocol,
            side: p.publish,
            holder,
        };
        if reserved.contains(&p.port) {
            return Some(conflict(None));
        }
        let holder = others.iter().filter(|o| o.key != new.key).find(|o| {
            o.ports
                .iter()
                .any(|q| q.publish == p.publish && q.port == p.port && q.protocol == p.protocol)
        });
        if let Some(holder) = holder {
            return Some(conflict(Some(holder.key.clone())));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, provider: &str, slot: u8, ports: &[(u16, Publish)]) -> Member {
        Member {
            name: name.into(),
            key: name.into(),
            provider: provider.into(),
            slot,
            ports: ports
                .iter()
                .map(|(port, publish)| Port {
                    port: *port,
                    protocol: Protocol::Tcp,
                    publish: *publish,
                })
                .collect(),
            exports: Vec::new(),
            imports: Vec::new(),
            lan: Vec::new(),
            egress: Egress::Wan,
        }
    }

    fn export(m: &mut Member, port: u16, to: &[&str]) {
        m.exports.push(Export {
            port,
            to: to.iter().map(|s| s.to_string()).collect(),
        });
    }

    fn import(m: &mut Member, service: &str, provider: &str) {
        m.imports.push(Import {
            service: service.into(),
            provider: provider.into(),
        });
    }

    #[test]
    fn lan_grants_are_lan_hosts_only() {
        let cfg = Config::default();
        let g = LanGrant::parse("192.168.1.30:554", &cfg).unwrap();
        assert_eq!(
            (g.to_string(), g.port),
            ("192.168.1.30:554".into(), Some(554))
        );
        assert_eq!(LanGrant::parse("192.168.1.2", &cfg).unwrap().port, None);
        for (bad, why) in [
            ("10.77.0.5", "own subnet"),
            ("127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "0.0.0.0"),
            ("printer", "IPv4 address"),
            ("192.168.1.2:0", "not a port"),
            ("192.168.1.2:http", "not a port"),
        ] {
            let err = LanGrant::parse(bad, &cfg).unwrap_err();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_bridge_mac_is_fixed_and_local() {
        assert_eq!(Names::new("0123abcd").bridge_mac(), "02:01:23:ab:cd:01");
    }

    #[test]
    fn names_fit_linux_interface_names() {
        let n = Names::new("0123abcd");
        for name in [
            n.bridge(),
            n.host_if(254),
            n.peer_if(254),
            n.ifb_down(),
            n.ifb_up(),
        ] {
            assert!(crate::config::valid_interface(&name), "{name}");
        }
    }

    #[test]
    fn a_path_opens_only_when_export_and_import_agree() {
        let camera = member("camera", "acme", 3, &[(8080, Publish::None)]);
        let mut viewer = member("viewer", "bob", 4, &[]);
        let mut snoop = member("snoop", "eve", 5, &[]);
        import(&mut viewer, "camera", "acme");
        import(&mut snoop, "camera", "acme");
        // Imports alone: nothing.
        let all = [camera.clone(), viewer.clone(), snoop.clone()];
        assert!(allowed(&all).is_empty());
        // Exported to bob: viewer only.
        let mut camera_to_bob = camera.clone();
        export(&mut camera_to_bob, 8080, &["bob"]);
        let all = [camera_to_bob, viewer.clone(), snoop.clone()];
        assert_eq!(
            allowed(&all),
            vec![Allow {
                from: 4,
                to: 3,
                protocol: Protocol::Tcp,
                port: 8080
            }]
        );
        // Exported to everyone: both importers, and no one who did not import.
        let mut camera_to_all = camera.clone();
        export(&mut camera_to_all, 8080, &["*"]);
        let other = member("other", "carol", 6, &[]);
        let all = [camera_to_all, viewer, snoop, other];
        let froms: Vec<u8> = allowed(&all).iter().map(|a| a.from).collect();
        assert_eq!(froms, vec![4, 5]);
        // An import of a same-named service of another provider opens nothing.
        let mut fake = member("camera", "eve", 7, &[(8080, Publish::None)]);
        export(&mut fake, 8080, &["*"]);
        let mut viewer = member("viewer", "bob", 4, &[]);
        import(&mut viewer, "camera", "acme");
        assert!(allowed(&[fake, viewer]).is_empty());
    }

    #[test]
    fn the_ruleset_reads_as_intended() {
        let cfg = Config {
            lan: Some("lan0".into()),
            ..Config::default()
        };
        let mut camera = member(
            "camera",
            "acme",
            3,
            &[(8080, Publish::Lan), (9000, Publish::Wan)],
        );
        export(&mut camera, 8080, &["bob"]);
        let mut viewer = member("viewer", "bob", 4, &[]);
        import(&mut viewer, "camera", "acme");
        viewer.lan = vec![
            LanGrant::parse("192.168.1.20", &cfg).unwrap(),
            LanGrant::parse("192.168.1.30:554", &cfg).unwrap(),
        ];
        viewer.egress = Egress::None;
        let text = ruleset(
            &cfg,
            &Names::new("0000beef"),
            Some("wan0"),
            &[camera, viewer],
        );
        let expected = "\
table inet shg_0000beef {}
delete table inet shg_0000beef
table inet shg_0000beef {
\tset allow {
\t\ttype ipv4_addr . ipv4_addr . inet_proto . inet_service
\t\telements = { 10.77.0.4 . 10.77.0.3 . tcp . 8080 }
\t}
\tset lan_host {
\t\ttype ipv4_addr . ipv4_addr
\t\telements = { 10.77.0.4 . 192.168.1.20 }
\t}
\tset lan_port {
\t\ttype ipv4_addr . ipv4_addr . inet_service
\t\telements = { 10.77.0.4 . 192.168.1.30 . 554 }
\t}
\tset no_egress {
\t\ttype ipv4_addr
\t\telements = { 10.77.0.4 }
\t}
\tmap pub_lan {
\t\ttype inet_proto . inet_service : ipv4_addr . inet_service
\t\telements = { tcp . 8080 : 10.77.0.3 . 8080 }
\t}
\tmap pub_wan {
\t\ttype inet_proto . inet_service : ipv4_addr . inet_service
\t\telements = { tcp . 9000 : 10.77.0.3 . 9000 }
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname \"lan0\" fib daddr type local dnat ip to meta l4proto . th dport map @pub_lan
\t\tiifname \"wan0\" fib daddr type local dnat ip to meta l4proto . th dport map @pub_wan
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.77.0.0/24 oifname != \"shgb0000beef\" masquerade
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"shgb0000beef\" jump from_service
\t\toifname \"shgb0000beef\" jump to_service
\t}
\tchain from_service {
\t\tmeta nfproto ipv6 drop
\t\tct state established,related accept
\t\tip saddr . ip daddr . meta l4proto . th dport @allow accept
\t\tip saddr . ip daddr @lan_host accept
\t\tmeta l4proto { tcp, udp } ip saddr . ip daddr . th dport @lan_port accept
\t\tip saddr @no_egress drop
\t\toifname \"shgb0000beef\" drop
\t\toifname \"lan0\" drop
\t\toifname \"wan0\" accept
\t\tdrop
\t}
\tchain to_service {
\t\tmeta nfproto ipv6 drop
\t\tct state established,related accept
\t\tct status dnat accept
\t\tdrop
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"shgb0000beef\" ct state established,related accept
\t\tiifname \"shgb0000beef\" drop
\t}
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn hosts_name_the_imported_services_that_exist() {
        let cfg = Config::default();
        let camera = member("camera", "acme", 3, &[]);
        let mut viewer = member("viewer", "bob", 4, &[]);
        import(&mut viewer, "camera", "acme");
        import(&mut viewer, "broker", "ops");
        let text = hosts(&cfg, &viewer, &[camera, viewer.clone()]);
        assert_eq!(
            text,
            "127.0.0.1\tlocalhost\n10.77.0.4\tviewer\n10.77.0.3\tcamera\n"
        );
    }

    #[test]
    fn published_ports_conflict_on_the_same_side_only() {
        let camera = member("camera", "acme", 3, &[(8080, Publish::Lan)]);
        let same_side = member("web", "bob", 4, &[(8080, Publish::Lan)]);
        let other_side = member("web", "bob", 4, &[(8080, Publish::Wan)]);
        let private = member("web", "bob", 4, &[(8080, Publish::None)]);
        let reserved = member("web", "bob", 4, &[(53, Publish::Lan)]);
        let others = [camera];
        let c = port_conflict(&same_side, &others, &[53]).unwrap();
        assert_eq!(c.holder.as_deref(), Some("camera"));
        assert!(c
            .to_string()
            .contains("port 8080/tcp is already published on the LAN side by `camera`"));
        assert_eq!(port_conflict(&other_side, &others, &[53]), None);
        assert_eq!(port_conflict(&private, &others, &[53]), None);
        let c = port_conflict(&reserved, &others, &[53]).unwrap();
        assert!(
            c.to_string().contains("belongs to the gateway itself"),
            "{c}"
        );
        // A service never conflicts with itself (a reinstall or an update).
        let again = member("camera", "acme", 3, &[(8080, Publish::Lan)]);
        assert_eq!(port_conflict(&again, &others, &[]), None);
    }
}
