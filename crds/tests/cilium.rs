//! CiliumNetworkPolicy input: the subset, its namespace semantics and an error naming the field
//! for everything outside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_crds::cilium::{CiliumError, CiliumKind, translate};
use palisade_crds::{Entity, IpBlock, LabelSelector, PolicySpec, PortValue, RuleAction};
use serde_json::Value;

fn load(yaml: &str) -> Value {
    serde_saphyr::from_str(yaml).unwrap()
}

fn one(kind: CiliumKind, yaml: &str) -> PolicySpec {
    let mut specs = translate(kind, &load(yaml)).unwrap();
    assert_eq!(specs.len(), 1);
    specs.remove(0)
}

fn errors(kind: CiliumKind, yaml: &str) -> Vec<CiliumError> {
    translate(kind, &load(yaml)).unwrap_err()
}

fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        match_expressions: None,
    }
}

const GUIDE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: l7-frontend-policy
  namespace: production
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: "GET"
          path: "/api/v1/data"
"#;

#[test]
fn the_guide_manifest_translates_unchanged() {
    let spec = one(CiliumKind::Namespaced, GUIDE);
    assert_eq!(spec.pod_selector, labels(&[("app", "backend")]));
    assert!(spec.isolates_ingress() && !spec.isolates_egress());
    let rules = spec.ingress.unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.action, RuleAction::Allow);
    assert_eq!(r.from.len(), 1);
    assert_eq!(r.from[0].pod_selector, Some(labels(&[("app", "frontend")])));
    assert_eq!(
        r.from[0].namespace_selector, None,
        "confined to the policy's namespace"
    );
    assert_eq!(r.ports.len(), 1);
    assert_eq!(r.ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(r.ports[0].port, Some(PortValue::Number(8080)));
    let http = r.ports[0].http.as_ref().unwrap();
    assert_eq!(
        (http[0].method.as_deref(), http[0].path.as_deref()),
        (Some("GET"), Some("/api/v1/data"))
    );
}

#[test]
fn namespace_keys_select_namespaces_with_or_without_the_k8s_prefix() {
    let spec = one(
        CiliumKind::Namespaced,
        r#"
spec:
  endpointSelector: {}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    - matchLabels: {"io.cilium.k8s.namespace.labels.team": a}
      matchExpressions: [{key: io.kubernetes.pod.namespace, operator: NotIn, values: [x]}]
"#,
    );
    let to = &spec.egress.unwrap()[0].to;
    assert_eq!(to[0].pod_selector, Some(labels(&[("k8s-app", "kube-dns")])));
    assert_eq!(
        to[0].namespace_selector,
        Some(labels(&[("kubernetes.io/metadata.name", "kube-system")]))
    );
    let ns = to[1].namespace_selector.as_ref().unwrap();
    assert_eq!(ns.match_labels, labels(&[("team", "a")]).match_labels);
    let expr = &ns.match_expressions.as_ref().unwrap()[0];
    assert_eq!(
        (expr.key.as_str(), expr.operator.as_str()),
        ("kubernetes.io/metadata.name", "NotIn")
    );
}

#[test]
fn clusterwide_endpoint_selectors_may_name_namespaces() {
    let spec = one(
        CiliumKind::Clusterwide,
        r#"
spec:
  endpointSelector:
    matchExpressions: [{key: "k8s:io.kubernetes.pod.namespace", operator: NotIn, values: [kube-system]}]
  ingress: [{}]
"#,
    );
    assert!(spec.namespace_selector.is_some());
    assert_eq!(
        spec.ingress,
        Some(vec![]),
        "an empty rule only switches on default deny"
    );
    let errs = errors(
        CiliumKind::Namespaced,
        "spec: {endpointSelector: {matchLabels: {io.kubernetes.pod.namespace: other}}, ingress: [{}]}",
    );
    assert_eq!(errs[0].path, "spec.endpointSelector");
}

#[test]
fn cidrs_entities_ports_and_deny_rules() {
    let spec = one(
        CiliumKind::Namespaced,
        r#"
spec:
  endpointSelector: {matchLabels: {app: api}}
  enableDefaultDeny: {egress: false}
  egress:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
    toCIDR: [192.0.2.1/32]
    toPorts: [{ports: [{port: "5000", endPort: 5010}]}]
  - toEntities: [kube-apiserver, world]
  - toEntities: [all, cluster]
    toPorts: [{ports: [{port: dns, protocol: UDP}]}]
  egressDeny:
  - toCIDR: [169.254.169.254/32]
"#,
    );
    assert!(!spec.isolates_egress(), "enableDefaultDeny.egress: false");
    let rules = spec.egress.unwrap();
    assert_eq!(rules.len(), 4);
    assert_eq!(
        rules[0].to[0].ip_block,
        Some(IpBlock {
            cidr: "192.0.2.1/32".into(),
            except: vec![]
        })
    );
    assert_eq!(
        rules[0].to[1].ip_block.as_ref().unwrap().except,
        vec!["10.1.0.0/16".to_string()]
    );
    let protocols: Vec<_> = rules[0]
        .ports
        .iter()
        .map(|p| p.protocol.clone().unwrap())
        .collect();
    assert_eq!(protocols, ["TCP", "UDP", "SCTP"], "no protocol is ANY");
    assert_eq!(rules[0].ports[0].end_port, Some(5010));
    assert_eq!(rules[1].to[0].entity, Some(Entity::KubeApiserver));
    assert_eq!(rules[1].to[1].entity, Some(Entity::World));
    assert!(rules[2].to.is_empty(), "`all` is every peer");
    assert_eq!(rules[2].ports[0].port, Some(PortValue::Name("dns".into())));
    assert_eq!(rules[3].action, RuleAction::Deny);
}

#[test]
fn any_protocol_with_http_rules_is_tcp_only() {
    let spec = one(
        CiliumKind::Namespaced,
        r#"
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET, headers: ["X-Tenant: a", "X-Debug"], headerMatches: [{name: x-env, value: prod}]}]}}]
"#,
    );
    let r = &spec.ingress.unwrap()[0];
    assert!(r.from.is_empty(), "an L4-only rule selects every peer");
    assert_eq!(r.ports.len(), 1);
    assert_eq!(r.ports[0].protocol.as_deref(), Some("TCP"));
    let h = &r.ports[0].http.as_ref().unwrap()[0].headers;
    assert_eq!(
        h.iter()
            .map(|h| (h.name.as_str(), h.value.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("X-Tenant", Some("a")),
            ("X-Debug", None),
            ("x-env", Some("prod"))
        ]
    );
}

#[test]
fn everything_outside_the_subset_is_an_error_naming_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "spec: {endpointSelector: {}, egress: [{toFQDNs: [{matchName: a.com}]}]}",
            "spec.egress[0].toFQDNs",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toServices: [{k8sService: {serviceName: a}}]}]}",
            "spec.egress[0].toServices",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toGroups: [{aws: {}}]}]}",
            "spec.egress[0].toGroups",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{fromRequires: [{}]}]}",
            "spec.ingress[0].fromRequires",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{fromNodes: [{}]}]}",
            "spec.ingress[0].fromNodes",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{icmps: [{fields: [{type: 8}]}]}]}",
            "spec.ingress[0].icmps",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{authentication: {mode: required}}]}",
            "spec.ingress[0].authentication",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '9092'}], rules: {kafka: [{topic: a}]}}]}]}",
            "spec.ingress[0].toPorts[0].rules.kafka",
        ),
        (
            "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchPattern: '*'}]}}]}]}",
            "spec.egress[0].toPorts[0].rules.dns",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '443'}], terminatingTLS: {}}]}]}",
            "spec.ingress[0].toPorts[0].terminatingTLS",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{fromEntities: [remote-node]}]}",
            "spec.ingress[0].fromEntities[0]",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{fromCIDRSet: [{cidrGroupRef: g}]}]}",
            "spec.ingress[0].fromCIDRSet[0].cidrGroupRef",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80', protocol: ICMP}]}]}]}",
            "spec.ingress[0].toPorts[0].ports[0].protocol",
        ),
        (
            "spec: {endpointSelector: {}, ingressDeny: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]}",
            "spec.ingressDeny[0].toPorts[0].rules",
        ),
        (
            "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{headerMatches: [{name: a, mismatch: LOG}]}]}}]}]}",
            "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch",
        ),
        (
            "spec: {nodeSelector: {}, ingress: [{}]}",
            "spec.nodeSelector",
        ),
        (
            "spec: {endpointSelector: {matchLabels: {'reserved:host': ''}}}",
            "spec.endpointSelector.matchLabels.reserved:host",
        ),
        (
            "spec: {endpointSelector: {matchLabels: {io.cilium.k8s.policy.serviceaccount: sa}}}",
            "spec.endpointSelector.matchLabels.io.cilium.k8s.policy.serviceaccount",
        ),
        ("spec: {endpointSelector: {}, ingres: []}", "spec.ingres"),
        ("metadata: {name: x}", "spec"),
        (
            "specs: [{endpointSelector: {}}, {endpointSelector: {}, egress: [{toFQDNs: []}]}]",
            "specs[1].egress[0].toFQDNs",
        ),
    ];
    for (yaml, path) in cases {
        let errs = errors(CiliumKind::Namespaced, yaml);
        assert!(
            errs.iter().any(|e| e.path == *path),
            "{yaml}: expected an error at {path}, got {errs:?}"
        );
        for e in &errs {
            assert!(!e.message.is_empty());
        }
    }
    let e = &errors(CiliumKind::Namespaced, cases[0].0)[0];
    assert_eq!(
        e.to_string(),
        "spec.egress[0].toFQDNs: not supported by Palisade: DNS-name rules are not supported"
    );
}

#[test]
fn specs_lists_translate_each_rule() {
    let specs = translate(
        CiliumKind::Clusterwide,
        &load(
            "specs: [{endpointSelector: {}, ingress: [{}]}, {endpointSelector: {}, egress: [{}]}]",
        ),
    )
    .unwrap();
    assert_eq!(specs.len(), 2);
    assert!(specs[0].isolates_ingress() && specs[1].isolates_egress());
}
