//! The compiler proper: keeps the cluster model, identities, the selector cache and every
//! endpoint policy compiled, and turns each batch of changes into a [`MapDiff`].
//!
//! A full compile is one batch holding every object, so there is a single mechanism:
//! apply changes -> recompute the identities of touched endpoints -> update the selector
//! cache -> recompile the policies of dirty identities -> diff against what was there.
//!
//! Endpoints sharing an identity share one compiled policy: the policy of an endpoint
//! depends only on facts in its identity key (namespace and labels select it, its named
//! ports resolve ingress named ports).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use roaring::RoaringBitmap;
use serde::Serialize;

use crate::abi::{self, PolicyKey, PolicyValue};
use crate::cidr::Cidr;
use crate::hash::{FxHashMap, FxHashSet};
use crate::identity::{IdentityAllocator, IdentityError, IdentityInfo, IdentityKey, Reserved};
use crate::labels::LabelFilter;
use crate::model::{
    Cluster, Direction, Endpoint, Namespace, Peer, Peers, Policy, PortMatch, Protocol,
    resolve_named_port,
};
use crate::rules::{PolicyRef, RuleRef, RuleTable};
use crate::selector::{SelectorCache, SelectorId, SelectorKey};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineConfig {
    /// Which pod labels are left out of identities.
    pub label_filter: LabelFilter,
    /// Whether an ipBlock selects pods whose IPs fall inside it (default: yes, as the
    /// upstream e2e suite expects). Off, ipBlocks select only addresses outside the
    /// cluster, which is how some offline analyzers read the API.
    pub ipblocks_select_pods: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            label_filter: LabelFilter::default(),
            ipblocks_select_pods: true,
        }
    }
}

/// A policy map key in logical form (see `struct policy_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EntryKey {
    /// Peer identity; 0 = any peer.
    pub identity: u32,
    pub direction: u8,
    /// 0 when `prefixlen == POLICY_PREFIX_ANY_PROTO` (any protocol).
    pub protocol: u8,
    /// Host order; bits beyond the prefix are zero.
    pub port: u16,
    /// The ABI prefix length: `POLICY_PREFIX_ANY_PROTO`, or `POLICY_PREFIX_ANY_PORT`
    /// plus 0..=16 port bits.
    pub prefixlen: u8,
}

impl EntryKey {
    /// The kernel key of this entry in the policy map partition `slot`.
    pub fn to_abi(&self, slot: u32) -> PolicyKey {
        PolicyKey {
            prefixlen: self.prefixlen as u32,
            slot,
            identity: self.identity,
            direction: self.direction,
            protocol: self.protocol,
            dport_be: self.port.to_be(),
        }
    }

    /// Port prefix bits (0..=16) of a protocol-specific key.
    pub fn port_bits(&self) -> u8 {
        self.prefixlen
            .saturating_sub(abi::POLICY_PREFIX_ANY_PORT as u8)
    }

    /// The inclusive port range the key covers.
    pub fn port_range(&self) -> (u16, u16) {
        let bits = self.port_bits() as u32;
        let span = if bits == 0 {
            u16::MAX
        } else {
            ((1u32 << (16 - bits)) - 1) as u16
        };
        (self.port, self.port | span)
    }
}

/// The compiled policy of one identity: the entries of its policy map, plus what user
/// space needs to explain a default deny.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompiledPolicy {
    /// Sorted by key.
    #[serde(serialize_with = "crate::abi_serde::entries")]
    pub entries: Vec<(EntryKey, PolicyValue)>,
    pub ingress_isolated_by: Vec<PolicyRef>,
    pub egress_isolated_by: Vec<PolicyRef>,
}

impl CompiledPolicy {
    pub fn isolated_by(&self, dir: Direction) -> &[PolicyRef] {
        match dir {
            Direction::Ingress => &self.ingress_isolated_by,
            Direction::Egress => &self.egress_isolated_by,
        }
    }

    pub fn get(&self, key: &EntryKey) -> Option<PolicyValue> {
        self.entries
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| self.entries[i].1)
    }
}

/// One change to the cluster.
#[derive(Debug, Clone)]
pub enum Change {
    UpsertNamespace(Namespace),
    DeleteNamespace(String),
    UpsertEndpoint(Endpoint),
    DeleteEndpoint(String),
    UpsertPolicy(Arc<Policy>),
    DeletePolicy(PolicyRef),
}

/// What a batch changed in the maps. Apply in [`MapDiff::ops`] order: every add before
/// any delete, so a flow allowed before and after is never dropped in between.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MapDiff {
    /// Identities whose policy map is new (create before any endpoint points at it).
    pub policies_created: Vec<u32>,
    #[serde(serialize_with = "crate::abi_serde::keyed_entries")]
    pub policy_upserts: Vec<(u32, EntryKey, PolicyValue)>,
    pub ipcache_upserts: Vec<(Cidr, u32)>,
    /// Endpoint key -> identity (and so its policy map).
    pub endpoint_upserts: Vec<(String, u32)>,
    pub endpoint_deletes: Vec<String>,
    pub policy_deletes: Vec<(u32, EntryKey)>,
    pub ipcache_deletes: Vec<Cidr>,
    pub policies_removed: Vec<u32>,
    pub identities_added: Vec<u32>,
    pub identities_removed: Vec<u32>,
}

/// One map operation, in the order [`MapDiff::ops`] yields them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapOp<'a> {
    CreatePolicy(u32),
    UpsertPolicyEntry(u32, &'a EntryKey, &'a PolicyValue),
    UpsertIpcache(&'a Cidr, u32),
    UpsertEndpoint(&'a str, u32),
    DeleteEndpoint(&'a str),
    DeletePolicyEntry(u32, &'a EntryKey),
    DeleteIpcache(&'a Cidr),
    RemovePolicy(u32),
}

impl MapDiff {
    pub fn is_empty(&self) -> bool {
        self.policies_created.is_empty()
            && self.policy_upserts.is_empty()
            && self.ipcache_upserts.is_empty()
            && self.endpoint_upserts.is_empty()
            && self.endpoint_deletes.is_empty()
            && self.policy_deletes.is_empty()
            && self.ipcache_deletes.is_empty()
            && self.policies_removed.is_empty()
    }

    pub fn ops(&self) -> impl Iterator<Item = MapOp<'_>> {
        self.policies_created
            .iter()
            .map(|i| MapOp::CreatePolicy(*i))
            .chain(
                self.policy_upserts
                    .iter()
                    .map(|(i, k, v)| MapOp::UpsertPolicyEntry(*i, k, v)),
            )
            .chain(
                self.ipcache_upserts
                    .iter()
                    .map(|(c, i)| MapOp::UpsertIpcache(c, *i)),
            )
            .chain(
                self.endpoint_upserts
                    .iter()
                    .map(|(e, i)| MapOp::UpsertEndpoint(e, *i)),
            )
            .chain(
                self.endpoint_deletes
                    .iter()
                    .map(|e| MapOp::DeleteEndpoint(e)),
            )
            .chain(
                self.policy_deletes
                    .iter()
                    .map(|(i, k)| MapOp::DeletePolicyEntry(*i, k)),
            )
            .chain(self.ipcache_deletes.iter().map(MapOp::DeleteIpcache))
            .chain(
                self.policies_removed
                    .iter()
                    .map(|i| MapOp::RemovePolicy(*i)),
            )
    }

    pub fn op_count(&self) -> usize {
        self.ops().count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

#[derive(Debug, Clone)]
enum RulePeers {
    Any,
    Selectors(Vec<SelectorId>),
}

#[derive(Debug, Clone)]
struct PolicyState {
    policy: Arc<Policy>,
    subject: SelectorId,
    /// Per direction, per rule: peers and rule id.
    rules: [Vec<(RulePeers, u32)>; 2],
}

impl PolicyState {
    fn selectors(&self) -> impl Iterator<Item = SelectorId> + '_ {
        self.rules
            .iter()
            .flatten()
            .flat_map(|(p, _)| match p {
                RulePeers::Any => &[][..],
                RulePeers::Selectors(v) => &v[..],
            })
            .copied()
    }
}

/// A port target of a rule before it meets a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PortPrefix {
    /// 0 = any protocol.
    proto: u8,
    port: u16,
    /// 0..=16 bits of port prefix.
    bits: u8,
}

impl PortPrefix {
    const ANY: PortPrefix = PortPrefix {
        proto: 0,
        port: 0,
        bits: 0,
    };

    fn contains(&self, other: &PortPrefix) -> bool {
        if self.proto == 0 {
            return true;
        }
        self.proto == other.proto
            && self.bits <= other.bits
            && (other.port & port_mask(self.bits)) == self.port
    }

    fn entry_key(&self, identity: u32, direction: u8) -> EntryKey {
        if self.proto == 0 {
            EntryKey {
                identity,
                direction,
                protocol: 0,
                port: 0,
                prefixlen: abi::POLICY_PREFIX_ANY_PROTO as u8,
            }
        } else {
            EntryKey {
                identity,
                direction,
                protocol: self.proto,
                port: self.port,
                prefixlen: abi::POLICY_PREFIX_ANY_PORT as u8 + self.bits,
            }
        }
    }
}

pub fn port_mask(bits: u8) -> u16 {
    if bits == 0 {
        0
    } else {
        u16::MAX << (16 - bits as u32)
    }
}

/// Splits an inclusive port range into aligned prefixes (at most 2*16 of them), so a range
/// costs a handful of LPM entries rather than one per port.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // Largest aligned block starting at lo that fits in [lo, hi].
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            1u32 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((lo as u16, bits));
        lo += size;
    }
    out
}

/// The compiler state.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
    cluster: Cluster,
    identities: IdentityAllocator,
    selectors: SelectorCache,
    rules: RuleTable,
    policies: FxHashMap<PolicyRef, PolicyState>,
    policies_by_ns: FxHashMap<String, BTreeSet<PolicyRef>>,
    /// Peer selector -> policies using it.
    peer_users: FxHashMap<SelectorId, BTreeSet<PolicyRef>>,
    /// Port name -> policies with an egress rule to any peer on that named port.
    any_peer_named: FxHashMap<String, BTreeSet<PolicyRef>>,
    /// Port name -> identities with a container port of that name.
    port_names: FxHashMap<String, RoaringBitmap>,
    /// Policy CIDRs with the number of references.
    cidr_refs: BTreeMap<Cidr, usize>,
    /// Prefix lengths present in `cidr_refs`, per family (bit n = length n), to bound lookups.
    cidr_lens_v4: u64,
    cidr_lens_v6: [u64; 3],
    endpoint_ids: FxHashMap<String, u32>,
    ip_owners: FxHashMap<IpAddr, BTreeSet<String>>,
    compiled: FxHashMap<u32, Arc<CompiledPolicy>>,
    ipcache: BTreeMap<Cidr, u32>,
    revision: u64,
}

impl Engine {
    /// An engine with no objects: the ipcache holds only the world entries.
    pub fn new(config: EngineConfig) -> Engine {
        let mut ipcache = BTreeMap::new();
        if let Some(c) = Cidr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0) {
            ipcache.insert(c, Reserved::WorldIpv4.id());
        }
        if let Some(c) = Cidr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0) {
            ipcache.insert(c, Reserved::WorldIpv6.id());
        }
        Engine {
            config,
            cluster: Cluster::default(),
            identities: IdentityAllocator::new(),
            selectors: SelectorCache::default(),
            rules: RuleTable::default(),
            policies: FxHashMap::default(),
            policies_by_ns: FxHashMap::default(),
            peer_users: FxHashMap::default(),
            any_peer_named: FxHashMap::default(),
            port_names: FxHashMap::default(),
            cidr_refs: BTreeMap::new(),
            cidr_lens_v4: 0,
            cidr_lens_v6: [0; 3],
            endpoint_ids: FxHashMap::default(),
            ip_owners: FxHashMap::default(),
            compiled: FxHashMap::default(),
            ipcache,
            revision: 0,
        }
    }

    /// Compiles a whole cluster: one batch with every object.
    pub fn compile(
        cluster: &Cluster,
        config: EngineConfig,
    ) -> Result<(Engine, MapDiff), EngineError> {
        Engine::compile_owned(cluster.clone(), config)
    }

    /// [`Engine::compile`] without copying the model.
    pub fn compile_owned(
        cluster: Cluster,
        config: EngineConfig,
    ) -> Result<(Engine, MapDiff), EngineError> {
        let mut e = Engine::new(config);
        let diff = e.apply(into_changes(cluster))?;
        Ok((e, diff))
    }

    /// [`Engine::compile_owned`] numbering identities with `identities` (an allocator with
    /// preferred numbers, [`IdentityAllocator::prefer`]): a restarted enforcer keeps the
    /// numbers its pinned maps and conntrack entries use.
    pub fn compile_owned_with_identities(
        cluster: Cluster,
        config: EngineConfig,
        identities: IdentityAllocator,
    ) -> Result<(Engine, MapDiff), EngineError> {
        let mut e = Engine::new(config);
        e.identities = identities;
        let diff = e.apply(into_changes(cluster))?;
        Ok((e, diff))
    }

    /// Compiles this engine's cluster again from scratch, keeping identity numbers and
    /// rule ids. The result must equal `self` in every map (the incremental-update test).
    pub fn recompiled(&self) -> Result<Engine, EngineError> {
        let mut e = Engine::new(self.config.clone());
        e.identities = IdentityAllocator::with_numbering(&self.identities);
        e.rules = RuleTable::with_numbering(&self.rules);
        e.apply(changes_for(&self.cluster))?;
        Ok(e)
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn rules(&self) -> &RuleTable {
        &self.rules
    }

    pub fn identities(&self) -> &IdentityAllocator {
        &self.identities
    }

    pub fn selectors(&self) -> &SelectorCache {
        &self.selectors
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn ipcache(&self) -> &BTreeMap<Cidr, u32> {
        &self.ipcache
    }

    pub fn endpoint_identity(&self, key: &str) -> Option<u32> {
        self.endpoint_ids.get(key).copied()
    }

    pub fn endpoint_identities(&self) -> &FxHashMap<String, u32> {
        &self.endpoint_ids
    }

    pub fn policy_for_identity(&self, id: u32) -> Option<&Arc<CompiledPolicy>> {
        self.compiled.get(&id)
    }

    /// The compiled policy map of an endpoint.
    pub fn endpoint_policy(&self, key: &str) -> Option<&Arc<CompiledPolicy>> {
        self.endpoint_ids
            .get(key)
            .and_then(|id| self.compiled.get(id))
    }

    pub fn compiled(&self) -> &FxHashMap<u32, Arc<CompiledPolicy>> {
        &self.compiled
    }

    /// Applies one batch of changes and returns the map operations it implies.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<MapDiff, EngineError> {
        self.revision += 1;
        let mut touched_eps: BTreeSet<String> = BTreeSet::new();
        let mut touched_ns: BTreeSet<String> = BTreeSet::new();
        // Policy -> (before, after) over the whole batch.
        type Versions = (Option<Arc<Policy>>, Option<Arc<Policy>>);
        let mut policy_changes: BTreeMap<PolicyRef, Versions> = BTreeMap::new();
        let mut old_ips: FxHashMap<String, Vec<IpAddr>> = FxHashMap::default();

        // 1. The model.
        for c in changes {
            match c {
                Change::UpsertNamespace(ns) => {
                    touched_ns.insert(ns.name.clone());
                    self.cluster.namespaces.insert(ns.name.clone(), ns);
                }
                Change::DeleteNamespace(name) => {
                    touched_ns.insert(name.clone());
                    self.cluster.namespaces.remove(&name);
                }
                Change::UpsertEndpoint(ep) => {
                    let key = ep.key.clone();
                    if let Some(prev) = self.cluster.endpoints.insert(key.clone(), ep)
                        && !prev.ips.is_empty()
                    {
                        old_ips.entry(key.clone()).or_insert(prev.ips);
                    }
                    touched_eps.insert(key);
                }
                Change::DeleteEndpoint(key) => {
                    if let Some(prev) = self.cluster.endpoints.remove(&key)
                        && !prev.ips.is_empty()
                    {
                        old_ips.entry(key.clone()).or_insert(prev.ips);
                    }
                    touched_eps.insert(key);
                }
                Change::UpsertPolicy(p) => {
                    let r = PolicyRef {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    };
                    let prev = self
                        .cluster
                        .policies
                        .insert((r.namespace.clone(), r.name.clone()), p.clone());
                    let e = policy_changes.entry(r).or_insert((prev, None));
                    e.1 = Some(p);
                }
                Change::DeletePolicy(r) => {
                    let prev = self
                        .cluster
                        .policies
                        .remove(&(r.namespace.clone(), r.name.clone()));
                    let e = policy_changes.entry(r).or_insert((prev, None));
                    e.1 = None;
                }
            }
        }
        policy_changes.retain(|_, (old, new)| old != new);

        // 2. Policy CIDRs: the ipcache holds them and pod identities record membership.
        let mut cidr_delta: BTreeMap<Cidr, i64> = BTreeMap::new();
        for (old, new) in policy_changes.values() {
            for c in old.iter().flat_map(|p| p.cidrs()) {
                *cidr_delta.entry(c).or_default() -= 1;
            }
            for c in new.iter().flat_map(|p| p.cidrs()) {
                *cidr_delta.entry(c).or_default() += 1;
            }
        }
        let mut cidrs_added = Vec::new();
        let mut cidrs_removed = Vec::new();
        for (c, d) in cidr_delta {
            if d == 0 {
                continue;
            }
            let before = self.cidr_refs.get(&c).copied().unwrap_or(0);
            let after = (before as i64 + d).max(0) as usize;
            if after == 0 {
                self.cidr_refs.remove(&c);
            } else {
                self.cidr_refs.insert(c, after);
            }
            if before == 0 && after > 0 {
                cidrs_added.push(c);
            } else if before > 0 && after == 0 {
                cidrs_removed.push(c);
            }
        }
        if !cidrs_added.is_empty() || !cidrs_removed.is_empty() {
            self.recompute_cidr_lens();
        }

        // 3. Register new and changed policies (selectors are evaluated over the current
        //    identities; identity changes below reach them through the cache), then release
        //    what the old versions held.
        let mut dirty: BTreeSet<u32> = BTreeSet::new();
        let mut changed_policies: BTreeSet<PolicyRef> = BTreeSet::new();
        for (r, (_, new)) in &policy_changes {
            changed_policies.insert(r.clone());
            let old_state = self.policies.remove(r);
            if let Some(p) = new {
                let state = self.register_policy(r, p.clone());
                self.policies.insert(r.clone(), state);
                self.policies_by_ns
                    .entry(r.namespace.clone())
                    .or_default()
                    .insert(r.clone());
            }
            if let Some(s) = old_state {
                if let Some(bm) = self.selectors.selected(s.subject) {
                    dirty.extend(bm.iter());
                }
                self.unregister_policy(r, &s, new.as_deref());
            }
            if new.is_none()
                && let Some(set) = self.policies_by_ns.get_mut(&r.namespace)
            {
                set.remove(r);
            }
        }

        // 4. CIDR identities.
        let mut changed_selectors: BTreeSet<SelectorId> = BTreeSet::new();
        let mut added_ids: Vec<u32> = Vec::new();
        let mut removed_ids: Vec<u32> = Vec::new();
        for c in &cidrs_added {
            if c.len() == 0 {
                continue; // /0 is the world identity of its family
            }
            let id = self.identities.acquire_cidr(*c)?;
            changed_selectors.extend(self.selectors.add_identity(id, &IdentityInfo::Cidr(*c)));
            added_ids.push(id);
        }
        for c in &cidrs_removed {
            if let Some(id) = self.identities.cidr_identity(c) {
                changed_selectors
                    .extend(self.selectors.remove_identity(id, &IdentityInfo::Cidr(*c)));
                self.identities.release_cidr(c);
                removed_ids.push(id);
            }
        }

        // 5. Endpoint identities.
        let mut affected: BTreeSet<String> = touched_eps;
        for ns in &touched_ns {
            let prefix = format!("{ns}/");
            for k in self.cluster.endpoints.range(prefix.clone()..) {
                if !k.0.starts_with(&prefix) {
                    break;
                }
                affected.insert(k.0.clone());
            }
        }
        if !cidrs_added.is_empty() || !cidrs_removed.is_empty() {
            let changed: Vec<Cidr> = cidrs_added.iter().chain(&cidrs_removed).copied().collect();
            for e in self.cluster.endpoints.values() {
                if e.ips
                    .iter()
                    .any(|ip| changed.iter().any(|c| c.contains_ip(ip)))
                {
                    affected.insert(e.key.clone());
                }
            }
        }
        let mut new_keys: Vec<(String, Option<Arc<IdentityKey>>)> = Vec::new();
        let mut ns_label_cache: FxHashMap<String, (Arc<str>, Arc<Labels>)> = FxHashMap::default();
        new_keys.reserve(affected.len());
        // Endpoints come in key order, so the pods of one workload are neighbours and
        // usually share the previous endpoint's identity key: reuse it when the facts match.
        let mut prev: Option<Arc<IdentityKey>> = None;
        for k in affected {
            let key = self.cluster.endpoints.get(&k).map(|e| {
                if let Some(p) = prev.as_ref().filter(|p| self.same_identity_facts(p, e)) {
                    return p.clone();
                }
                let (ns, nsl) = match ns_label_cache.get(e.namespace.as_str()) {
                    Some(v) => v.clone(),
                    None => {
                        let v = (
                            Arc::<str>::from(e.namespace.as_str()),
                            Arc::new(self.cluster.namespace_labels(&e.namespace)),
                        );
                        ns_label_cache.insert(e.namespace.clone(), v.clone());
                        v
                    }
                };
                let key = Arc::new(self.identity_key(e, ns, nsl));
                prev = Some(key.clone());
                key
            });
            new_keys.push((k, key));
        }
        // Deterministic numbering: unseen keys are allocated in sorted order.
        let mut unseen: Vec<Arc<IdentityKey>> = new_keys
            .iter()
            .filter_map(|(_, k)| k.clone())
            .filter(|k| self.identities.lookup(k).is_none())
            .collect();
        unseen.sort();
        unseen.dedup();
        for k in unseen {
            let (id, _) = self.identities.acquire(k.clone())?;
            // The allocation reference is dropped below once endpoints hold theirs.
            added_ids.push(id);
            let info = IdentityInfo::Cluster(k.clone());
            changed_selectors.extend(self.selectors.add_identity(id, &info));
            for p in &k.ports {
                self.port_names
                    .entry(p.name.clone())
                    .or_default()
                    .insert(id);
                if let Some(users) = self.any_peer_named.get(&p.name) {
                    for u in users {
                        self.mark_subjects(u, &mut dirty);
                    }
                }
            }
        }
        let fresh: FxHashSet<u32> = added_ids.iter().copied().collect();
        let mut endpoint_upserts = Vec::new();
        let mut endpoint_deletes = Vec::new();
        let mut ip_touched: BTreeSet<IpAddr> = BTreeSet::new();
        // Acquire every new reference before releasing any old one, so an identity that
        // moves from one endpoint to another in the same batch keeps its number.
        let mut acquired: Vec<(String, Option<u32>)> = Vec::with_capacity(new_keys.len());
        for (ep, key) in new_keys {
            let id = match key {
                Some(k) => Some(self.identities.acquire(k)?.0),
                None => None,
            };
            acquired.push((ep, id));
        }
        for (ep, new_id) in acquired {
            let old_id = self.endpoint_ids.get(&ep).copied();
            for ip in old_ips.remove(&ep).unwrap_or_default() {
                if let Some(set) = self.ip_owners.get_mut(&ip) {
                    set.remove(&ep);
                    if set.is_empty() {
                        self.ip_owners.remove(&ip);
                    }
                }
                ip_touched.insert(ip);
            }
            // A host-network pod's address is its node's: it claims no ipcache entry.
            if let Some(e) = self.cluster.endpoints.get(&ep).filter(|e| !e.host_network) {
                for ip in &e.ips {
                    self.ip_owners.entry(*ip).or_default().insert(ep.clone());
                    ip_touched.insert(*ip);
                }
            }
            if let Some(old) = old_id {
                self.release_identity(old, &mut changed_selectors, &mut removed_ids, &mut dirty);
            }
            match new_id {
                Some(id) => {
                    if old_id != Some(id) {
                        endpoint_upserts.push((ep.clone(), id));
                    }
                    self.endpoint_ids.insert(ep, id);
                }
                None => {
                    self.endpoint_ids.remove(&ep);
                    if old_id.is_some() {
                        endpoint_deletes.push(ep);
                    }
                }
            }
        }
        // Drop the allocation references taken for fresh identities.
        for id in &fresh {
            if Reserved::from_id(*id).is_none() && *id < abi::IDENTITY_CIDR_MIN {
                self.release_identity(*id, &mut changed_selectors, &mut removed_ids, &mut dirty);
            }
        }
        let removed_set: FxHashSet<u32> = removed_ids.iter().copied().collect();
        let added_ids: Vec<u32> = added_ids
            .into_iter()
            .filter(|i| !removed_set.contains(i))
            .collect();

        // 6. Dirty identities.
        for s in &changed_selectors {
            if let Some(users) = self.peer_users.get(s) {
                for u in users {
                    self.mark_subjects(u, &mut dirty);
                }
            }
        }
        for r in &changed_policies {
            self.mark_subjects(r, &mut dirty);
        }
        for id in &added_ids {
            if *id < abi::IDENTITY_CIDR_MIN {
                dirty.insert(*id);
            }
        }

        // 7. Recompile and diff. Compiling is read-only on the engine, so large batches
        //    split across the available cores.
        let dirty: Vec<u32> = dirty
            .into_iter()
            .filter(|id| !removed_set.contains(id) && self.identities.key(*id).is_some())
            .collect();
        let compiled = self.compile_many(&dirty);
        let mut diff = MapDiff::default();
        for (id, new) in dirty.into_iter().zip(compiled) {
            let old = self.compiled.get(&id).cloned();
            match &old {
                None => {
                    diff.policies_created.push(id);
                    for (k, v) in &new.entries {
                        diff.policy_upserts.push((id, *k, *v));
                    }
                }
                Some(old) => diff_entries(id, &old.entries, &new.entries, &mut diff),
            }
            if old.as_deref() != Some(&new) {
                self.compiled.insert(id, Arc::new(new));
            }
        }
        for id in &removed_ids {
            if self.compiled.remove(id).is_some() {
                diff.policies_removed.push(*id);
            }
        }

        // 8. ipcache.
        let mut keys: BTreeSet<Cidr> = ip_touched.iter().map(|ip| Cidr::host(*ip)).collect();
        keys.extend(
            cidrs_added
                .iter()
                .chain(&cidrs_removed)
                .filter(|c| c.len() > 0),
        );
        for c in keys {
            let want = self.desired_ipcache(&c);
            let have = self.ipcache.get(&c).copied();
            match (have, want) {
                (h, Some(w)) if h != Some(w) => {
                    self.ipcache.insert(c, w);
                    diff.ipcache_upserts.push((c, w));
                }
                (Some(_), None) => {
                    self.ipcache.remove(&c);
                    diff.ipcache_deletes.push(c);
                }
                _ => {}
            }
        }

        diff.endpoint_upserts = endpoint_upserts;
        diff.endpoint_deletes = endpoint_deletes;
        diff.identities_added = added_ids;
        diff.identities_removed = removed_ids;
        Ok(diff)
    }

    /// Marks every identity a policy selects as needing a recompile.
    fn mark_subjects(&self, r: &PolicyRef, dirty: &mut BTreeSet<u32>) {
        if let Some(bm) = self
            .policies
            .get(r)
            .and_then(|st| self.selectors.selected(st.subject))
        {
            dirty.extend(bm.iter());
        }
    }

    fn release_identity(
        &mut self,
        id: u32,
        changed: &mut BTreeSet<SelectorId>,
        removed: &mut Vec<u32>,
        dirty: &mut BTreeSet<u32>,
    ) {
        let Some(key) = self.identities.release(id) else {
            return;
        };
        changed.extend(
            self.selectors
                .remove_identity(id, &IdentityInfo::Cluster(key.clone())),
        );
        for p in &key.ports {
            if let Some(bm) = self.port_names.get_mut(&p.name) {
                bm.remove(id);
                if bm.is_empty() {
                    self.port_names.remove(&p.name);
                }
            }
            if let Some(users) = self.any_peer_named.get(&p.name) {
                for u in users {
                    self.mark_subjects(u, dirty);
                }
            }
        }
        removed.push(id);
    }

    fn recompute_cidr_lens(&mut self) {
        self.cidr_lens_v4 = 0;
        self.cidr_lens_v6 = [0; 3];
        for c in self.cidr_refs.keys() {
            let l = c.len() as usize;
            if c.is_ipv4() {
                self.cidr_lens_v4 |= 1 << l;
            } else {
                self.cidr_lens_v6[l / 64] |= 1 << (l % 64);
            }
        }
    }

    /// The policy CIDRs that contain `ip`, shortest first. Prefixes of one address sort by
    /// length, so this is also `Cidr` order. Only lengths some policy CIDR has are tried.
    fn containing_cidrs_iter<'a>(&'a self, ip: &'a IpAddr) -> impl Iterator<Item = Cidr> + 'a {
        let max = crate::cidr::max_len(ip) as usize;
        (0..=max)
            .filter(move |&l| {
                if ip.is_ipv4() {
                    self.cidr_lens_v4 & (1 << l) != 0
                } else {
                    self.cidr_lens_v6[l / 64] & (1 << (l % 64)) != 0
                }
            })
            .filter_map(move |l| Cidr::new(*ip, l as u8))
            .filter(move |c| self.cidr_refs.contains_key(c))
    }

    fn containing_cidrs(&self, ip: &IpAddr) -> Vec<Cidr> {
        self.containing_cidrs_iter(ip).collect()
    }

    /// Whether `e` would get exactly `key` (without building a key for it).
    fn same_identity_facts(&self, key: &IdentityKey, e: &Endpoint) -> bool {
        if *key.namespace != *e.namespace || key.ports != e.ports {
            return false;
        }
        let filter = &self.config.label_filter;
        let mut mine = e.labels.iter().filter(|(k, _)| !filter.excludes(k));
        let mut theirs = key.labels.iter();
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => break,
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
        let ips: &[IpAddr] = if self.config.ipblocks_select_pods {
            &e.ips
        } else {
            &[]
        };
        match (ips, key.cidr_sets.as_slice()) {
            (ips, []) => ips.iter().all(|ip| self.containing_cidrs_match(ip, &[])),
            ([ip], [set]) => self.containing_cidrs_match(ip, set),
            _ => false,
        }
    }

    /// `containing_cidrs(ip) == set`, without allocating.
    fn containing_cidrs_match(&self, ip: &IpAddr, set: &[Cidr]) -> bool {
        self.containing_cidrs_iter(ip).eq(set.iter().copied())
    }

    fn identity_key(&self, e: &Endpoint, ns: Arc<str>, ns_labels: Arc<Labels>) -> IdentityKey {
        let ips: &[IpAddr] = if self.config.ipblocks_select_pods {
            &e.ips
        } else {
            &[]
        };
        let mut cidr_sets: Vec<Vec<Cidr>> = ips
            .iter()
            .map(|ip| self.containing_cidrs(ip))
            .filter(|s| !s.is_empty())
            .collect();
        cidr_sets.sort();
        cidr_sets.dedup();
        IdentityKey {
            namespace: ns,
            namespace_labels: ns_labels,
            labels: self.config.label_filter.apply(&e.labels),
            ports: e.ports.clone(),
            cidr_sets,
        }
    }

    fn all_identities(&self) -> Vec<(u32, IdentityInfo)> {
        let mut v: Vec<(u32, IdentityInfo)> = Reserved::ALL
            .iter()
            .map(|r| (r.id(), IdentityInfo::Reserved(*r)))
            .collect();
        v.extend(
            self.identities
                .cluster_ids()
                .map(|(i, k)| (i, IdentityInfo::Cluster(k.clone()))),
        );
        v.extend(
            self.identities
                .cidr_ids()
                .map(|(i, c)| (i, IdentityInfo::Cidr(*c))),
        );
        v
    }

    fn acquire_selector(
        &mut self,
        key: SelectorKey,
        all: &mut Option<Vec<(u32, IdentityInfo)>>,
    ) -> SelectorId {
        if self.selectors.contains(&key) {
            return self.selectors.acquire(key, std::iter::empty()).0;
        }
        let ids = all.get_or_insert_with(|| self.all_identities());
        self.selectors.acquire(key, ids.iter().cloned()).0
    }

    fn register_policy(&mut self, r: &PolicyRef, p: Arc<Policy>) -> PolicyState {
        let mut all: Option<Vec<(u32, IdentityInfo)>> = None;
        let subject = self.acquire_selector(
            SelectorKey::Endpoints {
                namespaces: crate::model::NamespaceScope::Own(p.namespace.clone()),
                pods: p.pod_selector.clone(),
            },
            &mut all,
        );
        let mut rules: [Vec<(RulePeers, u32)>; 2] = [Vec::new(), Vec::new()];
        for dir in Direction::BOTH {
            for (i, rule) in p.rules(dir).unwrap_or(&[]).iter().enumerate() {
                let id = self.rules.acquire(RuleRef {
                    policy: r.clone(),
                    direction: dir,
                    index: i,
                });
                let peers = match &rule.peers {
                    Peers::Any => {
                        if dir == Direction::Egress {
                            for ps in &rule.ports {
                                if let PortMatch::Named(n) = &ps.port {
                                    self.any_peer_named
                                        .entry(n.clone())
                                        .or_default()
                                        .insert(r.clone());
                                }
                            }
                        }
                        RulePeers::Any
                    }
                    Peers::List(list) => {
                        let mut sels = Vec::new();
                        for peer in list {
                            let key = match peer {
                                Peer::Endpoints { namespaces, pods } => SelectorKey::Endpoints {
                                    namespaces: namespaces.clone(),
                                    pods: pods.clone(),
                                },
                                Peer::IpBlock { cidr, except } => {
                                    let mut except = except.clone();
                                    except.sort();
                                    except.dedup();
                                    SelectorKey::IpBlock {
                                        cidr: *cidr,
                                        except,
                                    }
                                }
                            };
                            let s = self.acquire_selector(key, &mut all);
                            self.peer_users.entry(s).or_default().insert(r.clone());
                            sels.push(s);
                        }
                        RulePeers::Selectors(sels)
                    }
                };
                rules[dir as usize].push((peers, id));
            }
        }
        PolicyState {
            policy: p,
            subject,
            rules,
        }
    }

    fn unregister_policy(&mut self, r: &PolicyRef, s: &PolicyState, replacement: Option<&Policy>) {
        let sels: Vec<SelectorId> = s.selectors().collect();
        for sel in sels {
            let still_used = self
                .policies
                .get(r)
                .is_some_and(|n| n.selectors().any(|x| x == sel));
            if !still_used && let Some(u) = self.peer_users.get_mut(&sel) {
                u.remove(r);
                if u.is_empty() {
                    self.peer_users.remove(&sel);
                }
            }
            self.selectors.release(sel);
        }
        self.selectors.release(s.subject);
        for dir in Direction::BOTH {
            let keep = replacement
                .and_then(|p| p.rules(dir))
                .map(|r| r.len())
                .unwrap_or(0);
            for i in keep..s.rules[dir as usize].len() {
                self.rules.release(&RuleRef {
                    policy: r.clone(),
                    direction: dir,
                    index: i,
                });
            }
            for rule in s.policy.rules(dir).unwrap_or(&[]) {
                if dir == Direction::Egress && rule.peers == Peers::Any {
                    for ps in &rule.ports {
                        if let PortMatch::Named(n) = &ps.port {
                            let still = self.policies.get(r).is_some_and(|st| {
                                st.policy.egress.iter().flatten().any(|ru| {
                                    ru.peers == Peers::Any
                                        && ru
                                            .ports
                                            .iter()
                                            .any(|p| p.port == PortMatch::Named(n.clone()))
                                })
                            });
                            if !still && let Some(u) = self.any_peer_named.get_mut(n) {
                                u.remove(r);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The ipcache entry a prefix should have: an endpoint's identity for its host prefix,
    /// else the CIDR identity of a policy CIDR.
    fn desired_ipcache(&self, c: &Cidr) -> Option<u32> {
        if c.len() == crate::cidr::max_len(&c.addr())
            && let Some(owner) = self.ip_owners.get(&c.addr()).and_then(|s| s.iter().next())
        {
            return self.endpoint_ids.get(owner).copied();
        }
        if c.len() == 0 {
            return Some(if c.is_ipv4() {
                Reserved::WorldIpv4.id()
            } else {
                Reserved::WorldIpv6.id()
            });
        }
        self.identities.cidr_identity(c)
    }

    fn compile_many(&self, ids: &[u32]) -> Vec<CompiledPolicy> {
        const PARALLEL_MIN: usize = 512;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        if ids.len() < PARALLEL_MIN || threads < 2 {
            return ids.iter().map(|id| self.compile_identity(*id)).collect();
        }
        let chunk = ids.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = ids
                .chunks(chunk)
                .map(|c| {
                    s.spawn(move || {
                        c.iter()
                            .map(|id| self.compile_identity(*id))
                            .collect::<Vec<_>>()
                    })
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
                return ids.iter().map(|id| self.compile_identity(*id)).collect();
            }
            out
        })
    }

    /// Compiles the policy map of one cluster identity.
    fn compile_identity(&self, id: u32) -> CompiledPolicy {
        let Some(key) = self.identities.key(id) else {
            return CompiledPolicy::default();
        };
        // (slot identity, direction, prefix, rule id)
        let mut contribs: Vec<(u32, u8, PortPrefix, u32)> = Vec::new();
        let mut isolated: [Vec<PolicyRef>; 2] = [Vec::new(), Vec::new()];
        let empty = BTreeSet::new();
        let candidates = self.policies_by_ns.get(&*key.namespace).unwrap_or(&empty);
        for pref in candidates {
            let Some(st) = self.policies.get(pref) else {
                continue;
            };
            if !self
                .selectors
                .selected(st.subject)
                .is_some_and(|b| b.contains(id))
            {
                continue;
            }
            for dir in Direction::BOTH {
                let Some(rules) = st.policy.rules(dir) else {
                    continue;
                };
                isolated[dir as usize].push(pref.clone());
                let d = dir.abi();
                for (rule, (peers, rule_id)) in rules.iter().zip(&st.rules[dir as usize]) {
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
                    let mut fixed: Vec<PortPrefix> = Vec::new();
                    let mut named: Vec<(&str, Protocol)> = Vec::new();
                    if rule.ports.is_empty() {
                        fixed.push(PortPrefix::ANY);
                    }
                    for ps in &rule.ports {
                        let proto = ps.protocol.0;
                        match &ps.port {
                            PortMatch::All => fixed.push(PortPrefix {
                                proto,
                                port: 0,
                                bits: 0,
                            }),
                            PortMatch::Range(lo, hi) => {
                                for (port, bits) in port_range_prefixes(*lo, *hi) {
                                    fixed.push(PortPrefix { proto, port, bits });
                                }
                            }
                            PortMatch::Named(n) => match dir {
                                // Ingress: the destination is this endpoint.
                                Direction::Ingress => {
                                    if let Some(port) =
                                        resolve_named_port(&key.ports, n, ps.protocol)
                                    {
                                        fixed.push(PortPrefix {
                                            proto,
                                            port,
                                            bits: 16,
                                        });
                                    }
                                }
                                Direction::Egress => named.push((n.as_str(), ps.protocol)),
                            },
                        }
                    }
                    match &union {
                        None => {
                            for f in &fixed {
                                contribs.push((abi::IDENTITY_UNKNOWN, d, *f, *rule_id));
                            }
                        }
                        Some(u) => {
                            if !fixed.is_empty() {
                                for peer in u.iter() {
                                    for f in &fixed {
                                        contribs.push((peer, d, *f, *rule_id));
                                    }
                                }
                            }
                        }
                    }
                    // Egress named ports resolve against each destination identity.
                    for (n, proto) in named {
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
                                    peer,
                                    d,
                                    PortPrefix {
                                        proto: proto.0,
                                        port,
                                        bits: 16,
                                    },
                                    *rule_id,
                                ));
                            }
                        }
                    }
                }
            }
        }
        for dir in Direction::BOTH {
            if isolated[dir as usize].is_empty() {
                contribs.push((
                    abi::IDENTITY_UNKNOWN,
                    dir.abi(),
                    PortPrefix::ANY,
                    abi::RULE_ID_NOT_ISOLATED,
                ));
            }
        }
        let [ingress_isolated_by, egress_isolated_by] = isolated;
        CompiledPolicy {
            entries: materialize(contribs),
            ingress_isolated_by,
            egress_isolated_by,
        }
    }
}

fn allow_value(rule_id: u32) -> PolicyValue {
    PolicyValue {
        rule_id,
        proxy_port_be: 0,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        verdict: abi::POLICY_VERDICT_ALLOW,
        flags: 0,
        pad: 0,
    }
}

/// Folds contributions into LPM entries: within one (peer identity, direction) slot, each
/// distinct prefix gets the best value over every contribution whose prefix contains it,
/// so the longest match the kernel returns already carries the slot's answer.
fn materialize(mut contribs: Vec<(u32, u8, PortPrefix, u32)>) -> Vec<(EntryKey, PolicyValue)> {
    contribs.sort_unstable();
    contribs.dedup();
    let mut out: Vec<(EntryKey, PolicyValue)> = Vec::with_capacity(contribs.len());
    let mut i = 0;
    while i < contribs.len() {
        let (slot, dir) = (contribs[i].0, contribs[i].1);
        let mut j = i;
        while j < contribs.len() && contribs[j].0 == slot && contribs[j].1 == dir {
            j += 1;
        }
        let group = &contribs[i..j];
        let mut last: Option<PortPrefix> = None;
        for (_, _, p, _) in group {
            if last == Some(*p) {
                continue;
            }
            last = Some(*p);
            let mut best: Option<PolicyValue> = None;
            for (_, _, q, rule) in group {
                if q.contains(p) {
                    let v = allow_value(*rule);
                    if best.is_none_or(|b| abi::value_beats(&v, &b)) {
                        best = Some(v);
                    }
                }
            }
            if let Some(v) = best {
                out.push((p.entry_key(slot, dir), v));
            }
        }
        i = j;
    }
    out.sort_unstable_by_key(|a| a.0);
    out
}

fn diff_entries(
    id: u32,
    old: &[(EntryKey, PolicyValue)],
    new: &[(EntryKey, PolicyValue)],
    diff: &mut MapDiff,
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
                    diff.policy_upserts.push((id, n.0, n.1));
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                diff.policy_deletes.push((id, o.0));
                i += 1;
            }
            (Some(_), Some(n)) => {
                diff.policy_upserts.push((id, n.0, n.1));
                j += 1;
            }
            (Some(o), None) => {
                diff.policy_deletes.push((id, o.0));
                i += 1;
            }
            (None, Some(n)) => {
                diff.policy_upserts.push((id, n.0, n.1));
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// Every object of a cluster as one batch, in a deterministic order.
pub fn into_changes(cluster: Cluster) -> Vec<Change> {
    let mut v: Vec<Change> = Vec::with_capacity(
        cluster.namespaces.len() + cluster.policies.len() + cluster.endpoints.len(),
    );
    v.extend(
        cluster
            .namespaces
            .into_values()
            .map(Change::UpsertNamespace),
    );
    v.extend(cluster.policies.into_values().map(Change::UpsertPolicy));
    v.extend(cluster.endpoints.into_values().map(Change::UpsertEndpoint));
    v
}

/// Every object of a cluster as one batch, in a deterministic order.
pub fn changes_for(cluster: &Cluster) -> Vec<Change> {
    let mut v: Vec<Change> = Vec::new();
    v.extend(
        cluster
            .namespaces
            .values()
            .cloned()
            .map(Change::UpsertNamespace),
    );
    v.extend(cluster.policies.values().cloned().map(Change::UpsertPolicy));
    v.extend(
        cluster
            .endpoints
            .values()
            .cloned()
            .map(Change::UpsertEndpoint),
    );
    v
}

use crate::k8s::Labels;
