//! The host as a whole (memory and CPU time from `/proc`), and this process's own CPU time.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Nanoseconds per clock tick in `/proc`: Linux reports CPU times in `USER_HZ` = 100 ticks a
/// second, whatever the kernel's own tick rate.
const NS_PER_TICK: u64 = 10_000_000;

/// The host's memory and cumulative CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostSample {
    /// Usable RAM in bytes (`MemTotal` of `/proc/meminfo`).
    pub memory_total: u64,
    /// Bytes that can be given to new work without swapping (`MemAvailable`).
    pub memory_available: u64,
    /// Time all CPUs spent busy, in ns: user, nice, system, irq, softirq and steal from the
    /// `cpu` line of `/proc/stat` (guest time is already counted in user).
    pub cpu_busy_ns: u64,
    /// Busy time plus idle and iowait, in ns.
    pub cpu_total_ns: u64,
}

/// Reads the host's memory and CPU time from `proc_root` (normally `/proc`).
///
/// Only the head of each file is read: the three first lines of `meminfo` and the first line of
/// `stat`, whose per-CPU and interrupt lines can run to kilobytes.
pub fn host(proc_root: &Path) -> io::Result<HostSample> {
    let mut buf = [0; 1024];
    let path = proc_root.join("meminfo");
    let (memory_total, memory_available) = meminfo(read_head(&path, &mut buf)?)
        .ok_or_else(|| unparsable(&path, "MemTotal and MemAvailable lines"))?;
    let path = proc_root.join("stat");
    let (cpu_busy_ns, cpu_total_ns) = cpu_line(read_head(&path, &mut buf)?)
        .ok_or_else(|| unparsable(&path, "a first `cpu` line with at least 4 numbers"))?;
    Ok(HostSample {
        memory_total,
        memory_available,
        cpu_busy_ns,
        cpu_total_ns,
    })
}

/// This process's CPU time (user + system, all threads) in ns, from `/proc/self/stat`, so the
/// agent can measure what sampling costs it; 0 if it cannot be read.
///
/// The kernel counts it in 10 ms ticks: compare values taken some seconds apart.
pub fn self_cpu_ns() -> u64 {
    let mut buf = [0; 1024];
    read_head(Path::new("/proc/self/stat"), &mut buf)
        .ok()
        .and_then(self_stat)
        .unwrap_or(0)
}

/// `MemTotal` and `MemAvailable` in bytes from `/proc/meminfo` (`MemTotal:  16318424 kB`).
fn meminfo(text: &str) -> Option<(u64, u64)> {
    let (mut total, mut available) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let kib: u64 = value.trim().strip_suffix(" kB")?.trim().parse().ok()?;
        *slot = Some(kib.saturating_mul(1024));
    }
    total.zip(available)
}

/// Busy and total CPU time in ns from the first line of `/proc/stat`:
/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice` (in ticks; the fields
/// after `idle` are missing on very old kernels and count as 0).
fn cpu_line(text: &str) -> Option<(u64, u64)> {
    let mut fields = text
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_ascii_whitespace();
    let mut ticks = [0u64; 8];
    for (i, tick) in ticks.iter_mut().enumerate() {
        match fields.next() {
            Some(field) => *tick = field.parse().ok()?,
            None if i >= 4 => break,
            None => return None,
        }
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks;
    let busy = [user, nice, system, irq, softirq, steal]
        .into_iter()
        .fold(0u64, u64::saturating_add);
    let total = busy.saturating_add(idle).saturating_add(iowait);
    Some((
        busy.saturating_mul(NS_PER_TICK),
        total.saturating_mul(NS_PER_TICK),
    ))
}

/// utime + stime in ns from `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself hold spaces and `)`, so fields are counted from the last `)`: utime and
/// stime are fields 14 and 15, the 12th and 13th after it.
fn self_stat(text: &str) -> Option<u64> {
    let (_, after_name) = text.rsplit_once(')')?;
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime).saturating_mul(NS_PER_TICK))
}

/// Reads the head of `path` into `buf`: the whole file if it fits, else the complete lines
/// that fit.
fn read_head<'b>(path: &Path, buf: &'b mut [u8]) -> io::Result<&'b str> {
    let mut file = File::open(path)?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(read) => len += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    if len == buf.len() {
        len = buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |newline| newline + 1);
    }
    std::str::from_utf8(&buf[..len]).map_err(|_| unparsable(path, "UTF-8 text"))
}

/// The error for a `/proc` file that does not hold what it should.
fn unparsable(path: &Path, expected: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} does not have {expected}: is it a Linux procfs?",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_tree::write;

    const MEMINFO: &str = "MemTotal:        8126452 kB\nMemFree:          512340 kB\n\
        MemAvailable:    6234112 kB\nBuffers:          102400 kB\nCached:          4096000 kB\n";

    const STAT: &str = "cpu  845221 12 91475 5501234 3321 0 456 78 0 0\n\
        cpu0 422610 6 45737 2750617 1660 0 228 39 0 0\n\
        cpu1 422611 6 45738 2750617 1661 0 228 39 0 0\n\
        intr 123456 0 9 0 0 0 0 0 0 0 0 0 0 0 0 0\nctxt 987654\nbtime 1700000000\n";

    #[test]
    fn host_from_a_fake_proc() {
        let proc = tempfile::tempdir().unwrap();
        write(proc.path(), "meminfo", MEMINFO);
        write(proc.path(), "stat", STAT);
        let busy = 845_221 + 12 + 91_475 + 456 + 78;
        assert_eq!(
            host(proc.path()).unwrap(),
            HostSample {
                memory_total: 8_126_452 * 1024,
                memory_available: 6_234_112 * 1024,
                cpu_busy_ns: busy * NS_PER_TICK,
                cpu_total_ns: (busy + 5_501_234 + 3321) * NS_PER_TICK,
            }
        );
    }

    #[test]
    fn a_long_proc_stat_is_read_by_its_head() {
        let proc = tempfile::tempdir().unwrap();
        write(proc.path(), "meminfo", MEMINFO);
        let intr = " 0".repeat(5000);
        write(proc.path(), "stat", &format!("{STAT}intr 1{intr}\n"));
        assert!(host(proc.path()).unwrap().cpu_busy_ns > 0);
    }

    #[test]
    fn an_old_kernel_cpu_line_counts_missing_fields_as_zero() {
        assert_eq!(
            cpu_line("cpu  1 2 3 4\n"),
            Some((6 * NS_PER_TICK, 10 * NS_PER_TICK))
        );
        assert_eq!(cpu_line("cpu  1 2 3\n"), None);
        assert_eq!(cpu_line("cpu0 1 2 3 4\n"), None);
        assert_eq!(cpu_line("cpu  1 x 3 4\n"), None);
        assert_eq!(cpu_line(""), None);
    }

    #[test]
    fn meminfo_needs_both_lines() {
        assert_eq!(
            meminfo("MemTotal: 4 kB\nMemAvailable: 2 kB\n"),
            Some((4096, 2048))
        );
        assert_eq!(meminfo("MemTotal: 4 kB\n"), None);
        assert_eq!(meminfo("MemTotal: 4 MB\nMemAvailable: 2 kB\n"), None);
    }

    #[test]
    fn broken_proc_files_are_errors_naming_the_file() {
        let proc = tempfile::tempdir().unwrap();
        write(proc.path(), "meminfo", "nonsense\n");
        write(proc.path(), "stat", STAT);
        let err = host(proc.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("meminfo"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            host(empty.path()).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn self_stat_counts_fields_after_the_last_parenthesis() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 \
                    3 0 12345 1000000 200 18446744073709551615\n";
        assert_eq!(self_stat(stat), Some(300 * NS_PER_TICK));
        assert_eq!(self_stat("4242 (sh) S 1"), None);
    }

    #[test]
    fn self_cpu_time_grows_with_work() {
        let before = self_cpu_ns();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(self_cpu_ns() > before);
    }
}
