//! Map capacities and the check that a plan fits them at every operation.
//!
//! A plan that would overflow a map is rejected before its first write: a half-written
//! policy (the writes that fit, then ENOSPC) is not a state the plan's ordering argument
//! covers. The count that matters is the **peak** while the plan runs, not the end state:
//! a slot flip holds the old and the new slot of an identity at once, and transit entries
//! exist until the flip completes.

use std::collections::BTreeMap;

use super::{MapState, Op, Plan, Target};
use crate::abi;
use crate::cidr::Cidr;
use crate::engine::EntryKey;

/// Entry capacities of the maps a plan writes. The default is the datapath's
/// (`palisade_abi::capacity`); tests use small numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub policy: usize,
    pub ipcache: usize,
    pub endpoints: usize,
    /// Service frontends (`pal_lb_svc`).
    pub lb_frontends: usize,
    /// Service backends over all frontends (`pal_lb_backends`).
    pub lb_backends: usize,
}

impl Default for Capacity {
    fn default() -> Capacity {
        Capacity {
            policy: abi::capacity::POLICY as usize,
            ipcache: abi::capacity::IPCACHE as usize,
            endpoints: abi::capacity::ENDPOINTS as usize,
            lb_frontends: abi::capacity::LB_FRONTENDS as usize,
            lb_backends: abi::capacity::LB_BACKENDS as usize,
        }
    }
}

/// Entry counts of the three maps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub policy: usize,
    pub ipcache: usize,
    pub endpoints: usize,
    pub lb_frontends: usize,
    pub lb_backends: usize,
}

impl Usage {
    pub fn of(state: &MapState) -> Usage {
        Usage {
            policy: state.policy_entries(),
            ipcache: state.ipcache.len(),
            endpoints: state.endpoints.len(),
            lb_frontends: state.lb.services.len(),
            lb_backends: state.lb.backends.len(),
        }
    }
}

/// A plan does not fit a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the policy set does not fit the {map} map: {needed} entries needed at the peak of the \
     update, capacity {capacity}{largest}; nothing was written and the last good policy \
     stays enforced",
    largest = largest_text(.largest)
)]
pub struct CapacityExceeded {
    /// The map's name (`pal_policy`, `pal_ipcache`, `pal_endpoints`).
    pub map: &'static str,
    pub needed: usize,
    pub capacity: usize,
    /// For the policy map: the identity with the most entries, and how many.
    pub largest: Option<(u32, usize)>,
}

fn largest_text(l: &Option<(u32, usize)>) -> String {
    match l {
        Some((id, n)) => format!("; the largest policy is identity {id}'s with {n} entries"),
        None => String::new(),
    }
}

/// The most entries each map holds at any point while `plan` runs from `old`.
pub fn peak(old: &MapState, plan: &Plan) -> Usage {
    let mut cur = Usage::of(old);
    let mut peak = cur;
    // Keys whose presence the plan changed so far (true: present).
    let mut policy: BTreeMap<(u32, EntryKey), bool> = BTreeMap::new();
    let mut ipcache: BTreeMap<Cidr, bool> = BTreeMap::new();
    let mut endpoints: BTreeMap<u32, bool> = BTreeMap::new();
    let mut lb_frontends: BTreeMap<abi::LbKey, bool> = BTreeMap::new();
    let mut lb_backends: BTreeMap<abi::LbBackendKey, bool> = BTreeMap::new();
    fn step<K: Ord>(
        seen: &mut BTreeMap<K, bool>,
        key: K,
        present_before: impl FnOnce(&K) -> bool,
        insert: bool,
        count: &mut usize,
    ) {
        let was = seen
            .get(&key)
            .copied()
            .unwrap_or_else(|| present_before(&key));
        match (was, insert) {
            (false, true) => *count += 1,
            (true, false) => *count = count.saturating_sub(1),
            _ => {}
        }
        seen.insert(key, insert);
    }
    for op in &plan.ops {
        match op {
            Op::UpsertPolicy { slot, key, .. } | Op::DeletePolicy { slot, key } => step(
                &mut policy,
                (*slot, *key),
                |(s, k)| old.policy.get(s).is_some_and(|e| e.contains_key(k)),
                matches!(op, Op::UpsertPolicy { .. }),
                &mut cur.policy,
            ),
            Op::UpsertIpcache { cidr, .. } | Op::DeleteIpcache { cidr } => step(
                &mut ipcache,
                *cidr,
                |c| old.ipcache.contains_key(c),
                matches!(op, Op::UpsertIpcache { .. }),
                &mut cur.ipcache,
            ),
            Op::SetEndpoint { ifindex, .. } | Op::DeleteEndpoint { ifindex } => step(
                &mut endpoints,
                *ifindex,
                |i| old.endpoints.contains_key(i),
                matches!(op, Op::SetEndpoint { .. }),
                &mut cur.endpoints,
            ),
            Op::UpsertLbService { key, .. } | Op::DeleteLbService { key } => step(
                &mut lb_frontends,
                *key,
                |k| old.lb.services.contains_key(k),
                matches!(op, Op::UpsertLbService { .. }),
                &mut cur.lb_frontends,
            ),
            Op::UpsertLbBackend { key, .. } | Op::DeleteLbBackend { key } => step(
                &mut lb_backends,
                *key,
                |k| old.lb.backends.contains_key(k),
                matches!(op, Op::UpsertLbBackend { .. }),
                &mut cur.lb_backends,
            ),
            // Tables and reverse-NAT entries are one per frontend id, bounded with them.
            Op::SetLbTable { .. }
            | Op::DeleteLbTable { .. }
            | Op::SetLbRevNat { .. }
            | Op::DeleteLbRevNat { .. } => {}
        }
        peak.lb_frontends = peak.lb_frontends.max(cur.lb_frontends);
        peak.lb_backends = peak.lb_backends.max(cur.lb_backends);
        peak.policy = peak.policy.max(cur.policy);
        peak.ipcache = peak.ipcache.max(cur.ipcache);
        peak.endpoints = peak.endpoints.max(cur.endpoints);
    }
    peak
}

/// Whether `plan` (from `old` to `target`) fits `cap` at every operation; the peak usage
/// if it does.
pub fn check(
    old: &MapState,
    plan: &Plan,
    target: &Target,
    cap: &Capacity,
) -> Result<Usage, CapacityExceeded> {
    let largest = target
        .policies
        .iter()
        .map(|(id, c)| (*id, c.entries.len()))
        .max_by_key(|(id, n)| (*n, std::cmp::Reverse(*id)));
    check_with(old, plan, cap, largest)
}

/// [`check`], with the target's largest policy (identity, entries) given: a plan that
/// writes no policy (a service change) needs no target to be checked.
pub fn check_with(
    old: &MapState,
    plan: &Plan,
    cap: &Capacity,
    largest: Option<(u32, usize)>,
) -> Result<Usage, CapacityExceeded> {
    let p = peak(old, plan);
    let over = |map, needed: usize, capacity: usize, largest| {
        (needed > capacity).then_some(CapacityExceeded {
            map,
            needed,
            capacity,
            largest,
        })
    };
    if let Some(e) = over(abi::map_name::POLICY, p.policy, cap.policy, largest)
        .or_else(|| over(abi::map_name::IPCACHE, p.ipcache, cap.ipcache, None))
        .or_else(|| over(abi::map_name::ENDPOINTS, p.endpoints, cap.endpoints, None))
        .or_else(|| {
            over(
                abi::map_name::LB_SVC,
                p.lb_frontends,
                cap.lb_frontends,
                None,
            )
        })
        .or_else(|| {
            over(
                abi::map_name::LB_BACKENDS,
                p.lb_backends,
                cap.lb_backends,
                None,
            )
        })
    {
        return Err(e);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::abi::PolicyValue;

    fn key(port: u16) -> EntryKey {
        EntryKey {
            identity: 300,
            direction: abi::DIRECTION_INGRESS,
            protocol: 6,
            port,
            prefixlen: abi::POLICY_PREFIX_FULL as u8,
        }
    }

    /// The peak counts what exists at once, not the end state: a fresh slot's entries are
    /// all written before the old slot's are deleted.
    #[test]
    fn a_slot_flip_peaks_at_old_plus_new() {
        let v = PolicyValue::default();
        let old = MapState {
            policy: [(1, [(key(80), v), (key(81), v)].into())].into(),
            ..MapState::default()
        };
        let plan = Plan {
            ops: vec![
                Op::UpsertPolicy {
                    slot: 2,
                    key: key(80),
                    value: v,
                },
                Op::UpsertPolicy {
                    slot: 2,
                    key: key(82),
                    value: v,
                },
                // Rewriting an existing key does not count twice.
                Op::UpsertPolicy {
                    slot: 2,
                    key: key(82),
                    value: v,
                },
                Op::DeletePolicy {
                    slot: 1,
                    key: key(80),
                },
                Op::DeletePolicy {
                    slot: 1,
                    key: key(81),
                },
                Op::DeletePolicy {
                    slot: 1,
                    key: key(99),
                },
            ],
            ..Plan::default()
        };
        let p = peak(&old, &plan);
        assert_eq!(p.policy, 4);
        let cap = |policy| Capacity {
            policy,
            ..Capacity::default()
        };
        let t = Target::default();
        assert!(check(&old, &plan, &t, &cap(4)).is_ok());
        let e = check(&old, &plan, &t, &cap(3)).unwrap_err();
        assert_eq!((e.map, e.needed, e.capacity), (abi::map_name::POLICY, 4, 3));
    }
}
