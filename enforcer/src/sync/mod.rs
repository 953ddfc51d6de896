//! Writing the policy core's state into the kernel maps: the sync layer executes the update
//! plan ([`policy_compiler::plan`]) through the [`Maps`] trait.
//!
//! # Contract
//!
//! - [`Synced`] is what the enforcer believes the maps hold (a mirror updated after every
//!   successful operation) and which slot holds which identity's policy.
//! - [`Synced::apply`] plans from that belief to a [`Target`] and executes the plan in order.
//!   Every prefix of a plan keeps each hook decision of every flow at its old or its new
//!   value (docs/datapath.md §7), so **a plan interrupted at any operation leaves the maps
//!   in a state where every flow is decided as before or as after the update**, never a
//!   third way. The error ([`SyncError::PlanFailed`]) says which operation failed (index,
//!   operation, map error) and how many were applied; the mirror then reflects exactly the
//!   applied prefix and the `Synced` is marked dirty.
//! - While dirty, [`Synced::apply`] reconciles instead: [`Synced::reconcile`] dumps the maps
//!   (the truth, whatever the mirror says), plans from the dump to the target (in the same
//!   safe order) and executes it. A successful reconcile clears the dirty flag; a failed one
//!   leaves it set. Callers retry with backoff and report "not ready" while dirty.
//! - A plan never creates a window without enforcement: endpoints leaving fail closed first,
//!   new endpoints are written last, and revisions are bumped at the very end so conntrack
//!   entries are re-decided against the final maps.
//! - A plan that would overflow a map at any operation (the peak of a slot flip counts:
//!   old and new slot exist at once) is refused before its first write
//!   ([`SyncError::CapacityExceeded`]): maps, mirror and dirty flag stay as they were.

use std::collections::{BTreeMap, BTreeSet};

use policy_compiler::Engine;
use policy_compiler::abi::LbKey;
use policy_compiler::plan::capacity::{self, Capacity, CapacityExceeded, Usage};
use policy_compiler::plan::lb::{LbState, LbTarget};
use policy_compiler::plan::{self, MapState, Op, Plan, PlanOptions, Target};

use crate::maps::{Maps, MapsError};

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

/// The target of an engine for these local endpoints.
pub fn target(engine: &Engine, local: &LocalEndpoints, revision: u32) -> Target {
    Target::from_engine(
        engine,
        local.iter().map(|(k, i)| (k.as_str(), *i)),
        revision,
    )
}

/// [`target`] on the node named `node_name`: services with a `Local` traffic policy keep
/// the backends on it only (docs/services.md); node ports are served on the engine's host
/// addresses.
pub fn target_on_node(
    engine: &Engine,
    local: &LocalEndpoints,
    revision: u32,
    node_name: &str,
) -> Target {
    let node = LbTarget::for_node(&engine.config().host_addresses).with_node_name(node_name);
    Target::from_engine_after(
        engine,
        local.iter().map(|(k, i)| (k.as_str(), *i)),
        revision,
        Some(&node),
    )
}

/// Service frontends by datapath id, for the verdict log.
pub type ServiceNames = std::collections::HashMap<u16, crate::events::ServiceFrontend>;

/// The service frontends the maps translate, by datapath id (for the verdict log).
pub fn service_frontends(target: &LbTarget, state: &LbState) -> ServiceNames {
    let mut out = ServiceNames::new();
    for key in target.frontends.keys() {
        name_frontend(&mut out, target, state, key);
    }
    out
}

/// The datapath ids the frontends `keys` have in `state` (taken before a plan of those
/// frontends, for [`update_service_frontends`] after it).
pub fn frontend_ids<'a>(state: &LbState, keys: impl IntoIterator<Item = &'a LbKey>) -> Vec<u32> {
    keys.into_iter()
        .filter_map(|k| state.services.get(k).map(|s| s.id))
        .collect()
}

/// [`service_frontends`] for the frontends `keys` only, after a plan of those frontends;
/// `old_ids` are the ids they had before it ([`frontend_ids`]).
pub fn update_service_frontends(
    names: &mut ServiceNames,
    target: &LbTarget,
    state: &LbState,
    old_ids: &[u32],
    keys: &BTreeSet<LbKey>,
) {
    for id in old_ids {
        if let Ok(id) = u16::try_from(*id) {
            names.remove(&id);
        }
    }
    for key in keys {
        name_frontend(names, target, state, key);
    }
}

fn name_frontend(out: &mut ServiceNames, target: &LbTarget, state: &LbState, key: &LbKey) {
    let (Some(fe), Some(s)) = (target.frontends.get(key), state.services.get(key)) else {
        return;
    };
    let Some((ns, name)) = fe.service.split_once('/') else {
        return;
    };
    if let Ok(id) = u16::try_from(s.id) {
        out.insert(
            id,
            crate::events::ServiceFrontend {
                namespace: ns.to_string(),
                name: name.to_string(),
                address: key.ip(),
                port: key.port(),
            },
        );
    }
}

/// What one apply or reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub policy_writes: usize,
    pub policy_deletes: usize,
    pub ipcache_writes: usize,
    pub ipcache_deletes: usize,
    pub endpoints_written: usize,
    pub endpoints_deleted: usize,
    pub fresh_slots: usize,
    pub transits: usize,
    /// Service map writes and deletes.
    pub lb_writes: usize,
    pub lb_deletes: usize,
    pub ops: usize,
    /// Planned over the changed service frontends only ([`Synced::apply_services`]).
    pub services_only: bool,
}

impl From<&Plan> for ApplyStats {
    fn from(p: &Plan) -> ApplyStats {
        ApplyStats {
            policy_writes: p.stats.policy_writes,
            policy_deletes: p.stats.policy_deletes,
            ipcache_writes: p.stats.ipcache_writes,
            ipcache_deletes: p.stats.ipcache_deletes,
            endpoints_written: p.stats.endpoint_writes,
            endpoints_deleted: p.stats.endpoint_deletes,
            fresh_slots: p.stats.fresh_slots,
            lb_writes: p.stats.lb_writes,
            lb_deletes: p.stats.lb_deletes,
            transits: p.stats.transits,
            ops: p.ops.len(),
            services_only: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "map operation {index} of {total} failed ({op}): {source}; the {index} before it were \
         applied, so every flow is decided as before or as after the update until the maps \
         are reconciled"
    )]
    PlanFailed {
        /// Index of the failed operation in the plan (= operations applied before it).
        index: usize,
        total: usize,
        op: Box<Op>,
        #[source]
        source: MapsError,
    },
    #[error(transparent)]
    CapacityExceeded(#[from] CapacityExceeded),
    #[error("dumping the maps failed: {source}")]
    Dump {
        #[source]
        source: MapsError,
    },
}

/// What the enforcer believes the maps hold.
#[derive(Debug, Clone, Default)]
pub struct Synced {
    state: MapState,
    slots: BTreeMap<u32, u32>,
    dirty: bool,
    capacity: Capacity,
}

impl Synced {
    /// Starts from what the maps hold: a restarted enforcer adopts the slots a previous run
    /// wrote (identified through the endpoint entries that point at them).
    pub fn adopt(maps: &mut dyn Maps) -> Result<Synced, SyncError> {
        let state = maps.dump().map_err(|source| SyncError::Dump { source })?;
        let slots = state.slot_owners();
        Ok(Synced {
            state,
            slots,
            dirty: false,
            capacity: Capacity::default(),
        })
    }

    /// The map capacities plans are checked against (the datapath's by default).
    pub fn with_capacity(mut self, capacity: Capacity) -> Synced {
        self.capacity = capacity;
        self
    }

    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// Entries the maps hold, as the mirror believes (no map walk).
    pub fn usage(&self) -> Usage {
        Usage::of(&self.state)
    }

    /// Whether a plan failed and the maps have not been reconciled since.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The slot holding an identity's policy.
    pub fn slot_of(&self, identity: u32) -> Option<u32> {
        self.slots.get(&identity).copied()
    }

    pub fn slots(&self) -> &BTreeMap<u32, u32> {
        &self.slots
    }

    /// The believed contents of the maps.
    pub fn state(&self) -> &MapState {
        &self.state
    }

    /// Brings the maps to `target`: a plan from the believed state, or a reconcile when a
    /// previous plan failed.
    pub fn apply(&mut self, maps: &mut dyn Maps, target: &Target) -> Result<ApplyStats, SyncError> {
        if self.dirty {
            return self.reconcile(maps, target, PlanOptions::default());
        }
        let p = plan::plan(&self.state, &self.slots, target, PlanOptions::default());
        capacity::check(&self.state, &p, target, &self.capacity)?;
        self.run(maps, p)
    }

    /// Brings the service frontends `keys` to `lb` (what [`LbTarget::update`] said changed
    /// for a batch of Service and EndpointSlice changes, which change no identity, policy
    /// or ipcache entry): a plan of those frontends only, checked against the service maps'
    /// capacity and run like any plan. Not for a dirty `Synced` (that needs the full
    /// reconcile of [`Synced::apply`]).
    ///
    /// [`LbTarget::update`]: policy_compiler::plan::lb::LbTarget::update
    pub fn apply_services(
        &mut self,
        maps: &mut dyn Maps,
        lb: &LbTarget,
        keys: &BTreeSet<LbKey>,
    ) -> Result<ApplyStats, SyncError> {
        let lbp = plan::lb::plan_for(&self.state.lb, lb, keys);
        let mut p = Plan {
            ops: lbp.ops,
            slots: self.slots.clone(),
            lb_skipped: lbp.skipped,
            ..Plan::default()
        };
        p.stats.lb_writes = lbp.writes;
        p.stats.lb_deletes = lbp.deletes;
        capacity::check_with(&self.state, &p, &self.capacity, None)?;
        let stats = self.run(maps, p)?;
        Ok(ApplyStats {
            services_only: true,
            ..stats
        })
    }

    /// Dumps the maps and brings them from what they really hold to `target`, touching only
    /// what differs, in the same safe order as any plan.
    pub fn reconcile(
        &mut self,
        maps: &mut dyn Maps,
        target: &Target,
        opts: PlanOptions,
    ) -> Result<ApplyStats, SyncError> {
        let (state, slots) = self.reconcile_from(maps)?;
        // The dump is the truth: every service frontend is compared with it.
        let opts = PlanOptions {
            all_services: true,
            ..opts
        };
        let p = plan::plan(&state, &slots, target, opts);
        capacity::check(&state, &p, target, &self.capacity)?;
        self.state = state;
        self.slots = slots;
        self.run(maps, p)
    }

    /// The plan [`Synced::apply`] would execute now (after a dump when dirty), without
    /// executing it.
    pub fn next_plan(&self, maps: &mut dyn Maps, target: &Target) -> Result<Plan, SyncError> {
        if self.dirty {
            let (state, slots) = self.reconcile_from(maps)?;
            let opts = PlanOptions {
                all_services: true,
                ..PlanOptions::default()
            };
            return Ok(plan::plan(&state, &slots, target, opts));
        }
        Ok(plan::plan(
            &self.state,
            &self.slots,
            target,
            PlanOptions::default(),
        ))
    }

    /// What the maps hold, and which slot serves which identity: slots this process knows
    /// still count if they hold what it wrote, otherwise the endpoint entries say.
    fn reconcile_from(
        &self,
        maps: &mut dyn Maps,
    ) -> Result<(MapState, BTreeMap<u32, u32>), SyncError> {
        let state = maps.dump().map_err(|source| SyncError::Dump { source })?;
        let mut slots = state.slot_owners();
        for (id, slot) in &self.slots {
            if state.policy.contains_key(slot)
                && state.policy.get(slot) == self.state.policy.get(slot)
            {
                slots.entry(*id).or_insert(*slot);
            }
        }
        Ok((state, slots))
    }

    fn run(&mut self, maps: &mut dyn Maps, p: Plan) -> Result<ApplyStats, SyncError> {
        let stats = ApplyStats::from(&p);
        let total = p.ops.len();
        for (index, op) in p.ops.into_iter().enumerate() {
            if let Err(source) = maps.apply(&op) {
                self.dirty = true;
                return Err(SyncError::PlanFailed {
                    index,
                    total,
                    op: Box::new(op),
                    source,
                });
            }
            self.state.apply(&op);
        }
        self.slots = p.slots;
        self.dirty = false;
        Ok(stats)
    }
}
