//! Admission against a model: random lifecycles of services on a random gateway never
//! over-commit it, and every refusal and proposal is checked against sums computed here.

use std::collections::{BTreeMap, BTreeSet};

use admission::{admit, Amounts, Gateway, Holder, Refusal, Request, Resource, Scope};
use proptest::prelude::*;

const NAMES: [&str; 8] = [
    "camera", "vod", "meter", "nas", "dns", "vpn", "hub", "print",
];
const PROVIDERS: [&str; 3] = ["acme", "beta", "gamma"];

#[derive(Debug, Clone)]
enum Op {
    /// Install and start; a name already installed is left alone.
    Install {
        name: usize,
        provider: usize,
        priority: i32,
        reserved: Amounts,
    },
    Start(usize),
    Stop(usize),
    /// A new reservation; a running service keeps its old one when the new one is refused.
    Update {
        name: usize,
        reserved: Amounts,
    },
    Remove(usize),
}

#[derive(Debug, Clone)]
struct Service {
    provider: String,
    priority: i32,
    reserved: Amounts,
    running: bool,
}

fn amount() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        30 => Just(0),
        40 => 0u64..500,
        1 => Just(u64::MAX),
    ]
}

fn amounts(each: impl Strategy<Value = u64> + Clone) -> impl Strategy<Value = Amounts> {
    (each.clone(), each.clone(), each.clone(), each.clone(), each).prop_map(
        |(cpu, memory, storage, bandwidth_down, bandwidth_up)| Amounts {
            cpu,
            memory,
            storage,
            bandwidth_down,
            bandwidth_up,
        },
    )
}

fn limit() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![1 => 0u64..200, 16 => 200u64..3000, 2 => Just(u64::MAX)]
}

fn gateway() -> impl Strategy<Value = Gateway> {
    let cap = || proptest::option::of(amounts(limit()));
    (
        amounts(limit()),
        amounts(prop_oneof![10 => Just(0u64), 10 => 0u64..300, 1 => Just(u64::MAX)]),
        [cap(), cap(), cap()],
    )
        .prop_map(|(capacity, system_reserve, caps)| Gateway {
            capacity,
            system_reserve,
            provider_caps: PROVIDERS
                .iter()
                .zip(caps)
                .filter_map(|(p, cap)| Some((p.to_string(), cap?)))
                .collect(),
        })
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        3 => (name.clone(), 0..PROVIDERS.len(), -2i32..10, amounts(amount())).prop_map(
            |(name, provider, priority, reserved)| Op::Install { name, provider, priority, reserved }
        ),
        3 => name.clone().prop_map(Op::Start),
        2 => name.clone().prop_map(Op::Stop),
        2 => (name.clone(), amounts(amount())).prop_map(|(name, reserved)| Op::Update { name, reserved }),
        1 => name.prop_map(Op::Remove),
    ]
}

/// The running services other than `except`.
fn holders(services: &BTreeMap<String, Service>, except: &str) -> Vec<Holder> {
    services
        .iter()
        .filter(|(name, s)| s.running && name.as_str() != except)
        .map(|(name, s)| Holder {
            name: name.clone(),
            provider: s.provider.clone(),
            priority: s.priority,
            reserved: s.reserved,
        })
        .collect()
}

fn sum(holders: &[Holder], r: Resource, provider: Option<&str>) -> u128 {
    holders
        .iter()
        .filter(|h| provider.is_none_or(|p| h.provider == p))
        .map(|h| u128::from(h.reserved.get(r)))
        .sum()
}

fn cap(gw: &Gateway, provider: &str, r: Resource) -> Option<u64> {
    let cap = gw.provider_caps.get(provider)?.get(r);
    (cap != u64::MAX).then_some(cap)
}

/// The limits `req` breaks beside `holders`, with what must be freed, computed from scratch.
fn broken(gw: &Gateway, holders: &[Holder], req: &Request) -> BTreeMap<(Resource, Scope), u128> {
    let mut out = BTreeMap::new();
    for r in Resource::ALL {
        let needed = u128::from(req.reserved.get(r));
        if needed == 0 {
            continue;
        }
        let available = u128::from(gw.capacity.get(r).saturating_sub(gw.system_reserve.get(r)));
        let total = sum(holders, r, None) + needed;
        if total > available {
            out.insert((r, Scope::Gateway), total - available);
        }
        if let Some(cap) = cap(gw, req.provider, r) {
            let total = sum(holders, r, Some(req.provider)) + needed;
            if total > u128::from(cap) {
                let scope = Scope::ProviderCap {
                    provider: req.provider.to_string(),
                };
                out.insert((r, scope), total - u128::from(cap));
            }
        }
    }
    out
}

fn without(holders: &[Holder], stopped: &[&str]) -> Vec<Holder> {
    holders
        .iter()
        .filter(|h| !stopped.contains(&h.name.as_str()))
        .cloned()
        .collect()
}

/// Every refusal was necessary, reports exactly the broken limits, and its proposal (if any)
/// is made of lower-priority holders, makes room, and is as small as can be.
fn check_refusal(gw: &Gateway, holders: &[Holder], req: &Request, refusal: &Refusal) {
    let want = broken(gw, holders, req);
    assert!(
        !want.is_empty(),
        "refused although it fits: {req:?} beside {holders:?}"
    );
    let got: BTreeMap<(Resource, Scope), u128> = refusal
        .shortages
        .iter()
        .map(|s| ((s.resource, s.scope.clone()), u128::from(s.short)))
        .collect();
    let want_clamped: BTreeMap<_, _> = want
        .iter()
        .map(|(k, v)| (k.clone(), (*v).min(u128::from(u64::MAX))))
        .collect();
    assert_eq!(got, want_clamped);
    for s in &refusal.shortages {
        assert_eq!(s.needed, req.reserved.get(s.resource));
        assert!(s.holders.iter().all(|h| h.reserved.get(s.resource) > 0));
    }
    assert_eq!(refusal.service, req.name);
    assert!(refusal
        .to_string()
        .starts_with(&format!("cannot admit `{}`:", req.name)));

    let candidates: Vec<&str> = holders
        .iter()
        .filter(|h| h.priority < req.priority)
        .map(|h| h.name.as_str())
        .collect();
    match &refusal.proposal {
        None => {
            assert!(
                admit(gw, &without(holders, &candidates), req).is_err(),
                "no proposal although stopping {candidates:?} makes room"
            );
        }
        Some(proposal) => {
            let proposal: Vec<&str> = proposal.iter().map(String::as_str).collect();
            assert!(
                proposal.iter().all(|n| candidates.contains(n)),
                "{proposal:?}"
            );
            let unique: BTreeSet<_> = proposal.iter().collect();
            assert_eq!(unique.len(), proposal.len());
            assert_eq!(admit(gw, &without(holders, &proposal), req), Ok(()));
            // No smaller set of candidates makes room (there are few, so try them all).
            for mask in 0u32..1 << candidates.len() {
                if (mask.count_ones() as usize) < proposal.len() {
                    let subset: Vec<&str> = (0..candidates.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| candidates[i])
                        .collect();
                    assert!(
                        !broken(gw, &without(holders, &subset), req).is_empty(),
                        "stopping {subset:?} is enough, yet {proposal:?} was proposed"
                    );
                }
            }
        }
    }
}

/// Admits `name` with `reserved` if it fits beside every other running service.
fn try_admit(
    gw: &Gateway,
    services: &BTreeMap<String, Service>,
    name: &str,
    provider: &str,
    priority: i32,
    reserved: Amounts,
) -> bool {
    let holders = holders(services, name);
    let req = Request {
        name,
        provider,
        priority,
        reserved,
    };
    match admit(gw, &holders, &req) {
        Ok(()) => {
            assert!(broken(gw, &holders, &req).is_empty());
            true
        }
        Err(refusal) => {
            check_refusal(gw, &holders, &req, &refusal);
            false
        }
    }
}

fn apply(gw: &Gateway, services: &mut BTreeMap<String, Service>, op: &Op) {
    match *op {
        Op::Install {
            name,
            provider,
            priority,
            reserved,
        } => {
            let name = NAMES[name];
            let provider = PROVIDERS[provider];
            if !services.contains_key(name)
                && try_admit(gw, services, name, provider, priority, reserved)
            {
                let service = Service {
                    provider: provider.to_string(),
                    priority,
                    reserved,
                    running: true,
                };
                services.insert(name.to_string(), service);
            }
        }
        Op::Start(name) => {
            let name = NAMES[name];
            let Some(s) = services.get(name).filter(|s| !s.running).cloned() else {
                return;
            };
            if try_admit(gw, services, name, &s.provider, s.priority, s.reserved) {
                services.get_mut(name).expect("just looked up").running = true;
            }
        }
        Op::Stop(name) => {
            if let Some(s) = services.get_mut(NAMES[name]) {
                s.running = false;
            }
        }
        Op::Update { name, reserved } => {
            let name = NAMES[name];
            let Some(s) = services.get(name).cloned() else {
                return;
            };
            // The old reservation is left out of the holders while the new one is checked,
            // and stays in place when the new one is refused.
            if !s.running || try_admit(gw, services, name, &s.provider, s.priority, reserved) {
                services.get_mut(name).expect("just looked up").reserved = reserved;
            }
        }
        Op::Remove(name) => {
            services.remove(NAMES[name]);
        }
    }
}

/// Nothing is over-committed: per resource, the running services fit the gateway and every
/// provider fits its cap.
fn check_invariants(gw: &Gateway, services: &BTreeMap<String, Service>) {
    let running = holders(services, "");
    for r in Resource::ALL {
        let available = gw.capacity.get(r).saturating_sub(gw.system_reserve.get(r));
        assert!(
            sum(&running, r, None) <= u128::from(available),
            "{r} over the gateway"
        );
        for p in PROVIDERS {
            if let Some(cap) = cap(gw, p, r) {
                assert!(
                    sum(&running, r, Some(p)) <= u128::from(cap),
                    "{r} over `{p}`'s cap"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn lifecycles_never_over_commit(gw in gateway(), ops in prop::collection::vec(op(), 1000..3000)) {
        let mut services = BTreeMap::new();
        for op in &ops {
            apply(&gw, &mut services, op);
            check_invariants(&gw, &services);
        }
    }
}

fn holder_list() -> impl Strategy<Value = Vec<Holder>> {
    prop::collection::vec((0..PROVIDERS.len(), -3i32..8, amounts(amount())), 0..=10).prop_map(
        |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (provider, priority, reserved))| Holder {
                    name: format!("s{i}"),
                    provider: PROVIDERS[provider].to_string(),
                    priority,
                    reserved,
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// With holders over-committed or not, the proposal is the smallest set and, among those,
    /// the one of lowest total priority.
    #[test]
    fn proposals_are_the_smallest_lowest_priority_set(
        gw in gateway(),
        holders in holder_list(),
        provider in 0..PROVIDERS.len(),
        priority in -3i32..8,
        reserved in amounts(amount()),
    ) {
        let req = Request { name: "new", provider: PROVIDERS[provider], priority, reserved };
        let Err(refusal) = admit(&gw, &holders, &req) else {
            prop_assert!(broken(&gw, &holders, &req).is_empty());
            return Ok(());
        };
        check_refusal(&gw, &holders, &req, &refusal);
        let Some(proposal) = refusal.proposal else { return Ok(()) };
        let candidates: Vec<&Holder> = holders.iter().filter(|h| h.priority < priority).collect();
        let priority_of = |names: &[&str]| -> i64 {
            holders.iter().filter(|h| names.contains(&h.name.as_str())).map(|h| i64::from(h.priority)).sum()
        };
        let proposal: Vec<&str> = proposal.iter().map(String::as_str).collect();
        for mask in 0u32..1 << candidates.len() {
            if mask.count_ones() as usize != proposal.len() {
                continue;
            }
            let subset: Vec<&str> = (0..candidates.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| candidates[i].name.as_str())
                .collect();
            if broken(&gw, &without(&holders, &subset), &req).is_empty() {
                prop_assert!(priority_of(&proposal) <= priority_of(&subset), "{subset:?} beats {proposal:?}");
            }
        }
    }
}
