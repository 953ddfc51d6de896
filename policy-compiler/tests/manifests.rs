//! Manifest loading: formats, wrappers, ownership, and bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

use std::io::Write;

use policy_compiler::manifest::{LoadError, LoadOptions, load_paths, load_str};

fn load(yaml: &str) -> Result<policy_compiler::manifest::Loaded, LoadError> {
    load_str("in.yaml", yaml, &LoadOptions::default())
}

#[test]
fn multi_document_yaml_lists_and_unknown_kinds_are_counted() {
    let l = load(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {app: a}}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
---
---
apiVersion: v1
kind: PodList
items:
- metadata: {name: b, namespace: x}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
---
apiVersion: extensions/v1beta1
kind: NetworkPolicy
metadata: {name: old}
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(l.cluster.endpoints.contains_key("x/a"));
    assert!(
        l.cluster.endpoints.contains_key("x/b"),
        "PodList items take the list's kind"
    );
    assert_eq!(l.report.unsupported_kinds.get("ConfigMap"), Some(&1));
    assert_eq!(l.report.unsupported_kinds.get("Ingress"), Some(&1));
    assert_eq!(
        l.report
            .unsupported_kinds
            .get("NetworkPolicy (extensions/v1beta1)"),
        Some(&1)
    );
    assert_eq!(l.report.unsupported_total(), 3);
    assert!(
        l.cluster.namespaces.contains_key("x"),
        "namespace implied by its pods"
    );
}

#[test]
fn workloads_become_endpoints_and_pods_join_their_controller() {
    let l = load(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec: {jobTemplate: {spec: {template: {metadata: {labels: {app: batch}}}}}}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: api-5d8f9, namespace: prod}
spec: {template: {metadata: {labels: {app: api}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: api-5d8f9-abcde
  namespace: prod
  labels: {app: api}
  ownerReferences: [{kind: ReplicaSet, name: api-5d8f9, controller: true}]
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: etcd-node1
  namespace: kube-system
  ownerReferences: [{kind: Node, name: node1, controller: true}]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let eps = &l.cluster.endpoints;
    let web = eps
        .get("prod/Deployment/web")
        .unwrap_or_else(|| panic!("web representative"));
    assert_eq!(web.workload_display(), "prod/web[Deployment]");
    assert_eq!(
        web.named_port("http", policy_compiler::Protocol::TCP),
        Some(8080)
    );
    assert!(web.ips.is_empty());
    assert_eq!(
        eps.get("default/CronJob/nightly")
            .map(|e| e.labels.get("app").cloned()),
        Some(Some("batch".into()))
    );
    let api = eps
        .get("prod/api-5d8f9-abcde")
        .unwrap_or_else(|| panic!("api pod"));
    assert_eq!(api.workload_display(), "prod/api-5d8f9[ReplicaSet]");
    assert_eq!(api.ips.len(), 2);
    assert!(
        !eps.contains_key("prod/ReplicaSet/api-5d8f9"),
        "a workload with pods has no representative"
    );
    assert_eq!(
        eps.get("kube-system/etcd-node1")
            .map(|e| e.workload_display()),
        Some("kube-system/etcd-node1[Pod]".into())
    );
}

#[test]
fn json_files_and_directories_are_read_recursively() {
    let dir = std::env::temp_dir().join(format!("palisade-manifests-{}", std::process::id()));
    let sub = dir.join("nested");
    std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
    let mut f = std::fs::File::create(sub.join("pod.json")).unwrap_or_else(|e| panic!("{e}"));
    writeln!(
        f,
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"j","namespace":"n"}}}}"#
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("out.json"), r#"[{"src": "a", "dst": "b"}]"#)
        .unwrap_or_else(|e| panic!("{e}"));
    let l = load_paths(std::slice::from_ref(&dir), &LoadOptions::default());
    std::fs::remove_dir_all(&dir).ok();
    let l = l.unwrap_or_else(|e| panic!("{e}"));
    assert!(l.cluster.endpoints.contains_key("n/j"));
    assert_eq!(
        l.report.files, 2,
        ".txt files in directories are not manifests"
    );
    assert!(
        l.report
            .warnings
            .iter()
            .any(|w| w.contains("not a Kubernetes object")),
        "{:?}",
        l.report.warnings
    );
}

#[test]
fn syntax_errors_carry_file_line_and_column() {
    let err = load("apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n")
        .err()
        .unwrap_or_else(|| panic!("expected an error"));
    let msg = err.to_string();
    assert!(
        matches!(err, LoadError::Syntax { line, .. } if line > 0),
        "{msg}"
    );
    assert!(msg.starts_with("in.yaml:"), "{msg}");
}

#[test]
fn missing_files_are_named() {
    let err = load_paths(
        &["/nonexistent/palisade.yaml".into()],
        &LoadOptions::default(),
    )
    .err()
    .unwrap_or_else(|| panic!("expected an error"));
    assert_eq!(
        err.to_string(),
        "/nonexistent/palisade.yaml: no such file or directory"
    );
}

#[test]
fn invalid_policies_report_the_api_servers_message_with_field_path() {
    let err = load(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - ports: [{protocol: ICMP}]
    from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]
"#,
    )
    .err()
    .unwrap_or_else(|| panic!("expected an error"));
    let msg = err.to_string();
    assert!(
        msg.contains("in.yaml (document 1): NetworkPolicy prod/bad is invalid"),
        "{msg}"
    );
    assert!(msg.contains(r#"spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "TCP", "UDP", "SCTP""#), "{msg}");
    assert!(
        msg.contains(
            "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer"
        ),
        "{msg}"
    );
}

#[test]
fn unknown_fields_are_strict_decoding_errors() {
    let err = load("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo}\nspec:\n  podSelector: {}\n  ingress: [{form: []}]\n")
        .err()
        .unwrap_or_else(|| panic!("expected an error"));
    let msg = err.to_string();
    assert!(
        msg.contains("strict decoding error") && msg.contains("form"),
        "{msg}"
    );
}

#[test]
fn duplicate_objects_are_rejected() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec: {podSelector: {}}\n";
    let err = load(&format!("{np}---\n{np}"))
        .err()
        .unwrap_or_else(|| panic!("expected an error"));
    assert!(err.to_string().contains("duplicate object"), "{err}");
}

#[test]
fn garbage_never_panics() {
    for input in [
        "",
        "---",
        "[]",
        "{}",
        "kind: 5",
        "kind: Pod\nmetadata: 7",
        "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nspec: []",
        "\u{0}\u{1}",
        "a: &x [*x]",
        "kind: Pod\nstatus: {podIP: not-an-ip}\nmetadata: {name: p}",
    ] {
        let _ = load(input);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 2000, failure_persistence: None, ..Default::default() })]

    /// Arbitrary text, and mutations of a valid policy, never panic the loader.
    #[test]
    fn arbitrary_input_never_panics(s in ".{0,200}") {
        let _ = load(&s);
    }

    #[test]
    fn mutated_policies_never_panic(cut in 0usize..400, insert in "[-:{}\\[\\]a-z0-9/ ,.\"\n]{0,12}") {
        let base = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {namespaceSelector: {}}]\n    ports: [{port: 80, endPort: 90}, {port: http, protocol: UDP}]\n  egress: [{to: [{podSelector: {}}]}]\n";
        let cut = cut.min(base.len());
        let mut s = base.as_bytes()[..cut].to_vec();
        s.extend_from_slice(insert.as_bytes());
        s.extend_from_slice(&base.as_bytes()[cut..]);
        let _ = load(&String::from_utf8_lossy(&s));
    }
}
