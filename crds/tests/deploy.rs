//! The install manifests of `deploy/`: `kubectl kustomize deploy/` renders, and the real API
//! server (../shared/realclients) accepts every object with strict field validation in a
//! server-side dry-run; a misspelt field is refused, so the check catches drift. The
//! ClusterRole grants exactly the documented rules (no wildcards), the DaemonSet's pod passes
//! pod admission (priority class, pod security) in the install namespace, and the image can be
//! overridden with an `images:` entry.
//!
//! The CRDs and the Namespace are applied for real first: a dry-run of a namespaced object
//! in a namespace that does not exist yet is refused (the namespace lifecycle admission), and
//! a custom resource needs its CRD. Everything, those included, is then dry-run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use palisade_testkit::realclients::ApiServer;
use serde_json::{Value, json};

const NAMESPACE: &str = "palisade-system";
const IMAGE: &str = "ghcr.io/palisade-dev/palisade:0.1.0";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn kubectl_present() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(args: &[&str], kubeconfig: Option<&Path>, stdin: Option<&str>) -> Output {
    let mut c = Command::new("kubectl");
    if let Some(k) = kubeconfig {
        c.arg("--kubeconfig").arg(k);
    }
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `kubectl kustomize DIR`, one JSON value per document.
fn render(dir: &Path) -> Vec<Value> {
    let yaml = ok(
        "kubectl kustomize",
        &run(&["kustomize", dir.to_str().unwrap()], None, None),
    );
    serde_saphyr::from_multiple::<Value>(&yaml).unwrap()
}

fn list(items: &[&Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// `kubectl apply --server-side` of `items`, dry-run on the server or for real, with strict
/// field validation.
fn apply(s: &ApiServer, items: &[&Value], dry_run: bool) -> Output {
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager=palisade-deploy-test",
        "--validate=strict",
        "-f",
        "-",
    ];
    if dry_run {
        args.push("--dry-run=server");
    }
    run(&args, Some(&s.kubeconfig), Some(&list(items)))
}

/// `tag` names the server's directory: one per test, since tests run in parallel.
fn start(tag: &str) -> Option<ApiServer> {
    if !kubectl_present() {
        palisade_testkit::skip_or_fail(
            "deploy manifests test",
            &"kubectl not found (Debian package kubernetes-client)",
        );
        return None;
    }
    ApiServer::start_or_skip(tag)
}

#[test]
fn the_real_api_server_accepts_every_object_of_deploy_and_refuses_a_misspelt_field() {
    let Some(s) = start("deploy-dry-run") else {
        return;
    };
    let objs = render(&deploy_dir());
    let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    for kind in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ] {
        assert!(
            kinds.contains(&kind),
            "{kind} missing from deploy/: {kinds:?}"
        );
    }
    assert_eq!(find(&objs, "CustomResourceDefinition").len(), 2);

    // The CRDs and the namespace for real, then wait until the CRDs serve.
    let first: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition" || o["kind"] == "Namespace")
        .collect();
    ok(
        "apply of the CRDs and the namespace",
        &apply(&s, &first, false),
    );
    ok(
        "waiting for the CRDs",
        &run(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/palisadenetworkpolicies.policy.palisade.dev",
                "crd/palisadeclusternetworkpolicies.policy.palisade.dev",
            ],
            Some(&s.kubeconfig),
            None,
        ),
    );

    // Everything, dry-run on the server with strict validation.
    let all: Vec<&Value> = objs.iter().collect();
    let out = ok("server-side dry-run of deploy/", &apply(&s, &all, true));
    assert!(out.contains("daemonset.apps/palisade-agent"), "{out}");
    assert!(out.contains("(server dry run)"), "{out}");
    // A dry-run creates nothing.
    let get = run(
        &["get", "daemonset", "-n", NAMESPACE, "-o", "name"],
        Some(&s.kubeconfig),
        None,
    );
    assert_eq!(ok("kubectl get daemonset", &get).trim(), "");

    // The same check refuses a field the API does not know, naming it.
    let ds = one(&objs, "DaemonSet");
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["hostNetwrk"] = json!(true);
    let out = apply(&s, &[&bad], true);
    assert!(
        !out.status.success(),
        "a misspelt field was accepted: {out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostNetwrk"), "{err}");
    let mut bad = ds.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] =
        json!("/metrics");
    let out = apply(&s, &[&bad], true);
    assert!(
        !out.status.success(),
        "a misspelt field was accepted: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("paht"),
        "{out:?}"
    );

    // The pod the DaemonSet would create passes pod admission in the install namespace
    // (system-node-critical is resolved, pod security allows a privileged hostNetwork pod):
    // no controller runs here to create it, so it is dry-run directly.
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "palisade-agent-admission",
            "namespace": NAMESPACE,
            "labels": ds["spec"]["template"]["metadata"]["labels"],
        },
        "spec": ds["spec"]["template"]["spec"],
    });
    let out = apply(&s, &[&pod], true);
    let text = ok("server-side dry-run of the DaemonSet's pod", &out);
    assert!(text.contains("pod/palisade-agent-admission"), "{text}");
    // ... and admission really runs: a priority class that does not exist is refused.
    let mut bad = pod.clone();
    bad["spec"]["priorityClassName"] = json!("no-such-priority");
    let out = apply(&s, &[&bad], true);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-priority"),
        "{out:?}"
    );
    // Pod security admission runs too: in a namespace enforcing `baseline` the same pod is
    // refused, so the install namespace's `privileged` label is what admits it.
    let strict = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "palisade-psa-baseline",
            "labels": {"pod-security.kubernetes.io/enforce": "baseline"},
        },
    });
    ok(
        "namespace enforcing baseline",
        &apply(&s, &[&strict], false),
    );
    let mut elsewhere = pod.clone();
    elsewhere["metadata"]["namespace"] = json!("palisade-psa-baseline");
    let out = apply(&s, &[&elsewhere], true);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PodSecurity") && err.contains("privileged"),
        "{err}"
    );
    assert_eq!(
        one(&objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// With the RBAC objects applied for real, the API server's own authorizer (RBAC) answers
/// SubjectAccessReviews for the agent's service account: what it uses is allowed,
/// neighbouring verbs and resources are not. (A review, unlike `kubectl auth can-i`, needs
/// no discovery, so the optional kinds whose CRDs are not installed are checked too.)
#[test]
fn the_api_server_authorizes_the_agent_for_what_it_uses_and_nothing_near_it() {
    let Some(s) = start("deploy-rbac") else {
        return;
    };
    let objs = render(&deploy_dir());
    let rbac: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
            ]
            .contains(&o["kind"].as_str().unwrap())
        })
        .collect();
    ok("apply of the RBAC objects", &apply(&s, &rbac, false));
    // (verb, group, resource with an optional /subresource, namespace or "").
    let can = |verb: &str, group: &str, resource: &str, namespace: &str| -> bool {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": format!("system:serviceaccount:{NAMESPACE}:palisade-agent"),
                "groups": [
                    "system:serviceaccounts",
                    format!("system:serviceaccounts:{NAMESPACE}"),
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "subresource": subresource,
                    "namespace": namespace,
                },
            },
        });
        let out = ok(
            "SubjectAccessReview",
            &run(
                &["create", "-o", "json", "-f", "-"],
                Some(&s.kubeconfig),
                Some(&review.to_string()),
            ),
        );
        let reply: Value = serde_json::from_str(&out).unwrap();
        reply["status"]["allowed"] == true
    };
    let pnp = "palisadenetworkpolicies";
    let pcnp = "palisadeclusternetworkpolicies";
    for (verb, group, resource, ns) in [
        ("watch", "", "pods", ""),
        ("list", "", "nodes", ""),
        ("get", "", "namespaces", ""),
        ("list", "", "services", "default"),
        ("watch", "discovery.k8s.io", "endpointslices", ""),
        ("list", "networking.k8s.io", "networkpolicies", ""),
        (
            "watch",
            "policy.networking.k8s.io",
            "adminnetworkpolicies",
            "",
        ),
        (
            "list",
            "policy.networking.k8s.io",
            "baselineadminnetworkpolicies",
            "",
        ),
        (
            "get",
            "policy.networking.k8s.io",
            "clusternetworkpolicies",
            "",
        ),
        ("list", "policy.palisade.dev", pnp, ""),
        ("watch", "policy.palisade.dev", pcnp, ""),
        (
            "patch",
            "policy.palisade.dev",
            "palisadenetworkpolicies/status",
            "default",
        ),
        (
            "update",
            "policy.palisade.dev",
            "palisadeclusternetworkpolicies/status",
            "",
        ),
        ("watch", "cilium.io", "ciliumnetworkpolicies", ""),
        ("list", "cilium.io", "ciliumclusterwidenetworkpolicies", ""),
        (
            "list",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
        ),
        ("create", "", "events", "default"),
        ("patch", "events.k8s.io", "events", "default"),
    ] {
        assert!(
            can(verb, group, resource, ns),
            "the agent may not {verb} {group}/{resource}"
        );
    }
    for (verb, group, resource, ns) in [
        ("get", "", "secrets", NAMESPACE),
        ("list", "", "configmaps", ""),
        ("update", "", "pods", "default"),
        ("patch", "", "pods/status", "default"),
        ("delete", "", "pods", "default"),
        ("update", "", "nodes", ""),
        ("create", "networking.k8s.io", "networkpolicies", "default"),
        ("update", "policy.palisade.dev", pnp, "default"),
        ("patch", "policy.palisade.dev", pcnp, ""),
        ("delete", "policy.palisade.dev", pcnp, ""),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
        ),
        ("list", "", "events", ""),
        ("delete", "", "events", "default"),
        ("create", "", "serviceaccounts/token", NAMESPACE),
        (
            "update",
            "cilium.io",
            "ciliumnetworkpolicies/status",
            "default",
        ),
    ] {
        assert!(
            !can(verb, group, resource, ns),
            "the agent may {verb} {group}/{resource}"
        );
    }
}

/// Every rule the agent is granted, as (group, resource, verb): exactly the documented set
/// (docs/deploy.md), no wildcard anywhere, no resourceNames or nonResourceURLs.
#[test]
fn the_cluster_role_grants_exactly_the_agent_s_verbs() {
    if !kubectl_present() {
        palisade_testkit::skip_or_fail("deploy manifests test", &"kubectl not found");
        return;
    }
    let objs = render(&deploy_dir());
    let role = one(&objs, "ClusterRole");
    let mut granted = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let rule = rule.as_object().unwrap();
        let keys: Vec<&str> = rule.keys().map(String::as_str).collect();
        assert!(
            keys.iter()
                .all(|k| ["apiGroups", "resources", "verbs"].contains(k)),
            "unexpected rule keys {keys:?}"
        );
        let strings = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in strings("apiGroups") {
            for r in strings("resources") {
                for v in strings("verbs") {
                    for part in [&g, &r, &v] {
                        assert!(!part.contains('*'), "wildcard in {g}/{r} {v}");
                    }
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let read = ["get", "list", "watch"];
    let mut expected = std::collections::BTreeSet::new();
    let mut add = |group: &str, resources: &[&str], verbs: &[&str]| {
        for r in resources {
            for v in verbs {
                expected.insert((group.to_string(), r.to_string(), v.to_string()));
            }
        }
    };
    add("", &["namespaces", "pods", "nodes", "services"], &read);
    add("discovery.k8s.io", &["endpointslices"], &read);
    add("networking.k8s.io", &["networkpolicies"], &read);
    add(
        "policy.networking.k8s.io",
        &[
            "adminnetworkpolicies",
            "baselineadminnetworkpolicies",
            "clusternetworkpolicies",
        ],
        &read,
    );
    add(
        "policy.palisade.dev",
        &["palisadenetworkpolicies", "palisadeclusternetworkpolicies"],
        &read,
    );
    add(
        "policy.palisade.dev",
        &[
            "palisadenetworkpolicies/status",
            "palisadeclusternetworkpolicies/status",
        ],
        &["update", "patch"],
    );
    add(
        "cilium.io",
        &["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies"],
        &read,
    );
    add(
        "apiextensions.k8s.io",
        &["customresourcedefinitions"],
        &read,
    );
    add("", &["events"], &["create", "patch"]);
    add("events.k8s.io", &["events"], &["create", "patch"]);
    assert_eq!(granted, expected);

    // The binding gives that role to the DaemonSet's service account, and nothing else.
    let binding = one(&objs, "ClusterRoleBinding");
    let sa = one(&objs, "ServiceAccount");
    let ds = one(&objs, "DaemonSet");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}])
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
}

/// What the node agent needs from its pod: host network, node-critical priority, every
/// taint tolerated, the host paths, NODE_NAME, the generated ConfigMap, the install step.
#[test]
fn the_daemon_set_runs_the_agent_on_every_node_with_its_host_paths() {
    if !kubectl_present() {
        palisade_testkit::skip_or_fail("deploy manifests test", &"kubectl not found");
        return;
    }
    let objs = render(&deploy_dir());
    let ds = one(&objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in [
        "/sys/fs/bpf",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/run/palisade",
    ] {
        assert!(host_paths.contains(&p), "{p} not mounted: {host_paths:?}");
    }
    let agent = &pod["containers"][0];
    assert_eq!(agent["image"], IMAGE);
    assert_eq!(
        agent["args"],
        json!([
            "run",
            "--kubernetes",
            "--config",
            "/etc/palisade/config.yaml",
            "--log-format",
            "json"
        ])
    );
    assert_eq!(
        agent["env"],
        json!([{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    );
    // The config volume names the generated (hash-suffixed) ConfigMap, holding config.yaml.
    let cm = one(&objs, "ConfigMap");
    let config_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    assert_eq!(config_volume["configMap"]["name"], cm["metadata"]["name"]);
    assert!(cm["data"]["config.yaml"].as_str().unwrap().contains("cni:"));
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], IMAGE);
    assert_eq!(
        init["command"],
        json!([
            "/usr/local/bin/palisade-cni",
            "install",
            "--from",
            "/usr/local/bin/palisade-cni",
            "--to",
            "/host/opt/cni/bin"
        ])
    );
    for o in &objs {
        let ns = o["metadata"]["namespace"].as_str();
        match o["kind"].as_str().unwrap() {
            "ServiceAccount" | "ConfigMap" | "DaemonSet" => assert_eq!(ns, Some(NAMESPACE)),
            _ => assert_eq!(ns, None, "{}", o["kind"]),
        }
    }
}

/// An overlay's `images:` entry replaces the image of the agent and of the install step.
#[test]
fn an_overlay_overrides_the_image() {
    if !kubectl_present() {
        palisade_testkit::skip_or_fail("deploy manifests test", &"kubectl not found");
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-deploy-overlay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // kustomize takes bases by relative path only.
    let base = deploy_dir().canonicalize().unwrap();
    let up = "../".repeat(dir.canonicalize().unwrap().components().count() - 1);
    let base = format!("{up}{}", base.strip_prefix("/").unwrap().display());
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
             images:\n  - name: ghcr.io/palisade-dev/palisade\n    newName: registry.example/palisade\n    newTag: 9.9.9\n",
            base
        ),
    )
    .unwrap();
    let objs = render(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let pod = &one(&objs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example/palisade:9.9.9"
    );
    assert_eq!(
        pod["initContainers"][0]["image"],
        "registry.example/palisade:9.9.9"
    );
}
