//! Rule ids: the number a policy map value carries, resolving to policy + rule index.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Serialize;

use crate::abi;
use crate::model::Direction;

/// The kinds of policy Palisade reads: those of the NetworkPolicy tier, and the cluster-admin
/// kinds of `policy.networking.k8s.io` (AdminNetworkPolicy and BaselineAdminNetworkPolicy of
/// v1alpha1, ClusterNetworkPolicy of v1alpha2) whose policies live in the admin and baseline
/// tiers (see [`crate::model::PolicyTier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize)]
pub enum PolicyKind {
    #[default]
    NetworkPolicy,
    PalisadeNetworkPolicy,
    PalisadeClusterNetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    ClusterNetworkPolicy,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::NetworkPolicy,
        PolicyKind::PalisadeNetworkPolicy,
        PolicyKind::PalisadeClusterNetworkPolicy,
        PolicyKind::CiliumNetworkPolicy,
        PolicyKind::CiliumClusterwideNetworkPolicy,
        PolicyKind::AdminNetworkPolicy,
        PolicyKind::BaselineAdminNetworkPolicy,
        PolicyKind::ClusterNetworkPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::PalisadeNetworkPolicy => "PalisadeNetworkPolicy",
            PolicyKind::PalisadeClusterNetworkPolicy => "PalisadeClusterNetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            PolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }

    pub fn from_kind(kind: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// Whether objects of this kind have no namespace.
    pub fn is_cluster_scoped(self) -> bool {
        matches!(
            self,
            PolicyKind::PalisadeClusterNetworkPolicy
                | PolicyKind::CiliumClusterwideNetworkPolicy
                | PolicyKind::AdminNetworkPolicy
                | PolicyKind::BaselineAdminNetworkPolicy
                | PolicyKind::ClusterNetworkPolicy
        )
    }

    /// Whether this is one of the cluster-admin kinds of `policy.networking.k8s.io`.
    pub fn is_cluster_admin(self) -> bool {
        matches!(
            self,
            PolicyKind::AdminNetworkPolicy
                | PolicyKind::BaselineAdminNetworkPolicy
                | PolicyKind::ClusterNetworkPolicy
        )
    }

    pub fn is_network_policy(&self) -> bool {
        *self == PolicyKind::NetworkPolicy
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyRef {
    #[serde(skip_serializing_if = "PolicyKind::is_network_policy")]
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    /// A NetworkPolicy.
    pub fn network_policy(namespace: &str, name: &str) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::NetworkPolicy,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// `ns/name` for a NetworkPolicy; `Kind ns/name`, or `Kind name` when cluster-scoped, for
/// the other kinds.
impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PolicyKind::NetworkPolicy => write!(f, "{}/{}", self.namespace, self.name),
            k if k.is_cluster_scoped() => write!(f, "{k} {}", self.name),
            k => write!(f, "{k} {}/{}", self.namespace, self.name),
        }
    }
}

/// One rule of one policy: `spec.<direction>[index]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RuleRef {
    pub policy: PolicyRef,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.policy, self.direction, self.index)
    }
}

/// Stable rule ids. An id keeps its meaning while its rule exists and is never reused
/// within one engine, so a verdict logged earlier still names the right rule.
#[derive(Debug, Clone)]
pub struct RuleTable {
    by_ref: HashMap<RuleRef, u32>,
    by_id: BTreeMap<u32, RuleRef>,
    next: u32,
    preferred: HashMap<RuleRef, u32>,
}

impl Default for RuleTable {
    fn default() -> Self {
        RuleTable {
            by_ref: HashMap::new(),
            by_id: BTreeMap::new(),
            next: abi::RULE_ID_FIRST_POLICY,
            preferred: HashMap::new(),
        }
    }
}

impl RuleTable {
    /// An empty table that gives every rule known to `other` the id it has there.
    pub fn with_numbering(other: &RuleTable) -> Self {
        let mut preferred = other.preferred.clone();
        preferred.extend(other.by_ref.iter().map(|(k, v)| (k.clone(), *v)));
        RuleTable {
            by_ref: HashMap::new(),
            by_id: BTreeMap::new(),
            next: other.next,
            preferred,
        }
    }

    pub fn acquire(&mut self, r: RuleRef) -> u32 {
        if let Some(&id) = self.by_ref.get(&r) {
            return id;
        }
        let id = match self.preferred.get(&r) {
            Some(&p) if !self.by_id.contains_key(&p) => p,
            _ => {
                let id = self.next;
                self.next += 1;
                id
            }
        };
        self.by_ref.insert(r.clone(), id);
        self.by_id.insert(id, r);
        id
    }

    pub fn release(&mut self, r: &RuleRef) {
        if let Some(id) = self.by_ref.remove(r) {
            self.by_id.remove(&id);
        }
    }

    pub fn id(&self, r: &RuleRef) -> Option<u32> {
        self.by_ref.get(r).copied()
    }

    pub fn resolve(&self, id: u32) -> Option<&RuleRef> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
