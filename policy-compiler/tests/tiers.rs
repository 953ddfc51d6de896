//! The cluster-admin tiers: AdminNetworkPolicy, BaselineAdminNetworkPolicy (v1alpha1) and
//! ClusterNetworkPolicy (v1alpha2) in the tier order of docs/policy-kinds.md, with both
//! evaluators agreeing on every flow (`common::check`), and their validation errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::{Decision, Engine, Protocol};

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: vault, labels: {sensitivity: high}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {team: platform}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: secrets, namespace: vault, labels: {app: secrets}}
spec: {containers: [{ports: [{name: api, containerPort: 8200}]}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: ops, labels: {app: admin}}
status: {podIP: 10.0.2.1}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {role: infra}}
status: {addresses: [{type: InternalIP, address: 192.168.5.1}, {type: Hostname, address: node-a}]}
"#;

/// The vault's own NetworkPolicy admits everyone on 8200.
const VAULT_OPEN: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: open, namespace: vault}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 8200}]}]
"#;

fn with(extra: &str) -> Engine {
    engine(&format!("{PODS}{extra}"))
}

fn denied_by(e: &Engine, from: &str, to: &str, port: u16) -> String {
    let v = check(e, from, to, Protocol::TCP, port);
    let d = v.ingress.clone().into_iter().chain(v.egress.clone());
    for d in d {
        if let Decision::Denied { rule, audit: false } = d {
            return e.rules().resolve(rule).unwrap().to_string();
        }
    }
    panic!("{from} -> {to}:{port} not denied by a rule: {v:?}")
}

#[test]
fn an_admin_deny_beats_a_networkpolicy_allow() {
    let e = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: guard}}
spec:
  priority: 10
  subject: {{namespaces: {{matchLabels: {{sensitivity: high}}}}}}
  ingress:
  - {{name: no-shop, action: Deny, from: [{{namespaces: {{matchLabels: {{team: shop}}}}}}]}}
"
    ));
    assert_eq!(
        denied_by(&e, "app/web", "vault/secrets", 8200),
        "AdminNetworkPolicy guard ingress[0]"
    );
    // Another namespace: the NetworkPolicy decides.
    assert!(tcp(&e, "ops/admin", "vault/secrets", 8200));
    assert!(!tcp(&e, "ops/admin", "vault/secrets", 8201));
}

#[test]
fn pass_hands_over_to_networkpolicy_and_skips_the_rest_of_the_admin_tier() {
    let e = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: delegate}}
spec:
  priority: 5
  subject: {{namespaces: {{}}}}
  ingress: [{{action: Pass, from: [{{namespaces: {{matchLabels: {{team: platform}}}}}}]}}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: lockdown}}
spec:
  priority: 50
  subject: {{namespaces: {{}}}}
  ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]
"
    ));
    // ops passes priority 5, so lockdown at 50 is skipped; the vault's NetworkPolicy allows.
    assert!(tcp(&e, "ops/admin", "vault/secrets", 8200));
    // ... and default-denies what it does not open.
    let v = check(&e, "ops/admin", "vault/secrets", Protocol::TCP, 9000);
    assert!(
        matches!(v.ingress, Some(Decision::DefaultDeny { .. })),
        "{v:?}"
    );
    // A pass into a pod no NetworkPolicy isolates: the default allows.
    assert!(tcp(&e, "ops/admin", "app/web", 8080));
    // app is not passed: lockdown denies.
    assert_eq!(
        denied_by(&e, "app/web", "vault/secrets", 8200),
        "AdminNetworkPolicy lockdown ingress[0]"
    );
}

#[test]
fn an_admin_allow_beats_a_networkpolicy_default_deny() {
    let e = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: monitoring}}
spec:
  priority: 1
  subject: {{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: secrets}}}}}}}}
  ingress:
  - action: Allow
    from: [{{pods: {{namespaceSelector: {{matchLabels: {{team: platform}}}}, podSelector: {{matchLabels: {{app: admin}}}}}}}}]
    ports: [{{portRange: {{protocol: TCP, start: 9000, end: 9100}}}}]
"
    ));
    let v = check(&e, "ops/admin", "vault/secrets", Protocol::TCP, 9090);
    let Some(Decision::Allowed { rule }) = v.ingress else {
        panic!("{v:?}")
    };
    assert_eq!(
        e.rules().resolve(rule).unwrap().to_string(),
        "AdminNetworkPolicy monitoring ingress[0]"
    );
    assert!(!tcp(&e, "ops/admin", "vault/secrets", 9101));
    assert!(!tcp(&e, "app/web", "vault/secrets", 9090));
}

#[test]
fn the_baseline_decides_only_where_no_networkpolicy_isolates() {
    let e = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {{name: default}}
spec:
  subject: {{namespaces: {{}}}}
  ingress:
  - {{action: Allow, from: [{{namespaces: {{matchLabels: {{team: platform}}}}}}], ports: [{{namedPort: http}}]}}
  - {{action: Deny, from: [{{namespaces: {{}}}}]}}
"
    ));
    // app/web: no NetworkPolicy; the baseline denies all but ops on its named port.
    assert_eq!(
        denied_by(&e, "vault/secrets", "app/web", 8080),
        "BaselineAdminNetworkPolicy default ingress[1]"
    );
    assert!(tcp(&e, "ops/admin", "app/web", 8080));
    // Not from a pod: the baseline's peers are pods; the default allows.
    assert!(tcp(&e, "ip:203.0.113.9", "app/web", 8080));
    // vault/secrets: its NetworkPolicy isolates it, so the baseline is never reached.
    assert!(tcp(&e, "app/web", "vault/secrets", 8200));
}

#[test]
fn equal_priorities_are_ordered_by_name_with_a_warning() {
    let anp = |name: &str, action: &str| {
        format!(
            "---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: {name}}}
spec:
  priority: 7
  subject: {{namespaces: {{}}}}
  egress: [{{action: {action}, to: [{{namespaces: {{}}}}]}}]
"
        )
    };
    for (first, second, allowed) in [("a", "b", true), ("b", "a", false)] {
        let doc = format!("{PODS}{}{}", anp(first, "Allow"), anp(second, "Deny"));
        let loaded = load_str("t.yaml", &doc, &LoadOptions::default()).unwrap();
        assert!(
            loaded.report.warnings.iter().any(|w| w.contains(
                "share priority 7 in the admin tier: upstream leaves their order undefined; Palisade evaluates them by name, then kind: AdminNetworkPolicy a before AdminNetworkPolicy b"
            )),
            "{:?}",
            loaded.report.warnings
        );
        let e = engine(&doc);
        assert_eq!(
            tcp(&e, "app/web", "ops/admin", 80),
            allowed,
            "{first} first"
        );
    }
}

#[test]
fn v1alpha2_clusternetworkpolicy_is_the_same_model_in_either_tier() {
    let v1 = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: p}}
spec:
  priority: 3
  subject: {{namespaces: {{}}}}
  egress:
  - {{name: r, action: Deny, to: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: secrets}}}}}}}}], ports: [{{portNumber: {{protocol: TCP, port: 8200}}}}]}}
"
    ));
    let v2 = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: p}}
spec:
  tier: Admin
  priority: 3
  subject: {{namespaces: {{}}}}
  egress:
  - {{name: r, action: Deny, to: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: secrets}}}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 8200}}}}}}]}}
"
    ));
    for (from, port) in [("app/web", 8200), ("ops/admin", 8200), ("app/web", 8201)] {
        assert_eq!(
            tcp(&v1, from, "vault/secrets", port),
            tcp(&v2, from, "vault/secrets", port),
            "{from}:{port}"
        );
    }
    assert!(!tcp(&v2, "app/web", "vault/secrets", 8200));
    // Tier Baseline: the vault's NetworkPolicy isolates it, so the baseline deny never applies.
    let base = with(&format!(
        "{VAULT_OPEN}---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {{name: p}}
spec:
  tier: Baseline
  priority: 3
  subject: {{namespaces: {{}}}}
  ingress: [{{action: Deny, from: [{{namespaces: {{}}}}]}}]
"
    ));
    assert!(tcp(&base, "app/web", "vault/secrets", 8200));
    assert!(!tcp(&base, "vault/secrets", "app/web", 8080));
}

#[test]
fn networks_match_addresses_and_pods_and_nodes_match_node_addresses() {
    let e = with(
        "---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: egress}
spec:
  priority: 1
  subject: {namespaces: {matchLabels: {team: shop}}}
  egress:
  - {name: no-infra-nodes, action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}
  - {name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
  - {name: no-vault-net, action: Deny, to: [{networks: [10.0.1.0/24]}]}
",
    );
    assert_eq!(
        denied_by(&e, "app/web", "ip:192.168.5.1", 443),
        "AdminNetworkPolicy egress egress[0]"
    );
    assert_eq!(
        denied_by(&e, "app/web", "ip:169.254.169.254", 80),
        "AdminNetworkPolicy egress egress[1]"
    );
    // A network containing a pod's address matches the pod.
    assert_eq!(
        denied_by(&e, "app/web", "vault/secrets", 8200),
        "AdminNetworkPolicy egress egress[2]"
    );
    assert!(tcp(&e, "app/web", "ip:192.168.5.2", 443));
    assert!(tcp(&e, "app/web", "ops/admin", 443));
    // A nodes peer that matches no Node address matches nothing, with a warning.
    let doc = format!(
        "{PODS}---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {{name: egress}}
spec:
  priority: 1
  subject: {{namespaces: {{}}}}
  egress: [{{action: Deny, to: [{{nodes: {{matchLabels: {{role: worker}}}}}}]}}]
"
    );
    let loaded = load_str("t.yaml", &doc, &LoadOptions::default()).unwrap();
    assert!(
        loaded.report.warnings.iter().any(|w| w.contains(
            "AdminNetworkPolicy egress egress[0]: the `nodes` peer matches no address (1 Node object(s) given"
        )),
        "{:?}",
        loaded.report.warnings
    );
}

fn load_errors(doc: &str) -> String {
    match load_str("t.yaml", doc, &LoadOptions::default()) {
        Ok(_) => panic!("loaded: {doc}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_cluster_admin_policies_are_refused_with_the_field() {
    let anp = |spec: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: a}}\nspec: {spec}\n"
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            anp("{priority: 1001, subject: {namespaces: {}}}"),
            "spec.priority: Invalid value: 1001: should be between 0 and 1000",
        ),
        (
            anp("{subject: {namespaces: {}}}"),
            "spec.priority: Required value",
        ),
        (
            anp("{priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}"),
            "spec.subject: Forbidden: exactly one of `namespaces` or `pods` must be set",
        ),
        (
            anp("{priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow}]}"),
            "spec.ingress[0].from: Required value",
        ),
        (
            anp(
                "{priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{networks: [10.0.0.0/8]}]}]}",
            ),
            "spec.ingress[0].from[0]: Forbidden: ingress peers are `namespaces` or `pods`",
        ),
        (
            anp(
                "{priority: 1, subject: {namespaces: {}}, egress: [{action: Drop, to: [{namespaces: {}}]}]}",
            ),
            "spec.egress[0].action: Unsupported value: \"Drop\": supported values: \"Allow\", \"Deny\", \"Pass\"",
        ),
        (
            anp(
                "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/33]}]}]}",
            ),
            "spec.egress[0].to[0].networks[0]: Invalid value: \"10.0.0.0/33\"",
        ),
        (
            anp(
                "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 80}}]}]}",
            ),
            "spec.egress[0].ports[0].portRange: Invalid value: \"90-80\": start port must be less than end port",
        ),
        (
            anp(
                "{priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [{namedPort: http}]}]}",
            ),
            "networks/nodes peers cannot be set with named ports",
        ),
        (
            anp("{priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, frm: []}]}"),
            "strict decoding error: spec.ingress[0].frm: unknown field `frm`",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: strict}\nspec: {subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}\n".to_string(),
            "metadata.name: Invalid value: \"strict\": only one baseline admin network policy",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}\n".to_string(),
            "spec.ingress[0].action: Unsupported value: \"Pass\": supported values: \"Allow\", \"Deny\"",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Middle, priority: 1, subject: {namespaces: {}}}\n".to_string(),
            "spec.tier: Unsupported value: \"Middle\": supported values: \"Admin\", \"Baseline\"",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Allow, to: [{domainNames: [example.com]}]}]}\n".to_string(),
            "spec.egress[0].to[0].domainNames: Forbidden",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Allow, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 0}}}]}]}\n".to_string(),
            "spec.ingress[0].protocols[0].tcp.destinationPort.number: Invalid value: 0",
        ),
    ];
    for (doc, want) in cases {
        let e = load_errors(&doc);
        assert!(e.contains(want), "want {want:?} in:\n{e}");
    }
    // More than 100 rules in a direction.
    let rules = vec!["{action: Deny, from: [{namespaces: {}}]}"; 101].join(", ");
    let e = load_errors(&anp(&format!(
        "{{priority: 1, subject: {{namespaces: {{}}}}, ingress: [{rules}]}}"
    )));
    assert!(
        e.contains("spec.ingress: Too many: 101: must have at most 100 items"),
        "{e}"
    );
}
