//! The Kubernetes source against the real kube-apiserver + etcd of ../shared/realclients:
//! the first model waits for every list; create/update/delete of each kind reaches the
//! engine as changes; CRDs installed later are watched; an object the policy core refuses
//! keeps its last valid version; registrations wait for their Pod; an API server restart
//! (watch cache gone: every watch resumes with `410 Gone` and relists) changes nothing that
//! did not change, and the source converges to what a fresh source reads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use palisade_enforcer::source::kube::{KubeOptions, KubeSource};
use palisade_enforcer::source::{PodWait, PolicySource, SourceEvent};
use palisade_testkit::realclients::ApiServer;
use policy_compiler::engine::Change;
use policy_compiler::manifest::LoadOptions;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn options(server: &ApiServer) -> KubeOptions {
    KubeOptions {
        kubeconfig: Some(server.kubeconfig.clone()),
        node_name: "node-a".into(),
        load: LoadOptions {
            strict_kinds: true,
            ..LoadOptions::default()
        },
        debounce: Duration::from_millis(20),
        pod_wait: Duration::from_secs(2),
    }
}

async fn client(server: &ApiServer) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

async fn create_pod(c: &Client, ns: &str, name: &str, app: &str, node: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    pods.create(
        &PostParams::default(),
        &obj(json!({
            "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx",
                     "ports": [{"name": "http", "containerPort": 80}]}]}
        })),
    )
    .await
    .unwrap();
    // What the kubelet does once the sandbox has its network.
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .unwrap();
}

/// Waits (30 s at most) until `name`'s `Accepted` condition satisfies `want`; returns it.
async fn accepted_condition(
    api: &Api<DynamicObject>,
    name: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = api.get(name).await.unwrap();
        let cond = o.data["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"))
            .cloned();
        if let Some(c) = &cond
            && want(c)
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the Accepted condition never became what was expected: {cond:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Installs a CiliumNetworkPolicy CRD (schema left open, as a test stand-in for Cilium's)
/// and returns the kind's API in `shop`.
async fn cilium_policies(c: &Client) -> Api<DynamicObject> {
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd: CustomResourceDefinition = obj(json!({
        "metadata": {"name": "ciliumnetworkpolicies.cilium.io"},
        "spec": {"group": "cilium.io", "scope": "Namespaced",
                 "names": {"kind": "CiliumNetworkPolicy", "plural": "ciliumnetworkpolicies",
                           "singular": "ciliumnetworkpolicy", "listKind": "CiliumNetworkPolicyList"},
                 "versions": [{"name": "v2", "served": true, "storage": true,
                               "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": true}}}]}
    }));
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let gvk = GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "ciliumnetworkpolicies");
    Api::namespaced_with(c.clone(), "shop", &ar)
}

fn policy(name: &str, port: u16) -> NetworkPolicy {
    obj(json!({
        "metadata": {"name": name},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                              "ports": [{"port": port}]}]}
    }))
}

/// The next batch of changes (within `within`), or `None`.
async fn next(rx: &mut mpsc::Receiver<SourceEvent>, within: Duration) -> Option<Vec<Change>> {
    match tokio::time::timeout(within, rx.recv()).await {
        Ok(Some(SourceEvent::Changes(c))) => Some(c),
        Ok(Some(SourceEvent::Error(e))) => panic!("source error: {e}"),
        Ok(None) => panic!("source ended"),
        Err(_) => None,
    }
}

/// Batches until one satisfies `want` (30 s at most); every change seen on the way.
async fn until(
    rx: &mut mpsc::Receiver<SourceEvent>,
    what: &str,
    want: impl Fn(&Change) -> bool,
) -> Vec<Change> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(batch) = next(rx, Duration::from_secs(1)).await {
            let hit = batch.iter().any(&want);
            seen.extend(batch);
            if hit {
                return seen;
            }
        }
    }
    panic!("no change {what} within 30 s; saw {seen:#?}");
}

fn upserts_endpoint(c: &Change, key: &str) -> bool {
    matches!(c, Change::UpsertEndpoint(e) if e.key == key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_follows_the_api_server_through_changes_crds_and_a_restart() {
    let Some(server) = ApiServer::start_or_skip("kube-source") else {
        return;
    };
    let c = client(&server).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "shop", "labels": {"team": "shop"}}})),
    )
    .await
    .unwrap();
    create_pod(&c, "shop", "web", "web", "node-a", "10.244.0.10").await;
    create_pod(&c, "shop", "remote", "web", "node-b", "10.244.1.10").await;
    let nps: Api<NetworkPolicy> = Api::namespaced(c.clone(), "shop");
    nps.create(&PostParams::default(), &policy("allow-client", 80))
        .await
        .unwrap();

    // The first model: everything listed, before any event is delivered.
    let mut source = KubeSource::connect(options(&server)).await.unwrap();
    // This API server (v1.36, etcd 3.5.16) streams initial lists in the watch.
    assert_eq!(source.streaming_lists(), Some(true));
    let first = source.initial();
    assert_eq!(
        first.namespaces["shop"]
            .labels
            .get("team")
            .map(String::as_str),
        Some("shop")
    );
    let web = &first.endpoints["shop/web"];
    assert_eq!(
        web.ips,
        vec!["10.244.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(web.ports.len(), 1, "named port from the pod spec");
    assert!(
        first.endpoints.contains_key("shop/remote"),
        "every pod feeds the ipcache"
    );
    assert!(first.policies.keys().any(|k| k.name == "allow-client"));
    let mut rx = source.subscribe().unwrap();

    // Registrations: this node's pod at once; another node's pod refused; an unknown pod
    // waits, then "not yet" (CNI: try again later).
    let src = std::sync::Arc::new(source);
    let s2 = src.clone();
    let answers = tokio::task::spawn_blocking(move || {
        (
            s2.await_pod("shop", "web"),
            s2.await_pod("shop", "remote"),
            s2.await_pod("shop", "nobody"),
        )
    })
    .await
    .unwrap();
    assert_eq!(answers.0, Ok(()));
    assert!(
        matches!(&answers.1, Err(PodWait::OtherNode(m)) if m.contains("node-b")),
        "{answers:?}"
    );
    assert!(
        matches!(&answers.2, Err(PodWait::NotYet(m)) if m.contains("shop/nobody")),
        "{answers:?}"
    );
    // A pod created while a registration waits for it is found.
    let s3 = src.clone();
    let waiting = tokio::task::spawn_blocking(move || s3.await_pod("shop", "late"));
    create_pod(&c, "shop", "late", "client", "node-a", "10.244.0.11").await;
    assert_eq!(waiting.await.unwrap(), Ok(()));
    until(&mut rx, "adding shop/late", |c| {
        upserts_endpoint(c, "shop/late")
    })
    .await;

    // Each kind's create/update/delete reaches the engine.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "shop");
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web", "tier": "front"}}})),
    )
    .await
    .unwrap();
    until(&mut rx, "relabelling shop/web", |c| {
        matches!(c, Change::UpsertEndpoint(e) if e.key == "shop/web" && e.labels.contains_key("tier"))
    })
    .await;
    // A Service (its cluster IP allocated by the API server) reaches the engine, and so
    // does its deletion: the service maps follow them.
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(c.clone(), "shop");
    svcs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"},
                             "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})),
    )
    .await
    .unwrap();
    until(&mut rx, "creating service shop/web", |c| {
        matches!(c, Change::UpsertService(s)
            if s.name == "web" && s.namespace == "shop" && !s.cluster_ips.is_empty())
    })
    .await;
    svcs.delete("web", &Default::default()).await.unwrap();
    until(
        &mut rx,
        "deleting service shop/web",
        |c| matches!(c, Change::DeleteService((ns, n)) if ns == "shop" && n == "web"),
    )
    .await;
    nps.replace("allow-client", &PostParams::default(), &{
        let mut p = policy("allow-client", 8080);
        p.metadata.resource_version = nps
            .get("allow-client")
            .await
            .unwrap()
            .metadata
            .resource_version;
        p
    })
    .await
    .unwrap();
    until(
        &mut rx,
        "editing the policy",
        |c| matches!(c, Change::UpsertPolicy(p) if p.name == "allow-client"),
    )
    .await;
    nss.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "retail"}}})),
    )
    .await
    .unwrap();
    until(&mut rx, "relabelling the namespace", |c| {
        matches!(c, Change::UpsertNamespace(n) if n.labels.get("team").map(String::as_str) == Some("retail"))
    })
    .await;
    let nodes: Api<Node> = Api::all(c.clone());
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "node-b", "labels": {"zone": "b"}}})),
        )
        .await
        .unwrap();
    // This node's pod range comes from its Node object (the IPv4 one of a dual-stack pair),
    // for the CNI configuration the agent writes.
    assert_eq!(src.node_pod_cidr(), None, "no Node object for node-a yet");
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "node-a"},
                        "spec": {"podCIDR": "fd00:10:244:9::/64",
                                 "podCIDRs": ["fd00:10:244:9::/64", "10.244.9.0/24"]}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.node_pod_cidr().as_deref() != Some("10.244.9.0/24") {
        assert!(
            Instant::now() < deadline,
            "node-a's pod CIDR never arrived: {:?}",
            src.node_pod_cidr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let svcs: Api<Service> = Api::namespaced(c.clone(), "shop");
    svcs.create(
        &PostParams::default(),
        &obj(
            json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
                    "ports": [{"port": 80, "targetPort": "http"}]}}),
        ),
    )
    .await
    .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "shop");
    slices
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                        "addressType": "IPv4",
                        "endpoints": [{"addresses": ["10.244.0.10"], "conditions": {"ready": true}}],
                        "ports": [{"name": "", "port": 80, "protocol": "TCP"}]})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while src.current().endpoint_slices.is_empty() || src.current().services.is_empty() {
        assert!(
            Instant::now() < deadline,
            "services and EndpointSlices never reached the model"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nps.delete("allow-client", &DeleteParams::default())
        .await
        .unwrap();
    until(
        &mut rx,
        "deleting the policy",
        |c| matches!(c, Change::DeletePolicy(r) if r.name == "allow-client"),
    )
    .await;
    pods.delete("late", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    until(
        &mut rx,
        "deleting shop/late",
        |c| matches!(c, Change::DeleteEndpoint(k) if k == "shop/late"),
    )
    .await;

    // CRDs installed after the start are discovered and their objects watched.
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for f in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let gvk = GroupVersionKind::gvk("policy.palisade.dev", "v1alpha1", "PalisadeNetworkPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "palisadenetworkpolicies");
    let pnps: Api<DynamicObject> = Api::namespaced_with(c.clone(), "shop", &ar);
    let pnp = |path: &str| -> DynamicObject {
        obj(json!({
            "apiVersion": "policy.palisade.dev/v1alpha1", "kind": "PalisadeNetworkPolicy",
            "metadata": {"name": "l7"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"name": "get-only", "ports": [{"port": 80, "http": [{"method": "GET", "path": path}]}]}]}
        }))
    };
    // The CRD's watcher starts once it is established; creating may race the discovery.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pnps.create(&PostParams::default(), &pnp("/api/.*")).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the CRD: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("PalisadeNetworkPolicy never accepted: {e}"),
        }
    }
    until(
        &mut rx,
        "a PalisadeNetworkPolicy",
        |c| matches!(c, Change::UpsertPolicy(p) if p.name == "l7"),
    )
    .await;
    let good = src
        .current()
        .policies
        .iter()
        .find(|(k, _)| k.name == "l7")
        .map(|(_, p)| p.clone())
        .unwrap();
    let accepted = accepted_condition(&pnps, "l7", |c| c["status"] == "True").await;
    assert_eq!(accepted["reason"], "Valid", "{accepted}");
    assert_eq!(accepted["observedGeneration"], 1, "{accepted}");

    // An edit the API server's schema accepts but the policy core refuses (a path that is
    // not a valid regular expression): the last valid version stays, and status says why.
    let mut bad = pnp("/api/(");
    bad.metadata.resource_version = pnps.get("l7").await.unwrap().metadata.resource_version;
    pnps.replace("l7", &PostParams::default(), &bad)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !src
        .notes()
        .iter()
        .any(|n| n.contains("PalisadeNetworkPolicy shop/l7 is invalid"))
    {
        assert!(
            Instant::now() < deadline,
            "the refused edit never showed in notes: {:?}",
            src.notes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        next(&mut rx, Duration::from_secs(1)).await.is_none(),
        "a refused edit changes nothing"
    );
    let kept = src
        .current()
        .policies
        .iter()
        .find(|(k, _)| k.name == "l7")
        .map(|(_, p)| p.clone())
        .unwrap();
    assert_eq!(
        kept.ingress, good.ingress,
        "the last valid version stays enforced"
    );
    // ... and the author reads why in the object's status (`kubectl get` shows Accepted).
    let refused = accepted_condition(&pnps, "l7", |c| c["status"] == "False").await;
    assert_eq!(refused["reason"], "Invalid", "{refused}");
    assert_eq!(refused["observedGeneration"], 2, "{refused}");
    let msg = refused["message"].as_str().unwrap();
    assert!(
        msg.contains("generation 2 is refused")
            && msg.contains("ingress")
            && msg.contains("/api/(")
            && msg.contains("the last valid version stays enforced"),
        "{msg}"
    );
    assert!(refused["lastTransitionTime"].is_string(), "{refused}");
    // A valid edit replaces it and clears the note (a fresh source, which never saw the
    // valid version, would not hold the policy at all: the comparison below needs this).
    let mut fixed = pnp("/api/v2/.*");
    fixed.metadata.resource_version = pnps.get("l7").await.unwrap().metadata.resource_version;
    pnps.replace("l7", &PostParams::default(), &fixed)
        .await
        .unwrap();
    until(
        &mut rx,
        "the corrected PalisadeNetworkPolicy",
        |c| matches!(c, Change::UpsertPolicy(p) if p.name == "l7"),
    )
    .await;
    assert!(
        !src.notes().iter().any(|n| n.contains("shop/l7")),
        "{:?}",
        src.notes()
    );
    let back = accepted_condition(&pnps, "l7", |c| c["status"] == "True").await;
    assert_eq!(back["observedGeneration"], 3, "{back}");

    // A kind whose status Palisade does not own gets a Warning Event on a refused object,
    // once however often the agent sees it.
    let cnps = cilium_policies(&c).await;
    let mut cnp: DynamicObject = obj(json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "bad-cnp", "namespace": "shop"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "99999"}]}]}]}
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cnps.create(&PostParams::default(), &cnp).await {
            Ok(created) => {
                cnp = created;
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the Cilium CRD: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("CiliumNetworkPolicy never accepted: {e}"),
        }
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "shop");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mine = loop {
        let list = events.list(&Default::default()).await.unwrap();
        let mine: Vec<_> = list
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("bad-cnp"))
            .collect();
        if !mine.is_empty() {
            break mine;
        }
        assert!(
            Instant::now() < deadline,
            "no Event for the refused CiliumNetworkPolicy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mine.len(), 1, "{mine:#?}");
    let ev = &mine[0];
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.reason.as_deref(), Some("InvalidPolicy"));
    assert_eq!(
        ev.involved_object.kind.as_deref(),
        Some("CiliumNetworkPolicy")
    );
    assert_eq!(ev.involved_object.uid, cnp.metadata.uid);
    let m = ev.message.as_deref().unwrap_or_default();
    assert!(
        m.contains("99999") && m.contains("nothing of it is enforced"),
        "{m}"
    );
    cnps.delete("bad-cnp", &Default::default()).await.unwrap();

    // Compact etcd's history and restart the API server: its watch cache is gone and the
    // history the watches would resume from too, so every watch gets 410 Gone and relists.
    // Nothing changed, so nothing is delivered.
    let relists = src.relists();
    let compacted = server.compact_etcd().unwrap();
    assert!(compacted > 1, "{compacted}");
    server.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        next(&mut rx, Duration::from_millis(100)).await.is_none(),
        "an outage changes nothing"
    );
    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Watchers report the outage in notes and clear it when they deliver again; a
    // relabel after the restart proves the watch is back.
    let c = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "shop");
    loop {
        let r = pods
            .patch(
                "remote",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": "web", "after": "restart"}}})),
            )
            .await;
        if r.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API server did not come back: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = until(&mut rx, "relabelling after the restart", |c| {
        matches!(c, Change::UpsertEndpoint(e) if e.key == "shop/remote" && e.labels.contains_key("after"))
    })
    .await;
    assert!(
        seen.iter()
            .all(|c| matches!(c, Change::UpsertEndpoint(e) if e.key == "shop/remote")),
        "the relists after the restart delivered spurious changes: {seen:#?}"
    );
    assert!(
        src.relists() > relists,
        "no watch relisted after the compaction and restart"
    );

    // Converged: what a fresh source reads is what this one holds.
    let fresh = KubeSource::connect(options(&server)).await.unwrap();
    let (a, b) = (src.current(), fresh.initial());
    assert_eq!(a.namespaces, b.namespaces);
    assert_eq!(a.endpoints, b.endpoints);
    assert_eq!(
        a.policies.keys().collect::<Vec<_>>(),
        b.policies.keys().collect::<Vec<_>>()
    );
    assert_eq!(a.services, b.services);
    assert_eq!(a.endpoint_slices, b.endpoint_slices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_delivered_before_every_kind_is_listed_and_an_unreachable_server_is_waited_for()
{
    let Some(server) = ApiServer::start_or_skip("kube-source-down") else {
        return;
    };
    server.stop();
    let opts = options(&server);
    // Unreachable: connect waits (it never returns a partial model).
    let waited =
        tokio::time::timeout(Duration::from_secs(3), KubeSource::connect(opts.clone())).await;
    assert!(waited.is_err(), "connect returned without an API server");
    // The server comes back while a connect waits: it completes.
    let pending = tokio::spawn(KubeSource::connect(opts));
    server.restart().unwrap();
    let source = tokio::time::timeout(Duration::from_secs(90), pending)
        .await
        .expect("connect did not complete after the API server came back")
        .unwrap()
        .unwrap();
    assert!(source.initial().policies.is_empty());
}
