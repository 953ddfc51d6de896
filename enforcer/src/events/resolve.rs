//! What the kernel does not know about a verdict: which pod and labels an identity stands
//! for, which policy rule a rule id is, which policies isolated an endpoint.

use std::collections::HashMap;
use std::net::IpAddr;

use policy_compiler::engine::Engine;
use policy_compiler::identity::{IdentityInfo, Reserved};
use policy_compiler::model::{Direction, Endpoint, PolicyTier, RuleAction};
use policy_compiler::rules::{PolicyRef, RuleRef};

/// One side of a flow, as Hubble's `Endpoint` message shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEndpoint {
    pub identity: u32,
    pub namespace: String,
    pub pod_name: String,
    /// Already in Hubble form: `k8s:app=web`, `reserved:world`, `cidr:10.0.0.0/8`.
    pub labels: Vec<String>,
    /// `(kind, name)` of the owning workload; empty for a bare pod.
    pub workloads: Vec<(String, String)>,
}

/// The service frontend a translated flow was sent to (Hubble's `destination_service`, and
/// the address the client used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFrontend {
    pub namespace: String,
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
}

/// What the verdict log needs from the control plane.
pub trait FlowResolver {
    /// The endpoint with `identity` at address `ip` (the pod comes from the address, the
    /// labels from the identity: pods with equal labels share an identity).
    fn endpoint(&self, identity: u32, ip: Option<IpAddr>) -> FlowEndpoint;
    /// The rule a policy value's rule id stands for (ids >= `RULE_ID_FIRST_POLICY`).
    fn rule(&self, rule_id: u32) -> Option<RuleRef>;
    /// The policies that isolate `direction` of the endpoints with `identity`: what a
    /// default-deny drop is attributed to.
    fn isolated_by(&self, identity: u32, direction: Direction) -> Vec<PolicyRef>;
    /// The host-side interface name of `ifindex`, when known.
    fn interface_name(&self, ifindex: u32) -> Option<String>;
    /// Cilium's `policy_match_type` of a rule (`render::MATCH_*`): whether it names peers,
    /// ports, both or neither. `MATCH_NONE` when unknown.
    fn match_type(&self, _rule: &RuleRef) -> u32 {
        super::render::MATCH_NONE
    }
    /// The rule's own name and log marker (Palisade's policy kinds), when it has them.
    fn rule_labels(&self, _rule: &RuleRef) -> (Option<String>, Option<String>) {
        (None, None)
    }
    /// The tier of the rule's policy and the rule's action, when known.
    fn rule_tier(&self, _rule: &RuleRef) -> Option<(PolicyTier, RuleAction)> {
        None
    }
    /// The service frontend with datapath id `id` (`verdict_event.service`), when known.
    fn service(&self, _id: u16) -> Option<ServiceFrontend> {
        None
    }
}

/// A [`FlowResolver`] over a compiled engine (which also holds this node's registered
/// endpoints, merged in by the sync loop). Build one per batch of events: it indexes
/// endpoint addresses once.
#[derive(Debug)]
pub struct EngineResolver<'a> {
    engine: &'a Engine,
    by_ip: HashMap<IpAddr, &'a Endpoint>,
    interfaces: HashMap<u32, String>,
    services: HashMap<u16, ServiceFrontend>,
}

impl<'a> EngineResolver<'a> {
    pub fn new(engine: &'a Engine) -> EngineResolver<'a> {
        let mut by_ip = HashMap::new();
        for ep in engine.cluster().endpoints.values() {
            if ep.host_network {
                continue;
            }
            for ip in &ep.ips {
                by_ip.entry(*ip).or_insert(ep);
            }
        }
        EngineResolver {
            engine,
            by_ip,
            interfaces: HashMap::new(),
            services: HashMap::new(),
        }
    }

    /// Service frontends by datapath id (the sync loop knows them from the service maps).
    pub fn with_services(mut self, services: HashMap<u16, ServiceFrontend>) -> Self {
        self.services = services;
        self
    }

    /// Interface names by ifindex (the sync loop knows them from registrations).
    pub fn with_interfaces(mut self, interfaces: HashMap<u32, String>) -> Self {
        self.interfaces = interfaces;
        self
    }
}

impl FlowResolver for EngineResolver<'_> {
    fn service(&self, id: u16) -> Option<ServiceFrontend> {
        self.services.get(&id).cloned()
    }

    fn endpoint(&self, identity: u32, ip: Option<IpAddr>) -> FlowEndpoint {
        let mut out = FlowEndpoint {
            identity,
            ..FlowEndpoint::default()
        };
        match self.engine.identities().info(identity) {
            Some(IdentityInfo::Reserved(r)) => out.labels = vec![r.name().to_string()],
            Some(IdentityInfo::Host(_)) => out.labels = vec![Reserved::Host.name().to_string()],
            Some(IdentityInfo::Cidr(c)) => {
                out.labels = vec![format!("cidr:{c}"), Reserved::World.name().to_string()];
            }
            Some(IdentityInfo::Cluster(key)) => {
                out.namespace = key.namespace.to_string();
                out.labels = key.log_labels();
                if let Some(ep) = ip.and_then(|ip| self.by_ip.get(&ip)) {
                    out.pod_name = ep.name.clone();
                    if ep.workload.kind != "Pod" {
                        out.workloads = vec![(ep.workload.kind.clone(), ep.workload.name.clone())];
                    }
                }
            }
            None => {}
        }
        out
    }

    fn rule(&self, rule_id: u32) -> Option<RuleRef> {
        self.engine.rules().resolve(rule_id).cloned()
    }

    fn isolated_by(&self, identity: u32, direction: Direction) -> Vec<PolicyRef> {
        self.engine
            .policy_for_identity(identity)
            .map(|p| p.isolated_by(direction).to_vec())
            .unwrap_or_default()
    }

    fn interface_name(&self, ifindex: u32) -> Option<String> {
        self.interfaces.get(&ifindex).cloned()
    }

    fn rule_labels(&self, r: &RuleRef) -> (Option<String>, Option<String>) {
        self.engine
            .cluster()
            .policies
            .get(&r.policy)
            .and_then(|p| p.rules(r.direction)?.get(r.index))
            .map(|rule| (rule.name.clone(), rule.log.clone()))
            .unwrap_or_default()
    }

    fn rule_tier(&self, r: &RuleRef) -> Option<(PolicyTier, RuleAction)> {
        let p = self.engine.cluster().policies.get(&r.policy)?;
        let rule = p.rules(r.direction)?.get(r.index)?;
        Some((p.tier, rule.action))
    }

    fn match_type(&self, rule: &RuleRef) -> u32 {
        use super::render::{MATCH_ALL, MATCH_L3_L4, MATCH_L3_ONLY, MATCH_L4_ONLY, MATCH_NONE};
        use policy_compiler::model::Peers;
        let Some(r) = self
            .engine
            .cluster()
            .policies
            .get(&rule.policy)
            .and_then(|p| p.rules(rule.direction))
            .and_then(|rules| rules.get(rule.index))
        else {
            return MATCH_NONE;
        };
        match (&r.peers, r.ports.is_empty()) {
            (Peers::Any, true) => MATCH_ALL,
            (Peers::Any, false) => MATCH_L4_ONLY,
            (Peers::List(_), true) => MATCH_L3_ONLY,
            (Peers::List(_), false) => MATCH_L3_L4,
        }
    }
}
