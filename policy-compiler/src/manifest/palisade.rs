//! Palisade's policy kinds and Cilium's, decoded into the NetworkPolicy-tier model.
//!
//! `PalisadeNetworkPolicy` / `PalisadeClusterNetworkPolicy` (`policy.palisade.dev/v1alpha1`)
//! are validated and converted here; `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy`
//! (`cilium.io/v2`) are first translated into the same spec (`palisade_crds::cilium`), so both
//! reach the model through one function.

use palisade_crds::{self as crds, PolicyMode, PolicySpec};
use palisade_l7proxy::{L7Action, RuleEntry, RuleSet};

use super::*;
use crate::model::{Direction, RuleAction};
use crate::rules::PolicyKind;

/// The apiVersion each of these kinds is read as.
pub fn api_version_of(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
        PolicyKind::PalisadeNetworkPolicy | PolicyKind::PalisadeClusterNetworkPolicy => {
            crds::API_VERSION
        }
        PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy => {
            "cilium.io/v2"
        }
        PolicyKind::AdminNetworkPolicy | PolicyKind::BaselineAdminNetworkPolicy => {
            super::admin::V1ALPHA1
        }
        PolicyKind::ClusterNetworkPolicy => super::admin::V1ALPHA2,
    }
}

/// Longest rule name and log marker.
const MAX_MARKER: usize = 253;

/// Converts one object of a Palisade or Cilium kind (already known to be that kind) into
/// policies: one, or one per entry of a Cilium `specs` list (named `name#i`).
pub(super) fn convert_object(
    kind: PolicyKind,
    object: &Value,
    origin: &Origin,
) -> Result<Vec<Policy>, (Vec<FieldError>, Vec<String>)> {
    let meta: k8s::ObjectMeta = object
        .get("metadata")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| (Vec::new(), vec![format!("metadata: {e}")]))?
        .unwrap_or_default();
    let mut errors = Vec::new();
    let name = required_name(&meta, &mut errors);
    let namespace = if kind.is_cluster_scoped() {
        if meta.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            errors.push(field_invalid(
                "metadata.namespace",
                format!("{:?}", meta.namespace.clone().unwrap_or_default()),
                format!("{kind} is cluster-scoped and has no namespace"),
            ));
        }
        String::new()
    } else {
        namespace_of(&meta)
    };
    let specs: Vec<(String, PolicySpec)> = match kind {
        PolicyKind::PalisadeNetworkPolicy | PolicyKind::PalisadeClusterNetworkPolicy => {
            let spec = object
                .get("spec")
                .cloned()
                .unwrap_or(Value::Object(Default::default()));
            match serde_path_to_error::deserialize::<_, PolicySpec>(spec) {
                Ok(s) => vec![(name.clone(), s)],
                Err(e) => {
                    let path = e.path().to_string();
                    return Err((
                        errors,
                        vec![format!(
                            "strict decoding error: spec.{path}: {}",
                            e.into_inner()
                        )],
                    ));
                }
            }
        }
        PolicyKind::CiliumNetworkPolicy | PolicyKind::CiliumClusterwideNetworkPolicy => {
            let ck = if kind.is_cluster_scoped() {
                crds::cilium::CiliumKind::Clusterwide
            } else {
                crds::cilium::CiliumKind::Namespaced
            };
            match crds::cilium::translate(ck, object) {
                Ok(specs) if specs.len() == 1 => {
                    specs.into_iter().map(|s| (name.clone(), s)).collect()
                }
                Ok(specs) => specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| (format!("{name}#{i}"), s))
                    .collect(),
                Err(errs) => {
                    errors.extend(errs.into_iter().map(|e| FieldError {
                        field: e.path,
                        error_type: validate::ErrorType::Invalid,
                        bad_value: None,
                        detail: e.message,
                    }));
                    return Err((errors, Vec::new()));
                }
            }
        }
        // The cluster-admin kinds are converted by `admin`.
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (policy_name, spec) in specs {
        if let Some(p) = convert_spec(kind, &namespace, &policy_name, &spec, origin, &mut errors) {
            out.push(p);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err((errors, Vec::new()))
    }
}

fn api_selector(s: &crds::LabelSelector) -> k8s::LabelSelector {
    k8s::LabelSelector {
        match_labels: s.match_labels.clone(),
        match_expressions: s.match_expressions.as_ref().map(|v| {
            v.iter()
                .map(|r| k8s::LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                    values: r.values.clone(),
                })
                .collect()
        }),
    }
}

fn selector(s: &crds::LabelSelector, path: &str, errors: &mut Vec<FieldError>) -> Selector {
    let api = api_selector(s);
    validate::validate_label_selector(&api, path, errors);
    Selector::from_api(&api)
}

fn check_marker(value: &Option<String>, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(v) = value
        && (v.is_empty() || v.len() > MAX_MARKER || v.chars().any(char::is_control))
    {
        errors.push(field_invalid(
            path,
            format!("{v:?}"),
            format!("must be 1-{MAX_MARKER} characters without control characters"),
        ));
    }
}

/// Validates one spec and converts it. Errors are pushed with their field paths.
pub(super) fn convert_spec(
    kind: PolicyKind,
    namespace: &str,
    name: &str,
    spec: &PolicySpec,
    origin: &Origin,
    errors: &mut Vec<FieldError>,
) -> Option<Policy> {
    let before = errors.len();
    let cluster = kind.is_cluster_scoped();
    let pod_selector = selector(&spec.pod_selector, "spec.podSelector", errors);
    let namespace_selector = match (&spec.namespace_selector, cluster) {
        (Some(ns), true) => Some(selector(ns, "spec.namespaceSelector", errors)),
        (None, true) => None,
        (Some(_), false) => {
            errors.push(FieldError {
                field: "spec.namespaceSelector".into(),
                error_type: validate::ErrorType::Forbidden,
                bad_value: None,
                detail: format!(
                    "{kind} selects pods of its own namespace; use the cluster-scoped kind"
                ),
            });
            None
        }
        (None, false) => None,
    };
    let mut dirs: [Option<Vec<Rule>>; 2] = [None, None];
    for dir in Direction::BOTH {
        let (list, field, wrong) = match dir {
            Direction::Ingress => (&spec.ingress, "ingress", "to"),
            Direction::Egress => (&spec.egress, "egress", "from"),
        };
        let Some(list) = list else { continue };
        let mut rules = Vec::with_capacity(list.len());
        for (i, r) in list.iter().enumerate() {
            let path = format!("spec.{field}[{i}]");
            let (peers_in, peer_field) = match dir {
                Direction::Ingress => (&r.from, "from"),
                Direction::Egress => (&r.to, "to"),
            };
            let other = match dir {
                Direction::Ingress => &r.to,
                Direction::Egress => &r.from,
            };
            if !other.is_empty() {
                errors.push(FieldError {
                    field: format!("{path}.{wrong}"),
                    error_type: validate::ErrorType::Forbidden,
                    bad_value: None,
                    detail: format!("{field} rules name their peers in `{peer_field}`"),
                });
            }
            check_marker(&r.name, &format!("{path}.name"), errors);
            check_marker(&r.log, &format!("{path}.log"), errors);
            let peers = if peers_in.is_empty() {
                Peers::Any
            } else {
                Peers::List(
                    peers_in
                        .iter()
                        .enumerate()
                        .filter_map(|(j, p)| {
                            peer(
                                p,
                                namespace,
                                cluster,
                                &format!("{path}.{peer_field}[{j}]"),
                                errors,
                            )
                        })
                        .collect(),
                )
            };
            let action = match r.action {
                crds::RuleAction::Allow => RuleAction::Allow,
                crds::RuleAction::Deny => RuleAction::Deny,
            };
            let ports = r
                .ports
                .iter()
                .enumerate()
                .filter_map(|(j, p)| port(p, action, &format!("{path}.ports[{j}]"), errors))
                .collect();
            rules.push(Rule {
                peers,
                ports,
                action,
                name: r.name.clone(),
                log: r.log.clone(),
            });
        }
        dirs[dir as usize] = Some(rules);
    }
    if errors.len() != before {
        return None;
    }
    let [ingress, egress] = dirs;
    Some(Policy {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        namespace_selector,
        pod_selector,
        ingress,
        egress,
        isolates: [spec.isolates_ingress(), spec.isolates_egress()],
        audit: spec.mode == PolicyMode::Audit,
        tier: crate::model::PolicyTier::NetworkPolicy,
        origin: origin.to_string(),
    })
}

fn peer(
    p: &crds::Peer,
    namespace: &str,
    cluster: bool,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Peer> {
    let endpoints = p.pod_selector.is_some() || p.namespace_selector.is_some();
    let forms = usize::from(endpoints)
        + usize::from(p.ip_block.is_some())
        + usize::from(p.entity.is_some());
    if forms != 1 {
        errors.push(field_invalid(
            path,
            String::new(),
            "must give exactly one of podSelector/namespaceSelector, ipBlock or entity".into(),
        ));
        return None;
    }
    if let Some(b) = &p.ip_block {
        let parse = |s: &str, field: String, errors: &mut Vec<FieldError>| match s.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(field_invalid(&field, format!("{s:?}"), e.to_string()));
                None
            }
        };
        let cidr = parse(&b.cidr, format!("{path}.ipBlock.cidr"), errors)?;
        let mut except = Vec::new();
        for (i, e) in b.except.iter().enumerate() {
            let at = format!("{path}.ipBlock.except[{i}]");
            if let Some(x) = parse(e, at.clone(), errors) {
                if !cidr.contains(&x) {
                    errors.push(field_invalid(
                        &at,
                        format!("{e:?}"),
                        "must be inside the ipBlock's cidr".into(),
                    ));
                }
                except.push(x);
            }
        }
        return Some(Peer::IpBlock { cidr, except });
    }
    if let Some(e) = p.entity {
        return Some(Peer::Entity(e));
    }
    let pods = match &p.pod_selector {
        Some(s) => selector(s, &format!("{path}.podSelector"), errors),
        None => Selector::everything(),
    };
    let namespaces = match (&p.namespace_selector, cluster) {
        (Some(ns), _) => {
            NamespaceScope::Selected(selector(ns, &format!("{path}.namespaceSelector"), errors))
        }
        (None, true) => NamespaceScope::Selected(Selector::everything()),
        (None, false) => NamespaceScope::Own(namespace.to_string()),
    };
    Some(Peer::Endpoints { namespaces, pods })
}

fn port(
    p: &crds::PortRule,
    action: RuleAction,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<PortSpec> {
    let protocol = port_protocol(p.protocol.as_deref(), path, errors)?;
    let port = match &p.port {
        None => {
            if p.end_port.is_some() {
                errors.push(field_invalid(
                    &format!("{path}.endPort"),
                    format!("{:?}", p.end_port),
                    "may only be given with a numeric port".into(),
                ));
                return None;
            }
            PortMatch::All
        }
        Some(crds::PortValue::Number(n)) => {
            if !(1..=65535).contains(n) {
                errors.push(field_invalid(
                    &format!("{path}.port"),
                    n.to_string(),
                    "must be between 1 and 65535, inclusive".into(),
                ));
                return None;
            }
            let hi = match p.end_port {
                None => *n,
                Some(e) if e >= *n && e <= 65535 => e,
                Some(e) => {
                    errors.push(field_invalid(
                        &format!("{path}.endPort"),
                        e.to_string(),
                        "must be between port and 65535, inclusive".into(),
                    ));
                    return None;
                }
            };
            PortMatch::Range(*n as u16, hi as u16)
        }
        Some(crds::PortValue::Name(s)) => {
            let problems = validate::is_valid_port_name(s);
            if !problems.is_empty() || p.end_port.is_some() {
                errors.push(field_invalid(
                    &format!("{path}.port"),
                    format!("{s:?}"),
                    if problems.is_empty() {
                        "endPort may not be given with a named port".into()
                    } else {
                        problems.join("; ")
                    },
                ));
                return None;
            }
            PortMatch::Named(s.clone())
        }
    };
    let http = match &p.http {
        None => None,
        Some(rules) => {
            let at = format!("{path}.http");
            let single = matches!(port, PortMatch::Named(_))
                || matches!(port, PortMatch::Range(lo, hi) if lo == hi);
            if protocol != Protocol::TCP {
                errors.push(field_invalid(
                    &at,
                    String::new(),
                    "HTTP rules need protocol TCP".into(),
                ));
                return None;
            }
            if !single {
                errors.push(field_invalid(
                    &at,
                    String::new(),
                    "HTTP rules need one port (a number without endPort, or a name)".into(),
                ));
                return None;
            }
            if rules.is_empty() {
                errors.push(field_invalid(
                    &at,
                    "[]".into(),
                    "give at least one HTTP rule (leave out `http` for a rule on the whole port)"
                        .into(),
                ));
                return None;
            }
            let l7 = if action == RuleAction::Deny {
                L7Action::Deny
            } else {
                L7Action::Allow
            };
            let entries = rules
                .iter()
                .enumerate()
                .map(|(i, r)| RuleEntry {
                    id: i as u32,
                    action: l7,
                    rule: r.clone(),
                })
                .collect();
            if let Err(e) = RuleSet::compile(entries) {
                let field = match e.rule {
                    Some(i) => format!("{at}[{i}].{}", e.field),
                    None => format!("{at}.{}", e.field),
                };
                errors.push(field_invalid(&field, String::new(), e.problem.to_string()));
                return None;
            }
            Some(rules.clone())
        }
    };
    Some(PortSpec {
        protocol,
        port,
        http,
    })
}

/// Whether `kind`/`api` names one of these kinds; `Some(Err(..))` for a known kind with an
/// apiVersion that is not read.
pub fn policy_kind(kind: &str, api: &str) -> Option<Result<PolicyKind, String>> {
    let k = PolicyKind::from_kind(kind).filter(|k| !k.is_network_policy())?;
    let want = api_version_of(k);
    Some(if api == want {
        Ok(k)
    } else {
        Err(format!(
            "apiVersion {api:?} is not modelled ({kind} is read as {want})"
        ))
    })
}
