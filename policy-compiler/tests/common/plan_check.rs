//! The per-operation check of an update plan: every hook decision of every flow between
//! the local endpoints and the test addresses, computed with the datapath's decision
//! procedure (`plan::model::decide`), is the old or the new one after every operation.
//! Shared by the pure plan test and the enforcer's sync test (fake maps).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use policy_compiler::plan::model::{self, Hook, HookDecision};
use policy_compiler::plan::{MapState, Target};

use super::generate::IPS;

/// (proto, port) pairs every flow is tried on.
pub const PORTS: [(u8, u16); 6] = [(6, 80), (6, 8050), (6, 9090), (17, 53), (132, 8080), (1, 0)];

/// One hook decision to watch: endpoint ifindex, hook, source, destination, protocol, port.
pub type Probe = (u32, Hook, IpAddr, IpAddr, u8, u16);

/// Every probe of a target: each local endpoint with an address, against every test
/// address of its family, both hooks, every port.
pub fn probes(target: &Target) -> Vec<Probe> {
    let addrs: Vec<IpAddr> = IPS.iter().map(|s| s.parse().unwrap()).collect();
    let mut out = Vec::new();
    for (ifindex, e) in &target.endpoints {
        for own in &e.ips {
            for a in &addrs {
                if a == own || a.is_ipv4() != own.is_ipv4() {
                    continue;
                }
                for (proto, port) in PORTS {
                    out.push((*ifindex, Hook::FromPod, *own, *a, proto, port));
                    out.push((*ifindex, Hook::ToPod, *a, *own, proto, port));
                }
            }
        }
    }
    out
}

pub fn decide(state: &MapState, p: &Probe) -> HookDecision {
    model::decide(state, p.0, p.1, &p.2, &p.3, p.4, p.5)
}

/// The decisions before and after, for the probes of both targets.
pub struct Expect {
    pub probes: Vec<Probe>,
    pub old: Vec<HookDecision>,
    pub new: Vec<HookDecision>,
}

impl Expect {
    pub fn new(old: &MapState, new: &MapState, old_t: &Target, new_t: &Target) -> Expect {
        let mut probes = probes(old_t);
        probes.extend(probes_of(new_t));
        probes.sort_by_key(|p| format!("{p:?}"));
        probes.dedup();
        Expect {
            old: probes.iter().map(|p| decide(old, p)).collect(),
            new: probes.iter().map(|p| decide(new, p)).collect(),
            probes,
        }
    }

    /// Panics naming the first probe whose decision is neither the old nor the new one.
    pub fn check(&self, state: &MapState, context: &dyn Fn() -> String) {
        for (i, p) in self.probes.iter().enumerate() {
            let d = decide(state, p);
            if d != self.old[i] && d != self.new[i] {
                panic!(
                    "third verdict for {p:?}: {d:?} (old {:?}, new {:?}) {}",
                    self.old[i],
                    self.new[i],
                    context()
                );
            }
        }
    }
}

fn probes_of(t: &Target) -> Vec<Probe> {
    probes(t)
}

/// Stable ifindexes for endpoint keys.
#[derive(Debug, Default)]
pub struct Ifindexes {
    by_key: BTreeMap<String, u32>,
    next: u32,
}

impl Ifindexes {
    pub fn get(&mut self, key: &str) -> u32 {
        if let Some(i) = self.by_key.get(key) {
            return *i;
        }
        self.next += 1;
        self.by_key.insert(key.to_string(), self.next + 10);
        self.next + 10
    }
}

/// The local endpoints of a cluster: every endpoint with an address of its own.
pub fn local_endpoints(c: &policy_compiler::Cluster, ifs: &mut Ifindexes) -> Vec<(String, u32)> {
    c.endpoints
        .values()
        .filter(|e| !e.host_network && !e.ips.is_empty())
        .map(|e| (e.key.clone(), ifs.get(&e.key)))
        .collect()
}

/// A state with every endpoint's revision zeroed (compared separately).
pub fn without_revisions(s: &MapState) -> MapState {
    let mut s = s.clone();
    for e in s.endpoints.values_mut() {
        e.revision = 0;
    }
    s
}

impl Expect {
    /// Every endpoint with a decision that changed records the new revision (its tracked
    /// flows are decided again).
    pub fn check_revisions(&self, state: &MapState, revision: u32) {
        for (i, p) in self.probes.iter().enumerate() {
            if self.old[i] != self.new[i]
                && let Some(e) = state.endpoints.get(&p.0)
            {
                assert_eq!(
                    e.revision, revision,
                    "endpoint {} changed decisions ({:?}) but keeps revision {}",
                    p.0, p, e.revision
                );
            }
        }
    }
}
