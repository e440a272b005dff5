//! How much disk a layer takes unpacked, counted from its tar headers, and the budget an unpack is held to.
//!
//! One count serves both sides: [`measure`] runs it over a layer's headers without writing
//! anything, and the unpacker runs the same count over the same headers, entry by entry,
//! *before* it writes each entry, refusing the entry that would take the layers past their
//! [`Budget`]. A verified blob always yields the same headers, so a budget equal to what
//! [`measure`] said lets the unpack through, and one byte less stops it.
//!
//! The count is meant to be an upper bound of the disk the unpacked layer takes on a
//! file system with 4 KiB blocks: every regular file costs its size rounded up to whole
//! blocks, every other entry (directory, symlink, hard link, fifo, whiteout) one block, and
//! at least one block each, so a million empty files cost 4 GiB, not nothing. A directory
//! that only an entry's path implies (`a/b/c` with no `a/` entry) is made by the unpacker,
//! so it costs its block too; each directory path is counted once, and the layer's root
//! one block.
//!
//! The size of a file is what reading its entry yields (`tar::Entry::size`), not the raw
//! size field: a pax `size` record overrides the field, and a GNU sparse file yields its
//! full length (holes included, which the unpacker writes as zeros) from a tiny payload.
//! The unpacker copies no more than that size and refuses an entry that yields more.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;

use crate::error::EntryProblem;
use crate::unpack::{self, Source};
use crate::{ImageError, Layer, Package};

/// The block every count is made of: 4 KiB, the block size of ext4 and xfs.
pub const BLOCK: u64 = 4096;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What one layer takes unpacked, counted from its tar headers by [`measure_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSize {
    /// Digest of the (compressed) blob, `sha256:…`, as in [`Layer::digest`].
    pub digest: String,
    /// Digest of the uncompressed tar, `sha256:…`: the key of the layer in the layer store
    /// ([`crate::LayerStore::layers`]) and the one to count shared layers by.
    pub diff_id: String,
    /// Bytes of disk the layer takes unpacked, in whole [`BLOCK`]s (see the module docs).
    /// When [`complete`](Self::complete) is false, counting stopped once it passed the
    /// ceiling given to [`measure_layer`]: the layer takes at least this much.
    pub bytes: u64,
    /// What the layer's regular files hold, in bytes (sparse files at their full length).
    pub file_bytes: u64,
    /// Entries counted, directories its paths only imply included.
    pub entries: u64,
    /// Whether every header was read (false: stopped above the ceiling).
    pub complete: bool,
}

/// Whose limit an unpack is held to. Refusals name it and the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowance {
    /// The storage the service reserves (`resources.storage.reserve`), in bytes.
    Storage { service: String, reserve: u64 },
    /// The image allowance the operator gave the provider, in bytes.
    Provider { provider: String, allowance: u64 },
}

impl Allowance {
    /// The whole allowance in bytes.
    pub fn bytes(&self) -> u64 {
        match self {
            Allowance::Storage { reserve, .. } => *reserve,
            Allowance::Provider { allowance, .. } => *allowance,
        }
    }

    /// What to do about a refusal.
    pub fn way_out(&self) -> &'static str {
        match self {
            Allowance::Storage { .. } => {
                "raise `resources.storage` in shg-service.toml or ask the operator for a larger \
                 image allowance"
            }
            Allowance::Provider { .. } => {
                "ask the operator for a larger image allowance, or remove services of the \
                 provider whose layers no other service shares"
            }
        }
    }
}

impl fmt::Display for Allowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowance::Storage { service, reserve } => {
                write!(f, "{} of storage `{service}` reserves", human(*reserve))
            }
            Allowance::Provider {
                provider,
                allowance,
            } => write!(
                f,
                "{} image allowance of provider `{provider}`",
                human(*allowance)
            ),
        }
    }
}

/// How many bytes the layers one call unpacks may take together, as [`measure`] counts them.
///
/// `bytes` is usually what is left of the allowance once the layers the caller already
/// charges to it are counted; layers already in the layer store cost nothing here, as
/// they are not written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Bytes the layers written by one call may take together.
    pub bytes: u64,
    /// What `bytes` is (part of); named in refusals.
    pub allowance: Allowance,
}

impl Budget {
    /// A budget of the whole allowance.
    pub fn whole(allowance: Allowance) -> Budget {
        Budget {
            bytes: allowance.bytes(),
            allowance,
        }
    }

    /// Check measured layers before anything is written: the layers of `sizes` whose
    /// diff_id is not in `held` (already charged, or already in the store), each distinct
    /// layer once, must fit in the budget. Returns the bytes they take.
    ///
    /// Measure with no ceiling, or one no lower than what is left of the budget for the
    /// layer: a count that stopped above it is then over the budget, and is refused with
    /// the size it reached, as "at least". (A count stopped below the budget that fits is
    /// let through: the unpack, held to the same budget, still stops the layer.)
    pub fn check(&self, sizes: &[LayerSize], held: &BTreeSet<String>) -> Result<u64, ImageError> {
        let mut seen = BTreeSet::new();
        let mut total: u64 = 0;
        let mut partial = false;
        let mut new = Vec::new();
        for s in sizes {
            if held.contains(&s.diff_id) || !seen.insert(&s.diff_id) {
                continue;
            }
            total = total.saturating_add(s.bytes);
            partial |= !s.complete;
            new.push(s);
        }
        if total <= self.bytes {
            return Ok(total);
        }
        let what = match &new[..] {
            [one] => format!("layer {}", one.digest),
            many => {
                let each: Vec<String> = many
                    .iter()
                    .map(|s| format!("{} {}", s.digest, human(s.bytes)))
                    .collect();
                // Which layers count is the caller's rule (all of a service's, or those its
                // provider does not hold yet): "counted" fits both.
                format!("the {} layers counted ({})", many.len(), each.join(", "))
            }
        };
        Err(ImageError::OverAllowance {
            what,
            size: total,
            at_least: partial,
            limit: self.bytes,
            allowance: self.allowance.clone(),
        })
    }
}

/// Measure every layer of `pkg`, in order, from its tar headers: nothing is written, and
/// no file's data is kept (but a gzip stream must be inflated to reach the headers behind
/// each file; see [`measure_layer`]).
pub fn measure(pkg: &Package) -> Result<Vec<LayerSize>, ImageError> {
    pkg.layers.iter().map(|l| measure_layer(l, None)).collect()
}

/// Measure one verified layer from its tar headers, writing nothing.
///
/// With `stop_above`, counting stops as soon as the count passes it: the result then has
/// `complete: false` and a `bytes` above the ceiling, and the work done is bounded by the
/// ceiling rather than by the layer (a gzip stream has no index: every byte before a header
/// is inflated to reach it, but a header declaring 3000 MiB stops the count at once).
///
/// Refuses, with the unpacker's errors, a path it would refuse (`..` in it, or an empty
/// one that is not a directory) and a blob whose size is not its declared one. Does not
/// check the `diff_id`, nor any other rule on entries: the unpack does, as it reads every
/// byte.
pub fn measure_layer(layer: &Layer, stop_above: Option<u64>) -> Result<LayerSize, ImageError> {
    let src = Source::layer(layer);
    let stream = unpack::layer_stream(&src)?;
    let read_err = |source| ImageError::LayerRead {
        layer: layer.digest.clone(),
        source,
    };
    let mut tally = Tally::new();
    let mut archive = tar::Archive::new(stream);
    let mut complete = true;
    for entry in archive.entries().map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        tally
            .charge(&entry)
            .map_err(|problem| unpack::entry_error(&layer.digest, &entry, problem))?;
        if stop_above.is_some_and(|ceiling| tally.bytes > ceiling) {
            complete = false;
            break;
        }
    }
    Ok(LayerSize {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        bytes: tally.bytes,
        file_bytes: tally.file_bytes,
        entries: tally.entries,
        complete,
    })
}

/// The count of one layer, entry by entry. Shared by [`measure_layer`] and the unpacker.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Directories counted, as a tree: (parent node, name) → node; the root is node 0.
    /// Linear in the names' length, where a set of whole paths would be quadratic in a
    /// deep path's depth.
    dirs: HashMap<(u64, OsString), u64>,
    pub bytes: u64,
    pub file_bytes: u64,
    pub entries: u64,
}

impl Tally {
    /// A count that has the layer's root directory, a block, and nothing else: the layer
    /// store makes it for every layer.
    pub fn new() -> Tally {
        Tally {
            dirs: HashMap::new(),
            bytes: BLOCK,
            file_bytes: 0,
            entries: 0,
        }
    }

    /// Count one entry from its header; returns what it adds. Mirrors what the unpacker
    /// makes of it: the parent directories every entry's walk creates, then the entry.
    pub fn charge<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<u64, EntryProblem> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            return Ok(0);
        }
        let comps = unpack::components(&entry.path_bytes())?;
        let Some((name, parents)) = comps.split_last() else {
            return if kind.is_dir() {
                Ok(0)
            } else {
                Err(EntryProblem::EmptyPath)
            };
        };
        let before = self.bytes;
        let parent = self.dirs_of(parents);
        let whiteout = name.as_bytes().starts_with(unpack::WHITEOUT);
        if kind.is_dir() && !whiteout {
            self.dir(parent, name);
        } else {
            let data = match kind {
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse if !whiteout => {
                    entry.size()
                }
                _ => 0,
            };
            self.file_bytes = self.file_bytes.saturating_add(data);
            self.add(blocks(data));
        }
        Ok(self.bytes - before)
    }

    /// Count the directories `comps` names, each path once; returns the last one's node.
    fn dirs_of(&mut self, comps: &[OsString]) -> u64 {
        comps.iter().fold(0, |parent, c| self.dir(parent, c))
    }

    fn dir(&mut self, parent: u64, name: &OsString) -> u64 {
        let next = self.dirs.len() as u64 + 1;
        // Only a directory not counted before costs a block.
        let key = (parent, name.clone());
        if let Some(node) = self.dirs.get(&key) {
            return *node;
        }
        self.dirs.insert(key, next);
        self.add(BLOCK);
        next
    }

    fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.entries += 1;
    }
}

/// `bytes` in whole blocks, at least one.
fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

/// What an unpack has spent of its [`Budget`], across the layers of one call.
#[derive(Debug)]
pub(crate) struct Meter<'a> {
    budget: &'a Budget,
    spent: u64,
}

impl<'a> Meter<'a> {
    pub fn new(budget: &'a Budget) -> Self {
        Meter { budget, spent: 0 }
    }

    /// What is left for the next layer.
    pub fn left(&self) -> u64 {
        self.budget.bytes.saturating_sub(self.spent)
    }

    /// Spend `cost`, the part of a layer's count (`layer_bytes` so far) its next entry adds,
    /// before that entry is written. Refused, with nothing spent, when it does not fit in
    /// what the layers before left.
    pub fn spend(&mut self, label: &str, layer_bytes: u64, cost: u64) -> Result<(), ImageError> {
        let left = self.left();
        if cost > left {
            return Err(ImageError::OverAllowance {
                what: format!("layer {label}"),
                size: layer_bytes,
                at_least: true,
                // What was left when this layer began: its earlier entries are spent.
                limit: left.saturating_add(layer_bytes.saturating_sub(cost)),
                allowance: self.budget.allowance.clone(),
            });
        }
        self.spent += cost;
        Ok(())
    }
}

/// A size as people read it: `3000 MiB`, `1.5 MiB`, `12 KiB`, `100 bytes`; one decimal
/// below 10 of the unit, whole units above (the exact bytes are in the error's fields).
pub(crate) fn human(bytes: u64) -> String {
    let (unit, name) = match bytes {
        b if b >= 10 * GIB => (GIB, "GiB"),
        b if b >= MIB => (MIB, "MiB"),
        b if b >= KIB => (KIB, "KiB"),
        b => return format!("{b} bytes"),
    };
    let n = bytes as f64 / unit as f64;
    // Units are powers of two: a whole number of them has no bits below the unit's.
    if bytes & (unit - 1) == 0 || n >= 10.0 {
        format!("{n:.0} {name}")
    } else {
        format!("{n:.1} {name}")
    }
}

/// The message of [`ImageError::OverAllowance`].
pub(crate) fn over_allowance(
    what: &str,
    size: u64,
    at_least: bool,
    limit: u64,
    allowance: &Allowance,
) -> String {
    let (s, l) = size_and_limit(size, limit);
    let at_least = if at_least { "at least " } else { "" };
    let of = match limit.cmp(&allowance.bytes()) {
        std::cmp::Ordering::Equal => format!("the {allowance}"),
        std::cmp::Ordering::Less => format!("the {l} left of the {allowance}"),
        std::cmp::Ordering::Greater => format!("the {l} budget for the {allowance}"),
    };
    // `what` is one layer or several (see `Budget::check`).
    let verb = if what.starts_with("layer ") {
        "unpacks"
    } else {
        "unpack"
    };
    format!(
        "{what} {verb} to {at_least}{s}, more than {of}; {}",
        allowance.way_out()
    )
}

/// The size and the limit of a refusal, in bytes too where the short forms would read alike.
pub(crate) fn size_and_limit(size: u64, limit: u64) -> (String, String) {
    let (s, l) = (human(size), human(limit));
    if s == l {
        (
            format!("{s} ({size} bytes)"),
            format!("{l} ({limit} bytes)"),
        )
    } else {
        (s, l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_up_with_one_at_least() {
        assert_eq!(blocks(0), BLOCK);
        assert_eq!(blocks(1), BLOCK);
        assert_eq!(blocks(BLOCK), BLOCK);
        assert_eq!(blocks(BLOCK + 1), 2 * BLOCK);
        assert_eq!(
            blocks(u64::MAX),
            u64::MAX.div_ceil(BLOCK).saturating_mul(BLOCK)
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(3000 * MIB), "3000 MiB");
        assert_eq!(human(16 * MIB), "16 MiB");
        assert_eq!(human(16 * GIB), "16 GiB");
        assert_eq!(human(3000 * MIB + 2 * BLOCK), "3000 MiB");
        assert_eq!(human(MIB + MIB / 2), "1.5 MiB");
        assert_eq!(human(12 * KIB), "12 KiB");
        assert_eq!(human(100), "100 bytes");
        assert_eq!(
            size_and_limit(16 * MIB + 1, 16 * MIB),
            (
                format!("16 MiB ({} bytes)", 16 * MIB + 1),
                format!("16 MiB ({} bytes)", 16 * MIB)
            )
        );
    }

    #[test]
    fn a_meter_refuses_past_its_budget_across_layers() {
        let budget = Budget {
            bytes: 10 * BLOCK,
            allowance: Allowance::Storage {
                service: "web".into(),
                reserve: 16 * BLOCK,
            },
        };
        let mut m = Meter::new(&budget);
        m.spend("a", 6 * BLOCK, 6 * BLOCK).unwrap();
        m.spend("b", 4 * BLOCK, 4 * BLOCK).unwrap();
        assert_eq!(m.left(), 0);
        let err = m.spend("c", BLOCK, BLOCK).unwrap_err();
        match err {
            ImageError::OverAllowance {
                size,
                limit,
                at_least,
                ..
            } => assert_eq!((size, limit, at_least), (BLOCK, 0, true)),
            other => panic!("{other}"),
        }
    }
}
