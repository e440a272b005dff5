//! The way out of a refusal: the fewest lower-priority services whose stopping makes room.

use std::cmp::Ordering;

use crate::admit::{sum, Holder, Request, Violation};
use crate::amounts::Resource;

/// Most candidates searched exhaustively (2^16 subsets); beyond that only the lowest-priority
/// ones are, and a greedy pass covers the rest.
const EXHAUSTIVE: usize = 16;

/// The names, lowest priority first, of the smallest set of holders with priority strictly
/// below the request's whose stopping clears every violation; None when stopping all of them
/// would not.
///
/// Smallest means fewest services; ties go to the lowest total priority, then the least total
/// reserved of the short resources, then the names.
pub(crate) fn propose(
    holders: &[Holder],
    req: &Request,
    violations: &[Violation],
) -> Option<Vec<String>> {
    let search = Search::new(holders, req, violations);
    if !search.fits(search.candidates.iter().map(|c| c.holder)) {
        return None;
    }
    let chosen = search.exhaustive().unwrap_or_else(|| search.greedy());
    let mut chosen: Vec<&Holder> = chosen.into_iter().map(|c| c.holder).collect();
    chosen.sort_by(|a, b| a.priority.cmp(&b.priority).then(a.name.cmp(&b.name)));
    Some(chosen.into_iter().map(|h| h.name.clone()).collect())
}

struct Candidate<'h> {
    holder: &'h Holder,
    /// Total reserved of the short resources: the third tie-break, and "largest holding".
    weight: u128,
}

struct Search<'h, 'v> {
    /// Lowest priority first, then largest holding, then name.
    candidates: Vec<Candidate<'h>>,
    violations: &'v [Violation<'v>],
}

impl<'h, 'v> Search<'h, 'v> {
    fn new(holders: &'h [Holder], req: &Request, violations: &'v [Violation<'v>]) -> Self {
        let short: Vec<Resource> = Resource::ALL
            .into_iter()
            .filter(|r| violations.iter().any(|v| v.resource == *r))
            .collect();
        let mut candidates: Vec<Candidate> = holders
            .iter()
            .filter(|h| h.priority < req.priority)
            .map(|holder| Candidate {
                holder,
                weight: sum(short.iter().map(|r| holder.reserved.get(*r))),
            })
            .collect();
        candidates.sort_by(|a, b| {
            a.holder
                .priority
                .cmp(&b.holder.priority)
                .then(b.weight.cmp(&a.weight))
                .then(a.holder.name.cmp(&b.holder.name))
        });
        Search {
            candidates,
            violations,
        }
    }

    /// Whether stopping `stopped` clears every violation. Stopping only lowers sums, so limits
    /// the request did not break stay unbroken.
    fn fits<'a>(&self, stopped: impl Iterator<Item = &'a Holder> + Clone) -> bool {
        self.violations
            .iter()
            .all(|v| sum(stopped.clone().map(|h| v.freed_by(h))) >= v.short)
    }

    /// The best subset of the lowest-priority candidates, smallest size first; None when no
    /// subset of them fits.
    fn exhaustive(&self) -> Option<Vec<&Candidate<'h>>> {
        let pool = &self.candidates[..self.candidates.len().min(EXHAUSTIVE)];
        let n = pool.len();
        let members = |mask: u32| {
            (0..n)
                .filter(move |i| mask & (1 << i) != 0)
                .map(|i| &pool[i])
        };
        for size in 1..=n {
            let mut best: Option<(u32, Key)> = None;
            // Every mask with `size` bits set, in increasing order (Gosper's hack).
            let mut mask: u32 = (1 << size) - 1;
            while mask < 1 << n {
                if self.fits(members(mask).map(|c| c.holder)) {
                    let key = Key::of(members(mask));
                    if best
                        .as_ref()
                        .is_none_or(|(_, b)| key.cmp(b) == Ordering::Less)
                    {
                        best = Some((mask, key));
                    }
                }
                let low = mask & mask.wrapping_neg();
                let ripple = mask + low;
                mask = (((ripple ^ mask) >> 2) / low) | ripple;
            }
            if let Some((mask, _)) = best {
                return Some(members(mask).collect());
            }
        }
        None
    }

    /// Stops candidates in order until the request fits, then drops any, latest first, that
    /// turned out not to be needed. Only called when stopping all of them fits.
    fn greedy(&self) -> Vec<&Candidate<'h>> {
        let mut chosen: Vec<&Candidate> = Vec::new();
        for c in &self.candidates {
            chosen.push(c);
            if self.fits(chosen.iter().map(|c| c.holder)) {
                break;
            }
        }
        let mut i = chosen.len();
        while i > 0 {
            i -= 1;
            let without = chosen
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, c)| c.holder);
            if self.fits(without) {
                chosen.remove(i);
            }
        }
        chosen
    }
}

/// How two equally small sets compare: lower total priority, then less reserved, then names.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Key<'h> {
    priority: i64,
    weight: u128,
    names: Vec<&'h str>,
}

impl<'h> Key<'h> {
    fn of<'a>(members: impl Iterator<Item = &'a Candidate<'h>>) -> Self
    where
        'h: 'a,
    {
        let mut key = Key {
            priority: 0,
            weight: 0,
            names: Vec::new(),
        };
        for c in members {
            key.priority += i64::from(c.holder.priority);
            key.weight += c.weight;
            key.names.push(&c.holder.name);
        }
        key.names.sort_unstable();
        key
    }
}

#[cfg(test)]
mod tests {
    use crate::admit::tests::{gateway, holder, memory, request, MIB};
    use crate::admit::{admit, Holder};
    use crate::amounts::{Amounts, Resource};

    fn proposal(
        gw_memory: u64,
        holders: &[Holder],
        priority: i32,
        want: u64,
    ) -> Option<Vec<String>> {
        admit(
            &gateway(memory(gw_memory)),
            holders,
            &request("new", priority, memory(want)),
        )
        .unwrap_err()
        .proposal
    }

    #[test]
    fn one_big_holder_beats_two_small_ones() {
        let holders = [
            holder("small1", "acme", 1, memory(30 * MIB)),
            holder("big", "acme", 4, memory(60 * MIB)),
            holder("small2", "acme", 1, memory(30 * MIB)),
        ];
        // 120 of 128 MiB held: 50 MiB more needs 42 MiB freed.
        assert_eq!(
            proposal(128 * MIB, &holders, 5, 50 * MIB),
            Some(vec!["big".to_string()])
        );
    }

    #[test]
    fn never_proposes_equal_or_higher_priority() {
        let holders = [
            holder("equal", "acme", 5, memory(100)),
            holder("higher", "acme", 9, memory(100)),
            holder("low1", "acme", 1, memory(20)),
            holder("low2", "acme", 2, memory(20)),
            holder("low3", "acme", 3, memory(20)),
        ];
        // 260 held of 300; 80 more needs 40 freed: two of the low ones.
        assert_eq!(
            proposal(300, &holders, 5, 80),
            Some(vec!["low1".to_string(), "low2".to_string()])
        );
    }

    #[test]
    fn none_when_stopping_every_lower_priority_service_is_not_enough() {
        let holders = [
            holder("equal", "acme", 5, memory(100)),
            holder("low", "acme", 1, memory(20)),
        ];
        assert_eq!(proposal(150, &holders, 5, 60), None);
        // Nothing of lower priority at all.
        assert_eq!(proposal(150, &holders, 0, 40), None);
        // More than the whole gateway.
        assert_eq!(proposal(150, &[], 9, 151), None);
    }

    #[test]
    fn ties_go_to_lower_priority_then_less_reserved_then_name() {
        let holders = [
            holder("b", "acme", 2, memory(50)),
            holder("a", "acme", 2, memory(50)),
            holder("c", "acme", 1, memory(60)),
            holder("d", "acme", 1, memory(50)),
        ];
        // 210 held of 250: 50 more needs 10 freed; any one will do.
        assert_eq!(proposal(250, &holders, 5, 50), Some(vec!["d".to_string()]));
        let holders = [
            holder("b", "acme", 2, memory(50)),
            holder("a", "acme", 2, memory(50)),
        ];
        assert_eq!(proposal(100, &holders, 5, 10), Some(vec!["a".to_string()]));
    }

    #[test]
    fn every_short_resource_must_fit() {
        let gw = gateway(Amounts::splat(100));
        let cpu = Amounts {
            cpu: 60,
            ..Amounts::ZERO
        };
        let holders = [
            holder("mem", "acme", 1, memory(60)),
            holder("cpu", "acme", 1, cpu),
            holder("both", "acme", 3, Amounts::splat(30)),
        ];
        let want = Amounts {
            cpu: 50,
            memory: 50,
            ..Amounts::ZERO
        };
        let refusal = admit(&gw, &holders, &request("new", 5, want)).unwrap_err();
        let short: Vec<_> = refusal.shortages.iter().map(|s| s.resource).collect();
        assert_eq!(short, [Resource::Cpu, Resource::Memory]);
        // `both` alone frees 30 of each, but 40 of each is needed.
        assert_eq!(
            refusal.proposal,
            Some(vec!["cpu".to_string(), "mem".to_string()])
        );
    }

    #[test]
    fn beyond_sixteen_candidates_only_the_lowest_sixteen_are_searched() {
        // 40 holders of 10 each at priorities 0..40, and one of 95 at priority 50.
        let mut holders: Vec<Holder> = (0..40)
            .map(|i| holder(&format!("s{i:02}"), "acme", i, memory(10)))
            .collect();
        holders.push(holder("big", "acme", 50, memory(95)));
        let total = 40 * 10 + 95;
        // 90 must go. `big` alone would do, but it is not among the 16 lowest-priority
        // candidates, which can do it with 9: stopping unimportant services wins here.
        let got = proposal(total, &holders, 100, 90).unwrap();
        let want: Vec<String> = (0..9).map(|i| format!("s{i:02}")).collect();
        assert_eq!(got, want);
        // 300 must go, more than the 16 lowest hold: the greedy pass takes the lowest first.
        let got = proposal(total, &holders, 100, 300).unwrap();
        let want: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
        assert_eq!(got, want);
        // Everything held must go.
        let got = proposal(total, &holders, 100, 495).unwrap();
        assert_eq!(got.len(), 41);
    }
}
