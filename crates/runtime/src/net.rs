//! The little network set-up the runtime does itself: the container's loopback.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use command::{CommandError, Runner};

/// Brings `lo` up in the network namespace of `pid`. Moves the calling thread into that
/// namespace for good: call it only from a thread (or process) that ends soon after.
pub fn loopback_up(pid: i32) -> std::io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
    // SAFETY: socket() with constant arguments; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A service's link to the gateway bridge, made by the runtime helper between creating the
/// container and starting it, so the service's first instruction already has its network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    pub bridge: String,
    /// The veth end that stays on the bridge.
    pub host_if: String,
    /// The end moved into the service and renamed `eth0`.
    pub peer_if: String,
    pub address: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
}

impl Attach {
    /// The helper's `--net` argument: `BRIDGE,HOST_IF,PEER_IF,ADDRESS,GATEWAY`.
    pub fn to_arg(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.bridge, self.host_if, self.peer_if, self.address, self.gateway
        )
    }

    pub fn from_arg(text: &str) -> Option<Attach> {
        let parts: Vec<&str> = text.split(',').collect();
        let [bridge, host_if, peer_if, address, gateway] = parts.as_slice() else {
            return None;
        };
        Some(Attach {
            bridge: bridge.to_string(),
            host_if: host_if.to_string(),
            peer_if: peer_if.to_string(),
            address: address.parse().ok()?,
            gateway: gateway.parse().ok()?,
        })
    }
}

/// Sets up the network namespace of `pid`: its loopback, and with `attach` a veth to the
/// bridge with the service's address and default route. Moves the calling thread into that
/// namespace for good: call it only from a process that ends soon after.
pub fn setup(pid: i32, attach: Option<&Attach>) -> std::io::Result<()> {
    setup_with(&command::System, pid, attach)
}

/// [`setup`], with `ip` and `bridge` run by `runner`.
pub fn setup_with(runner: &dyn Runner, pid: i32, attach: Option<&Attach>) -> std::io::Result<()> {
    if let Some(a) = attach {
        plug(runner, pid, a).map_err(std::io::Error::other)?;
    }
    loopback_up(pid)?;
    if let Some(a) = attach {
        // Now inside the service's namespace (loopback_up moved us there).
        address(runner, a).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// From the host's side: a veth with one end on the bridge (isolated, then up) and the other
/// in the namespace of `pid`.
fn plug(runner: &dyn Runner, pid: i32, a: &Attach) -> Result<(), CommandError> {
    let ip = |args: &[&str]| runner.run("ip", args, None).map(|_| ());
    let pid_text = pid.to_string();
    // A veth left by a service that died with the agent down would block the name.
    let _ = ip(&["link", "del", &a.host_if]);
    ip(&[
        "link", "add", &a.host_if, "type", "veth", "peer", "name", &a.peer_if, "netns", &pid_text,
    ])?;
    ip(&["link", "set", &a.host_if, "master", &a.bridge])?;
    // Isolated before it is up: not one frame may pass between two services at layer 2.
    if let Err(e) = runner.run(
        "bridge",
        &["link", "set", "dev", &a.host_if, "isolated", "on"],
        None,
    ) {
        let _ = ip(&["link", "del", &a.host_if]);
        return Err(e);
    }
    ip(&["link", "set", &a.host_if, "up"])
}

/// From inside the service's namespace: the peer becomes `eth0`, with the service's address
/// and the gateway as its default route, in one `ip -batch`.
fn address(runner: &dyn Runner, a: &Attach) -> Result<(), CommandError> {
    let script = format!(
        "link set {peer} name eth0\naddr add {addr}/24 dev eth0\nlink set eth0 up\nroute add default via {gw}\n",
        peer = a.peer_if,
        addr = a.address,
        gw = a.gateway
    );
    runner
        .run("ip", &["-batch", "-"], Some(&script))
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use command::Recorder;

    fn attach() -> Attach {
        Attach {
            bridge: "shgb0000beef".into(),
            host_if: "shv0000beef3".into(),
            peer_if: "shp0000beef3".into(),
            address: "10.77.0.3".parse().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn the_veth_is_isolated_on_the_bridge_before_it_is_up() {
        let fake = Recorder::new();
        plug(&fake, 4242, &attach()).unwrap();
        assert_eq!(
            fake.lines(),
            [
                "ip link del shv0000beef3",
                "ip link add shv0000beef3 type veth peer name shp0000beef3 netns 4242",
                "ip link set shv0000beef3 master shgb0000beef",
                "bridge link set dev shv0000beef3 isolated on",
                "ip link set shv0000beef3 up",
            ]
        );
    }

    #[test]
    fn a_veth_that_cannot_be_isolated_is_taken_away() {
        let fake = Recorder::new();
        fake.fail(
            "bridge link set",
            "RTNETLINK answers: Operation not supported",
        );
        let err = plug(&fake, 4242, &attach()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`bridge link set dev shv0000beef3 isolated on` failed: RTNETLINK answers: Operation not supported"
        );
        let lines = fake.lines();
        assert_eq!(lines.last().unwrap(), "ip link del shv0000beef3");
        assert!(
            !lines.iter().any(|l| l.ends_with(" up")),
            "never up: {lines:#?}"
        );
    }

    #[test]
    fn inside_the_peer_becomes_eth0_with_the_address_and_route() {
        let fake = Recorder::new();
        address(&fake, &attach()).unwrap();
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].line(), "ip -batch -");
        assert_eq!(
            calls[0].stdin.as_deref(),
            Some("link set shp0000beef3 name eth0\naddr add 10.77.0.3/24 dev eth0\nlink set eth0 up\nroute add default via 10.77.0.1\n")
        );
    }

    #[test]
    fn attach_survives_the_helper_argument() {
        let a = Attach {
            bridge: "shgb0000beef".into(),
            host_if: "shv0000beef3".into(),
            peer_if: "shp0000beef3".into(),
            address: "10.77.0.3".parse().unwrap(),
            gateway: "10.77.0.1".parse().unwrap(),
        };
        assert_eq!(Attach::from_arg(&a.to_arg()), Some(a));
        assert_eq!(Attach::from_arg("a,b,c"), None);
        assert_eq!(Attach::from_arg("a,b,c,not-an-address,10.0.0.1"), None);
    }
}
