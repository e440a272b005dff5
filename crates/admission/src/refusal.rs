//! A refused admission as data (for the API) and as the message a person reads.

use std::fmt;

use serde::Serialize;

use crate::admit::{sum, Holder};
use crate::amounts::Resource;

/// Holders listed per shortage in the message; the rest are summed up.
const LISTED: usize = 5;

/// Why a service cannot be admitted, and what would make room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Refusal {
    /// The service that was refused.
    pub service: String,
    /// Every limit the request breaks, by resource, the gateway before the provider's cap.
    pub shortages: Vec<Shortage>,
    /// Smallest set of lower-priority holders whose stopping makes the request fit on every
    /// short resource (gateway and provider cap), lowest priority first, if one exists.
    pub proposal: Option<Vec<String>>,
    /// What the proposal asks of those services: stopping frees CPU, memory and bandwidth;
    /// storage stays held until a service is removed.
    pub way_out: WayOut,
}

/// How the proposed services would make room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WayOut {
    #[default]
    Stop,
    Remove,
}

impl WayOut {
    fn verb(self) -> &'static str {
        match self {
            WayOut::Stop => "stop",
            WayOut::Remove => "remove",
        }
    }
}

/// One resource the request does not fit in, in one scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shortage {
    pub resource: Resource,
    pub scope: Scope,
    /// What the request reserves.
    pub needed: u64,
    /// What is left under the limit now.
    pub free: u64,
    /// What the holders in scope must give up for the request to fit. Normally
    /// `needed - free`; more when the holders are already over the limit.
    pub short: u64,
    /// The gateway's available capacity (after the system reserve) or the provider's cap.
    pub limit: u64,
    /// Those holding this resource in this scope, highest amount first.
    pub holders: Vec<Holder>,
    /// Held by services left out of `holders` because the reader may not see them (another
    /// provider's, see [`Refusal::redact_for`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub others: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Which limit a shortage is against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// The gateway's capacity less its system reserve.
    Gateway,
    /// What one provider's services may reserve together on this gateway.
    ProviderCap { provider: String },
}

impl fmt::Display for Refusal {
    /// One line per shortage, then the way out: the services to stop, or what else to change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(self, f)
    }
}

fn render(r: &Refusal, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "cannot admit `{}`:", r.service)?;
    // One shortage stays on one line; several get a line each.
    let sep = if r.shortages.len() == 1 { " " } else { "\n  " };
    for s in &r.shortages {
        write!(f, "{sep}{s}")?;
    }
    let sep = if r.shortages.len() == 1 {
        " — "
    } else {
        "\n  "
    };
    f.write_str(sep)?;
    match &r.proposal {
        Some(names) if !names.is_empty() => {
            let who = names.iter().map(|n| match r.priority_of(n) {
                Some(p) => format!("`{n}` (priority {p})"),
                None => format!("`{n}`"),
            });
            let verb = r.way_out.verb();
            let how = names.iter().map(|n| format!("`shg {verb} {n}`"));
            write!(
                f,
                "{verb} {} with {} to make room",
                and_list(who),
                and_list(how)
            )
        }
        _ => {
            let mut raise = Vec::new();
            if r.shortages.iter().any(|s| s.scope == Scope::Gateway) {
                raise.push("the gateway's capacity".to_string());
            }
            for s in &r.shortages {
                if let Scope::ProviderCap { provider } = &s.scope {
                    let cap = format!("provider `{provider}`'s cap");
                    if !raise.contains(&cap) {
                        raise.push(cap);
                    }
                }
            }
            write!(
                f,
                "no lower-priority service frees enough; lower the reservation in the manifest \
                 or raise {}",
                and_list(raise.into_iter())
            )
        }
    }
}

impl Refusal {
    /// The refusal as provider `provider` may read it: other providers' services are not
    /// named, only the amount they hold together, and a proposal that would stop any of
    /// them is dropped (a provider cannot stop them anyway).
    pub fn redact_for(&mut self, provider: &str) {
        for s in &mut self.shortages {
            let (own, others): (Vec<Holder>, Vec<Holder>) =
                s.holders.drain(..).partition(|h| h.provider == provider);
            let hidden = sum(others.iter().map(|h| h.reserved.get(s.resource)));
            s.others = s
                .others
                .saturating_add(u64::try_from(hidden).unwrap_or(u64::MAX));
            s.holders = own;
        }
        let visible = |n: &String| {
            self.shortages
                .iter()
                .any(|s| s.holders.iter().any(|h| &h.name == n))
        };
        if let Some(names) = &self.proposal {
            if !names.iter().all(visible) {
                self.proposal = None;
            }
        }
    }

    /// A holder's priority, from the shortages that list it.
    fn priority_of(&self, name: &str) -> Option<i32> {
        self.shortages
            .iter()
            .flat_map(|s| &s.holders)
            .find(|h| h.name == name)
            .map(|h| h.priority)
    }
}

impl Shortage {
    /// What the holders listed here hold of the resource, together.
    pub fn held(&self) -> u64 {
        let held = sum(self.holders.iter().map(|h| h.reserved.get(self.resource)));
        u64::try_from(held).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Shortage {
    /// "memory: needs 64 MiB, only 40 MiB free of 1.5 GiB (after the system reserve), 24 MiB
    /// short; held by `vod` (priority 5) 96 MiB, `meter` (priority 1) 8 MiB"
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.resource;
        let amount = |v: u64| r.format(v);
        write!(f, "{r}: ")?;
        match &self.scope {
            Scope::Gateway => {
                write!(f, "needs {}, ", amount(self.needed))?;
                if self.free == 0 {
                    f.write_str("none")?;
                } else {
                    write!(f, "only {}", amount(self.free))?;
                }
                write!(
                    f,
                    " free of {} (after the system reserve), {} short",
                    amount(self.limit),
                    amount(self.short)
                )?;
            }
            Scope::ProviderCap { provider } => write!(
                f,
                "provider `{provider}` may reserve {} on this gateway and holds {}; needs {}, \
                 {} over the cap",
                amount(self.limit),
                amount(self.held()),
                amount(self.needed),
                amount(self.short)
            )?,
        }
        if self.holders.is_empty() {
            if self.others > 0 {
                write!(
                    f,
                    "; held by other providers' services {}",
                    amount(self.others)
                )?;
            }
            return Ok(());
        }
        let listed = self.holders.iter().take(LISTED).map(|h| {
            format!(
                "`{}` (priority {}) {}",
                h.name,
                h.priority,
                amount(h.reserved.get(r))
            )
        });
        write!(f, "; held by {}", listed.collect::<Vec<_>>().join(", "))?;
        let rest = &self.holders[self.holders.len().min(LISTED)..];
        if !rest.is_empty() {
            let held = sum(rest.iter().map(|h| h.reserved.get(r)));
            write!(
                f,
                " and {} more with {}",
                rest.len(),
                amount(u64::try_from(held).unwrap_or(u64::MAX))
            )?;
        }
        if self.others > 0 {
            write!(f, " and other providers' services {}", amount(self.others))?;
        }
        Ok(())
    }
}

/// "a", "a and b", "a, b and c".
fn and_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::admit::tests::{gateway, holder, memory, request, MIB};
    use crate::admit::{admit, Gateway};
    use crate::amounts::Amounts;

    use super::*;

    #[test]
    fn message_names_resource_amounts_holders_and_the_command() {
        let gw = Gateway {
            capacity: memory(2048 * MIB),
            system_reserve: memory(512 * MIB),
            provider_caps: BTreeMap::new(),
        };
        let holders = [
            holder("vod", "acme", 5, memory(1000 * MIB)),
            holder("meter", "acme", 1, memory(496 * MIB)),
        ];
        let refusal = admit(&gw, &holders, &request("camera", 7, memory(64 * MIB))).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "cannot admit `camera`: memory: needs 64 MiB, only 40 MiB free of 1.5 GiB (after the \
             system reserve), 24 MiB short; held by `vod` (priority 5) 1000 MiB, `meter` \
             (priority 1) 496 MiB — stop `meter` (priority 1) with `shg stop meter` to make room"
        );
    }

    #[test]
    fn message_for_a_provider_cap() {
        let mut gw = gateway(memory(4096 * MIB));
        gw.provider_caps
            .insert("acme".to_string(), memory(256 * MIB));
        let holders = [
            holder("a", "acme", 9, memory(150 * MIB)),
            holder("b", "acme", 9, memory(50 * MIB)),
        ];
        let refusal = admit(&gw, &holders, &request("camera", 3, memory(64 * MIB))).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "cannot admit `camera`: memory: provider `acme` may reserve 256 MiB on this gateway \
             and holds 200 MiB; needs 64 MiB, 8 MiB over the cap; held by `a` (priority 9) \
             150 MiB, `b` (priority 9) 50 MiB — no lower-priority service frees enough; lower \
             the reservation in the manifest or raise provider `acme`'s cap"
        );
    }

    #[test]
    fn several_shortages_one_line_each() {
        let gw = gateway(Amounts::splat(1000));
        let holders = [
            holder("a", "acme", 1, Amounts::splat(500)),
            holder("b", "acme", 2, Amounts::splat(400)),
        ];
        let want = Amounts {
            cpu: 700,
            bandwidth_up: 700,
            ..Amounts::ZERO
        };
        let text = admit(&gw, &holders, &request("c", 5, want))
            .unwrap_err()
            .to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "cannot admit `c`:");
        assert!(
            lines[1].starts_with("  cpu: needs 0.7 cores, only 0.1 cores free"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("  bandwidth_up: needs 700 bit/s, only 100 bit/s free"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "  stop `a` (priority 1) and `b` (priority 2) with `shg stop a` and `shg stop b` to \
             make room"
        );
    }

    #[test]
    fn no_proposal_says_so() {
        let gw = gateway(memory(100));
        let holders = [holder("vip", "acme", 9, memory(80))];
        let text = admit(&gw, &holders, &request("c", 5, memory(30)))
            .unwrap_err()
            .to_string();
        assert!(
            text.ends_with(
                "held by `vip` (priority 9) 80 bytes — no lower-priority service frees enough; \
                 lower the reservation in the manifest or raise the gateway's capacity"
            ),
            "{text}"
        );
        assert!(!text.contains("shg stop"));
    }

    #[test]
    fn long_holder_lists_are_summed_up() {
        let gw = gateway(memory(100));
        let holders: Vec<Holder> = (0..8)
            .map(|i| holder(&format!("s{i}"), "acme", 9, memory(10 + i)))
            .collect();
        let text = admit(&gw, &holders, &request("c", 1, memory(30)))
            .unwrap_err()
            .to_string();
        // s7..s3 are listed; s2, s1, s0 hold 12 + 11 + 10.
        assert!(
            text.contains("`s3` (priority 9) 13 bytes and 3 more with 33 bytes"),
            "{text}"
        );
        assert!(!text.contains("`s2`"), "{text}");
    }

    #[test]
    fn a_provider_reads_no_rivals_names() {
        let gw = gateway(memory(100));
        let holders = [
            holder("vod", "vodco", 1, memory(60)),
            holder("cam2", "acme", 2, memory(30)),
        ];
        let mut refusal = admit(&gw, &holders, &request("camera", 50, memory(50))).unwrap_err();
        assert_eq!(refusal.proposal.as_deref(), Some(&["vod".to_string()][..]));
        refusal.redact_for("acme");
        let text = refusal.to_string();
        assert!(!text.contains("vod"), "{text}");
        assert!(
            text.contains(
                "held by `cam2` (priority 2) 30 bytes and other providers' services 60 bytes"
            ),
            "{text}"
        );
        assert_eq!(refusal.proposal, None, "it may not stop `vod`");
        let json = serde_json::to_string(&refusal).unwrap();
        assert!(!json.contains("vod"), "{json}");
    }
}
