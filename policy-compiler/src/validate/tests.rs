use super::*;
use serde_json::{Value, json};

// Upstream texts, written out independently of the constants above.
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const NAME_PART_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const CHARSET_MSG: &str = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)";
const LETTER_MSG: &str = "must contain at least one letter (a-z)";
const RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn object(metadata: Value, spec: Value) -> NetworkPolicyObject {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": spec,
    }))
    .expect("test manifest decodes")
}

fn policy(spec: Value) -> NetworkPolicyObject {
    object(json!({"name": "np", "namespace": "default"}), spec)
}

fn check_with(np: &NetworkPolicyObject, strict_cidr: bool) -> Validation {
    validate_network_policy(np, &ValidationOptions { strict_cidr })
}

/// Rendered errors with default (strict) options.
fn errors(np: &NetworkPolicyObject) -> Vec<String> {
    rendered(&validate_network_policy(np, &ValidationOptions::default()))
}

fn rendered(v: &Validation) -> Vec<String> {
    v.errors.iter().map(ToString::to_string).collect()
}

fn spec_errors(spec: Value) -> Vec<String> {
    errors(&policy(spec))
}

fn ingress_port(port: Value) -> Value {
    json!({"podSelector": {}, "ingress": [{"ports": [port]}]})
}

fn ingress_peer(peer: Value) -> Value {
    json!({"podSelector": {}, "ingress": [{"from": [peer]}]})
}

fn ip_block(block: Value) -> Value {
    ingress_peer(json!({"ipBlock": block}))
}

fn pod_selector(selector: Value) -> Value {
    json!({"podSelector": selector})
}

fn assert_valid(spec: Value) {
    let v = validate_network_policy(&policy(spec.clone()), &ValidationOptions::default());
    assert_eq!(v, Validation::default(), "expected valid: {spec}");
}

// ---- valid policies ----

#[test]
fn full_valid_policy_has_no_errors_or_warnings() {
    let np = object(
        json!({
            "name": "allow-web.v2",
            "namespace": "prod-1",
            "labels": {"app.kubernetes.io/name": "web", "tier": ""},
            "annotations": {"Example.com/Owner": "team"},
        }),
        json!({
            "podSelector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "example.com/env", "operator": "In", "values": ["prod", "Stage_1"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            },
            "ingress": [{
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "front"}},
                     "podSelector": {"matchLabels": {"role": "client"}}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "10.2.3.4/32"]}},
                    {"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}},
                ],
                "ports": [
                    {"protocol": "TCP", "port": 80},
                    {"protocol": "UDP", "port": 5000, "endPort": 5100},
                    {"protocol": "SCTP", "port": "metrics-9"},
                    {"port": "http"},
                    {"protocol": "TCP"},
                ],
            }],
            "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}],
            "policyTypes": ["Ingress", "Egress"],
        }),
    );
    assert_eq!(
        validate_network_policy(&np, &ValidationOptions::default()),
        Validation::default()
    );
}

#[test]
fn minimal_policies_are_valid() {
    assert_valid(json!({}));
    assert_valid(json!({"podSelector": {}}));
    assert_valid(json!({"podSelector": {}, "ingress": [], "egress": []}));
}

#[test]
fn default_options_are_strict() {
    assert!(ValidationOptions::default().strict_cidr);
}

// ---- metadata ----

#[test]
fn m_name_1_invalid_characters() {
    let np = object(json!({"name": "Foo_Bar"}), json!({}));
    assert_eq!(
        errors(&np),
        vec![format!(
            "metadata.name: Invalid value: \"Foo_Bar\": {SUBDOMAIN_MSG}"
        )]
    );
}

#[test]
fn m_name_2_too_long() {
    let long = "a".repeat(254);
    let np = object(json!({"name": long}), json!({}));
    assert_eq!(
        errors(&np),
        vec![format!(
            "metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
        )]
    );
    // 253 is still fine.
    let np = object(json!({"name": "a".repeat(253)}), json!({}));
    assert!(errors(&np).is_empty());
}

#[test]
fn m_name_missing_and_generate_name() {
    let np = object(json!({}), json!({}));
    assert_eq!(
        errors(&np),
        vec!["metadata.name: Required value: name or generateName is required"]
    );
    let np = object(json!({"generateName": "web-"}), json!({}));
    assert!(errors(&np).is_empty());
    let np = object(json!({"generateName": "Web-"}), json!({}));
    assert_eq!(
        errors(&np),
        vec![format!(
            "metadata.generateName: Invalid value: \"Web-\": {SUBDOMAIN_MSG}"
        )]
    );
}

#[test]
fn m_name_namespace_is_a_dns_label() {
    let np = object(json!({"name": "np", "namespace": "a.b"}), json!({}));
    assert_eq!(
        errors(&np),
        vec!["metadata.namespace: Invalid value: \"a.b\": must not contain dots"]
    );
    let np = object(json!({"name": "np", "namespace": "Prod"}), json!({}));
    assert_eq!(
        errors(&np),
        vec![format!(
            "metadata.namespace: Invalid value: \"Prod\": {LABEL_MSG}"
        )]
    );
}

#[test]
fn metadata_labels_annotations_generation() {
    let np = object(
        json!({
            "name": "np",
            "generation": -1,
            "labels": {"a/b/c": "ok", "good": "-bad-"},
            "annotations": {"Example.com/Owner": "x", "bad key": "y"},
        }),
        json!({}),
    );
    assert_eq!(
        errors(&np),
        vec![
            "metadata.generation: Invalid value: -1: must be greater than or equal to 0".to_owned(),
            "metadata.labels: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".to_owned(),
            format!("metadata.labels: Invalid value: \"-bad-\": {LABEL_VALUE_MSG}"),
            format!("metadata.annotations: Invalid value: \"bad key\": {NAME_PART_MSG}"),
        ]
    );
    let np = object(
        json!({"name": "np", "annotations": {"big": "x".repeat(256 * 1024)}}),
        json!({}),
    );
    assert_eq!(
        errors(&np),
        vec!["metadata.annotations: Too long: may not be more than 262144 bytes"]
    );
}

// ---- ports ----

#[test]
fn m_proto_unsupported() {
    assert_eq!(
        spec_errors(ingress_port(json!({"protocol": "ICMP", "port": 80}))),
        vec![
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        ]
    );
}

#[test]
fn m_proto_case_sensitive() {
    assert_eq!(
        spec_errors(ingress_port(json!({"protocol": "tcp"}))),
        vec![
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"tcp\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        ]
    );
    assert_eq!(
        spec_errors(ingress_port(json!({"protocol": ""}))),
        vec![
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        ]
    );
}

#[test]
fn m_port_0_out_of_range() {
    for port in [0i64, 65536, -1] {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": port}))),
            vec![format!(
                "spec.ingress[0].ports[0].port: Invalid value: {port}: {RANGE_MSG}"
            )]
        );
    }
    assert_valid(ingress_port(json!({"port": 1})));
    assert_valid(ingress_port(json!({"port": 65535})));
}

#[test]
fn m_end_lt() {
    assert_eq!(
        spec_errors(ingress_port(json!({"port": 80, "endPort": 79}))),
        vec![
            "spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`"
        ]
    );
}

#[test]
fn m_end_eq() {
    assert_valid(ingress_port(json!({"port": 80, "endPort": 80})));
}

#[test]
fn m_end_range() {
    assert_eq!(
        spec_errors(ingress_port(json!({"port": 80, "endPort": 70000}))),
        vec![format!(
            "spec.ingress[0].ports[0].endPort: Invalid value: 70000: {RANGE_MSG}"
        )]
    );
    // Both checks fire for an endPort that is below port and out of range.
    assert_eq!(
        spec_errors(ingress_port(json!({"port": 80, "endPort": 0}))),
        vec![
            "spec.ingress[0].ports[0].endPort: Invalid value: 0: must be greater than or equal to `port`".to_owned(),
            format!("spec.ingress[0].ports[0].endPort: Invalid value: 0: {RANGE_MSG}"),
        ]
    );
}

#[test]
fn m_end_named() {
    assert_eq!(
        spec_errors(ingress_port(json!({"port": "http", "endPort": 90}))),
        vec![
            "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is non-numeric"
        ]
    );
}

#[test]
fn m_end_noport() {
    assert_eq!(
        spec_errors(ingress_port(json!({"endPort": 90}))),
        vec![
            "spec.ingress[0].ports[0].endPort: Invalid value: 90: may not be specified when `port` is not specified"
        ]
    );
}

#[test]
fn m_pname_1_special_characters() {
    assert_eq!(
        spec_errors(ingress_port(json!({"port": "!@#$"}))),
        vec![
            format!("spec.ingress[0].ports[0].port: Invalid value: \"!@#$\": {CHARSET_MSG}"),
            format!("spec.ingress[0].ports[0].port: Invalid value: \"!@#$\": {LETTER_MSG}"),
        ]
    );
}

#[test]
fn m_pname_2_shape_rules() {
    let p = "spec.ingress[0].ports[0].port";
    let cases: [(&str, Vec<String>); 5] = [
        (
            "web--svc",
            vec![format!(
                "{p}: Invalid value: \"web--svc\": must not contain consecutive hyphens"
            )],
        ),
        (
            "-web",
            vec![format!(
                "{p}: Invalid value: \"-web\": must not begin or end with a hyphen"
            )],
        ),
        (
            "web-",
            vec![format!(
                "{p}: Invalid value: \"web-\": must not begin or end with a hyphen"
            )],
        ),
        (
            "1234",
            vec![format!("{p}: Invalid value: \"1234\": {LETTER_MSG}")],
        ),
        (
            "abcdefghijklmnop",
            vec![format!(
                "{p}: Invalid value: \"abcdefghijklmnop\": must be no more than 15 characters"
            )],
        ),
    ];
    for (name, expected) in cases {
        assert_eq!(
            spec_errors(ingress_port(json!({"port": name}))),
            expected,
            "{name}"
        );
    }
    // A numeric string is a name, not a number.
    assert_eq!(
        spec_errors(ingress_port(json!({"port": "80"}))),
        vec![format!("{p}: Invalid value: \"80\": {LETTER_MSG}")]
    );
    assert_valid(ingress_port(json!({"port": "abcdefghijklmno"})));
}

#[test]
fn m_pname_3_uppercase() {
    assert_eq!(
        spec_errors(ingress_port(json!({"port": "HTTP"}))),
        vec![
            format!("spec.ingress[0].ports[0].port: Invalid value: \"HTTP\": {CHARSET_MSG}"),
            format!("spec.ingress[0].ports[0].port: Invalid value: \"HTTP\": {LETTER_MSG}"),
        ]
    );
}

// ---- peers ----

#[test]
fn m_peer_empty() {
    assert_eq!(
        spec_errors(ingress_peer(json!({}))),
        vec!["spec.ingress[0].from[0]: Required value: must specify a peer"]
    );
    assert_eq!(
        spec_errors(json!({"egress": [{"to": [{"podSelector": {}}, {}]}]})),
        vec!["spec.egress[0].to[1]: Required value: must specify a peer"]
    );
}

#[test]
fn m_peer_emptylist() {
    assert_valid(json!({"podSelector": {}, "ingress": [{"from": []}]}));
    assert_valid(json!({"podSelector": {}, "ingress": [{}]}));
    assert_valid(json!({"podSelector": {}, "egress": [{"to": []}]}));
}

#[test]
fn m_peer_ipblock_and_selector() {
    assert_eq!(
        spec_errors(ingress_peer(
            json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}})
        )),
        vec!["spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"]
    );
    assert_eq!(
        spec_errors(ingress_peer(
            json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}})
        )),
        vec!["spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"]
    );
}

#[test]
fn m_peer_namespace_and_pod_selector() {
    assert_valid(ingress_peer(
        json!({"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "b"}}}),
    ));
}

// ---- ipBlock ----

#[test]
fn m_ip_empty() {
    assert_eq!(
        spec_errors(ip_block(json!({"cidr": "", "except": ["junk"]}))),
        vec!["spec.ingress[0].from[0].ipBlock.cidr: Required value"]
    );
    assert_eq!(
        spec_errors(ip_block(json!({}))),
        vec!["spec.ingress[0].from[0].ipBlock.cidr: Required value"]
    );
}

#[test]
fn m_ip_bad() {
    for cidr in [
        "10.0.0.0/33",
        "10.0.0/8",
        "foo",
        "10.0.0.0",
        "::/129",
        "10.0.0.0/-1",
        "10.0.0.0/ 8",
        "fe80::1%eth0/64",
    ] {
        assert_eq!(
            spec_errors(ip_block(json!({"cidr": cidr, "except": ["10.1.0.0/16"]}))),
            vec![format!(
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"{cidr}\": {CIDR_MSG}"
            )],
            "{cidr}"
        );
    }
}

#[test]
fn m_ip_strict_1_bits_beyond_prefix() {
    let np = policy(ip_block(json!({"cidr": "10.0.0.5/8"})));
    assert_eq!(
        rendered(&check_with(&np, true)),
        vec![
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.5/8\": must not have bits set beyond the prefix length"
        ]
    );
    assert_eq!(
        check_with(&np, false),
        Validation {
            errors: vec![],
            warnings: vec!["spec.ingress[0].from[0].ipBlock.cidr: CIDR value \"10.0.0.5/8\" is ambiguous in this context (should be \"10.0.0.0/8\" or \"10.0.0.5/32\"?)".to_owned()],
        }
    );
    let np = policy(ip_block(json!({"cidr": "2001:db8::1/64"})));
    assert_eq!(
        check_with(&np, false).warnings,
        vec![
            "spec.ingress[0].from[0].ipBlock.cidr: CIDR value \"2001:db8::1/64\" is ambiguous in this context (should be \"2001:db8::/64\" or \"2001:db8::1/128\"?)"
        ]
    );
}

#[test]
fn m_ip_strict_2_leading_zeros() {
    for cidr in ["010.000.000.000/8", "10.0.0.0/08"] {
        let np = policy(ip_block(json!({"cidr": cidr})));
        assert_eq!(
            rendered(&check_with(&np, true)),
            vec![format!(
                "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"{cidr}\": must not have leading 0s in IP or prefix length"
            )]
        );
        assert_eq!(
            check_with(&np, false),
            Validation {
                errors: vec![],
                warnings: vec![format!(
                    "spec.ingress[0].from[0].ipBlock.cidr: non-standard CIDR value \"{cidr}\" will be considered invalid in a future Kubernetes release: use \"10.0.0.0/8\""
                )],
            }
        );
    }
}

#[test]
fn m_ip_strict_3_ipv4_mapped() {
    let np = policy(ip_block(json!({"cidr": "::ffff:10.0.0.0/104"})));
    assert_eq!(
        rendered(&check_with(&np, true)),
        vec![
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"::ffff:10.0.0.0/104\": must not have an IPv4-mapped IPv6 address"
        ]
    );
    assert_eq!(
        check_with(&np, false),
        Validation {
            errors: vec![],
            warnings: vec!["spec.ingress[0].from[0].ipBlock.cidr: non-standard CIDR value \"::ffff:10.0.0.0/104\" will be considered invalid in a future Kubernetes release: use \"10.0.0.0/8\"".to_owned()],
        }
    );
}

#[test]
fn strict_errors_suppress_warnings_and_excepts_still_checked() {
    let np = policy(ip_block(
        json!({"cidr": "10.0.0.5/8", "except": ["192.168.0.0/16"]}),
    ));
    let v = check_with(&np, true);
    assert_eq!(
        rendered(&v),
        vec![
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.5/8\": must not have bits set beyond the prefix length".to_owned(),
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"192.168.0.0/16\": must be a strict subset of `cidr`".to_owned(),
        ]
    );
    assert!(v.warnings.is_empty());
}

#[test]
fn non_canonical_ipv6_warns_in_both_modes() {
    let np = policy(ip_block(json!({"cidr": "2001:DB8:0::/48"})));
    for strict in [true, false] {
        assert_eq!(
            check_with(&np, strict),
            Validation {
                errors: vec![],
                warnings: vec!["spec.ingress[0].from[0].ipBlock.cidr: IPv6 CIDR value \"2001:DB8:0::/48\" should be in RFC 5952 canonical format (\"2001:db8::/48\")".to_owned()],
            }
        );
    }
}

#[test]
fn m_exc_out() {
    assert_eq!(
        spec_errors(ip_block(
            json!({"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]})
        )),
        vec![
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"192.168.0.0/16\": must be a strict subset of `cidr`"
        ]
    );
}

#[test]
fn m_exc_eq_and_family() {
    assert_eq!(
        spec_errors(ip_block(
            json!({"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8", "fd00::/64"]})
        )),
        vec![
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/8\": must be a strict subset of `cidr`",
            "spec.ingress[0].from[0].ipBlock.except[1]: Invalid value: \"fd00::/64\": must be a strict subset of `cidr`",
        ]
    );
    assert_eq!(
        spec_errors(ip_block(
            json!({"cidr": "fd00::/8", "except": ["10.0.0.0/16"]})
        )),
        vec![
            "spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"10.0.0.0/16\": must be a strict subset of `cidr`"
        ]
    );
}

#[test]
fn m_exc_bad_except_is_reported_and_skipped() {
    assert_eq!(
        spec_errors(ip_block(
            json!({"cidr": "10.0.0.0/8", "except": ["", "10.1.0.0/16", "10.300.0.0/16"]})
        )),
        vec![
            format!("spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: \"\": {CIDR_MSG}"),
            format!(
                "spec.ingress[0].from[0].ipBlock.except[2]: Invalid value: \"10.300.0.0/16\": {CIDR_MSG}"
            ),
        ]
    );
}

#[test]
fn m_exc_ok() {
    assert_valid(ip_block(
        json!({"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}),
    ));
    assert_valid(ip_block(
        json!({"cidr": "::/0", "except": ["fd00::/8", "2001:db8::1/128"]}),
    ));
    assert_valid(ip_block(
        json!({"cidr": "10.0.0.0/8", "except": ["10.0.0.0/9"]}),
    ));
}

#[test]
fn egress_ip_block_paths() {
    assert_eq!(
        spec_errors(
            json!({"egress": [{}, {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]})
        ),
        vec![
            "spec.egress[1].to[0].ipBlock.except[0]: Invalid value: \"11.0.0.0/16\": must be a strict subset of `cidr`"
        ]
    );
}

// ---- selectors ----

#[test]
fn m_sel_key() {
    assert_eq!(
        spec_errors(pod_selector(
            json!({"matchLabels": {"NoUppercaseOrSpecialCharsLike=Equals": "b"}})
        )),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"NoUppercaseOrSpecialCharsLike=Equals\": {NAME_PART_MSG}"
        )]
    );
}

#[test]
fn m_sel_key_2() {
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"a/b/c": "x"}}))),
        vec![
            "spec.podSelector.matchLabels: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    );
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"/a": "x"}}))),
        vec!["spec.podSelector.matchLabels: Invalid value: \"/a\": prefix part must be non-empty"]
    );
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"Example.com/a": "x"}}))),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"Example.com/a\": prefix part {SUBDOMAIN_MSG}"
        )]
    );
    let long = "a".repeat(64);
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {long.clone(): "x"}}))),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"{long}\": name part must be no more than 63 characters"
        )]
    );
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"example.com/": "x"}}))),
        vec![
            "spec.podSelector.matchLabels: Invalid value: \"example.com/\": name part must be non-empty".to_owned(),
            format!("spec.podSelector.matchLabels: Invalid value: \"example.com/\": {NAME_PART_MSG}"),
        ]
    );
}

#[test]
fn m_sel_val() {
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"a": "-bad-"}}))),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"-bad-\": {LABEL_VALUE_MSG}"
        )]
    );
    let long = "v".repeat(64);
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"a": long.clone()}}))),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"{long}\": must be no more than 63 characters"
        )]
    );
}

#[test]
fn m_sel_op() {
    assert_eq!(
        spec_errors(pod_selector(
            json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]})
        )),
        vec![
            "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Equals\": not a valid selector operator"
        ]
    );
}

#[test]
fn m_sel_in_empty() {
    for op in ["In", "NotIn"] {
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchExpressions": [{"key": "a", "operator": op, "values": []}]})
            )),
            vec![
                "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            ]
        );
    }
    assert_eq!(
        spec_errors(pod_selector(
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]})
        )),
        vec![
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        ]
    );
}

#[test]
fn m_sel_exists_val() {
    for op in ["Exists", "DoesNotExist"] {
        assert_eq!(
            spec_errors(pod_selector(
                json!({"matchExpressions": [{"key": "a", "operator": op, "values": ["x"]}]})
            )),
            vec![
                "spec.podSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            ]
        );
    }
}

#[test]
fn m_sel_vals_bad() {
    assert_eq!(
        spec_errors(pod_selector(
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": ["ok", "bad value"]}]})
        )),
        vec![format!(
            "spec.podSelector.matchExpressions[0].values[1]: Invalid value: \"bad value\": {LABEL_VALUE_MSG}"
        )]
    );
}

#[test]
fn selector_key_errors_and_peer_paths() {
    assert_eq!(
        spec_errors(
            json!({"egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "ok", "operator": "Exists"}, {"key": "/x", "operator": "NotIn", "values": []}]}}]}]})
        ),
        vec![
            "spec.egress[0].to[0].namespaceSelector.matchExpressions[1].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
            "spec.egress[0].to[0].namespaceSelector.matchExpressions[1].key: Invalid value: \"/x\": prefix part must be non-empty",
        ]
    );
    assert_eq!(
        spec_errors(ingress_peer(
            json!({"podSelector": {"matchLabels": {"a": "b c"}}})
        )),
        vec![format!(
            "spec.ingress[0].from[0].podSelector.matchLabels: Invalid value: \"b c\": {LABEL_VALUE_MSG}"
        )]
    );
}

#[test]
fn identical_messages_are_reported_once() {
    assert_eq!(
        spec_errors(pod_selector(
            json!({"matchLabels": {"a": "-x-", "b": "-x-"}})
        )),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"-x-\": {LABEL_VALUE_MSG}"
        )]
    );
}

// ---- policyTypes ----

#[test]
fn m_pt_3_too_many_returns_early() {
    assert_eq!(
        spec_errors(json!({"policyTypes": ["Ingress", "Egress", "bogus"]})),
        vec![
            "spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"bogus\"}: may not specify more than two policyTypes"
        ]
    );
    assert_eq!(
        spec_errors(json!({"policyTypes": ["Ingress", "Egress", "Ingress"]})),
        vec![
            "spec.policyTypes: Invalid value: []networking.PolicyType{\"Ingress\", \"Egress\", \"Ingress\"}: may not specify more than two policyTypes"
        ]
    );
}

#[test]
fn m_pt_bad() {
    assert_eq!(
        spec_errors(json!({"policyTypes": ["ingress"]})),
        vec![
            "spec.policyTypes[0]: Unsupported value: \"ingress\": supported values: \"Ingress\", \"Egress\""
        ]
    );
}

#[test]
fn m_pt_dup_and_empty() {
    assert_valid(json!({"policyTypes": ["Ingress", "Ingress"]}));
    assert_valid(json!({"policyTypes": []}));
    assert_valid(json!({"policyTypes": ["Egress"]}));
}

// ---- ordering across the object ----

#[test]
fn errors_follow_apiserver_order() {
    let np = object(
        json!({"name": "Bad"}),
        json!({
            "podSelector": {"matchLabels": {"a": "-"}},
            "ingress": [{"from": [{}], "ports": [{"port": 0}]}],
            "egress": [{"ports": [{"protocol": "ICMP"}]}],
            "policyTypes": ["x"],
        }),
    );
    let fields: Vec<String> = validate_network_policy(&np, &ValidationOptions::default())
        .errors
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        vec![
            "metadata.name",
            "spec.podSelector.matchLabels",
            "spec.ingress[0].ports[0].port",
            "spec.ingress[0].from[0]",
            "spec.egress[0].ports[0].protocol",
            "spec.policyTypes[0]",
        ]
    );
}

// ---- helpers ----

#[test]
fn field_error_display_and_structure() {
    let v = validate_network_policy(
        &policy(ingress_port(json!({"port": 0}))),
        &ValidationOptions::default(),
    );
    assert_eq!(
        v.errors,
        vec![FieldError {
            field: "spec.ingress[0].ports[0].port".to_owned(),
            error_type: ErrorType::Invalid,
            bad_value: Some("0".to_owned()),
            detail: RANGE_MSG.to_owned(),
        }]
    );
    let e = FieldError {
        field: "f".to_owned(),
        error_type: ErrorType::Duplicate,
        bad_value: Some("\"x\"".to_owned()),
        detail: String::new(),
    };
    assert_eq!(e.to_string(), "f: Duplicate value: \"x\"");
    let e = FieldError {
        field: "f".to_owned(),
        error_type: ErrorType::TooLong,
        bad_value: None,
        detail: "may not be more than 3 bytes".to_owned(),
    };
    assert_eq!(e.to_string(), "f: Too long: may not be more than 3 bytes");
}

#[test]
fn go_quoting() {
    assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(quote("\t\n\u{0}\u{7f}"), "\"\\t\\n\\x00\\x7f\"");
    assert_eq!(quote("rā\u{200b}"), "\"rā\\u200b\"");
    assert_eq!(
        spec_errors(pod_selector(json!({"matchLabels": {"a": "x\ny"}}))),
        vec![format!(
            "spec.podSelector.matchLabels: Invalid value: \"x\\ny\": {LABEL_VALUE_MSG}"
        )]
    );
}

#[test]
fn dns_and_port_name_helpers() {
    assert!(is_dns1123_subdomain("a.b-c.d1").is_empty());
    assert_eq!(is_dns1123_subdomain(""), vec![SUBDOMAIN_MSG]);
    assert_eq!(is_dns1123_subdomain("a..b"), vec![SUBDOMAIN_MSG]);
    assert_eq!(
        is_dns1123_subdomain(&format!("-{}", "a".repeat(253))),
        vec![
            "must be no more than 253 characters".to_owned(),
            SUBDOMAIN_MSG.to_owned()
        ]
    );
    assert!(is_dns1123_label("abc-1").is_empty());
    assert_eq!(is_dns1123_label("a.b"), vec!["must not contain dots"]);
    assert_eq!(is_dns1123_label("a_b"), vec![LABEL_MSG]);
    assert_eq!(
        is_dns1123_label(&"a".repeat(64)),
        vec!["must be no more than 63 characters"]
    );
    assert!(is_valid_port_name("http-alt2").is_empty());
    assert_eq!(is_valid_port_name(""), vec![CHARSET_MSG, LETTER_MSG]);
    assert_eq!(
        is_valid_port_name("-Ab--"),
        vec![
            CHARSET_MSG,
            "must not contain consecutive hyphens",
            "must not begin or end with a hyphen",
        ]
    );
}

#[test]
fn generate_name_masking_quirk() {
    // Upstream masks "x-" as "a", so "x-" passes; "-" alone is not masked.
    assert!(name_is_dns_subdomain("x-", true).is_empty());
    assert_eq!(name_is_dns_subdomain("-", true), vec![SUBDOMAIN_MSG]);
    // "a.-" becomes "aa": valid, although "a.-xxxxx" would not be.
    assert!(name_is_dns_subdomain("a.-", true).is_empty());
    assert_eq!(name_is_dns_subdomain("web-", false), vec![SUBDOMAIN_MSG]);
}

#[test]
fn parse_cidr_checked_results() {
    assert_eq!(
        parse_cidr_checked("10.1.2.0/24", true),
        Ok((IpAddr::V4(Ipv4Addr::new(10, 1, 2, 0)), 24, vec![]))
    );
    assert_eq!(
        parse_cidr_checked("10.1.2.3/24", false),
        Ok((
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 0)),
            24,
            vec!["CIDR value \"10.1.2.3/24\" is ambiguous in this context (should be \"10.1.2.0/24\" or \"10.1.2.3/32\"?)".to_owned()]
        ))
    );
    assert_eq!(
        parse_cidr_checked("10.1.2.3/24", true),
        Err("must not have bits set beyond the prefix length".to_owned())
    );
    assert_eq!(
        parse_cidr_checked("10.1.2.3", true),
        Err(CIDR_MSG.to_owned())
    );
    assert_eq!(
        parse_cidr_checked("2001:db8::/32", true),
        Ok((IpAddr::V6("2001:db8::".parse().unwrap()), 32, vec![]))
    );
    // Leading zeros and a mapped address with host bits: both warnings, Go's order.
    assert_eq!(
        parse_cidr_checked("::ffff:010.0.0.1/104", false),
        Ok((
            IpAddr::V6("::ffff:10.0.0.0".parse().unwrap()),
            104,
            vec![
                "CIDR value \"::ffff:010.0.0.1/104\" is ambiguous in this context (should be \"10.0.0.0/8\" or \"10.0.0.1/128\"?)".to_owned(),
                "non-standard CIDR value \"::ffff:010.0.0.1/104\" will be considered invalid in a future Kubernetes release: use \"10.0.0.0/8\"".to_owned(),
            ]
        ))
    );
    assert_eq!(
        parse_cidr_checked("::ffff:010.0.0.1/104", true),
        Err("must not have leading 0s in IP or prefix length".to_owned())
    );
    // Over-long hex fields are leading zeros to netip.
    assert_eq!(
        parse_cidr_checked("2001:0db8:00000::/48", true),
        Err("must not have leading 0s in IP or prefix length".to_owned())
    );
}

#[test]
fn go_cidr_parser_edges() {
    let ok = |s: &str| GoCidr::parse(s).is_some();
    for s in [
        "0.0.0.0/0",
        "::/0",
        "::/128",
        "1::/16",
        "1:2:3:4:5:6:7:8/128",
        "::1.2.3.4/128",
        "1:2:3:4:5:6:1.2.3.4/128",
        "FE80::/10",
        "10.0.0.0/000032",
    ] {
        assert!(ok(s), "{s}");
    }
    for s in [
        "",
        "/8",
        "10.0.0.0/",
        "10.0.0.0/8/8",
        "1:2:3:4:5:6:7:8::/64",
        "1::2::3/64",
        ":1::/64",
        "1:2:3:4:5:6:7:1.2.3.4/128",
        "10000::/16",
        "256.0.0.0/8",
        "1.2.3.4.5/32",
        "::ffff:1.2.3/104",
        "10.0.0.0/+8",
    ] {
        assert!(!ok(s), "{s}");
    }
    // Go's IPNet.String for the "use ..." hints.
    let s = |c: &str| GoCidr::parse(c).unwrap().go_network_string();
    assert_eq!(s("::ffff:10.0.0.0/96"), "0.0.0.0/0");
    assert_eq!(s("::ffff:10.0.0.0/80"), "::/80");
    assert_eq!(s("1:0:0:1:0:0:0:1/128"), "1:0:0:1::1/128");
    assert_eq!(s("1:0:1:0:1:0:1:0/128"), "1:0:1:0:1:0:1:0/128");
    assert_eq!(s("0:0:1:0:0:1:0:0/128"), "::1:0:0:1:0:0/128");
    assert_eq!(s("::1.2.3.4/128"), "::102:304/128");
    // An IPv4-mapped except inside an IPv4 cidr passes the subset test, as in Go.
    let cidr = GoCidr::parse("10.0.0.0/8").unwrap();
    assert!(cidr.contains(&GoCidr::parse("::ffff:10.1.0.0/112").unwrap().network16()));
    assert!(!cidr.contains(&GoCidr::parse("::a01:0/112").unwrap().network16()));
}
