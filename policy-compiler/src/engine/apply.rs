//! One batch of changes: model, identities, selector cache, recompiles, ipcache.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::abi::{self};
use crate::cidr::Cidr;
use crate::hash::{FxHashMap, FxHashSet};
use crate::identity::{IdentityInfo, IdentityKey, Reserved};
use crate::k8s::Labels;
use crate::model::{Endpoint, Policy};
use crate::rules::PolicyRef;
use crate::selector::SelectorId;

use super::diff::diff_entries;
use super::*;

/// Policy -> (before, after) over the whole batch.
type Versions = (Option<Arc<Policy>>, Option<Arc<Policy>>);

/// What one batch touched, passed from step to step of [`Engine::apply`].
#[derive(Debug, Default)]
struct Batch {
    touched_eps: BTreeSet<String>,
    touched_ns: BTreeSet<String>,
    policy_changes: BTreeMap<PolicyRef, Versions>,
    old_ips: FxHashMap<String, Vec<IpAddr>>,
    cidrs_added: Vec<Cidr>,
    cidrs_removed: Vec<Cidr>,
    dirty: BTreeSet<u32>,
    changed_policies: BTreeSet<PolicyRef>,
    changed_selectors: BTreeSet<SelectorId>,
    added_ids: Vec<u32>,
    removed_ids: Vec<u32>,
    endpoint_upserts: Vec<(String, u32)>,
    endpoint_deletes: Vec<String>,
    ip_touched: BTreeSet<IpAddr>,
    removed_set: FxHashSet<u32>,
    services_touched: BTreeSet<String>,
}

impl Engine {
    /// Applies one batch of changes and returns the map operations it implies.
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<MapDiff, EngineError> {
        self.revision += 1;
        let mut b = Batch::default();
        self.apply_model(&mut b, changes);
        self.update_policy_cidrs(&mut b);
        self.register_changed_policies(&mut b);
        self.update_cidr_identities(&mut b)?;
        self.update_endpoint_identities(&mut b)?;
        self.mark_dirty(&mut b);
        let mut diff = MapDiff::default();
        self.recompile_dirty(&mut b, &mut diff);
        self.update_ipcache(&mut b, &mut diff);
        diff.endpoint_upserts = b.endpoint_upserts;
        diff.endpoint_deletes = b.endpoint_deletes;
        diff.identities_added = b.added_ids;
        diff.identities_removed = b.removed_ids;
        self.services_pending
            .extend(b.services_touched.iter().cloned());
        diff.services_touched = b.services_touched;
        Ok(diff)
    }

    /// The changes that take the model back to where it is now after `changes`, when they
    /// are all Service and EndpointSlice changes (those touch no identity, policy or
    /// ipcache entry, so applying the undo is the whole way back); `None` for any other
    /// batch. The agent keeps this instead of a copy of the engine for a service change
    /// the maps may refuse.
    pub fn undo_for(&self, changes: &[Change]) -> Option<Vec<Change>> {
        let mut undo = Vec::new();
        let mut services = BTreeSet::new();
        let mut slices = BTreeSet::new();
        let c = &self.cluster;
        for change in changes {
            match change {
                Change::UpsertService(svc) => {
                    let key = (svc.namespace.clone(), svc.name.clone());
                    if services.insert(key.clone()) {
                        undo.push(match c.services.get(&key) {
                            Some(old) => Change::UpsertService(old.clone()),
                            None => Change::DeleteService(key),
                        });
                    }
                }
                Change::DeleteService(key) => {
                    if services.insert(key.clone()) {
                        undo.extend(c.services.get(key).cloned().map(Change::UpsertService));
                    }
                }
                Change::UpsertEndpointSlice(es) => {
                    let key = (es.namespace.clone(), es.name.clone());
                    if slices.insert(key.clone()) {
                        undo.push(match c.endpoint_slices.get(&key) {
                            Some(old) => Change::UpsertEndpointSlice(old.clone()),
                            None => Change::DeleteEndpointSlice(key),
                        });
                    }
                }
                Change::DeleteEndpointSlice(key) => {
                    if slices.insert(key.clone()) {
                        undo.extend(
                            c.endpoint_slices
                                .get(key)
                                .cloned()
                                .map(Change::UpsertEndpointSlice),
                        );
                    }
                }
                _ => return None,
            }
        }
        Some(undo)
    }

    /// Applies the changes to the model, recording what they touch.
    fn apply_model(&mut self, b: &mut Batch, changes: Vec<Change>) {
        // 1. The model.
        for c in changes {
            match c {
                Change::UpsertNamespace(ns) => {
                    b.touched_ns.insert(ns.name.clone());
                    self.cluster.namespaces.insert(ns.name.clone(), ns);
                }
                Change::DeleteNamespace(name) => {
                    b.touched_ns.insert(name.clone());
                    self.cluster.namespaces.remove(&name);
                }
                Change::UpsertEndpoint(ep) => {
                    let key = ep.key.clone();
                    b.services_touched.insert(ep.namespace.clone());
                    if let Some(prev) = self.cluster.endpoints.insert(key.clone(), ep) {
                        b.services_touched.insert(prev.namespace.clone());
                        if !prev.ips.is_empty() {
                            b.old_ips.entry(key.clone()).or_insert(prev.ips);
                        }
                    }
                    b.touched_eps.insert(key);
                }
                Change::DeleteEndpoint(key) => {
                    if let Some(prev) = self.cluster.endpoints.remove(&key) {
                        b.services_touched.insert(prev.namespace.clone());
                        if !prev.ips.is_empty() {
                            b.old_ips.entry(key.clone()).or_insert(prev.ips);
                        }
                    }
                    b.touched_eps.insert(key);
                }
                Change::UpsertPolicy(p) => {
                    let r = p.pref();
                    let prev = self.cluster.policies.insert(r.clone(), p.clone());
                    let e = b.policy_changes.entry(r).or_insert((prev, None));
                    e.1 = Some(p);
                }
                Change::DeletePolicy(r) => {
                    let prev = self.cluster.policies.remove(&r);
                    let e = b.policy_changes.entry(r).or_insert((prev, None));
                    e.1 = None;
                }
                Change::UpsertService(svc) => {
                    b.services_touched.insert(svc.namespace.clone());
                    self.cluster
                        .services
                        .insert((svc.namespace.clone(), svc.name.clone()), svc);
                }
                Change::DeleteService(key) => {
                    b.services_touched.insert(key.0.clone());
                    self.cluster.services.remove(&key);
                }
                Change::UpsertEndpointSlice(es) => {
                    b.services_touched.insert(es.namespace.clone());
                    self.cluster
                        .endpoint_slices
                        .insert((es.namespace.clone(), es.name.clone()), es);
                }
                Change::DeleteEndpointSlice(key) => {
                    b.services_touched.insert(key.0.clone());
                    self.cluster.endpoint_slices.remove(&key);
                }
            }
        }
        b.policy_changes.retain(|_, (old, new)| old != new);
    }

    /// Reference counts of policy CIDRs: which appear and which go.
    fn update_policy_cidrs(&mut self, b: &mut Batch) {
        // 2. Policy CIDRs: the ipcache holds them and pod identities record membership.
        let mut cidr_delta: BTreeMap<Cidr, i64> = BTreeMap::new();
        for (old, new) in b.policy_changes.values() {
            for c in old.iter().flat_map(|p| p.cidrs()) {
                *cidr_delta.entry(c).or_default() -= 1;
            }
            for c in new.iter().flat_map(|p| p.cidrs()) {
                *cidr_delta.entry(c).or_default() += 1;
            }
        }
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
                b.cidrs_added.push(c);
            } else if before > 0 && after == 0 {
                b.cidrs_removed.push(c);
            }
        }
        if !b.cidrs_added.is_empty() || !b.cidrs_removed.is_empty() {
            self.recompute_cidr_lens();
        }
    }

    /// Registers new and changed policies (selectors are evaluated over the current identities; identity changes below reach them through the cache), then releases what the old versions held.
    fn register_changed_policies(&mut self, b: &mut Batch) {
        // 3. Register new and changed policies (selectors are evaluated over the current
        //    identities; identity changes below reach them through the cache), then release
        //    what the old versions held.
        for (r, (_, new)) in &b.policy_changes {
            b.changed_policies.insert(r.clone());
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
                    b.dirty.extend(bm.iter());
                }
                self.unregister_policy(r, &s, new.as_deref());
            }
            if new.is_none()
                && let Some(set) = self.policies_by_ns.get_mut(&r.namespace)
            {
                set.remove(r);
            }
        }
    }

    /// CIDR identities of the CIDRs that appeared or went.
    fn update_cidr_identities(&mut self, b: &mut Batch) -> Result<(), EngineError> {
        // 4. CIDR identities.
        for c in &b.cidrs_added {
            if c.len() == 0 {
                continue; // /0 is the world identity of its family
            }
            let id = self.identities.acquire_cidr(*c)?;
            b.changed_selectors
                .extend(self.selectors.add_identity(id, &IdentityInfo::Cidr(*c)));
            b.added_ids.push(id);
        }
        for c in &b.cidrs_removed {
            if let Some(id) = self.identities.cidr_identity(c) {
                b.changed_selectors
                    .extend(self.selectors.remove_identity(id, &IdentityInfo::Cidr(*c)));
                self.identities.release_cidr(c);
                b.removed_ids.push(id);
            }
        }
        Ok(())
    }

    /// Identity keys of the affected endpoints: allocation, endpoint entries, address owners.
    fn update_endpoint_identities(&mut self, b: &mut Batch) -> Result<(), EngineError> {
        // 5. Endpoint identities.
        let mut affected: BTreeSet<String> = std::mem::take(&mut b.touched_eps);
        for ns in &b.touched_ns {
            let prefix = format!("{ns}/");
            for k in self.cluster.endpoints.range(prefix.clone()..) {
                if !k.0.starts_with(&prefix) {
                    break;
                }
                affected.insert(k.0.clone());
            }
        }
        if !b.cidrs_added.is_empty() || !b.cidrs_removed.is_empty() {
            let changed: Vec<Cidr> = b
                .cidrs_added
                .iter()
                .chain(&b.cidrs_removed)
                .copied()
                .collect();
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
            b.added_ids.push(id);
            let info = IdentityInfo::Cluster(k.clone());
            b.changed_selectors
                .extend(self.selectors.add_identity(id, &info));
            for p in &k.ports {
                self.port_names
                    .entry(p.name.clone())
                    .or_default()
                    .insert(id);
                if let Some(users) = self.any_peer_named.get(&p.name) {
                    for u in users {
                        self.mark_subjects(u, &mut b.dirty);
                    }
                }
            }
        }
        let fresh: FxHashSet<u32> = b.added_ids.iter().copied().collect();
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
            for ip in b.old_ips.remove(&ep).unwrap_or_default() {
                if let Some(set) = self.ip_owners.get_mut(&ip) {
                    set.remove(&ep);
                    if set.is_empty() {
                        self.ip_owners.remove(&ip);
                    }
                }
                b.ip_touched.insert(ip);
            }
            // A host-network pod's address is its node's: it claims no ipcache entry.
            if let Some(e) = self.cluster.endpoints.get(&ep).filter(|e| !e.host_network) {
                for ip in &e.ips {
                    self.ip_owners.entry(*ip).or_default().insert(ep.clone());
                    b.ip_touched.insert(*ip);
                }
            }
            if let Some(old) = old_id {
                self.release_identity(
                    old,
                    &mut b.changed_selectors,
                    &mut b.removed_ids,
                    &mut b.dirty,
                );
            }
            match new_id {
                Some(id) => {
                    if old_id != Some(id) {
                        b.endpoint_upserts.push((ep.clone(), id));
                    }
                    self.endpoint_ids.insert(ep, id);
                }
                None => {
                    self.endpoint_ids.remove(&ep);
                    if old_id.is_some() {
                        b.endpoint_deletes.push(ep);
                    }
                }
            }
        }
        // Drop the allocation references taken for fresh identities.
        for id in &fresh {
            if Reserved::from_id(*id).is_none() && *id < abi::IDENTITY_CIDR_MIN {
                self.release_identity(
                    *id,
                    &mut b.changed_selectors,
                    &mut b.removed_ids,
                    &mut b.dirty,
                );
            }
        }
        b.removed_set = b.removed_ids.iter().copied().collect();
        b.added_ids = std::mem::take(&mut b.added_ids)
            .into_iter()
            .filter(|i| !b.removed_set.contains(i))
            .collect();
        Ok(())
    }

    /// Identities whose policy must be recompiled.
    fn mark_dirty(&mut self, b: &mut Batch) {
        // 6. Dirty identities.
        for s in &b.changed_selectors {
            if let Some(users) = self.peer_users.get(s) {
                for u in users {
                    self.mark_subjects(u, &mut b.dirty);
                }
            }
        }
        for r in &b.changed_policies {
            self.mark_subjects(r, &mut b.dirty);
        }
        for id in &b.added_ids {
            if *id < abi::IDENTITY_CIDR_MIN {
                b.dirty.insert(*id);
            }
        }
    }

    /// Recompiles the dirty identities and diffs them.
    fn recompile_dirty(&mut self, b: &mut Batch, diff: &mut MapDiff) {
        // 7. Recompile and diff. Compiling is read-only on the engine, so large batches
        //    split across the available cores.
        let dirty: Vec<u32> = std::mem::take(&mut b.dirty)
            .into_iter()
            .filter(|id| !b.removed_set.contains(id) && self.identities.key(*id).is_some())
            .collect();
        let compiled = self.compile_many(&dirty);
        for (id, new) in dirty.into_iter().zip(compiled) {
            let changed = match self.compiled.get(&id) {
                None => {
                    diff.policies_created.push(id);
                    for (k, v) in &new.entries {
                        diff.policy_upserts.push((id, *k, *v));
                    }
                    true
                }
                Some(old) => {
                    // The entry diff already compares the entries; what it writes says
                    // whether they changed.
                    let before = diff.policy_upserts.len() + diff.policy_deletes.len();
                    diff_entries(id, &old.entries, &new.entries, diff);
                    diff.policy_upserts.len() + diff.policy_deletes.len() != before
                        || old.l7 != new.l7
                        || old.ingress_isolated_by != new.ingress_isolated_by
                        || old.egress_isolated_by != new.egress_isolated_by
                }
            };
            if changed {
                self.compiled.insert(id, Arc::new(new));
            }
        }
        for id in &b.removed_ids {
            if self.compiled.remove(id).is_some() {
                diff.policies_removed.push(*id);
            }
        }
    }

    /// The ipcache entries of touched addresses and CIDRs.
    fn update_ipcache(&mut self, b: &mut Batch, diff: &mut MapDiff) {
        // 8. ipcache.
        let mut keys: BTreeSet<Cidr> = b.ip_touched.iter().map(|ip| Cidr::host(*ip)).collect();
        keys.extend(
            b.cidrs_added
                .iter()
                .chain(&b.cidrs_removed)
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
    }

    /// Marks every identity a policy selects as needing a recompile.
    pub(super) fn mark_subjects(&self, r: &PolicyRef, dirty: &mut BTreeSet<u32>) {
        if let Some(bm) = self
            .policies
            .get(r)
            .and_then(|st| self.selectors.selected(st.subject))
        {
            dirty.extend(bm.iter());
        }
    }

    pub(super) fn release_identity(
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

    pub(super) fn recompute_cidr_lens(&mut self) {
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
    pub(super) fn containing_cidrs_iter<'a>(
        &'a self,
        ip: &'a IpAddr,
    ) -> impl Iterator<Item = Cidr> + 'a {
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

    pub(super) fn containing_cidrs(&self, ip: &IpAddr) -> Vec<Cidr> {
        self.containing_cidrs_iter(ip).collect()
    }

    /// Whether `e` would get exactly `key` (without building a key for it).
    pub(super) fn same_identity_facts(&self, key: &IdentityKey, e: &Endpoint) -> bool {
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
    pub(super) fn containing_cidrs_match(&self, ip: &IpAddr, set: &[Cidr]) -> bool {
        self.containing_cidrs_iter(ip).eq(set.iter().copied())
    }

    pub(super) fn identity_key(
        &self,
        e: &Endpoint,
        ns: Arc<str>,
        ns_labels: Arc<Labels>,
    ) -> IdentityKey {
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

    /// The ipcache entry a prefix should have: an endpoint's identity for its host prefix,
    /// else host for a node address, else the CIDR identity of a policy CIDR.
    pub(super) fn desired_ipcache(&self, c: &Cidr) -> Option<u32> {
        if c.len() == crate::cidr::max_len(&c.addr())
            && let Some(owner) = self.ip_owners.get(&c.addr()).and_then(|s| s.iter().next())
        {
            return self.endpoint_ids.get(owner).copied();
        }
        if c.len() == crate::cidr::max_len(&c.addr()) && self.config.is_host_address(&c.addr()) {
            return Some(Reserved::Host.id());
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
}
