//! The cluster-admin kinds of `policy.networking.k8s.io`, decoded into the one tier model:
//!
//! - `AdminNetworkPolicy` (v1alpha1): the admin tier at `spec.priority`; actions Allow, Deny,
//!   Pass;
//! - `BaselineAdminNetworkPolicy` (v1alpha1): the baseline tier; one object, named
//!   `default`; actions Allow, Deny;
//! - `ClusterNetworkPolicy` (v1alpha2): `spec.tier` Admin or Baseline at `spec.priority`;
//!   actions Accept (= Allow), Deny, Pass; ports as `protocols`.
//!
//! Validation follows the CRDs' own schemas and CEL rules (network-policy-api v0.1.x for
//! v1alpha1, the v1alpha2 types for ClusterNetworkPolicy), with the field path of every
//! error. Peers become the model's peers: `namespaces` and `pods` select endpoints,
//! `networks` are address blocks (which also select pods whose addresses they contain, as
//! the upstream conformance suite expects), and `nodes` select the addresses of the Node
//! objects whose labels match (resolved once every object is read: [`resolve_node_peers`]).
//! `domainNames` is refused: Palisade enforces no DNS-based peers.

use serde::Deserialize;

use super::*;
use crate::model::{Direction, PolicyTier, RuleAction};

/// The apiVersion of AdminNetworkPolicy and BaselineAdminNetworkPolicy.
pub const V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";
/// The apiVersion of ClusterNetworkPolicy.
pub const V1ALPHA2: &str = "policy.networking.k8s.io/v1alpha2";
/// Highest priority of either version.
pub const MAX_PRIORITY: i64 = 1000;
/// The only name a BaselineAdminNetworkPolicy may have.
pub const BANP_NAME: &str = "default";
/// Longest rule name.
pub const RULE_NAME_MAX: usize = 100;

/// Per-version list limits of the CRD schemas.
struct Limits {
    rules: usize,
    peers: usize,
    ports: usize,
    networks: usize,
}

const V1_LIMITS: Limits = Limits {
    rules: 100,
    peers: 100,
    ports: 100,
    networks: 25,
};
const V2_LIMITS: Limits = Limits {
    rules: 25,
    peers: 25,
    ports: 25,
    networks: 25,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Object<S> {
    #[serde(default)]
    #[allow(dead_code, reason = "checked by the loader before decoding")]
    api_version: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "checked by the loader before decoding")]
    kind: Option<String>,
    #[serde(default)]
    metadata: k8s::ObjectMeta,
    #[serde(default)]
    spec: Option<S>,
    #[serde(default)]
    #[allow(dead_code, reason = "written by controllers; no effect on policy")]
    status: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    /// v1alpha2 only.
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    subject: Option<Subject>,
    #[serde(default)]
    ingress: Option<Vec<RuleSpec>>,
    #[serde(default)]
    egress: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Subject {
    #[serde(default)]
    namespaces: Option<k8s::LabelSelector>,
    #[serde(default)]
    pods: Option<NamespacedPod>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespacedPod {
    #[serde(default)]
    namespace_selector: Option<k8s::LabelSelector>,
    #[serde(default)]
    pod_selector: Option<k8s::LabelSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    from: Option<Vec<PeerSpec>>,
    #[serde(default)]
    to: Option<Vec<PeerSpec>>,
    /// v1alpha1.
    #[serde(default)]
    ports: Option<Vec<V1Port>>,
    /// v1alpha2.
    #[serde(default)]
    protocols: Option<Vec<V2Protocol>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerSpec {
    #[serde(default)]
    namespaces: Option<k8s::LabelSelector>,
    #[serde(default)]
    pods: Option<NamespacedPod>,
    #[serde(default)]
    nodes: Option<k8s::LabelSelector>,
    #[serde(default)]
    networks: Option<Vec<String>>,
    #[serde(default)]
    domain_names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V1Port {
    #[serde(default)]
    port_number: Option<V1PortNumber>,
    #[serde(default)]
    named_port: Option<String>,
    #[serde(default)]
    port_range: Option<V1PortRange>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V1PortNumber {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V1PortRange {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    end: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V2Protocol {
    #[serde(default)]
    tcp: Option<V2Ports>,
    #[serde(default)]
    udp: Option<V2Ports>,
    #[serde(default)]
    sctp: Option<V2Ports>,
    #[serde(default)]
    destination_named_port: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V2Ports {
    #[serde(default)]
    destination_port: Option<V2Port>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V2Port {
    #[serde(default)]
    number: Option<i64>,
    #[serde(default)]
    range: Option<V2Range>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct V2Range {
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    end: Option<i64>,
}

/// A `nodes` peer waiting for the Node objects: policy, direction, rule index, selector.
#[derive(Debug, Clone)]
pub(super) struct NodePeer {
    pub(super) policy: crate::rules::PolicyRef,
    pub(super) direction: Direction,
    pub(super) rule: usize,
    pub(super) selector: Selector,
}

/// A Node object as peers see it: labels and addresses.
#[derive(Debug, Clone)]
pub(super) struct NodeDef {
    pub(super) labels: Labels,
    pub(super) addresses: Vec<IpAddr>,
}

/// What one object converts into.
pub(super) struct Converted {
    pub(super) policy: Policy,
    pub(super) node_peers: Vec<NodePeer>,
}

/// Decodes and validates one object of a cluster-admin kind. Errors carry field paths;
/// `Err` messages (second element) are decoding errors without one.
pub(super) fn convert_object(
    kind: PolicyKind,
    doc: &Doc<'_>,
) -> Result<Converted, (Vec<FieldError>, Vec<String>)> {
    let obj: Object<Spec> = doc.decode().map_err(|m| (Vec::new(), vec![m]))?;
    let mut errors = Vec::new();
    let name = required_name(&obj.metadata, &mut errors);
    if obj
        .metadata
        .namespace
        .as_deref()
        .is_some_and(|n| !n.is_empty())
    {
        errors.push(field_invalid(
            "metadata.namespace",
            format!("{:?}", obj.metadata.namespace.clone().unwrap_or_default()),
            format!("{kind} is cluster-scoped and has no namespace"),
        ));
    }
    let v2 = kind == PolicyKind::ClusterNetworkPolicy;
    let limits = if v2 { &V2_LIMITS } else { &V1_LIMITS };
    let Some(spec) = obj.spec else {
        errors.push(field_required("spec", ""));
        return Err((errors, Vec::new()));
    };
    if kind == PolicyKind::BaselineAdminNetworkPolicy && !name.is_empty() && name != BANP_NAME {
        errors.push(field_invalid(
            "metadata.name",
            format!("{name:?}"),
            "only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster".into(),
        ));
    }
    // Tier and priority.
    let priority = match (kind, spec.priority) {
        (PolicyKind::BaselineAdminNetworkPolicy, Some(_)) => {
            errors.push(field_forbidden(
                "spec.priority",
                "a BaselineAdminNetworkPolicy has no priority (it is evaluated after every NetworkPolicy)",
            ));
            0
        }
        (PolicyKind::BaselineAdminNetworkPolicy, None) => 0,
        (_, None) => {
            errors.push(field_required("spec.priority", ""));
            0
        }
        (_, Some(p)) if !(0..=MAX_PRIORITY).contains(&p) => {
            errors.push(field_invalid(
                "spec.priority",
                p.to_string(),
                format!("should be between 0 and {MAX_PRIORITY} (lower is evaluated first)"),
            ));
            0
        }
        (_, Some(p)) => p as u32,
    };
    let tier = match (kind, spec.tier.as_deref()) {
        (PolicyKind::ClusterNetworkPolicy, Some("Admin")) => PolicyTier::Admin(priority),
        (PolicyKind::ClusterNetworkPolicy, Some("Baseline")) => PolicyTier::Baseline(priority),
        (PolicyKind::ClusterNetworkPolicy, Some(other)) => {
            errors.push(field_unsupported(
                "spec.tier",
                format!("{other:?}"),
                &["Admin", "Baseline"],
            ));
            PolicyTier::Admin(priority)
        }
        (PolicyKind::ClusterNetworkPolicy, None) => {
            errors.push(field_required("spec.tier", "Admin or Baseline"));
            PolicyTier::Admin(priority)
        }
        (_, Some(_)) => {
            errors.push(field_forbidden(
                "spec.tier",
                &format!("{kind} has no tier (ClusterNetworkPolicy of {V1ALPHA2} has)"),
            ));
            PolicyTier::Admin(priority)
        }
        (PolicyKind::BaselineAdminNetworkPolicy, None) => PolicyTier::Baseline(0),
        (_, None) => PolicyTier::Admin(priority),
    };
    // Subject.
    let (namespace_selector, pod_selector) = match &spec.subject {
        None => {
            errors.push(field_required("spec.subject", "namespaces or pods"));
            (Selector::everything(), Selector::everything())
        }
        Some(s) => match (&s.namespaces, &s.pods) {
            (Some(ns), None) => (
                selector(ns, "spec.subject.namespaces", &mut errors),
                Selector::everything(),
            ),
            (None, Some(p)) => namespaced_pod(p, "spec.subject.pods", &mut errors),
            _ => {
                errors.push(field_forbidden(
                    "spec.subject",
                    "exactly one of `namespaces` or `pods` must be set",
                ));
                (Selector::everything(), Selector::everything())
            }
        },
    };
    let pref = crate::rules::PolicyRef {
        kind,
        namespace: String::new(),
        name: name.clone(),
    };
    let mut node_peers = Vec::new();
    let mut dirs: [Option<Vec<Rule>>; 2] = [None, None];
    for dir in Direction::BOTH {
        let list = match dir {
            Direction::Ingress => &spec.ingress,
            Direction::Egress => &spec.egress,
        };
        let Some(list) = list else { continue };
        let path = format!("spec.{dir}");
        if list.len() > limits.rules {
            errors.push(field_too_many(&path, list.len(), limits.rules));
        }
        let mut rules = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if let Some(rule) = convert_rule(kind, dir, r, &at, limits, &mut errors, &mut |sel| {
                node_peers.push(NodePeer {
                    policy: pref.clone(),
                    direction: dir,
                    rule: i,
                    selector: sel,
                })
            }) {
                rules.push(rule);
            }
        }
        dirs[dir as usize] = Some(rules);
    }
    if !errors.is_empty() {
        return Err((errors, Vec::new()));
    }
    let [ingress, egress] = dirs;
    Ok(Converted {
        policy: Policy {
            kind,
            namespace: String::new(),
            name,
            namespace_selector: Some(namespace_selector),
            pod_selector,
            ingress,
            egress,
            // Tiered policies never isolate: only NetworkPolicy-tier policies do.
            isolates: [false, false],
            audit: false,
            tier,
            origin: doc.origin.to_string(),
        },
        node_peers,
    })
}

#[allow(clippy::too_many_arguments, reason = "one rule with its context")]
fn convert_rule(
    kind: PolicyKind,
    dir: Direction,
    r: &RuleSpec,
    at: &str,
    limits: &Limits,
    errors: &mut Vec<FieldError>,
    node_peer: &mut dyn FnMut(Selector),
) -> Option<Rule> {
    let before = errors.len();
    let v2 = kind == PolicyKind::ClusterNetworkPolicy;
    if let Some(n) = &r.name
        && n.chars().count() > RULE_NAME_MAX
    {
        errors.push(field_invalid(
            &format!("{at}.name"),
            format!("{} characters", n.chars().count()),
            format!("may not be more than {RULE_NAME_MAX} characters"),
        ));
    }
    let allowed: &[&str] = match kind {
        PolicyKind::BaselineAdminNetworkPolicy => &["Allow", "Deny"],
        PolicyKind::ClusterNetworkPolicy => &["Accept", "Deny", "Pass"],
        _ => &["Allow", "Deny", "Pass"],
    };
    let action = match r.action.as_deref() {
        None => {
            errors.push(field_required(&format!("{at}.action"), ""));
            RuleAction::Deny
        }
        Some(a) if allowed.contains(&a) => match a {
            "Allow" | "Accept" => RuleAction::Allow,
            "Pass" => RuleAction::Pass,
            _ => RuleAction::Deny,
        },
        Some(a) => {
            errors.push(field_unsupported(
                &format!("{at}.action"),
                format!("{a:?}"),
                allowed,
            ));
            RuleAction::Deny
        }
    };
    // Peers: `from` for ingress, `to` for egress.
    let (field, peers, other, other_field) = match dir {
        Direction::Ingress => ("from", &r.from, &r.to, "to"),
        Direction::Egress => ("to", &r.to, &r.from, "from"),
    };
    if other.is_some() {
        errors.push(field_forbidden(
            &format!("{at}.{other_field}"),
            &format!("{dir} rules name their peers in `{field}`"),
        ));
    }
    let ppath = format!("{at}.{field}");
    let mut out_peers = Vec::new();
    let mut address_peer = false;
    match peers {
        None => errors.push(field_required(&ppath, "at least one peer")),
        Some(list) if list.is_empty() => errors.push(field_invalid(
            &ppath,
            "[]".into(),
            "must have at least 1 item".into(),
        )),
        Some(list) => {
            if list.len() > limits.peers {
                errors.push(field_too_many(&ppath, list.len(), limits.peers));
            }
            for (j, p) in list.iter().enumerate() {
                let pp = format!("{ppath}[{j}]");
                let set = [
                    p.namespaces.is_some(),
                    p.pods.is_some(),
                    p.nodes.is_some(),
                    p.networks.is_some(),
                    p.domain_names.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if set != 1 {
                    errors.push(field_forbidden(
                        &pp,
                        "exactly one of `namespaces`, `pods`, `nodes`, `networks` must be set",
                    ));
                    continue;
                }
                if dir == Direction::Ingress
                    && (p.nodes.is_some() || p.networks.is_some() || p.domain_names.is_some())
                {
                    errors.push(field_forbidden(
                        &pp,
                        "ingress peers are `namespaces` or `pods` (nodes and networks are egress peers)",
                    ));
                    continue;
                }
                if let Some(ns) = &p.namespaces {
                    out_peers.push(Peer::Endpoints {
                        namespaces: NamespaceScope::Selected(selector(
                            ns,
                            &format!("{pp}.namespaces"),
                            errors,
                        )),
                        pods: Selector::everything(),
                    });
                } else if let Some(np) = &p.pods {
                    let (ns, pods) = namespaced_pod(np, &format!("{pp}.pods"), errors);
                    out_peers.push(Peer::Endpoints {
                        namespaces: NamespaceScope::Selected(ns),
                        pods,
                    });
                } else if let Some(nodes) = &p.nodes {
                    address_peer = true;
                    node_peer(selector(nodes, &format!("{pp}.nodes"), errors));
                } else if let Some(nets) = &p.networks {
                    address_peer = true;
                    let np = format!("{pp}.networks");
                    if nets.is_empty() {
                        errors.push(field_invalid(
                            &np,
                            "[]".into(),
                            "must have at least 1 item".into(),
                        ));
                    }
                    if nets.len() > limits.networks {
                        errors.push(field_too_many(&np, nets.len(), limits.networks));
                    }
                    for (k, n) in nets.iter().enumerate() {
                        match n.parse::<Cidr>() {
                            Ok(cidr) => out_peers.push(Peer::IpBlock {
                                cidr,
                                except: Vec::new(),
                            }),
                            Err(e) => errors.push(field_invalid(
                                &format!("{np}[{k}]"),
                                format!("{n:?}"),
                                format!("invalid CIDR format provided: {e}"),
                            )),
                        }
                    }
                } else {
                    errors.push(field_forbidden(
                        &format!("{pp}.domainNames"),
                        "domain-name peers are not enforced by Palisade (no DNS-aware datapath); use `networks`",
                    ));
                }
            }
        }
    }
    // Ports.
    let mut ports = Vec::new();
    let mut named = false;
    if v2 {
        if r.ports.is_some() {
            errors.push(field_forbidden(
                &format!("{at}.ports"),
                &format!("{V1ALPHA2} names ports in `protocols`"),
            ));
        }
        if let Some(list) = &r.protocols {
            let pp = format!("{at}.protocols");
            check_count(&pp, list.len(), limits.ports, errors);
            for (j, p) in list.iter().enumerate() {
                let at = format!("{pp}[{j}]");
                let given = [
                    (p.tcp.as_ref(), Protocol::TCP, "tcp"),
                    (p.udp.as_ref(), Protocol::UDP, "udp"),
                    (p.sctp.as_ref(), Protocol::SCTP, "sctp"),
                ];
                let n = given.iter().filter(|g| g.0.is_some()).count()
                    + usize::from(p.destination_named_port.is_some());
                if n != 1 {
                    errors.push(field_forbidden(
                        &at,
                        "exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort` must be set",
                    ));
                    continue;
                }
                if let Some(name) = &p.destination_named_port {
                    named = true;
                    named_port(
                        name,
                        &format!("{at}.destinationNamedPort"),
                        &mut ports,
                        errors,
                    );
                    continue;
                }
                for (ports_of, proto, key) in given {
                    let Some(pv) = ports_of else { continue };
                    let kp = format!("{at}.{key}");
                    let Some(dp) = &pv.destination_port else {
                        errors.push(field_required(
                            &format!("{kp}.destinationPort"),
                            "number or range",
                        ));
                        continue;
                    };
                    let dpp = format!("{kp}.destinationPort");
                    match (dp.number, &dp.range) {
                        (Some(n), None) => {
                            if let Some(p) = port_number(n, &format!("{dpp}.number"), errors) {
                                ports.push(PortSpec::new(proto, PortMatch::Range(p, p)));
                            }
                        }
                        (None, Some(rg)) => {
                            if let Some((lo, hi)) =
                                port_range(rg.start, rg.end, &format!("{dpp}.range"), errors)
                            {
                                ports.push(PortSpec::new(proto, PortMatch::Range(lo, hi)));
                            }
                        }
                        _ => errors.push(field_forbidden(
                            &dpp,
                            "exactly one of `number` or `range` must be set",
                        )),
                    }
                }
            }
        }
    } else {
        if r.protocols.is_some() {
            errors.push(field_forbidden(
                &format!("{at}.protocols"),
                &format!("{V1ALPHA1} names ports in `ports`"),
            ));
        }
        if let Some(list) = &r.ports {
            let pp = format!("{at}.ports");
            check_count(&pp, list.len(), limits.ports, errors);
            for (j, p) in list.iter().enumerate() {
                let at = format!("{pp}[{j}]");
                let n = usize::from(p.port_number.is_some())
                    + usize::from(p.named_port.is_some())
                    + usize::from(p.port_range.is_some());
                if n != 1 {
                    errors.push(field_forbidden(
                        &at,
                        "exactly one of `portNumber`, `namedPort`, `portRange` must be set",
                    ));
                    continue;
                }
                if let Some(pn) = &p.port_number {
                    let proto =
                        port_protocol(pn.protocol.as_deref(), &format!("{at}.portNumber"), errors);
                    let port = match pn.port {
                        None => {
                            errors.push(field_required(&format!("{at}.portNumber.port"), ""));
                            None
                        }
                        Some(n) => port_number(n, &format!("{at}.portNumber.port"), errors),
                    };
                    if let (Some(proto), Some(port)) = (proto, port) {
                        ports.push(PortSpec::new(proto, PortMatch::Range(port, port)));
                    }
                } else if let Some(name) = &p.named_port {
                    named = true;
                    named_port(name, &format!("{at}.namedPort"), &mut ports, errors);
                } else if let Some(rg) = &p.port_range {
                    let proto =
                        port_protocol(rg.protocol.as_deref(), &format!("{at}.portRange"), errors);
                    let range = port_range(rg.start, rg.end, &format!("{at}.portRange"), errors);
                    if let (Some(proto), Some((lo, hi))) = (proto, range) {
                        ports.push(PortSpec::new(proto, PortMatch::Range(lo, hi)));
                    }
                }
            }
        }
    }
    if named && address_peer {
        errors.push(field_forbidden(at, "networks/nodes peers cannot be set with named ports since there are no named ports for networks/nodes"));
    }
    if errors.len() > before {
        return None;
    }
    Some(Rule {
        peers: Peers::List(out_peers),
        ports,
        action,
        name: r.name.clone().filter(|n| !n.is_empty()),
        log: None,
    })
}

/// A named port: matched on every protocol the destination pod names it for.
fn named_port(name: &str, path: &str, ports: &mut Vec<PortSpec>, errors: &mut Vec<FieldError>) {
    let problems = validate::is_valid_port_name(name);
    if !problems.is_empty() {
        errors.push(field_invalid(
            path,
            format!("{name:?}"),
            problems.join("; "),
        ));
        return;
    }
    for proto in Protocol::POLICY {
        ports.push(PortSpec::new(proto, PortMatch::Named(name.to_string())));
    }
}

fn port_number(n: i64, path: &str, errors: &mut Vec<FieldError>) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Some(p),
        _ => {
            errors.push(field_invalid(
                path,
                n.to_string(),
                "must be between 1 and 65535, inclusive".into(),
            ));
            None
        }
    }
}

fn port_range(
    start: Option<i64>,
    end: Option<i64>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<(u16, u16)> {
    let s = match start {
        None => {
            errors.push(field_required(&format!("{path}.start"), ""));
            None
        }
        Some(s) => port_number(s, &format!("{path}.start"), errors),
    };
    let e = match end {
        None => {
            errors.push(field_required(&format!("{path}.end"), ""));
            None
        }
        Some(e) => port_number(e, &format!("{path}.end"), errors),
    };
    let (s, e) = (s?, e?);
    if s >= e {
        errors.push(field_invalid(
            path,
            format!("\"{s}-{e}\""),
            "start port must be less than end port".into(),
        ));
        return None;
    }
    Some((s, e))
}

fn check_count(path: &str, n: usize, max: usize, errors: &mut Vec<FieldError>) {
    if n == 0 {
        errors.push(field_invalid(
            path,
            "[]".into(),
            "must have at least 1 item (leave the field out to match every port)".into(),
        ));
    } else if n > max {
        errors.push(field_too_many(path, n, max));
    }
}

fn selector(s: &k8s::LabelSelector, path: &str, errors: &mut Vec<FieldError>) -> Selector {
    validate::validate_label_selector(s, path, errors);
    Selector::from_api(s)
}

fn namespaced_pod(
    p: &NamespacedPod,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> (Selector, Selector) {
    let ns = p
        .namespace_selector
        .as_ref()
        .map(|s| selector(s, &format!("{path}.namespaceSelector"), errors))
        .unwrap_or_default();
    // Absent, as empty: every pod (as upstream's own examples and netpol-analyzer read it).
    let pods = p
        .pod_selector
        .as_ref()
        .map(|s| selector(s, &format!("{path}.podSelector"), errors))
        .unwrap_or_default();
    (ns, pods)
}

/// Decodes a Node: its labels and the IP addresses of `status.addresses`.
pub(super) fn convert_node(doc: &Doc<'_>) -> Result<NodeDef, (Vec<FieldError>, Vec<String>)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NodeObject {
        #[serde(default)]
        metadata: k8s::ObjectMeta,
        #[serde(default)]
        status: Option<NodeStatus>,
    }
    #[derive(Deserialize)]
    struct NodeStatus {
        #[serde(default)]
        addresses: Option<Vec<NodeAddress>>,
    }
    #[derive(Deserialize)]
    struct NodeAddress {
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        address: Option<String>,
    }
    let n: NodeObject = doc.decode().map_err(|m| (Vec::new(), vec![m]))?;
    let mut errors = Vec::new();
    required_name(&n.metadata, &mut errors);
    let labels = n.metadata.labels.clone().unwrap_or_default();
    validate::validate_labels(&labels, "metadata.labels", &mut errors);
    let mut addresses = Vec::new();
    for (i, a) in n
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        // Hostnames and DNS names are no addresses a packet carries.
        if !matches!(a.kind.as_deref(), Some("InternalIP" | "ExternalIP")) {
            continue;
        }
        let text = a.address.as_deref().unwrap_or("");
        match text.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => errors.push(field_invalid(
                &format!("status.addresses[{i}].address"),
                format!("{text:?}"),
                "must be a valid IP address".into(),
            )),
        }
    }
    if !errors.is_empty() {
        return Err((errors, Vec::new()));
    }
    Ok(NodeDef { labels, addresses })
}

/// Gives every `nodes` peer the addresses of the nodes its selector matches (none: the peer
/// matches nothing, and a warning says so: a Deny rule on nodes that matches no address
/// denies nothing).
pub(super) fn resolve_node_peers(
    cluster: &mut Cluster,
    nodes: &[NodeDef],
    pending: &[NodePeer],
) -> Vec<String> {
    let mut warnings = Vec::new();
    for np in pending {
        let mut matched = 0usize;
        let Some(p) = cluster.policies.get_mut(&np.policy) else {
            continue;
        };
        let p = Arc::make_mut(p);
        let rules = match np.direction {
            Direction::Ingress => p.ingress.as_mut(),
            Direction::Egress => p.egress.as_mut(),
        };
        let Some(rule) = rules.and_then(|r| r.get_mut(np.rule)) else {
            continue;
        };
        let Peers::List(list) = &mut rule.peers else {
            continue;
        };
        for n in nodes.iter().filter(|n| np.selector.matches(&n.labels)) {
            for a in &n.addresses {
                matched += 1;
                let block = Peer::IpBlock {
                    cidr: Cidr::host(*a),
                    except: Vec::new(),
                };
                if !list.contains(&block) {
                    list.push(block);
                }
            }
        }
        if matched == 0 {
            warnings.push(format!(
                "{} {}[{}]: the `nodes` peer matches no address ({} Node object(s) given, none selected with an InternalIP or ExternalIP): it matches nothing",
                np.policy,
                np.direction,
                np.rule,
                nodes.len()
            ));
        }
    }
    warnings
}

/// Warnings about admin-tier policies sharing a priority: upstream leaves their order
/// undefined; Palisade orders them by name.
pub(super) fn priority_warnings(cluster: &Cluster) -> Vec<String> {
    /// (admin tier, priority) -> (name, kind, display) of the policies there.
    type ByPriority = BTreeMap<(bool, u32), Vec<(String, PolicyKind, String)>>;
    let mut by_priority = ByPriority::new();
    for (r, p) in &cluster.policies {
        let key = match p.tier {
            PolicyTier::Admin(prio) => (true, prio),
            PolicyTier::Baseline(prio) if r.kind == PolicyKind::ClusterNetworkPolicy => {
                (false, prio)
            }
            _ => continue,
        };
        by_priority
            .entry(key)
            .or_default()
            .push((r.name.clone(), r.kind, r.to_string()));
    }
    by_priority
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|((admin, prio), mut v)| {
            v.sort();
            let names: Vec<&str> = v.iter().map(|x| x.2.as_str()).collect();
            format!(
                "{} share priority {prio} in the {} tier: upstream leaves their order undefined; Palisade evaluates them by name, then kind: {}",
                names.join(", "),
                if admin { "admin" } else { "baseline" },
                names.join(" before ")
            )
        })
        .collect()
}
