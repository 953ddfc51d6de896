//! Policies entering and leaving the engine: selectors and rule ids they hold.

use std::sync::Arc;

use crate::identity::{IdentityInfo, Reserved};
use crate::model::{Direction, Peer, Peers, Policy, PortMatch};
use crate::rules::{PolicyRef, RuleRef};
use crate::selector::{SelectorId, SelectorKey};

use super::*;

#[derive(Debug, Clone)]
pub(super) enum RulePeers {
    Any,
    Selectors(Vec<SelectorId>),
}

#[derive(Debug, Clone)]
pub(super) struct PolicyState {
    pub(super) policy: Arc<Policy>,
    pub(super) subject: SelectorId,
    /// Per direction, per rule: peers and rule id.
    pub(super) rules: [Vec<(RulePeers, u32)>; 2],
}

impl PolicyState {
    pub(super) fn selectors(&self) -> impl Iterator<Item = SelectorId> + '_ {
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

impl Engine {
    pub(super) fn all_identities(&self) -> Vec<(u32, IdentityInfo)> {
        let host: std::sync::Arc<[IpAddr]> = self.config.host_addresses.clone().into();
        let mut v: Vec<(u32, IdentityInfo)> = Reserved::ALL
            .iter()
            .map(|r| match r {
                Reserved::Host if !host.is_empty() => (r.id(), IdentityInfo::Host(host.clone())),
                _ => (r.id(), IdentityInfo::Reserved(*r)),
            })
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

    pub(super) fn acquire_selector(
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

    pub(super) fn register_policy(&mut self, r: &PolicyRef, p: Arc<Policy>) -> PolicyState {
        let mut all: Option<Vec<(u32, IdentityInfo)>> = None;
        let subject = self.acquire_selector(
            SelectorKey::Endpoints {
                namespaces: p.scope(),
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
                                Peer::Entity(e) => SelectorKey::Entity(*e),
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

    pub(super) fn unregister_policy(
        &mut self,
        r: &PolicyRef,
        s: &PolicyState,
        replacement: Option<&Policy>,
    ) {
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
}
