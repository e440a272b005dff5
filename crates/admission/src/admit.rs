//! The decision: does a request fit under the gateway's free capacity and its provider's cap.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::amounts::{Amounts, Resource};
use crate::proposal;
use crate::refusal::{Refusal, Scope, Shortage, WayOut};

/// What the gateway can give out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// Everything the hardware has.
    pub capacity: Amounts,
    /// Kept back for the host system and SHG itself; never reserved by a service.
    pub system_reserve: Amounts,
    /// Most a provider's services may reserve together. A provider absent from the map is
    /// uncapped; inside a cap, `u64::MAX` means that resource is uncapped.
    pub provider_caps: BTreeMap<String, Amounts>,
}

impl Gateway {
    /// What services may reserve in total: capacity minus the system reserve, saturating at 0.
    pub fn available(&self) -> Amounts {
        self.capacity.sub(&self.system_reserve)
    }

    /// The provider's cap on `r`, or None when that provider or resource is uncapped.
    pub fn cap(&self, provider: &str, r: Resource) -> Option<u64> {
        let cap = self.provider_caps.get(provider)?.get(r);
        (cap != u64::MAX).then_some(cap)
    }
}

/// A service that holds its reservation now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub name: String,
    pub provider: String,
    /// Higher is more important to the household.
    pub priority: i32,
    pub reserved: Amounts,
}

/// A service asking to hold a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub name: &'a str,
    pub provider: &'a str,
    /// Higher is more important to the household; only holders of strictly lower priority are
    /// proposed for stopping.
    pub priority: i32,
    pub reserved: Amounts,
}

/// Decides whether `req` fits beside `holders`. `holders` must not contain the requester itself
/// (the caller filters it out, so that an update is checked against everything else).
///
/// A resource fits on the gateway when the holders' sum plus the request is at most
/// [`Gateway::available`], and under the provider's cap when the sum over holders of the same
/// provider plus the request is at most the cap. A request reserving 0 of a resource never fails
/// on it, even when the holders are already over a limit (after the capacity shrank).
pub fn admit(gw: &Gateway, holders: &[Holder], req: &Request) -> Result<(), Refusal> {
    let violations = violations(gw, holders, req);
    if violations.is_empty() {
        return Ok(());
    }
    let proposal = proposal::propose(holders, req, &violations);
    Err(Refusal {
        service: req.name.to_string(),
        shortages: violations
            .iter()
            .map(|v| v.shortage(holders, req))
            .collect(),
        proposal,
        way_out: WayOut::Stop,
    })
}

/// One limit the request breaks: a resource, on the whole gateway or under a provider's cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Violation<'a> {
    pub resource: Resource,
    /// None for the gateway, the provider for its cap.
    pub provider: Option<&'a str>,
    pub limit: u64,
    /// What the holders in scope must give up for the request to fit; always > 0.
    pub short: u128,
}

impl Violation<'_> {
    /// What `h` would give back towards this limit if it stopped.
    pub fn freed_by(&self, h: &Holder) -> u64 {
        match self.provider {
            Some(p) if h.provider != p => 0,
            _ => h.reserved.get(self.resource),
        }
    }

    fn shortage(&self, holders: &[Holder], req: &Request) -> Shortage {
        let held = sum(holders.iter().map(|h| self.freed_by(h)));
        let mut holding: Vec<Holder> = holders
            .iter()
            .filter(|h| self.freed_by(h) > 0)
            .cloned()
            .collect();
        holding.sort_by(|a, b| {
            self.freed_by(b)
                .cmp(&self.freed_by(a))
                .then(a.priority.cmp(&b.priority))
                .then(a.name.cmp(&b.name))
        });
        Shortage {
            resource: self.resource,
            scope: match self.provider {
                None => Scope::Gateway,
                Some(p) => Scope::ProviderCap {
                    provider: p.to_string(),
                },
            },
            needed: req.reserved.get(self.resource),
            free: clamp(u128::from(self.limit).saturating_sub(held)),
            short: clamp(self.short),
            limit: self.limit,
            holders: holding,
            others: 0,
        }
    }
}

/// Every limit `req` breaks, by resource, the gateway before the provider's cap.
pub(crate) fn violations<'a>(
    gw: &Gateway,
    holders: &[Holder],
    req: &Request<'a>,
) -> Vec<Violation<'a>> {
    let available = gw.available();
    let mut out = Vec::new();
    for r in Resource::ALL {
        let needed = u128::from(req.reserved.get(r));
        if needed == 0 {
            continue;
        }
        let mut check = |provider: Option<&'a str>, limit: u64| {
            let v = Violation {
                resource: r,
                provider,
                limit,
                short: 0,
            };
            let held = sum(holders.iter().map(|h| v.freed_by(h)));
            let short = (held + needed).saturating_sub(u128::from(limit));
            if short > 0 {
                out.push(Violation { short, ..v });
            }
        };
        check(None, available.get(r));
        if let Some(cap) = gw.cap(req.provider, r) {
            check(Some(req.provider), cap);
        }
    }
    out
}

/// Exact sum: at most 2^64 terms of u64 fit in u128.
pub(crate) fn sum(amounts: impl Iterator<Item = u64>) -> u128 {
    amounts.map(u128::from).sum()
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const MIB: u64 = 1 << 20;

    pub fn holder(name: &str, provider: &str, priority: i32, reserved: Amounts) -> Holder {
        Holder {
            name: name.to_string(),
            provider: provider.to_string(),
            priority,
            reserved,
        }
    }

    pub fn memory(bytes: u64) -> Amounts {
        Amounts {
            memory: bytes,
            ..Amounts::ZERO
        }
    }

    pub fn gateway(capacity: Amounts) -> Gateway {
        Gateway {
            capacity,
            ..Gateway::default()
        }
    }

    pub fn request<'a>(name: &'a str, priority: i32, reserved: Amounts) -> Request<'a> {
        Request {
            name,
            provider: "acme",
            priority,
            reserved,
        }
    }

    #[test]
    fn fits_exactly_at_the_boundary() {
        let gw = Gateway {
            capacity: Amounts::splat(1000),
            system_reserve: Amounts::splat(100),
            provider_caps: BTreeMap::new(),
        };
        let holders = [holder("a", "acme", 1, Amounts::splat(600))];
        assert_eq!(gw.available(), Amounts::splat(900));
        assert_eq!(
            admit(&gw, &holders, &request("b", 1, Amounts::splat(300))),
            Ok(())
        );
    }

    #[test]
    fn one_byte_over_is_short_by_one_byte() {
        let gw = gateway(memory(100 * MIB));
        let holders = [holder("vod", "acme", 5, memory(60 * MIB))];
        let refusal =
            admit(&gw, &holders, &request("camera", 9, memory(40 * MIB + 1))).unwrap_err();
        assert_eq!(refusal.service, "camera");
        assert_eq!(refusal.shortages.len(), 1);
        let s = &refusal.shortages[0];
        assert_eq!(s.resource, Resource::Memory);
        assert_eq!(s.scope, Scope::Gateway);
        assert_eq!(
            (s.needed, s.free, s.short, s.limit),
            (40 * MIB + 1, 40 * MIB, 1, 100 * MIB)
        );
        assert_eq!(s.holders, holders);
    }

    #[test]
    fn each_resource_is_refused_on_its_own() {
        let gw = gateway(Amounts::splat(10));
        for r in Resource::ALL {
            let mut want = Amounts::splat(10);
            want.set(r, 11);
            let refusal = admit(&gw, &[], &request("big", 0, want)).unwrap_err();
            let short: Vec<_> = refusal
                .shortages
                .iter()
                .map(|s| (s.resource, s.short))
                .collect();
            assert_eq!(short, [(r, 1)], "{r}");
        }
    }

    #[test]
    fn provider_cap_refuses_while_the_gateway_has_room() {
        let mut gw = gateway(memory(1024 * MIB));
        gw.provider_caps.insert(
            "acme".to_string(),
            Amounts {
                memory: 256 * MIB,
                ..Amounts::UNLIMITED
            },
        );
        let holders = [
            holder("player", "acme", 3, memory(200 * MIB)),
            holder("vod", "other", 3, memory(500 * MIB)),
        ];
        let refusal = admit(&gw, &holders, &request("camera", 2, memory(64 * MIB))).unwrap_err();
        assert_eq!(refusal.shortages.len(), 1);
        let s = &refusal.shortages[0];
        assert_eq!(
            s.scope,
            Scope::ProviderCap {
                provider: "acme".to_string()
            }
        );
        assert_eq!((s.free, s.short, s.limit), (56 * MIB, 8 * MIB, 256 * MIB));
        // Only the provider's own services count against its cap.
        assert_eq!(s.holders, [holders[0].clone()]);
        // Another provider is not capped.
        let other = Request {
            provider: "other",
            ..request("camera", 2, memory(64 * MIB))
        };
        assert_eq!(admit(&gw, &holders, &other), Ok(()));
    }

    #[test]
    fn both_limits_are_reported() {
        let mut gw = gateway(memory(100));
        gw.provider_caps.insert("acme".to_string(), memory(50));
        let holders = [
            holder("a", "acme", 1, memory(40)),
            holder("b", "x", 1, memory(40)),
        ];
        let refusal = admit(&gw, &holders, &request("c", 5, memory(30))).unwrap_err();
        let scopes: Vec<_> = refusal
            .shortages
            .iter()
            .map(|s| (s.scope.clone(), s.short))
            .collect();
        assert_eq!(
            scopes,
            [
                (Scope::Gateway, 10),
                (
                    Scope::ProviderCap {
                        provider: "acme".to_string()
                    },
                    20
                )
            ]
        );
        // Stopping `a` frees both; stopping `b` only the gateway.
        assert_eq!(refusal.proposal, Some(vec!["a".to_string()]));
    }

    #[test]
    fn zero_never_fails_even_over_the_limit() {
        let gw = gateway(memory(10));
        let holders = [holder("a", "acme", 1, memory(50))];
        assert_eq!(
            admit(&gw, &holders, &request("b", 1, Amounts::ZERO)),
            Ok(())
        );
        let refusal = admit(&gw, &holders, &request("b", 1, memory(5))).unwrap_err();
        let s = &refusal.shortages[0];
        // The holders are 40 over already: 45 must go for 5 to fit.
        assert_eq!((s.free, s.short), (0, 45));
    }

    #[test]
    fn holders_highest_amount_first() {
        let gw = gateway(memory(100));
        let holders = [
            holder("small", "acme", 1, memory(10)),
            holder("none", "acme", 1, Amounts::splat(0)),
            holder("big", "acme", 1, memory(80)),
        ];
        let refusal = admit(&gw, &holders, &request("c", 0, memory(20))).unwrap_err();
        let names: Vec<_> = refusal.shortages[0]
            .holders
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["big", "small"]);
    }

    #[test]
    fn no_panic_on_u64_max() {
        let mut gw = gateway(Amounts::UNLIMITED);
        gw.provider_caps
            .insert("acme".to_string(), Amounts::UNLIMITED);
        let holders = [
            holder("a", "acme", 1, Amounts::UNLIMITED),
            holder("b", "acme", 1, Amounts::UNLIMITED),
        ];
        let refusal = admit(&gw, &holders, &request("c", 5, Amounts::UNLIMITED)).unwrap_err();
        // Uncapped provider: only the gateway limits.
        assert_eq!(refusal.shortages.len(), 5);
        for s in &refusal.shortages {
            assert_eq!((s.free, s.short, s.limit), (0, u64::MAX, u64::MAX));
        }
        assert_eq!(
            refusal.proposal,
            Some(vec!["a".to_string(), "b".to_string()])
        );
        let _ = refusal.to_string();
        // A reserve larger than the capacity leaves nothing, not an underflow.
        let gw = Gateway {
            capacity: Amounts::splat(1),
            system_reserve: Amounts::UNLIMITED,
            provider_caps: BTreeMap::new(),
        };
        assert!(gw.available().is_zero());
        assert_eq!(admit(&gw, &[], &request("d", 0, Amounts::ZERO)), Ok(()));
    }
}
