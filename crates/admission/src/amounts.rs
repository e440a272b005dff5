//! The five resources a service reserves, amounts of them, and how a person reads those amounts.

// `is_multiple_of` needs Rust 1.87 and the workspace supports 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::fmt;

use serde::Serialize;

/// Something a service reserves a share of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Millicores (1000 = one core).
    Cpu,
    /// Bytes of memory.
    Memory,
    /// Bytes of storage.
    Storage,
    /// Bits per second towards the gateway's clients (download).
    BandwidthDown,
    /// Bits per second from the gateway's clients (upload).
    BandwidthUp,
}

impl Resource {
    /// Every resource, in the order refusals report them.
    pub const ALL: [Resource; 5] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::Storage,
        Resource::BandwidthDown,
        Resource::BandwidthUp,
    ];

    /// The name used in messages and JSON: "cpu", "memory", "storage", "bandwidth_down",
    /// "bandwidth_up".
    pub fn name(&self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Storage => "storage",
            Resource::BandwidthDown => "bandwidth_down",
            Resource::BandwidthUp => "bandwidth_up",
        }
    }

    /// Formats an amount of this resource for people: "0.25 cores", "32 MiB", "1.5 GiB",
    /// "5 Mbit/s". The text is exact: an amount no unit shows exactly with up to three decimals
    /// is written in the smallest unit ("41943041 bytes"), so a one-byte shortage stays visible.
    pub fn format(&self, amount: u64) -> String {
        match self {
            Resource::Cpu => format_cores(amount),
            Resource::Memory | Resource::Storage => format_bytes(amount),
            Resource::BandwidthDown | Resource::BandwidthUp => format_bits(amount),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Amounts per resource: cpu in millicores, memory and storage in bytes, bandwidth in bits/s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amounts {
    pub cpu: u64,
    pub memory: u64,
    pub storage: u64,
    pub bandwidth_down: u64,
    pub bandwidth_up: u64,
}

impl Amounts {
    /// Nothing of anything.
    pub const ZERO: Amounts = Amounts::splat(0);
    /// `u64::MAX` of everything: as a provider cap, no cap at all.
    pub const UNLIMITED: Amounts = Amounts::splat(u64::MAX);

    /// The same amount of every resource.
    pub const fn splat(v: u64) -> Amounts {
        Amounts {
            cpu: v,
            memory: v,
            storage: v,
            bandwidth_down: v,
            bandwidth_up: v,
        }
    }

    /// The amount of one resource.
    pub fn get(&self, r: Resource) -> u64 {
        match r {
            Resource::Cpu => self.cpu,
            Resource::Memory => self.memory,
            Resource::Storage => self.storage,
            Resource::BandwidthDown => self.bandwidth_down,
            Resource::BandwidthUp => self.bandwidth_up,
        }
    }

    /// Sets the amount of one resource.
    pub fn set(&mut self, r: Resource, v: u64) {
        match r {
            Resource::Cpu => self.cpu = v,
            Resource::Memory => self.memory = v,
            Resource::Storage => self.storage = v,
            Resource::BandwidthDown => self.bandwidth_down = v,
            Resource::BandwidthUp => self.bandwidth_up = v,
        }
    }

    /// Sum per resource, saturating at `u64::MAX`.
    /// A copy with `r` set to `v`.
    pub fn with(mut self, r: Resource, v: u64) -> Amounts {
        self.set(r, v);
        self
    }

    pub fn add(&self, o: &Amounts) -> Amounts {
        self.zip(o, u64::saturating_add)
    }

    /// Difference per resource, saturating at 0.
    pub fn sub(&self, o: &Amounts) -> Amounts {
        self.zip(o, u64::saturating_sub)
    }

    /// True when every resource is 0.
    pub fn is_zero(&self) -> bool {
        *self == Amounts::ZERO
    }

    fn zip(&self, o: &Amounts, f: impl Fn(u64, u64) -> u64) -> Amounts {
        let mut out = Amounts::ZERO;
        for r in Resource::ALL {
            out.set(r, f(self.get(r), o.get(r)));
        }
        out
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// "0.25 cores", "1 core", "2 cores".
fn format_cores(millicores: u64) -> String {
    if millicores == 1000 {
        return "1 core".to_string();
    }
    // Thousandths of a core are always exact.
    let cores = exact(millicores, 1000).unwrap_or_else(|| millicores.to_string());
    format!("{cores} cores")
}

/// "32 MiB", "1.5 GiB", "1 GB", "41943041 bytes": the largest unit that shows the amount
/// exactly, binary before decimal at each magnitude. Decimal units only take whole numbers
/// ("1500 KB", not "1.5 MB"), as binary amounts with a decimal fraction read wrongly.
fn format_bytes(bytes: u64) -> String {
    let units = [
        (TIB, "TiB", true),
        (1_000_000_000_000, "TB", false),
        (GIB, "GiB", true),
        (1_000_000_000, "GB", false),
        (MIB, "MiB", true),
        (1_000_000, "MB", false),
        (KIB, "KiB", true),
        (1_000, "KB", false),
    ];
    for (unit, name, binary) in units {
        if bytes < unit || (!binary && bytes % unit != 0) {
            continue;
        }
        if let Some(n) = exact(bytes, unit) {
            return format!("{n} {name}");
        }
    }
    if bytes == 1 {
        "1 byte".to_string()
    } else {
        format!("{bytes} bytes")
    }
}

/// "5 Mbit/s", "1.5 Gbit/s", "300 bit/s".
fn format_bits(bits: u64) -> String {
    for (unit, name) in [
        (1_000_000_000, "Gbit"),
        (1_000_000, "Mbit"),
        (1_000, "kbit"),
    ] {
        if bits >= unit {
            if let Some(n) = exact(bits, unit) {
                return format!("{n} {name}/s");
            }
        }
    }
    format!("{bits} bit/s")
}

/// `value / unit` written with at most three decimals ("1.5", "0.25", "3"), or None when that
/// would round.
fn exact(value: u64, unit: u64) -> Option<String> {
    let whole = value / unit;
    let thousandths = u128::from(value % unit) * 1000;
    if thousandths % u128::from(unit) != 0 {
        return None;
    }
    let frac = thousandths / u128::from(unit);
    if frac == 0 {
        return Some(whole.to_string());
    }
    let text = format!("{whole}.{frac:03}");
    Some(text.trim_end_matches('0').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_cores() {
        let cpu = Resource::Cpu;
        assert_eq!(cpu.format(0), "0 cores");
        assert_eq!(cpu.format(250), "0.25 cores");
        assert_eq!(cpu.format(1), "0.001 cores");
        assert_eq!(cpu.format(1000), "1 core");
        assert_eq!(cpu.format(1500), "1.5 cores");
        assert_eq!(cpu.format(4000), "4 cores");
        assert_eq!(cpu.format(u64::MAX), "18446744073709551.615 cores");
    }

    #[test]
    fn bytes_in_the_largest_exact_unit() {
        let mem = Resource::Memory;
        assert_eq!(mem.format(0), "0 bytes");
        assert_eq!(mem.format(1), "1 byte");
        assert_eq!(mem.format(512), "512 bytes");
        assert_eq!(mem.format(32 * MIB), "32 MiB");
        assert_eq!(mem.format(1536 * MIB), "1.5 GiB");
        assert_eq!(mem.format(512 * MIB), "512 MiB");
        assert_eq!(mem.format(1_000_000_000), "1 GB");
        assert_eq!(mem.format(1_500_000), "1500 KB");
        assert_eq!(mem.format(2_000_000_000), "2 GB");
        assert_eq!(mem.format(MIB + KIB), "1025 KiB");
        assert_eq!(mem.format(40 * MIB + 1), "41943041 bytes");
        assert_eq!(Resource::Storage.format(2 * TIB), "2 TiB");
        assert_eq!(mem.format(u64::MAX), "18446744073709551615 bytes");
    }

    #[test]
    fn bandwidth_in_bits_per_second() {
        let down = Resource::BandwidthDown;
        assert_eq!(down.format(0), "0 bit/s");
        assert_eq!(down.format(300), "300 bit/s");
        assert_eq!(down.format(5_000_000), "5 Mbit/s");
        assert_eq!(down.format(1_500_000_000), "1.5 Gbit/s");
        assert_eq!(Resource::BandwidthUp.format(64_000), "64 kbit/s");
        assert_eq!(down.format(5_000_001), "5000.001 kbit/s");
    }

    #[test]
    fn get_set_cover_every_resource() {
        let mut a = Amounts::ZERO;
        for (i, r) in Resource::ALL.into_iter().enumerate() {
            a.set(r, i as u64 + 1);
        }
        for (i, r) in Resource::ALL.into_iter().enumerate() {
            assert_eq!(a.get(r), i as u64 + 1);
        }
        assert_eq!(
            a,
            Amounts {
                cpu: 1,
                memory: 2,
                storage: 3,
                bandwidth_down: 4,
                bandwidth_up: 5
            }
        );
    }

    #[test]
    fn add_and_sub_saturate() {
        let big = Amounts::UNLIMITED;
        let one = Amounts::splat(1);
        assert_eq!(big.add(&one), Amounts::UNLIMITED);
        assert_eq!(one.sub(&big), Amounts::ZERO);
        assert_eq!(big.sub(&one), Amounts::splat(u64::MAX - 1));
        assert!(one.sub(&one).is_zero());
    }
}
