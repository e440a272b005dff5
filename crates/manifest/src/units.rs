//! Units a manifest writes as strings: sizes ("32MiB"), bandwidths ("5Mbit") and durations ("5s").

// `is_multiple_of` needs Rust 1.87 and the workspace supports 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::time::Duration;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Parses a size in bytes: "512", "32KiB", "32KB" (powers of 1000) or "32K" (same as KiB).
/// The error is the reason alone; the caller adds the field.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text, "a size like \"32MiB\"")?;
    let factor = match unit {
        "" | "B" => 1,
        "K" | "k" | "KiB" => KIB,
        "M" | "MiB" => MIB,
        "G" | "GiB" => GIB,
        "T" | "TiB" => TIB,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit `{unit}` in {text:?}; use B, KiB, MiB, GiB, TiB \
                 (K, M, G, T mean the same) or KB, MB, GB, TB (powers of 1000)"
            ))
        }
    };
    scale(number, factor, text)
}

/// Parses a bandwidth in bits per second: "100bit", "500kbit", "5Mbit", "1Gbit", or the same with
/// "bps" ("5Mbps" is 5 megabits, not megabytes). A bare number is bits per second.
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text, "a bandwidth like \"5Mbit\"")?;
    let factor = match unit {
        "" | "bit" | "bps" => 1,
        "kbit" | "Kbit" | "kbps" | "Kbps" => 1_000,
        "Mbit" | "Mbps" => 1_000_000,
        "Gbit" | "Gbps" => 1_000_000_000,
        _ => {
            return Err(format!(
                "unknown bandwidth unit `{unit}` in {text:?}; use bit, kbit, Mbit or Gbit \
                 (bps, kbps, Mbps, Gbps also mean bits per second)"
            ))
        }
    };
    scale(number, factor, text)
}

/// Parses a duration: "500ms", "5s", "2m" or "1h".
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text, "a duration like \"5s\"")?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "{text:?} has no unit; write it like \"{number}s\" (ms, s, m or h)"
            ))
        }
        _ => {
            return Err(format!(
                "unknown duration unit `{unit}` in {text:?}; use ms, s, m or h"
            ))
        }
    };
    Ok(Duration::from_millis(scale(number, millis_per_unit, text)?))
}

/// Splits "32 MiB" into (32, "MiB"). Only whole numbers are accepted: fractions of a unit are
/// written in the smaller unit ("1536MiB"), which keeps the arithmetic exact.
fn split_number<'a>(text: &'a str, example: &str) -> Result<(u64, &'a str), String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("empty string; write {example}"));
    }
    if trimmed.starts_with('-') {
        return Err(format!("{text:?} is negative; write {example}"));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} does not start with a number; write {example}"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?} is not a whole number; use a smaller unit instead of a fraction"
        ));
    }
    let number = digits
        .parse::<u64>()
        .map_err(|_| format!("{text:?} is too large"))?;
    Ok((number, unit.trim_start()))
}

fn scale(number: u64, factor: u64, text: &str) -> Result<u64, String> {
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a byte count for people: "32 MiB", "1 GB", "1000 bytes".
pub fn format_bytes(bytes: u64) -> String {
    let units = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    let decimal = [
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "KB"),
    ];
    for (factor, name) in units.into_iter().chain(decimal) {
        if bytes != 0 && bytes % factor == 0 {
            return format!("{} {name}", bytes / factor);
        }
    }
    format!("{bytes} bytes")
}

/// Formats a bandwidth in bits per second for people: "5 Mbit/s".
pub fn format_bits(bits: u64) -> String {
    for (factor, name) in [
        (1_000_000_000, "Gbit"),
        (1_000_000, "Mbit"),
        (1_000, "kbit"),
    ] {
        if bits != 0 && bits % factor == 0 {
            return format!("{} {name}/s", bits / factor);
        }
    }
    format!("{bits} bit/s")
}

/// Formats a duration the way a manifest writes it: "500ms", "5s", "2m", "1h". The result parses
/// back to the same value whenever it is a whole number of milliseconds.
pub fn format_duration(duration: Duration) -> String {
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return format!("{}ns", duration.as_nanos());
    }
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    for (factor, name) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s")] {
        if millis % factor == 0 {
            return format!("{}{name}", millis / factor);
        }
    }
    format!("{millis}ms")
}

pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_form() {
        let cases = [
            ("512", 512),
            ("0", 0),
            ("512B", 512),
            ("32KiB", 32 * KIB),
            ("32K", 32 * KIB),
            ("32k", 32 * KIB),
            ("32MiB", 32 * MIB),
            ("32M", 32 * MIB),
            ("32 MiB", 32 * MIB),
            ("2GiB", 2 * GIB),
            ("2G", 2 * GIB),
            ("1TiB", TIB),
            ("32KB", 32_000),
            ("32kB", 32_000),
            ("32MB", 32_000_000),
            ("32GB", 32_000_000_000),
            ("1TB", 1_000_000_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bandwidths_in_every_form() {
        let cases = [
            ("100bit", 100),
            ("100", 100),
            ("100bps", 100),
            ("500kbit", 500_000),
            ("500Kbit", 500_000),
            ("500kbps", 500_000),
            ("5Mbit", 5_000_000),
            ("5Mbps", 5_000_000),
            ("1Gbit", 1_000_000_000),
            ("1Gbps", 1_000_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bandwidth(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_in_every_form() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_values_are_refused_with_the_reason() {
        type Parser = fn(&str) -> Result<u64, String>;
        let refused: [(Parser, &str, &str); 12] = [
            (parse_size, "", "empty"),
            (parse_size, "  ", "empty"),
            (parse_size, "-5MiB", "negative"),
            (parse_size, "32XB", "unknown size unit `XB`"),
            (parse_size, "MiB", "does not start with a number"),
            (parse_size, "1.5GiB", "not a whole number"),
            (parse_size, "99999999999999999999", "too large"),
            (parse_size, "17179869184GiB", "too large"),
            (parse_bandwidth, "5MB", "unknown bandwidth unit `MB`"),
            (parse_bandwidth, "5mbps", "unknown bandwidth unit `mbps`"),
            (parse_bandwidth, "", "empty"),
            (parse_bandwidth, "-1Mbit", "negative"),
        ];
        for (parse, text, reason) in refused {
            let err = parse(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
        }
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5d")
            .unwrap_err()
            .contains("unknown duration unit `d`"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("99999999999999999999h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn formats_read_like_the_manifest() {
        assert_eq!(format_bytes(32 * MIB), "32 MiB");
        assert_eq!(format_bytes(1_000_000), "1 MB");
        assert_eq!(format_bytes(1000 + 1), "1001 bytes");
        assert_eq!(format_bytes(0), "0 bytes");
        assert_eq!(format_bits(5_000_000), "5 Mbit/s");
        assert_eq!(format_bits(1500), "1500 bit/s");
        for text in ["500ms", "5s", "2m", "1h", "0s", "1500ms", "90s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
