//! The specification-level evaluator: policy semantics read straight off the cluster model,
//! with no identities, selector cache or maps. Per direction: the admin tier (policies by
//! priority, name, kind; the first matching rule decides, Pass hands over), the NetworkPolicy
//! tier in its bands, the baseline tier where no NetworkPolicy isolates, then allow.

use std::net::IpAddr;

use crate::engine::EngineConfig;
use crate::engine::l7::{L7Ref, L7Set};
use crate::eval::{Decision, Flow, FlowPeer, Verdict};
use crate::model::{
    Cluster, Direction, Endpoint, Entity, NamespaceScope, Peer, Peers, Policy, PolicyTier,
    PortMatch, Rule, RuleAction,
};
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

/// The HTTP rules the proxy applies on each side of a flow that redirects: (egress, ingress),
/// read straight off the policies (the map-level counterpart is `maps::l7_sets`).
pub fn l7_sets(
    cluster: &Cluster,
    rules: &RuleTable,
    config: &EngineConfig,
    flow: &Flow,
) -> (Option<L7Set>, Option<L7Set>) {
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
    (
        src.and_then(|s| ctx.decide_with_l7(Direction::Egress, s, &flow.dst, dst).1),
        dst.and_then(|d| ctx.decide_with_l7(Direction::Ingress, d, &flow.src, src).1),
    )
}

/// Whether a reserved entity includes a flow's peer, as the datapath sees it: an endpoint's own
/// identity (cluster), the node's addresses (host, cluster), any other address (world).
pub fn entity_includes(
    config: &EngineConfig,
    e: Entity,
    peer: &FlowPeer,
    peer_ep: Option<&Endpoint>,
) -> bool {
    let ip = match (peer_ep, peer) {
        // An endpoint peer is seen with its own identity (a host-network pod claims no
        // address of its own; see `maps::peer_identity`).
        (Some(_), _) => return e == Entity::Cluster,
        (None, FlowPeer::Ip(ip)) => Some(*ip),
        (None, FlowPeer::Endpoint(_)) => None,
    };
    match ip {
        None => false,
        Some(ip) if config.is_host_address(&ip) => matches!(e, Entity::Host | Entity::Cluster),
        Some(_) => e == Entity::World,
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
        self.decide_with_l7(dir, subject, peer, peer_ep).0
    }

    /// The decision and, when it redirects, the HTTP rules the proxy applies.
    fn decide_with_l7(
        &self,
        dir: Direction,
        subject: &Endpoint,
        peer: &FlowPeer,
        peer_ep: Option<&Endpoint>,
    ) -> (Decision, Option<L7Set>) {
        let (d, set) = self.decide_inner(dir, subject, peer, peer_ep);
        let redirect = matches!(d, Decision::Redirected { .. });
        (d, redirect.then_some(set))
    }

    fn decide_inner(
        &self,
        dir: Direction,
        subject: &Endpoint,
        peer: &FlowPeer,
        peer_ep: Option<&Endpoint>,
    ) -> (Decision, L7Set) {
        let mut l7 = L7Set::default();
        // A peer named as an endpoint that does not exist has no identity: fail closed,
        // as the datapath does for an address the ipcache cannot resolve.
        if matches!(peer, FlowPeer::Endpoint(_)) && peer_ep.is_none() {
            return (Decision::InvalidIdentity, l7);
        }
        let labels = self.config.label_filter.apply(&subject.labels);
        // A pod in an audit namespace: every deny is only reported.
        let audit_ns =
            crate::model::namespace_audits(&self.cluster.namespace_labels(&subject.namespace));
        // The admin tier: the first matching rule decides; Pass hands over to the next tier.
        if let Some(d) = self.tier_decision(true, dir, subject, &labels, peer, peer_ep, audit_ns) {
            return (d, l7);
        }
        let mut isolated_by = Vec::new();
        // The NetworkPolicy tier in its bands (see `engine::tiers`): the lowest rule id of the
        // first band that has a match decides.
        let mut deny: Option<u32> = None;
        let mut audit_deny: Option<u32> = None;
        let mut redirect: Option<u32> = None;
        let mut redirect_deny: Option<u32> = None;
        let mut audit_http: Option<u32> = None;
        let mut allow: Option<u32> = None;
        let min = |slot: &mut Option<u32>, id: u32| *slot = Some(slot.map_or(id, |b| b.min(id)));
        for (pref, p) in &self.cluster.policies {
            if p.tier != PolicyTier::NetworkPolicy || !self.selects(p, subject, &labels) {
                continue;
            }
            let Some(rules) = p.rules(dir) else { continue };
            for (i, rule) in rules.iter().enumerate() {
                let (plain, http_ports, audit_ports) =
                    self.rule_hits(rule, p.audit, dir, subject, peer, peer_ep);
                let http = !http_ports.is_empty();
                if !plain && !http && audit_ports.is_empty() {
                    continue;
                }
                let r = RuleRef {
                    policy: pref.clone(),
                    direction: dir,
                    index: i,
                };
                let Some(id) = self.rules.id(&r) else {
                    continue;
                };
                if http {
                    match rule.action {
                        RuleAction::Allow => min(&mut redirect, id),
                        RuleAction::Deny => min(&mut redirect_deny, id),
                        RuleAction::Pass => {}
                    }
                    l7.rules.extend(http_ports.iter().map(|&http_port| L7Ref {
                        rule_id: id,
                        http_port,
                    }));
                }
                if !audit_ports.is_empty() {
                    min(&mut audit_http, id);
                    l7.audit.extend(audit_ports.iter().map(|&http_port| L7Ref {
                        rule_id: id,
                        http_port,
                    }));
                }
                if plain {
                    match (rule.action, p.audit) {
                        (RuleAction::Allow, _) => min(&mut allow, id),
                        (RuleAction::Deny, false) => min(&mut deny, id),
                        (RuleAction::Deny, true) => min(&mut audit_deny, id),
                        (RuleAction::Pass, _) => {}
                    }
                }
            }
            // An audit-mode policy only reports: it does not isolate.
            if p.isolates(dir) && !p.audit {
                isolated_by.push(pref.clone());
            }
        }
        // Traffic from the endpoint's node is always allowed into an isolated endpoint (its own
        // rule id, below every policy rule's).
        if dir == Direction::Ingress
            && !isolated_by.is_empty()
            && peer_ep.is_none()
            && matches!(peer, FlowPeer::Ip(ip) if self.config.is_host_address(ip))
        {
            min(&mut allow, crate::abi::RULE_ID_HOST);
        }
        l7.rules.sort_unstable();
        l7.rules.dedup();
        l7.audit.sort_unstable();
        l7.audit.dedup();
        l7.allow_all = allow;
        let proxy_port = self.config.proxy_port;
        let d = if let Some(rule) = deny {
            Decision::Denied {
                rule,
                audit: audit_ns,
            }
        } else if let Some(rule) = audit_deny {
            Decision::Denied { rule, audit: true }
        } else if let Some(rule) = redirect {
            Decision::Redirected {
                rule: redirect_deny.map_or(rule, |d| d.min(rule)),
                proxy_port,
                audit: false,
            }
        } else {
            let base = if let Some(rule) = allow {
                Decision::Allowed { rule }
            } else if isolated_by.is_empty() {
                // No NetworkPolicy isolates the endpoint: the baseline tier decides.
                self.tier_decision(false, dir, subject, &labels, peer, peer_ep, audit_ns)
                    .unwrap_or(Decision::NotIsolated)
            } else {
                Decision::DefaultDeny { isolated_by }
            };
            // HTTP deny rules only inspect what the other rules admit; so do audit-mode HTTP
            // rules when no enforced one does (an audit-only redirect).
            let overlay = redirect_deny
                .map(|r| (r, false))
                .or(audit_http.map(|r| (r, true)));
            match (overlay, &base) {
                (Some((rule, audit)), Decision::Allowed { rule: by }) => {
                    l7.allow_all = Some(*by);
                    Decision::Redirected {
                        rule,
                        proxy_port,
                        audit,
                    }
                }
                (Some((rule, audit)), Decision::NotIsolated) => {
                    l7.allow_all = Some(crate::abi::RULE_ID_NOT_ISOLATED);
                    Decision::Redirected {
                        rule,
                        proxy_port,
                        audit,
                    }
                }
                (_, Decision::DefaultDeny { .. }) if audit_ns => Decision::Denied {
                    rule: crate::abi::RULE_ID_NONE,
                    audit: true,
                },
                _ => base,
            }
        };
        (d, l7)
    }

    /// The admin tier's decision (`admin`), or the baseline tier's: policies by priority, then
    /// name, then kind; rules in order; the first that matches decides. `None` when no rule
    /// matches or a Pass rule hands over to the next tier.
    #[allow(clippy::too_many_arguments, reason = "the flow as the tier sees it")]
    fn tier_decision(
        &self,
        admin: bool,
        dir: Direction,
        subject: &Endpoint,
        labels: &crate::k8s::Labels,
        peer: &FlowPeer,
        peer_ep: Option<&Endpoint>,
        audit_ns: bool,
    ) -> Option<Decision> {
        let mut tiered: Vec<(&PolicyRef, &Policy)> = self
            .cluster
            .policies
            .iter()
            .map(|(r, p)| (r, &**p))
            .filter(|(_, p)| match p.tier {
                PolicyTier::Admin(_) => admin,
                PolicyTier::Baseline(_) => !admin,
                PolicyTier::NetworkPolicy => false,
            })
            .filter(|(_, p)| self.selects(p, subject, labels))
            .collect();
        tiered.sort_unstable_by_key(|(_, p)| p.evaluation_order());
        for (pref, p) in tiered {
            for (i, rule) in p.rules(dir).unwrap_or(&[]).iter().enumerate() {
                if !self.rule_hits(rule, false, dir, subject, peer, peer_ep).0 {
                    continue;
                }
                let r = RuleRef {
                    policy: pref.clone(),
                    direction: dir,
                    index: i,
                };
                let id = self.rules.id(&r)?;
                return match rule.action {
                    RuleAction::Allow => Some(Decision::Allowed { rule: id }),
                    RuleAction::Deny => Some(Decision::Denied {
                        rule: id,
                        audit: audit_ns,
                    }),
                    RuleAction::Pass => None,
                };
            }
        }
        None
    }

    /// Whether a policy applies to `subject` (its namespace scope and pod selector).
    fn selects(&self, p: &Policy, subject: &Endpoint, labels: &crate::k8s::Labels) -> bool {
        let ns_ok = match &p.scope() {
            NamespaceScope::Own(ns) => *ns == subject.namespace,
            NamespaceScope::Selected(s) => {
                s.matches(&self.cluster.namespace_labels(&subject.namespace))
            }
        };
        ns_ok && p.pod_selector.matches(labels)
    }

    /// Whether a rule matches the flow through a port without HTTP rules (`.0`), and the ports
    /// (index + 1) with HTTP rules it matches through (`.1`).
    fn rule_hits(
        &self,
        rule: &Rule,
        audit: bool,
        dir: Direction,
        subject: &Endpoint,
        peer: &FlowPeer,
        peer_ep: Option<&Endpoint>,
    ) -> (bool, Vec<u16>, Vec<u16>) {
        let peer_ok = match &rule.peers {
            Peers::Any => true,
            Peers::List(list) => list.iter().any(|p| self.peer_matches(p, peer, peer_ep)),
        };
        if !peer_ok {
            return (false, Vec::new(), Vec::new());
        }
        if rule.ports.is_empty() {
            return (true, Vec::new(), Vec::new());
        }
        // The destination pod, against which named ports resolve.
        let dst = match dir {
            Direction::Ingress => Some(subject),
            Direction::Egress => peer_ep,
        };
        let mut hits = (false, Vec::new(), Vec::new());
        for (j, ps) in rule.ports.iter().enumerate() {
            let hit = ps.protocol == self.flow.protocol
                && match &ps.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&self.flow.port),
                    PortMatch::Named(n) => dst
                        .and_then(|d| d.named_port(n, ps.protocol))
                        .is_some_and(|p| p == self.flow.port),
                };
            if hit {
                match (&ps.http, audit, rule.action) {
                    (None, _, _) => hits.0 = true,
                    (Some(_), false, _) => hits.1.push(j as u16 + 1),
                    // Audit mode: the proxy judges the HTTP rules and only reports them; an
                    // HTTP allow rule also allows the port (docs/l7.md).
                    (Some(_), true, RuleAction::Allow) => {
                        hits.0 = true;
                        hits.2.push(j as u16 + 1);
                    }
                    (Some(_), true, RuleAction::Deny | RuleAction::Pass) => {
                        hits.2.push(j as u16 + 1);
                    }
                }
            }
        }
        hits
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
            Peer::Entity(e) => entity_includes(self.config, *e, peer, peer_ep),
        }
    }
}
