//! Test data for the tests and benches of the workspace (a dev-dependency only).

/// `len` bytes that compress badly (xorshift64), the same at every run: a video title, a file
/// to move through a tunnel, anything whose every byte a test compares.
pub fn scrambled(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A loopback port, free for TCP and UDP right now, for a server a test starts and that binds
/// it a moment later.
///
/// The kernel's own pick (`bind` to port 0) comes from the ephemeral range, the same range it
/// takes a client connection's local port from: any connection opened between the pick and the
/// server's bind could take it ("Address already in use", seen in CI). So the port comes from
/// below that range (20000 up to `ip_local_port_range`'s first port), where only explicit binds
/// land, and no two calls in one process return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, span) = (20000u32, first_ephemeral.saturating_sub(20000).max(1000));
    // Test binaries of one run start one after the other; their PIDs differ, so does their start.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!(
        "no free port on the loopback between {low} and {}",
        low + span
    )
}

/// Hands `files` to the program `cmd` runs at descriptors 3, 4, 5…, as a container runtime
/// hands a service's init its two log segments and its status file (`runc run --preserve-fds
/// 3`). The files must stay open until the program has started.
pub fn hand_over_from_3(cmd: &mut std::process::Command, files: &[&std::fs::File]) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: only fcntl and dup2 between fork and exec, on descriptors this process owns;
    // each is first copied above the targets, so no target overwrites a source still needed.
    unsafe {
        cmd.pre_exec(move || {
            let high: Vec<i32> = fds
                .iter()
                .map(|&fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100))
                .collect();
            for (i, fd) in high.iter().enumerate() {
                if *fd < 0 || libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| super::free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        let first_ephemeral: u16 =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
        if first_ephemeral >= 21000 {
            assert!(
                ports.iter().all(|p| (20000..first_ephemeral).contains(p)),
                "{ports:?}"
            );
        }
        for p in ports {
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("still free");
        }
    }

    #[test]
    fn the_same_at_every_run_and_not_constant() {
        let a = super::scrambled(4096);
        assert_eq!(a, super::scrambled(4096));
        assert_eq!(&super::scrambled(10)[..], &a[..10]);
        let distinct: std::collections::BTreeSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
