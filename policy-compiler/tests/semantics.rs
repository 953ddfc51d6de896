//! NetworkPolicy v1 semantics, one rule per test. Every evaluation goes through both
//! evaluators (spec and map level), which must agree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use common::*;
use policy_compiler::{Decision, EngineConfig, Protocol};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod, team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web, pod-template-hash: abc}}
spec:
  containers:
  - ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 5353, protocol: UDP}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
spec:
  containers:
  - ports:
    - {name: http, containerPort: 9000}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: prod, labels: {app: db}}
status: {podIP: 10.0.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: dev, labels: {app: web}}
status: {podIP: 10.0.2.4}
"#;

fn with(policies: &str) -> policy_compiler::Engine {
    engine(&format!("{BASE}\n---\n{policies}"))
}

#[test]
fn no_policy_means_not_isolated() {
    let e = with("");
    let v = check(&e, "prod/web", "prod/db", Protocol::TCP, 5432);
    assert_eq!(v.egress, Some(Decision::NotIsolated));
    assert_eq!(v.ingress, Some(Decision::NotIsolated));
    assert!(tcp(&e, "ip:8.8.8.8", "prod/db", 1));
}

#[test]
fn default_deny_ingress_isolates_and_names_the_policy() {
    let e = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: prod}\nspec: {podSelector: {}}",
    );
    let v = check(&e, "prod/web", "prod/db", Protocol::TCP, 5432);
    assert!(!v.allowed());
    assert_eq!(
        v.egress,
        Some(Decision::NotIsolated),
        "egress is not isolated by an ingress-only policy"
    );
    match v.ingress {
        Some(Decision::DefaultDeny { isolated_by }) => {
            assert_eq!(isolated_by.len(), 1);
            assert_eq!(isolated_by[0].to_string(), "prod/deny");
        }
        other => panic!("expected default deny, got {other:?}"),
    }
    // Other namespaces are untouched.
    assert!(tcp(&e, "prod/web", "dev/tool", 80));
}

#[test]
fn policy_types_default_adds_egress_only_when_egress_rules_exist() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: eg, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
"#,
    );
    // Ingress is isolated too (policyTypes defaults to [Ingress, Egress]).
    assert!(!tcp(&e, "prod/api", "prod/web", 8080));
    assert!(tcp(&e, "prod/web", "prod/db", 5432));
    assert!(!tcp(&e, "prod/web", "prod/api", 9000));
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: eg, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  egress: []
"#,
    );
    // egress: [] does not add Egress; only ingress is isolated.
    assert!(tcp(&e, "prod/web", "prod/api", 9000));
    assert!(!tcp(&e, "prod/api", "prod/web", 8080));
}

#[test]
fn explicit_egress_only_policy_ignores_ingress_rules() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: eg, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  ingress: [{}]
"#,
    );
    assert!(
        tcp(&e, "prod/api", "prod/web", 8080),
        "ingress not isolated"
    );
    assert!(
        !tcp(&e, "prod/web", "prod/api", 9000),
        "egress isolated with no rules"
    );
}

#[test]
fn pod_selector_peer_stays_in_policy_namespace() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
"#,
    );
    assert!(tcp(&e, "prod/web", "prod/db", 5432));
    assert!(
        !tcp(&e, "dev/tool", "prod/db", 5432),
        "app=web in another namespace"
    );
    assert!(!tcp(&e, "prod/api", "prod/db", 5432));
}

#[test]
fn namespace_selector_and_combined_peer() {
    let ns_only = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-dev, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]
"#,
    );
    assert!(tcp(&ns_only, "dev/tool", "prod/db", 1));
    assert!(!tcp(&ns_only, "prod/web", "prod/db", 1));
    let both = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: both, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [dev, prod]}]}
      podSelector: {matchLabels: {app: web}}
"#,
    );
    assert!(tcp(&both, "dev/tool", "prod/db", 1));
    assert!(tcp(&both, "prod/web", "prod/db", 1));
    assert!(!tcp(&both, "prod/api", "prod/db", 1));
    // Two separate peers are a union, not an intersection.
    let union = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: union, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
    - podSelector: {matchLabels: {app: api}}
"#,
    );
    assert!(tcp(&union, "dev/tool", "prod/db", 1));
    assert!(tcp(&union, "prod/api", "prod/db", 1));
    assert!(!tcp(&union, "prod/web", "prod/db", 1));
}

#[test]
fn match_expressions_operators() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: exprs, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}
    - namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [dev]}, {key: team, operator: Exists}]}
      podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}
"#,
    );
    assert!(tcp(&e, "dev/tool", "prod/db", 1), "dev has no team label");
    assert!(tcp(&e, "prod/api", "prod/db", 1));
    assert!(!tcp(&e, "prod/web", "prod/db", 1));
}

#[test]
fn implicit_namespace_name_label() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-name, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}}]
"#,
    );
    assert!(tcp(&e, "dev/tool", "prod/db", 1));
    assert!(!tcp(&e, "prod/web", "prod/db", 1));
}

#[test]
fn empty_from_absent_from_and_empty_selectors() {
    // from: [] and absent from both allow every source, including outside addresses.
    for rule in ["- from: []", "- {}"] {
        let e = with(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: all, namespace: prod}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  {rule}\n"
        ));
        assert!(tcp(&e, "dev/tool", "prod/db", 1), "{rule}");
        assert!(tcp(&e, "ip:8.8.8.8", "prod/db", 1), "{rule}");
    }
    // podSelector: {} selects all pods in the namespace but no outside address;
    // namespaceSelector: {} selects all pods in all namespaces, again no outside address.
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sel, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {}}]
"#,
    );
    assert!(tcp(&e, "prod/web", "prod/db", 1));
    assert!(!tcp(&e, "dev/tool", "prod/db", 1));
    assert!(!tcp(&e, "ip:8.8.8.8", "prod/db", 1));
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sel, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {}}]
"#,
    );
    assert!(tcp(&e, "dev/tool", "prod/db", 1));
    assert!(!tcp(&e, "ip:8.8.8.8", "prod/db", 1));
    // ingress: [] (no rules) denies everything.
    let e = with(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: none, namespace: prod}\nspec:\n  podSelector: {}\n  ingress: []\n",
    );
    assert!(!tcp(&e, "prod/web", "prod/db", 1));
}

#[test]
fn ip_block_with_except_for_outside_addresses_and_pod_ips() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]
  - from: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}}]
"#,
    );
    assert!(tcp(&e, "ip:10.0.99.1", "prod/db", 1));
    assert!(!tcp(&e, "ip:10.0.2.9", "prod/db", 1), "inside except");
    assert!(!tcp(&e, "ip:10.1.0.1", "prod/db", 1), "outside cidr");
    assert!(
        tcp(&e, "prod/web", "prod/db", 1),
        "pod IP 10.0.0.1 is inside the block"
    );
    assert!(
        !tcp(&e, "dev/tool", "prod/db", 1),
        "pod IP 10.0.2.4 is in the except"
    );
    assert!(tcp(&e, "ip:2001:db8:2::1", "prod/db", 1));
    assert!(!tcp(&e, "ip:2001:db8:1::1", "prod/db", 1));
    assert!(!tcp(&e, "ip:2001:db9::1", "prod/db", 1));
    // With ipBlocks restricted to outside addresses, pods no longer match.
    let cfg = EngineConfig {
        ipblocks_select_pods: false,
        ..EngineConfig::default()
    };
    let e2 = engine_with(
        &format!(
            "{BASE}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: cidr, namespace: prod}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/16}}}}]\n"
        ),
        cfg,
    );
    assert!(!tcp(&e2, "prod/web", "prod/db", 1));
    assert!(tcp(&e2, "ip:10.0.0.9", "prod/db", 1));
}

#[test]
fn zero_prefix_ip_block_is_the_world_of_its_family() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-world, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
"#,
    );
    assert!(tcp(&e, "prod/web", "ip:8.8.8.8", 443));
    assert!(!tcp(&e, "prod/web", "ip:10.9.9.9", 443));
    assert!(
        !tcp(&e, "prod/web", "ip:2001:db8::1", 443),
        "an IPv4 block does not admit IPv6"
    );
    assert!(
        !tcp(&e, "prod/web", "prod/db", 443),
        "pod IP inside the except"
    );
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-in, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-out, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}, {port: dns, protocol: UDP}]
"#,
    );
    // Ingress: each destination pod resolves "http" to its own port.
    assert!(tcp(&e, "ip:1.2.3.4", "prod/web", 8080));
    assert!(!tcp(&e, "ip:1.2.3.4", "prod/web", 9000));
    assert!(tcp(&e, "ip:1.2.3.4", "prod/api", 9000));
    assert!(
        !tcp(&e, "ip:1.2.3.4", "prod/db", 8080),
        "db has no port named http"
    );
    // Egress to any peer: resolved per destination.
    assert!(tcp(&e, "dev/tool", "prod/web", 8080));
    let v = check(&e, "dev/tool", "prod/web", Protocol::UDP, 5353);
    assert!(
        v.egress.as_ref().is_some_and(|d| d.allowed()),
        "egress allows dns/UDP"
    );
    assert!(!v.allowed(), "web's ingress only admits http");
    assert!(
        !tcp(&e, "dev/tool", "prod/web", 5353),
        "protocol must match too"
    );
    assert!(
        !tcp(&e, "dev/tool", "ip:1.2.3.4", 8080),
        "an address has no named ports"
    );
}

#[test]
fn port_ranges_protocols_and_protocol_only_entries() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports:
    - {port: 8000, endPort: 8100}
    - {protocol: UDP}
    - {protocol: SCTP, port: 7}
"#,
    );
    for p in [8000, 8001, 8063, 8064, 8099, 8100] {
        assert!(tcp(&e, "prod/web", "prod/db", p), "tcp {p}");
    }
    for p in [7999, 8101, 80] {
        assert!(!tcp(&e, "prod/web", "prod/db", p), "tcp {p}");
    }
    assert!(allowed(&e, "prod/web", "prod/db", Protocol::UDP, 1));
    assert!(allowed(&e, "prod/web", "prod/db", Protocol::UDP, 65535));
    assert!(allowed(&e, "prod/web", "prod/db", Protocol::SCTP, 7));
    assert!(!allowed(&e, "prod/web", "prod/db", Protocol::SCTP, 8));
    assert!(
        !allowed(&e, "prod/web", "prod/db", Protocol::ICMP, 0),
        "port rules never match ICMP"
    );
    // The range is a handful of LPM prefixes, not one entry per port.
    let id = e
        .endpoint_identity("prod/db")
        .unwrap_or_else(|| panic!("db identity"));
    let n = e
        .policy_for_identity(id)
        .map(|p| p.entries.len())
        .unwrap_or(0);
    assert!(n < 20, "expected prefix decomposition, got {n} entries");
}

#[test]
fn rules_are_a_union_and_attribution_is_the_lowest_rule_id() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-first, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-second, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: 5432}]
"#,
    );
    let v = check(&e, "prod/web", "prod/db", Protocol::TCP, 5432);
    assert_eq!(
        rule_of(&e, v.ingress.as_ref().unwrap_or(&Decision::NotReady)).as_deref(),
        Some("prod/a-first ingress[1]")
    );
    let v = check(&e, "dev/tool", "prod/db", Protocol::TCP, 5432);
    assert_eq!(
        rule_of(&e, v.ingress.as_ref().unwrap_or(&Decision::NotReady)).as_deref(),
        Some("prod/b-second ingress[0]")
    );
    assert!(!tcp(&e, "dev/tool", "prod/db", 5433));
}

#[test]
fn egress_and_ingress_must_both_allow() {
    let e = with(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-in, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-out, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]
"#,
    );
    let v = check(&e, "prod/web", "prod/db", Protocol::TCP, 1);
    assert!(v.ingress.as_ref().is_some_and(|d| d.allowed()));
    assert!(!v.egress.as_ref().is_some_and(|d| d.allowed()));
    assert!(!v.allowed());
    assert!(tcp(&e, "prod/api", "prod/db", 1));
}

#[test]
fn filtered_labels_do_not_split_identities() {
    let e = with("");
    // pod-template-hash is dropped: web's identity carries only app=web.
    let id = e
        .endpoint_identity("prod/web")
        .unwrap_or_else(|| panic!("identity"));
    let key = e.identities().key(id).unwrap_or_else(|| panic!("key"));
    assert!(!key.labels.contains_key("pod-template-hash"));
    assert!(id >= policy_compiler::abi::IDENTITY_CLUSTER_MIN);
}

#[test]
fn a_pod_cannot_claim_another_namespace_through_labels() {
    let yaml = format!(
        "{BASE}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: spoof, namespace: dev, labels: {{app: web, kubernetes.io/metadata.name: prod}}}}\nstatus: {{podIP: 10.0.2.9}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: prod}}}}}}]\n"
    );
    let e = engine(&yaml);
    assert!(tcp(&e, "prod/web", "prod/db", 1));
    assert!(!tcp(&e, "dev/spoof", "prod/db", 1));
}

/// Issue 10 item 12: traffic from the pod's own node is always allowed (NetworkPolicy
/// API). The node's addresses map to identity host; an isolated ingress direction allows
/// host on every port (rule `RULE_ID_HOST`), whatever the policies say; egress to the
/// node is still policed, and an ipBlock containing a node address selects host. Both
/// evaluators agree (`check`). Without node addresses, nothing changes.
#[test]
fn traffic_from_the_node_is_always_allowed_into_isolated_pods() {
    let policies = format!(
        "{BASE}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: prod}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 192.168.50.0/24, except: [192.168.50.7/32]}}}}]\n"
    );
    let cfg = EngineConfig {
        host_addresses: vec![
            "192.168.50.2".parse().unwrap(),
            "fd00:50::2".parse().unwrap(),
        ],
        ..EngineConfig::default()
    };
    let e = engine_with(&policies, cfg);
    assert_eq!(
        e.ipcache().get(&"192.168.50.2/32".parse().unwrap()),
        Some(&policy_compiler::abi::IDENTITY_HOST)
    );
    for port in [1, 80, 10250] {
        let v = check(&e, "ip:192.168.50.2", "prod/db", Protocol::TCP, port);
        assert_eq!(
            v.ingress,
            Some(Decision::Allowed {
                rule: policy_compiler::abi::RULE_ID_HOST
            })
        );
    }
    assert!(allowed(
        &e,
        "ip:192.168.50.2",
        "prod/web",
        Protocol::UDP,
        53
    ));
    assert!(allowed(&e, "ip:fd00:50::2", "prod/db", Protocol::TCP, 8080));
    // Not the node: another address of its subnet, a pod.
    assert!(!tcp(&e, "ip:192.168.50.3", "prod/db", 80));
    assert!(!tcp(&e, "ip:192.168.50.7", "prod/db", 80));
    assert!(!tcp(&e, "prod/web", "prod/db", 80));
    // Egress to the node: the ipBlock containing it allows, its except would not.
    assert!(tcp(&e, "prod/web", "ip:192.168.50.2", 443));
    assert!(tcp(&e, "prod/web", "ip:192.168.50.3", 443));
    assert!(!tcp(&e, "prod/web", "ip:192.168.50.7", 443));
    // One identity for all of the node's addresses: a block containing one selects the
    // node, its other family included (docs/datapath.md, known limits).
    assert!(tcp(&e, "prod/web", "ip:fd00:50::2", 443));
    assert!(!tcp(&e, "prod/web", "ip:fd00:50::3", 443), "not the node");

    // The node address inside an except: host is not selected for egress.
    let e2 = engine_with(
        &format!(
            "{BASE}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: prod}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 192.168.50.0/24, except: [192.168.50.2/32]}}}}]\n"
        ),
        EngineConfig {
            host_addresses: vec!["192.168.50.2".parse().unwrap()],
            ..EngineConfig::default()
        },
    );
    assert!(!tcp(&e2, "prod/web", "ip:192.168.50.2", 443));
    assert!(tcp(&e2, "prod/web", "ip:192.168.50.3", 443));
    assert!(tcp(&e2, "ip:192.168.50.2", "prod/web", 443));

    // No node addresses configured: the node is the world, and isolated ingress denies it.
    let e3 = engine(&policies);
    assert!(!tcp(&e3, "ip:192.168.50.2", "prod/db", 80));
}
