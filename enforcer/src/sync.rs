//! Writing the policy core's diffs into the kernel maps.
//!
//! Each identity's policy lives in the policy map under slot = identity, so endpoints that
//! share an identity share one policy and a new pod of an existing identity is ready the
//! moment its endpoint entry is written.
//!
//! Order, and why it keeps every flow's verdict at "old" or "new" while a diff lands
//! (docs/datapath.md, "Updates"):
//! 1. policy entries added or changed, longest prefix first: when a lookup meets an entry
//!    of the new policy, every longer new entry that could match is already there;
//! 2. ipcache additions, then endpoint entries (an endpoint moves to a slot only after the
//!    slot is complete);
//! 3. endpoint removals, then policy entries removed, shortest prefix first (a surviving
//!    old entry always has its longer old siblings still present), then ipcache removals;
//! 4. the revision of every affected endpoint is bumped last: conntrack entries admitted
//!    under an older revision are decided once more against the final maps, so a revoked
//!    flow stops and a flow both policies allow never notices.

use std::collections::{BTreeMap, BTreeSet};

use policy_compiler::abi::{self, EndpointInfo};
use policy_compiler::engine::{Engine, MapDiff};

use crate::datapath::{Datapath, DatapathError};

/// Local endpoints: the endpoint key (`ns/pod`) of every pod on this node with its
/// host-side interface.
#[derive(Debug, Clone, Default)]
pub struct LocalEndpoints {
    by_key: BTreeMap<String, u32>,
}

impl LocalEndpoints {
    pub fn insert(&mut self, key: String, ifindex: u32) {
        self.by_key.insert(key, ifindex);
    }
    pub fn remove(&mut self, key: &str) -> Option<u32> {
        self.by_key.remove(key)
    }
    pub fn get(&self, key: &str) -> Option<u32> {
        self.by_key.get(key).copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &u32)> {
        self.by_key.iter()
    }
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub policy_writes: usize,
    pub policy_deletes: usize,
    pub ipcache_writes: usize,
    pub ipcache_deletes: usize,
    pub endpoints_written: usize,
}

/// Applies a diff. `revision` is the policy revision the endpoints record afterwards.
pub fn apply_diff(
    dp: &mut Datapath,
    engine: &Engine,
    diff: &MapDiff,
    local: &LocalEndpoints,
    revision: u32,
) -> Result<ApplyStats, DatapathError> {
    let mut stats = ApplyStats::default();

    let mut upserts: Vec<_> = diff.policy_upserts.iter().collect();
    upserts.sort_by_key(|(id, k, _)| (std::cmp::Reverse(k.prefixlen), *id, *k));
    for (id, key, value) in upserts {
        dp.upsert_policy(*id, key, value)?;
        stats.policy_writes += 1;
    }
    for (cidr, id) in &diff.ipcache_upserts {
        dp.upsert_ipcache(cidr, *id)?;
        stats.ipcache_writes += 1;
    }

    // Endpoints whose verdicts may change: new identity, changed policy, or any
    // peer-identity change (ipcache), which can change any flow of any endpoint.
    let touched_policies: BTreeSet<u32> = diff
        .policy_upserts
        .iter()
        .map(|(i, _, _)| *i)
        .chain(diff.policy_deletes.iter().map(|(i, _)| *i))
        .collect();
    let ipcache_changed = !diff.ipcache_upserts.is_empty() || !diff.ipcache_deletes.is_empty();
    let moved: BTreeMap<&str, u32> = diff
        .endpoint_upserts
        .iter()
        .map(|(k, i)| (k.as_str(), *i))
        .collect();
    for (key, ifindex) in local.iter() {
        let Some(identity) = engine.endpoint_identity(key) else {
            continue;
        };
        if moved.contains_key(key.as_str()) {
            // Points at its (complete) slot now, keeping its old revision: conntrack is
            // re-decided only in step 4, against the final maps.
            let prev = dp.endpoint(*ifindex)?.map(|e| e.revision);
            write_endpoint(dp, *ifindex, identity, prev.unwrap_or(revision))?;
            stats.endpoints_written += 1;
        }
    }
    for key in &diff.endpoint_deletes {
        if let Some(ifindex) = local.get(key) {
            // A local pod that left the model keeps its interface until deregistration:
            // it fails closed rather than keeping a stale policy.
            dp.remove_endpoint(ifindex)?;
        }
    }

    let mut deletes: Vec<_> = diff.policy_deletes.iter().collect();
    deletes.sort_by_key(|(id, k)| (k.prefixlen, *id, *k));
    for (id, key) in deletes {
        dp.delete_policy(*id, key)?;
        stats.policy_deletes += 1;
    }
    for cidr in &diff.ipcache_deletes {
        dp.delete_ipcache(cidr)?;
        stats.ipcache_deletes += 1;
    }

    for (key, ifindex) in local.iter() {
        let Some(identity) = engine.endpoint_identity(key) else {
            continue;
        };
        if ipcache_changed
            || touched_policies.contains(&identity)
            || moved.contains_key(key.as_str())
        {
            write_endpoint(dp, *ifindex, identity, revision)?;
            stats.endpoints_written += 1;
        }
    }
    Ok(stats)
}

/// Writes the full state of an engine into empty maps (first start, tests).
pub fn write_full(
    dp: &mut Datapath,
    engine: &Engine,
    local: &LocalEndpoints,
    revision: u32,
) -> Result<ApplyStats, DatapathError> {
    let mut diff = MapDiff::default();
    for (id, policy) in engine.compiled() {
        for (k, v) in &policy.entries {
            diff.policy_upserts.push((*id, *k, *v));
        }
    }
    for (cidr, id) in engine.ipcache() {
        diff.ipcache_upserts.push((*cidr, *id));
    }
    for (key, _) in local.iter() {
        if let Some(id) = engine.endpoint_identity(key) {
            diff.endpoint_upserts.push((key.clone(), id));
        }
    }
    apply_diff(dp, engine, &diff, local, revision)
}

/// Makes the maps equal to the engine's state, touching only what differs: used when an
/// enforcer restarts and adopts maps a previous run filled (their contents may be older
/// than the current manifests). Adds before deletes, as in [`apply_diff`].
pub fn reconcile(
    dp: &mut Datapath,
    engine: &Engine,
    local: &LocalEndpoints,
    revision: u32,
) -> Result<ApplyStats, DatapathError> {
    let mut diff = MapDiff::default();
    let have_policy: BTreeMap<(u32, policy_compiler::EntryKey), abi::PolicyValue> = dp
        .policy_entries()?
        .into_iter()
        .map(|(s, k, v)| ((s, k), v))
        .collect();
    let mut want_policy = BTreeSet::new();
    for (id, policy) in engine.compiled() {
        for (k, v) in &policy.entries {
            want_policy.insert((*id, *k));
            if have_policy.get(&(*id, *k)) != Some(v) {
                diff.policy_upserts.push((*id, *k, *v));
            }
        }
    }
    for (id, k) in have_policy.keys() {
        if !want_policy.contains(&(*id, *k)) {
            diff.policy_deletes.push((*id, *k));
        }
    }
    let have_ipc: BTreeMap<_, _> = dp.ipcache_entries()?.into_iter().collect();
    for (cidr, id) in engine.ipcache() {
        if have_ipc.get(cidr) != Some(id) {
            diff.ipcache_upserts.push((*cidr, *id));
        }
    }
    for cidr in have_ipc.keys() {
        if !engine.ipcache().contains_key(cidr) {
            diff.ipcache_deletes.push(*cidr);
        }
    }
    for (key, _) in local.iter() {
        if let Some(id) = engine.endpoint_identity(key) {
            diff.endpoint_upserts.push((key.clone(), id));
        }
    }
    // Endpoints in the map that are no longer local fail closed.
    let local_ifs: BTreeSet<u32> = local.iter().map(|(_, i)| *i).collect();
    for (ifindex, _) in dp.endpoints()? {
        if !local_ifs.contains(&ifindex) {
            dp.remove_endpoint(ifindex)?;
        }
    }
    apply_diff(dp, engine, &diff, local, revision)
}

/// Points an interface at its identity's policy slot, READY, at `revision`.
pub fn write_endpoint(
    dp: &mut Datapath,
    ifindex: u32,
    identity: u32,
    revision: u32,
) -> Result<(), DatapathError> {
    dp.set_endpoint(
        ifindex,
        &EndpointInfo {
            identity,
            policy_slot: identity,
            flags: abi::ENDPOINT_F_READY,
            revision,
        },
    )
}
