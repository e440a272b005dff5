//! The data plane: WireGuard (boringtun's noise state machine, one per peer) on one UDP socket,
//! and a userspace TCP/IP stack (smoltcp) that ends the laptop's TCP connections inside the
//! service and opens the same connection from the service to the LAN host. A UDP datagram
//! goes on from a socket of its flow's own, and the answers come back the same way; so does
//! a ping (ICMP echo), from an ICMP datagram socket of its own ("ping socket", which needs no
//! capability where `net.ipv4.ping_group_range` admits the service: the agent sets it in
//! every service's network namespace). Only a real echo reply of the LAN host is answered.
//!
//! No TUN device, no forwarding, no extra capability: what leaves the service is ordinary
//! sockets of its own, so the gateway's firewall decides which LAN hosts it reaches (the
//! household's grant). The service itself refuses any destination outside `allowed` (the
//! home's private ranges), so it is never an exit to the Internet.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::Serialize;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, Icmpv4Message, Icmpv4Packet, IpAddress, IpCidr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};

use crate::peers::{Peer, Peers};

/// Inner MTU: WireGuard's usual 1420.
pub const MTU: usize = 1420;
/// Connections the stack holds at once; a SYN beyond gets a reset.
pub const MAX_CONNECTIONS: usize = 256;
/// How long the service tries to reach a LAN host before resetting the laptop's connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP flow without a datagram either way for this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
const SOCKET_BUFFER: usize = 64 * 1024;
const CHUNK: usize = 16 * 1024;
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// What the household's page and the provider's metrics show of one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    /// Where its last authenticated packet came from.
    pub endpoint: Option<String>,
    /// Seconds since its last handshake.
    pub last_handshake_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// What the service refused, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Refused {
    /// Handshakes from keys the household did not add.
    pub unknown_keys: u64,
    /// Datagrams that are not WireGuard, or fail authentication.
    pub bad_datagrams: u64,
    /// Packets from a peer with a source address other than its own.
    pub spoofed_sources: u64,
    /// Connections to destinations outside the home's private ranges.
    pub destinations: u64,
    /// Connections the LAN host (or the gateway's firewall) did not accept.
    pub unreachable: u64,
}

/// State shared by the data plane and the household's page.
#[derive(Debug)]
pub struct Shared {
    pub peers: Peers,
    /// Bumped on each change of `peers`; the data plane follows.
    pub generation: u64,
    pub status: HashMap<String, PeerStatus>,
    pub refused: Refused,
    pub connections: usize,
}

/// A private IPv4 range the laptop may reach through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    pub fn parse(text: &str) -> Result<Net, String> {
        let (a, l) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not ADDRESS/LENGTH (e.g. 192.168.1.0/24)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{l:?} is not a prefix length from 0 to 32"))?;
        Ok(Net { addr, len })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        };
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// The home's private ranges (RFC 1918): what the tunnel reaches by default.
pub fn private_ranges() -> Vec<Net> {
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        .iter()
        .filter_map(|t| Net::parse(t).ok())
        .collect()
}

/// The stack's device: IP packets in from the peers, out to them.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

/// What a connection's upstream task tells the data plane.
enum Up {
    Data(Vec<u8>),
    Eof,
    Failed,
}

/// One laptop connection and its twin towards the LAN host.
struct Conn {
    handle: SocketHandle,
    target: SocketAddrV4,
    to_host: Option<mpsc::Sender<Vec<u8>>>,
    from_host: mpsc::Receiver<Up>,
    pending: Option<(Vec<u8>, usize)>,
    host_done: bool,
    opened: Instant,
    /// Seen closed at the last round: removed at this one (after its RST went out).
    closed: bool,
    task: tokio::task::JoinHandle<()>,
}

/// A UDP flow: a peer's address and port, and the LAN host's; or a ping: the peer's
/// address and echo identifier as `peer`, the LAN host with port 0 as `target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    peer: SocketAddrV4,
    target: SocketAddrV4,
    ping: bool,
}

/// The service's socket for one flow, forgotten after `UDP_IDLE` without traffic.
struct Flow {
    socket: std::net::UdpSocket,
    last: Instant,
    task: tokio::task::JoinHandle<()>,
}

struct PeerState {
    peer: Peer,
    /// Its public key, decoded once.
    key: [u8; 32],
    tunn: Tunn,
    /// What its `Tunn` was made with: the upper 24 bits of the receiver index of the
    /// packets meant for it.
    tunn_index: u32,
    endpoint: Option<SocketAddr>,
    /// Bytes of IP packets: from the peer (admitted), to it.
    rx: u64,
    tx: u64,
}

/// The WireGuard endpoint.
pub struct Tunnel {
    pub secret: StaticSecret,
    pub udp: UdpSocket,
    /// The gateway's end of the tunnel (`.1`).
    pub address: Ipv4Addr,
    pub allowed: Vec<Net>,
    pub shared: Arc<Mutex<Shared>>,
    pub wake: Arc<Notify>,
}

fn now_smol(start: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(start.elapsed().as_micros() as i64)
}

impl Tunnel {
    pub async fn run(self) -> std::io::Result<()> {
        let public = PublicKey::from(&self.secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        let start = Instant::now();
        let mut dev = Queues::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, now_smol(start));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(self.address), 24));
        });
        // Any destination routed "through" our own address is ours to answer (AnyIP).
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(self.address);
        let mut sockets = SocketSet::new(Vec::new());
        let mut conns: Vec<Conn> = Vec::new();
        let mut peers: Vec<PeerState> = Vec::new();
        let mut generation = u64::MAX;
        let mut next_index: u32 = 1;
        let mut buf = vec![0u8; 65536];
        let mut out = vec![0u8; 65536];
        let mut last_tick = Instant::now() - Duration::from_secs(1);
        let mut flows: HashMap<FlowKey, Flow> = HashMap::new();
        let (replies_tx, mut replies_rx) = mpsc::channel::<(FlowKey, Vec<u8>)>(256);
        let mut last_reset = Instant::now();

        loop {
            // Follow the household's list of peers.
            {
                let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                if shared.generation != generation {
                    generation = shared.generation;
                    let list = shared.peers.list().to_vec();
                    drop(shared);
                    peers.retain(|s| list.contains(&s.peer));
                    for peer in list {
                        if peers.iter().any(|s| s.peer == peer) {
                            continue;
                        }
                        // The index tells whose a packet is; never given twice.
                        let index = next_index;
                        next_index = (next_index + 1) & 0x00ff_ffff;
                        let key = peer.key();
                        match Tunn::new(
                            self.secret.clone(),
                            PublicKey::from(key),
                            None,
                            None,
                            index,
                            Some(limiter.clone()),
                        ) {
                            Ok(tunn) => peers.push(PeerState {
                                peer,
                                key,
                                tunn,
                                tunn_index: index,
                                endpoint: None,
                                rx: 0,
                                tx: 0,
                            }),
                            Err(e) => eprintln!("vpn: peer `{}` left out: {e}", peer.name),
                        }
                    }
                }
            }

            iface.poll(now_smol(start), &mut dev, &mut sockets);
            self.send_out(&mut dev, &mut peers, &mut out).await;
            self.serve_connections(&mut conns, &mut sockets);
            iface.poll(now_smol(start), &mut dev, &mut sockets);
            self.send_out(&mut dev, &mut peers, &mut out).await;

            if last_tick.elapsed() >= Duration::from_millis(250) {
                last_tick = Instant::now();
                for s in &mut peers {
                    if let TunnResult::WriteToNetwork(packet) = s.tunn.update_timers(&mut out) {
                        if let Some(to) = s.endpoint {
                            let _ = self.udp.send_to(packet, to).await;
                        }
                    }
                }
                if last_reset.elapsed() >= Duration::from_secs(1) {
                    last_reset = Instant::now();
                    limiter.reset_count();
                }
                flows.retain(|_, f| {
                    let live = f.last.elapsed() < UDP_IDLE;
                    if !live {
                        f.task.abort();
                    }
                    live
                });
                self.publish_status(&peers, conns.len() + flows.len());
            }

            let delay = iface
                .poll_delay(now_smol(start), &sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_millis(250))
                .min(Duration::from_millis(250));
            tokio::select! {
                got = self.udp.recv_from(&mut buf) => {
                    let (n, from) = got?;
                    let Some(packet) = self.datagram(&buf[..n], from, &mut peers, &mut out).await else {
                        continue;
                    };
                    // UDP, and ICMP to any address but our own: the stack would answer every
                    // echo itself (it takes any address as its own), so a LAN host's pings
                    // go out to the host instead.
                    let flowed = Ipv4Packet::new_checked(&packet[..]).is_ok_and(|ip| {
                        ip.next_header() == IpProtocol::Udp
                            || (ip.next_header() == IpProtocol::Icmp && ip.dst_addr() != self.address)
                    });
                    if flowed {
                        self.flow_out(&packet, &mut flows, &replies_tx);
                    } else {
                        self.admit(&packet, &mut conns, &mut sockets);
                        dev.rx.push_back(packet);
                    }
                }
                Some((key, data)) = replies_rx.recv() => {
                    if let Some(flow) = flows.get_mut(&key) {
                        flow.last = Instant::now();
                    }
                    self.flow_back(key, &data, &mut peers, &mut out).await;
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One datagram from the WAN: find its peer, let WireGuard check and open it; the IP
    /// packet inside when it comes from the peer's own tunnel address.
    #[allow(clippy::too_many_arguments)]
    async fn datagram(
        &self,
        data: &[u8],
        from: SocketAddr,
        peers: &mut [PeerState],
        out: &mut [u8],
    ) -> Option<Vec<u8>> {
        let who = match Tunn::parse_incoming_packet(data) {
            Ok(Packet::HandshakeInit(init)) => {
                let public = PublicKey::from(&self.secret);
                match parse_handshake_anon(&self.secret, &public, &init) {
                    Ok(half) => {
                        let found = peers.iter().position(|s| s.key == half.peer_static_public);
                        if found.is_none() {
                            self.refuse(|r| r.unknown_keys += 1);
                        }
                        found
                    }
                    Err(_) => {
                        self.refuse(|r| r.bad_datagrams += 1);
                        None
                    }
                }
            }
            Ok(Packet::HandshakeResponse(p)) => by_index(peers, p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => by_index(peers, p.receiver_idx),
            Ok(Packet::PacketData(p)) => by_index(peers, p.receiver_idx),
            Err(_) => None,
        };
        let Some(i) = who else {
            if !matches!(
                Tunn::parse_incoming_packet(data),
                Ok(Packet::HandshakeInit(_))
            ) {
                self.refuse(|r| r.bad_datagrams += 1);
            }
            return None;
        };
        let state = &mut peers[i];
        let mut first = true;
        loop {
            let input: &[u8] = if first { data } else { &[] };
            let result = state.tunn.decapsulate(Some(from.ip()), input, out);
            match result {
                TunnResult::WriteToNetwork(packet) => {
                    state.endpoint = Some(from);
                    let _ = self.udp.send_to(packet, from).await;
                }
                TunnResult::WriteToTunnelV4(packet, source) => {
                    state.endpoint = Some(from);
                    if source != state.peer.address {
                        self.refuse(|r| r.spoofed_sources += 1);
                        return None;
                    }
                    state.rx += packet.len() as u64;
                    return Some(packet.to_vec());
                }
                TunnResult::WriteToTunnelV6(..) => return None,
                TunnResult::Done => {
                    if first {
                        state.endpoint = Some(from);
                    }
                    return None;
                }
                TunnResult::Err(_) => {
                    if first {
                        self.refuse(|r| r.bad_datagrams += 1);
                    }
                    return None;
                }
            }
            first = false;
        }
    }

    /// A UDP datagram, or a ping (ICMP echo request), from a peer to a LAN host: sent on from
    /// a socket of the flow's own (made on its first datagram, to an allowed destination),
    /// whose answers come back through `replies`. A ping goes out from an ICMP datagram
    /// socket as the same echo (the kernel sets the socket's own identifier). Any other ICMP
    /// message is dropped.
    fn flow_out(
        &self,
        packet: &[u8],
        flows: &mut HashMap<FlowKey, Flow>,
        replies: &mpsc::Sender<(FlowKey, Vec<u8>)>,
    ) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let (key, payload) = match ip.next_header() {
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                    return;
                };
                let key = FlowKey {
                    peer: SocketAddrV4::new(src, udp.src_port()),
                    target: SocketAddrV4::new(dst, udp.dst_port()),
                    ping: false,
                };
                (key, udp.payload())
            }
            IpProtocol::Icmp => {
                let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
                    return;
                };
                if icmp.msg_type() != Icmpv4Message::EchoRequest || icmp.msg_code() != 0 {
                    return;
                }
                let key = FlowKey {
                    peer: SocketAddrV4::new(src, icmp.echo_ident()),
                    target: SocketAddrV4::new(dst, 0),
                    ping: true,
                };
                (key, ip.payload())
            }
            _ => return,
        };
        self.flow_send(key, payload, flows, replies);
    }

    /// Sends `payload` on the socket of flow `key`, made on its first datagram if the
    /// destination is allowed: a UDP socket, or for a ping an ICMP datagram socket. Answers
    /// come back through `replies`.
    fn flow_send(
        &self,
        key: FlowKey,
        payload: &[u8],
        flows: &mut HashMap<FlowKey, Flow>,
        replies: &mpsc::Sender<(FlowKey, Vec<u8>)>,
    ) {
        if !flows.contains_key(&key) {
            let target = *key.target.ip();
            if target == self.address || !self.allowed.iter().any(|n| n.contains(target)) {
                self.refuse(|r| r.destinations += 1);
                return;
            }
            if flows.len() >= MAX_CONNECTIONS {
                return;
            }
            // One socket: sent on directly (non-blocking), read by the flow's task.
            let sockets = flow_socket(key)
                .and_then(|s| s.connect(key.target).map(|()| s))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .and_then(|s| Ok((s.try_clone()?, UdpSocket::from_std(s)?)));
            let (socket, reader) = match sockets {
                Ok(pair) => pair,
                Err(e) => {
                    // Said once: a ping runs on for as long as its user lets it.
                    static SAID: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if key.ping && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        eprintln!(
                            "vpn: cannot ping {target}: {e}; pings to LAN hosts need \
                             net.ipv4.ping_group_range to include the service's group"
                        );
                    }
                    self.refuse(|r| r.unreachable += 1);
                    return;
                }
            };
            let replies = replies.clone();
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 65535];
                while let Ok(n) = reader.recv(&mut buf).await {
                    if replies.send((key, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            });
            flows.insert(
                key,
                Flow {
                    socket,
                    last: Instant::now(),
                    task,
                },
            );
        }
        if let Some(flow) = flows.get_mut(&key) {
            flow.last = Instant::now();
            // A full send buffer drops the datagram, as any UDP path may.
            let _ = flow.socket.send(payload);
        }
    }

    /// What came back on a flow's socket, to its peer.
    async fn flow_back(&self, key: FlowKey, data: &[u8], peers: &mut [PeerState], out: &mut [u8]) {
        if key.ping {
            self.ping_back(key, data, peers, out).await;
        } else {
            self.udp_back(key, data, peers, out).await;
        }
    }

    /// An echo reply of a LAN host to a ping, given back the peer's identifier and wrapped in
    /// IP from the host to the peer. Anything else on the socket is dropped.
    async fn ping_back(&self, key: FlowKey, data: &[u8], peers: &mut [PeerState], out: &mut [u8]) {
        if data.len() > MTU - 20 {
            return;
        }
        let ip = Ipv4Repr {
            src_addr: *key.target.ip(),
            dst_addr: *key.peer.ip(),
            next_header: IpProtocol::Icmp,
            payload_len: data.len(),
            hop_limit: 64,
        };
        let mut packet = vec![0u8; ip.buffer_len() + data.len()];
        let caps = ChecksumCapabilities::default();
        let mut ip_packet = Ipv4Packet::new_unchecked(&mut packet[..]);
        ip.emit(&mut ip_packet, &caps);
        ip_packet.payload_mut().copy_from_slice(data);
        let mut icmp = Icmpv4Packet::new_unchecked(ip_packet.payload_mut());
        if icmp.check_len().is_err()
            || icmp.msg_type() != Icmpv4Message::EchoReply
            || icmp.msg_code() != 0
        {
            return;
        }
        icmp.set_echo_ident(key.peer.port());
        icmp.fill_checksum();
        self.deliver(&packet, peers, out).await;
    }

    /// An answer of a LAN host to a flow, wrapped in IP and UDP from the host to the peer.
    async fn udp_back(&self, key: FlowKey, data: &[u8], peers: &mut [PeerState], out: &mut [u8]) {
        if data.len() > MTU - 28 {
            return; // no fragmentation here: larger answers are dropped
        }
        let udp = UdpRepr {
            src_port: key.target.port(),
            dst_port: key.peer.port(),
        };
        let ip = Ipv4Repr {
            src_addr: *key.target.ip(),
            dst_addr: *key.peer.ip(),
            next_header: IpProtocol::Udp,
            payload_len: 8 + data.len(),
            hop_limit: 64,
        };
        let mut packet = vec![0u8; ip.buffer_len() + 8 + data.len()];
        let caps = ChecksumCapabilities::default();
        let mut ip_packet = Ipv4Packet::new_unchecked(&mut packet[..]);
        ip.emit(&mut ip_packet, &caps);
        let mut udp_packet = UdpPacket::new_unchecked(ip_packet.payload_mut());
        udp.emit(
            &mut udp_packet,
            &IpAddress::Ipv4(ip.src_addr),
            &IpAddress::Ipv4(ip.dst_addr),
            data.len(),
            |payload| payload.copy_from_slice(data),
            &caps,
        );
        self.deliver(&packet, peers, out).await;
    }

    /// A TCP SYN towards an allowed destination gets a listening socket of its own (and a
    /// task that opens the connection to the LAN host) before the stack sees it; anything
    /// else the stack answers itself (a reset for TCP it does not hold).
    fn admit(&self, packet: &[u8], conns: &mut Vec<Conn>, sockets: &mut SocketSet<'static>) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        if ip.next_header() != IpProtocol::Tcp {
            return;
        }
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return;
        };
        if !tcp.syn() || tcp.ack() {
            return;
        }
        let target = SocketAddrV4::new(ip.dst_addr(), tcp.dst_port());
        let remote = (IpAddress::Ipv4(ip.src_addr()), tcp.src_port());
        let known = conns.iter().any(|c| {
            let s = sockets.get::<tcp::Socket>(c.handle);
            c.target == target
                && (s.state() == tcp::State::Listen
                    || s.remote_endpoint().map(|e| (e.addr, e.port)) == Some(remote))
        });
        if known {
            return;
        }
        if target.ip() == &self.address || !self.allowed.iter().any(|n| n.contains(*target.ip())) {
            self.refuse(|r| r.destinations += 1);
            return;
        }
        if conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        if socket.listen(target).is_err() {
            return;
        }
        let handle = sockets.add(socket);
        let (to_host, host_rx) = mpsc::channel::<Vec<u8>>(8);
        let (host_tx, from_host) = mpsc::channel::<Up>(8);
        let task = tokio::spawn(upstream(target, host_rx, host_tx, self.wake.clone()));
        conns.push(Conn {
            handle,
            target,
            to_host: Some(to_host),
            from_host,
            pending: None,
            host_done: false,
            opened: Instant::now(),
            closed: false,
            task,
        });
    }

    /// Moves bytes between each laptop connection and its LAN twin, closes and forgets.
    fn serve_connections(&self, conns: &mut Vec<Conn>, sockets: &mut SocketSet<'static>) {
        let mut unreachable = 0;
        conns.retain_mut(|c| {
            let s = sockets.get_mut::<tcp::Socket>(c.handle);
            // Laptop → LAN host, as far as the host's task keeps up.
            while s.can_recv() {
                let Some(tx) = &c.to_host else { break };
                let Ok(permit) = tx.try_reserve() else { break };
                let mut chunk = vec![0u8; CHUNK];
                match s.recv_slice(&mut chunk) {
                    Ok(n) if n > 0 => {
                        chunk.truncate(n);
                        permit.send(chunk);
                    }
                    _ => break,
                }
            }
            let laptop_done = matches!(
                s.state(),
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
                    | tcp::State::Closed
            );
            if laptop_done && s.recv_queue() == 0 {
                c.to_host = None; // the laptop is done sending: half-close towards the host
            }
            // LAN host → laptop.
            loop {
                if let Some((data, sent)) = &mut c.pending {
                    match s.send_slice(&data[*sent..]) {
                        Ok(n) => *sent += n,
                        Err(_) => break,
                    }
                    if *sent < data.len() {
                        break;
                    }
                    c.pending = None;
                }
                match c.from_host.try_recv() {
                    Ok(Up::Data(data)) => c.pending = Some((data, 0)),
                    Ok(Up::Eof) | Err(mpsc::error::TryRecvError::Disconnected) => {
                        c.host_done = true;
                        break;
                    }
                    Ok(Up::Failed) => {
                        unreachable += 1;
                        s.abort();
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                }
            }
            if c.host_done && c.pending.is_none() && s.may_send() {
                s.close();
            }
            let idle_listener =
                s.state() == tcp::State::Listen && c.opened.elapsed() > Duration::from_secs(10);
            let gone = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if idle_listener || (gone && c.closed) {
                c.task.abort();
                sockets.remove(c.handle);
                return false;
            }
            c.closed = gone;
            true
        });
        if unreachable > 0 {
            self.refuse(|r| r.unreachable += unreachable);
        }
    }

    /// Sends what the stack wrote to the peer whose tunnel address it is for.
    async fn send_out(&self, dev: &mut Queues, peers: &mut [PeerState], out: &mut [u8]) {
        while let Some(packet) = dev.tx.pop_front() {
            self.deliver(&packet, peers, out).await;
        }
    }

    /// One IP packet to the peer whose tunnel address it is for, through WireGuard.
    async fn deliver(&self, packet: &[u8], peers: &mut [PeerState], out: &mut [u8]) {
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return;
        };
        let dst = ip.dst_addr();
        let Some(state) = peers.iter_mut().find(|s| s.peer.address == dst) else {
            return;
        };
        state.tx += packet.len() as u64;
        if let TunnResult::WriteToNetwork(datagram) = state.tunn.encapsulate(packet, out) {
            if let Some(to) = state.endpoint {
                let _ = self.udp.send_to(datagram, to).await;
            }
        }
    }

    fn refuse(&self, count: impl FnOnce(&mut Refused)) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        count(&mut shared.refused);
    }

    fn publish_status(&self, peers: &[PeerState], connections: usize) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.connections = connections;
        shared.status = peers
            .iter()
            .map(|s| {
                let (since, ..) = s.tunn.stats();
                (
                    s.peer.name.clone(),
                    PeerStatus {
                        endpoint: s.endpoint.map(|e| e.to_string()),
                        last_handshake_s: since.map(|d| d.as_secs()),
                        rx_bytes: s.rx,
                        tx_bytes: s.tx,
                    },
                )
            })
            .collect();
    }
}

/// An unconnected socket for flow `key`: UDP, or for a ping an ICMP datagram socket (whose
/// `send` takes an ICMP message and whose `recv` gives one, without the IP header).
fn flow_socket(key: FlowKey) -> std::io::Result<std::net::UdpSocket> {
    if !key.ping {
        return std::net::UdpSocket::bind(("0.0.0.0", 0));
    }
    // SAFETY: plain socket(2); the descriptor is owned by the returned socket alone.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh datagram socket nothing else owns; std's UDP socket only sends,
    // receives and connects on it, which an ICMP datagram socket supports.
    Ok(unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn by_index(peers: &[PeerState], receiver_idx: u32) -> Option<usize> {
    peers.iter().position(|s| s.tunn_index == receiver_idx >> 8)
}

/// The connection from the service to the LAN host, relayed both ways through channels.
async fn upstream(
    target: SocketAddrV4,
    mut to_host: mpsc::Receiver<Vec<u8>>,
    from_host: mpsc::Sender<Up>,
    wake: Arc<Notify>,
) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        _ => {
            let _ = from_host.send(Up::Failed).await;
            wake.notify_one();
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = from_host.send(Up::Eof).await;
                    wake.notify_one();
                    return;
                }
                Ok(n) => {
                    if from_host.send(Up::Data(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                    wake.notify_one();
                }
            }
        }
    };
    let up = async {
        while let Some(chunk) = to_host.recv().await {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            wake.notify_one(); // room again: the data plane may take more from the laptop
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(down, up);
}
