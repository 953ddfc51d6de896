//! The selector cache: every distinct selector used by a policy resolves to the set of
//! identities it selects (a roaring bitmap), kept current as identities come and go.

use std::collections::HashMap;
use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::cidr::Cidr;
use crate::identity::{IdentityInfo, IdentityKey, Reserved};
use crate::k8s::Labels;
use crate::labels::Selector;
use crate::model::Entity;
use crate::model::NamespaceScope;

/// What a selector selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SelectorKey {
    Endpoints {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
    /// A reserved entity: `world` (addresses outside the cluster: the world identities and
    /// the CIDR identities), `host` (the node), `cluster` (every pod and the node),
    /// `kube-apiserver` (the reserved kube-apiserver identity).
    Entity(Entity),
}

pub type SelectorId = u32;

impl SelectorKey {
    pub fn matches(&self, info: &IdentityInfo) -> bool {
        match (self, info) {
            (SelectorKey::Endpoints { namespaces, pods }, IdentityInfo::Cluster(k)) => {
                let ns_ok = match namespaces {
                    NamespaceScope::Own(ns) => *ns == *k.namespace,
                    NamespaceScope::Selected(s) => s.matches(&k.namespace_labels),
                };
                ns_ok && pods.matches(&k.labels)
            }
            (SelectorKey::IpBlock { cidr, except }, IdentityInfo::Cidr(p)) => {
                cidr.contains(p) && !except.iter().any(|e| e.contains(p))
            }
            (SelectorKey::IpBlock { cidr, .. }, IdentityInfo::Reserved(r)) => {
                // The world identities stand for the /0 of their family.
                cidr.len() == 0
                    && ((*r == Reserved::WorldIpv4 && cidr.is_ipv4())
                        || (*r == Reserved::WorldIpv6 && !cidr.is_ipv4()))
            }
            (SelectorKey::IpBlock { cidr, except }, IdentityInfo::Host(addrs)) => addrs
                .iter()
                .any(|a| cidr.contains_ip(a) && !except.iter().any(|e| e.contains_ip(a))),
            (SelectorKey::IpBlock { cidr, except }, IdentityInfo::Cluster(k)) => {
                ipblock_matches_cluster(cidr, except, k)
            }
            (SelectorKey::Entity(e), info) => entity_matches(*e, info),
            _ => false,
        }
    }
}

/// Which identities a reserved entity stands for.
pub fn entity_matches(e: Entity, info: &IdentityInfo) -> bool {
    match (e, info) {
        (Entity::World, IdentityInfo::Cidr(_)) => true,
        (Entity::World, IdentityInfo::Reserved(r)) => {
            matches!(
                r,
                Reserved::World | Reserved::WorldIpv4 | Reserved::WorldIpv6
            )
        }
        (Entity::Host | Entity::Cluster, IdentityInfo::Host(_)) => true,
        (Entity::Host | Entity::Cluster, IdentityInfo::Reserved(Reserved::Host)) => true,
        (Entity::Cluster, IdentityInfo::Cluster(_)) => true,
        (Entity::Cluster, IdentityInfo::Reserved(Reserved::RemoteNode)) => true,
        (Entity::KubeApiserver, IdentityInfo::Reserved(Reserved::KubeApiserver)) => true,
        _ => false,
    }
}

/// An ipBlock selects a pod when one of its IPs lies in `cidr` and in no `except`.
fn ipblock_matches_cluster(cidr: &Cidr, except: &[Cidr], k: &IdentityKey) -> bool {
    k.cidr_sets
        .iter()
        .any(|set| set.contains(cidr) && !except.iter().any(|e| set.contains(e)))
}

#[derive(Debug, Clone)]
struct Entry {
    key: SelectorKey,
    ids: RoaringBitmap,
    refs: usize,
}

/// Which selectors could match an identity, so a new identity is tested against few.
#[derive(Debug, Clone, Default)]
pub struct SelectorCache {
    by_key: HashMap<SelectorKey, SelectorId>,
    entries: HashMap<SelectorId, Entry>,
    next: SelectorId,
    /// Selectors scoped to one namespace (podSelector without namespaceSelector).
    by_namespace: HashMap<String, Vec<SelectorId>>,
    /// Selectors with a namespaceSelector.
    cross_namespace: Vec<SelectorId>,
    /// ipBlock selectors.
    ip_blocks: Vec<SelectorId>,
    /// Entity selectors (few; tested against every identity).
    entities: Vec<SelectorId>,
    /// Namespace labels -> the cross-namespace selectors whose namespace part matches
    /// them. Identities of one namespace share its labels, so a new identity tests only
    /// the pod part of most selectors. Cleared whenever a cross-namespace selector
    /// appears or goes.
    cross_by_ns_labels: crate::hash::FxHashMap<Arc<Labels>, Vec<SelectorId>>,
}

impl SelectorCache {
    /// Takes a reference on a selector; a new selector is evaluated over `identities`.
    /// Returns the id and whether the selector is new.
    pub fn acquire(
        &mut self,
        key: SelectorKey,
        identities: impl Iterator<Item = (u32, IdentityInfo)>,
    ) -> (SelectorId, bool) {
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(e) = self.entries.get_mut(&id) {
                e.refs += 1;
            }
            return (id, false);
        }
        let id = self.next;
        self.next += 1;
        let mut ids = RoaringBitmap::new();
        for (n, info) in identities {
            if key.matches(&info) {
                ids.insert(n);
            }
        }
        match &key {
            SelectorKey::Endpoints {
                namespaces: NamespaceScope::Own(ns),
                ..
            } => self.by_namespace.entry(ns.clone()).or_default().push(id),
            SelectorKey::Endpoints { .. } => {
                self.cross_namespace.push(id);
                self.cross_by_ns_labels.clear();
            }
            SelectorKey::IpBlock { .. } => self.ip_blocks.push(id),
            SelectorKey::Entity(_) => self.entities.push(id),
        }
        self.by_key.insert(key.clone(), id);
        self.entries.insert(id, Entry { key, ids, refs: 1 });
        (id, true)
    }

    /// Drops a reference; returns true when the selector is gone.
    pub fn release(&mut self, id: SelectorId) -> bool {
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return false;
        }
        let Some(e) = self.entries.remove(&id) else {
            return false;
        };
        self.by_key.remove(&e.key);
        let list = match &e.key {
            SelectorKey::Endpoints {
                namespaces: NamespaceScope::Own(ns),
                ..
            } => self.by_namespace.get_mut(ns),
            SelectorKey::Endpoints { .. } => {
                self.cross_by_ns_labels.clear();
                Some(&mut self.cross_namespace)
            }
            SelectorKey::IpBlock { .. } => Some(&mut self.ip_blocks),
            SelectorKey::Entity(_) => Some(&mut self.entities),
        };
        if let Some(list) = list {
            list.retain(|x| *x != id);
        }
        true
    }

    /// Cross-namespace selectors whose namespace part matches `ns_labels`.
    fn cross_for(&mut self, ns_labels: &Arc<Labels>) -> &[SelectorId] {
        if !self.cross_by_ns_labels.contains_key(ns_labels) {
            let hits = self
                .cross_namespace
                .iter()
                .copied()
                .filter(|s| match self.entries.get(s).map(|e| &e.key) {
                    Some(SelectorKey::Endpoints {
                        namespaces: NamespaceScope::Selected(n),
                        ..
                    }) => n.matches(ns_labels),
                    _ => false,
                })
                .collect();
            self.cross_by_ns_labels.insert(ns_labels.clone(), hits);
        }
        self.cross_by_ns_labels
            .get(ns_labels)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Selectors that could select `info`: its namespace's pod selectors, the
    /// cross-namespace selectors whose namespace part matches, and ipBlocks.
    fn candidates(&mut self, info: &IdentityInfo) -> Vec<SelectorId> {
        match info {
            IdentityInfo::Cluster(k) => {
                let mut v: Vec<SelectorId> = self
                    .by_namespace
                    .get(&*k.namespace)
                    .cloned()
                    .unwrap_or_default();
                v.extend_from_slice(self.cross_for(&k.namespace_labels));
                if !k.cidr_sets.is_empty() {
                    v.extend_from_slice(&self.ip_blocks);
                }
                v.extend_from_slice(&self.entities);
                v
            }
            IdentityInfo::Cidr(_) | IdentityInfo::Reserved(_) | IdentityInfo::Host(_) => {
                let mut v = self.ip_blocks.clone();
                v.extend_from_slice(&self.entities);
                v
            }
        }
    }

    /// Adds a new identity to every selector that selects it; returns those selectors.
    pub fn add_identity(&mut self, id: u32, info: &IdentityInfo) -> Vec<SelectorId> {
        let mut changed = Vec::new();
        let candidates = self.candidates(info);
        for s in candidates {
            if let Some(e) = self.entries.get_mut(&s)
                && e.key.matches(info)
                && e.ids.insert(id)
            {
                changed.push(s);
            }
        }
        changed
    }

    /// Removes an identity from every selector; returns the selectors that held it.
    pub fn remove_identity(&mut self, id: u32, info: &IdentityInfo) -> Vec<SelectorId> {
        let mut changed = Vec::new();
        for s in self.candidates(info) {
            if let Some(e) = self.entries.get_mut(&s)
                && e.ids.remove(id)
            {
                changed.push(s);
            }
        }
        changed
    }

    pub fn selected(&self, id: SelectorId) -> Option<&RoaringBitmap> {
        self.entries.get(&id).map(|e| &e.ids)
    }

    pub fn key(&self, id: SelectorId) -> Option<&SelectorKey> {
        self.entries.get(&id).map(|e| &e.key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl SelectorCache {
    pub fn contains(&self, key: &SelectorKey) -> bool {
        self.by_key.contains_key(key)
    }
}
