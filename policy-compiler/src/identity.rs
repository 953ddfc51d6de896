//! Numeric security identities.
//!
//! A cluster identity stands for one distinct security-relevant label set: the pod's
//! labels (after the label filter), its namespace and that namespace's labels, its named
//! container ports, and which policy CIDRs contain its IPs. The namespace is a separate
//! field, never a label, so a pod cannot claim another namespace through its own labels.
//! Named ports and CIDR memberships are part of the key so that every endpoint sharing an
//! identity resolves named ports and ipBlocks identically; they split an identity only
//! where pods with equal labels really differ.
//!
//! Number ranges (see `ebpf/include/palisade_abi.h`): reserved identities 1..=10, cluster
//! identities from 256, CIDR identities from 2^24. Allocation is deterministic for a given
//! input: a batch allocates new keys in sorted order. Numbers are never reused while an
//! engine lives, so a log line's identity never silently changes meaning.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::abi;
use crate::cidr::Cidr;
use crate::hash::FxHashMap as HashMap;
use crate::k8s::Labels;
use crate::model::NamedPort;

/// Fixed identities for entities that are not pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reserved {
    Host,
    World,
    Unmanaged,
    Health,
    Init,
    RemoteNode,
    KubeApiserver,
    Ingress,
    WorldIpv4,
    WorldIpv6,
}

impl Reserved {
    pub const ALL: [Reserved; 10] = [
        Reserved::Host,
        Reserved::World,
        Reserved::Unmanaged,
        Reserved::Health,
        Reserved::Init,
        Reserved::RemoteNode,
        Reserved::KubeApiserver,
        Reserved::Ingress,
        Reserved::WorldIpv4,
        Reserved::WorldIpv6,
    ];

    pub fn id(self) -> u32 {
        match self {
            Reserved::Host => abi::IDENTITY_HOST,
            Reserved::World => abi::IDENTITY_WORLD,
            Reserved::Unmanaged => abi::IDENTITY_UNMANAGED,
            Reserved::Health => abi::IDENTITY_HEALTH,
            Reserved::Init => abi::IDENTITY_INIT,
            Reserved::RemoteNode => abi::IDENTITY_REMOTE_NODE,
            Reserved::KubeApiserver => abi::IDENTITY_KUBE_APISERVER,
            Reserved::Ingress => abi::IDENTITY_INGRESS,
            Reserved::WorldIpv4 => abi::IDENTITY_WORLD_IPV4,
            Reserved::WorldIpv6 => abi::IDENTITY_WORLD_IPV6,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Reserved::Host => "reserved:host",
            Reserved::World => "reserved:world",
            Reserved::Unmanaged => "reserved:unmanaged",
            Reserved::Health => "reserved:health",
            Reserved::Init => "reserved:init",
            Reserved::RemoteNode => "reserved:remote-node",
            Reserved::KubeApiserver => "reserved:kube-apiserver",
            Reserved::Ingress => "reserved:ingress",
            Reserved::WorldIpv4 => "reserved:world-ipv4",
            Reserved::WorldIpv6 => "reserved:world-ipv6",
        }
    }

    pub fn from_id(id: u32) -> Option<Reserved> {
        Reserved::ALL.into_iter().find(|r| r.id() == id)
    }
}

/// The security-relevant facts of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IdentityKey {
    pub namespace: Arc<str>,
    pub namespace_labels: Arc<Labels>,
    /// Pod labels after the label filter.
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    /// For each IP of the endpoint, the policy CIDRs containing it (sorted, deduplicated).
    pub cidr_sets: Vec<Vec<Cidr>>,
}

impl IdentityKey {
    /// Labels in the `k8s:key=value` form verdict logs use.
    pub fn log_labels(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("k8s:{k}={v}"))
            .collect();
        out.push(format!(
            "k8s:io.kubernetes.pod.namespace={}",
            self.namespace
        ));
        out
    }
}

/// What an identity number stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum IdentityInfo {
    Reserved(Reserved),
    Cluster(Arc<IdentityKey>),
    Cidr(Cidr),
    /// Identity host, with the node addresses that map to it (ipBlocks containing one of
    /// them select it).
    Host(Arc<[std::net::IpAddr]>),
}

#[derive(Debug, Clone, Default)]
pub struct IdentityAllocator {
    by_key: HashMap<Arc<IdentityKey>, u32>,
    keys: BTreeMap<u32, (Arc<IdentityKey>, usize)>,
    next_cluster: u32,
    by_cidr: BTreeMap<Cidr, u32>,
    cidrs: BTreeMap<u32, Cidr>,
    next_cidr: u32,
    /// Numbers to reuse for keys seen before (see [`IdentityAllocator::with_numbering`]).
    preferred: HashMap<Arc<IdentityKey>, u32>,
    preferred_cidr: BTreeMap<Cidr, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("cluster identity space exhausted ({max} identities)")]
    ClusterExhausted { max: u32 },
    #[error("CIDR identity space exhausted ({max} identities)")]
    CidrExhausted { max: u32 },
}

impl IdentityAllocator {
    pub fn new() -> Self {
        IdentityAllocator {
            next_cluster: abi::IDENTITY_CLUSTER_MIN,
            next_cidr: abi::IDENTITY_CIDR_MIN,
            ..Default::default()
        }
    }

    /// An empty allocator that gives every key and CIDR known to `other` the number it has
    /// there. A recompile from scratch (enforcer restart, consistency checks) then yields
    /// the same numbers, so maps and logs keep their meaning.
    pub fn with_numbering(other: &IdentityAllocator) -> Self {
        let mut a = IdentityAllocator::new();
        a.preferred = other
            .keys
            .iter()
            .map(|(id, (k, _))| (k.clone(), *id))
            .collect::<HashMap<_, _>>();
        a.preferred
            .extend(other.preferred.iter().map(|(k, v)| (k.clone(), *v)));
        a.preferred_cidr = other.by_cidr.clone();
        a.next_cluster = other.next_cluster;
        a.next_cidr = other.next_cidr;
        a
    }

    /// Asks for `id` when `key` is first acquired (if the number is free then). Lets a
    /// restarted enforcer keep the numbers its pinned maps already use; fresh numbers are
    /// allocated above every preferred one, so no new key takes an old key's number.
    /// Numbers outside the cluster range are ignored.
    pub fn prefer(&mut self, key: Arc<IdentityKey>, id: u32) {
        if (abi::IDENTITY_CLUSTER_MIN..=abi::IDENTITY_CLUSTER_MAX).contains(&id) {
            self.preferred.insert(key, id);
            self.next_cluster = self.next_cluster.max(id + 1);
        }
    }

    /// [`IdentityAllocator::prefer`] for a CIDR identity.
    pub fn prefer_cidr(&mut self, cidr: Cidr, id: u32) {
        if (abi::IDENTITY_CIDR_MIN..=abi::IDENTITY_CIDR_MAX).contains(&id) {
            self.preferred_cidr.insert(cidr, id);
            self.next_cidr = self.next_cidr.max(id + 1);
        }
    }

    pub fn lookup(&self, key: &IdentityKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// Takes a reference on `key`, allocating a number when it is new.
    /// Returns the id and whether it was newly allocated.
    pub fn acquire(&mut self, key: Arc<IdentityKey>) -> Result<(u32, bool), IdentityError> {
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(e) = self.keys.get_mut(&id) {
                e.1 += 1;
            }
            return Ok((id, false));
        }
        if self.next_cluster > abi::IDENTITY_CLUSTER_MAX {
            return Err(IdentityError::ClusterExhausted {
                max: abi::IDENTITY_CLUSTER_MAX - abi::IDENTITY_CLUSTER_MIN + 1,
            });
        }
        let id = match self.preferred.get(&key) {
            Some(&p) if !self.keys.contains_key(&p) => p,
            _ => {
                let id = self.next_cluster;
                self.next_cluster += 1;
                id
            }
        };
        self.by_key.insert(key.clone(), id);
        self.keys.insert(id, (key, 1));
        Ok((id, true))
    }

    /// Drops a reference; returns the key when the identity is released.
    pub fn release(&mut self, id: u32) -> Option<Arc<IdentityKey>> {
        let e = self.keys.get_mut(&id)?;
        e.1 = e.1.saturating_sub(1);
        if e.1 > 0 {
            return None;
        }
        let (key, _) = self.keys.remove(&id)?;
        self.by_key.remove(&key);
        Some(key)
    }

    pub fn cidr_identity(&self, cidr: &Cidr) -> Option<u32> {
        self.by_cidr.get(cidr).copied()
    }

    pub fn acquire_cidr(&mut self, cidr: Cidr) -> Result<u32, IdentityError> {
        if let Some(&id) = self.by_cidr.get(&cidr) {
            return Ok(id);
        }
        if self.next_cidr > abi::IDENTITY_CIDR_MAX {
            return Err(IdentityError::CidrExhausted {
                max: abi::IDENTITY_CIDR_MAX - abi::IDENTITY_CIDR_MIN + 1,
            });
        }
        let id = match self.preferred_cidr.get(&cidr) {
            Some(&p) if !self.cidrs.contains_key(&p) => p,
            _ => {
                let id = self.next_cidr;
                self.next_cidr += 1;
                id
            }
        };
        self.by_cidr.insert(cidr, id);
        self.cidrs.insert(id, cidr);
        Ok(id)
    }

    pub fn release_cidr(&mut self, cidr: &Cidr) -> Option<u32> {
        let id = self.by_cidr.remove(cidr)?;
        self.cidrs.remove(&id);
        Some(id)
    }

    pub fn key(&self, id: u32) -> Option<&Arc<IdentityKey>> {
        self.keys.get(&id).map(|(k, _)| k)
    }

    pub fn info(&self, id: u32) -> Option<IdentityInfo> {
        if let Some(r) = Reserved::from_id(id) {
            return Some(IdentityInfo::Reserved(r));
        }
        if let Some(k) = self.key(id) {
            return Some(IdentityInfo::Cluster(k.clone()));
        }
        self.cidrs.get(&id).map(|c| IdentityInfo::Cidr(*c))
    }

    pub fn cluster_ids(&self) -> impl Iterator<Item = (u32, &Arc<IdentityKey>)> {
        self.keys.iter().map(|(id, (k, _))| (*id, k))
    }

    pub fn cidr_ids(&self) -> impl Iterator<Item = (u32, &Cidr)> {
        self.cidrs.iter().map(|(id, c)| (*id, c))
    }

    pub fn cluster_count(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(app: &str) -> Arc<IdentityKey> {
        Arc::new(IdentityKey {
            namespace: Arc::from("ns"),
            namespace_labels: Arc::new(Labels::new()),
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            ports: Vec::new(),
            cidr_sets: Vec::new(),
        })
    }

    #[test]
    fn preferred_numbers_are_kept_and_fresh_ones_come_after_them() {
        let mut a = IdentityAllocator::new();
        a.prefer(key("srv"), 257);
        a.prefer(key("cl"), 256);
        a.prefer(key("ignored"), 5); // reserved range: not a cluster number
        // Acquired in another order than the numbers were first given out.
        assert_eq!(a.acquire(key("cl")), Ok((256, true)));
        assert_eq!(a.acquire(key("srv")), Ok((257, true)));
        assert_eq!(a.acquire(key("new")), Ok((258, true)));
        assert_eq!(a.acquire(key("ignored")), Ok((259, true)));

        let cidr = Cidr::new(std::net::IpAddr::from([10, 0, 0, 0]), 8).unwrap();
        let mut a = IdentityAllocator::new();
        a.prefer_cidr(cidr, abi::IDENTITY_CIDR_MIN + 7);
        assert_eq!(a.acquire_cidr(cidr), Ok(abi::IDENTITY_CIDR_MIN + 7));
        assert_eq!(
            a.acquire_cidr(Cidr::new(std::net::IpAddr::from([11, 0, 0, 0]), 8).unwrap()),
            Ok(abi::IDENTITY_CIDR_MIN + 8)
        );
    }
}
