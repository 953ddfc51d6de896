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
use crate::hash::FxHashMap;
use crate::identity::{IdentityAllocator, IdentityError, Reserved};
use crate::labels::LabelFilter;
use crate::model::{Cluster, Direction, Endpoint, EndpointSlice, Namespace, Policy, Service};
use crate::rules::{PolicyRef, RuleTable};
use crate::selector::{SelectorCache, SelectorId};

mod apply;
mod compile;
mod diff;
pub mod l7;
mod ports;
mod register;
pub mod tiers;

pub use diff::{MapDiff, MapOp};
use ports::PortPrefix;
pub use ports::{port_mask, port_range_prefixes};
use register::{PolicyState, RulePeers};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineConfig {
    /// Which pod labels are left out of identities.
    pub label_filter: LabelFilter,
    /// Whether an ipBlock selects pods whose IPs fall inside it (default: yes, as the
    /// upstream e2e suite expects). Off, ipBlocks select only addresses outside the
    /// cluster, which is how some offline analyzers read the API.
    pub ipblocks_select_pods: bool,
    /// The addresses of the node the endpoints run on. The ipcache maps each to identity
    /// host, ipBlocks that contain one select host, and an isolated ingress direction
    /// always allows host (NetworkPolicy: traffic from the pod's node is allowed). Empty
    /// (the default): no address is the node's, and nothing of this applies.
    pub host_addresses: Vec<IpAddr>,
    /// The port the in-process L7 proxy listens on; redirect entries carry it.
    pub proxy_port: u16,
}

/// The L7 proxy's default port.
pub const DEFAULT_PROXY_PORT: u16 = 15080;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            label_filter: LabelFilter::default(),
            ipblocks_select_pods: true,
            host_addresses: Vec::new(),
            proxy_port: DEFAULT_PROXY_PORT,
        }
    }
}

impl EngineConfig {
    /// Whether `ip` is one of the node's own addresses.
    pub fn is_host_address(&self, ip: &IpAddr) -> bool {
        self.host_addresses.contains(ip)
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
    /// The HTTP rules of each entry that redirects to the proxy, sorted by key.
    pub l7: Vec<(EntryKey, l7::L7Set)>,
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

    /// The HTTP rules of a redirecting entry.
    pub fn l7(&self, key: &EntryKey) -> Option<&l7::L7Set> {
        self.l7
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.l7[i].1)
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
    /// Services and EndpointSlices are part of the model for service translation
    /// (`plan::lb`); they change no policy.
    UpsertService(Service),
    /// (namespace, name).
    DeleteService((String, String)),
    UpsertEndpointSlice(EndpointSlice),
    /// (namespace, name).
    DeleteEndpointSlice((String, String)),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
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
    /// Namespaces whose services may translate differently since the last
    /// [`Engine::take_services_touched`].
    services_pending: BTreeSet<String>,
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
        for a in &config.host_addresses {
            ipcache.insert(Cidr::host(*a), Reserved::Host.id());
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
            services_pending: BTreeSet::new(),
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

    /// The namespaces whose services may translate differently since the last call (every
    /// batch's `MapDiff::services_touched`, gathered): what the owner of a service target
    /// passes to `plan::lb::LbTarget::update` to keep it current.
    pub fn take_services_touched(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.services_pending)
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
    v.extend(cluster.services.into_values().map(Change::UpsertService));
    v.extend(
        cluster
            .endpoint_slices
            .into_values()
            .map(Change::UpsertEndpointSlice),
    );
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
    v.extend(
        cluster
            .services
            .values()
            .cloned()
            .map(Change::UpsertService),
    );
    v.extend(
        cluster
            .endpoint_slices
            .values()
            .cloned()
            .map(Change::UpsertEndpointSlice),
    );
    v
}
