//! Why a flow is allowed or denied: which policies select each end, which of their rules
//! match and why the others do not, and the verdict.
//!
//! The verdict and the deciding rule come from the map-level evaluator. The rule-by-rule
//! reasons are read off the policies (the compiled maps do not keep them); if the two ever
//! disagree the output says so, and the maps decide.

use std::fmt::Write as _;

use policy_compiler::eval::maps;
use policy_compiler::model::{
    Endpoint, NamespaceScope, Peer, Peers, PolicyTier, PortMatch, Rule, RuleAction,
};
use policy_compiler::rules::RuleRef;
use policy_compiler::{Decision, Direction, Flow, FlowPeer, Protocol, Verdict};
use serde::Serialize;

use crate::analysis::Analysis;
use crate::scenario;

/// The outcome of one rule for the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCheck {
    /// `ns/name ingress[0]`.
    pub rule: String,
    pub matched: bool,
    /// Why it does not match (`peer mismatch: ...`, `port mismatch: ...`,
    /// `named port unresolved: ...`); empty when it matches.
    pub reasons: Vec<String>,
    /// `admin`, `networkpolicy` or `baseline`.
    pub tier: String,
    /// `Allow`, `Deny` or `Pass`.
    pub action: String,
    /// What the rule did in the tier walk: `decides`, `passes to the next tier`, `skipped:
    /// an earlier Pass rule left the admin tier`, `not reached: ...`; `None` when it matches
    /// nothing or its tier resolves by band (the NetworkPolicy tier).
    pub outcome: Option<String>,
}

/// One direction of the flow at one end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    pub direction: Direction,
    /// The endpoint whose policy map is consulted (`None`: an address, not policed).
    pub subject: Option<String>,
    pub identity: Option<u32>,
    /// Policies isolating the subject in this direction.
    pub policies: Vec<String>,
    pub rules: Vec<RuleCheck>,
    /// The map-level decision, in words.
    pub decision: String,
    pub allowed: bool,
    /// Set when the rule-by-rule reading disagrees with the maps.
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub port: u16,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
    pub allowed: bool,
    pub deciding: String,
}

/// Explains a flow.
pub fn explain(a: &Analysis, flow: &Flow) -> Explanation {
    let verdict: Verdict = maps::evaluate(&a.engine, flow);
    let norm = flow.normalized(a.cluster());
    let egress = side(a, &norm, Direction::Egress, verdict.egress.as_ref());
    let ingress = side(a, &norm, Direction::Ingress, verdict.ingress.as_ref());
    Explanation {
        from: a.peer_display(&norm.src),
        to: a.peer_display(&norm.dst),
        protocol: flow.protocol.to_string(),
        port: flow.port,
        egress,
        ingress,
        allowed: verdict.allowed(),
        deciding: scenario::describe(a, &verdict),
    }
}

fn endpoint<'a>(a: &'a Analysis, p: &FlowPeer) -> Option<&'a Endpoint> {
    match p {
        FlowPeer::Endpoint(k) => a.cluster().endpoints.get(k),
        FlowPeer::Ip(_) => None,
    }
}

fn side(a: &Analysis, flow: &Flow, dir: Direction, decision: Option<&Decision>) -> SideExplanation {
    let (subject, peer) = match dir {
        Direction::Egress => (&flow.src, &flow.dst),
        Direction::Ingress => (&flow.dst, &flow.src),
    };
    let Some(subj) = endpoint(a, subject) else {
        return SideExplanation {
            direction: dir,
            subject: None,
            identity: None,
            policies: Vec::new(),
            rules: Vec::new(),
            decision: format!("not policed: {subject} is an address, not an endpoint"),
            allowed: true,
            note: None,
        };
    };
    let peer_ep = endpoint(a, peer);
    let dst_ep = match dir {
        Direction::Ingress => Some(subj),
        Direction::Egress => peer_ep,
    };
    let filter = &a.engine.config().label_filter;
    let labels = filter.apply(&subj.labels);
    let mut policies = Vec::new();
    let mut rules = Vec::new();
    // In evaluation order: the admin tier by priority, then name; the NetworkPolicy tier;
    // the baseline tier by priority, then name.
    let mut selecting: Vec<_> = a
        .cluster()
        .policies
        .iter()
        .filter(|(_, p)| {
            let ns_ok = match &p.scope() {
                NamespaceScope::Own(ns) => *ns == subj.namespace,
                NamespaceScope::Selected(s) => {
                    s.matches(&a.cluster().namespace_labels(&subj.namespace))
                }
            };
            ns_ok && p.pod_selector.matches(&labels)
        })
        .collect();
    // (Stable: NetworkPolicy-tier policies keep their listing order.)
    selecting.sort_by(|(_, a), (_, b)| match (a.tier, b.tier) {
        (PolicyTier::NetworkPolicy, PolicyTier::NetworkPolicy) => std::cmp::Ordering::Equal,
        _ => a.evaluation_order().cmp(&b.evaluation_order()),
    });
    // The deciding rule, from the maps.
    let deciding = decision.and_then(Decision::rule);
    // Walking the tiers: once a rule decides, later ones are not reached; a Pass rule skips
    // the rest of its tier.
    let mut decided = false;
    let mut passed: Option<PolicyTier> = None;
    for (pref, p) in selecting {
        let Some(rs) = p.rules(dir) else { continue };
        policies.push(match p.tier {
            PolicyTier::NetworkPolicy => pref.to_string(),
            PolicyTier::Admin(n) => format!("{pref} (admin tier, priority {n})"),
            PolicyTier::Baseline(n) => format!("{pref} (baseline tier, priority {n})"),
        });
        for (i, rule) in rs.iter().enumerate() {
            let mut reasons = Vec::new();
            check_peers(a, rule, dir, peer, peer_ep, &mut reasons);
            check_ports(rule, flow.protocol, flow.port, dst_ep, peer, &mut reasons);
            let matched = reasons.is_empty();
            let id = a.engine.rules().id(&RuleRef {
                policy: pref.clone(),
                direction: dir,
                index: i,
            });
            let same_tier_passed = passed
                .is_some_and(|t| std::mem::discriminant(&t) == std::mem::discriminant(&p.tier));
            let outcome = if decided {
                matched.then(|| "not reached: an earlier rule decided".to_string())
            } else if same_tier_passed {
                matched.then(|| "skipped: a Pass rule left this tier".to_string())
            } else if matched && id.is_some() && id == deciding {
                decided = true;
                Some("decides".to_string())
            } else if matched && rule.action == RuleAction::Pass {
                passed = Some(p.tier);
                Some(match p.tier {
                    PolicyTier::Admin(_) => {
                        "passes: the rest of the admin tier is skipped; NetworkPolicy decides next"
                            .to_string()
                    }
                    _ => "passes: the rest of the baseline tier is skipped".to_string(),
                })
            } else {
                None
            };
            rules.push(RuleCheck {
                rule: match &rule.name {
                    Some(n) => format!("{pref} {dir}[{i}] {n:?}"),
                    None => format!("{pref} {dir}[{i}]"),
                },
                matched,
                reasons,
                tier: p.tier.name().to_string(),
                action: rule.action.as_str().to_string(),
                outcome,
            });
        }
    }
    let allowed = decision.is_none_or(Decision::allowed);
    let text = match decision {
        None => "not policed".to_string(),
        Some(Decision::NotIsolated) => {
            "allowed: not isolated (no policy selects it for this direction)".to_string()
        }
        Some(Decision::Allowed { rule }) => format!("allowed by {}", scenario::rule_name(a, *rule)),
        Some(Decision::DefaultDeny { isolated_by }) => format!(
            "default deny: isolated by {} and no rule matches",
            scenario::join_policies(isolated_by)
        ),
        Some(Decision::NotReady) => {
            "denied: the endpoint has no policy map (not ready)".to_string()
        }
        Some(Decision::InvalidIdentity) => "denied: the peer resolves to no identity".to_string(),
        Some(Decision::Redirected {
            rule,
            proxy_port,
            audit: false,
        }) => format!(
            "allowed by {} through the L7 proxy on port {proxy_port}",
            scenario::rule_name(a, *rule)
        ),
        Some(Decision::Redirected {
            rule,
            proxy_port,
            audit: true,
        }) => format!(
            "allowed; the audit-mode HTTP rules of {} are judged by the L7 proxy on port \
             {proxy_port} (reported, not enforced)",
            scenario::rule_name(a, *rule)
        ),
        Some(Decision::Denied { rule, audit }) => {
            if *audit {
                format!(
                    "audit: would deny: {} (forwarded and logged as AUDIT)",
                    scenario::rule_name(a, *rule)
                )
            } else {
                format!("denied by {}", scenario::rule_name(a, *rule))
            }
        }
    };
    // Only the NetworkPolicy tier's allows can contradict a default deny: a matching Pass
    // hands over, and the baseline tier is not reached where a NetworkPolicy isolates.
    let any_matched = rules.iter().any(|r| {
        r.matched && (r.tier != "networkpolicy" || r.action != "Allow") && r.action != "Pass"
    });
    let np_allow_matched = rules
        .iter()
        .any(|r| r.matched && r.tier == "networkpolicy" && r.action == "Allow");
    let note = match decision {
        Some(Decision::Allowed { .. }) if !any_matched && !np_allow_matched => {
            Some("the compiled maps allow this flow although no rule reads as matching".to_string())
        }
        Some(Decision::DefaultDeny { .. }) if np_allow_matched => {
            Some("the compiled maps deny this flow although a rule reads as matching".to_string())
        }
        _ => None,
    };
    SideExplanation {
        direction: dir,
        subject: Some(a.peer_display(subject)),
        identity: a.engine.endpoint_identity(&subj.key),
        policies,
        rules,
        decision: text,
        allowed,
        note,
    }
}

/// `ns/pod` for pods, `ns/name[Kind]` for workload representatives.
fn ep_name(e: &Endpoint) -> String {
    if e.key.matches('/').count() == 1 {
        e.key.clone()
    } else {
        e.workload_display()
    }
}

fn peer_text(p: &Peer) -> String {
    match p {
        Peer::Endpoints {
            namespaces: NamespaceScope::Own(ns),
            pods,
        } => {
            format!("podSelector {pods} in namespace {ns}")
        }
        Peer::Endpoints {
            namespaces: NamespaceScope::Selected(nss),
            pods,
        } => {
            format!("namespaceSelector {nss}, podSelector {pods}")
        }
        Peer::Entity(e) => format!("entity {e}"),
        Peer::IpBlock { cidr, except } if except.is_empty() => format!("ipBlock {cidr}"),
        Peer::IpBlock { cidr, except } => format!(
            "ipBlock {cidr} except {}",
            except
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn check_peers(
    a: &Analysis,
    rule: &Rule,
    dir: Direction,
    peer: &FlowPeer,
    peer_ep: Option<&Endpoint>,
    reasons: &mut Vec<String>,
) {
    let Peers::List(list) = &rule.peers else {
        return;
    };
    let field = if dir == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    let filter = &a.engine.config().label_filter;
    let mut why = Vec::new();
    for (j, p) in list.iter().enumerate() {
        let miss = match (p, peer_ep) {
            (Peer::Endpoints { .. }, None) => {
                Some(format!("selects pods, and {peer} is an external address"))
            }
            (Peer::Endpoints { namespaces, pods }, Some(e)) => {
                let ns_ok = match namespaces {
                    NamespaceScope::Own(ns) => *ns == e.namespace,
                    NamespaceScope::Selected(s) => {
                        s.matches(&a.cluster().namespace_labels(&e.namespace))
                    }
                };
                let labels = filter.apply(&e.labels);
                if !ns_ok {
                    Some(format!("namespace {} is not selected", e.namespace))
                } else if !pods.matches(&labels) {
                    let hidden: Vec<&str> = pods.keys().filter(|k| filter.excludes(k)).collect();
                    if hidden.is_empty() {
                        Some(format!("the pod labels of {} do not match", ep_name(e)))
                    } else {
                        Some(format!(
                            "the pod labels of {} do not match (label {} is left out of identities)",
                            ep_name(e),
                            hidden.join(", ")
                        ))
                    }
                } else {
                    None
                }
            }
            (Peer::Entity(e), _) => {
                let config = a.engine.config();
                (!policy_compiler::eval::spec::entity_includes(config, *e, peer, peer_ep))
                    .then(|| format!("entity {e} does not include {peer}"))
            }
            (Peer::IpBlock { cidr, except }, _) => {
                let inside = |ip: &std::net::IpAddr| {
                    cidr.contains_ip(ip) && !except.iter().any(|x| x.contains_ip(ip))
                };
                match (peer_ep, peer) {
                    (Some(e), _) if !a.options.ipblocks_select_pods => Some(format!(
                        "ipBlocks do not select pods (--ipblocks-select-pods=false), and {} is a pod",
                        ep_name(e)
                    )),
                    (Some(e), _) if e.ips.iter().any(inside) => None,
                    (Some(e), _) if e.ips.is_empty() => {
                        Some(format!("{} has no address", ep_name(e)))
                    }
                    (Some(e), _) => Some(format!("no address of {} is inside it", e.key)),
                    (None, FlowPeer::Ip(ip)) if inside(ip) => None,
                    (None, _) => Some(format!("{peer} is outside it")),
                }
            }
        };
        match miss {
            None => return,
            Some(m) => why.push(format!("{field}[{j}] ({}): {m}", peer_text(p))),
        }
    }
    reasons.push(format!("peer mismatch: {}", why.join("; ")));
}

fn check_ports(
    rule: &Rule,
    proto: Protocol,
    port: u16,
    dst: Option<&Endpoint>,
    peer: &FlowPeer,
    reasons: &mut Vec<String>,
) {
    if rule.ports.is_empty() {
        return;
    }
    let mut allowed = Vec::new();
    let mut unresolved = Vec::new();
    for ps in &rule.ports {
        let hit = match &ps.port {
            PortMatch::All => {
                allowed.push(format!("{}", ps.protocol));
                ps.protocol == proto
            }
            PortMatch::Range(lo, hi) => {
                allowed.push(if lo == hi {
                    format!("{} {lo}", ps.protocol)
                } else {
                    format!("{} {lo}-{hi}", ps.protocol)
                });
                ps.protocol == proto && (*lo..=*hi).contains(&port)
            }
            PortMatch::Named(n) => match dst.and_then(|d| d.named_port(n, ps.protocol)) {
                Some(p) => {
                    allowed.push(format!("{} {n} (= {p})", ps.protocol));
                    ps.protocol == proto && p == port
                }
                None => {
                    let on = match dst {
                        Some(d) => ep_name(d),
                        None => format!("{peer} (an address has no container ports)"),
                    };
                    unresolved.push(format!("{} {n:?} does not resolve on {on}", ps.protocol));
                    false
                }
            },
        };
        if hit {
            return;
        }
    }
    if !unresolved.is_empty() && allowed.is_empty() {
        reasons.push(format!("named port unresolved: {}", unresolved.join("; ")));
    } else if !unresolved.is_empty() {
        reasons.push(format!(
            "port mismatch: {proto}/{port} is not among {} (and {})",
            allowed.join(", "),
            unresolved.join("; ")
        ));
    } else {
        reasons.push(format!(
            "port mismatch: {proto}/{port} is not among {}",
            allowed.join(", ")
        ));
    }
}

/// Human-readable explanation.
pub fn to_text(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Flow: {} -> {} on {}/{}",
        e.from, e.to, e.port, e.protocol
    );
    for side in [&e.egress, &e.ingress] {
        s.push('\n');
        match &side.subject {
            None => {
                let _ = writeln!(s, "{}: {}", title(side.direction), side.decision);
                continue;
            }
            Some(subj) => {
                let id = side
                    .identity
                    .map(|i| format!(" (identity {i})"))
                    .unwrap_or_default();
                let _ = writeln!(s, "{} at {subj}{id}:", title(side.direction));
            }
        }
        if side.policies.is_empty() {
            let _ = writeln!(s, "  no policy selects it for {}", side.direction);
        } else {
            let _ = writeln!(
                s,
                "  selected for {} by: {}",
                side.direction,
                side.policies.join(", ")
            );
        }
        for r in &side.rules {
            let tiered = r.tier != "networkpolicy";
            let action = if tiered || r.action != "Allow" {
                format!(" ({})", r.action)
            } else {
                String::new()
            };
            if let Some(o) = &r.outcome {
                let _ = writeln!(s, "  {}{action}: matches: {o}", r.rule);
            } else if r.matched {
                let _ = writeln!(s, "  {}{action}: matches", r.rule);
            } else {
                let _ = writeln!(
                    s,
                    "  {}{action}: no match: {}",
                    r.rule,
                    r.reasons.join("; ")
                );
            }
        }
        let _ = writeln!(s, "  decision: {}", side.decision);
        if let Some(n) = &side.note {
            let _ = writeln!(s, "  note: {n}; the maps decide");
        }
    }
    let _ = writeln!(
        s,
        "\nVerdict: {} ({})",
        if e.allowed { "ALLOWED" } else { "DENIED" },
        e.deciding
    );
    s
}

fn title(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "Egress",
        Direction::Ingress => "Ingress",
    }
}

pub fn to_json(e: &Explanation) -> serde_json::Value {
    serde_json::to_value(e).unwrap_or(serde_json::Value::Null)
}
