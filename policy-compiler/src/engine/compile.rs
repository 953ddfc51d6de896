//! Compiling the policy map of one identity.

use std::collections::BTreeSet;

use roaring::RoaringBitmap;

use crate::abi::{self, PolicyValue};
use crate::model::{Direction, PolicyTier, PortMatch, Protocol, RuleAction, resolve_named_port};
use crate::rules::PolicyRef;

use super::l7::L7Set;
use super::register::PolicyState;
use super::tiers::{self, TierRule};
use super::*;
use crate::hash::FxHashMap;

impl Engine {
    /// Compiles many identities; large batches split across the available cores.
    pub(super) fn compile_many(&self, ids: &[u32]) -> Vec<CompiledPolicy> {
        const PARALLEL_MIN: usize = 16;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let wide = self.cluster_wide_selecting(ids);
        let compile = |id: u32| self.compile_identity(id, wide.get(&id).map_or(&[][..], |v| v));
        if ids.len() < PARALLEL_MIN || threads < 2 {
            return ids.iter().map(|id| compile(*id)).collect();
        }
        let chunk = ids.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .chunks(chunk)
                .map(|c| {
                    let compile = &compile;
                    s.spawn(move || c.iter().map(|id| compile(*id)).collect::<Vec<_>>())
                })
                .collect();
            let mut out = Vec::with_capacity(ids.len());
            for h in handles {
                match h.join() {
                    Ok(v) => out.extend(v),
                    // A panic in a worker is a bug; compile that chunk here so it surfaces.
                    Err(_) => out.clear(),
                }
            }
            if out.len() != ids.len() {
                return ids.iter().map(|id| compile(*id)).collect();
            }
            out
        })
    }

    /// For each of `ids`, the cluster-scoped policies whose subjects include it (in policy
    /// order): one pass over those policies' subject sets per batch, instead of a test of
    /// every cluster-scoped policy for every identity.
    fn cluster_wide_selecting(&self, ids: &[u32]) -> FxHashMap<u32, Vec<&PolicyRef>> {
        let mut out: FxHashMap<u32, Vec<&PolicyRef>> = FxHashMap::default();
        // Cluster-scoped policies are filed under the empty namespace.
        let Some(wide) = self.policies_by_ns.get("") else {
            return out;
        };
        let batch: RoaringBitmap = ids.iter().copied().collect();
        for pref in wide {
            let Some(st) = self.policies.get(pref) else {
                continue;
            };
            if let Some(b) = self.selectors.selected(st.subject) {
                for id in b & &batch {
                    out.entry(id).or_default().push(pref);
                }
            }
        }
        out
    }

    /// Compiles the policy map of one cluster identity; `cluster_wide`: the cluster-scoped
    /// policies that select it.
    pub(super) fn compile_identity(&self, id: u32, cluster_wide: &[&PolicyRef]) -> CompiledPolicy {
        let Some(key) = self.identities.key(id) else {
            return CompiledPolicy::default();
        };
        let mut contribs: Vec<Contribution> = Vec::new();
        let mut isolated: [Vec<PolicyRef>; 2] = [Vec::new(), Vec::new()];
        let empty = BTreeSet::new();
        let own = self.policies_by_ns.get(&*key.namespace).unwrap_or(&empty);
        // `cluster_wide` already holds only policies that select this identity.
        let selecting: Vec<(&PolicyRef, &PolicyState)> = own
            .iter()
            .filter_map(|pref| self.policies.get(pref).map(|st| (pref, st)))
            .filter(|(_, st)| {
                self.selectors
                    .selected(st.subject)
                    .is_some_and(|b| b.contains(id))
            })
            .chain(
                cluster_wide
                    .iter()
                    .filter_map(|pref| self.policies.get(*pref).map(|st| (*pref, st))),
            )
            .collect();
        // The admin and baseline tiers order policies by priority, then name (then kind): the
        // rank among the tiered policies selecting this identity is all the order needs, as
        // only rules of policies selecting it can match its flows.
        let mut tiered: Vec<usize> = (0..selecting.len())
            .filter(|&i| selecting[i].1.policy.tier != PolicyTier::NetworkPolicy)
            .collect();
        tiered.sort_unstable_by_key(|&i| selecting[i].1.policy.evaluation_order());
        let mut rank = vec![0u64; selecting.len()];
        for (k, &i) in tiered.iter().enumerate() {
            rank[i] = k as u64;
        }
        for (pi, (pref, st)) in selecting.iter().enumerate() {
            let pref = *pref;
            for dir in Direction::BOTH {
                let Some(rules) = st.policy.rules(dir) else {
                    continue;
                };
                // An audit-mode policy only reports: it does not isolate.
                if st.policy.isolates(dir) && !st.policy.audit {
                    isolated[dir as usize].push(pref.clone());
                }
                let d = dir.abi();
                for (ri, (rule, (peers, rule_id))) in
                    rules.iter().zip(&st.rules[dir as usize]).enumerate()
                {
                    let base = match (st.policy.tier, rule.action) {
                        (PolicyTier::NetworkPolicy, RuleAction::Allow) => {
                            TierRule::network_policy_allow(*rule_id)
                        }
                        (PolicyTier::NetworkPolicy, RuleAction::Deny) => {
                            TierRule::network_policy_deny(*rule_id, st.policy.audit)
                        }
                        // The loader gives Pass only to tiered kinds.
                        (PolicyTier::NetworkPolicy, RuleAction::Pass) => continue,
                        (tier, action) => TierRule::tiered(tier, rank[pi], ri, action, *rule_id),
                    };
                    let union: Option<RoaringBitmap> = match peers {
                        RulePeers::Any => None,
                        RulePeers::Selectors(sels) => {
                            let mut u = RoaringBitmap::new();
                            for s in sels {
                                if let Some(b) = self.selectors.selected(*s) {
                                    u |= b;
                                }
                            }
                            Some(u)
                        }
                    };
                    let mut fixed: Vec<(PortPrefix, TierRule)> = Vec::new();
                    let mut named: Vec<(&str, Protocol, TierRule)> = Vec::new();
                    if rule.ports.is_empty() {
                        fixed.push((PortPrefix::ANY, base));
                    }
                    for (j, ps) in rule.ports.iter().enumerate() {
                        let proto = ps.protocol.0;
                        // A port with HTTP rules sends the connection to the L7 proxy, whatever
                        // the rule's action (a deny rule with HTTP rules denies requests).
                        // Audit mode: the HTTP rules are judged by the proxy and only reported
                        // (an overlay that redirects what the other rules admit); an HTTP
                        // allow rule also allows the port at L3/L4 (docs/l7.md).
                        let audit_http = ps.http.is_some() && st.policy.audit;
                        let overlay = audit_http.then(|| {
                            TierRule::network_policy_audit_redirect(
                                *rule_id,
                                self.config.proxy_port,
                                j as u16 + 1,
                            )
                        });
                        let tr = match (&ps.http, st.policy.audit, rule.action) {
                            (None, _, _) => Some(base),
                            (Some(_), false, action) => Some(TierRule::network_policy_redirect(
                                *rule_id,
                                self.config.proxy_port,
                                j as u16 + 1,
                                action == RuleAction::Deny,
                            )),
                            (Some(_), true, RuleAction::Allow) => Some(base),
                            (Some(_), true, RuleAction::Deny | RuleAction::Pass) => None,
                        };
                        for tr in tr.into_iter().chain(overlay) {
                            match &ps.port {
                                PortMatch::All => fixed.push((
                                    PortPrefix {
                                        proto,
                                        port: 0,
                                        bits: 0,
                                    },
                                    tr,
                                )),
                                PortMatch::Range(lo, hi) => {
                                    for (port, bits) in port_range_prefixes(*lo, *hi) {
                                        fixed.push((PortPrefix { proto, port, bits }, tr));
                                    }
                                }
                                PortMatch::Named(n) => match dir {
                                    // Ingress: the destination is this endpoint.
                                    Direction::Ingress => {
                                        if let Some(port) =
                                            resolve_named_port(&key.ports, n, ps.protocol)
                                        {
                                            fixed.push((
                                                PortPrefix {
                                                    proto,
                                                    port,
                                                    bits: 16,
                                                },
                                                tr,
                                            ));
                                        }
                                    }
                                    Direction::Egress => named.push((n.as_str(), ps.protocol, tr)),
                                },
                            }
                        }
                    }
                    match &union {
                        None => {
                            for (f, tr) in &fixed {
                                contribs.push((d, abi::IDENTITY_UNKNOWN, *f, *tr));
                            }
                        }
                        Some(u) => {
                            if !fixed.is_empty() {
                                for peer in u.iter() {
                                    for (f, tr) in &fixed {
                                        contribs.push((d, peer, *f, *tr));
                                    }
                                }
                            }
                        }
                    }
                    // Egress named ports resolve against each destination identity.
                    for (n, proto, tr) in named {
                        let by_name = self.port_names.get(n);
                        let peers: Box<dyn Iterator<Item = u32>> = match (&union, by_name) {
                            (_, None) => Box::new(std::iter::empty()),
                            (None, Some(b)) => Box::new(b.iter()),
                            (Some(u), Some(b)) => Box::new((u & b).into_iter()),
                        };
                        for peer in peers {
                            if let Some(k) = self.identities.key(peer)
                                && let Some(port) = resolve_named_port(&k.ports, n, proto)
                            {
                                contribs.push((
                                    d,
                                    peer,
                                    PortPrefix {
                                        proto: proto.0,
                                        port,
                                        bits: 16,
                                    },
                                    tr,
                                ));
                            }
                        }
                    }
                }
            }
        }
        let np_isolated = [!isolated[0].is_empty(), !isolated[1].is_empty()];
        // Traffic from the endpoint's node is always allowed (NetworkPolicy API): an
        // isolated ingress direction allows peer host on every port, as a NetworkPolicy
        // rule of its own (the lowest rule id, so it names the decision). Only when some
        // address is the node's; otherwise no packet could carry identity host.
        if np_isolated[Direction::Ingress as usize] && !self.config.host_addresses.is_empty() {
            contribs.push((
                Direction::Ingress.abi(),
                abi::IDENTITY_HOST,
                PortPrefix::ANY,
                TierRule::network_policy_allow(abi::RULE_ID_HOST),
            ));
        }
        let [ingress_isolated_by, egress_isolated_by] = isolated;
        let (mut entries, l7) = materialize(contribs, np_isolated);
        // An audit namespace: every deny of every policy selecting the pod, default deny
        // included, is only reported (forwarded as AUDIT).
        if crate::model::namespace_audits(&key.namespace_labels) {
            for (_, v) in &mut entries {
                if v.verdict == abi::POLICY_VERDICT_DENY {
                    v.flags |= abi::POLICY_F_AUDIT;
                }
            }
        }
        CompiledPolicy {
            entries,
            l7,
            ingress_isolated_by,
            egress_isolated_by,
        }
    }
}

type Entries = Vec<(EntryKey, PolicyValue)>;
type L7Entries = Vec<(EntryKey, L7Set)>;

/// (direction, peer identity or 0 for any peer, port target, rule)
type Contribution = (u8, u32, PortPrefix, TierRule);

/// Turns contributions into the entries of one policy map, tier-resolved so that the
/// datapath's first hit is final:
///
/// - the any-peer partition of each direction holds every any-peer prefix plus a terminal
///   catch-all (prefix 72), each resolved over the any-peer rules that contain it;
/// - an exact-peer partition holds its own prefixes plus the any-peer prefixes nested
///   inside them, each resolved over its own rules **and** the any-peer rules. It has no
///   catch-all of its own unless a rule of its own covers every port: a port no exact
///   rule matches misses the partition, and the any-peer partition's answer is then the
///   whole answer (no exact rule contributes to it).
///
/// Inside a partition, a port's longest match is a prefix that every rule containing the
/// port also contains (prefixes of one port are nested), so the value at that prefix is
/// the resolution of exactly the rules that match the port.
fn materialize(mut contribs: Vec<Contribution>, np_isolated: [bool; 2]) -> (Entries, L7Entries) {
    contribs.sort_unstable();
    contribs.dedup();
    let mut out: Vec<(EntryKey, PolicyValue)> = Vec::with_capacity(contribs.len() + 2);
    let mut l7: Vec<(EntryKey, L7Set)> = Vec::new();
    for dir in Direction::BOTH {
        let d = dir.abi();
        let isolated = np_isolated[dir as usize];
        let lo = contribs.partition_point(|c| c.0 < d);
        let hi = contribs.partition_point(|c| c.0 <= d);
        let of_dir = &contribs[lo..hi];
        let any_end = of_dir.partition_point(|c| c.1 == abi::IDENTITY_UNKNOWN);
        let (any, exact) = of_dir.split_at(any_end);
        let any_rules: Vec<(PortPrefix, TierRule)> = any.iter().map(|c| (c.2, c.3)).collect();
        let mut any_prefixes: Vec<PortPrefix> = any_rules.iter().map(|r| r.0).collect();
        any_prefixes.push(PortPrefix::ANY);
        emit_partition(
            abi::IDENTITY_UNKNOWN,
            d,
            any_prefixes.clone(),
            &any_rules,
            isolated,
            &mut out,
            &mut l7,
        );
        let mut i = 0;
        while i < exact.len() {
            let peer = exact[i].1;
            let mut j = i;
            while j < exact.len() && exact[j].1 == peer {
                j += 1;
            }
            let mut rules: Vec<(PortPrefix, TierRule)> =
                exact[i..j].iter().map(|c| (c.2, c.3)).collect();
            let mut prefixes: Vec<PortPrefix> = rules.iter().map(|r| r.0).collect();
            // Only any-peer rules that overlap one of this peer's prefixes can contain an
            // entry of this partition (every entry lies inside one of its own prefixes).
            let overlapping =
                |q: &PortPrefix| prefixes.iter().any(|e| e.contains(q) || q.contains(e));
            let relevant: Vec<(PortPrefix, TierRule)> = any_rules
                .iter()
                .filter(|(q, _)| overlapping(q))
                .copied()
                .collect();
            let own = prefixes.len();
            prefixes.extend(
                relevant
                    .iter()
                    .map(|(a, _)| *a)
                    .filter(|a| rules[..own].iter().any(|(e, _)| e.contains(a))),
            );
            rules.extend_from_slice(&relevant);
            emit_partition(peer, d, prefixes, &rules, isolated, &mut out, &mut l7);
            i = j;
        }
    }
    out.sort_unstable_by_key(|a| a.0);
    l7.sort_unstable_by_key(|a| a.0);
    (out, l7)
}

/// One partition: each of `prefixes`, resolved over the `rules` that contain it.
fn emit_partition(
    peer: u32,
    dir: u8,
    mut prefixes: Vec<PortPrefix>,
    rules: &[(PortPrefix, TierRule)],
    np_isolated: bool,
    out: &mut Vec<(EntryKey, PolicyValue)>,
    l7: &mut Vec<(EntryKey, L7Set)>,
) {
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut matching: Vec<&TierRule> = Vec::with_capacity(rules.len());
    for p in prefixes {
        matching.clear();
        matching.extend(rules.iter().filter(|(q, _)| q.contains(&p)).map(|(_, r)| r));
        matching.sort_unstable();
        let key = p.entry_key(peer, dir);
        let (value, allow_all) = tiers::resolve_with_l7(matching.iter().copied(), np_isolated);
        if value.verdict == abi::POLICY_VERDICT_REDIRECT {
            l7.push((key, L7Set::from_matching(&matching, allow_all)));
        }
        out.push((key, value));
    }
}
