//! The specification-level evaluator: NetworkPolicy semantics read straight off the
//! cluster model, with no identities, selector cache or maps.

use std::net::IpAddr;

use crate::engine::EngineConfig;
use crate::eval::{Decision, Flow, FlowPeer, Verdict};
use crate::model::{Cluster, Direction, Endpoint, NamespaceScope, Peer, Peers, PortMatch, Rule};
use crate::rules::{PolicyRef, RuleRef, RuleTable};

/// Evaluates a flow. `rules` supplies rule ids for attribution; `config` carries the
/// identity label filter (labels it drops are invisible to policy in the datapath, so here
/// too) and whether ipBlocks select pods.
pub fn evaluate(
    cluster: &Cluster,
    rules: &RuleTable,
    config: &EngineConfig,
    flow: &Flow,
) -> Verdict {
    let flow = flow.normalized(cluster);
    let ep = |p: &FlowPeer| match p {
        FlowPeer::Endpoint(k) => cluster.endpoints.get(k),
        FlowPeer::Ip(_) => None,
    };
    let (src, dst) = (ep(&flow.src), ep(&flow.dst));
    let ctx = Ctx {
        cluster,
        rules,
        config,
        flow: &flow,
    };
    Verdict {
        egress: src.map(|s| ctx.decide(Direction::Egress, s, &flow.dst, dst)),
        ingress: dst.map(|d| ctx.decide(Direction::Ingress, d, &flow.src, src)),
    }
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    rules: &'a RuleTable,
    config: &'a EngineConfig,
    flow: &'a Flow,
}

impl Ctx<'_> {
    fn decide(
        &self,
        dir: Direction,
        subject: &Endpoint,
        peer: &FlowPeer,
        peer_ep: Option<&Endpoint>,
    ) -> Decision {
        // A peer named as an endpoint that does not exist has no identity: fail closed,
        // as the datapath does for an address the ipcache cannot resolve.
        if matches!(peer, FlowPeer::Endpoint(_)) && peer_ep.is_none() {
            return Decision::InvalidIdentity;
        }
        let labels = self.config.label_filter.apply(&subject.labels);
        let mut isolated_by = Vec::new();
        let mut best: Option<u32> = None;
        for ((ns, name), p) in &self.cluster.policies {
            if *ns != subject.namespace || !p.pod_selector.matches(&labels) {
                continue;
            }
            let Some(rules) = p.rules(dir) else { continue };
            let pref = PolicyRef {
                namespace: ns.clone(),
                name: name.clone(),
            };
            for (i, rule) in rules.iter().enumerate() {
                if self.rule_matches(rule, dir, subject, peer, peer_ep) {
                    let r = RuleRef {
                        policy: pref.clone(),
                        direction: dir,
                        index: i,
                    };
                    if let Some(id) = self.rules.id(&r) {
                        best = Some(best.map_or(id, |b| b.min(id)));
                    }
                }
            }
            isolated_by.push(pref);
        }
        if isolated_by.is_empty() {
            return Decision::NotIsolated;
        }
        // Traffic from the endpoint's node is always allowed (its own rule id, below every
        // policy rule's).
        if dir == Direction::Ingress
            && peer_ep.is_none()
            && matches!(peer, FlowPeer::Ip(ip) if self.config.is_host_address(ip))
        {
            best = Some(crate::abi::RULE_ID_HOST);
        }
        match best {
            Some(rule) => Decision::Allowed { rule },
            None => Decision::DefaultDeny { isolated_by },
        }
    }

    fn rule_matches(
        &self,
        rule: &Rule,
        dir: Direction,
        subject: &Endpoint,
        peer: &FlowPeer,
        peer_ep: Option<&Endpoint>,
    ) -> bool {
        let peer_ok = match &rule.peers {
            Peers::Any => true,
            Peers::List(list) => list.iter().any(|p| self.peer_matches(p, peer, peer_ep)),
        };
        if !peer_ok {
            return false;
        }
        if rule.ports.is_empty() {
            return true;
        }
        // The destination pod, against which named ports resolve.
        let dst = match dir {
            Direction::Ingress => Some(subject),
            Direction::Egress => peer_ep,
        };
        rule.ports.iter().any(|ps| {
            ps.protocol == self.flow.protocol
                && match &ps.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&self.flow.port),
                    PortMatch::Named(n) => dst
                        .and_then(|d| d.named_port(n, ps.protocol))
                        .is_some_and(|p| p == self.flow.port),
                }
        })
    }

    fn peer_matches(&self, p: &Peer, peer: &FlowPeer, peer_ep: Option<&Endpoint>) -> bool {
        match p {
            Peer::Endpoints { namespaces, pods } => {
                let Some(e) = peer_ep else { return false };
                let ns_ok = match namespaces {
                    NamespaceScope::Own(ns) => *ns == e.namespace,
                    NamespaceScope::Selected(s) => {
                        s.matches(&self.cluster.namespace_labels(&e.namespace))
                    }
                };
                ns_ok && pods.matches(&self.config.label_filter.apply(&e.labels))
            }
            Peer::IpBlock { cidr, except } => {
                let inside =
                    |ip: &IpAddr| cidr.contains_ip(ip) && !except.iter().any(|x| x.contains_ip(ip));
                match (peer_ep, peer) {
                    (Some(e), _) => self.config.ipblocks_select_pods && e.ips.iter().any(inside),
                    // The node's addresses are one identity (host): a block containing
                    // any of them selects the node, as the maps do.
                    (None, FlowPeer::Ip(ip)) if self.config.is_host_address(ip) => {
                        self.config.host_addresses.iter().any(inside)
                    }
                    (None, FlowPeer::Ip(ip)) => inside(ip),
                    (None, FlowPeer::Endpoint(_)) => false,
                }
            }
        }
    }
}
