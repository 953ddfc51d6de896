//! Service frontends in the maps (docs/services.md): what the five `pal_lb_*` maps must
//! hold for the cluster's services, and the ordered operations that get them there.
//!
//! Every frontend (address, port, protocol) has an id, kept for as long as the frontend
//! exists; a new one takes the next id after the highest in use (wrapping), so an id freed
//! by a deleted service is reused as late as possible (a reply of a flow translated for the
//! old frontend must not be rewritten to the new one's address). Each backend of a frontend
//! has an index, kept while the backend stays. Because indexes are stable, a change is
//! written make-before-break: new backends first, then the table that names them, the
//! reverse-NAT entry, the frontend entry; only then are frontends and backends that left
//! deleted. After every single operation a new flow picks from the old table or the new
//! one, and every index either table names resolves to a backend of that table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::abi::{self, LbBackend, LbBackendKey, LbKey, LbService};
use crate::model::Cluster;
use crate::services::backends::{self, FrontendKind};
use crate::services::maglev::{self, Table};

use super::Op;

/// One frontend as the maps must serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbFrontend {
    /// `namespace/name` of its service.
    pub service: String,
    /// Its backends, in the order the table's slots number them (the table is a function of
    /// their addresses and ports).
    pub backends: Vec<LbBackend>,
    pub table: Arc<Table>,
    /// `LB_F_*`.
    pub flags: u32,
}

/// A service's part of the target: its frontends and what was left out of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServicePart {
    frontends: Vec<(LbKey, LbFrontend)>,
    skipped: Vec<String>,
}

/// Every frontend this node translates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbTarget {
    pub frontends: BTreeMap<LbKey, LbFrontend>,
    /// Services (or their frontends) left out, and why: shown in the agent's log.
    pub skipped: Vec<String>,
    /// Each service's frontends, by (namespace, name).
    parts: BTreeMap<(String, String), ServicePart>,
    /// The services claiming each frontend: the first in (namespace, name) order serves it.
    claims: BTreeMap<LbKey, BTreeSet<(String, String)>>,
    /// Services with something left out, and frontends claimed twice: what `skipped` is
    /// made of, kept so that an update does not walk every service to say it.
    with_skipped: BTreeSet<(String, String)>,
    shared: BTreeSet<LbKey>,
    /// The node's addresses: each node port is a frontend on each of them (of its family).
    node: Vec<IpAddr>,
    /// The node's name: its `Local` traffic policies keep its own backends only.
    node_name: Option<String>,
}

impl LbTarget {
    /// An empty target for a node with these addresses: each node port becomes a frontend
    /// on each of them (of its family), which the datapath translates from pods and, on
    /// the node's uplink, from outside. Without addresses node ports are not translated.
    pub fn for_node(addresses: &[IpAddr]) -> LbTarget {
        let mut node: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|a| !a.is_unspecified() && !a.is_loopback() && !a.is_multicast())
            .collect();
        node.sort();
        node.dedup();
        LbTarget {
            node,
            ..LbTarget::default()
        }
    }

    /// The node addresses node ports are served on.
    pub fn node_addresses(&self) -> &[IpAddr] {
        &self.node
    }

    /// This target for the node named `name` (a Kubernetes node name, as in an
    /// EndpointSlice's `nodeName`): services with a `Local` traffic policy keep only the
    /// backends on it ([`backends::frontends_reusing`]). Without a name every backend is
    /// kept.
    pub fn with_node_name(mut self, name: &str) -> LbTarget {
        self.node_name = Some(name.to_string()).filter(|n| !n.is_empty());
        self
    }

    /// The frontends of the cluster's services: cluster IPs, external IPs and load-balancer
    /// IPs with each TCP/UDP port, and each node port on each node address of `previous`
    /// ([`LbTarget::for_node`]). Tables of frontends whose backends did not change since
    /// `previous` are reused (a table of the default 16,381 slots costs time to build).
    /// SCTP frontends are translated only when every backend listens on the frontend's
    /// port (a port rewrite would need the packet's CRC32c recomputed).
    pub fn from_cluster(cluster: &Cluster, previous: Option<&LbTarget>) -> LbTarget {
        let mut t = previous.cloned().unwrap_or_default();
        let mut all: BTreeSet<String> = cluster.services.keys().map(|k| k.0.clone()).collect();
        all.extend(t.parts.keys().map(|k| k.0.clone()));
        t.update(cluster, &all);
        t
    }

    /// Brings the services of `namespaces` up to `cluster` (what a service translates to
    /// depends only on its own namespace: the service, its EndpointSlices and, without
    /// slices, its namespace's pods) and returns the frontends whose entry may have
    /// changed. Any other service's part is kept as is: an update costs what its
    /// namespaces hold, not what the cluster holds.
    pub fn update(&mut self, cluster: &Cluster, namespaces: &BTreeSet<String>) -> BTreeSet<LbKey> {
        let mut touched = BTreeSet::new();
        for ns in namespaces {
            let range = |k: &(String, String)| k.0 == *ns;
            let start = (ns.clone(), String::new());
            let old: Vec<(String, String)> = self
                .parts
                .range(start.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| range(k))
                .cloned()
                .collect();
            let mut parts = BTreeMap::new();
            // The namespace's pods by label, built once when a service selects pods.
            let mut index = None;
            for (k, svc) in cluster
                .services
                .range(start..)
                .take_while(|(k, _)| range(k))
            {
                let selects = backends::selects_pods(cluster, svc);
                let index = selects
                    .then(|| &*index.get_or_insert_with(|| backends::PodIndex::new(cluster, ns)));
                parts.insert(
                    k.clone(),
                    self.service_part(cluster, svc, self.parts.get(k), index),
                );
            }
            for k in old {
                self.with_skipped.remove(&k);
                if let Some(p) = self.parts.remove(&k) {
                    for (key, _) in p.frontends {
                        touched.insert(key);
                        if let Some(c) = self.claims.get_mut(&key) {
                            c.remove(&k);
                        }
                    }
                }
            }
            for (k, p) in parts {
                if !p.skipped.is_empty() {
                    self.with_skipped.insert(k.clone());
                }
                for (key, _) in &p.frontends {
                    touched.insert(*key);
                    self.claims.entry(*key).or_default().insert(k.clone());
                }
                self.parts.insert(k, p);
            }
        }
        let mut changed = BTreeSet::new();
        for key in touched {
            let owner = self.claims.get(&key).and_then(|c| c.first());
            let fe = owner
                .and_then(|o| self.parts.get(o))
                .and_then(|p| p.frontends.iter().find(|(k, _)| *k == key))
                .map(|(_, fe)| fe.clone());
            if owner.is_none() {
                self.claims.remove(&key);
            }
            if self.claims.get(&key).is_some_and(|c| c.len() > 1) {
                self.shared.insert(key);
            } else {
                self.shared.remove(&key);
            }
            let differs = match fe {
                Some(fe) => self.frontends.insert(key, fe.clone()).as_ref() != Some(&fe),
                None => self.frontends.remove(&key).is_some(),
            };
            if differs {
                changed.insert(key);
            }
        }
        if !namespaces.is_empty() {
            self.skipped = self.collect_skipped();
        }
        changed
    }

    fn collect_skipped(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .with_skipped
            .iter()
            .filter_map(|k| self.parts.get(k))
            .flat_map(|p| p.skipped.clone())
            .collect();
        for (key, c) in self
            .shared
            .iter()
            .filter_map(|k| Some((k, self.claims.get(k)?)))
        {
            let mut names = c.iter().map(|(ns, n)| format!("{ns}/{n}"));
            let first = names.next().unwrap_or_default();
            for other in names {
                out.push(format!(
                    "service {other}: frontend {}:{} is also service {first}'s, which serves it",
                    key.ip(),
                    key.port()
                ));
            }
        }
        out
    }

    /// One service's frontends, reusing the tables of `previous` (its last part) where a
    /// frontend's backends did not change.
    fn service_part(
        &self,
        cluster: &Cluster,
        svc: &crate::model::Service,
        previous: Option<&ServicePart>,
        index: Option<&backends::PodIndex<'_>>,
    ) -> ServicePart {
        let name = format!("{}/{}", svc.namespace, svc.name);
        let mut part = ServicePart::default();
        // A node port is a frontend on each node address of its family.
        let keys_of = |fe: &backends::Frontend| -> Vec<LbKey> {
            if fe.kind == FrontendKind::NodePort {
                self.node
                    .iter()
                    .filter(|a| a.is_ipv4() == fe.vip.is_ipv4())
                    .map(|a| LbKey::new(*a, fe.port, fe.protocol.0))
                    .collect()
            } else {
                vec![LbKey::new(fe.vip, fe.port, fe.protocol.0)]
            }
        };
        let reuse = |fe: &backends::Frontend, b: &[backends::Backend]| -> Option<Arc<Table>> {
            let keys = keys_of(fe);
            previous
                .and_then(|p| p.frontends.iter().find(|(k, _)| keys.contains(k)))
                .map(|(_, p)| p)
                .filter(|p| {
                    p.backends.len() == b.len()
                        && p.backends
                            .iter()
                            .zip(b)
                            .all(|(x, y)| *x == LbBackend::new(y.addr, y.port))
                })
                .map(|p| p.table.clone())
        };
        let fbs = match backends::frontends_reusing(
            cluster,
            svc,
            maglev::DEFAULT_TABLE_SIZE,
            &reuse,
            index,
            self.node_name.as_deref(),
        ) {
            Ok(f) => f,
            Err(e) => {
                part.skipped.push(format!("service {name}: {e}"));
                return part;
            }
        };
        for fb in fbs {
            let fe = &fb.frontend;
            let proto = fe.protocol.0;
            // SCTP's CRC32c covers the ports but not the addresses: a frontend whose
            // backends all listen on its own port needs only the address rewritten, which
            // leaves the checksum valid; a port rewrite would need the CRC recomputed over
            // the whole packet, which the datapath does not do.
            let sctp_same_port = proto == 132 && fb.backends.iter().all(|b| b.port == fe.port);
            if proto != 6 && proto != 17 && !sctp_same_port {
                part.skipped.push(format!(
                    "service {name}: {} port {} is not translated ({})",
                    fe.protocol,
                    fe.port,
                    if proto == 132 {
                        "an SCTP frontend is translated only when its backends listen on its \
                         own port: a port rewrite would need the CRC32c recomputed"
                    } else {
                        "only TCP, UDP and SCTP are"
                    }
                ));
                continue;
            }
            let backends: Vec<LbBackend> = fb
                .backends
                .iter()
                .map(|b| LbBackend::new(b.addr, b.port))
                .collect();
            // The affinity timeout rides in the flags' upper bits (at most 86,400 s, well
            // inside their 24).
            let flags = match fb.affinity_s {
                Some(t) => abi::LB_F_AFFINITY | (t << abi::LB_AFFINITY_TIMEOUT_SHIFT),
                None => 0,
            };
            for key in keys_of(fe) {
                part.frontends.push((
                    key,
                    LbFrontend {
                        service: name.clone(),
                        backends: backends.clone(),
                        table: fb.table.clone(),
                        flags,
                    },
                ));
            }
        }
        part
    }
}

/// What the service maps hold (`pal_lb_flows` is the datapath's own and not here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbState {
    pub services: BTreeMap<LbKey, LbService>,
    /// Frontend id -> its table (slot -> backend index), `table_size` entries.
    pub tables: BTreeMap<u32, Arc<[u16]>>,
    pub backends: BTreeMap<LbBackendKey, LbBackend>,
    pub revnat: BTreeMap<u32, LbKey>,
}

impl LbState {
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::UpsertLbService { key, service } => {
                self.services.insert(*key, *service);
            }
            Op::DeleteLbService { key } => {
                self.services.remove(key);
            }
            Op::SetLbTable { id, slots } => {
                self.tables.insert(*id, slots.clone());
            }
            Op::DeleteLbTable { id } => {
                self.tables.remove(id);
            }
            Op::UpsertLbBackend { key, backend } => {
                self.backends.insert(*key, *backend);
            }
            Op::DeleteLbBackend { key } => {
                self.backends.remove(key);
            }
            Op::SetLbRevNat { id, frontend } => {
                self.revnat.insert(*id, *frontend);
            }
            Op::DeleteLbRevNat { id } => {
                self.revnat.remove(id);
            }
            _ => {}
        }
    }

    /// The frontend ids in use anywhere in the maps.
    fn ids(&self) -> BTreeSet<u32> {
        let mut ids: BTreeSet<u32> = self.services.values().map(|s| s.id).collect();
        ids.extend(self.tables.keys());
        ids.extend(self.revnat.keys());
        ids.extend(self.backends.keys().map(|k| k.id));
        ids
    }

    /// The backends of frontend `id`: backend -> index.
    fn backends_of(&self, id: u32) -> BTreeMap<LbBackend, u32> {
        self.backends
            .range(
                LbBackendKey { id, index: 0 }..=LbBackendKey {
                    id,
                    index: u32::MAX,
                },
            )
            .map(|(k, b)| (*b, k.index))
            .collect()
    }

    /// The service a frontend id serves, for the verdict log.
    pub fn frontend_of(&self, id: u32) -> Option<&LbKey> {
        self.revnat.get(&id)
    }
}

/// Counts of the service part of a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbPlan {
    pub ops: Vec<Op>,
    pub writes: usize,
    pub deletes: usize,
    /// Frontends that could not be given an id or backend indexes (the maps are full).
    pub skipped: Vec<String>,
}

/// Frontend ids: which are in use in the old maps or taken by this plan, and the next to
/// try. A candidate above the highest id the old maps hold is free without a look; below
/// it (after the ids wrapped) the old maps are asked per candidate, the frontends' ids
/// collected once. A plan that allocates nothing pays nothing for them.
struct Ids<'a> {
    old: &'a LbState,
    service_ids: Option<crate::hash::FxHashSet<u32>>,
    taken: BTreeSet<u32>,
    /// The highest id in the old maps (0: none), and the next candidate.
    highest: u32,
    next: Option<u32>,
}

impl<'a> Ids<'a> {
    fn new(old: &'a LbState) -> Ids<'a> {
        Ids {
            old,
            service_ids: None,
            taken: BTreeSet::new(),
            highest: 0,
            next: None,
        }
    }

    fn in_use(&mut self, id: u32) -> bool {
        let old = self.old;
        if self.taken.contains(&id) {
            return true;
        }
        if id > self.highest {
            return false;
        }
        old.tables.contains_key(&id)
            || old.revnat.contains_key(&id)
            || old
                .backends
                .range(
                    LbBackendKey { id, index: 0 }..=LbBackendKey {
                        id,
                        index: u32::MAX,
                    },
                )
                .next()
                .is_some()
            || self
                .service_ids
                .get_or_insert_with(|| old.services.values().map(|s| s.id).collect())
                .contains(&id)
    }

    /// A free id after the highest in use (wrapping), or none when all are in use.
    fn alloc(&mut self) -> Option<u32> {
        let old = self.old;
        if self.next.is_none() {
            self.highest = [
                old.services.values().map(|s| s.id).max(),
                old.tables.keys().next_back().copied(),
                old.revnat.keys().next_back().copied(),
                old.backends.keys().next_back().map(|k| k.id),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
        }
        let mut next = *self.next.get_or_insert(self.highest % abi::LB_ID_MAX + 1);
        for _ in 0..abi::LB_ID_MAX {
            let id = next;
            next = next % abi::LB_ID_MAX + 1;
            if !self.in_use(id) {
                self.taken.insert(id);
                self.next = Some(next);
                return Some(id);
            }
        }
        None
    }
}

/// The operations being collected, in their three groups (see the module comment).
#[derive(Default)]
struct Ops {
    adds: Vec<Op>,
    gone: Vec<Op>,
    removes: Vec<Op>,
    skipped: Vec<String>,
}

impl Ops {
    fn finish(self) -> LbPlan {
        let mut out = LbPlan {
            writes: self.adds.len(),
            deletes: self.gone.len() + self.removes.len(),
            ops: self.adds,
            skipped: self.skipped,
        };
        out.ops.extend(self.gone);
        out.ops.extend(self.removes);
        out
    }

    /// Everything the old maps hold under frontend id `id`, except its frontend entry.
    fn remove_id(&mut self, old: &LbState, id: u32) {
        if old.tables.contains_key(&id) {
            self.removes.push(Op::DeleteLbTable { id });
        }
        if old.revnat.contains_key(&id) {
            self.removes.push(Op::DeleteLbRevNat { id });
        }
        for i in old.backends_of(id).values() {
            self.removes.push(Op::DeleteLbBackend {
                key: LbBackendKey { id, index: *i },
            });
        }
    }

    /// The operations that bring frontend `key` from `old` to `fe`; returns its id, or
    /// none when it could not be given one.
    fn frontend(
        &mut self,
        old: &LbState,
        ids: &mut Ids,
        key: &LbKey,
        fe: &LbFrontend,
    ) -> Option<u32> {
        let id = match old.services.get(key) {
            Some(s) => s.id,
            None => match ids.alloc() {
                Some(id) => id,
                None => {
                    self.skipped.push(format!(
                        "service {}: frontend {}:{} has no id (all {} in use)",
                        fe.service,
                        key.ip(),
                        key.port(),
                        abi::LB_ID_MAX
                    ));
                    return None;
                }
            },
        };
        // Stable indexes: a staying backend keeps its index; a new one takes the lowest
        // index no backend of this frontend holds (old or new).
        let old_idx = old.backends_of(id);
        let mut taken: BTreeSet<u32> = old_idx.values().copied().collect();
        let mut index_of = Vec::with_capacity(fe.backends.len());
        let mut fresh = Vec::new();
        let mut cursor = 0u32;
        for b in &fe.backends {
            match old_idx.get(b) {
                Some(i) => index_of.push(*i),
                None => {
                    while taken.contains(&cursor) {
                        cursor += 1;
                    }
                    taken.insert(cursor);
                    index_of.push(cursor);
                    fresh.push((cursor, *b));
                }
            }
        }
        if index_of.iter().any(|i| *i > u32::from(u16::MAX)) {
            self.skipped.push(format!(
                "service {}: frontend {}:{} has more backends than a table can index",
                fe.service,
                key.ip(),
                key.port()
            ));
            return None;
        }
        let no_fresh = fresh.is_empty();
        for (index, backend) in fresh {
            self.adds.push(Op::UpsertLbBackend {
                key: LbBackendKey { id, index },
                backend,
            });
        }
        let size = if fe.backends.is_empty() {
            0
        } else {
            fe.table.size
        };
        // The same backends at the same indexes: the table (a function of the backend
        // set) is the one the maps hold, unless they hold none of that size.
        let unchanged = no_fresh
            && old_idx.len() == fe.backends.len()
            && old
                .tables
                .get(&id)
                .is_some_and(|t| t.len() == size as usize);
        if size > 0 && !unchanged {
            let slots: Arc<[u16]> = fe
                .table
                .slots
                .iter()
                .map(|pos| index_of.get(*pos as usize).map_or(0, |i| *i as u16))
                .collect();
            if old.tables.get(&id) != Some(&slots) {
                self.adds.push(Op::SetLbTable { id, slots });
            }
        }
        if old.revnat.get(&id) != Some(key) {
            self.adds.push(Op::SetLbRevNat { id, frontend: *key });
        }
        let service = LbService {
            id,
            table_size: size,
            backends: fe.backends.len() as u32,
            flags: fe.flags,
        };
        if old.services.get(key) != Some(&service) {
            self.adds.push(Op::UpsertLbService { key: *key, service });
        }
        if size == 0 && old.tables.contains_key(&id) {
            self.removes.push(Op::DeleteLbTable { id });
        }
        for (b, i) in &old_idx {
            if !fe.backends.contains(b) {
                self.removes.push(Op::DeleteLbBackend {
                    key: LbBackendKey { id, index: *i },
                });
            }
        }
        Some(id)
    }
}

/// The operations from `old` to `target` (see the module comment for their order), over
/// every frontend; also removes whatever the maps hold under an id no frontend uses (left
/// by a failed plan).
pub fn plan(old: &LbState, target: &LbTarget) -> LbPlan {
    let mut ops = Ops::default();
    let mut ids = Ids::new(old);
    let mut kept_ids = BTreeSet::new();
    for (key, fe) in &target.frontends {
        if let Some(id) = ops.frontend(old, &mut ids, key, fe) {
            kept_ids.insert(id);
        }
    }
    for (key, s) in &old.services {
        if !target.frontends.contains_key(key) || !kept_ids.contains(&s.id) {
            ops.gone.push(Op::DeleteLbService { key: *key });
        }
    }
    for id in old.ids() {
        if !kept_ids.contains(&id) {
            ops.remove_id(old, id);
        }
    }
    ops.finish()
}

/// [`plan`] for the frontends `keys` only (those [`LbTarget::update`] says changed): the
/// agent's path for a service or backend change, whose cost does not grow with the number
/// of services. Valid when `old` is what the maps hold (the agent reconciles with the full
/// [`plan`] after a failed write).
pub fn plan_for(old: &LbState, target: &LbTarget, keys: &BTreeSet<LbKey>) -> LbPlan {
    let mut ops = Ops::default();
    let mut ids = Ids::new(old);
    for key in keys {
        let kept = target
            .frontends
            .get(key)
            .and_then(|fe| ops.frontend(old, &mut ids, key, fe));
        if kept.is_none()
            && let Some(s) = old.services.get(key)
        {
            ops.gone.push(Op::DeleteLbService { key: *key });
            ops.remove_id(old, s.id);
        }
    }
    ops.finish()
}

/// The backend a new flow `src:sport -> key` is translated to under `state`, computed as
/// the datapath does (tests compare the two).
pub fn pick(state: &LbState, key: &LbKey, src: IpAddr, sport: u16) -> Option<(IpAddr, u16)> {
    let s = state.services.get(key)?;
    if s.backends == 0 || s.table_size == 0 {
        return None;
    }
    let sport = if s.flags & abi::LB_F_AFFINITY != 0 {
        0
    } else {
        sport
    };
    let slot = maglev::flow_hash(src, key.ip(), sport, key.port(), key.protocol) % s.table_size;
    let index = *state.tables.get(&s.id)?.get(slot as usize)?;
    let b = state.backends.get(&LbBackendKey {
        id: s.id,
        index: u32::from(index),
    })?;
    let ip = LbKey {
        addr: b.addr,
        port_be: b.port_be,
        protocol: key.protocol,
        family: key.family,
    }
    .ip();
    Some((ip, u16::from_be(b.port_be)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{LoadOptions, load_str};

    fn pods(n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: shop, labels: {{app: web}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIPs: [{{ip: 10.0.1.{} }}]}}\n",
                i + 10
            ));
        }
        s
    }

    const SVC: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  clusterIPs: [10.96.0.10]\n  ports: [{name: http, port: 80, targetPort: http}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]\n";

    fn target(n: usize) -> LbTarget {
        let c = load_str("svc.yaml", &(pods(n) + SVC), &LoadOptions::default())
            .unwrap()
            .cluster;
        LbTarget::from_cluster(&c, None)
    }

    #[test]
    fn a_node_port_is_a_frontend_on_each_node_address_of_its_family() {
        let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  type: NodePort\n  selector: {app: web}\n  clusterIPs: [10.96.0.10]\n  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]\n";
        let c = load_str("svc.yaml", &(pods(2) + svc), &LoadOptions::default())
            .unwrap()
            .cluster;
        let node: Vec<IpAddr> = [
            "198.18.0.1",
            "169.254.1.1",
            "fd00::1",
            "127.0.0.1",
            "0.0.0.0",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let on_node = LbTarget::from_cluster(&c, Some(&LbTarget::for_node(&node)));
        let keys: Vec<String> = on_node
            .frontends
            .keys()
            .map(|k| format!("{}:{}", k.ip(), k.port()))
            .collect();
        // The IPv4 node port on both IPv4 node addresses (not loopback, not unspecified),
        // none on the IPv6 one (the service is IPv4 only), and the cluster IP.
        assert_eq!(
            keys,
            ["10.96.0.10:80", "169.254.1.1:30080", "198.18.0.1:30080"]
        );
        let fe = |k: &str| {
            on_node
                .frontends
                .iter()
                .find(|(key, _)| format!("{}:{}", key.ip(), key.port()) == k)
                .map(|(_, f)| f.clone())
                .unwrap()
        };
        // The same backends and table as the cluster IP.
        assert_eq!(fe("198.18.0.1:30080"), fe("10.96.0.10:80"));
        assert_eq!(on_node.node_addresses().len(), 3);
        // An update keeps the node's addresses; a target without them has no node port.
        let again = LbTarget::from_cluster(&c, Some(&on_node));
        assert_eq!(again.frontends, on_node.frontends);
        assert_eq!(LbTarget::from_cluster(&c, None).frontends.len(), 1);
        let planned = plan(&LbState::default(), &on_node);
        let mut state = LbState::default();
        run(&mut state, &planned);
        let key = LbKey::new("198.18.0.1".parse().unwrap(), 30080, 6);
        let (addr, port) = pick(&state, &key, "198.18.0.2".parse().unwrap(), 40000).unwrap();
        assert!(
            addr.to_string().starts_with("10.0.1.") && port == 8080,
            "{addr}:{port}"
        );
    }

    #[test]
    fn local_traffic_policies_keep_the_nodes_own_backends() {
        let yaml = "---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  type: NodePort
  clusterIPs: [10.96.0.40]
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30040}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIPs: [10.96.0.41]
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30041}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.1.1], nodeName: node-a}
- {addresses: [10.0.2.1], nodeName: node-b}
- {addresses: [10.0.3.1]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.1.2], nodeName: node-a}
- {addresses: [10.0.2.2], nodeName: node-b}
";
        let c = load_str("local.yaml", yaml, &LoadOptions::default())
            .unwrap()
            .cluster;
        let node = [IpAddr::from([198, 18, 0, 1])];
        let backends = |t: &LbTarget, addr: [u8; 4], port: u16| -> Vec<String> {
            t.frontends[&LbKey::new(IpAddr::from(addr), port, 6)]
                .backends
                .iter()
                .map(|b| IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]).to_string())
                .collect()
        };
        let a = LbTarget::from_cluster(
            &c,
            Some(&LbTarget::for_node(&node).with_node_name("node-a")),
        );
        // internalTrafficPolicy: Local: the cluster IP keeps node-a's backend only (an
        // endpoint without nodeName is no node's); externalTrafficPolicy: Local: so does
        // the node port.
        assert_eq!(backends(&a, [10, 96, 0, 40], 80), ["10.0.1.1"]);
        assert_eq!(backends(&a, [198, 18, 0, 1], 30040), ["10.0.1.1"]);
        // web: Cluster inside, Local from outside.
        assert_eq!(backends(&a, [10, 96, 0, 41], 80), ["10.0.1.2", "10.0.2.2"]);
        assert_eq!(backends(&a, [198, 18, 0, 1], 30041), ["10.0.1.2"]);
        // Another node keeps its own; a node with none has a frontend without backends.
        let b = LbTarget::from_cluster(
            &c,
            Some(&LbTarget::for_node(&node).with_node_name("node-b")),
        );
        assert_eq!(backends(&b, [198, 18, 0, 1], 30041), ["10.0.2.2"]);
        let z = LbTarget::from_cluster(
            &c,
            Some(&LbTarget::for_node(&node).with_node_name("node-z")),
        );
        assert!(backends(&z, [10, 96, 0, 40], 80).is_empty());
        // No node name: every backend.
        let all = LbTarget::from_cluster(&c, Some(&LbTarget::for_node(&node)));
        assert_eq!(backends(&all, [10, 96, 0, 40], 80).len(), 3);
    }

    fn run(state: &mut LbState, p: &LbPlan) {
        for op in &p.ops {
            state.apply(op);
            // After every operation, every index a table names resolves.
            for (key, s) in &state.services {
                if let Some(t) = state.tables.get(&s.id) {
                    for i in t.iter() {
                        assert!(
                            state.backends.contains_key(&LbBackendKey {
                                id: s.id,
                                index: u32::from(*i)
                            }),
                            "{key:?} names index {i} with no backend after {op}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_plan_reaches_the_target_and_a_second_plan_is_empty() {
        let t = target(3);
        assert_eq!(t.frontends.len(), 2);
        let mut s = LbState::default();
        let p = plan(&s, &t);
        run(&mut s, &p);
        assert_eq!(s.services.len(), 2);
        assert_eq!(s.backends.len(), 6);
        assert!(plan(&s, &t).ops.is_empty());
        // Every pick is one of the three pods on the frontend's target port.
        let key = LbKey::new("10.96.0.10".parse().unwrap(), 80, 6);
        for sport in 1000..1100 {
            let (ip, port) = pick(&s, &key, "10.0.2.1".parse().unwrap(), sport).unwrap();
            assert_eq!(port, 8080);
            assert!(
                t.frontends[&key]
                    .backends
                    .contains(&LbBackend::new(ip, port))
            );
        }
    }

    #[test]
    fn backends_keep_their_indexes_and_removal_is_make_before_break() {
        let mut s = LbState::default();
        let p = plan(&s, &target(3));
        run(&mut s, &p);
        let before = s.backends.clone();
        let p = plan(&s, &target(5));
        run(&mut s, &p);
        for (k, b) in &before {
            assert_eq!(s.backends.get(k), Some(b), "a staying backend moved");
        }
        let p = plan(&s, &target(2));
        assert!(p.deletes > 0);
        run(&mut s, &p);
        assert_eq!(s.backends.len(), 4);
        // The pick agrees with the policy core's own prediction.
        let t = target(2);
        let key = LbKey::new("10.96.0.10".parse().unwrap(), 80, 6);
        let c = load_str("svc.yaml", &(pods(2) + SVC), &LoadOptions::default())
            .unwrap()
            .cluster;
        let svc = c.services.values().next().unwrap();
        let fb = &backends::frontends(&c, svc, maglev::DEFAULT_TABLE_SIZE).unwrap()[0];
        for sport in 2000..2200 {
            let src: IpAddr = "10.0.2.1".parse().unwrap();
            let want = fb.pick(src, sport).unwrap();
            assert_eq!(pick(&s, &key, src, sport), Some((want.addr, want.port)));
        }
        assert_eq!(t.frontends[&key].backends.len(), 2);
    }

    #[test]
    fn a_deleted_service_leaves_nothing_and_ids_are_not_reused_at_once() {
        let mut s = LbState::default();
        let p = plan(&s, &target(2));
        run(&mut s, &p);
        let ids: BTreeSet<u32> = s.services.values().map(|v| v.id).collect();
        let p = plan(&s, &LbTarget::default());
        run(&mut s, &p);
        assert_eq!(s, LbState::default());
        // The old state is empty now, so ids start over; within one plan a frontend that
        // replaces another never takes a freed id.
        let mut s2 = LbState::default();
        let p = plan(&s2, &target(2));
        run(&mut s2, &p);
        let mut t = target(2);
        let (k, fe) = t.frontends.pop_first().unwrap();
        let moved = LbKey::new("10.96.0.99".parse().unwrap(), k.port(), k.protocol);
        t.frontends.insert(moved, fe);
        let p = plan(&s2, &t);
        run(&mut s2, &p);
        let new_id = s2.services[&moved].id;
        assert!(
            !ids.contains(&new_id),
            "id {new_id} reused in the same plan"
        );
    }

    #[test]
    fn unchanged_backends_reuse_the_previous_table() {
        let c = |n| {
            load_str("svc.yaml", &(pods(n) + SVC), &LoadOptions::default())
                .unwrap()
                .cluster
        };
        let first = LbTarget::from_cluster(&c(3), None);
        let again = LbTarget::from_cluster(&c(3), Some(&first));
        let changed = LbTarget::from_cluster(&c(4), Some(&first));
        for (k, fe) in &first.frontends {
            assert!(Arc::ptr_eq(&fe.table, &again.frontends[k].table), "reused");
            assert!(
                !Arc::ptr_eq(&fe.table, &changed.frontends[k].table),
                "rebuilt"
            );
        }
        assert_eq!(again, first);
    }

    #[test]
    fn a_frontend_without_backends_has_no_table() {
        let mut s = LbState::default();
        let p = plan(&s, &target(2));
        run(&mut s, &p);
        let p = plan(&s, &target(0));
        run(&mut s, &p);
        assert!(s.tables.is_empty());
        assert!(s.backends.is_empty());
        assert!(
            s.services
                .values()
                .all(|v| v.backends == 0 && v.table_size == 0)
        );
    }

    /// One change of the incremental-update property test: (kind, namespace, object, n).
    fn change(kind: u8, ns: u8, obj: u8, n: u8) -> crate::engine::Change {
        use crate::Protocol;
        use crate::engine::Change;
        use crate::model::{
            Endpoint, EndpointSlice, NamedPort, Service, ServicePortSpec, ServiceTarget,
            ServiceType, SliceEndpoint, WorkloadRef,
        };
        let ns = format!("ns{}", ns % 3);
        let ip = |i: u8| -> IpAddr { format!("10.0.{}.{}", i % 4, i).parse().unwrap() };
        match kind % 6 {
            0 => {
                let name = format!("p{}", obj % 6);
                Change::UpsertEndpoint(Endpoint {
                    key: Endpoint::pod_key(&ns, &name),
                    namespace: ns.clone(),
                    name,
                    workload: WorkloadRef {
                        kind: "ReplicaSet".into(),
                        name: "web".into(),
                    },
                    labels: [("app".to_string(), format!("a{}", n % 3))].into(),
                    ips: vec![ip(n)],
                    ports: vec![NamedPort {
                        name: "http".into(),
                        port: 8080 + u16::from(n % 2),
                        protocol: Protocol::TCP,
                    }],
                    host_network: false,
                })
            }
            1 => Change::DeleteEndpoint(format!("{ns}/p{}", obj % 6)),
            2 => Change::UpsertService(Service {
                namespace: ns.clone(),
                name: format!("s{}", obj % 3),
                // Some services take their backends from EndpointSlices.
                selector: (!n.is_multiple_of(4))
                    .then(|| [("app".to_string(), format!("a{}", n % 3))].into()),
                // Few addresses: two services sometimes claim one frontend.
                cluster_ips: vec![format!("10.96.0.{}", n % 7).parse().unwrap()],
                ports: vec![ServicePortSpec {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Protocol::TCP,
                    target: ServiceTarget::Named("http".into()),
                    node_port: None,
                }],
                service_type: ServiceType::ClusterIP,
                external_ips: vec![],
                load_balancer_ips: vec![],
                session_affinity_s: n.is_multiple_of(5).then_some(60),
                internal_traffic_local: false,
                external_traffic_local: false,
            }),
            3 => Change::DeleteService((ns, format!("s{}", obj % 3))),
            4 => Change::UpsertEndpointSlice(EndpointSlice {
                namespace: ns.clone(),
                name: format!("sl{}", obj % 2),
                service: format!("s{}", obj % 3),
                ports: vec![(Some("http".into()), 9000 + u16::from(n % 2), Protocol::TCP)],
                endpoints: (0..n % 4)
                    .map(|i| SliceEndpoint {
                        addresses: vec![ip(n.wrapping_add(i))],
                        ready: i != 1,
                        serving: true,
                        terminating: i == 1,
                        pod: None,
                        node_name: None,
                    })
                    .collect(),
            }),
            _ => Change::DeleteEndpointSlice((ns, format!("sl{}", obj % 2))),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The agent's path (the namespaces a batch touched, the frontends that changed,
        /// their plan only) lands where a full rebuild and a full plan would, after every
        /// change of a random sequence.
        #[test]
        fn incremental_updates_equal_a_rebuild(
            steps in proptest::collection::vec((0u8..6, 0u8..3, 0u8..6, 0u8..255), 1..40)
        ) {
            let mut engine = crate::engine::Engine::new(crate::engine::EngineConfig::default());
            let mut t = LbTarget::default();
            let mut s = LbState::default();
            for (kind, ns, obj, n) in steps {
                let ch = change(kind, ns, obj, n);
                let undo = engine.undo_for(std::slice::from_ref(&ch));
                proptest::prop_assert_eq!(undo.is_some(), kind % 6 >= 2, "undo only for services and slices");
                let before = engine.cluster().clone();
                let diff = engine.apply(vec![ch]).unwrap();
                if let Some(undo) = undo {
                    let mut back = engine.clone();
                    back.apply(undo).unwrap();
                    proptest::prop_assert_eq!(back.cluster(), &before, "the undo restores the model");
                }
                let keys = t.update(engine.cluster(), &diff.services_touched);
                let p = plan_for(&s, &t, &keys);
                run(&mut s, &p);
                let fresh = LbTarget::from_cluster(engine.cluster(), None);
                proptest::prop_assert_eq!(&t.frontends, &fresh.frontends);
                proptest::prop_assert_eq!(&t.skipped, &fresh.skipped);
                // The namespace pod index selects what testing every pod selects.
                for svc in engine.cluster().services.values() {
                    let name = format!("{}/{}", svc.namespace, svc.name);
                    let Ok(fbs) = backends::frontends(engine.cluster(), svc, 251) else {
                        // Two pods with one address: no table; the target says why.
                        proptest::prop_assert!(
                            t.skipped.iter().any(|m| m.starts_with(&format!("service {name}:"))),
                            "{name} left out without a word: {:?}", t.skipped
                        );
                        continue;
                    };
                    for fb in fbs {
                        let key = LbKey::new(fb.frontend.vip, fb.frontend.port, fb.frontend.protocol.0);
                        if let Some(fe) = t.frontends.get(&key).filter(|fe| fe.service == name) {
                            let want: Vec<LbBackend> =
                                fb.backends.iter().map(|b| LbBackend::new(b.addr, b.port)).collect();
                            proptest::prop_assert_eq!(&fe.backends, &want, "{}", name);
                        }
                    }
                }
                let rest = plan(&s, &fresh);
                proptest::prop_assert!(rest.ops.is_empty(), "left for a full plan: {:?}", rest.ops);
            }
        }
    }
}
