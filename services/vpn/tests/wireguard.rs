//! The `vpn` binary against Debian's `wireguard-go` and `wg`, in network namespaces of the
//! test's own: a gateway namespace running `vpn`, laptops on its WAN side, a LAN host with a
//! web server and a counting sink. Root only (namespaces); each test removes what it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VPN: &str = env!("CARGO_BIN_EXE_vpn");

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    out
}

fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces and processes of one test, removed (processes by PID) when it ends.
struct Net {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    /// wireguard-go's UAPI sockets, left behind when it is killed.
    sockets: Vec<PathBuf>,
    /// Which of `children` is `vpn` (`ip netns exec` execs it: same PID).
    vpn: Option<usize>,
    dir: tempfile::TempDir,
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Net {
    /// `gw` with the LAN 192.168.77.0/24 (host `.2` in `lan`) and one WAN link per laptop:
    /// laptop `i` is 100.64.(90+i).2, the gateway 100.64.(90+i).1.
    fn new(label: &str, laptops: usize) -> Net {
        let tag = format!("{label}{}", std::process::id() % 100_000);
        let mut net = Net {
            tag: tag.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
            sockets: Vec::new(),
            vpn: None,
            dir: tempfile::tempdir().unwrap(),
        };
        for ns in ["gw", "lan"] {
            net.add_ns(ns);
        }
        net.link("gw", "192.168.77.1/24", "lan", "192.168.77.2/24");
        must(&[
            "ip",
            "-n",
            &net.ns("lan"),
            "addr",
            "add",
            "192.168.77.3/24",
            "dev",
            &net.veth("lan"),
        ]);
        for i in 0..laptops {
            let laptop = format!("l{i}");
            net.add_ns(&laptop);
            let third = 90 + i;
            net.link(
                "gw",
                &format!("100.64.{third}.1/24"),
                &laptop,
                &format!("100.64.{third}.2/24"),
            );
        }
        net
    }

    fn ns(&self, name: &str) -> String {
        format!("vpnt-{}-{name}", self.tag)
    }

    fn veth(&self, name: &str) -> String {
        format!("v{}{name}", self.tag)
    }

    fn add_ns(&mut self, name: &str) {
        let ns = self.ns(name);
        let _ = run(&["ip", "netns", "del", &ns]);
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    }

    /// A veth between `a` and `b`; `b`'s end is named after `b`, `a`'s after `b` too.
    fn link(&self, a: &str, a_addr: &str, b: &str, b_addr: &str) {
        let (ea, eb) = (format!("{}g", self.veth(b)), self.veth(b));
        must(&[
            "ip",
            "link",
            "add",
            &ea,
            "netns",
            &self.ns(a),
            "type",
            "veth",
            "peer",
            "name",
            &eb,
            "netns",
            &self.ns(b),
        ]);
        for (ns, dev, addr) in [(a, &ea, a_addr), (b, &eb, b_addr)] {
            must(&["ip", "-n", &self.ns(ns), "addr", "add", addr, "dev", dev]);
            must(&["ip", "-n", &self.ns(ns), "link", "set", dev, "up"]);
        }
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .args(args)
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
        self.children.push(child);
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec"];
        let ns = self.ns(ns);
        all.push(&ns);
        all.extend_from_slice(args);
        run(&all)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// `vpn` in the gateway namespace, reaching only `allow`; waits for its page.
    fn start_vpn(&mut self, allow: &str) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let data = data.to_string_lossy().into_owned();
        self.spawn("gw", &[VPN, "--data", &data, "--allow", allow], "vpn.log");
        self.vpn = Some(self.children.len() - 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.page("GET", "/v1/peers", None).0.starts_with('2') {
            assert!(
                Instant::now() < deadline,
                "vpn did not start: {}",
                self.log("vpn.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (RssAnon, VmHWM) of the `vpn` process, in KiB: its own memory, and its peak resident
    /// size with the binary's pages.
    fn vpn_memory_kib(&self) -> (u64, u64) {
        let pid = self.children[self.vpn.expect("vpn started")].id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("RssAnon:"), field("VmHWM:"))
    }

    /// A call to the household's page, from the LAN host: (status, body).
    fn page(&self, method: &str, path: &str, body: Option<&str>) -> (String, String) {
        let url = format!("http://192.168.77.1:8095{path}");
        let mut args = vec![
            "curl",
            "-s",
            "-m",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        if let Some(body) = body {
            args.extend_from_slice(&["-H", "content-type: application/json", "-d", body]);
        }
        args.push(&url);
        let out = self.exec("lan", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
        (code.to_string(), body.to_string())
    }

    fn state(&self) -> serde_json::Value {
        let (code, body) = self.page("GET", "/v1/peers", None);
        assert_eq!(code, "200", "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A WireGuard key pair made by `wg`: (private key file, public key).
    fn keys(&self, name: &str) -> (PathBuf, String) {
        let private = must(&["wg", "genkey"]);
        let path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&path, &private).unwrap();
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            path,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// Laptop `i` up with `wireguard-go`, its `key`, tunnel `address`, towards the gateway.
    fn laptop(&mut self, i: usize, key: &Path, address: &str, gateway_key: &str) {
        let ns = format!("l{i}");
        // The UAPI socket is named after the interface, host-wide: unique names.
        let dev = format!("wg{}{i}", self.tag);
        self.spawn(&ns, &["wireguard-go", "-f", &dev], &format!("wg{i}.log"));
        let sock = format!("/var/run/wireguard/{dev}.sock");
        self.sockets.push(PathBuf::from(&sock));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&sock).exists() {
            assert!(
                Instant::now() < deadline,
                "wireguard-go did not start: {}",
                self.log(&format!("wg{i}.log"))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let endpoint = format!("100.64.{}.1:51820", 90 + i);
        let key = key.to_string_lossy().into_owned();
        let nsname = self.ns(&ns);
        must(&[
            "ip",
            "netns",
            "exec",
            &nsname,
            "wg",
            "set",
            &dev,
            "private-key",
            &key,
            "peer",
            gateway_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            "192.168.77.0/24",
        ]);
        must(&[
            "ip",
            "-n",
            &nsname,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            &dev,
        ]);
        must(&[
            "ip", "-n", &nsname, "link", "set", &dev, "mtu", "1420", "up",
        ]);
        must(&[
            "ip",
            "-n",
            &nsname,
            "route",
            "add",
            "192.168.77.0/24",
            "dev",
            &dev,
        ]);
    }

    /// `curl` from laptop `i`: (exit code, body bytes).
    fn curl(&self, i: usize, url: &str, extra: &[&str]) -> (i32, Vec<u8>) {
        let mut args = vec!["curl", "-s", "-m", "8"];
        args.extend_from_slice(extra);
        args.push(url);
        let out = self.exec(&format!("l{i}"), &args);
        (out.status.code().unwrap_or(-1), out.stdout)
    }

    fn add_peer(&self, name: &str, public: &str) -> serde_json::Value {
        let (code, body) = self.page(
            "POST",
            "/v1/peers",
            Some(&format!(r#"{{"name":"{name}","public_key":"{public}"}}"#)),
        );
        assert_eq!(code, "201", "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A web server on the LAN host (busybox httpd on 192.168.77.2:8080) with `file` in it, and a
/// sink on :9000 that answers each request with the length of its body.
fn lan_servers(net: &mut Net, file: &[u8]) {
    let www = net.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("file"), file).unwrap();
    let www = www.to_string_lossy().into_owned();
    net.spawn(
        "lan",
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "192.168.77.2:8080",
            "-h",
            &www,
        ],
        "httpd.log",
    );
    let sink = r#"
import http.server as h
class S(h.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers['content-length']); got = 0
        while got < n:
            b = self.rfile.read(min(65536, n - got))
            if not b: break
            got += len(b)
        body = str(got).encode(); self.send_response(200)
        self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
h.HTTPServer(('192.168.77.2', 9000), S).serve_forever()
"#;
    net.spawn("lan", &["/usr/bin/python3", "-c", sink], "sink.log");
    let echo = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('192.168.77.2', 9001))
while True:
    d, a = s.recvfrom(65535)
    s.sendto(b'echo ' + d, a)
"#;
    net.spawn("lan", &["/usr/bin/python3", "-c", echo], "echo.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ["8080", "9000"] {
        while !String::from_utf8_lossy(&net.exec("lan", &["ss", "-ltn"]).stdout)
            .contains(&format!("192.168.77.2:{port}"))
        {
            assert!(
                Instant::now() < deadline,
                "LAN server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn root() -> bool {
    if nix_is_root() {
        true
    } else {
        eprintln!("skipped: needs root (network namespaces)");
        false
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn a_laptop_reaches_the_allowed_lan_host_through_wireguard_and_nothing_else() {
    if !root() {
        return;
    }
    let mut net = Net::new("a", 1);
    let file = testdata::scrambled(3 << 20);
    lan_servers(&mut net, &file);
    net.start_vpn("192.168.77.2/32");
    let gateway_key = net.state()["public_key"].as_str().unwrap().to_string();
    let (key, public) = net.keys("laptop");
    let added = net.add_peer("laptop", &public);
    assert_eq!(added["peer"]["address"], "10.200.0.2");
    let config = added["config"].as_str().unwrap();
    assert!(
        config.contains(&format!("PublicKey = {gateway_key}")),
        "{config}"
    );
    assert!(config.contains("AllowedIPs = 192.168.77.2/32"), "{config}");
    let rest = net.vpn_memory_kib();
    net.laptop(0, &key, "10.200.0.2", &gateway_key);

    // Down: every byte of a 3 MiB file, through the tunnel.
    let (code, body) = net.curl(0, "http://192.168.77.2:8080/file", &[]);
    assert_eq!(
        code,
        0,
        "vpn: {}\nwg: {}",
        net.log("vpn.log"),
        net.log("wg0.log")
    );
    assert!(
        body == file,
        "{} bytes came, {} expected",
        body.len(),
        file.len()
    );
    // Up: 2 MiB to the sink, which counts them.
    let upload = net.dir.path().join("upload");
    std::fs::write(&upload, testdata::scrambled(2 << 20)).unwrap();
    let upload_arg = format!("@{}", upload.display());
    let (code, body) = net.curl(
        0,
        "http://192.168.77.2:9000/",
        &[
            "--data-binary",
            &upload_arg,
            "-H",
            "content-type: application/octet-stream",
        ],
    );
    assert_eq!(
        (code, String::from_utf8_lossy(&body).as_ref()),
        (0, "2097152")
    );

    // UDP: datagrams to the LAN host and its answers, through the tunnel.
    let udp = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(('192.168.77.2', 9001))
for n in range(3):
    s.send(b'ping %d' % n + b'.' * 1000)
    print(s.recv(65535)[:11].decode())
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t.settimeout(1)
t.sendto(b'ping', ('192.168.77.3', 9001))
try:
    t.recv(100); print('answered')
except socket.timeout:
    print('no answer')
"#;
    let out = net.exec("l0", &["/usr/bin/python3", "-c", udp]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echo ping 0\necho ping 1\necho ping 2\nno answer\n",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        net.log("vpn.log")
    );
    // Another LAN host is outside what the tunnel reaches: refused at once (a reset).
    let began = Instant::now();
    let (code, _) = net.curl(0, "http://192.168.77.3:8080/file", &[]);
    assert_eq!(code, 7, "curl's `connection refused`");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "a reset, not a timeout"
    );
    // The allowed host on a port nothing listens on: refused too, after the host's own RST.
    let (code, _) = net.curl(0, "http://192.168.77.2:8099/", &[]);
    assert_ne!(code, 0);

    // The figures follow within a second.
    let deadline = Instant::now() + Duration::from_secs(3);
    let state = loop {
        let state = net.state();
        let rx = state["peers"][0]["status"]["rx_bytes"]
            .as_u64()
            .unwrap_or(0);
        if rx > 2 << 20 || Instant::now() > deadline {
            break state;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state["refused"]["destinations"], 2, "{state}");
    assert_eq!(state["refused"]["unreachable"], 1, "{state}");
    let status = &state["peers"][0]["status"];
    let endpoint = status["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.starts_with("100.64.90.2:"), "{state}");
    assert!(status["rx_bytes"].as_u64().unwrap() > 2 << 20, "{state}");
    assert!(status["tx_bytes"].as_u64().unwrap() > 3 << 20, "{state}");
    // Memory against the manifest's reservation (8 MiB): its own at rest and after these
    // transfers (the peak resident size, binary included, reported beside).
    let after = net.vpn_memory_kib();
    eprintln!(
        "vpn memory: {} KiB of its own at rest, {} KiB after the transfers, peak resident {} KiB",
        rest.0, after.0, after.1
    );
    assert!(
        after.0 < 8 * 1024,
        "the reservation is too small: {after:?} KiB"
    );
    // The provider's figures name no one.
    let (code, metrics) = net.page("GET", "/metrics", None);
    assert_eq!(code, "200");
    assert!(
        !metrics.contains("laptop") && !metrics.contains(&public),
        "{metrics}"
    );
    let metrics: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert_eq!(
        (
            metrics["peers"].as_u64(),
            metrics["peers_connected"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[test]
fn strangers_spoofers_and_garbage_are_refused_and_the_service_stays_up() {
    if !root() {
        return;
    }
    let mut net = Net::new("b", 2);
    lan_servers(&mut net, b"hello from the LAN\n");
    net.start_vpn("192.168.77.0/24");
    let gateway_key = net.state()["public_key"].as_str().unwrap().to_string();

    // The page refuses what is not a key, naming the rule.
    let (code, body) = net.page(
        "POST",
        "/v1/peers",
        Some(r#"{"name":"x","public_key":"AAAA"}"#),
    );
    assert_eq!(code, "400");
    assert!(body.contains("32"), "{body}");
    let (code, _) = net.page("POST", "/v1/peers", Some("not json"));
    assert_eq!(code, "400");
    let (code, _) = net.page("DELETE", "/v1/peers/nobody", None);
    assert_eq!(code, "404");

    // Garbage on the WireGuard port: short, random, a handshake's type with junk, a data
    // packet's type with an unknown index.
    let garbage = r#"
import socket, os
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for p in [b'x', os.urandom(300), b'\x01\x00\x00\x00' + os.urandom(144), b'\x04\x00\x00\x00' + os.urandom(60)]:
    s.sendto(p, ('100.64.91.1', 51820))
"#;
    assert!(net
        .exec("l1", &["/usr/bin/python3", "-c", garbage])
        .status
        .success());

    // A stranger: a real WireGuard peer whose key the household never added.
    let (stranger_key, _) = net.keys("stranger");
    net.laptop(1, &stranger_key, "10.200.0.2", &gateway_key);
    let (code, _) = net.curl(1, "http://192.168.77.2:8080/file", &["-m", "3"]);
    assert_ne!(code, 0, "a stranger got through");

    // A known laptop lying about its tunnel address gets nothing either.
    let (key, public) = net.keys("laptop");
    net.add_peer("laptop", &public);
    net.laptop(0, &key, "10.200.0.9", &gateway_key);
    let (code, _) = net.curl(0, "http://192.168.77.2:8080/file", &["-m", "3"]);
    assert_ne!(code, 0, "a spoofed source got through");

    let refused = net.state()["refused"].clone();
    assert!(refused["unknown_keys"].as_u64().unwrap() >= 1, "{refused}");
    assert!(refused["bad_datagrams"].as_u64().unwrap() >= 3, "{refused}");
    assert!(
        refused["spoofed_sources"].as_u64().unwrap() >= 1,
        "{refused}"
    );

    // Still up: the same laptop with its own address gets through.
    let nsname = net.ns("l0");
    let dev = format!("wg{}0", net.tag);
    must(&["ip", "-n", &nsname, "addr", "flush", "dev", &dev]);
    must(&[
        "ip",
        "-n",
        &nsname,
        "addr",
        "add",
        "10.200.0.2/32",
        "dev",
        &dev,
    ]);
    must(&[
        "ip",
        "-n",
        &nsname,
        "route",
        "replace",
        "192.168.77.0/24",
        "dev",
        &dev,
    ]);
    let (code, body) = net.curl(0, "http://192.168.77.2:8080/file", &[]);
    assert_eq!(
        (code, body.as_slice()),
        (0, &b"hello from the LAN\n"[..]),
        "{}",
        net.log("vpn.log")
    );

    // Removed, the laptop is out at once.
    let (code, _) = net.page("DELETE", "/v1/peers/laptop", None);
    assert_eq!(code, "204");
    let (code, _) = net.curl(0, "http://192.168.77.2:8080/file", &["-m", "3"]);
    assert_ne!(code, 0, "a removed peer got through");
}

#[test]
fn a_ping_reaches_an_allowed_lan_host_and_nothing_answers_for_a_host_that_is_not_there() {
    if !root() {
        return;
    }
    let mut net = Net::new("p", 1);
    // .2 and .3 are the LAN host; .5 is allowed but nobody; .9 is not allowed.
    net.start_vpn("192.168.77.0/29");
    let gateway_key = net.state()["public_key"].as_str().unwrap().to_string();
    let (key, public) = net.keys("laptop");
    net.add_peer("laptop", &public);
    net.laptop(0, &key, "10.200.0.2", &gateway_key);
    let ping = |host: &str| {
        let out = net.exec("l0", &["busybox", "ping", "-c", "2", "-W", "2", host]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let ping_groups = |range: &str| {
        let setting = format!("net.ipv4.ping_group_range={range}");
        must(&[
            "ip",
            "netns",
            "exec",
            &net.ns("gw"),
            "sysctl",
            "-qw",
            &setting,
        ]);
    };
    // Without a ping_group_range that admits it, the service has no ICMP socket: no answer.
    ping_groups("1 0");
    let (ok, out) = ping("192.168.77.2");
    assert!(!ok, "{out}");
    assert!(
        net.log("vpn.log").contains("ping_group_range"),
        "{}",
        net.log("vpn.log")
    );
    // As the agent sets it in every service's namespace.
    ping_groups("0 2147483647");
    let (ok, out) = ping("192.168.77.2");
    assert!(
        ok && out.contains("2 packets received"),
        "{out}\nvpn: {}",
        net.log("vpn.log")
    );
    // An allowed address where no host is: no answer (the stack used to answer every echo).
    let (ok, out) = ping("192.168.77.5");
    assert!(!ok && out.contains("0 packets received"), "{out}");
    // Outside what the tunnel reaches: no answer, counted.
    let (ok, out) = ping("192.168.77.9");
    assert!(!ok && out.contains("0 packets received"), "{out}");
    let state = net.state();
    assert_eq!(state["refused"]["destinations"], 2, "{state}");
    assert!(
        state["refused"]["unreachable"].as_u64().unwrap_or(0) >= 1,
        "{state}"
    );
}
