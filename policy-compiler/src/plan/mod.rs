//! The update plan: the ordered map operations that take the kernel maps from what they
//! hold to what the engine says, such that **every hook decision of every flow is the old
//! or the new one after every single operation** (docs/datapath.md §7 has the proof
//! sketch). A pure function of (old map state, target): the enforcer's sync layer executes
//! it, tests execute it on an in-memory state and check the property after each operation.
//!
//! Vocabulary:
//! - a **slot** is a partition of the policy map holding one identity's policy; endpoints
//!   point at it through `endpoint_info.policy_slot`. Slot numbers are not identities.
//! - a policy change for an identity compiles into a **fresh slot**; endpoints switch to it
//!   in one write each; the old slot is deleted afterwards (**slot flip**). Changes that no
//!   flow can observe while they are written (partitions of peers that no address maps to)
//!   are made in place instead.
//! - while endpoints flip, addresses that change identity map to a **transit identity**
//!   whose partitions say the old verdict in the slots being left and the new verdict in
//!   the slots being entered.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::abi::{self, EndpointInfo, PolicyValue};
use crate::cidr::Cidr;
use crate::engine::{CompiledPolicy, Engine, EntryKey};

pub mod capacity;
pub mod lb;
pub mod model;

/// The entries of one slot.
pub type SlotEntries = BTreeMap<EntryKey, PolicyValue>;

/// What the three maps a plan writes hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapState {
    /// Slot -> its entries (a slot exists while it has entries).
    pub policy: BTreeMap<u32, SlotEntries>,
    pub ipcache: BTreeMap<Cidr, u32>,
    /// Host-side ifindex -> endpoint entry.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// The service maps.
    pub lb: lb::LbState,
}

impl MapState {
    /// Applies one operation, as the kernel map would.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::UpsertPolicy { slot, key, value } => {
                self.policy.entry(*slot).or_default().insert(*key, *value);
            }
            Op::DeletePolicy { slot, key } => {
                if let Some(s) = self.policy.get_mut(slot) {
                    s.remove(key);
                    if s.is_empty() {
                        self.policy.remove(slot);
                    }
                }
            }
            Op::UpsertIpcache { cidr, identity } => {
                self.ipcache.insert(*cidr, *identity);
            }
            Op::DeleteIpcache { cidr } => {
                self.ipcache.remove(cidr);
            }
            Op::SetEndpoint { ifindex, info } => {
                self.endpoints.insert(*ifindex, *info);
            }
            Op::DeleteEndpoint { ifindex } => {
                self.endpoints.remove(ifindex);
            }
            _ => self.lb.apply(op),
        }
    }

    pub fn policy_entries(&self) -> usize {
        self.policy.values().map(|s| s.len()).sum()
    }

    /// Which slot holds which identity's policy, as far as the endpoints say (the first
    /// endpoint of an identity, in ifindex order, names its slot). Used after a dump.
    pub fn slot_owners(&self) -> BTreeMap<u32, u32> {
        let mut owners = BTreeMap::new();
        for e in self.endpoints.values() {
            if self.policy.contains_key(&e.policy_slot) {
                owners.entry(e.identity).or_insert(e.policy_slot);
            }
        }
        owners
    }
}

/// One map operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    UpsertPolicy {
        slot: u32,
        key: EntryKey,
        value: PolicyValue,
    },
    DeletePolicy {
        slot: u32,
        key: EntryKey,
    },
    UpsertIpcache {
        cidr: Cidr,
        identity: u32,
    },
    DeleteIpcache {
        cidr: Cidr,
    },
    SetEndpoint {
        ifindex: u32,
        info: EndpointInfo,
    },
    DeleteEndpoint {
        ifindex: u32,
    },
    UpsertLbService {
        key: abi::LbKey,
        service: abi::LbService,
    },
    DeleteLbService {
        key: abi::LbKey,
    },
    SetLbTable {
        id: u32,
        slots: Arc<[u16]>,
    },
    DeleteLbTable {
        id: u32,
    },
    UpsertLbBackend {
        key: abi::LbBackendKey,
        backend: abi::LbBackend,
    },
    DeleteLbBackend {
        key: abi::LbBackendKey,
    },
    SetLbRevNat {
        id: u32,
        frontend: abi::LbKey,
    },
    DeleteLbRevNat {
        id: u32,
    },
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::UpsertPolicy { slot, key, .. } => write!(f, "policy upsert slot {slot} {key:?}"),
            Op::DeletePolicy { slot, key } => write!(f, "policy delete slot {slot} {key:?}"),
            Op::UpsertIpcache { cidr, identity } => {
                write!(f, "ipcache upsert {cidr} -> {identity}")
            }
            Op::DeleteIpcache { cidr } => write!(f, "ipcache delete {cidr}"),
            Op::SetEndpoint { ifindex, info } => write!(
                f,
                "endpoint {ifindex} -> identity {} slot {} revision {}",
                info.identity, info.policy_slot, info.revision
            ),
            Op::DeleteEndpoint { ifindex } => write!(f, "endpoint {ifindex} delete"),
            Op::UpsertLbService { key, service } => write!(
                f,
                "service {}:{}/{} -> id {} ({} backends)",
                key.ip(),
                key.port(),
                key.protocol,
                service.id,
                service.backends
            ),
            Op::DeleteLbService { key } => {
                write!(
                    f,
                    "service {}:{}/{} delete",
                    key.ip(),
                    key.port(),
                    key.protocol
                )
            }
            Op::SetLbTable { id, slots } => {
                write!(f, "service table {id} ({} slots)", slots.len())
            }
            Op::DeleteLbTable { id } => write!(f, "service table {id} delete"),
            Op::UpsertLbBackend { key, .. } => {
                write!(f, "service backend {}/{}", key.id, key.index)
            }
            Op::DeleteLbBackend { key } => {
                write!(f, "service backend {}/{} delete", key.id, key.index)
            }
            Op::SetLbRevNat { id, frontend } => write!(
                f,
                "service reverse NAT {id} -> {}:{}",
                frontend.ip(),
                frontend.port()
            ),
            Op::DeleteLbRevNat { id } => write!(f, "service reverse NAT {id} delete"),
        }
    }
}

/// A local endpoint as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEndpoint {
    pub identity: u32,
    /// Its own addresses: written into its endpoint entry, they are what its source check
    /// accepts (`endpoint_info.ipv4`/`ipv6`).
    pub ips: Vec<IpAddr>,
}

/// What the maps must say after the plan.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// Identity -> policy, for every identity that needs a slot.
    pub policies: BTreeMap<u32, Arc<CompiledPolicy>>,
    pub ipcache: BTreeMap<Cidr, u32>,
    /// Host-side ifindex -> local endpoint.
    pub endpoints: BTreeMap<u32, TargetEndpoint>,
    /// The revision endpoints record once the plan is complete.
    pub revision: u32,
    /// Service frontends to translate.
    pub lb: lb::LbTarget,
    /// The frontends that may differ from what the maps hold (what `LbTarget::update`
    /// returned since the last plan): only those are planned. `None`: every frontend is
    /// compared (a first plan, a reconcile).
    pub lb_changed: Option<BTreeSet<crate::abi::LbKey>>,
}

impl Target {
    /// The target for the local endpoints `local` (endpoint key, host-side ifindex) of an
    /// engine: a slot for each identity a local endpoint has. A local endpoint the engine
    /// does not know has no entry (it fails closed).
    pub fn from_engine<'a>(
        engine: &Engine,
        local: impl IntoIterator<Item = (&'a str, u32)>,
        revision: u32,
    ) -> Target {
        Target::from_engine_after(engine, local, revision, None)
    }

    /// [`Target::from_engine`], reusing the service tables of `previous` (the last target)
    /// where a frontend's backends did not change. Node ports are served on the node
    /// addresses of `previous`, or without one on the engine's host addresses.
    pub fn from_engine_after<'a>(
        engine: &Engine,
        local: impl IntoIterator<Item = (&'a str, u32)>,
        revision: u32,
        previous: Option<&lb::LbTarget>,
    ) -> Target {
        let node;
        let previous = match previous {
            Some(p) => p,
            None => {
                node = lb::LbTarget::for_node(&engine.config().host_addresses);
                &node
            }
        };
        let lb = lb::LbTarget::from_cluster(engine.cluster(), Some(previous));
        Target::from_engine_with(engine, local, revision, lb)
    }

    /// [`Target::from_engine`] with the service frontends given (kept up to date by their
    /// owner, e.g. with [`lb::LbTarget::update`]) instead of built from the cluster.
    pub fn from_engine_with<'a>(
        engine: &Engine,
        local: impl IntoIterator<Item = (&'a str, u32)>,
        revision: u32,
        lb: lb::LbTarget,
    ) -> Target {
        let mut t = Target {
            ipcache: engine.ipcache().clone(),
            revision,
            lb,
            ..Target::default()
        };
        for (key, ifindex) in local {
            let Some(identity) = engine.endpoint_identity(key) else {
                continue;
            };
            let Some(policy) = engine.policy_for_identity(identity) else {
                continue;
            };
            t.policies.insert(identity, policy.clone());
            let ips = engine
                .cluster()
                .endpoints
                .get(key)
                .filter(|e| !e.host_network)
                .map(|e| e.ips.clone())
                .unwrap_or_default();
            t.endpoints
                .insert(ifindex, TargetEndpoint { identity, ips });
        }
        t
    }

    /// Every compiled identity gets a slot, with or without a local endpoint (the kernel
    /// differential test points its one test interface at any of them).
    pub fn all_identities(engine: &Engine, revision: u32) -> Target {
        Target {
            policies: engine
                .compiled()
                .iter()
                .map(|(id, p)| (*id, p.clone()))
                .collect(),
            ipcache: engine.ipcache().clone(),
            endpoints: BTreeMap::new(),
            revision,
            lb: lb::LbTarget::default(),
            lb_changed: None,
        }
    }

    /// The map state this target means, given a slot table.
    pub fn state(&self, slots: &BTreeMap<u32, u32>) -> MapState {
        let mut s = MapState {
            ipcache: self.ipcache.clone(),
            ..MapState::default()
        };
        for (id, p) in &self.policies {
            if let Some(slot) = slots.get(id) {
                s.policy.insert(*slot, p.entries.iter().copied().collect());
            }
        }
        for (ifindex, e) in &self.endpoints {
            if let Some(slot) = slots.get(&e.identity) {
                s.endpoints.insert(*ifindex, ready(e, *slot, self.revision));
            }
        }
        // Service maps written from empty (ids as a first plan allocates them).
        for op in lb::plan(&lb::LbState::default(), &self.lb).ops {
            s.lb.apply(&op);
        }
        s
    }
}

/// Whether two entries accept the same source addresses.
fn same_addresses(a: &EndpointInfo, b: &EndpointInfo) -> bool {
    let f = abi::ENDPOINT_F_IPV4 | abi::ENDPOINT_F_IPV6;
    a.flags & f == b.flags & f && a.ipv4 == b.ipv4 && a.ipv6 == b.ipv6
}

/// The ready entry of an endpoint, with its own addresses (what its source check accepts).
fn ready(e: &TargetEndpoint, slot: u32, revision: u32) -> EndpointInfo {
    EndpointInfo {
        identity: e.identity,
        policy_slot: slot,
        flags: abi::ENDPOINT_F_READY,
        revision,
        ..EndpointInfo::default()
    }
    .with_addresses(&e.ips)
}

/// Counts of a plan, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanStats {
    pub policy_writes: usize,
    pub policy_deletes: usize,
    pub ipcache_writes: usize,
    pub ipcache_deletes: usize,
    pub endpoint_writes: usize,
    pub endpoint_deletes: usize,
    pub fresh_slots: usize,
    pub transits: usize,
    pub lb_writes: usize,
    pub lb_deletes: usize,
}

/// The ordered operations and the slot table they leave.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Identity -> slot once the plan is complete.
    pub slots: BTreeMap<u32, u32>,
    pub stats: PlanStats,
    /// Service frontends the plan could not write, and why.
    pub lb_skipped: Vec<String>,
}

/// Options of [`plan`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Give every endpoint the target revision even when nothing it depends on changed
    /// (a restart: conntrack admitted by the previous run is decided once more).
    pub bump_all: bool,
    /// Compare every service frontend, whatever `Target::lb_changed` says (a reconcile
    /// from dumped maps).
    pub all_services: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Keep,
    InPlace,
    Fresh,
}

/// Computes the plan from `old` (what the maps hold; `old_slots` says which slot holds
/// which identity's policy) to `target`.
pub fn plan(
    old: &MapState,
    old_slots: &BTreeMap<u32, u32>,
    target: &Target,
    opts: PlanOptions,
) -> Plan {
    // ipcache keys that change.
    let mut changed: Vec<Cidr> = old
        .ipcache
        .iter()
        .filter(|(c, v)| target.ipcache.get(c) != Some(v))
        .map(|(c, _)| *c)
        .chain(
            target
                .ipcache
                .keys()
                .filter(|c| !old.ipcache.contains_key(c))
                .copied(),
        )
        .collect();
    changed.sort();
    changed.dedup();
    let old_range: BTreeSet<u32> = old.ipcache.values().copied().collect();
    let new_range: BTreeSet<u32> = target.ipcache.values().copied().collect();
    let empty = SlotEntries::new();

    // Endpoints: removed, staying, new.
    let removed: Vec<u32> = old
        .endpoints
        .keys()
        .filter(|i| !target.endpoints.contains_key(i))
        .copied()
        .collect();

    // 1. Slot of each target identity.
    let mut used: BTreeSet<u32> = old.policy.keys().copied().collect();
    used.extend(old.endpoints.values().map(|e| e.policy_slot));
    used.insert(0);
    let mut claimed: BTreeSet<u32> = BTreeSet::new();
    let mut want: BTreeMap<u32, SlotEntries> = BTreeMap::new();
    let mut modes: BTreeMap<u32, (u32, Mode)> = BTreeMap::new();
    for (id, p) in &target.policies {
        let w: SlotEntries = p.entries.iter().copied().collect();
        let cur = old_slots
            .get(id)
            .copied()
            .filter(|s| old.policy.contains_key(s) && !claimed.contains(s));
        let mode = match cur.map(|s| (s, &old.policy[&s])) {
            Some((_, have)) if *have == w => Mode::Keep,
            Some((_, have)) if in_place_ok(have, &w, &old_range, &new_range) => Mode::InPlace,
            Some((_, have)) if changed.is_empty() && diff_in_place_ok(have, &w) => Mode::InPlace,
            _ => Mode::Fresh,
        };
        let slot = match (mode, cur) {
            (Mode::Fresh, _) | (_, None) => 0,
            (_, Some(s)) => s,
        };
        if let Some(s) = cur.filter(|_| mode != Mode::Fresh) {
            claimed.insert(s);
        }
        modes.insert(*id, (slot, mode));
        want.insert(*id, w);
    }
    // A kept slot that endpoints both leave and enter gets a fresh one: its transit
    // partitions cannot say the old verdict (for those leaving) and the new (for those
    // entering) at once.
    let mut leaving: BTreeSet<u32> = BTreeSet::new();
    let mut entering: BTreeSet<u32> = BTreeSet::new();
    for (ifindex, e) in &target.endpoints {
        let (Some(o), Some((slot, mode))) = (old.endpoints.get(ifindex), modes.get(&e.identity))
        else {
            continue;
        };
        if *mode == Mode::Fresh {
            leaving.insert(o.policy_slot);
        } else if *slot != o.policy_slot {
            leaving.insert(o.policy_slot);
            entering.insert(*slot);
        }
    }
    for (slot, mode) in modes.values_mut() {
        if *mode != Mode::Fresh && leaving.contains(slot) && entering.contains(slot) {
            *mode = Mode::Fresh;
        }
    }
    let mut next = 1u32;
    for (slot, mode) in modes.values_mut() {
        if *mode == Mode::Fresh {
            while used.contains(&next) {
                next += 1;
            }
            *slot = next;
            used.insert(next);
        }
    }
    let slots: BTreeMap<u32, u32> = modes.iter().map(|(id, (s, _))| (*id, *s)).collect();

    // Endpoints that flip (point at another slot, or change identity).
    let mut flips: Vec<(u32, EndpointInfo)> = Vec::new();
    let mut fresh_endpoints: Vec<(u32, EndpointInfo)> = Vec::new();
    let mut targets: BTreeSet<u32> = BTreeSet::new();
    for (ifindex, e) in &target.endpoints {
        let Some(slot) = slots.get(&e.identity).copied() else {
            continue;
        };
        match old.endpoints.get(ifindex) {
            // The same slot and addresses: nothing to flip (a revision bump comes last).
            Some(o)
                if o.identity == e.identity
                    && o.policy_slot == slot
                    && same_addresses(o, &ready(e, slot, o.revision)) => {}
            Some(o) => {
                flips.push((*ifindex, ready(e, slot, o.revision)));
                targets.insert(slot);
            }
            None => fresh_endpoints.push((*ifindex, ready(e, slot, target.revision))),
        }
    }

    // 2. Transits for the ipcache keys that change: one per (old identity, new identity).
    // transit id -> (old identity, new identity); key -> transit id
    let mut transits: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut key_transit: BTreeMap<Cidr, u32> = BTreeMap::new();
    if !flips.is_empty() {
        // Transit numbers still in use (left by an interrupted plan) are not reused: their
        // partitions may be visible.
        let taken: BTreeSet<u32> = old_range
            .iter()
            .copied()
            .chain(
                old.policy
                    .values()
                    .flat_map(|e| e.keys().map(|k| k.identity))
                    .filter(|i| *i >= abi::IDENTITY_TRANSIT_MIN),
            )
            .collect();
        let mut groups: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        let mut next_group = abi::IDENTITY_TRANSIT_MIN;
        for c in &changed {
            let pq = (
                lpm_upto(&old.ipcache, c).unwrap_or(abi::IDENTITY_UNKNOWN),
                lpm_upto(&target.ipcache, c).unwrap_or(abi::IDENTITY_UNKNOWN),
            );
            let t = *groups.entry(pq).or_insert_with(|| {
                while taken.contains(&next_group) {
                    next_group += 1;
                }
                let t = next_group;
                next_group += 1;
                t
            });
            transits.insert(t, pq);
            key_transit.insert(*c, t);
        }
    }

    let mut p = Plan {
        slots: slots.clone(),
        ..Plan::default()
    };
    let mut touched_slots: BTreeSet<u32> = BTreeSet::new();
    // Every key each slot holds at some point, and what it must hold at the end.
    let mut present: BTreeMap<u32, BTreeSet<EntryKey>> = old
        .policy
        .iter()
        .map(|(s, e)| (*s, e.keys().copied().collect()))
        .collect();
    let final_entries: BTreeMap<u32, &SlotEntries> = modes
        .iter()
        .map(|(id, (slot, _))| (*slot, &want[id]))
        .collect();

    // P0: endpoints that leave fail closed first (their new decision is "not ready").
    for ifindex in &removed {
        p.push(Op::DeleteEndpoint { ifindex: *ifindex });
    }

    // P1: writes no flow can observe yet.
    // In-place changes: entries of peers no address maps to.
    for (id, (slot, mode)) in &modes {
        if *mode != Mode::InPlace {
            continue;
        }
        let have = old.policy.get(slot).unwrap_or(&empty);
        // Longest prefix first: a lookup meets a new entry only once every longer new
        // entry that could match is there.
        let mut ups: Vec<(&EntryKey, &PolicyValue)> = want[id]
            .iter()
            .filter(|(k, v)| have.get(k) != Some(*v))
            .collect();
        ups.sort_by_key(|(k, _)| (std::cmp::Reverse(k.prefixlen), **k));
        for (k, v) in ups {
            p.push(Op::UpsertPolicy {
                slot: *slot,
                key: *k,
                value: *v,
            });
            touched_slots.insert(*slot);
        }
    }
    // Fresh slots, complete.
    for (id, (slot, mode)) in &modes {
        if *mode != Mode::Fresh {
            continue;
        }
        for (k, v) in &want[id] {
            p.push(Op::UpsertPolicy {
                slot: *slot,
                key: *k,
                value: *v,
            });
        }
        touched_slots.insert(*slot);
        p.stats.fresh_slots += 1;
    }
    // Transit partitions: the old verdict in slots endpoints leave or stay on, the new
    // verdict in slots endpoints enter.
    if !transits.is_empty() {
        let live_new: BTreeMap<u32, &SlotEntries> = modes
            .iter()
            .map(|(id, (slot, _))| (*slot, &want[id]))
            .collect();
        let live_old: BTreeSet<u32> = old.policy.keys().copied().collect();
        let all: BTreeSet<u32> = live_old.iter().chain(live_new.keys()).copied().collect();
        for slot in all {
            let fresh = live_new.contains_key(&slot) && !live_old.contains(&slot);
            let new_side = fresh || targets.contains(&slot);
            for (t, (o, n)) in &transits {
                let (src, peer) = if new_side {
                    (live_new.get(&slot).copied(), *n)
                } else {
                    (old.policy.get(&slot), *o)
                };
                let Some(src) = src else { continue };
                for (k, v) in partition(src, peer) {
                    let key = EntryKey { identity: *t, ..*k };
                    p.push(Op::UpsertPolicy {
                        slot,
                        key,
                        value: *v,
                    });
                }
            }
        }
        p.stats.transits = transits.len();
    }

    for op in &p.ops {
        if let Op::UpsertPolicy { slot, key, .. } = op {
            present.entry(*slot).or_default().insert(*key);
        }
    }

    // P2: moving addresses to their transit, longest prefix first.
    let mut by_len: Vec<Cidr> = key_transit.keys().copied().collect();
    by_len.sort_by_key(|c| std::cmp::Reverse(c.len()));
    for c in &by_len {
        p.push(Op::UpsertIpcache {
            cidr: *c,
            identity: key_transit[c],
        });
    }

    // P3: endpoints switch slot, one write each (revision unchanged until P7).
    for (ifindex, info) in &flips {
        p.push(Op::SetEndpoint {
            ifindex: *ifindex,
            info: *info,
        });
    }

    // P4: the ipcache's final values: writes longest prefix first, then removals shortest
    // prefix first (an address never falls through to a shorter prefix's final value
    // while its own longer final entry is still missing, nor to a shorter old entry).
    let mut writes: Vec<Cidr> = changed
        .iter()
        .filter(|c| target.ipcache.contains_key(c))
        .copied()
        .collect();
    writes.sort_by_key(|c| std::cmp::Reverse(c.len()));
    for c in &writes {
        p.push(Op::UpsertIpcache {
            cidr: *c,
            identity: target.ipcache[c],
        });
    }
    let mut removals: Vec<Cidr> = changed
        .iter()
        .filter(|c| !target.ipcache.contains_key(c))
        .copied()
        .collect();
    removals.sort_by_key(|c| c.len());
    for c in &removals {
        p.push(Op::DeleteIpcache { cidr: *c });
    }

    // P5: endpoints that are new, on complete slots and a final ipcache.
    for (ifindex, info) in &fresh_endpoints {
        p.push(Op::SetEndpoint {
            ifindex: *ifindex,
            info: *info,
        });
    }

    // P6: what no flow can observe any more: transit partitions, in-place removals,
    // slots nobody points at, leftovers of an interrupted plan.
    // Shortest prefix first: an in-place removal in a visible partition never leaves a
    // lookup on a shorter entry that is itself about to go.
    let mut deletes: Vec<(u32, EntryKey)> = Vec::new();
    for (slot, keys) in &present {
        let fin = final_entries.get(slot);
        for k in keys {
            if fin.is_none_or(|f| !f.contains_key(k)) {
                deletes.push((*slot, *k));
            }
        }
    }
    deletes.sort_by_key(|(slot, k)| (k.prefixlen, *slot, *k));
    // A removal from a slot endpoints keep is a policy change for them (revision below).
    touched_slots.extend(
        deletes
            .iter()
            .filter(|(slot, k)| {
                final_entries.contains_key(slot) && k.identity < abi::IDENTITY_TRANSIT_MIN
            })
            .map(|(slot, _)| *slot),
    );
    for (slot, key) in deletes {
        p.push(Op::DeletePolicy { slot, key });
    }

    // P7: revisions, last: conntrack admitted under an older one is decided again against
    // the final maps.
    let ipcache_changed = !changed.is_empty();
    let flipped: BTreeSet<u32> = flips.iter().map(|(i, _)| *i).collect();
    for (ifindex, e) in &target.endpoints {
        let (Some(o), Some(slot)) = (old.endpoints.get(ifindex), slots.get(&e.identity)) else {
            continue;
        };
        let info = ready(e, *slot, target.revision);
        if *o == info {
            continue;
        }
        if opts.bump_all
            || ipcache_changed
            || flipped.contains(ifindex)
            || touched_slots.contains(slot)
            || o.flags != info.flags
        {
            p.push(Op::SetEndpoint {
                ifindex: *ifindex,
                info,
            });
        }
    }
    // Service maps last: a backend new to the cluster has its address in the ipcache before
    // any flow is translated to it.
    let lbp = match &target.lb_changed {
        Some(keys) if !opts.all_services => lb::plan_for(&old.lb, &target.lb, keys),
        _ => lb::plan(&old.lb, &target.lb),
    };
    p.stats.lb_writes = lbp.writes;
    p.stats.lb_deletes = lbp.deletes;
    p.lb_skipped = lbp.skipped;
    p.ops.extend(lbp.ops);
    p
}

impl Plan {
    fn push(&mut self, op: Op) {
        match &op {
            Op::UpsertPolicy { .. } => self.stats.policy_writes += 1,
            Op::DeletePolicy { .. } => self.stats.policy_deletes += 1,
            Op::UpsertIpcache { .. } => self.stats.ipcache_writes += 1,
            Op::DeleteIpcache { .. } => self.stats.ipcache_deletes += 1,
            Op::SetEndpoint { .. } => self.stats.endpoint_writes += 1,
            Op::DeleteEndpoint { .. } => self.stats.endpoint_deletes += 1,
            _ => {}
        }
        self.ops.push(op);
    }
}

/// Whether `have` can become `want` in place: every entry that changes belongs to a peer
/// partition that no address maps to while the change is visible (added or changed
/// entries: none before the update; removed entries: none after it, they go last).
fn in_place_ok(
    have: &SlotEntries,
    want: &SlotEntries,
    old_range: &BTreeSet<u32>,
    new_range: &BTreeSet<u32>,
) -> bool {
    let write_ok =
        |k: &EntryKey| k.identity != abi::IDENTITY_UNKNOWN && !old_range.contains(&k.identity);
    let delete_ok =
        |k: &EntryKey| k.identity != abi::IDENTITY_UNKNOWN && !new_range.contains(&k.identity);
    want.iter()
        .all(|(k, v)| have.get(k) == Some(v) || write_ok(k))
        && have.keys().all(|k| want.contains_key(k) || delete_ok(k))
}

/// Whether a visible change of a slot can be made in place when no address changes
/// identity: written longest prefix first and removed shortest prefix first, every lookup
/// inside one partition sees its old or its new longest match. Across partitions (a flow
/// that moves between an exact-peer hit and the any-peer fallback) that holds only if,
/// per direction, the any-peer partition or else every exact-peer partition is unchanged.
fn diff_in_place_ok(have: &SlotEntries, want: &SlotEntries) -> bool {
    let mut any_changed = [false; 2];
    let mut exact_changed = [false; 2];
    let mut note = |k: &EntryKey| {
        let d = (k.direction as usize).min(1);
        if k.identity == abi::IDENTITY_UNKNOWN {
            any_changed[d] = true;
        } else {
            exact_changed[d] = true;
        }
    };
    for (k, v) in want {
        if have.get(k) != Some(v) {
            note(k);
        }
    }
    for k in have.keys() {
        if !want.contains_key(k) {
            note(k);
        }
    }
    (0..2).all(|d| !(any_changed[d] && exact_changed[d]))
}

/// The entries of one peer's partition.
fn partition(entries: &SlotEntries, peer: u32) -> impl Iterator<Item = (&EntryKey, &PolicyValue)> {
    let lo = EntryKey {
        identity: peer,
        direction: 0,
        protocol: 0,
        port: 0,
        prefixlen: 0,
    };
    entries
        .range(lo..)
        .take_while(move |(k, _)| k.identity == peer)
}

/// The identity of the longest prefix in `ipcache` that contains all of `c`.
pub fn lpm_upto(ipcache: &BTreeMap<Cidr, u32>, c: &Cidr) -> Option<u32> {
    (0..=c.len())
        .rev()
        .find_map(|l| Cidr::new(c.addr(), l).and_then(|p| ipcache.get(&p).copied()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// Without slot flips the ipcache changes directly: a longer prefix that appears while
    /// a shorter one changes must be written first, or an address under both briefly
    /// resolves to the shorter prefix's new identity (neither old nor new for it).
    #[test]
    fn direct_ipcache_writes_never_expose_a_third_identity() {
        let old = MapState {
            ipcache: [(cidr("0.0.0.0/0"), 9), (cidr("10.0.0.0/24"), 100)].into(),
            ..MapState::default()
        };
        let target = Target {
            ipcache: [
                (cidr("0.0.0.0/0"), 9),
                (cidr("10.0.0.0/24"), 101),
                (cidr("10.0.0.0/28"), 102),
                (cidr("10.0.0.5/32"), 103),
            ]
            .into(),
            ..Target::default()
        };
        let p = plan(&old, &BTreeMap::new(), &target, PlanOptions::default());
        let mut s = old.clone();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let ip2: IpAddr = "10.0.0.9".parse().unwrap();
        for op in &p.ops {
            s.apply(op);
            assert!([100, 103].contains(&model::ipcache_lookup(&s, &ip)), "{op}");
            assert!(
                [100, 102].contains(&model::ipcache_lookup(&s, &ip2)),
                "{op}"
            );
        }
        // And removals go shortest first.
        let back = Target {
            ipcache: old.ipcache.clone(),
            ..Target::default()
        };
        let p = plan(&s.clone(), &BTreeMap::new(), &back, PlanOptions::default());
        for op in &p.ops {
            s.apply(op);
            assert!([100, 103].contains(&model::ipcache_lookup(&s, &ip)), "{op}");
        }
    }

    /// Narrowing a policy in place (only removals) is still a change for the endpoints on
    /// that slot: their revision moves, so tracked flows are decided again.
    #[test]
    fn removals_in_place_bump_the_revision() {
        let key = |port: u16| EntryKey {
            identity: 300,
            direction: abi::DIRECTION_INGRESS,
            protocol: 6,
            port,
            prefixlen: abi::POLICY_PREFIX_FULL as u8,
        };
        let allow = PolicyValue {
            rule_id: 16,
            verdict: abi::POLICY_VERDICT_ALLOW,
            ..PolicyValue::default()
        };
        let terminal = (
            EntryKey {
                identity: 0,
                direction: abi::DIRECTION_INGRESS,
                protocol: 0,
                port: 0,
                prefixlen: abi::POLICY_PREFIX_ANY_PROTO as u8,
            },
            crate::engine::tiers::default_deny(),
        );
        let policy = |ports: &[u16]| CompiledPolicy {
            entries: {
                let mut e: Vec<_> = ports.iter().map(|p| (key(*p), allow)).collect();
                e.push(terminal);
                e.sort_by_key(|x| x.0);
                e
            },
            ..CompiledPolicy::default()
        };
        let ipcache: BTreeMap<Cidr, u32> = [(cidr("10.0.0.2/32"), 300)].into();
        let ep = TargetEndpoint {
            identity: 200,
            ips: vec![],
        };
        let old = MapState {
            policy: [(7, policy(&[80, 9090]).entries.into_iter().collect())].into(),
            ipcache: ipcache.clone(),
            endpoints: [(1, ready(&ep, 7, 1))].into(),
            lb: lb::LbState::default(),
        };
        let target = Target {
            policies: [(200, Arc::new(policy(&[80])))].into(),
            ipcache,
            endpoints: [(1, ep.clone())].into(),
            revision: 2,
            lb: lb::LbTarget::default(),
            lb_changed: None,
        };
        let p = plan(&old, &[(200, 7)].into(), &target, PlanOptions::default());
        assert_eq!(p.slots, [(200, 7)].into(), "changed in place");
        assert_eq!(
            p.ops,
            vec![
                Op::DeletePolicy {
                    slot: 7,
                    key: key(9090)
                },
                Op::SetEndpoint {
                    ifindex: 1,
                    info: ready(&ep, 7, 2)
                },
            ]
        );
    }
}
