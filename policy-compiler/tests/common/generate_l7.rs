//! Random policies of every kind: NetworkPolicy, Palisade's namespaced and cluster-scoped
//! kinds with deny rules, entities, audit mode, default deny switched off, and HTTP rules on
//! ports; the cluster-admin kinds (AdminNetworkPolicy, BaselineAdminNetworkPolicy,
//! ClusterNetworkPolicy in either tier) with Allow, Deny and Pass rules at colliding
//! priorities; plus random HTTP requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use palisade_l7proxy::{
    HeaderMatch, HttpRule, NormalizeOptions, NormalizedRequest, RequestHead, normalize,
};
use policy_compiler::model::{
    Entity, Peer, Peers, Policy, PolicyTier, PortMatch, PortSpec, Rule, RuleAction,
};
use policy_compiler::rules::PolicyKind;
use policy_compiler::{Cluster, Protocol};
use proptest::prelude::*;

use super::generate::{
    NAMESPACES, assemble, endpoint, ns_labels, ns_selector, peer, pod_selector, port_spec,
};

fn http_rule() -> impl Strategy<Value = HttpRule> {
    (
        prop::option::of(prop::sample::select(
            &["GET", "POST", "GET|HEAD", "DELETE"][..],
        )),
        prop::option::of(prop::sample::select(
            &["/api/.*", "/admin(/.*)?", "/", "/api/v1/data"][..],
        )),
        prop::option::weighted(
            0.2,
            prop::sample::select(&[r"shop\.example", r"shop\.example:8080"][..]),
        ),
        prop::option::weighted(0.2, prop::sample::select(&["x-tenant", "x-debug"][..])),
    )
        .prop_map(|(m, p, h, hdr)| HttpRule {
            method: m.map(str::to_string),
            path: p.map(str::to_string),
            host: h.map(str::to_string),
            headers: hdr
                .map(|n| {
                    vec![HeaderMatch {
                        name: n.to_string(),
                        ..HeaderMatch::default()
                    }]
                })
                .unwrap_or_default(),
        })
}

fn l7_port() -> impl Strategy<Value = PortSpec> {
    (
        prop::sample::select(vec![
            PortMatch::Range(80, 80),
            PortMatch::Named("http".into()),
        ]),
        prop::collection::vec(http_rule(), 1..3),
    )
        .prop_map(|(port, rules)| PortSpec {
            protocol: Protocol::TCP,
            port,
            http: Some(rules),
        })
}

fn any_peer(ns: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        4 => peer(ns),
        1 => prop::sample::select(vec![Entity::World, Entity::Host, Entity::Cluster, Entity::KubeApiserver])
            .prop_map(Peer::Entity),
    ]
}

fn rule(ns: &'static str) -> impl Strategy<Value = Rule> {
    (
        prop_oneof![1 => Just(None), 3 => prop::collection::vec(any_peer(ns), 1..3).prop_map(Some)],
        prop::collection::vec(prop_oneof![3 => port_spec(), 3 => l7_port()], 0..3),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(peers, ports, deny)| Rule {
            peers: peers.map(Peers::List).unwrap_or(Peers::Any),
            ports,
            action: if deny {
                RuleAction::Deny
            } else {
                RuleAction::Allow
            },
            ..Rule::default()
        })
}

pub fn policy(name: String) -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        prop::sample::select(vec![
            PolicyKind::NetworkPolicy,
            PolicyKind::PalisadeNetworkPolicy,
            PolicyKind::PalisadeClusterNetworkPolicy,
            PolicyKind::NetworkPolicy,
            PolicyKind::PalisadeNetworkPolicy,
            PolicyKind::PalisadeClusterNetworkPolicy,
            PolicyKind::AdminNetworkPolicy,
            PolicyKind::BaselineAdminNetworkPolicy,
            PolicyKind::ClusterNetworkPolicy,
        ]),
    )
        .prop_flat_map(move |(ns, kind)| {
            let name = name.clone();
            (
                pod_selector(),
                prop::option::of(ns_selector()),
                prop::option::of(prop::collection::vec(rule(ns), 0..3)),
                prop::option::of(prop::collection::vec(rule(ns), 0..3)),
                prop::bool::weighted(0.15),
                [prop::bool::weighted(0.8), prop::bool::weighted(0.8)],
                // Few priorities, so that equal priorities (ordered by name) occur.
                prop::sample::select(vec![0u32, 5, 5, 10, 1000]),
                prop::collection::vec(prop::sample::select(vec![0u8, 1, 2]), 6),
                any::<bool>(),
            )
                .prop_map(
                    move |(
                        pod_selector,
                        nss,
                        ingress,
                        egress,
                        audit,
                        isolates,
                        priority,
                        actions,
                        cnp_admin,
                    )| {
                        if kind.is_cluster_admin() {
                            // The admin and baseline tiers: Allow, Deny and Pass rules on
                            // namespaces, pods and networks; no entities, HTTP rules or audit.
                            let tiered = |rules: Option<Vec<Rule>>, d: usize| {
                                rules.map(|rs| {
                                    rs.into_iter()
                                        .enumerate()
                                        .map(|(i, mut r)| {
                                            r.action = match actions[(d * 3 + i) % 6] {
                                                0 => RuleAction::Allow,
                                                1 => RuleAction::Deny,
                                                _ if kind
                                                    == PolicyKind::BaselineAdminNetworkPolicy =>
                                                {
                                                    RuleAction::Deny
                                                }
                                                _ => RuleAction::Pass,
                                            };
                                            r.ports.retain(|p| p.http.is_none());
                                            if let Peers::List(l) = &mut r.peers {
                                                l.retain(|p| !matches!(p, Peer::Entity(_)));
                                            }
                                            r
                                        })
                                        .collect()
                                })
                            };
                            let tier = match kind {
                                PolicyKind::AdminNetworkPolicy => PolicyTier::Admin(priority),
                                PolicyKind::ClusterNetworkPolicy if cnp_admin => {
                                    PolicyTier::Admin(priority)
                                }
                                PolicyKind::ClusterNetworkPolicy => PolicyTier::Baseline(priority),
                                _ => PolicyTier::Baseline(0),
                            };
                            return Policy {
                                kind,
                                namespace: String::new(),
                                name: name.clone(),
                                namespace_selector: Some(nss.clone().unwrap_or_default()),
                                pod_selector: pod_selector.clone(),
                                ingress: tiered(ingress, 0),
                                egress: tiered(egress, 1),
                                isolates: [false, false],
                                audit: false,
                                tier,
                                origin: "generated".into(),
                            };
                        }
                        let np = kind == PolicyKind::NetworkPolicy;
                        let strip = |rules: Option<Vec<Rule>>| {
                            // NetworkPolicy has neither deny rules, entities nor HTTP rules.
                            rules.map(|rs| {
                                rs.into_iter()
                                    .map(|mut r| {
                                        if np {
                                            r.action = RuleAction::Allow;
                                            r.ports.retain(|p| p.http.is_none());
                                            if let Peers::List(l) = &mut r.peers {
                                                l.retain(|p| !matches!(p, Peer::Entity(_)));
                                                if l.is_empty() {
                                                    r.peers = Peers::Any;
                                                }
                                            }
                                        }
                                        r
                                    })
                                    .collect()
                            })
                        };
                        let cluster = kind.is_cluster_scoped();
                        Policy {
                            kind,
                            namespace: if cluster {
                                String::new()
                            } else {
                                ns.to_string()
                            },
                            name: name.clone(),
                            namespace_selector: if cluster { nss } else { None },
                            pod_selector,
                            ingress: strip(ingress),
                            egress: strip(egress),
                            isolates: if np { [true, true] } else { isolates },
                            audit: !np && audit,
                            tier: Default::default(),
                            origin: "generated".into(),
                        }
                    },
                )
        })
}

/// A cluster with unique endpoint IPs and a mix of NetworkPolicy-tier kinds.
pub fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(
            (ns_labels(), prop::bool::weighted(0.25)).prop_map(|(mut l, audit)| {
                if audit {
                    l.insert(
                        policy_compiler::model::ENFORCEMENT_LABEL.to_string(),
                        policy_compiler::model::ENFORCEMENT_AUDIT.to_string(),
                    );
                }
                l
            }),
            3,
        ),
        (1usize..7).prop_flat_map(|n| (0..n).map(endpoint).collect::<Vec<_>>()),
        (1usize..7).prop_flat_map(|n| {
            (0..n)
                .map(|i| policy(format!("pol-{i}")))
                .collect::<Vec<_>>()
        }),
    )
        .prop_map(|(nsl, eps, pols)| assemble(nsl, eps, pols))
}

/// A normalized request from a small vocabulary that the generated rules speak.
pub fn request() -> impl Strategy<Value = NormalizedRequest> {
    (
        prop::sample::select(&["GET", "POST", "HEAD", "DELETE", "get"][..]),
        prop::sample::select(
            &[
                "/",
                "/api/v1/data",
                "/api/x",
                "/admin",
                "/admin/users",
                "/other",
            ][..],
        ),
        prop::sample::select(&["shop.example", "shop.example:8080", "other"][..]),
        prop::sample::subsequence(vec!["x-tenant", "x-debug"], 0..=2),
    )
        .prop_map(|(method, path, host, headers)| {
            let mut hs: Vec<(&str, &[u8])> = vec![("Host", host.as_bytes())];
            hs.extend(headers.iter().map(|n| (*n, &b"1"[..])));
            normalize(
                &RequestHead {
                    method,
                    target: path.as_bytes(),
                    headers: &hs,
                },
                NormalizeOptions::default(),
            )
            .unwrap()
        })
}
