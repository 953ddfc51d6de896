//! Random clusters, policies, flows and changes for the property tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use policy_compiler::cidr::Cidr;
use policy_compiler::k8s::Labels;
use policy_compiler::labels::{Operator, Requirement, Selector};
use policy_compiler::model::{
    Endpoint, NamedPort, Namespace, NamespaceScope, Peer, Peers, Policy, PortMatch, PortSpec, Rule,
    WorkloadRef,
};
use policy_compiler::{Change, Cluster, Flow, FlowPeer, Protocol};
use proptest::prelude::*;

pub const NAMESPACES: [&str; 3] = ["ns-a", "ns-b", "ns-c"];
const CIDRS: [&str; 7] = [
    "10.0.0.0/24",
    "10.0.0.0/28",
    "10.0.0.5/32",
    "10.0.0.0/8",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "fd00::/64",
];
pub const IPS: [&str; 8] = [
    "10.0.0.3",
    "10.0.0.5",
    "10.0.0.77",
    "10.9.0.1",
    "192.168.3.4",
    "8.8.8.8",
    "fd00::7",
    "2001:db8::1",
];
const PORT_NAMES: [(&str, u16, Protocol); 4] = [
    ("http", 80, Protocol::TCP),
    ("http", 8080, Protocol::TCP),
    ("dns", 53, Protocol::UDP),
    ("metrics", 9090, Protocol::TCP),
];
pub const FLOW_PORTS: [u16; 9] = [0, 53, 80, 443, 8000, 8050, 8080, 8100, 9090];

pub fn labels() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["web", "db", "api"])),
        prop::option::of(prop::sample::select(vec!["fe", "be"])),
        any::<bool>(),
    )
        .prop_map(|(app, tier, hash)| {
            let mut l = Labels::new();
            if let Some(a) = app {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = tier {
                l.insert("tier".into(), t.into());
            }
            if hash {
                l.insert("pod-template-hash".into(), "x1".into());
            }
            l
        })
}

pub fn ns_labels() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["x", "y"])),
        prop::option::of(prop::sample::select(vec!["prod", "dev"])),
    )
        .prop_map(|(team, env)| {
            let mut l = Labels::new();
            if let Some(t) = team {
                l.insert("team".into(), t.into());
            }
            if let Some(e) = env {
                l.insert("env".into(), e.into());
            }
            l
        })
}

fn selector(
    keys: &'static [&'static str],
    values: &'static [&'static str],
) -> impl Strategy<Value = Selector> {
    prop::collection::vec(
        (
            prop::sample::select(keys),
            prop::sample::select(vec![
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ]),
            prop::collection::btree_set(prop::sample::select(values), 1..3),
        ),
        0..3,
    )
    .prop_map(|reqs| {
        let mut requirements: Vec<Requirement> = reqs
            .into_iter()
            .map(|(k, op, vals)| Requirement {
                key: k.to_string(),
                op,
                values: match op {
                    Operator::In | Operator::NotIn => vals.into_iter().map(String::from).collect(),
                    _ => Default::default(),
                },
            })
            .collect();
        requirements.sort();
        requirements.dedup();
        Selector { requirements }
    })
}

pub fn pod_selector() -> impl Strategy<Value = Selector> {
    selector(
        &["app", "tier", "pod-template-hash"],
        &["web", "db", "api", "fe", "be"],
    )
}

pub fn ns_selector() -> impl Strategy<Value = Selector> {
    selector(
        &["team", "env", "kubernetes.io/metadata.name"],
        &["x", "y", "prod", "dev", "ns-a", "ns-b"],
    )
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

pub fn peer(ns: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        pod_selector().prop_map(move |pods| Peer::Endpoints {
            namespaces: NamespaceScope::Own(ns.into()),
            pods
        }),
        (ns_selector(), pod_selector()).prop_map(|(n, pods)| Peer::Endpoints {
            namespaces: NamespaceScope::Selected(n),
            pods
        }),
        (
            prop::sample::select(CIDRS.to_vec()),
            prop::collection::vec(prop::sample::select(CIDRS.to_vec()), 0..2)
        )
            .prop_map(|(c, ex)| {
                let c = cidr(c);
                // Keep only strict subsets, as validation requires.
                let except = ex
                    .into_iter()
                    .map(cidr)
                    .filter(|e| c.contains(e) && *e != c)
                    .collect();
                Peer::IpBlock { cidr: c, except }
            }),
    ]
}

pub fn port_spec() -> impl Strategy<Value = PortSpec> {
    prop_oneof![
        Just(PortSpec::new(Protocol::TCP, PortMatch::Range(80, 80))),
        Just(PortSpec::new(Protocol::UDP, PortMatch::Range(53, 53))),
        Just(PortSpec::new(Protocol::TCP, PortMatch::Range(8000, 8100))),
        Just(PortSpec::new(Protocol::TCP, PortMatch::Range(1, 1024))),
        Just(PortSpec::new(Protocol::SCTP, PortMatch::All)),
        Just(PortSpec::new(Protocol::UDP, PortMatch::All)),
        Just(PortSpec::new(
            Protocol::TCP,
            PortMatch::Named("http".into())
        )),
        Just(PortSpec::new(Protocol::UDP, PortMatch::Named("dns".into()))),
        Just(PortSpec::new(
            Protocol::TCP,
            PortMatch::Named("metrics".into())
        )),
    ]
}

fn rule(ns: &'static str) -> impl Strategy<Value = Rule> {
    (
        prop_oneof![1 => Just(None), 3 => prop::collection::vec(peer(ns), 1..3).prop_map(Some)],
        prop::collection::vec(port_spec(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule {
            peers: peers.map(Peers::List).unwrap_or(Peers::Any),
            ports,
            ..Rule::default()
        })
}

pub fn policy(name: String) -> impl Strategy<Value = Policy> {
    prop::sample::select(NAMESPACES.to_vec()).prop_flat_map(move |ns| {
        let name = name.clone();
        (
            pod_selector(),
            prop::option::of(prop::collection::vec(rule(ns), 0..3)),
            prop::option::of(prop::collection::vec(rule(ns), 0..3)),
        )
            .prop_map(move |(pod_selector, ingress, egress)| Policy {
                namespace: ns.to_string(),
                name: name.clone(),
                pod_selector,
                ingress,
                egress,
                origin: "generated".into(),
                ..Policy::default()
            })
    })
}

pub fn endpoint(i: usize) -> impl Strategy<Value = Endpoint> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        labels(),
        prop::option::of(prop::sample::select(IPS.to_vec())),
        prop::collection::btree_set(0..PORT_NAMES.len(), 0..3),
        prop::bool::weighted(0.1),
    )
        .prop_map(move |(ns, labels, ip, ports, host_network)| {
            let name = format!("pod-{i}");
            let mut named: Vec<NamedPort> = Vec::new();
            for p in ports {
                let (n, port, protocol) = PORT_NAMES[p];
                // One port per name, as Kubernetes requires.
                if !named.iter().any(|x| x.name == n) {
                    named.push(NamedPort {
                        name: n.into(),
                        port,
                        protocol,
                    });
                }
            }
            named.sort();
            Endpoint {
                key: format!("{ns}/{name}"),
                namespace: ns.into(),
                name: name.clone(),
                workload: WorkloadRef {
                    kind: "Pod".into(),
                    name,
                },
                labels,
                ips: ip
                    .map(|s| s.parse::<IpAddr>().unwrap_or_else(|_| panic!("ip")))
                    .into_iter()
                    .collect(),
                ports: named,
                host_network,
            }
        })
}

/// A cluster whose endpoints have unique IPs.
pub fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec(ns_labels(), 3),
        (1usize..7).prop_flat_map(|n| (0..n).map(endpoint).collect::<Vec<_>>()),
        (0usize..5).prop_flat_map(|n| {
            (0..n)
                .map(|i| policy(format!("pol-{i}")))
                .collect::<Vec<_>>()
        }),
    )
        .prop_map(|(nsl, eps, pols)| assemble(nsl, eps, pols))
}

/// A cluster of the generator's namespaces (with these labels), endpoints (an address already
/// taken is dropped, so addresses are unique) and policies.
pub fn assemble(
    ns_labels: Vec<Labels>,
    endpoints: Vec<Endpoint>,
    policies: Vec<Policy>,
) -> Cluster {
    let mut c = Cluster::default();
    for (n, l) in NAMESPACES.iter().zip(ns_labels) {
        c.namespaces
            .insert(n.to_string(), Namespace::new(n, l, true));
    }
    let mut seen_ips = Vec::new();
    for mut e in endpoints {
        e.ips.retain(|ip| !seen_ips.contains(ip));
        seen_ips.extend(e.ips.iter().copied());
        c.endpoints.insert(e.key.clone(), e);
    }
    for p in policies {
        c.policies.insert(p.pref(), Arc::new(p));
    }
    c
}

pub fn flow_peer(cluster: &Cluster, pick: usize, ip: usize, use_ip: bool) -> FlowPeer {
    let keys: Vec<&String> = cluster.endpoints.keys().collect();
    if use_ip || keys.is_empty() {
        FlowPeer::Ip(IPS[ip % IPS.len()].parse().unwrap_or_else(|_| panic!("ip")))
    } else {
        FlowPeer::Endpoint(keys[pick % keys.len()].clone())
    }
}

/// Indexes that become a flow against a given cluster: source (endpoint pick, ip pick,
/// use ip), destination (same), protocol, port.
pub type FlowSeed = (usize, usize, bool, usize, usize, bool, usize, usize);

/// Flow seeds that become flows against a given cluster.
pub fn flow_seeds(n: usize) -> impl Strategy<Value = Vec<FlowSeed>> {
    prop::collection::vec(
        (
            any::<usize>(),
            0..IPS.len(),
            prop::bool::weighted(0.25),
            any::<usize>(),
            0..IPS.len(),
            prop::bool::weighted(0.25),
            0..4usize,
            0..FLOW_PORTS.len(),
        ),
        n,
    )
}

pub fn seed_to_flow(c: &Cluster, s: &FlowSeed) -> Flow {
    let protocol = [Protocol::TCP, Protocol::UDP, Protocol::SCTP, Protocol::ICMP][s.6];
    let port = if protocol == Protocol::ICMP {
        0
    } else {
        FLOW_PORTS[s.7]
    };
    Flow {
        src: flow_peer(c, s.0, s.1, s.2),
        dst: flow_peer(c, s.3, s.4, s.5),
        protocol,
        port,
    }
}

/// A random change against a cluster (resolved against the current state when applied).
#[derive(Debug, Clone)]
pub enum ChangeSeed {
    AddEndpoint(Endpoint),
    RemoveEndpoint(usize),
    Relabel(usize, Labels),
    RelabelNamespace(usize, Labels),
    UpsertPolicy(Policy),
    RemovePolicy(usize),
}

pub fn change_seed(i: usize) -> impl Strategy<Value = ChangeSeed> {
    prop_oneof![
        endpoint(100 + i).prop_map(ChangeSeed::AddEndpoint),
        any::<usize>().prop_map(ChangeSeed::RemoveEndpoint),
        (any::<usize>(), labels()).prop_map(|(n, l)| ChangeSeed::Relabel(n, l)),
        (0..3usize, ns_labels()).prop_map(|(n, l)| ChangeSeed::RelabelNamespace(n, l)),
        (0..6usize)
            .prop_flat_map(|n| policy(format!("pol-{n}")))
            .prop_map(ChangeSeed::UpsertPolicy),
        any::<usize>().prop_map(ChangeSeed::RemovePolicy),
    ]
}

pub fn resolve_change(c: &Cluster, seed: &ChangeSeed) -> Option<Change> {
    let nth_ep = |n: usize| {
        c.endpoints
            .values()
            .nth(n % c.endpoints.len().max(1))
            .cloned()
    };
    match seed {
        ChangeSeed::AddEndpoint(e) => {
            let mut e = e.clone();
            let used: Vec<IpAddr> = c.endpoints.values().flat_map(|x| x.ips.clone()).collect();
            e.ips.retain(|ip| !used.contains(ip));
            Some(Change::UpsertEndpoint(e))
        }
        ChangeSeed::RemoveEndpoint(n) => nth_ep(*n).map(|e| Change::DeleteEndpoint(e.key)),
        ChangeSeed::Relabel(n, l) => nth_ep(*n).map(|mut e| {
            e.labels = l.clone();
            Change::UpsertEndpoint(e)
        }),
        ChangeSeed::RelabelNamespace(n, l) => {
            let name = NAMESPACES[*n % NAMESPACES.len()];
            Some(Change::UpsertNamespace(Namespace::new(
                name,
                l.clone(),
                true,
            )))
        }
        ChangeSeed::UpsertPolicy(p) => Some(Change::UpsertPolicy(Arc::new(p.clone()))),
        ChangeSeed::RemovePolicy(n) => {
            let keys: Vec<&policy_compiler::rules::PolicyRef> = c.policies.keys().collect();
            if keys.is_empty() {
                return None;
            }
            Some(Change::DeletePolicy(keys[n % keys.len()].clone()))
        }
    }
}

pub type Mirror = (
    BTreeMap<u32, BTreeMap<policy_compiler::EntryKey, policy_compiler::abi::PolicyValue>>,
    BTreeMap<Cidr, u32>,
    BTreeMap<String, u32>,
);
