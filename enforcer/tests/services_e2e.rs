#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! Service translation end to end: real TCP from a pod in a network namespace to a
//! ClusterIP, through the real `palisade-enforcer run` (maps from a Service manifest and
//! the registered pods), reaching real servers that say which pod they are.
//!
//! Privileged tier: needs root, network namespaces and BPF (`Node::for_test`; under
//! `CI=true` a host that cannot run it fails).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use palisade_api::NamedPort;
use palisade_testkit::node::TcpOutcome;
use serde_json::Value;

mod common;

use common::traffic::{Cluster, OK, serve_tcp};
use palisade_testkit::node::Pod;

/// This file's address block: `10.232.x.x`, `fd00:10:232::/48`.
const BLOCK: u8 = 232;
const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";

/// `web` selects three pods; the client may open 8080 only to the `tier: front` ones, so
/// db-0 is a backend the client's egress policy denies. Nothing may open a connection to the
/// client (its ingress is isolated): what the datapath answers for a frontend without
/// backends must still reach it.
const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIPs: [10.96.0.10, \"fd00:96::10\"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing, namespace: shop}
spec:
  selector: {app: nobody}
  clusterIPs: [10.96.0.20]
  ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress, Ingress]
  egress:
  - to: [{podSelector: {matchLabels: {tier: front}}}]
    ports: [{port: 8080}]
";

fn http() -> Vec<NamedPort> {
    vec![NamedPort {
        name: "http".into(),
        port: 8080,
        protocol: "TCP".into(),
    }]
}

/// Connects `n` times to `vip:80` from `client`: which backend answered each time (its
/// banner), and how many attempts were dropped.
fn spread(c: &Cluster, client: &Pod, vip: &str, n: usize) -> (BTreeMap<String, usize>, usize) {
    let dst = SocketAddr::new(vip.parse::<IpAddr>().unwrap(), 80);
    spread_with(c, dst, n, || {
        client.tcp_connect(dst, Duration::from_secs(1)).unwrap()
    })
}

/// `n` outcomes of `connect` (to `dst`) counted by the backend that answered, and the
/// attempts that timed out; anything else fails the test.
fn spread_with(
    c: &Cluster,
    dst: SocketAddr,
    n: usize,
    connect: impl Fn() -> TcpOutcome,
) -> (BTreeMap<String, usize>, usize) {
    let mut by = BTreeMap::new();
    let mut dropped = 0;
    for _ in 0..n {
        match connect() {
            TcpOutcome::Connected { banner } => *by.entry(banner).or_insert(0) += 1,
            TcpOutcome::TimedOut => dropped += 1,
            other => panic!("{dst}: {other:?}\n{}", c.log()),
        }
    }
    (by, dropped)
}

/// One echo on every kept session; each must come back.
fn echo_all(sessions: &mut [palisade_testkit::node::TcpSession], what: &str) {
    for (i, s) in sessions.iter_mut().enumerate() {
        let r = s.echo(format!("{what} {i}").as_bytes(), OK).unwrap();
        assert!(
            matches!(r, palisade_testkit::node::EchoOutcome::Echoed),
            "session {i} ({}) {what}: {r:?}",
            s.banner()
        );
    }
}

/// web-0 and web-1 (`tier: front`) and db-0 (`tier: data`), each `app: web` with its
/// `http` port 8080, and the client pod (`app: client`), all registered.
fn shop_pods(c: &Cluster) -> (Pod, Pod, Pod, Pod) {
    let web0 = c.pod("shop", "web-0", 1, 10);
    let web1 = c.pod("shop", "web-1", 1, 11);
    let db0 = c.pod("shop", "db-0", 1, 99);
    let client = c.pod("shop", "client", 2, 1);
    for (p, tier) in [(&web0, "front"), (&web1, "front"), (&db0, "data")] {
        c.enforcer
            .register_with_ports(p, &[("app", "web"), ("tier", tier)], http())
            .unwrap();
    }
    c.register(&client, &[("app", "client")]);
    (web0, web1, db0, client)
}

/// The agent's last "datapath ready" line.
fn last_ready(c: &Cluster) -> String {
    c.log()
        .lines()
        .rfind(|l| l.contains("datapath ready"))
        .unwrap_or_default()
        .to_string()
}

fn service_lines(c: &Cluster) -> Vec<Value> {
    c.enforcer
        .verdicts()
        .into_iter()
        .filter(|l| l["flow"]["destination_service"]["name"] == "web")
        .collect()
}

#[test]
fn a_cluster_ip_reaches_the_allowed_backends_and_never_a_denied_one() {
    let Some(c) = common::traffic::start(
        "svc",
        BLOCK,
        "services: ClusterIP",
        &[("shop.yaml", MANIFESTS)],
    ) else {
        return;
    };
    let (web0, web1, db0, client) = shop_pods(&c);
    let servers = [&web0, &web1, &db0].map(|p| serve_tcp(p, 8080));

    for vip in [VIP4, VIP6] {
        let (by, dropped) = spread(&c, &client, vip, 30);
        assert_eq!(
            by.keys().cloned().collect::<Vec<_>>(),
            vec!["shop/web-0".to_string(), "shop/web-1".to_string()],
            "{vip}: connections reach both front pods and only them: {by:?}\n{}",
            c.log()
        );
        assert!(
            dropped > 0,
            "{vip}: no connection was given db-0 in 30 tries ({by:?})"
        );
    }
    assert_eq!(
        servers[2].served(),
        0,
        "db-0 is denied through the service: nothing may reach it"
    );
    // Hairpin: a backend reaching itself through its own service, over both families
    // (web-0's egress is not isolated: every backend answers, itself included).
    for vip in [VIP4, VIP6] {
        let (by, dropped) = spread(&c, &web0, vip, 30);
        assert_eq!(dropped, 0, "hairpin {vip}: {by:?}\n{}", c.log());
        assert!(
            by.contains_key("shop/web-0"),
            "web-0 reached itself through {vip}: {by:?}"
        );
    }
    // A frontend without backends refuses at once (a reset, as kube-proxy's reject rule),
    // with its own reason in the log.
    let none = client
        .tcp_connect(SocketAddr::new("10.96.0.20".parse().unwrap(), 80), OK)
        .unwrap();
    assert!(matches!(none, TcpOutcome::Refused), "{none:?}");
    // UDP there gets an ICMP port unreachable: the socket's ECONNREFUSED, at once.
    let udp = palisade_testkit::node::udp_probe_in_netns(
        &client.netns_path,
        SocketAddr::new("10.96.0.20".parse().unwrap(), 53),
        b"anyone?",
        OK,
    )
    .unwrap();
    assert_eq!(
        udp,
        palisade_testkit::node::UdpOutcome::Refused,
        "{}",
        c.log()
    );

    // The verdict log names the service on every translated flow, with the backend's
    // addresses and the frontend the client used.
    std::thread::sleep(Duration::from_millis(500));
    let lines = service_lines(&c);
    let forwarded = lines
        .iter()
        .filter(|l| l["flow"]["verdict"] == "FORWARDED")
        .count();
    let dropped: Vec<&Value> = lines
        .iter()
        .filter(|l| l["flow"]["verdict"] == "DROPPED")
        .collect();
    assert!(forwarded > 0 && !dropped.is_empty(), "{lines:#?}");
    for l in &dropped {
        assert_eq!(l["flow"]["destination"]["pod_name"], "db-0");
        assert_eq!(l["flow"]["destination_service"]["namespace"], "shop");
        let fe = l["flow"]["extensions"]["value"]["service_frontend"]
            .as_str()
            .unwrap();
        assert!(fe == "10.96.0.10:80" || fe == "[fd00:96::10]:80", "{fe}");
    }
    // The real hubble reads the field: `--to-service` selects exactly the translated flows.
    match common::hubble::binary() {
        Ok(hubble) => {
            let (selected, _, stderr) = common::hubble::observe(
                &hubble,
                &c.enforcer.verdict_log(),
                &["--to-service", "shop/web"],
            );
            let want: std::collections::BTreeSet<String> = lines
                .iter()
                .filter_map(|l| l["flow"]["uuid"].as_str().map(str::to_string))
                .collect();
            assert!(!want.is_empty());
            assert_eq!(selected, want, "hubble --to-service shop/web: {stderr}");
        }
        Err(why) => palisade_testkit::privileged::skip_or_fail("hubble --to-service", &why),
    }
    let all = c.enforcer.verdicts();
    assert!(
        all.iter()
            .any(|l| l["flow"]["drop_reason_desc"] == "SERVICE_BACKEND_NOT_FOUND"),
        "the empty service's drop is in the log"
    );
}

#[test]
fn a_kept_connection_survives_a_backend_change_and_an_agent_restart() {
    let Some(mut c) = common::traffic::start(
        "svcrestart",
        BLOCK,
        "services: restart",
        &[("shop.yaml", MANIFESTS)],
    ) else {
        return;
    };
    let web0 = c.pod("shop", "web-0", 1, 10);
    let web1 = c.pod("shop", "web-1", 1, 11);
    let client = c.pod("shop", "client", 2, 1);
    for p in [&web0, &web1] {
        c.enforcer
            .register_with_ports(p, &[("app", "web"), ("tier", "front")], http())
            .unwrap();
    }
    c.register(&client, &[("app", "client")]);
    let _servers = [&web0, &web1].map(|p| serve_tcp(p, 8080));
    let dst = SocketAddr::new(VIP4.parse().unwrap(), 80);
    let mut sessions: Vec<_> = (0..8)
        .map(|_| client.tcp_session(dst, OK).unwrap())
        .collect();
    echo_all(&mut sessions, "before");
    c.enforcer.kill9();
    echo_all(&mut sessions, "while the agent is down");
    c.enforcer.spawn().expect("the agent restarts");
    echo_all(&mut sessions, "after the restart");
    // The restarted agent found the service maps as it would write them: not one write.
    let log = c.log();
    let ready: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("datapath ready"))
        .collect();
    assert!(
        ready
            .last()
            .is_some_and(|l| l.contains("maps.service_writes=0")),
        "the restart rewrote service maps: {ready:?}"
    );
    // A new backend: kept connections keep theirs.
    let web2 = c.pod("shop", "web-2", 1, 12);
    let _s2 = serve_tcp(&web2, 8080);
    // A registration returns once the maps (service maps included) say so.
    c.enforcer
        .register_with_ports(&web2, &[("app", "web"), ("tier", "front")], http())
        .unwrap();
    echo_all(&mut sessions, "after web-2 joined");
    let (by, dropped) = spread(&c, &client, VIP4, 30);
    assert_eq!(dropped, 0);
    assert!(
        by.contains_key("shop/web-2"),
        "new flows reach the new pod: {by:?}"
    );
    // A new Service alone: the agent plans that frontend only (no policy map is
    // recomputed), new flows to it reach the pods, and kept connections are untouched.
    c.write_policy(
        "a second service",
        "alt.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: alt, namespace: shop}\nspec:\n  \
         selector: {app: web}\n  clusterIPs: [10.96.0.30]\n  ports: [{port: 80, targetPort: http}]\n",
    );
    let log = c.log();
    let applied = log
        .lines()
        .rfind(|l| l.contains("policy revision applied"))
        .unwrap_or_default();
    assert!(
        applied.contains("sync.services_only=true")
            && applied.contains("maps.policy_writes=0")
            && applied.contains("maps.ipcache_writes=0")
            && !applied.contains("maps.service_writes=0"),
        "a Service change writes service maps only: {applied}"
    );
    let (by, dropped) = spread(&c, &client, "10.96.0.30", 30);
    assert_eq!(dropped, 0, "{by:?}");
    assert_eq!(
        by.len(),
        3,
        "the new service reaches all three pods: {by:?}"
    );
    echo_all(&mut sessions, "after a second service");
}

/// `web` as a NodePort service with an external IP; db-0 admits only the client pod, so a
/// host outside the node is denied there however it reaches the service.
const NODE_PORT: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  clusterIPs: [10.96.0.10, \"fd00:96::10\"]
  ipFamilies: [IPv4, IPv6]
  externalIPs: [203.0.113.10]
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: nothing, namespace: shop}
spec:
  type: NodePort
  selector: {app: nobody}
  clusterIPs: [10.96.0.20]
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30090}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {tier: data}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
";

/// Connects `n` times from the outside host to `dst`: which backend answered, and how many
/// attempts timed out.
fn spread_from(
    c: &Cluster,
    outside: &palisade_testkit::node::Outside,
    dst: SocketAddr,
    n: usize,
) -> (BTreeMap<String, usize>, usize) {
    spread_with(c, dst, n, || {
        palisade_testkit::node::tcp_connect_in_netns(
            &outside.netns_path,
            dst,
            Duration::from_secs(1),
        )
        .unwrap()
    })
}

#[test]
fn node_ports_and_external_ips_are_translated_on_the_uplink_and_policed_at_the_backend() {
    use palisade_testkit::node::{OUTSIDE_V4, UPLINK_NODE_V4, UPLINK_NODE_V6};
    let Some((mut c, outside)) = common::traffic::start_with_outside(
        "svcnodeport",
        BLOCK,
        "services: node ports from outside",
        &[("shop.yaml", NODE_PORT)],
        "uplinks: [uplink0]\n",
    ) else {
        return;
    };
    let (web0, web1, db0, client) = shop_pods(&c);
    let servers = [&web0, &web1, &db0].map(|p| serve_tcp(p, 8080));
    let ready = last_ready(&c);
    assert!(
        ready.contains("uplinks=\"uplink0(ifindex"),
        "the uplink is attached: {ready}"
    );

    // From outside, the node port on both node address families and the external IP: the
    // front pods answer; db-0, whose ingress admits only the client pod, never does.
    for dst in [
        SocketAddr::new(IpAddr::V4(UPLINK_NODE_V4), 30080),
        SocketAddr::new(IpAddr::V6(UPLINK_NODE_V6), 30080),
        SocketAddr::new("203.0.113.10".parse().unwrap(), 80),
    ] {
        let (by, dropped) = spread_from(&c, &outside, dst, 30);
        assert_eq!(
            by.keys().cloned().collect::<Vec<_>>(),
            vec!["shop/web-0".to_string(), "shop/web-1".to_string()],
            "{dst}: connections from outside reach both front pods and only them: {by:?}\n{}",
            c.log()
        );
        assert!(
            dropped > 0,
            "{dst}: no connection was given db-0 in 30 tries"
        );
    }
    assert_eq!(servers[2].served(), 0, "db-0 admits no one from outside");
    // A pod reaches the node port too (translated at its own veth); db-0 admits it.
    let dst = SocketAddr::new(IpAddr::V4(UPLINK_NODE_V4), 30080);
    let (by, dropped) = spread_with(&c, dst, 30, || client.tcp_connect(dst, OK).unwrap());
    assert_eq!(
        (by.len(), dropped),
        (3, 0),
        "the client pod reaches every backend: {by:?}"
    );
    // The node port's pick has no bearing on the ports the node itself listens on: a
    // node port without backends is refused from outside at once (a reset).
    let none = palisade_testkit::node::tcp_connect_in_netns(
        &outside.netns_path,
        SocketAddr::new(IpAddr::V4(UPLINK_NODE_V4), 30090),
        OK,
    )
    .unwrap();
    assert!(matches!(none, TcpOutcome::Refused), "{none:?}");

    // The verdict log: the backend's decision on a flow from outside names the service,
    // with the outside host as its source.
    std::thread::sleep(Duration::from_millis(500));
    let lines = service_lines(&c);
    let from_outside: Vec<&Value> = lines
        .iter()
        .filter(|l| l["flow"]["IP"]["source"] == OUTSIDE_V4.to_string())
        .collect();
    assert!(
        from_outside
            .iter()
            .any(|l| l["flow"]["verdict"] == "FORWARDED"),
        "{lines:#?}"
    );
    let denied: Vec<&&Value> = from_outside
        .iter()
        .filter(|l| l["flow"]["verdict"] == "DROPPED")
        .collect();
    assert!(!denied.is_empty(), "{from_outside:#?}");
    for l in denied {
        assert_eq!(l["flow"]["destination"]["pod_name"], "db-0");
        assert_eq!(l["flow"]["drop_reason_desc"], "POLICY_DENIED");
    }

    // Kept connections from outside survive the agent's SIGKILL and restart, and the
    // restarted agent adopts the uplink's links.
    let dst = SocketAddr::new(IpAddr::V4(UPLINK_NODE_V4), 30080);
    // (A third of the attempts pick db-0 and are dropped: those are not kept.)
    let sessions: Vec<_> = (0..30)
        .filter_map(|_| {
            palisade_testkit::node::tcp_session_in_netns(
                &outside.netns_path,
                dst,
                Duration::from_secs(1),
            )
            .ok()
        })
        .take(6)
        .collect();
    let mut sessions = sessions;
    assert_eq!(sessions.len(), 6, "{}", c.log());
    echo_all(&mut sessions, "before");
    c.enforcer.kill9();
    echo_all(&mut sessions, "while the agent is down");
    c.enforcer.spawn().expect("the agent restarts");
    echo_all(&mut sessions, "after the restart");
    let ready = last_ready(&c);
    assert!(
        ready.contains("maps.service_writes=0") && ready.contains("uplinks=\"uplink0(ifindex"),
        "the restart adopts the uplink and its maps: {ready}"
    );
}

/// `internalTrafficPolicy: Local` with EndpointSlices naming two nodes: from this node
/// (the agent's `node_name`, `local-node` in the harness), the cluster IP reaches only the
/// backend the slice places here; the other one is never picked.
#[test]
fn a_local_traffic_policy_keeps_new_flows_on_this_nodes_backends() {
    let ip = |host: u8| format!("10.{BLOCK}.1.{host}");
    let manifests = format!(
        "\
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIPs: [10.96.0.50]
  internalTrafficPolicy: Local
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- {{addresses: [{}], nodeName: local-node}}
- {{addresses: [{}], nodeName: another-node}}
",
        ip(10),
        ip(11)
    );
    let Some(c) = common::traffic::start(
        "svclocal",
        BLOCK,
        "services: internalTrafficPolicy Local",
        &[("shop.yaml", manifests.as_str())],
    ) else {
        return;
    };
    let web0 = c.pod("shop", "web-0", 1, 10);
    let web1 = c.pod("shop", "web-1", 1, 11);
    let client = c.pod("shop", "client", 2, 1);
    c.register(&web0, &[("app", "web")]);
    c.register(&web1, &[("app", "web")]);
    c.register(&client, &[("app", "client")]);
    let _servers = [&web0, &web1].map(|p| serve_tcp(p, 8080));
    // web-1 is reachable directly: only the policy of the service keeps flows off it.
    assert!(matches!(
        client
            .tcp_connect(SocketAddr::new(ip(11).parse().unwrap(), 8080), OK)
            .unwrap(),
        TcpOutcome::Connected { .. }
    ));
    let dst = SocketAddr::new("10.96.0.50".parse().unwrap(), 80);
    let (by, dropped) = spread_with(&c, dst, 30, || client.tcp_connect(dst, OK).unwrap());
    assert_eq!(dropped, 0, "{by:?}");
    assert_eq!(
        by.keys().cloned().collect::<Vec<_>>(),
        ["shop/web-0".to_string()],
        "only this node's backend: {by:?}"
    );
}

/// Session affinity with real connections, and a backend removed: every connection of the
/// client reaches one backend; once that backend's pod is gone (deregistered), new
/// connections never reach it, and still all reach one backend.
#[test]
fn session_affinity_holds_and_a_removed_backend_gets_no_new_flows() {
    const AFFINITY: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIPs: [10.96.0.70]
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: http}]
";
    let Some(c) = common::traffic::start(
        "svcaffinity",
        BLOCK,
        "services: session affinity and backend removal",
        &[("shop.yaml", AFFINITY)],
    ) else {
        return;
    };
    let pods: Vec<Pod> = (0..3)
        .map(|i| c.pod("shop", &format!("web-{i}"), 1, 10 + i))
        .collect();
    for p in &pods {
        c.enforcer
            .register_with_ports(p, &[("app", "web")], http())
            .unwrap();
    }
    let client = c.pod("shop", "client", 2, 1);
    c.register(&client, &[("app", "client")]);
    let _servers: Vec<_> = pods.iter().map(|p| serve_tcp(p, 8080)).collect();
    let vip = "10.96.0.70";
    let (by, dropped) = spread(&c, &client, vip, 20);
    assert_eq!(
        (by.len(), dropped),
        (1, 0),
        "one backend for the client: {by:?}"
    );
    let chosen = by.keys().next().unwrap().clone();
    // The chosen pod leaves: its registration (and so the service's backend) is gone.
    match c
        .enforcer
        .request(&palisade_api::Request::Deregister {
            container_id: chosen.clone(),
        })
        .unwrap()
    {
        palisade_api::Response::Deregistered { existed } => assert!(existed, "{chosen}"),
        other => panic!("{other:?}\n{}", c.log()),
    }
    let (by, dropped) = spread(&c, &client, vip, 20);
    assert_eq!(dropped, 0, "{by:?}\n{}", c.log());
    assert!(!by.contains_key(&chosen), "{chosen} is gone: {by:?}");
    assert_eq!(by.len(), 1, "still one backend for the client: {by:?}");
}
