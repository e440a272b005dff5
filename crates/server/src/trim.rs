//! Keeps a long-running process's resident code to what it uses (the gateway agent and the
//! fleet controller both run it).
//!
//! Most of an idle agent's memory is file pages of its own (static) binary that it touched
//! once — argument parsing, recovery, the first requests — each fault mapping 64 KiB around
//! it. Every ten seconds the process drops its mappings of its code and read-only data
//! (`MADV_DONTNEED`): the pages stay in the page cache, and what the process runs next is mapped
//! again from there by a minor fault, without a disk read. Only mappings holding no page of
//! their own are touched, so nothing but the mapping is dropped (writable data, and read-only
//! data the loader relocated, are left alone).

use std::time::Duration;

/// How often the code mappings are dropped.
const EVERY: Duration = Duration::from_secs(10);

/// The address ranges of this executable's code and read-only data that hold no page of its
/// own: `r-xp` and `r--p` mappings of the running binary whose `Anonymous` is 0 in
/// `/proc/self/smaps`. Read-only data the loader relocated (RELRO) holds private copies of
/// its pages, so it is never among them.
fn clean_ranges() -> Vec<(usize, usize)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy().into_owned();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut ranges = Vec::new();
    // The mapping being read: its range, if it is one of the binary's read-only ones.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                let perms = fields.next().unwrap_or_default();
                let path = fields.nth(3).unwrap_or_default();
                current =
                    (path == exe && (perms == "r-xp" || perms == "r--p")).then_some((start, end));
                continue;
            }
        }
        if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if fields.next() == Some("0") {
                    ranges.push(range);
                }
            }
        }
    }
    ranges
}

/// Drops this process's mappings of its code and read-only data once; returns the bytes
/// covered.
pub fn drop_code_mappings() -> usize {
    let mut covered = 0;
    for (start, end) in clean_ranges() {
        // SAFETY: the range is a private, read-only mapping of the binary holding no page of
        // its own (never written, and it cannot be written without an mprotect the agent
        // never makes): MADV_DONTNEED only removes the page table entries, and the next
        // access maps the same bytes again from the page cache.
        let done =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if done == 0 {
            covered += end - start;
        }
    }
    covered
}

/// Drops the code mappings now and then every ten seconds.
pub fn spawn() {
    tokio::spawn(async {
        loop {
            drop_code_mappings();
            tokio::time::sleep(EVERY).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pointers the loader relocates at start (they live in RELRO, read-only afterwards).
    static NAMES: [&str; 3] = ["camera", "meter", "thermostat"];

    #[test]
    fn code_and_data_are_intact_after_their_mappings_go() {
        assert!(
            !clean_ranges().is_empty(),
            "no clean mapping of the test binary"
        );
        assert!(drop_code_mappings() > 0);
        // Code runs on after its mappings went: this very function, and more.
        let sum: u64 = (1..=1000u64).map(|n| n * n).sum();
        assert_eq!(sum, 333_833_500);
        assert!(drop_code_mappings() > 0);
        assert_eq!(format!("{:?}", vec![1, 2]), "[1, 2]");
        // Relocated data was left alone: its pointers still point where the loader put them.
        assert_eq!(
            std::hint::black_box(&NAMES).join(","),
            "camera,meter,thermostat"
        );
        let shown: Box<dyn std::fmt::Display> = Box::new(42u8);
        assert_eq!(shown.to_string(), "42");
    }
}
