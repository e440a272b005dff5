//! Service networking, end to end: a gateway agent in a network namespace of its own, between
//! an emulated WAN host and an emulated LAN host, each in a namespace too.
//!
//! ```text
//!   WAN host 203.0.113.2 ── wan0 203.0.113.1 [ gateway: agent, bridge, services 10.77.0.S ]
//!                                            lan0 192.168.77.1 ── LAN host 192.168.77.2
//! ```
//!
//! Everything is checked by traffic: who can open a connection to whom, which source address
//! the far end sees, how many bytes a saturated link gives each service.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{eventually, toml_list, try_run, Extra, Gateway, Out};

/// The host's own Python (stdlib only), not a shim that depends on the caller's environment.
const PYTHON: &str = "/usr/bin/python3";

const WAN_HOST: &str = "203.0.113.2";
const GW_WAN: &str = "203.0.113.1";
const LAN_HOST: &str = "192.168.77.2";
const GW_LAN: &str = "192.168.77.1";
const GW_SERVICES: &str = "10.77.0.1";

/// Listens on every port given; each connection is answered `from PEER-ADDRESS` and closed.
/// The address the far end saw is what tells NAT from no NAT.
const PEER_SERVER: &str = r#"
import socket, sys, threading
def serve(s):
    while True:
        c, (host, _) = s.accept()
        try:
            c.sendall(f"from {host}\n".encode())
            c.shutdown(socket.SHUT_WR)
            c.settimeout(2)
            while c.recv(4096):
                pass
        except OSError:
            pass
        c.close()
for p in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(p))); s.listen(16)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// A DNS server on UDP 53 answering every A question with 198.51.100.7 (and any other type
/// with no answer): the WAN side's resolver.
const DNS_SERVER: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    question = q[12:end + 5]
    qtype = int.from_bytes(q[end + 1:end + 3], "big")
    answer = b""
    if qtype == 1:
        answer = b"\xc0\x0c\x00\x01\x00\x01" + (60).to_bytes(4, "big") + b"\x00\x04" + bytes([198, 51, 100, 7])
    count = 1 if answer else 0
    header = q[:2] + b"\x81\x80\x00\x01" + count.to_bytes(2, "big") + b"\x00\x00\x00\x00"
    s.sendto(header + question + answer, peer)
"#;

/// `HOST PORT TIMEOUT`: connects, sends an HTTP GET, prints what comes back until the peer
/// closes. Exit 0 when connected; 2 refused, 3 timed out, 4 any other error.
const PROBE: &str = r#"
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    s = socket.create_connection((host, port), timeout=timeout)
except ConnectionRefusedError:
    print("refused"); sys.exit(2)
except socket.timeout:
    print("timed out"); sys.exit(3)
except OSError as e:
    print(f"error: {e}"); sys.exit(4)
got = b""
try:
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
except OSError as e:
    got += f"\n(error after connecting: {e})".encode()
sys.stdout.write(got.decode(errors="replace"))
"#;

/// `OUT PORT…`: counts the bytes received on each port (any number of connections) and
/// rewrites OUT every 0.1 s: the counter's CLOCK_MONOTONIC time, then `PORT BYTES` lines.
const COUNTER: &str = r#"
import os, selectors, socket, sys, time
out, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
sel = selectors.DefaultSelector()
counts = dict.fromkeys(ports, 0)
for p in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(8); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, (True, p))
last = 0.0
while True:
    for key, _ in sel.select(0.05):
        listening, port = key.data
        if listening:
            c, _ = key.fileobj.accept(); c.setblocking(False)
            sel.register(c, selectors.EVENT_READ, (False, port))
            continue
        try:
            d = key.fileobj.recv(1 << 18)
        except BlockingIOError:
            continue
        except OSError:
            d = b""
        if not d:
            sel.unregister(key.fileobj); key.fileobj.close()
        counts[port] += len(d)
    now = time.monotonic()
    if now - last >= 0.1:
        last = now
        with open(out + ".tmp", "w") as f:
            f.write(f"{now}\n" + "".join(f"{p} {n}\n" for p, n in counts.items()))
        os.replace(out + ".tmp", out)
"#;

/// `HOST PORT`: sends zeros as fast as the path takes them, reconnecting if cut.
const FLOOD: &str = r#"
import socket, sys, time
buf = bytes(65536)
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        while True:
            s.sendall(buf)
    except OSError:
        time.sleep(0.2)
"#;

/// The three namespaces of one test and their links, and the helpers it runs in them; all
/// deleted (helpers killed first) when dropped, also when the test fails. Drop it after the
/// gateway: declare it first.
struct Lab {
    gw: String,
    wan: String,
    lan: String,
    /// Helpers left running (servers, counters, floods).
    background: Vec<Child>,
    scratch: tempfile::TempDir,
}

impl Lab {
    /// Builds the topology; `tag` (a few letters) tells this test's namespaces apart.
    fn new(tag: &str) -> Lab {
        let base = format!("shgn{}{tag}", std::process::id());
        let scratch = tempfile::Builder::new()
            .prefix("shg-e2e-lab-")
            .tempdir_in("/tmp")
            .expect("create the lab's scratch directory");
        let lab = Lab {
            gw: format!("{base}-gw"),
            wan: format!("{base}-wan"),
            lan: format!("{base}-lan"),
            background: Vec::new(),
            scratch,
        };
        for ns in [&lab.gw, &lab.wan, &lab.lan] {
            // Left by an earlier run that was killed, if any.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // The veths are made in their namespaces directly, so their short names never meet
        // another test's.
        let (gw, wan, lan) = (&lab.gw, &lab.wan, &lab.lan);
        let script = format!(
            "set -e
for n in {gw} {wan} {lan}; do ip netns add $n; ip -n $n link set lo up; done
ip link add wan0 netns {gw} type veth peer name eth0 netns {wan}
ip link add lan0 netns {gw} type veth peer name eth0 netns {lan}
ip -n {gw} addr add {GW_WAN}/24 dev wan0; ip -n {gw} link set wan0 up
ip -n {gw} addr add {GW_LAN}/24 dev lan0; ip -n {gw} link set lan0 up
ip -n {wan} addr add {WAN_HOST}/24 dev eth0; ip -n {wan} link set eth0 up
ip -n {lan} addr add {LAN_HOST}/24 dev eth0; ip -n {lan} link set eth0 up
ip -n {gw} route add default via {WAN_HOST}
ip -n {lan} route add default via {GW_LAN}
ip -n {wan} route add 192.168.77.0/24 via {GW_WAN}
ip netns exec {gw} sysctl -qw net.ipv4.ip_forward=1
"
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&script);
        let out = try_run(cmd, lab.scratch.path(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("cannot build the lab: {e}"));
        assert!(out.ok(), "cannot build the lab's namespaces:\n{out}");
        lab
    }

    /// The gateway agent in the gateway namespace, networking on: `wan0` and `lan0`, the WAN
    /// host as the services' resolver. `tables` comes first in gateway.toml (e.g.
    /// `[capacity]` and `[reserve]`).
    fn gateway(&self, tables: &str) -> Gateway {
        let config = format!(
            "{tables}\n[network]\nenabled = true\nwan = \"wan0\"\nlan = \"lan0\"\n\
             subnet = \"10.77.0.0/24\"\ndns = [\"{WAN_HOST}\"]\n"
        );
        Gateway::start_in_netns(&self.gw, &config)
    }

    /// Runs `args` in namespace `ns` and returns what it printed.
    fn run(&self, ns: &str, args: &[&str]) -> Out {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        try_run(cmd, self.scratch.path(), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Lab::run`], insisting it succeeds; its stdout.
    fn run_ok(&self, ns: &str, args: &[&str]) -> String {
        let out = self.run(ns, args);
        assert!(out.ok(), "`{}` in {ns} failed:\n{out}", args.join(" "));
        out.stdout
    }

    /// Starts an embedded Python helper in `ns`, its output going to a scratch file
    /// (returned); killed when the lab is dropped.
    fn spawn_python(&mut self, ns: &str, source: &str, args: &[&str]) -> PathBuf {
        let mut all = vec![PYTHON, "-c", source];
        all.extend_from_slice(args);
        self.spawn(ns, &all)
    }

    /// Starts `args` in `ns`, its output going to a scratch file (returned); killed when the
    /// lab is dropped.
    fn spawn(&mut self, ns: &str, args: &[&str]) -> PathBuf {
        let log = self
            .scratch
            .path()
            .join(format!("helper-{}.out", self.background.len()));
        let file = std::fs::File::create(&log).expect("helper output file");
        let err = file.try_clone().expect("helper output file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a helper in {ns}: {e}"));
        self.background.push(child);
        log
    }

    /// A [`PEER_SERVER`] in `ns` on `ports`, listening when this returns.
    fn peer_server(&mut self, ns: &str, ports: &[u16]) {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        self.serve(ns, PEER_SERVER, &ports);
    }

    /// Starts `source` in `ns` and waits until it prints `ready`.
    fn serve(&mut self, ns: &str, source: &str, ports: &[&str]) {
        let log = self.spawn_python(ns, source, ports);
        eventually(
            &format!("the helper in {ns} to listen on {ports:?}"),
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(
                    !text.contains("Traceback"),
                    "the helper in {ns} failed:\n{text}"
                );
                text.contains("ready").then_some(())
            },
        );
    }

    /// Opens a TCP connection from namespace `ns` to `host:port` (sending an HTTP GET): what
    /// came back, or why no connection was made.
    fn connect(&self, ns: &str, host: &str, port: u16) -> Result<String, String> {
        let port = port.to_string();
        let out = self.run(ns, &[PYTHON, "-c", PROBE, host, &port, "5"]);
        if out.ok() {
            Ok(out.stdout)
        } else {
            Err(format!("{}{}", out.stdout.trim(), out.stderr.trim()))
        }
    }

    /// `ip -br link` in the gateway namespace.
    fn gw_links(&self) -> String {
        self.run_ok(&self.gw, &["ip", "-br", "link"])
    }

    /// `nft list tables` in the gateway namespace.
    fn gw_tables(&self) -> String {
        self.run_ok(&self.gw, &["nft", "list", "tables"])
    }

    /// The MAC address of the agent's bridge, if it exists.
    fn bridge_mac(&self) -> Option<String> {
        self.gw_links().lines().find_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            name.starts_with("shgb")
                .then(|| words.nth(1).map(String::from))
                .flatten()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.gw, &self.wan, &self.lan] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A manifest: `command` under `[run]`, then `rest` (ports, exports, imports, resources).
fn manifest(name: &str, provider: &str, command: &[&str], rest: &str) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0.0\"\nprovider = \"{provider}\"\n\n[run]\n\
         command = {}\n\n{rest}",
        toml_list(command)
    )
}

/// busybox httpd on `port`, serving `/www/index.html`.
fn httpd(port: u16) -> Vec<String> {
    ["/bin/httpd", "-f", "-p", &port.to_string(), "-h", "/www"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn ports(list: &[(u16, &str)]) -> String {
    list.iter()
        .map(|(port, publish)| format!("[[ports]]\nport = {port}\npublish = \"{publish}\"\n\n"))
        .collect()
}

/// The page a test's httpd serves, so an answer names who gave it.
fn page(marker: &str) -> Vec<u8> {
    format!("{marker}\n").into_bytes()
}

fn install_httpd(gw: &Gateway, name: &str, provider: &str, port: u16, rest: &str) {
    let marker = format!("page-of-{name}");
    let command = httpd(port);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let body = page(&marker);
    let files: [Extra; 1] = [("www/index.html", body.as_slice(), 0o644)];
    gw.install(name, &manifest(name, provider, &command, rest), &files);
    gw.wait_running(name);
}

fn install_sleeper(gw: &Gateway, name: &str, provider: &str, rest: &str) {
    gw.install(
        name,
        &manifest(name, provider, &["/bin/sleep", "1000000"], rest),
        &[],
    );
    gw.wait_running(name);
}

/// Opens a TCP connection from inside service `svc` with busybox nc (5 s to connect), sending
/// an HTTP GET: what came back, or nc's complaint.
fn connect_from(gw: &Gateway, svc: &str, host: &str, port: u16) -> Result<String, String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}");
    let out = gw.shg(&["exec", svc, "--", "/bin/sh", "-c", &script]);
    if out.ok() && !out.stdout.is_empty() {
        Ok(out.stdout)
    } else {
        Err(out.to_string())
    }
}

/// The service's address from `shg inspect --json`.
fn address(gw: &Gateway, name: &str) -> String {
    let detail = gw.inspect(name);
    detail["address"]
        .as_str()
        .unwrap_or_else(|| panic!("`shg inspect {name} --json` shows no address: {detail}"))
        .to_string()
}

/// Networking facts from inside a running service and from the gateway's namespace, for
/// failure messages.
fn diagnose(lab: &Lab, gw: &Gateway, svc: &str) -> String {
    let mut s = String::new();
    if let Some(pid) = gw.svc(svc).and_then(|s| s.pid) {
        for args in [&["ip", "addr"][..], &["ip", "route"], &["ip", "neigh"]] {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net=/proc/{pid}/ns/net")).args(args);
            if let Ok(out) = try_run(cmd, lab.scratch.path(), Duration::from_secs(10)) {
                s.push_str(&format!("--- {svc}: {}\n{}", args.join(" "), out.stdout));
            }
        }
    }
    s.push_str(&format!("--- gateway: ip -br link\n{}", lab.gw_links()));
    s
}

#[test]
fn a_service_reaches_the_wan_through_nat_and_published_ports_follow_their_side() {
    let mut lab = Lab::new("nat");
    let gw = lab.gateway("");
    lab.peer_server(&lab.wan.clone(), &[7001]);
    lab.peer_server(&lab.lan.clone(), &[7100]);
    lab.peer_server(&lab.gw.clone(), &[7200]);

    install_httpd(&gw, "web", "acme", 8080, &ports(&[(8080, "lan")]));
    install_httpd(&gw, "pub", "acme", 9090, &ports(&[(9090, "wan")]));
    let (web, public) = (address(&gw, "web"), address(&gw, "pub"));
    for a in [&web, &public] {
        assert!(
            a.starts_with("10.77.0.") && a != GW_SERVICES,
            "a service's address {a} is not in 10.77.0.0/24 (the gateway being .1)"
        );
    }
    assert_ne!(web, public, "two services share an address");

    // DNS: the resolvers the operator configured.
    let resolv = gw.shg_ok(&["exec", "web", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv
            .stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["nameserver", WAN_HOST])),
        "the service's resolv.conf does not list {WAN_HOST}:\n{resolv}"
    );
    // And a name resolves through it, across the NAT.
    lab.serve(&lab.wan.clone(), DNS_SERVER, &[]);
    let lookup = gw.shg(&["exec", "web", "--", "nslookup", "shop.example"]);
    assert!(
        lookup.stdout.contains("198.51.100.7"),
        "the service cannot resolve a name through {WAN_HOST}:\n{lookup}\n--- agent log\n{}",
        gw.agent_log()
    );

    // Out to the WAN, seen there from the gateway's WAN address (NAT).
    let answer = connect_from(&gw, "web", WAN_HOST, 7001).unwrap_or_else(|e| {
        panic!(
            "the service cannot reach the WAN host:\n{e}\n{}\n--- agent log\n{}",
            diagnose(&lab, &gw, "web"),
            gw.agent_log()
        )
    });
    assert_eq!(
        answer.trim(),
        format!("from {GW_WAN}"),
        "the WAN host saw the service's connection come from elsewhere than the gateway's WAN address (no NAT?)"
    );

    // Published on the LAN: from the LAN host only.
    match lab.connect(&lab.lan, GW_LAN, 8080) {
        Ok(page) if page.contains("page-of-web") => {}
        other => panic!(
            "the LAN host cannot reach `web` at {GW_LAN}:8080 (published on the LAN): {other:?}\n{}\n--- agent log\n{}",
            diagnose(&lab, &gw, "web"),
            gw.agent_log()
        ),
    }
    let from_wan = lab.connect(&lab.wan, GW_WAN, 8080);
    assert!(
        !from_wan
            .as_deref()
            .unwrap_or_default()
            .contains("page-of-web"),
        "the WAN host reached the LAN-only port {GW_WAN}:8080: {from_wan:?}"
    );
    // Published on the WAN: from the WAN host, and not from the LAN side.
    match lab.connect(&lab.wan, GW_WAN, 9090) {
        Ok(page) if page.contains("page-of-pub") => {}
        other => panic!(
            "the WAN host cannot reach `pub` at {GW_WAN}:9090 (published on the WAN): {other:?}\n{}\n--- agent log\n{}",
            diagnose(&lab, &gw, "pub"),
            gw.agent_log()
        ),
    }
    let from_lan = lab.connect(&lab.lan, GW_LAN, 9090);
    assert!(
        !from_lan
            .as_deref()
            .unwrap_or_default()
            .contains("page-of-pub"),
        "the LAN host reached the WAN-only port {GW_LAN}:9090: {from_lan:?}"
    );

    // Not to LAN hosts: the LAN host's listener is up (the WAN host reaches it through the
    // gateway), yet the service gets nowhere.
    let control = lab.connect(&lab.wan, LAN_HOST, 7100);
    assert!(
        control.as_deref().is_ok_and(|a| a.contains("from")),
        "control: the WAN host cannot reach the LAN host's listener {LAN_HOST}:7100: {control:?}"
    );
    let to_lan = connect_from(&gw, "web", LAN_HOST, 7100);
    assert!(
        to_lan.is_err(),
        "a service reached the LAN host {LAN_HOST}:7100: {to_lan:?}"
    );

    // Not to the gateway itself, at any of its addresses, though its listener is up.
    let control = lab.connect(&lab.lan, GW_LAN, 7200);
    assert!(
        control.as_deref().is_ok_and(|a| a.contains("from")),
        "control: the LAN host cannot reach the gateway's own listener {GW_LAN}:7200: {control:?}"
    );
    for host in [GW_SERVICES, GW_LAN, GW_WAN] {
        let to_gw = connect_from(&gw, "web", host, 7200);
        assert!(
            to_gw.is_err(),
            "a service reached the gateway's own port {host}:7200: {to_gw:?}"
        );
    }
}

#[test]
fn services_are_apart_until_an_export_meets_an_import() {
    let lab = Lab::new("imp");
    let gw = lab.gateway("");
    // b serves 8080 and 8081 (the second httpd backgrounds itself); it exports neither yet.
    let b_command = [
        "/bin/sh",
        "-c",
        "httpd -p 8081 -h /www && exec httpd -f -p 8080 -h /www",
    ];
    let b_ports = ports(&[(8080, "none"), (8081, "none")]);
    let page_b = page("page-of-b");
    let b_files: [Extra; 1] = [("www/index.html", page_b.as_slice(), 0o644)];
    let import_b = "[[imports]]\nservice = \"b\"\nprovider = \"acme\"\n";
    gw.install("b", &manifest("b", "acme", &b_command, &b_ports), &b_files);
    gw.wait_running("b");
    install_sleeper(&gw, "a", "bob", import_b);
    install_sleeper(&gw, "c", "eve", import_b);
    install_sleeper(&gw, "d", "bob", "");

    // b serves, from its own inside.
    for port in [8080, 8081] {
        let own = connect_from(&gw, "b", "127.0.0.1", port);
        assert!(
            own.as_deref().is_ok_and(|p| p.contains("page-of-b")),
            "control: b does not serve on port {port} inside itself: {own:?}"
        );
    }

    // Before b exports: an import alone opens nothing, by address or by name.
    let b_addr = address(&gw, "b");
    for (who, host) in [
        ("a", b_addr.as_str()),
        ("a", "b"),
        ("c", "b"),
        ("d", b_addr.as_str()),
    ] {
        let got = connect_from(&gw, who, host, 8080);
        assert!(
            got.is_err(),
            "`{who}` reached b at {host}:8080 though b exports nothing: {got:?}"
        );
    }

    // b again, now exporting 8080 to bob.
    gw.shg_ok(&["remove", "b"]);
    let exported = format!("{b_ports}[[exports]]\nport = 8080\nto = [\"bob\"]\n");
    gw.install("b", &manifest("b", "acme", &b_command, &exported), &b_files);
    gw.wait_running("b");
    let b_addr = address(&gw, "b");
    let hosts = gw.shg_ok(&["exec", "a", "--", "cat", "/etc/hosts"]);
    assert!(
        hosts
            .stdout
            .lines()
            .any(|l| l.split_whitespace().eq([b_addr.as_str(), "b"])),
        "a's /etc/hosts does not map b to its address {b_addr}:\n{hosts}"
    );

    // a (bob, importing b): exactly b:8080, by name and by address.
    for host in ["b", b_addr.as_str()] {
        match connect_from(&gw, "a", host, 8080) {
            Ok(page) if page.contains("page-of-b") => {}
            other => panic!(
                "`a` (bob, importing acme/b) cannot reach {host}:8080 that b exports to bob: {other:?}\n{}\n--- agent log\n{}",
                diagnose(&lab, &gw, "a"),
                gw.agent_log()
            ),
        }
    }
    let other_port = connect_from(&gw, "a", "b", 8081);
    assert!(
        other_port.is_err(),
        "`a` reached b:8081, which b does not export: {other_port:?}"
    );
    // c (eve) imports b too, but b exports to bob only; d (bob) never imported b.
    for (who, host) in [("c", "b"), ("c", b_addr.as_str()), ("d", b_addr.as_str())] {
        let got = connect_from(&gw, who, host, 8080);
        assert!(
            got.is_err(),
            "`{who}` reached b at {host}:8080 without a matching export and import: {got:?}"
        );
    }
}

/// Bytes per port and the counter's clock from a [`COUNTER`] file, read right after one of
/// its writes.
fn read_counts(path: &std::path::Path) -> (f64, std::collections::HashMap<u16, u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let time: f64 = lines
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in the counter's file:\n{text}"));
    let counts = lines
        .filter_map(|l| {
            let (p, n) = l.split_once(' ')?;
            Some((p.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    (time, counts)
}

#[test]
fn reserved_bandwidth_holds_under_saturation() {
    let mut lab = Lab::new("bw");
    let gw = lab.gateway(
        "[capacity]\nbandwidth_down = \"50Mbit\"\nbandwidth_up = \"50Mbit\"\n\n\
         [reserve]\nbandwidth_down = \"10Mbit\"\nbandwidth_up = \"10Mbit\"\n",
    );
    let counts = lab.scratch.path().join("counts");
    let counter_log = lab.spawn_python(
        &lab.wan.clone(),
        COUNTER,
        &[counts.to_str().unwrap(), "5001", "5002", "5003"],
    );
    eventually("the byte counter to start", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&counter_log).unwrap_or_default();
        assert!(!log.contains("Traceback"), "the counter failed:\n{log}");
        counts.exists().then_some(())
    });

    // (service, reservation in Mbit/s, port); the forwarding reserve is 10 Mbit/s on 5003.
    let senders = [("ten", 10.0, 5001u16), ("thirty", 30.0, 5002)];
    for (name, mbit, port) in senders {
        let command = format!("while true; do nc {WAN_HOST} {port} < /dev/zero; sleep 0.2; done");
        let rest = format!("[resources]\nbandwidth_up = {{ reserve = \"{mbit}Mbit\" }}\n");
        gw.install(
            name,
            &manifest(name, "acme", &["/bin/sh", "-c", &command], &rest),
            &[],
        );
        gw.wait_running(name);
    }
    lab.spawn_python(&lab.lan.clone(), FLOOD, &[WAN_HOST, "5003"]);

    std::thread::sleep(Duration::from_secs(3));
    let (t0, before) = read_counts(&counts);
    std::thread::sleep(Duration::from_secs(10));
    let (t1, after) = read_counts(&counts);
    let secs = t1 - t0;
    assert!(
        secs > 9.0,
        "the counter stalled: {secs} s between its writes"
    );
    let rate = |port: u16| {
        let bytes =
            after.get(&port).copied().unwrap_or(0) - before.get(&port).copied().unwrap_or(0);
        bytes as f64 * 8.0 / secs / 1e6
    };
    let tag = lab
        .gw_links()
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("shgb")
                .map(String::from)
        })
        .unwrap_or_default();
    let htb = lab
        .run(
            &lab.gw,
            &["tc", "-s", "class", "show", "dev", &format!("shgu{tag}")],
        )
        .stdout;

    let rows = [
        ("ten", 10.0, rate(5001)),
        ("thirty", 30.0, rate(5002)),
        ("LAN->WAN forwarding", 10.0, rate(5003)),
    ];
    eprintln!(
        "uplink 50 Mbit/s, every class saturated, {secs:.2} s window (goodput at the WAN host):"
    );
    for (name, reserved, got) in rows {
        eprintln!(
            "  {name:<20} reserved {reserved:>4.0} Mbit/s  got {got:>6.2} Mbit/s  ({:.3} of the reservation)",
            got / reserved
        );
    }
    let context = format!(
        "{rows:?}\n--- upload HTB classes\n{htb}--- agent log\n{}",
        gw.agent_log()
    );
    // The forwarded flood must really compete, or the test proves nothing.
    let flood = rows[2].2;
    assert!(
        flood >= 0.85 * 10.0,
        "the LAN host's flood got only {flood:.2} Mbit/s of its 10 Mbit/s share: no real contention\n{context}"
    );
    for (name, reserved, got) in &rows[..2] {
        assert!(
            *got >= 0.85 * reserved && *got <= 1.10 * reserved,
            "`{name}` got {got:.2} Mbit/s under saturation; its reservation is {reserved} Mbit/s \
             (goodput expected within [0.85, 1.10] of it)\n{context}"
        );
    }
    let total: f64 = rows.iter().map(|r| r.2).sum();
    assert!(
        total <= 50.0 * 1.05,
        "{total:.2} Mbit/s went up a 50 Mbit/s link: the link capacity is not enforced\n{context}"
    );
}

/// The agent's objects in the gateway namespace: interfaces named shg*/shv*, nft tables
/// named shg_*.
fn leftovers(lab: &Lab) -> Vec<String> {
    let mut found: Vec<String> = lab
        .gw_links()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("shg") || n.starts_with("shv"))
        .map(String::from)
        .collect();
    found.extend(
        lab.gw_tables()
            .lines()
            .filter(|l| l.contains("shg_"))
            .map(String::from),
    );
    found
}

#[test]
fn nothing_is_left_behind_after_removal() {
    let mut lab = Lab::new("gone");
    let gw = lab.gateway("");
    lab.peer_server(&lab.wan.clone(), &[7001]);
    install_httpd(&gw, "web", "acme", 8080, &ports(&[(8080, "lan")]));
    install_sleeper(
        &gw,
        "viewer",
        "bob",
        "[[imports]]\nservice = \"web\"\nprovider = \"acme\"\n\n\
         [resources]\nbandwidth_up = { reserve = \"1Mbit\" }\n",
    );
    // Used, so conntrack and neighbours hold something too.
    let used = connect_from(&gw, "viewer", WAN_HOST, 7001);
    assert!(
        used.is_ok(),
        "the service cannot reach the WAN host: {used:?}"
    );

    let present = leftovers(&lab);
    for prefix in ["shgb", "shgd", "shgu", "shv", "table inet shg_"] {
        assert!(
            present.iter().any(|p| p.starts_with(prefix)),
            "with services installed, nothing named {prefix}* is in the gateway namespace: {present:?}\n--- agent log\n{}",
            gw.agent_log()
        );
    }
    assert_eq!(
        present.iter().filter(|p| p.starts_with("shv")).count(),
        2,
        "one veth per running service: {present:?}"
    );

    gw.shg_ok(&["remove", "web"]);
    let left = leftovers(&lab);
    assert!(
        left.iter().any(|p| p.starts_with("shgb")),
        "the bridge went with the first of two services: {left:?}"
    );
    assert_eq!(
        left.iter().filter(|p| p.starts_with("shv")).count(),
        1,
        "the removed service's veth stayed: {left:?}"
    );
    gw.shg_ok(&["remove", "viewer"]);
    let left = leftovers(&lab);
    assert!(
        left.is_empty(),
        "after the last service was removed the gateway namespace still holds: {left:?}\n--- ip -br link\n{}--- nft list tables\n{}--- agent log\n{}",
        lab.gw_links(),
        lab.gw_tables(),
        gw.agent_log()
    );
    let lan_qdiscs = lab.run_ok(&lab.gw, &["tc", "qdisc", "show", "dev", "lan0"]);
    assert!(
        !lan_qdiscs.contains("clsact"),
        "the LAN interface keeps the agent's redirect qdisc:\n{lan_qdiscs}"
    );
}

#[test]
fn a_restarted_agent_keeps_its_services_on_the_network_and_still_cleans_up() {
    let lab = Lab::new("rst");
    let mut gw = lab.gateway("");
    install_httpd(&gw, "web", "acme", 8080, &ports(&[(8080, "lan")]));
    let reach = |lab: &Lab, gw: &Gateway, when: &str| {
        match lab.connect(&lab.lan, GW_LAN, 8080) {
        Ok(page) if page.contains("page-of-web") => {}
        other => panic!(
            "{when}: the LAN host cannot reach `web` at {GW_LAN}:8080: {other:?}\n{}\n--- agent log\n{}",
            diagnose(lab, gw, "web"),
            gw.agent_log()
        ),
    }
    };
    reach(&lab, &gw, "before the agent crashed");
    let address_before = address(&gw, "web");

    gw.kill9();
    reach(&lab, &gw, "while no agent runs");
    gw.restart_agent();
    reach(&lab, &gw, "after the agent came back");
    assert_eq!(
        address(&gw, "web"),
        address_before,
        "the service's address changed across an agent restart"
    );

    // The restarted agent still runs the same network: a new service joins it and the last
    // removal takes it all away.
    install_httpd(&gw, "api", "acme", 8443, &ports(&[(8443, "lan")]));
    match lab.connect(&lab.lan, GW_LAN, 8443) {
        Ok(page) if page.contains("page-of-api") => {}
        other => panic!(
            "a service installed after the agent's restart is not reachable on {GW_LAN}:8443: {other:?}\n{}\n--- agent log\n{}",
            diagnose(&lab, &gw, "api"),
            gw.agent_log()
        ),
    }
    reach(&lab, &gw, "after another service joined");
    assert_eq!(
        lab.gw_links()
            .lines()
            .filter(|l| l.starts_with("shgb"))
            .count(),
        1,
        "the restarted agent made a second bridge:\n{}",
        lab.gw_links()
    );
    gw.shg_ok(&["remove", "web"]);
    gw.shg_ok(&["remove", "api"]);
    let left = leftovers(&lab);
    assert!(
        left.is_empty(),
        "after the last service was removed by a restarted agent, the gateway namespace still holds: {left:?}\n--- agent log\n{}",
        gw.agent_log()
    );
}

#[test]
fn a_published_port_is_refused_when_taken_or_kept_by_the_gateway() {
    let lab = Lab::new("port");
    let gw = lab.gateway("");
    install_sleeper(&gw, "first", "acme", &ports(&[(8080, "lan")]));

    let tar = gw.package(
        "second",
        &manifest(
            "second",
            "bob",
            &["/bin/sleep", "1000000"],
            &ports(&[(8080, "lan")]),
        ),
        &[],
    );
    let refused = gw.shg(&["install", tar.to_str().unwrap()]);
    assert!(
        !refused.ok(),
        "a second service publishing 8080 on the LAN was installed:\n{refused}"
    );
    assert!(
        refused.stderr.contains("port 8080/tcp") && refused.stderr.contains("first"),
        "the refusal does not name the port and its holder:\n{refused}"
    );
    assert!(gw.svc("second").is_none(), "the refused service is listed");

    let tar = gw.package(
        "dns",
        &manifest(
            "dns",
            "bob",
            &["/bin/sleep", "1000000"],
            &ports(&[(53, "lan")]),
        ),
        &[],
    );
    let refused = gw.shg(&["install", tar.to_str().unwrap()]);
    assert!(
        !refused.ok(),
        "a service publishing 53 (reserved) on the LAN was installed:\n{refused}"
    );
    assert!(
        refused.stderr.contains("port 53/tcp")
            && refused.stderr.contains("belongs to the gateway itself"),
        "the refusal does not say the gateway keeps the port:\n{refused}"
    );
    assert!(gw.svc("dns").is_none(), "the refused service is listed");

    // The same port on the other side is free.
    install_sleeper(&gw, "third", "bob", &ports(&[(8080, "wan")]));
}

/// The MAC address of each of the agent's service veths in the gateway namespace, by name.
fn veth_macs(lab: &Lab) -> Vec<(String, String)> {
    lab.gw_links()
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.split('@').next()?;
            let mac = words.nth(1)?;
            name.starts_with("shv")
                .then(|| (name.to_string(), mac.to_string()))
        })
        .collect()
}

/// The MAC address of the gateway's end of `svc`'s link (its veth on the bridge, named
/// `shvTAG` + the last octet of its address).
fn veth_mac_of(lab: &Lab, gw: &Gateway, svc: &str) -> Option<String> {
    let slot = address(gw, svc).rsplit('.').next()?.to_string();
    veth_macs(lab)
        .into_iter()
        .find(|(name, _)| name.ends_with(&slot) && name.len() == "shv".len() + 8 + slot.len())
        .map(|(_, mac)| mac)
}

#[test]
fn a_service_stays_connected_while_other_services_come_and_go() {
    let mut lab = Lab::new("arp");
    let gw = lab.gateway("");
    lab.peer_server(&lab.wan.clone(), &[7001]);
    install_sleeper(&gw, "steady", "acme", "");
    // Neighbours, until the gateway's address on the services' link (the bridge's MAC) is not
    // the one of steady's own veth: the case where steady would notice the bridge changing it.
    let mut fillers = Vec::new();
    while fillers.len() < 10 && lab.bridge_mac() == veth_mac_of(&lab, &gw, "steady") {
        let name = format!("f{}", fillers.len());
        install_sleeper(&gw, &name, "acme", "");
        fillers.push(name);
    }
    if fillers.is_empty() {
        install_sleeper(&gw, "f0", "acme", "");
        fillers.push("f0".to_string());
    }
    let first = connect_from(&gw, "steady", WAN_HOST, 7001);
    assert!(
        first.is_ok(),
        "the service cannot reach the WAN host: {first:?}\n--- agent log\n{}",
        gw.agent_log()
    );
    let learned = lab.bridge_mac();

    // The neighbour whose veth lends the bridge its MAC (if the bridge has none of its own)
    // goes, and another comes.
    let holder = fillers
        .iter()
        .find(|f| veth_mac_of(&lab, &gw, f) == learned)
        .unwrap_or(&fillers[0])
        .clone();
    gw.shg_ok(&["remove", &holder]);
    install_sleeper(&gw, "late", "acme", "");
    let now = lab.bridge_mac();
    let started = Instant::now();
    let again = connect_from(&gw, "steady", WAN_HOST, 7001);
    assert!(
        again.is_ok(),
        "`steady` lost the WAN after `{holder}` was removed and `late` installed \
         (gateway MAC on the services' link {learned:?} -> {now:?}; gave up after {:?}): \
         {again:?}\n{}\n--- agent log\n{}",
        started.elapsed(),
        diagnose(&lab, &gw, "steady"),
        gw.agent_log()
    );
}

/// A service's binary from this workspace (built beside `shg` by `cargo build --workspace`,
/// as scripts/test.sh does), and its bytes stripped of debug information, to pack.
fn service_binary(gw: &Gateway, name: &str) -> (PathBuf, Vec<u8>) {
    let binary = PathBuf::from(crate::harness::SHG).with_file_name(name);
    assert!(
        binary.exists(),
        "{} is missing: `cargo build --workspace` builds it (scripts/test.sh does)",
        binary.display()
    );
    let stripped = gw.work.join(format!("{name}.stripped"));
    let out = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .output()
        .unwrap();
    assert!(out.status.success(), "strip: {out:?}");
    (binary, std::fs::read(&stripped).unwrap())
}

/// What a running service uses now, as `shg stats` shows it (memory working set, bytes on its
/// volume), waiting for the monitor's first sample of it; printed, so a run reports the
/// services' use against their reservations.
fn use_of(gw: &Gateway, name: &str, when: &str) -> (u64, u64) {
    let (memory, storage) = eventually(&format!("{name}'s use"), Duration::from_secs(20), || {
        let stats: serde_json::Value =
            serde_json::from_str(&gw.shg_ok(&["stats", "--json"]).stdout).ok()?;
        let s = stats["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)?
            .clone();
        Some((
            s["memory"]["used"].as_u64()?,
            s["storage"]["used"].as_u64().unwrap_or(0),
        ))
    });
    eprintln!(
        "{name} {when}: memory {:.1} MiB, storage {:.1} MiB",
        memory as f64 / 1048576.0,
        storage as f64 / 1048576.0
    );
    (memory, storage)
}

/// The household's upload through tuspy (a tus client from PyPI), as a script run in the LAN.
const TUS_UPLOAD: &str = r#"
import sys
from tusclient import client
c = client.TusClient(sys.argv[2])
u = c.uploader(sys.argv[1], chunk_size=1 << 20, metadata={"filename": "attachment.bin"})
u.upload()
print("uploaded", u.url, flush=True)
"#;

/// The cloud proxy (services/cloud-proxy), installed as the mailbox provider's package: the
/// household uploads 12 MiB with a real tus client over the LAN while the WAN link is down and
/// is done; the gateway sends the file to the cloud on the WAN side once the link is back,
/// within its upload limit, survives its own process being killed halfway, and the cloud ends
/// up with every byte.
#[test]
fn the_cloud_proxy_takes_an_upload_on_the_lan_and_sends_it_on_through_a_cut_link_and_a_crash() {
    let venv_python = "/opt/shg-test/venv/bin/python";
    let mut lab = Lab::new("cp");
    let gw = lab.gateway("[capacity]\nbandwidth_down = \"100Mbit\"\nbandwidth_up = \"100Mbit\"\n");
    let (binary, bytes) = service_binary(&gw, "cloud-proxy");

    // The provider's cloud, on the WAN host.
    let cloud_dir = lab.scratch.path().join("cloud");
    let cloud_log = std::fs::File::create(lab.scratch.path().join("cloud.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.wan])
        .arg(&binary)
        .args(["cloud", "--listen", "0.0.0.0:8080", "--data"])
        .arg(&cloud_dir)
        .stdout(cloud_log.try_clone().unwrap())
        .stderr(cloud_log)
        .spawn()
        .unwrap();
    lab.background.push(child);

    // The package: the static binary, stripped, in a small root.
    let rest = format!(
        "{}[resources]\nmemory = {{ reserve = \"16MiB\", limit = \"64MiB\" }}\n\
         storage = {{ reserve = \"48MiB\" }}\nbandwidth_up = {{ reserve = \"8Mbit\", limit = \"16Mbit\" }}\n\n\
         [restart]\npolicy = \"always\"\n",
        ports(&[(1080, "lan")])
    );
    let command = [
        "/bin/cloud-proxy",
        "gateway",
        "--listen",
        "0.0.0.0:1080",
        "--data",
        "/data/uploads",
        "--cloud",
        &format!("http://{WAN_HOST}:8080/files/"),
        "--max-size",
        "33554432",
    ];
    let files: [Extra; 1] = [("bin/cloud-proxy", bytes.as_slice(), 0o755)];
    gw.install(
        "cloud-proxy",
        &manifest("cloud-proxy", "mailbox", &command, &rest),
        &files,
    );
    gw.wait_running("cloud-proxy");

    // The WAN link is down while the household uploads: it still finishes, at LAN speed.
    lab.run_ok(&lab.wan, &["ip", "link", "set", "eth0", "down"]);
    let attachment = lab.scratch.path().join("attachment.bin");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&attachment, &data).unwrap();
    let url = format!("http://{GW_LAN}:1080/files/");
    let upload = lab.run(
        &lab.lan,
        &[
            venv_python,
            "-c",
            TUS_UPLOAD,
            attachment.to_str().unwrap(),
            &url,
        ],
    );
    assert!(
        upload.ok() && upload.stdout.contains("uploaded"),
        "tuspy could not upload:\n{upload}\n{}",
        diagnose(&lab, &gw, "cloud-proxy")
    );
    // Bad input: a PATCH at the wrong offset, a truncated one, a wrong content type; each
    // refused, the upload kept as it was, the service still serving.
    let created = lab.run_ok(
        &lab.lan,
        &[
            "curl",
            "-s",
            "-i",
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Length: 100",
            &url,
        ],
    );
    let location = created
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| panic!("no Location: {created}"))
        .trim()
        .to_string();
    let upload_url = format!("http://{GW_LAN}:1080{location}");
    let status = |extra: &[&str]| -> String {
        let mut all = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
        ];
        all.extend_from_slice(extra);
        all.push(&upload_url);
        lab.run(&lab.lan, &all).stdout
    };
    let tus = [
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Content-Type: application/offset+octet-stream",
    ];
    let mut wrong_offset = tus.to_vec();
    wrong_offset.extend(["-H", "Upload-Offset: 50", "--data-binary", "abc"]);
    assert_eq!(status(&wrong_offset), "409");
    let mut wrong_type = vec![
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Upload-Offset: 0",
        "--data-binary",
        "abc",
    ];
    wrong_type.extend(["-H", "Content-Type: text/plain"]);
    assert_eq!(status(&wrong_type), "415");
    let mut too_long = tus.to_vec();
    let big = "x".repeat(200);
    too_long.extend(["-H", "Upload-Offset: 0", "--data-binary", big.as_str()]);
    assert_eq!(status(&too_long), "400", "more bytes than declared");
    // A truncated PATCH: the connection closes after 10 of the 60 bytes it announced.
    lab.run(
        &lab.lan,
        &[
            PYTHON,
            "-c",
            &format!(
                "import socket\ns=socket.create_connection(('{GW_LAN}',1080))\n\
             s.sendall(b'PATCH {location} HTTP/1.1\\r\\nHost: x\\r\\nTus-Resumable: 1.0.0\\r\\n\
             Content-Type: application/offset+octet-stream\\r\\nUpload-Offset: 0\\r\\n\
             Content-Length: 60\\r\\n\\r\\n0123456789')\ns.close()\n"
            ),
        ],
    );
    let head = eventually("the truncated part kept", Duration::from_secs(10), || {
        let out = lab.run_ok(
            &lab.lan,
            &[
                "curl",
                "-s",
                "-I",
                "-H",
                "Tus-Resumable: 1.0.0",
                &upload_url,
            ],
        );
        out.contains("upload-offset: 10").then_some(out)
    });
    assert!(head.contains("upload-length: 100"), "{head}");

    let progress = |lab: &Lab| -> serde_json::Value {
        let out = lab.run(
            &lab.lan,
            &["curl", "-s", &format!("http://{GW_LAN}:1080/uploads")],
        );
        serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let all = progress(&lab);
    let first = all
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "attachment.bin").cloned())
        .unwrap_or_else(|| panic!("the attachment is not listed: {all}"));
    assert_eq!(first["received"], data.len() as u64, "{first}");
    assert_eq!(
        first["sent"], 0,
        "nothing left while the WAN is down: {first}"
    );
    let (memory, storage) = use_of(&gw, "cloud-proxy", "holding a 12 MiB upload");
    assert!(memory < 64 << 20, "under its 64 MiB limit: {memory}");
    assert!(storage < 48 << 20, "within its 48 MiB volume: {storage}");
    let id = first["id"].as_str().unwrap().to_string();
    let attachment_of = move |p: &serde_json::Value| -> serde_json::Value {
        p.as_array()
            .and_then(|a| a.iter().find(|u| u["id"] == id.as_str()).cloned())
            .unwrap_or(serde_json::Value::Null)
    };

    // The link comes back: sending starts; the service is killed halfway and restarts.
    let started = Instant::now();
    lab.run_ok(&lab.wan, &["ip", "link", "set", "eth0", "up"]);
    eventually("some bytes in the cloud", Duration::from_secs(60), || {
        let p = attachment_of(&progress(&lab));
        (p["sent"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    use_of(&gw, "cloud-proxy", "sending to the cloud");
    let before = gw.svc("cloud-proxy").unwrap();
    crate::harness::signal(before.pid.unwrap(), "KILL");
    eventually("the proxy restarted", Duration::from_secs(30), || {
        gw.svc("cloud-proxy")
            .filter(|s| s.state == "running" && s.pid != before.pid)
    });
    let done = eventually("every byte in the cloud", Duration::from_secs(120), || {
        let p = attachment_of(&progress(&lab));
        (p["done"] == true).then_some(p)
    });
    let took = started.elapsed().as_secs_f64();
    assert_eq!(done["sent"], data.len() as u64, "{done}");
    let stored: Vec<PathBuf> = std::fs::read_dir(&cloud_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "one upload in the cloud (not the broken one): {stored:?}"
    );
    assert!(
        std::fs::read(&stored[0]).unwrap() == data,
        "the cloud's copy differs from the household's file"
    );
    // 12 MiB at a 16 Mbit/s upload limit takes at least 6 s.
    assert!(took > 5.0, "the upload limit did not hold: {took:.1} s");
}

/// Collects what the provider's endpoint is sent: each POST body, a line, in `argv[2]`.
const REPORT_SINK: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "ab") as f:
            f.write(body + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
"#;

/// The home automation service (services/home-automation) as voltwise's package: the home's
/// devices, played by Debian's mosquitto clients on the LAN, publish their power to the
/// broker it embeds; a plug above the household's limit is told `off`; the household reads
/// the page on the LAN; the provider on the WAN side gets totals only; the broker is not
/// reachable from the WAN.
#[test]
fn home_automation_switches_a_plug_off_and_only_totals_leave_the_home() {
    let mut lab = Lab::new("ha");
    let gw = lab.gateway("");
    let reports = lab.scratch.path().join("reports");
    let sink = lab.spawn_python(
        &lab.wan.clone(),
        REPORT_SINK,
        &["9000", reports.to_str().unwrap()],
    );
    eventually("the provider's endpoint", Duration::from_secs(10), || {
        std::fs::read_to_string(&sink)
            .unwrap_or_default()
            .contains("ready")
            .then_some(())
    });

    let (_, bytes) = service_binary(&gw, "automation");
    let rest = format!(
        "{}[resources]\nmemory = {{ reserve = \"16MiB\", limit = \"64MiB\" }}\n\
         storage = {{ reserve = \"48MiB\" }}\n\n[restart]\npolicy = \"always\"\n",
        ports(&[(1883, "lan"), (8088, "lan")])
    );
    let command = [
        "/bin/automation",
        "--data",
        "/data",
        "--limit-w",
        "2000",
        "--report",
        &format!("http://{WAN_HOST}:9000/readings"),
        "--report-every",
        "1",
    ];
    let files: [Extra; 1] = [("bin/automation", bytes.as_slice(), 0o755)];
    gw.install(
        "automation",
        &manifest("automation", "voltwise", &command, &rest),
        &files,
    );
    gw.wait_running("automation");
    eventually("the broker on the LAN", Duration::from_secs(20), || {
        lab.connect(&lab.lan, GW_LAN, 1883).ok()
    });

    // The plug listens for its orders; the devices report.
    let orders = lab.scratch.path().join("orders");
    let file = std::fs::File::create(&orders).unwrap();
    let plug = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.lan,
            "mosquitto_sub",
            "-h",
            GW_LAN,
            "-p",
            "1883",
        ])
        .args(["-t", "home/plug1/set", "-C", "1", "-W", "30"])
        .stdout(file)
        .spawn()
        .unwrap();
    lab.background.push(plug);
    std::thread::sleep(Duration::from_millis(500));
    for (device, watts) in [("fridge", "120"), ("plug1", "2500")] {
        lab.run_ok(
            &lab.lan,
            &[
                "mosquitto_pub",
                "-h",
                GW_LAN,
                "-p",
                "1883",
                "-t",
                &format!("home/{device}/power"),
                "-m",
                watts,
            ],
        );
    }
    eventually(
        "the plug told to switch off",
        Duration::from_secs(20),
        || (std::fs::read_to_string(&orders).unwrap_or_default().trim() == "off").then_some(()),
    );

    // Bad input: bytes that are no MQTT packet, a payload that is no number; the broker and
    // the rule go on.
    lab.run(
        &lab.lan,
        &[PYTHON, "-c", &format!(
            "import socket\ns=socket.create_connection(('{GW_LAN}',1883))\n\
             s.sendall(bytes(range(256))*8)\ntry:\n    s.recv(64)\nexcept OSError:\n    pass\ns.close()\n"
        )],
    );
    lab.run_ok(
        &lab.lan,
        &[
            "mosquitto_pub",
            "-h",
            GW_LAN,
            "-p",
            "1883",
            "-t",
            "home/oven/power",
            "-m",
            "lots",
        ],
    );
    lab.run_ok(
        &lab.lan,
        &[
            "mosquitto_pub",
            "-h",
            GW_LAN,
            "-p",
            "1883",
            "-t",
            "home/oven/power",
            "-m",
            "900",
        ],
    );
    let state = eventually(
        "the oven's reading after the garbage",
        Duration::from_secs(10),
        || {
            let out = lab.run_ok(
                &lab.lan,
                &["curl", "-s", &format!("http://{GW_LAN}:8088/api/home")],
            );
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            (v["devices"]["oven"]["watts"] == 900.0).then_some(v)
        },
    );
    assert_eq!(state["rejected"], 1, "the bad payload was dropped: {state}");
    assert_eq!(
        gw.svc("automation").unwrap().restarts,
        0,
        "never taken down"
    );
    let (memory, _) = use_of(&gw, "automation", "with three devices");
    assert!(memory < 64 << 20, "under its 64 MiB limit: {memory}");

    let page = lab.run_ok(&lab.lan, &["curl", "-s", &format!("http://{GW_LAN}:8088/")]);
    assert!(page.contains("<td>plug1</td><td>2500 W</td>"), "{page}");
    assert!(page.contains("plug1: switched off"), "{page}");

    let sent = eventually("a report to the provider", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&reports).unwrap_or_default();
        text.contains("\"total_w\":3520").then_some(text)
    });
    assert!(
        !sent.contains("plug1") && !sent.contains("fridge") && !sent.contains("oven"),
        "no device's reading leaves the home by default: {sent}"
    );
    let history = std::fs::read_to_string(gw.service_dir("automation").join("data/history.csv"))
        .unwrap_or_default();
    assert_eq!(
        history.lines().count(),
        3,
        "the history is kept at home, the bad payload not in it: {history}"
    );
    assert!(
        lab.connect(&lab.wan, GW_WAN, 1883).is_err(),
        "the home's broker is not reachable from the WAN"
    );
}

/// Remote surveillance (services/surveillance) as acme's package: a camera on the LAN (frames
/// made by ffmpeg, pushed with curl) sends pictures; the service keeps the newest three, sees
/// motion when the picture changes, shows the latest on the LAN; on the WAN side it shows
/// nothing until the household sets a password on the LAN page, then only behind that login.
#[test]
fn surveillance_records_within_its_rule_sees_motion_and_shows_the_wan_only_behind_a_login() {
    let lab = Lab::new("sv");
    let gw = lab.gateway("");
    let (_, bytes) = service_binary(&gw, "surveillance");
    let rest = format!(
        "{}[resources]\nmemory = {{ reserve = \"24MiB\", limit = \"64MiB\" }}\n\
         storage = {{ reserve = \"48MiB\" }}\n\n[restart]\npolicy = \"always\"\n",
        ports(&[(8090, "lan"), (8091, "wan")])
    );
    let command = ["/bin/surveillance", "--data", "/data", "--keep", "3"];
    let files: [Extra; 1] = [("bin/surveillance", bytes.as_slice(), 0o755)];
    gw.install(
        "camera-rec",
        &manifest("camera-rec", "acme", &command, &rest),
        &files,
    );
    gw.wait_running("camera-rec");
    eventually("the recorder on the LAN", Duration::from_secs(20), || {
        lab.connect(&lab.lan, GW_LAN, 8090).ok()
    });

    // The camera: two different frames from ffmpeg's test sources.
    let frames = lab.scratch.path();
    for (name, source) in [
        ("still", "testsrc=size=320x240:rate=1"),
        ("moved", "color=c=red:size=320x240"),
    ] {
        let out = Command::new("ffmpeg")
            .args([
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                source,
                "-frames:v",
                "1",
            ])
            .arg(frames.join(format!("{name}.jpg")))
            .output()
            .expect("ffmpeg (scripts/setup.sh installs it)");
        assert!(out.status.success(), "ffmpeg: {out:?}");
    }
    let lan_url = format!("http://{GW_LAN}:8090");
    let push = |name: &str| {
        let file = frames.join(format!("{name}.jpg"));
        lab.run_ok(
            &lab.lan,
            &[
                "curl",
                "-sf",
                "-T",
                file.to_str().unwrap(),
                &format!("{lan_url}/snapshot"),
            ],
        );
    };
    for name in ["still", "still", "still", "moved", "moved"] {
        push(name);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Bad input: a picture that is no JPEG, and one larger than the recorder takes.
    let not_jpeg = lab.scratch.path().join("not.jpg");
    std::fs::write(&not_jpeg, b"GIF89a not a jpeg").unwrap();
    let refused = lab.run(
        &lab.lan,
        &[
            "curl",
            "-s",
            "-w",
            " %{http_code}",
            "-T",
            not_jpeg.to_str().unwrap(),
            &format!("{lan_url}/snapshot"),
        ],
    );
    assert!(
        refused.stdout.ends_with(" 400") && refused.stdout.contains("not a JPEG"),
        "{refused}"
    );
    let huge = lab.scratch.path().join("huge.jpg");
    let mut bytes_huge = vec![0xff, 0xd8];
    bytes_huge.resize(20 << 20, 0);
    std::fs::write(&huge, &bytes_huge).unwrap();
    let refused = lab.run(
        &lab.lan,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-T",
            huge.to_str().unwrap(),
            &format!("{lan_url}/snapshot"),
        ],
    );
    assert_eq!(refused.stdout, "413", "{refused}");
    assert_eq!(
        gw.svc("camera-rec").unwrap().restarts,
        0,
        "never taken down"
    );
    let (memory, storage) = use_of(&gw, "camera-rec", "after pictures and refusals");
    assert!(memory < 64 << 20, "under its 64 MiB limit: {memory}");
    assert!(storage < 48 << 20, "within its volume: {storage}");

    let events: serde_json::Value =
        serde_json::from_str(&lab.run_ok(&lab.lan, &["curl", "-s", &format!("{lan_url}/events")]))
            .unwrap();
    assert_eq!(
        events.as_array().map(Vec::len),
        Some(1),
        "one motion: {events}"
    );
    let kept = std::fs::read_dir(gw.service_dir("camera-rec").join("data/pictures"))
        .unwrap()
        .count();
    assert_eq!(kept, 3, "the newest three pictures are kept");
    let page = lab.run_ok(&lab.lan, &["curl", "-s", &format!("{lan_url}/")]);
    assert!(
        page.contains("latest.jpg") && page.contains("motion"),
        "{page}"
    );

    // The WAN side: nothing before a password, then only with it.
    let wan_url = format!("http://{GW_WAN}:8091/latest.jpg");
    let code = |args: &[&str]| -> String {
        let mut all = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        all.push(&wan_url);
        lab.run_ok(&lab.wan, &all)
    };
    assert_eq!(
        code(&[]),
        "403",
        "remote viewing is off before the household sets a password"
    );
    lab.run_ok(
        &lab.lan,
        &[
            "curl",
            "-sf",
            "--data-binary",
            "correct horse",
            &format!("{lan_url}/password"),
        ],
    );
    assert_eq!(code(&[]), "401");
    assert_eq!(code(&["-u", "household:wrong password"]), "401");
    assert_eq!(code(&["-u", "household:correct horse"]), "200");
    let picture = lab.scratch.path().join("remote.jpg");
    lab.run_ok(
        &lab.wan,
        &[
            "curl",
            "-sf",
            "-u",
            "household:correct horse",
            "-o",
            picture.to_str().unwrap(),
            &wan_url,
        ],
    );
    assert_eq!(
        std::fs::read(&picture).unwrap(),
        std::fs::read(frames.join("moved.jpg")).unwrap(),
        "the remote viewer sees the latest picture"
    );
    // The camera's side and the password are the LAN's: not on the WAN port, nor its own.
    assert!(
        lab.connect(&lab.wan, GW_WAN, 8090).is_err(),
        "the LAN port is not on the WAN"
    );
    let put = lab.run(
        &lab.wan,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "household:correct horse",
            "-T",
            frames.join("still.jpg").to_str().unwrap(),
            &format!("http://{GW_WAN}:8091/snapshot"),
        ],
    );
    assert_ne!(put.stdout, "201", "no pictures from the WAN side");
    // Guessing is slow: after five wrong passwords in a minute even the right one waits.
    for _ in 0..4 {
        assert_eq!(code(&["-u", "household:guess"]), "401");
    }
    assert_eq!(code(&["-u", "household:correct horse"]), "429");
}

/// The packages `shg demo` hosts, built exactly as it builds them (`samples::build_service`
/// from the shipped manifests in `services/NAME/shg-service.toml`): on a gateway with a real
/// LAN and WAN, each runs healthy with its reservations, its LAN ports answer on the LAN, the
/// surveillance's WAN port on the WAN, and nothing else is reachable from the WAN.
#[test]
fn the_shipped_service_packages_run_and_publish_what_their_manifests_say() {
    let lab = Lab::new("sp");
    let gw = lab.gateway("");
    let out = gw.work.join("shipped");
    std::fs::create_dir_all(&out).unwrap();
    let dirs = vec![PathBuf::from(crate::harness::SHG)
        .parent()
        .unwrap()
        .to_path_buf()];
    for service in samples::SERVICES {
        let binary = samples::find_service_binary(service, &dirs).unwrap_or_else(|| {
            panic!(
                "no static `{}` beside shg: `cargo build --workspace` builds it",
                service.binary
            )
        });
        let tar = samples::build_service(service, &binary, &out).unwrap();
        let provider = manifest::parse(service.manifest, service.name)
            .unwrap()
            .provider;
        gw.sign(&tar, &provider);
        gw.shg_ok(&["install", tar.to_str().unwrap()]);
    }
    for service in samples::SERVICES {
        eventually(
            &format!("{} running and healthy", service.name),
            Duration::from_secs(30),
            || {
                let svc = gw.svc(service.name)?;
                (svc.state == "running" && svc.health == "healthy").then_some(())
            },
        );
    }
    for port in [1883, 8088, 8090, 8095, 8097] {
        eventually(&format!("LAN port {port}"), Duration::from_secs(20), || {
            lab.connect(&lab.lan, GW_LAN, port).ok()
        });
    }
    eventually("the WAN port 8091", Duration::from_secs(20), || {
        lab.connect(&lab.wan, GW_WAN, 8091).ok()
    });
    for port in [1883, 8088, 8090, 8095, 8097] {
        assert!(
            lab.connect(&lab.wan, GW_WAN, port).is_err(),
            "LAN-only port {port} answers on the WAN"
        );
    }
    for service in samples::SERVICES {
        let (memory, storage) = use_of(&gw, service.name, "at rest, as shipped");
        let m = manifest::parse(service.manifest, service.name).unwrap();
        assert!(memory < m.resources.memory.limit.unwrap_or(u64::MAX));
        assert!(storage <= m.resources.storage.reserve);
    }
}

/// streamco's `vod` on a real gateway: the origin and the tracker on the WAN, the household's
/// player on the LAN. The title plays on the LAN byte for byte; the gateway announces its
/// published BitTorrent port, and once the origin is gone a standard client (aria2c) on the
/// WAN fetches the whole title from the gateway alone — never faster than the 1 Mbit/s of
/// upload `vod` reserves, while the household's own upload floods the 10 Mbit/s link and
/// keeps its share.
#[test]
fn vod_plays_a_title_on_the_lan_and_the_gateway_seeds_it_to_a_standard_client() {
    let mut lab = Lab::new("vd");
    let gw = lab.gateway(
        "[capacity]\nbandwidth_down = \"50Mbit\"\nbandwidth_up = \"10Mbit\"\n\n\
         [reserve]\nbandwidth_down = \"10Mbit\"\nbandwidth_up = \"4Mbit\"\n",
    );
    let (binary, bytes) = service_binary(&gw, "vod");
    let binary = binary.display().to_string();
    let titles = lab.scratch.path().join("titles");
    std::fs::create_dir_all(&titles).unwrap();
    let data = testdata::scrambled(3 << 20);
    std::fs::write(titles.join("film.mp4"), &data).unwrap();
    let (origin_url, tracker_url) = (
        format!("http://{WAN_HOST}:8080"),
        format!("http://{WAN_HOST}:6969"),
    );
    let wan = lab.wan.clone();
    let tracker_log = lab.spawn(&wan, &[&binary, "tracker", "--listen", "0.0.0.0:6969"]);
    let titles_dir = titles.display().to_string();
    let origin_log = lab.spawn(
        &wan,
        &[
            &binary,
            "origin",
            "--listen",
            "0.0.0.0:8080",
            "--titles",
            &titles_dir,
            "--public-url",
            &origin_url,
            "--tracker",
            &tracker_url,
            "--seed-listen",
            "0.0.0.0:6882",
            "--seed-upload-bps",
            "2000000",
        ],
    );
    let origin_index = lab.background.len() - 1;
    for (what, port, log) in [
        ("tracker", 6969, &tracker_log),
        ("origin", 8080, &origin_log),
    ] {
        eventually(
            &format!("the {what} on the WAN"),
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                assert!(!text.contains("vod: "), "the {what} failed:\n{text}");
                lab.connect(&lab.wan, WAN_HOST, port).ok()
            },
        );
    }

    let rest = format!(
        "user = \"1000:1000\"\n\n[resources]\nmemory = {{ reserve = \"32MiB\", limit = \"128MiB\" }}\n\
         storage = {{ reserve = \"64MiB\" }}\n\
         bandwidth_up = {{ reserve = \"1Mbit\", limit = \"1Mbit\" }}\n\n{}\n\
         [metrics]\nhttp = \"http://127.0.0.1:8090/metrics\"\n\n\
         [restart]\npolicy = \"always\"\n",
        ports(&[(8090, "lan"), (6881, "wan")])
    );
    let command = [
        "/bin/vod",
        "peer",
        "--listen",
        "0.0.0.0:8090",
        "--bt-listen",
        "0.0.0.0:6881",
        "--origin",
        &origin_url,
        "--tracker",
        &tracker_url,
        "--region",
        "north",
        "--cache",
        "/data/titles",
        "--cache-bytes",
        "33554432",
        "--no-prefetch",
        // No --upload-bps: what holds its upload to 1 Mbit/s here is the gateway.
    ];
    // librqbit's HTTP client (rustls) insists on the system's CA certificates, even for a
    // plain-HTTP origin: the package carries the build host's bundle.
    let cas = std::fs::read("/etc/ssl/certs/ca-certificates.crt").expect("the host's CA bundle");
    let files: [Extra; 2] = [
        ("bin/vod", bytes.as_slice(), 0o755),
        ("etc/ssl/certs/ca-certificates.crt", cas.as_slice(), 0o644),
    ];
    gw.install("vod", &manifest("vod", "streamco", &command, &rest), &files);
    gw.wait_running("vod");
    eventually("vod on the LAN", Duration::from_secs(20), || {
        lab.connect(&lab.lan, GW_LAN, 8090).ok()
    });
    use_of(&gw, "vod", "at rest");

    // The household plays the title on the LAN.
    let played = lab.scratch.path().join("played.mp4");
    let played_s = played.display().to_string();
    let url = format!("http://{GW_LAN}:8090/watch/film.mp4");
    lab.run_ok(
        &lab.lan,
        &["curl", "-sf", "--max-time", "120", "-o", &played_s, &url],
    );
    let got = std::fs::read(&played).unwrap();
    assert!(
        got == data,
        "the LAN got {} bytes that differ from the title's {}\n{}",
        got.len(),
        data.len(),
        diagnose(&lab, &gw, "vod")
    );
    let (_, storage) = use_of(&gw, "vod", "after playing a 3 MiB title");
    assert!(
        storage >= data.len() as u64,
        "the title is not kept in the cache"
    );

    // The gateway announced its published port: the tracker lists it at the gateway's WAN
    // address (the swarm's other gateways and clients reach it there).
    let hash = {
        let catalog = lab.run_ok(&lab.wan, &["curl", "-sf", &format!("{origin_url}/catalog")]);
        let v: serde_json::Value = serde_json::from_str(&catalog).unwrap();
        v[0]["info_hash"].as_str().unwrap().to_string()
    };
    eventually(
        "the gateway in the tracker",
        Duration::from_secs(30),
        || {
            let peers = lab.run_ok(
                &lab.wan,
                &["curl", "-sf", &format!("{tracker_url}/peers/{hash}")],
            );
            peers.contains(&format!("\"{GW_WAN}:6881\"")).then_some(())
        },
    );

    // The origin goes (seed and web seed); a standard client gets the title from the gateway.
    let torrent = lab.scratch.path().join("film.torrent");
    let torrent_s = torrent.display().to_string();
    lab.run_ok(
        &lab.wan,
        &[
            "curl",
            "-sf",
            "-o",
            &torrent_s,
            &format!("{origin_url}/torrents/film.mp4"),
        ],
    );
    let mut origin = lab.background.remove(origin_index);
    let _ = origin.kill();
    let _ = origin.wait();
    // The household floods its upload meanwhile (LAN host to a WAN counter).
    let counts = lab.scratch.path().join("counts");
    lab.spawn_python(&wan, COUNTER, &[counts.to_str().unwrap(), "5003"]);
    eventually("the byte counter", Duration::from_secs(10), || {
        counts.exists().then_some(())
    });
    lab.spawn_python(&lab.lan.clone(), FLOOD, &[WAN_HOST, "5003"]);
    std::thread::sleep(Duration::from_secs(2));
    let (t0, before) = read_counts(&counts);
    let out_dir = lab.scratch.path().join("aria2");
    let out_s = out_dir.display().to_string();
    let started = Instant::now();
    let run = lab.run(
        &lab.wan,
        &[
            "aria2c",
            "--dir",
            &out_s,
            "--seed-time=0",
            "--enable-dht=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--bt-stop-timeout=60",
            "--summary-interval=0",
            "--console-log-level=warn",
            &torrent_s,
        ],
    );
    assert!(
        run.ok(),
        "aria2c on the WAN failed:\n{run}\n{}",
        diagnose(&lab, &gw, "vod")
    );
    let took = started.elapsed().as_secs_f64();
    let (t1, after) = read_counts(&counts);
    let fetched = std::fs::read(out_dir.join("film.mp4")).expect("aria2c's file");
    assert!(fetched == data, "aria2c's file differs from the title");
    let seeded = data.len() as f64 * 8.0 / took / 1e6;
    let household = (after.get(&5003).copied().unwrap_or(0)
        - before.get(&5003).copied().unwrap_or(0)) as f64
        * 8.0
        / (t1 - t0)
        / 1e6;
    eprintln!(
        "vod seeded the title at {seeded:.2} Mbit/s (reserved and limited to 1); the household's \
         flood got {household:.2} Mbit/s of the 10 Mbit/s link (4 reserved)"
    );
    assert!(
        (0.6..=1.1).contains(&seeded),
        "vod sent its peer {seeded:.2} Mbit/s: not the 1 Mbit/s it reserves (expected within \
         [0.6, 1.1] of it, with the household flooding the link; aria2c's own start and end \
         count in its time)\n{}",
        diagnose(&lab, &gw, "vod")
    );
    assert!(
        household >= 0.85 * 4.0,
        "the household's upload got {household:.2} Mbit/s while vod seeded: less than its \
         4 Mbit/s share"
    );
    let metrics = lab.run_ok(
        &lab.lan,
        &["curl", "-sf", &format!("http://{GW_LAN}:8090/metrics")],
    );
    let m: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert!(
        m["uploaded_bytes"].as_u64().unwrap_or(0) >= data.len() as u64,
        "the gateway did not serve aria2c the title: {m}"
    );
    // The provider reads the same figures through the gateway (`shg metrics`, its token);
    // the operator and the household may not.
    let through = gw.shg_ok(&["metrics", "vod"]);
    let t: serde_json::Value = serde_json::from_str(&through.stdout)
        .unwrap_or_else(|e| panic!("`shg metrics vod` is not vod's JSON ({e}): {through}"));
    assert_eq!(t["plays"], 1, "{t}");
    assert!(
        t["uploaded_bytes"].as_u64().unwrap_or(0) >= data.len() as u64,
        "{t}"
    );
    let mut as_operator = Command::new(crate::harness::SHG);
    as_operator
        .args(["metrics", "vod"])
        .env("SHG_GATEWAY", gw.socket())
        .env_remove("SHG_TOKEN");
    let refused = try_run(as_operator, lab.scratch.path(), Duration::from_secs(30)).unwrap();
    assert!(
        !refused.ok() && refused.stderr.contains("provider `streamco`'s data"),
        "the operator read streamco's figures: {refused}"
    );
    eprintln!("vod's metrics: {m}");
}

/// wireguard-go's UAPI socket is named after its interface host-wide and outlives a killed
/// daemon: removed when the test ends, however it ends.
struct UapiSocket(PathBuf);

impl Drop for UapiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// workfromhome's `vpn`, the shipped package on a real gateway: a laptop on the WAN with
/// Debian's `wireguard-go` reaches, through the tunnel, the LAN hosts the household granted
/// with `shg lan` and nothing else; the grant follows the household's changes at once, and
/// only the household may make it.
#[test]
fn vpn_gives_a_wan_laptop_the_lan_hosts_the_household_allows_and_nothing_else() {
    let mut lab = Lab::new("vp");
    let gw = lab.gateway("");
    let (lan, wan) = (lab.lan.clone(), lab.wan.clone());
    lab.run_ok(
        &lan,
        &["ip", "addr", "add", "192.168.77.3/24", "dev", "eth0"],
    );
    lab.peer_server(&lan, &[8080, 8081]);

    // The package as the demo and the catalog ship it.
    let service = samples::SERVICES
        .iter()
        .find(|s| s.name == "vpn")
        .expect("vpn is shipped");
    let dirs = vec![PathBuf::from(crate::harness::SHG)
        .parent()
        .unwrap()
        .to_path_buf()];
    let binary = samples::find_service_binary(service, &dirs)
        .expect("no static `vpn` beside shg: `cargo build --workspace` builds it");
    let out = gw.work.join("shipped");
    std::fs::create_dir_all(&out).unwrap();
    let tar = samples::build_service(service, &binary, &out).unwrap();
    gw.sign(&tar, "workfromhome");
    gw.shg_ok(&["install", tar.to_str().unwrap()]);
    gw.wait_running("vpn");
    let page = format!("http://{GW_LAN}:8095");
    let state = eventually("the vpn's page on the LAN", Duration::from_secs(20), || {
        let out = lab.run(&lan, &["curl", "-sf", &format!("{page}/v1/peers")]);
        serde_json::from_str::<serde_json::Value>(&out.stdout).ok()
    });
    let gateway_key = state["public_key"].as_str().unwrap().to_string();
    use_of(&gw, "vpn", "at rest");

    // The household adds its laptop on the page, with the laptop's own key.
    let private = lab.run_ok(&wan, &["wg", "genkey"]);
    let key_file = lab.scratch.path().join("laptop.key");
    std::fs::write(&key_file, &private).unwrap();
    let public = lab
        .run_ok(
            &wan,
            &["sh", "-c", &format!("wg pubkey < {}", key_file.display())],
        )
        .trim()
        .to_string();
    let added = lab.run_ok(
        &lan,
        &[
            "curl",
            "-sf",
            "-H",
            "content-type: application/json",
            "-d",
            &format!(r#"{{"name":"laptop","public_key":"{public}"}}"#),
            &format!("{page}/v1/peers"),
        ],
    );
    assert!(added.contains("10.200.0.2"), "{added}");

    // The laptop on the WAN: wireguard-go towards the gateway's published UDP port, the LAN
    // routed through the tunnel.
    let dev = format!("wgshg{}", std::process::id() % 100_000);
    let _socket = UapiSocket(PathBuf::from(format!("/var/run/wireguard/{dev}.sock")));
    lab.spawn(
        &wan,
        &[
            "env",
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
            "wireguard-go",
            "-f",
            &dev,
        ],
    );
    eventually("wireguard-go", Duration::from_secs(10), || {
        _socket.0.exists().then_some(())
    });
    let key_s = key_file.display().to_string();
    let endpoint = format!("{GW_WAN}:51820");
    lab.run_ok(
        &wan,
        &[
            "wg",
            "set",
            &dev,
            "private-key",
            &key_s,
            "peer",
            &gateway_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "192.168.77.0/24",
        ],
    );
    lab.run_ok(&wan, &["ip", "addr", "add", "10.200.0.2/32", "dev", &dev]);
    lab.run_ok(&wan, &["ip", "link", "set", &dev, "mtu", "1420", "up"]);
    lab.run_ok(
        &wan,
        &["ip", "route", "replace", "192.168.77.0/24", "dev", &dev],
    );
    // What the laptop gets from HOST:PORT through the tunnel: the LAN host's answer, or none.
    let through = |host: &str, port: u16| -> Option<String> {
        let answer = lab.connect(&wan, host, port).unwrap_or_default();
        answer.contains("from ").then_some(answer)
    };
    // Whether the laptop's ping of `host` through the tunnel is answered (by the host itself:
    // the service pings it from its own ICMP socket).
    let pings = |host: &str| -> bool {
        lab.run(&wan, &["busybox", "ping", "-c", "1", "-W", "2", host])
            .ok()
    };

    // Nothing granted yet: the firewall keeps the service off the LAN.
    assert_eq!(
        gw.shg_ok(&["lan", "vpn"]).stdout.trim(),
        "vpn may reach no host on the LAN"
    );
    assert_eq!(
        through(LAN_HOST, 8080),
        None,
        "reached the LAN with no grant"
    );

    // Only the household opens its LAN; the operator and the provider are told whose it is.
    let home = gw
        .shg_ok(&["token", "create", "--home"])
        .stdout
        .trim()
        .to_string();
    let as_home = |args: &[&str]| {
        let mut cmd = Command::new(crate::harness::SHG);
        cmd.args(args)
            .env("SHG_GATEWAY", gw.socket())
            .env("SHG_TOKEN", &home);
        try_run(cmd, &gw.work, Duration::from_secs(60)).unwrap()
    };
    let refused = gw.shg(&["lan", "vpn", "192.168.77.2:8080"]);
    assert!(
        !refused.ok() && refused.stderr.contains("household's to open"),
        "{refused}"
    );
    let bad = as_home(&["lan", "vpn", "192.168.77.2:8080", "10.77.0.9"]);
    assert!(!bad.ok() && bad.stderr.contains("10.77.0.9"), "{bad}");
    assert_eq!(
        gw.shg_ok(&["lan", "vpn"]).stdout.trim(),
        "vpn may reach no host on the LAN",
        "a refused grant changed nothing"
    );

    // One port of one host.
    let granted = as_home(&["lan", "vpn", "192.168.77.2:8080"]);
    assert!(granted.ok(), "{granted}");
    assert_eq!(
        granted.stdout.trim(),
        "vpn may reach on the LAN: 192.168.77.2:8080"
    );
    let answer = eventually(
        "the laptop through the tunnel",
        Duration::from_secs(30),
        || through(LAN_HOST, 8080),
    );
    // The LAN host sees the gateway, as for any connection from a service.
    assert!(answer.contains(&format!("from {GW_LAN}")), "{answer}");
    assert_eq!(through(LAN_HOST, 8081), None, "reached a port not granted");
    assert_eq!(
        through("192.168.77.3", 8080),
        None,
        "reached a host not granted"
    );

    // A whole host, then nothing again.
    assert!(as_home(&["lan", "vpn", "192.168.77.3"]).ok());
    assert!(
        through("192.168.77.3", 8081).is_some(),
        "the granted host is unreachable"
    );
    eventually(
        "the granted host to answer a ping",
        Duration::from_secs(10),
        || pings("192.168.77.3").then_some(()),
    );
    assert!(!pings(LAN_HOST), "a host not granted answered a ping");
    assert_eq!(
        through(LAN_HOST, 8080),
        None,
        "the grant was replaced, not added to"
    );
    assert!(as_home(&["lan", "vpn", "--none"]).ok());
    assert_eq!(
        through("192.168.77.3", 8081),
        None,
        "reached the LAN after --none"
    );
    assert!(!pings("192.168.77.3"), "a ping went through after --none");

    let events = gw.shg_ok(&["events", "--service", "vpn"]).stdout;
    assert!(
        events.contains("the household lets `vpn` reach 192.168.77.3 on the LAN"),
        "{events}"
    );
    let (memory, _) = use_of(&gw, "vpn", "after the laptop's connections");
    let m = manifest::parse(service.manifest, "vpn").unwrap();
    assert!(
        memory < m.resources.memory.reserve,
        "vpn outgrew its memory reservation"
    );
}

/// `[network] egress = "none"`: the service opens nothing towards the WAN (nor the LAN), yet
/// its published WAN port answers; its neighbour without the line still reaches the WAN.
#[test]
fn a_service_without_egress_answers_on_its_published_port_and_reaches_nothing() {
    let mut lab = Lab::new("eg");
    let gw = lab.gateway("");
    lab.peer_server(&lab.wan.clone(), &[7001]);
    let closed = format!("{}[network]\negress = \"none\"\n", ports(&[(9090, "wan")]));
    install_httpd(&gw, "closed", "acme", 9090, &closed);
    install_httpd(&gw, "open", "acme", 9091, "");
    assert!(
        connect_from(&gw, "open", WAN_HOST, 7001).is_ok(),
        "a service with egress reaches the WAN:\n{}",
        diagnose(&lab, &gw, "open")
    );
    assert!(
        connect_from(&gw, "closed", WAN_HOST, 7001).is_err(),
        "a service without egress reached the WAN"
    );
    let page = eventually("the published WAN port", Duration::from_secs(20), || {
        lab.connect(&lab.wan, GW_WAN, 9090).ok()
    });
    assert!(page.contains("page-of-closed"), "{page}");
    let shown: serde_json::Value =
        serde_json::from_str(&gw.shg_ok(&["inspect", "closed", "--json"]).stdout).unwrap();
    assert_eq!(shown["manifest"]["egress"], "none", "{shown}");
}
