#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! End to end through the in-process L7 proxy: real curl in one pod, real nginx in another,
//! the real `palisade-enforcer run` redirecting the connection at the client's host veth
//! (tc mark → local route → `sk_lookup` → the proxy's listener) and the proxy connecting
//! upstream from the client's address. Each request is judged by the HTTP rules and logged.
//!
//! Privileged tier (root, namespaces, BPF, curl and nginx): under `CI=true` a host that cannot
//! run these fails them; elsewhere they print `skipped: ...`.

use std::time::Duration;

use palisade_testkit::node::Pod;
use serde_json::Value;

mod common;

use common::traffic::{Cluster, DENY};

/// This file's address block: `10.247.x.x`, `fd00:10:247::/48`.
const BLOCK: u8 = 247;

const TIMEOUT: Duration = Duration::from_secs(5);

const NAMESPACE: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: production}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: production}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// The backend's ingress: the frontend may GET /api/v1/data, and nothing under /api/v1/admin
/// whatever else allows it.
const INGRESS_L7: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-frontend-policy, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /api/v1/data}
";

fn start(what: &str, manifests: &[(&str, &str)]) -> Option<Cluster> {
    common::traffic::start("l7e2e", BLOCK, what, manifests)
}

/// `curl -X method url` from a pod: the HTTP status, 0 when no response came (with curl's
/// exit code).
fn curl(pod: &Pod, method: &str, url: &str, timeout: Duration) -> (u16, i32) {
    let max = format!("{:.3}", timeout.as_secs_f64());
    let out = pod
        .run(
            &[
                "curl",
                "-s",
                "-g",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                &max,
                "-X",
                method,
                url,
            ],
            timeout + Duration::from_secs(2),
        )
        .expect("curl runs");
    let status = out.stdout.trim().parse().unwrap_or(0);
    (status, out.status.code().unwrap_or(-1))
}

fn l7_lines(c: &Cluster) -> Vec<Value> {
    c.enforcer
        .verdicts()
        .into_iter()
        .filter(|v| v["flow"]["Type"] == "L7")
        .collect()
}

#[test]
fn ingress_http_rules_are_enforced_on_live_traffic_and_logged() {
    let Some(c) = start(
        "l7 e2e ingress rules",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", INGRESS_L7)],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 1, 10);
    let backend = c.pod("production", "backend", 1, 11);
    let other = c.pod("production", "other", 1, 12);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    c.register(&other, &[("app", "other")]);
    let _nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let url = |path: &str| format!("http://{}:8080{path}", backend.ipv4);

    let (get, exit) = curl(&frontend, "GET", &url("/api/v1/data"), TIMEOUT);
    if let Ok(s) = std::env::var("DEBUG_SLEEP") {
        eprintln!(
            "node netns {} frontend {:?}",
            c.node.netns_name(),
            frontend.ipv4
        );
        std::thread::sleep(Duration::from_secs(s.parse().unwrap()));
    }
    assert_eq!(
        get,
        200,
        "GET /api/v1/data from the frontend (curl exit {exit})\nagent log:\n{}",
        c.log()
    );
    let (post, _) = curl(&frontend, "POST", &url("/api/v1/data"), TIMEOUT);
    assert_eq!(post, 403, "POST is not allowed by any HTTP rule");
    let (admin, _) = curl(&frontend, "GET", &url("/admin"), TIMEOUT);
    assert_eq!(admin, 403, "GET /admin is not allowed");
    let (from_other, exit) = curl(&other, "GET", &url("/api/v1/data"), DENY * 2);
    assert_eq!(
        (from_other, exit),
        (0, 28),
        "a pod no rule admits gets no TCP connection at all"
    );

    // One L7 record per request, attributed to the backend's ingress policy.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let l = l7_lines(&c);
        if l.len() >= 3 || std::time::Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let codes: Vec<(String, u64)> = lines
        .iter()
        .map(|v| {
            (
                v["flow"]["l7"]["http"]["method"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["flow"]["l7"]["http"]["code"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ("GET".to_string(), 200),
            ("POST".to_string(), 403),
            ("GET".to_string(), 403)
        ],
        "{lines:#?}"
    );
    assert_eq!(
        lines[0]["flow"]["ingress_allowed_by"][0]["name"],
        "l7-frontend-policy"
    );
    assert_eq!(lines[1]["flow"]["verdict"], "DROPPED");
    assert_eq!(
        lines[0]["flow"]["IP"]["source"].as_str(),
        Some(backend.ipv4.to_string().as_str())
    );
}

/// The client's egress HTTP rules and the server's ingress HTTP rules on one connection:
/// one proxy pass applies both (egress first), and the record names both policies.
const BOTH_SIDES: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: \"/api/.*\"}
";

#[test]
fn egress_and_ingress_http_rules_apply_together_and_both_are_attributed() {
    let Some(c) = start(
        "l7 e2e both sides",
        &[
            ("00-ns.yaml", NAMESPACE),
            ("20-l7.yaml", INGRESS_L7),
            ("30-egress.yaml", BOTH_SIDES),
        ],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 2, 10);
    let backend = c.pod("production", "backend", 2, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let _nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let url = |path: &str| format!("http://{}:8080{path}", backend.ipv4);

    // Both allow.
    let (s, exit) = curl(&frontend, "GET", &url("/api/v1/data"), TIMEOUT);
    assert_eq!(s, 200, "curl exit {exit}\nagent log:\n{}", c.log());
    // Egress allows /api/.*, ingress only /api/v1/data.
    assert_eq!(
        curl(&frontend, "GET", &url("/api/v1/other"), TIMEOUT).0,
        403
    );
    // Egress refuses first.
    assert_eq!(curl(&frontend, "GET", &url("/metrics"), TIMEOUT).0, 403);
    // Over IPv6 too.
    let url6 = format!("http://[{}]:8080/api/v1/data", backend.ipv6.unwrap());
    assert_eq!(curl(&frontend, "GET", &url6, TIMEOUT).0, 200, "IPv6");

    let lines = wait_l7(&c, 4);
    let f = |i: usize| &lines[i]["flow"];
    assert_eq!(f(0)["egress_allowed_by"][0]["name"], "frontend-egress");
    assert_eq!(f(0)["ingress_allowed_by"][0]["name"], "l7-frontend-policy");
    assert_eq!(f(1)["egress_allowed_by"][0]["name"], "frontend-egress");
    assert_eq!(
        f(1)["traffic_direction"],
        "INGRESS",
        "the ingress side refused"
    );
    assert_eq!(
        f(2)["traffic_direction"],
        "EGRESS",
        "the egress side refused"
    );
    assert!(f(2)["ingress_allowed_by"].is_null(), "ingress never asked");
    assert_eq!(f(3)["IP"]["ipVersion"], "IPv6");
}

/// A kept-alive connection: the request after a policy change is judged by the new rules.
#[test]
fn the_next_request_of_a_kept_alive_connection_is_judged_by_the_new_policy() {
    let Some(c) = start(
        "l7 e2e keep-alive policy change",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", INGRESS_L7)],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 3, 10);
    let backend = c.pod("production", "backend", 3, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let _nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    // One connection, two requests 4 s apart; the policy changes in between.
    let script = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('{}', 8080, timeout=5)\n\
         for i in range(2):\n\
         \x20   c.request('GET', '/api/v1/data')\n\
         \x20   port = c.sock.getsockname()[1]\n\
         \x20   r = c.getresponse(); r.read()\n\
         \x20   print(r.status, port, flush=True)\n\
         \x20   time.sleep(4)\n",
        backend.ipv4
    );
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| {
            frontend
                .run(&["python3", "-c", &script], Duration::from_secs(20))
                .expect("python3 runs")
        });
        std::thread::sleep(Duration::from_millis(1500));
        c.write_policy(
            "GET /api/v1/data is no longer allowed",
            "20-l7.yaml",
            &INGRESS_L7.replace("path: /api/v1/data", "path: /api/v2/data"),
        );
        client.join().unwrap()
    });
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}\nagent log:\n{}", c.log());
    let (first, port1) = lines[0].split_once(' ').unwrap();
    let (second, port2) = lines[1].split_once(' ').unwrap();
    assert_eq!(port1, port2, "one connection for both requests");
    assert_eq!((first, second), ("200", "403"), "{out:?}");
}

fn wait_l7(c: &Cluster, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let l = l7_lines(c);
        if l.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(l.len(), n, "L7 records: {l:#?}");
            return l;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
