//! The CRD manifests: committed ones equal what the Rust types generate (drift check), and the
//! real API server (../shared/realclients) accepts them, accepts valid policies of both kinds
//! and rejects invalid ones with its schema, and `kubectl get pnp` shows the printer columns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use palisade_testkit::realclients::ApiServer;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    for (name, yaml) in palisade_crds::crd_manifests().unwrap() {
        let path = repo().join("deploy/crds").join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo run -p palisade-crds --features kube --bin crdgen`)",
                path.display()
            )
        });
        assert!(
            committed == yaml,
            "{} differs from the Rust types: run `cargo run -p palisade-crds --features kube --bin crdgen` and commit the result",
            path.display()
        );
    }
}

/// Every (path, node) of a JSON tree.
fn walk<'a>(
    path: String,
    v: &'a serde_json::Value,
    out: &mut Vec<(String, &'a serde_json::Value)>,
) {
    match v {
        serde_json::Value::Object(map) => {
            out.push((path.clone(), v));
            for (k, child) in map {
                walk(format!("{path}.{k}"), child, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(format!("{path}[{i}]"), child, out);
            }
        }
        _ => {}
    }
}

/// Offline, what the API server insists on (a structural schema) and what the field reference
/// promises: no anyOf/oneOf/allOf/$ref anywhere, `port` int-or-string, string enums, the status
/// subresource, short names and the category.
#[test]
fn generated_schemas_are_structural_with_string_enums() {
    use kube::CustomResourceExt;
    let crds = [
        (
            palisade_crds::PalisadeNetworkPolicy::crd(),
            "pnp",
            "Namespaced",
        ),
        (
            palisade_crds::PalisadeClusterNetworkPolicy::crd(),
            "pcnp",
            "Cluster",
        ),
    ];
    for (crd, short, scope) in crds {
        let crd = serde_json::to_value(&crd).unwrap();
        assert_eq!(crd["spec"]["scope"], scope);
        assert_eq!(
            crd["spec"]["names"]["shortNames"],
            serde_json::json!([short])
        );
        assert_eq!(
            crd["spec"]["names"]["categories"],
            serde_json::json!(["palisade"])
        );
        let version = &crd["spec"]["versions"][0];
        assert!(
            version["subresources"]["status"].is_object(),
            "{short}: status subresource"
        );
        let schema = &version["schema"]["openAPIV3Schema"];
        let mut nodes = Vec::new();
        walk(String::new(), schema, &mut nodes);
        for (path, node) in &nodes {
            for bad in ["anyOf", "oneOf", "allOf", "$ref", "const"] {
                assert!(node.get(bad).is_none(), "{short}: `{bad}` at {path}");
            }
        }
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(
            spec["mode"]["enum"],
            serde_json::json!(["Enforce", "Audit"])
        );
        for dir in ["ingress", "egress"] {
            let rule = &spec[dir]["items"]["properties"];
            assert_eq!(rule["action"]["enum"], serde_json::json!(["Allow", "Deny"]));
            let port = &rule["ports"]["items"]["properties"];
            assert_eq!(
                port["port"]["x-kubernetes-int-or-string"], true,
                "{short} {dir}"
            );
            assert!(
                port["port"].get("type").is_none(),
                "int-or-string has no type"
            );
            assert_eq!(
                port["protocol"]["enum"],
                serde_json::json!(["TCP", "UDP", "SCTP"])
            );
            assert_eq!(port["endPort"]["maximum"].as_f64(), Some(65535.0));
            let peer = if dir == "ingress" { "from" } else { "to" };
            let peer = &rule[peer]["items"]["properties"];
            assert_eq!(
                peer["entity"]["enum"],
                serde_json::json!(["world", "host", "cluster", "kube-apiserver"])
            );
            assert_eq!(
                peer["podSelector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"]
                    ["enum"],
                serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"])
            );
            let http = &port["http"]["items"]["properties"];
            for field in ["method", "path", "host", "headers"] {
                assert_eq!(
                    http[field]["type"],
                    if field == "headers" {
                        "array"
                    } else {
                        "string"
                    }
                );
            }
        }
    }
}

/// Starts etcd + kube-apiserver, or says what is missing (an error under CI). The CRD tests
/// also need kubectl (`kubectl get` printer columns).
fn apiserver() -> Option<ApiServer> {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        palisade_testkit::skip_or_fail(
            "CRD API-server test",
            &"kubectl not found (Debian package kubernetes-client)",
        );
        return None;
    }
    ApiServer::start_or_skip("crds")
}

fn kubectl(s: &ApiServer, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig").arg(&s.kubeconfig).args(args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// POSTs a YAML object to the API server with `fieldValidation=Strict` (curl, so it does not
/// depend on the kubectl version): `Ok` or the server's refusal message.
fn create(s: &ApiServer, yaml: &str) -> Result<(), String> {
    let obj: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let path = match (kind, obj["metadata"]["namespace"].as_str()) {
        ("PalisadeNetworkPolicy", Some(ns)) => format!("namespaces/{ns}/palisadenetworkpolicies"),
        ("PalisadeClusterNetworkPolicy", None) => "palisadeclusternetworkpolicies".to_string(),
        other => panic!("unexpected object {other:?}"),
    };
    let reply = request(
        s,
        "POST",
        &format!("{path}?fieldValidation=Strict"),
        "application/json",
        &obj,
    )?;
    assert_eq!(reply["kind"], kind, "unexpected reply {reply}");
    Ok(())
}

/// One request to `/apis/policy.palisade.dev/v1alpha1/{path}` (curl): the reply object, or
/// the server's refusal message.
fn request(
    s: &ApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let url = format!("{}/apis/policy.palisade.dev/v1alpha1/{path}", s.url);
    let mut child = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&s.ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", s.token))
        .args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "-X",
            method,
            "--data-binary",
            "@-",
            &url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if reply["kind"] == "Status" && reply["status"] == "Failure" {
        return Err(reply["message"].as_str().unwrap_or_default().to_string());
    }
    Ok(reply)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "kubectl failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const VALID_PNP: &str = r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: everything, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  mode: Audit
  defaultDeny: {egress: false}
  ingress:
  - name: reads
    from:
    - podSelector: {matchLabels: {app: frontend}}
      namespaceSelector: {matchExpressions: [{key: env, operator: In, values: [prod]}]}
    - entity: kube-apiserver
    ports:
    - port: 8080
      http: [{method: GET, path: "/api/.*", host: "api\\.example\\.com", headers: [{name: x-tenant}, {name: x-env, value: prod}, {name: authorization, regex: "Bearer .+"}]}]
    - {port: http, protocol: TCP}
  - action: Deny
    log: no-deletes
    ports: [{port: 8080, http: [{method: DELETE}]}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{protocol: UDP, port: 53, endPort: 54}]
"#;

const VALID_PCNP: &str = r#"
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeClusterNetworkPolicy
metadata: {name: no-metadata-service}
spec:
  namespaceSelector: {}
  egress:
  - action: Deny
    to: [{ipBlock: {cidr: 169.254.169.254/32}}]
"#;

#[test]
fn the_real_api_server_accepts_the_crds_and_validates_policies_with_them() {
    let Some(s) = apiserver() else { return };
    let crds = repo().join("deploy/crds");
    let crds = crds.to_str().unwrap();
    ok(&kubectl(
        &s,
        &["apply", "--dry-run=client", "-f", crds],
        None,
    ));
    ok(&kubectl(&s, &["apply", "--server-side", "-f", crds], None));
    ok(&kubectl(
        &s,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/palisadenetworkpolicies.policy.palisade.dev",
            "crd/palisadeclusternetworkpolicies.policy.palisade.dev",
        ],
        None,
    ));
    ok(&kubectl(&s, &["create", "namespace", "production"], None));
    create(&s, VALID_PNP).unwrap();
    create(&s, VALID_PCNP).unwrap();
    // The examples are accepted as they are.
    let example = std::fs::read_to_string(repo().join("examples/l7/30-admin-guard.yaml")).unwrap();
    create(&s, &example).unwrap();
    // The schema refuses what the types refuse.
    let bad_mode = VALID_PNP
        .replace("mode: Audit", "mode: Sometimes")
        .replace("name: everything", "name: bad-mode");
    let e = create(&s, &bad_mode).unwrap_err();
    assert!(e.contains("spec.mode") && e.contains("Sometimes"), "{e}");
    let bad_field = VALID_PCNP
        .replace("egress:", "egres:")
        .replace("no-metadata-service", "bad-field");
    let e = create(&s, &bad_field).unwrap_err();
    assert!(e.contains("egres"), "{e}");
    let bad_entity = VALID_PCNP
        .replace(
            "- action: Deny\n    to: [{ipBlock: {cidr: 169.254.169.254/32}}]",
            "- to: [{entity: everything}]",
        )
        .replace("no-metadata-service", "bad-entity");
    let e = create(&s, &bad_entity).unwrap_err();
    assert!(e.contains("entity") && e.contains("everything"), "{e}");
    let bad_port = VALID_PCNP
        .replace(
            "to: [{ipBlock: {cidr: 169.254.169.254/32}}]",
            "ports: [{port: [1]}]",
        )
        .replace("no-metadata-service", "bad-port");
    let e = create(&s, &bad_port).unwrap_err();
    assert!(e.contains("port"), "{e}");
    // Enums and ranges the policy core also enforces are refused by the server already.
    for (from, to, field) in [
        ("protocol: UDP", "protocol: udp", "protocol"),
        ("endPort: 54", "endPort: 70000", "endPort"),
        ("operator: In", "operator: Within", "operator"),
    ] {
        let name = format!("bad-{}", field.to_lowercase());
        let bad = VALID_PNP
            .replace(from, to)
            .replace("name: everything", &format!("name: {name}"));
        let e = create(&s, &bad).unwrap_err();
        assert!(e.contains(field), "{field}: {e}");
    }
    // Rule names and log markers are 1-253 characters (schema).
    let long_name = format!("name: {}", "r".repeat(254));
    for (from, to, name, field) in [
        (
            "log: no-deletes",
            "log: \"\"",
            "empty-log",
            "spec.ingress[1].log",
        ),
        (
            "name: reads",
            long_name.as_str(),
            "long-name",
            "spec.ingress[0].name",
        ),
    ] {
        let bad = VALID_PNP
            .replace(from, to)
            .replace("name: everything", &format!("name: {name}"));
        let e = create(&s, &bad).unwrap_err();
        assert!(e.contains(field), "{name}: {e}");
    }
    // A peer names exactly one kind of peer (a CEL rule in the schema).
    for (peer, name) in [
        ("{entity: world, ipBlock: {cidr: 10.0.0.0/8}}", "two-peers"),
        ("{}", "no-peer"),
    ] {
        let bad = VALID_PCNP
            .replace(
                "[{ipBlock: {cidr: 169.254.169.254/32}}]",
                &format!("[{peer}]"),
            )
            .replace("no-metadata-service", name);
        let e = create(&s, &bad).unwrap_err();
        assert!(e.contains("exactly one of"), "{name}: {e}");
    }
    // The status subresource: Palisade's Accepted condition is written there (a write of
    // `status` through the main resource is ignored) and `kubectl get` shows it.
    let accepted = serde_json::json!({"status": {"conditions": [{
        "type": "Accepted", "status": "True", "reason": "Compiled",
        "message": "applied", "observedGeneration": 1,
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let pnp = "namespaces/production/palisadenetworkpolicies/everything";
    let ignored = request(&s, "PATCH", pnp, "application/merge-patch+json", &accepted).unwrap();
    assert!(
        ignored.get("status").is_none(),
        "status written through the main resource: {ignored}"
    );
    let written = request(
        &s,
        "PATCH",
        &format!("{pnp}/status"),
        "application/merge-patch+json",
        &accepted,
    )
    .unwrap();
    assert_eq!(
        written["status"]["conditions"][0]["status"], "True",
        "{written}"
    );
    let bad_status = serde_json::json!({"status": {"conditions": [{"status": "True"}]}});
    let e = request(
        &s,
        "PATCH",
        &format!("{pnp}/status"),
        "application/merge-patch+json",
        &bad_status,
    )
    .unwrap_err();
    assert!(e.contains("type"), "a condition without a type: {e}");
    // Printer columns and short names.
    let table = ok(&kubectl(&s, &["get", "pnp", "-n", "production"], None));
    let header = table.lines().next().unwrap_or_default();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["NAME", "MODE", "ACCEPTED", "AGE"], "{table}");
    // `everything`: audit mode, accepted through the status subresource; `admin-guard` has
    // no status yet, so its Accepted cell is empty and Age follows.
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        row("everything")[..3],
        ["everything", "Audit", "True"],
        "{table}"
    );
    assert_eq!(
        row("admin-guard").len(),
        3,
        "an empty Accepted cell: {table}"
    );
    let wide = ok(&kubectl(
        &s,
        &["get", "pnp", "-n", "production", "-o", "wide"],
        None,
    ));
    assert!(
        wide.lines().next().unwrap_or_default().contains("PODS"),
        "{wide}"
    );
    let cluster = ok(&kubectl(&s, &["get", "pcnp"], None));
    assert!(cluster.contains("no-metadata-service"), "{cluster}");
    let all = ok(&kubectl(&s, &["get", "palisade", "-A"], None));
    assert!(all.contains("admin-guard"), "{all}");
    let _ = Path::new(crds);
}
