//! The NetworkPolicy spec: pod selector, rules, ports, peers, ipBlocks
//! (`pkg/apis/networking/validation`).

use super::*;

/// `ValidateNetworkPolicySpec`: pod selector, then each ingress rule (ports, then peers),
/// each egress rule, and finally policyTypes.
pub(super) fn validate_spec(
    spec: &NetworkPolicySpec,
    opts: &ValidationOptions,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) {
    validate_label_selector(&spec.pod_selector, "spec.podSelector", out);

    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let rule_path = format!("spec.ingress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), out);
        }
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.from[{j}]"), opts, out, warnings);
        }
    }
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let rule_path = format!("spec.egress[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            validate_port(port, &format!("{rule_path}.ports[{j}]"), out);
        }
        for (j, peer) in rule.to.iter().flatten().enumerate() {
            validate_peer(peer, &format!("{rule_path}.to[{j}]"), opts, out, warnings);
        }
    }

    if let Some(types) = &spec.policy_types {
        if types.len() > POLICY_TYPES.len() {
            // Upstream returns here: no per-item errors once the list is too long.
            out.push(invalid(
                "spec.policyTypes",
                go_policy_types_literal(types),
                "may not specify more than two policyTypes".to_owned(),
            ));
            return;
        }
        // Duplicates ("Ingress", "Ingress") are accepted upstream.
        for (i, t) in types.iter().enumerate() {
            if !POLICY_TYPES.contains(&t.as_str()) {
                out.push(not_supported(
                    &format!("spec.policyTypes[{i}]"),
                    quote(t),
                    &POLICY_TYPES,
                ));
            }
        }
    }
}

/// `ValidateNetworkPolicyPort`.
pub(super) fn validate_port(port: &NetworkPolicyPort, path: &str, out: &mut Vec<FieldError>) {
    // Case-sensitive: "tcp" is rejected. A missing protocol defaults to TCP.
    if let Some(protocol) = &port.protocol
        && !PROTOCOLS.contains(&protocol.as_str())
    {
        out.push(not_supported(
            &format!("{path}.protocol"),
            quote(protocol),
            &PROTOCOLS,
        ));
    }
    let end_path = format!("{path}.endPort");
    match &port.port {
        Some(IntOrString::Int(number)) => {
            if let Some(msg) = port_number_error(*number) {
                out.push(invalid(&format!("{path}.port"), number.to_string(), msg));
            }
            if let Some(end) = port.end_port {
                if end < *number {
                    out.push(invalid(
                        &end_path,
                        end.to_string(),
                        "must be greater than or equal to `port`".to_owned(),
                    ));
                }
                if let Some(msg) = port_number_error(end) {
                    out.push(invalid(&end_path, end.to_string(), msg));
                }
            }
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = port.end_port {
                out.push(invalid(
                    &end_path,
                    end.to_string(),
                    "may not be specified when `port` is non-numeric".to_owned(),
                ));
            }
            for msg in is_valid_port_name(name) {
                out.push(invalid(&format!("{path}.port"), quote(name), msg));
            }
        }
        None => {
            if let Some(end) = port.end_port {
                out.push(invalid(
                    &end_path,
                    end.to_string(),
                    "may not be specified when `port` is not specified".to_owned(),
                ));
            }
        }
    }
}

/// `validation.IsValidPortNum`.
pub(super) fn port_number_error(port: i64) -> Option<String> {
    if (1..=65535).contains(&port) {
        None
    } else {
        Some("must be between 1 and 65535, inclusive".to_owned())
    }
}

/// `ValidateNetworkPolicyPeer`: the selectors and ipBlock are validated first, then the peer
/// as a whole. A pod selector together with a namespace selector is an intersection and valid.
pub(super) fn validate_peer(
    peer: &NetworkPolicyPeer,
    path: &str,
    opts: &ValidationOptions,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) {
    let mut peers = 0;
    if let Some(sel) = &peer.pod_selector {
        peers += 1;
        validate_label_selector(sel, &format!("{path}.podSelector"), out);
    }
    if let Some(sel) = &peer.namespace_selector {
        peers += 1;
        validate_label_selector(sel, &format!("{path}.namespaceSelector"), out);
    }
    if let Some(block) = &peer.ip_block {
        peers += 1;
        validate_ip_block(
            block,
            &format!("{path}.ipBlock"),
            opts.strict_cidr,
            out,
            warnings,
        );
    }
    if peers == 0 {
        out.push(required(path, "must specify a peer"));
    } else if peers > 1 && peer.ip_block.is_some() {
        out.push(forbidden(
            path,
            "may not specify both ipBlock and another peer",
        ));
    }
}

/// `ValidateIPBlock`, plus the CIDR warnings of the registry strategy.
pub(super) fn validate_ip_block(
    block: &IpBlock,
    path: &str,
    strict: bool,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) {
    let cidr_path = format!("{path}.cidr");
    if block.cidr.is_empty() {
        out.push(required(&cidr_path, ""));
        return;
    }
    // An unparsable cidr has been reported; excepts cannot be compared with it.
    let Some(cidr) = check_cidr_field(&cidr_path, &block.cidr, strict, out, warnings) else {
        return;
    };
    for (i, except) in block.except.iter().flatten().enumerate() {
        let except_path = format!("{path}.except[{i}]");
        let Some(ex) = check_cidr_field(&except_path, except, strict, out, warnings) else {
            continue;
        };
        // Equal prefixes, other families and disjoint ranges are all "not a strict subset".
        if !cidr.contains(&ex.network16()) || cidr.bits >= ex.bits {
            out.push(invalid(
                &except_path,
                quote(except),
                "must be a strict subset of `cidr`".to_owned(),
            ));
        }
    }
}

/// `IsValidCIDRForLegacyField` for one value, collecting its warnings (`GetWarningsForCIDR`)
/// with the field path in front. Returns the parse when Go's lenient parser accepts it, even if
/// strict validation failed, because upstream goes on to check the excepts.
pub(super) fn check_cidr_field(
    path: &str,
    value: &str,
    strict: bool,
    out: &mut Vec<FieldError>,
    warnings: &mut Vec<String>,
) -> Option<GoCidr> {
    let Some(cidr) = GoCidr::parse(value) else {
        out.push(invalid(path, quote(value), CIDR_INVALID.to_owned()));
        return None;
    };
    if strict && let Some(detail) = cidr.strict_problem() {
        out.push(invalid(path, quote(value), detail.to_owned()));
    }
    warnings.extend(
        cidr.warnings(value)
            .into_iter()
            .map(|w| format!("{path}: {w}")),
    );
    Some(cidr)
}
