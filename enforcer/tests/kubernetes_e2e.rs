#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! Kubernetes mode end to end: the real `palisade-enforcer run --kubernetes` on a local node
//! of network namespaces, its cluster model from the real kube-apiserver + etcd of
//! ../shared/realclients, real TCP between the pods.
//!
//! The test plays the kubelet: it creates the Pod objects, wires each pod's network and
//! registers it without labels (what the CNI plugin does: the agent takes labels and named
//! ports from its Pod cache), then patches `status.podIPs`. Policies are created, edited
//! and relabeled through the API. The API server runs on the loopback of the node's network
//! namespace, where the agent (`--netns`) and the test's client reach it.
//!
//! Privileged and real-client tier: under `CI=true` a host without root, BPF or the real API
//! server fails the test.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use palisade_api::{Request, Response};
use palisade_testkit::cni::{CniFailure, CniPlugin};
use palisade_testkit::harness::Enforcer;
use palisade_testkit::node::{NETNS_PREFIX, NetnsGuard, Node, Pod, create_netns};
use palisade_testkit::realclients::ApiServer;
use serde_json::{Value, json};

mod common;

use common::kube::{api, obj};
use common::traffic::{CHANGE, Cluster, expect_all, serve_tcp, tcp};

const EXE: &str = env!("CARGO_BIN_EXE_palisade-enforcer");
/// This file's address block: `10.243.x.x`.
const BLOCK: u8 = 243;
/// The node name the harness gives the agent.
const NODE: &str = "local-node";

/// What the kubelet does once the sandbox has its network.
fn patch_pod_ips(node: &Node, kubeconfig: &Path, pod: &Pod) {
    let (ns, name, ip) = (
        pod.namespace.clone(),
        pod.name.clone(),
        pod.ipv4.to_string(),
    );
    api(node, kubeconfig, |c| async move {
        let pods: Api<KubePod> = Api::namespaced(c, &ns);
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip,
                                            "podIPs": [{"ip": ip}]}})),
        )
        .await
        .unwrap();
    });
}

fn create_pod(c: Client, ns: &str, name: &str, app: &str, node: &str) -> impl Future<Output = ()> {
    let pods: Api<KubePod> = Api::namespaced(c, ns);
    let pod: KubePod = obj(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                 "ports": [{"name": "http", "containerPort": 8080}]}]}
    }));
    async move {
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
}

/// Ingress to `app=web` on the named port `http` from `app=client` pods of the same
/// namespace, or of every namespace.
fn web_policy(all_namespaces: bool) -> NetworkPolicy {
    let mut peer = json!({"podSelector": {"matchLabels": {"app": "client"}}});
    if all_namespaces {
        peer["namespaceSelector"] = json!({});
    }
    obj(json!({
        "metadata": {"name": "web-from-clients"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "policyTypes": ["Ingress"],
                 "ingress": [{"from": [peer], "ports": [{"port": "http"}]}]}
    }))
}

/// Runs `change` (an API write) and waits until the agent applied a new policy revision.
fn through_api(c: &Cluster, what: &str, change: impl FnOnce()) {
    let before = c.enforcer.revision_lines();
    change();
    if c.enforcer
        .wait_for_policy_revision(before, CHANGE)
        .is_none()
    {
        panic!(
            "{what}: no policy revision within {CHANGE:?}; agent log:\n{}",
            c.log()
        );
    }
}

fn status(e: &Enforcer) -> Option<(bool, Vec<String>)> {
    match e.request(&Request::Status) {
        Ok(Response::Status {
            ready, warnings, ..
        }) => Some((ready, warnings)),
        _ => None,
    }
}

#[test]
fn pods_and_policies_from_the_api_server_are_enforced_and_survive_an_api_outage() {
    let what = "kubernetes e2e";
    let Some(node) = Node::for_test("k8s", what) else {
        return;
    };
    // Declared after the node: stopped before the node's namespace goes.
    let Some(server) = ApiServer::start_in_or_skip("kube-e2e", Some(node.netns_name())) else {
        return;
    };
    let kc: PathBuf = server.kubeconfig.clone();

    // The cluster as the API server holds it before the agent starts.
    api(&node, &kc, |c| async move {
        let nss: Api<Namespace> = Api::all(c.clone());
        for ns in ["shop", "other"] {
            nss.create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": ns}})),
            )
            .await
            .unwrap();
        }
        create_pod(c.clone(), "shop", "web", "web", NODE).await;
        create_pod(c.clone(), "shop", "client", "client", NODE).await;
        create_pod(c.clone(), "other", "stranger", "client", NODE).await;
        create_pod(c.clone(), "shop", "remote", "client", "node-b").await;
        let nps: Api<NetworkPolicy> = Api::namespaced(c, "shop");
        nps.create(&PostParams::default(), &web_policy(false))
            .await
            .unwrap();
    });

    let enforcer = Enforcer::start_kubernetes(Path::new(EXE), &node, &kc, true)
        .unwrap_or_else(|e| panic!("{what}: starting the enforcer: {e}"));
    let c = Cluster {
        enforcer,
        node,
        block: BLOCK,
    };

    // The kubelet's part for each local pod: a sandbox namespace, CNI ADD through the real
    // plugin (which registers the pod by namespace/name, without labels), status.podIPs.
    let Some(plugin) = CniPlugin::find_binary() else {
        palisade_testkit::skip_or_fail(
            what,
            &"palisade-cni is not built (cargo build -p palisade-cni, or set PALISADE_CNI_BIN)",
        );
        return;
    };
    let cni = CniPlugin {
        plugin,
        node_netns: c.node.netns_path().to_path_buf(),
        node_netns_name: c.node.netns_name().to_string(),
        socket: c.enforcer.socket(),
        ipam_dir: c.enforcer.dir.join("ipam"),
        subnet: format!("10.{BLOCK}.1.0/24"),
        network: "palisade-e2e".into(),
    };
    // Sandboxes are named after the node, so a crashed run's are swept with it.
    let sandboxes: Vec<NetnsGuard> = (0..5)
        .map(|i| create_netns(&format!("{NETNS_PREFIX}{}-s{i}", c.node.tag())).unwrap())
        .collect();
    let add = |i: usize, ns: &str, name: &str| cni.add(&sandboxes[i], ns, name);
    let ok =
        |r: Result<Pod, CniFailure>| r.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", c.log()));
    let web = ok(add(0, "shop", "web"));
    let client = ok(add(1, "shop", "client"));
    let stranger = ok(add(2, "other", "stranger"));
    for p in [&web, &client, &stranger] {
        patch_pod_ips(&c.node, &kc, p);
    }
    // Labels from the Pod object, named in the log next to the node-local identity.
    let log = c.log();
    assert!(
        log.lines()
            .any(|l| l.contains("registered") && l.contains("endpoint.labels=\"app=web\"")),
        "{log}"
    );
    // A pod the API schedules on another node is not this agent's to enforce: ADD fails.
    let refused = add(3, "shop", "remote").expect_err("a pod of node-b added on local-node");
    assert!(refused.msg.contains("node-b"), "{refused}");
    // A pod the API server does not know (yet): the agent waits for it a bounded time, then
    // ADD answers "try again later" (CNI code 11) and the runtime retries.
    let t0 = Instant::now();
    let later = add(4, "shop", "ghost").expect_err("a pod unknown to the API server was added");
    assert_eq!(later.code, Some(11), "{later}");
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());

    let _srv = serve_tcp(&web, 8080);
    expect_all(
        &c,
        &[
            tcp(
                &client,
                &web,
                8080,
                true,
                "app=client of shop on the named port http",
            ),
            tcp(
                &stranger,
                &web,
                8080,
                false,
                "app=client of another namespace",
            ),
        ],
    );

    // A policy edit through the API flips a live flow.
    through_api(&c, "widening the policy to every namespace", || {
        api(&c.node, &kc, |cl| async move {
            let nps: Api<NetworkPolicy> = Api::namespaced(cl, "shop");
            nps.replace("web-from-clients", &PostParams::default(), &{
                let mut p = web_policy(true);
                let cur = nps.get("web-from-clients").await.unwrap();
                p.metadata.resource_version = cur.metadata.resource_version;
                p
            })
            .await
            .unwrap();
        });
    });
    expect_all(
        &c,
        &[
            tcp(&client, &web, 8080, true, "still allowed"),
            tcp(
                &stranger,
                &web,
                8080,
                true,
                "every namespace's app=client now",
            ),
        ],
    );

    // A label change re-identifies the pod.
    through_api(&c, "relabeling shop/client", || {
        api(&c.node, &kc, |cl| async move {
            let pods: Api<KubePod> = Api::namespaced(cl, "shop");
            pods.patch(
                "client",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "batch"}}})),
            )
            .await
            .unwrap();
        });
    });
    expect_all(
        &c,
        &[
            tcp(&client, &web, 8080, false, "relabeled app=batch"),
            tcp(&stranger, &web, 8080, true, "unchanged"),
        ],
    );

    // An API outage while running changes nothing in the kernel, and the agent says so.
    let revisions = c.enforcer.revision_lines();
    server.stop();
    let t0 = Instant::now();
    let warned = loop {
        let (ready, warnings) = status(&c.enforcer).expect("status during the outage");
        assert!(ready, "the maps still hold the last compile: {warnings:?}");
        if let Some(w) = warnings.iter().find(|w| w.contains("API server")) {
            break w.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no API-server warning in the status during the outage: {warnings:?}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(warned.contains("last"), "{warned}");
    expect_all(
        &c,
        &[
            tcp(&client, &web, 8080, false, "API down: as before"),
            tcp(&stranger, &web, 8080, true, "API down: as before"),
        ],
    );
    assert_eq!(
        c.enforcer.revision_lines(),
        revisions,
        "the outage produced a policy revision:\n{}",
        c.log()
    );

    // A restart with the API server still down: the pinned programs and maps keep
    // enforcing; the new agent touches nothing and serves nothing until it has listed.
    let mut c = c;
    c.enforcer.kill9();
    c.enforcer.spawn_no_wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // It answers on its socket: not ready, and why; a registration is "try again later".
    match c.enforcer.request(&Request::Status) {
        Ok(Response::Status {
            ready: false,
            reason: Some(r),
            ..
        }) => assert!(r.contains("API server"), "{r}"),
        other => panic!(
            "status while waiting for the API server: {other:?}\n{}",
            c.log()
        ),
    }
    let retry = cni
        .add(&sandboxes[4], "shop", "late")
        .expect_err("ADD while waiting");
    assert_eq!(retry.code, Some(11), "{retry}");
    expect_all(
        &c,
        &[
            tcp(
                &client,
                &web,
                8080,
                false,
                "agent restarting, API down: pinned",
            ),
            tcp(
                &stranger,
                &web,
                8080,
                true,
                "agent restarting, API down: pinned",
            ),
        ],
    );
    server.restart().unwrap();
    c.enforcer
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("after the API server came back: {e}"));
    expect_all(
        &c,
        &[
            tcp(&client, &web, 8080, false, "converged"),
            tcp(&stranger, &web, 8080, true, "converged"),
        ],
    );
    // And it follows the API again.
    through_api(&c, "narrowing the policy back", || {
        api(&c.node, &kc, |cl| async move {
            let nps: Api<NetworkPolicy> = Api::namespaced(cl, "shop");
            nps.patch(
                "web-from-clients",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"ingress": [{"from": [
                    {"podSelector": {"matchLabels": {"app": "batch"}}}],
                    "ports": [{"port": "http"}]}]}})),
            )
            .await
            .unwrap();
        });
    });
    expect_all(
        &c,
        &[
            tcp(&client, &web, 8080, true, "app=batch of shop now"),
            tcp(&stranger, &web, 8080, false, "another namespace again"),
        ],
    );
    drop(c);
    drop(server);
}

// ---- the e2e matrix through the API ---------------------------------------------------------

const MATRIX_NS: [&str; 3] = ["x", "y", "z"];
const MATRIX_PODS: [&str; 3] = ["a", "b", "c"];
const MATRIX_PORTS: [u16; 2] = [80, 81];

fn netpol(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// The upstream network-policy e2e layout's classic cases, applied one after another
/// (`None`: delete the named policy).
fn matrix_steps() -> Vec<(&'static str, &'static str, &'static str, Option<Value>)> {
    vec![
        (
            "default deny ingress in x",
            "x",
            "deny-ingress",
            Some(netpol(
                "x",
                "deny-ingress",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )),
        ),
        (
            "x/a admits namespace y on port 80",
            "x",
            "a-from-y",
            Some(netpol(
                "x",
                "a-from-y",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                    "ports": [{"port": 80}]}]}),
            )),
        ),
        (
            "x admits itself",
            "x",
            "same-namespace",
            Some(netpol(
                "x",
                "same-namespace",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            )),
        ),
        (
            "z may only reach y/b on port 80",
            "z",
            "egress-to-yb",
            Some(netpol(
                "z",
                "egress-to-yb",
                json!({"podSelector": {}, "policyTypes": ["Egress"],
                       "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                           "podSelector": {"matchLabels": {"pod": "b"}}}],
                                   "ports": [{"port": 80, "protocol": "TCP"}]}]}),
            )),
        ),
        ("x/a's admission of y is deleted", "x", "a-from-y", None),
    ]
}

fn matrix_pod_json(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
           "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// What the offline policy core (the compiler and the datapath's lookups, as `policy-test`
/// answers) says of `from -> to:port` for these objects read as a manifest directory would.
fn offline(objects: &[Value], from: &Pod, to: &Pod, port: u16) -> bool {
    use policy_compiler::eval::{Decision, Flow, FlowPeer, maps};
    use policy_compiler::manifest::{self, LoadOptions, Origin};
    use policy_compiler::model::Endpoint;
    use policy_compiler::{Engine, EngineConfig, Protocol};
    let raws: Vec<Box<serde_json::value::RawValue>> = objects
        .iter()
        .map(|o| serde_json::value::to_raw_value(o).unwrap())
        .collect();
    let loaded = manifest::load_objects(
        raws.iter().enumerate().map(|(i, r)| {
            (
                Origin {
                    file: PathBuf::from("matrix.yaml"),
                    document: i + 1,
                },
                &**r,
            )
        }),
        &LoadOptions::default(),
    )
    .unwrap();
    let (engine, _) = Engine::compile_owned(loaded.cluster, EngineConfig::default()).unwrap();
    let v = maps::evaluate(
        &engine,
        &Flow {
            src: FlowPeer::Endpoint(Endpoint::pod_key(&from.namespace, &from.name)),
            dst: FlowPeer::Endpoint(Endpoint::pod_key(&to.namespace, &to.name)),
            protocol: Protocol::TCP,
            port,
        },
    );
    let ok = |d: &Option<Decision>| {
        matches!(
            d,
            None | Some(Decision::Allowed { .. }) | Some(Decision::NotIsolated)
        )
    };
    ok(&v.egress) && ok(&v.ingress)
}

#[test]
fn the_e2e_matrix_through_the_api_server_matches_the_offline_answer_at_every_step() {
    let what = "kubernetes e2e matrix";
    let Some(node) = Node::for_test("k8m", what) else {
        return;
    };
    let Some(server) = ApiServer::start_in_or_skip("kube-matrix", Some(node.netns_name())) else {
        return;
    };
    let kc: PathBuf = server.kubeconfig.clone();
    let enforcer = Enforcer::start_kubernetes(Path::new(EXE), &node, &kc, true)
        .unwrap_or_else(|e| panic!("{what}: starting the enforcer: {e}"));
    let c = Cluster {
        enforcer,
        node,
        block: BLOCK,
    };

    // Namespaces x, y, z (label ns=<name>), pods a, b, c in each (label pod=<name>), each
    // serving 80 and 81.
    let mut objects: Vec<Value> = MATRIX_NS
        .iter()
        .map(|ns| {
            json!({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": ns, "labels": {"ns": ns}}})
        })
        .collect();
    let mut pods = Vec::new();
    for (i, ns) in MATRIX_NS.iter().enumerate() {
        for (j, name) in MATRIX_PODS.iter().enumerate() {
            let p = c.pod(ns, name, 10 + i as u8, 10 + j as u8);
            objects.push(matrix_pod_json(ns, name, &p.ipv4.to_string()));
            pods.push(p);
        }
    }
    let namespaces_and_pods = objects.clone();
    through_api(&c, "namespaces and pods", || {
        api(&c.node, &kc, |cl| async move {
            for o in namespaces_and_pods {
                if o["kind"] == "Namespace" {
                    let nss: Api<Namespace> = Api::all(cl.clone());
                    nss.create(&PostParams::default(), &obj(o)).await.unwrap();
                } else {
                    let ns = o["metadata"]["namespace"].as_str().unwrap().to_string();
                    let name = o["metadata"]["name"].as_str().unwrap().to_string();
                    let status = o["status"].clone();
                    let pods: Api<KubePod> = Api::namespaced(cl.clone(), &ns);
                    pods.create(&PostParams::default(), &obj(o)).await.unwrap();
                    pods.patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .unwrap();
                }
            }
        });
    });
    for p in &pods {
        c.enforcer
            .register_from_source(p)
            .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", c.log()));
    }
    let _servers: Vec<_> = pods
        .iter()
        .flat_map(|p| MATRIX_PORTS.map(|port| serve_tcp(p, port)))
        .collect();

    let by = |ns: &str, name: &str| {
        pods.iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap()
    };
    for (step, ns, name, policy) in matrix_steps() {
        match &policy {
            Some(p) => objects.push(p.clone()),
            None => objects.retain(|o| {
                !(o["kind"] == "NetworkPolicy"
                    && o["metadata"]["namespace"] == ns
                    && o["metadata"]["name"] == name)
            }),
        }
        through_api(&c, step, || {
            api(&c.node, &kc, |cl| async move {
                let nps: Api<NetworkPolicy> = Api::namespaced(cl, ns);
                match policy {
                    Some(p) => {
                        nps.create(&PostParams::default(), &obj(p)).await.unwrap();
                    }
                    None => {
                        nps.delete(name, &Default::default()).await.unwrap();
                    }
                }
            });
        });
        // Every pair on every port, against the offline answer for the same objects.
        let mut probes = Vec::new();
        let mut allowed = 0;
        for from in &pods {
            for to in &pods {
                if from.namespace == to.namespace && from.name == to.name {
                    continue;
                }
                for port in MATRIX_PORTS {
                    let allow = offline(&objects, from, to, port);
                    allowed += usize::from(allow);
                    probes.push(tcp(from, to, port, allow, step));
                }
            }
        }
        eprintln!("{step}: {allowed} of {} allowed", probes.len());
        expect_all(&c, &probes);
        // The offline answer is not trivially "everything": spot checks of each step.
        let (xa, xb, xc) = (by("x", "a"), by("x", "b"), by("x", "c"));
        let (ya, yb, za) = (by("y", "a"), by("y", "b"), by("z", "a"));
        let spot = |from: &Pod, to: &Pod, port| offline(&objects, from, to, port);
        match step {
            "default deny ingress in x" => {
                assert!(!spot(ya, xa, 80) && !spot(xb, xa, 80) && spot(xa, ya, 80));
            }
            "x/a admits namespace y on port 80" => {
                assert!(spot(ya, xa, 80) && !spot(ya, xa, 81) && !spot(za, xa, 80));
            }
            "x admits itself" => assert!(spot(xb, xc, 81) && !spot(ya, xb, 80)),
            "z may only reach y/b on port 80" => {
                assert!(spot(za, yb, 80) && !spot(za, yb, 81) && !spot(za, ya, 80));
                assert!(!spot(za, xc, 80) && spot(ya, xa, 80));
            }
            _ => assert!(!spot(ya, xa, 80) && spot(xb, xa, 80)),
        }
    }
    drop(c);
    drop(server);
}

/// Waits until `pred` holds for the agent's status warnings, or panics with the log.
fn wait_warnings(e: &Enforcer, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let t0 = Instant::now();
    loop {
        if let Some((_, w)) = status(e)
            && pred(&w)
        {
            return w;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: status warnings never matched; agent log:\n{}",
            std::fs::read_to_string(&e.log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CNI configuration the agent writes takes this node's range from its Node object; a
/// range the plugin would refuse (the API server accepts a /7, the plugin wants /8 or longer)
/// leaves no configuration at all — no pod can start — and `status` says why.
#[test]
fn the_conflist_takes_the_node_range_and_a_range_the_plugin_refuses_writes_none() {
    let what = "kubernetes pod range";
    let Some(node) = Node::for_test("k8r", what) else {
        return;
    };
    let Some(server) = ApiServer::start_in_or_skip("kube-cidr", Some(node.netns_name())) else {
        return;
    };
    let kc: PathBuf = server.kubeconfig.clone();
    let dir = std::env::temp_dir().join(format!("palisade-k8s-cidr-{}", node.tag()));
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cni:\n  conf_dir: {}\n  subnet: 10.{BLOCK}.9.0/24\n",
            conf_dir.display()
        ),
    )
    .unwrap();
    let conflist = conf_dir.join("10-palisade.conflist");
    let node_object = |cidr: &'static str| {
        obj::<k8s_openapi::api::core::v1::Node>(json!({
            "metadata": {"name": NODE},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        }))
    };

    // A range the cluster assigned: the conflist uses it, not the configured one.
    api(&node, &kc, |c| async move {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c);
        nodes
            .create(&PostParams::default(), &node_object("10.243.7.0/24"))
            .await
            .unwrap();
    });
    {
        let agent =
            Enforcer::start_kubernetes_with_config(Path::new(EXE), &node, &kc, true, Some(&config))
                .unwrap_or_else(|e| panic!("{what}: starting the enforcer: {e}"));
        let t0 = Instant::now();
        while !conflist.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{what}: no conflist; agent log:\n{}",
                std::fs::read_to_string(&agent.log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&conflist).unwrap()).unwrap();
        assert_eq!(
            written["plugins"][0]["ipam"]["subnet"], "10.243.7.0/24",
            "{written}"
        );
        let (ready, warnings) = status(&agent).unwrap();
        assert!(
            ready && warnings.iter().all(|w| !w.contains("CNI")),
            "{warnings:?}"
        );
    }

    // The Node is recreated with a range the plugin refuses (a Node's range cannot be
    // changed in place). The restarted agent is ready and enforcing, writes no conflist, and
    // says why in status and its log.
    std::fs::remove_file(&conflist).unwrap();
    api(&node, &kc, |c| async move {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c);
        nodes
            .delete(NODE, &kube::api::DeleteParams::default())
            .await
            .unwrap();
        nodes
            .create(&PostParams::default(), &node_object("10.0.0.0/7"))
            .await
            .unwrap();
    });
    let agent =
        Enforcer::start_kubernetes_with_config(Path::new(EXE), &node, &kc, true, Some(&config))
            .unwrap_or_else(|e| panic!("{what}: restarting the enforcer: {e}"));
    let warnings = wait_warnings(&agent, what, |w| {
        w.iter()
            .any(|w| w.contains("CNI network configuration not written"))
    });
    let w = warnings
        .iter()
        .find(|w| w.contains("CNI network configuration not written"))
        .unwrap();
    assert!(w.contains("10.0.0.0/7") && w.contains("/8"), "{w}");
    assert!(
        !conflist.exists(),
        "a conflist was written for a refused range"
    );
    let log = std::fs::read_to_string(&agent.log_path).unwrap_or_default();
    assert!(
        log.contains("CNI network configuration not written"),
        "{log}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
