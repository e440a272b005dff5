//! Hand parsers for the cgroup file formats: none allocates, none panics, and a value that does
//! not parse is `None`.

/// A v1 limit at or above this means "unlimited": the kernel reports no limit as
/// `PAGE_COUNTER_MAX` pages, 2^63 − 4096 bytes on 64-bit machines, and nobody sets a real limit
/// of 4 EiB.
const UNLIMITED: u64 = 1 << 62;

/// The number alone in a single-value file (`memory.current`, `cpuacct.usage`, …).
pub(crate) fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file's value (`memory.max`, `pids.max`, `memory.limit_in_bytes`): `None` for `max`,
/// for a value so large that it means unlimited, and for anything that does not parse.
pub(crate) fn limit(text: &str) -> Option<u64> {
    number(text).filter(|&value| value < UNLIMITED)
}

/// The values of `keys` in a flat-keyed file (one `key value` per line, as `cpu.stat`,
/// `memory.stat`, `memory.events` and `memory.oom_control`), found in one pass.
pub(crate) fn keyed<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut values = [None; N];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|&wanted| wanted == key) {
            values[i] = number(value);
        }
    }
    values
}

/// Bytes read and written, summed over devices, from v1 `blkio.throttle.io_service_bytes*`:
/// `MAJ:MIN Read N` and `MAJ:MIN Write N` lines count; `Sync`, `Async`, `Discard`, `Total` and
/// the last `Total N` line do not.
pub(crate) fn blkio_bytes(text: &str) -> [Option<u64>; 2] {
    let mut sums = [Some(0), Some(0)];
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_device), Some(operation), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match operation {
            "Read" => add(&mut sums[0], value),
            "Write" => add(&mut sums[1], value),
            _ => {}
        }
    }
    sums
}

/// Bytes read and written, summed over devices, from v2 `io.stat`: one line per device,
/// `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
pub(crate) fn io_stat_bytes(text: &str) -> [Option<u64>; 2] {
    let mut sums = [Some(0), Some(0)];
    for line in text.lines() {
        for field in line.split_ascii_whitespace().skip(1) {
            match field.split_once('=') {
                Some(("rbytes", value)) => add(&mut sums[0], value),
                Some(("wbytes", value)) => add(&mut sums[1], value),
                _ => {}
            }
        }
    }
    sums
}

/// Adds `value` to a running sum, which becomes `None` for good if `value` does not parse.
fn add(sum: &mut Option<u64>, value: &str) {
    *sum = sum
        .zip(number(value))
        .map(|(total, value)| total.saturating_add(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_limits() {
        assert_eq!(number("45522944\n"), Some(45_522_944));
        assert_eq!(number(""), None);
        assert_eq!(number("-1\n"), None);
        assert_eq!(number("12 kB"), None);
        assert_eq!(limit("max\n"), None);
        assert_eq!(limit("9223372036854771712\n"), None);
        assert_eq!(limit("67108864\n"), Some(64 << 20));
        assert_eq!(limit("100\n"), Some(100));
        assert_eq!(limit("garbage"), None);
    }

    #[test]
    fn keyed_finds_each_key_in_one_pass_and_ignores_the_rest() {
        let text = "nr_periods 10\nnr_throttled 2\nthrottled_time 3000\nnr_bursts 0\n";
        assert_eq!(
            keyed(text, ["throttled_time", "nr_periods", "missing"]),
            [Some(3000), Some(10), None]
        );
        // A prefix of a key is not the key.
        assert_eq!(keyed("total_cache 5\ncache 7\n", ["cache"]), [Some(7)]);
        assert_eq!(keyed("oom_kill x\nweird\n\n", ["oom_kill"]), [None]);
    }

    #[test]
    fn blkio_sums_read_and_write_lines_over_devices() {
        let text = "254:0 Read 8388608\n254:0 Write 4096\n254:0 Sync 8392704\n\
                    254:0 Async 0\n254:0 Discard 0\n254:0 Total 8392704\n\
                    8:0 Read 1024\n8:0 Write 0\n8:0 Total 1024\nTotal 8393728\n";
        assert_eq!(blkio_bytes(text), [Some(8_389_632), Some(4096)]);
        assert_eq!(blkio_bytes("Total 0\n"), [Some(0), Some(0)]);
        assert_eq!(blkio_bytes("8:0 Read lots\n8:0 Write 1\n"), [None, Some(1)]);
    }

    #[test]
    fn io_stat_sums_rbytes_and_wbytes_over_devices() {
        let text = "8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n\
                    254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n";
        assert_eq!(io_stat_bytes(text), [Some(5120), Some(2048)]);
        assert_eq!(io_stat_bytes(""), [Some(0), Some(0)]);
        assert_eq!(io_stat_bytes("8:0 rbytes= wbytes=7\n"), [None, Some(7)]);
    }

    #[test]
    fn sums_saturate_instead_of_overflowing() {
        let text = format!("8:0 Read {}\n8:16 Read 1\n", u64::MAX);
        assert_eq!(blkio_bytes(&text)[0], Some(u64::MAX));
    }
}
