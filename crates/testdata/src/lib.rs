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

/// A TCP port free on the loopback right now (the kernel's pick), for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback has a free port")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_at_every_run_and_not_constant() {
        let a = super::scrambled(4096);
        assert_eq!(a, super::scrambled(4096));
        assert_eq!(&super::scrambled(10)[..], &a[..10]);
        let distinct: std::collections::BTreeSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
