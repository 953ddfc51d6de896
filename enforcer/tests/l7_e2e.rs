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

/// The backend's ingress: the frontend may GET /api/v1/data and nothing else; no other pod
/// gets a connection.
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
    curl_in(&pod.netns, method, url, timeout)
}

/// [`curl`] from any namespace of the node (the outside host's).
fn curl_in(netns: &str, method: &str, url: &str, timeout: Duration) -> (u16, i32) {
    let max = format!("{:.3}", timeout.as_secs_f64());
    let out = palisade_testkit::node::run_command_in_netns(
        netns,
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
    let statuses = two_requests_on_one_connection(&c, &frontend, &backend, || {
        c.write_policy(
            "GET /api/v1/data is no longer allowed",
            "20-l7.yaml",
            &INGRESS_L7.replace("path: /api/v1/data", "path: /api/v2/data"),
        );
    });
    assert_eq!(statuses, ("200".into(), "403".into()));
}

/// `GET /api/v1/data` twice on one kept-alive connection from `client` to `server:8080`,
/// 4 s apart, `between` running in the gap: the two outcomes (status, or `none` when no
/// answer came), after checking that both went on one connection.
fn two_requests_on_one_connection(
    c: &Cluster,
    client: &Pod,
    server: &Pod,
    between: impl FnOnce(),
) -> (String, String) {
    let script = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('{}', 8080, timeout=5)\n\
         for i in range(2):\n\
         \x20   try:\n\
         \x20       c.request('GET', '/api/v1/data')\n\
         \x20       port = c.sock.getsockname()[1]\n\
         \x20       r = c.getresponse(); r.read()\n\
         \x20       print(r.status, port, flush=True)\n\
         \x20   except OSError:\n\
         \x20       print('none', port, flush=True)\n\
         \x20   time.sleep(4)\n",
        server.ipv4
    );
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| {
            client
                .run(&["python3", "-c", &script], Duration::from_secs(20))
                .expect("python3 runs")
        });
        std::thread::sleep(Duration::from_millis(1500));
        between();
        run.join().unwrap()
    });
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}\nagent log:\n{}", c.log());
    let (first, port1) = lines[0].split_once(' ').unwrap();
    let (second, port2) = lines[1].split_once(' ').unwrap();
    assert_eq!(port1, port2, "one connection for both requests: {out:?}");
    (first.to_string(), second.to_string())
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

/// What reached nginx: its access log's request lines (`METHOD target`).
fn access_log(nginx: &palisade_testkit::node::NginxGuard) -> Vec<String> {
    std::fs::read_to_string(nginx.dir().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('"').nth(1))
        .map(|r| r.rsplit_once(' ').map_or(r, |(m, _)| m).to_string())
        .collect()
}

/// Sends `bytes` on one TCP connection from `pod` and returns everything the other side
/// answered before closing (or within 3 s).
fn raw_exchange(pod: &Pod, dst: std::net::SocketAddr, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        "import socket, sys\n\
         s = socket.create_connection(('{}', {}), timeout=3)\n\
         s.sendall(bytes.fromhex('{hex}'))\n\
         out = b''\n\
         try:\n\
         \x20   while True:\n\
         \x20       d = s.recv(65536)\n\
         \x20       if not d: break\n\
         \x20       out += d\n\
         except socket.timeout:\n\
         \x20   pass\n\
         sys.stdout.write(out.decode('latin-1'))\n",
        dst.ip(),
        dst.port()
    );
    pod.run(&["python3", "-c", &script], Duration::from_secs(8))
        .expect("python3 runs")
        .stdout
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|s| s.get(..3)?.parse().ok())
        .collect()
}

/// Pipelining through the real redirect: one verdict per request, in order; the first deny
/// answers 403 with `Connection: close` and nothing after it reaches the server. Then the
/// smuggling vectors over real sockets: each refused, none reaches the server.
#[test]
fn pipelined_and_smuggled_requests_through_the_redirect() {
    let Some(c) = start(
        "l7 e2e pipelining and smuggling",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", INGRESS_L7)],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 4, 10);
    let backend = c.pod("production", "backend", 4, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let dst = std::net::SocketAddr::new(backend.ipv4.into(), 8080);

    let get = "GET /api/v1/data HTTP/1.1\r\nHost: backend\r\n\r\n";
    let pipelined = format!(
        "{get}POST /api/v1/data HTTP/1.1\r\nHost: backend\r\nContent-Length: 0\r\n\r\n{get}"
    );
    let answer = raw_exchange(&frontend, dst, pipelined.as_bytes());
    assert_eq!(statuses(&answer), vec![200, 403], "{answer}\n{}", c.log());
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(access_log(&nginx), vec!["GET /api/v1/data"]);

    // Each vector must be refused by the proxy; none may reach nginx.
    let vectors: &[(&str, &str)] = &[
        (
            "CL and TE with a request smuggled behind",
            "GET /api/v1/data HTTP/1.1\r\nHost: b\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /api/v1/data HTTP/1.1\r\nHost: b\r\n\r\n",
        ),
        (
            "two different Content-Length",
            "GET /api/v1/data HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "transfer-coding list",
            "GET /api/v1/data HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            "GET /api/v1/data HTTP/1.1\r\nHost: b\r\nX-A: 1\r\n 2\r\n\r\n",
        ),
        ("bare LF", "GET /api/v1/data HTTP/1.1\nHost: b\n\n"),
        (
            "NUL in a header",
            "GET /api/v1/data HTTP/1.1\r\nHost: b\r\nX-A: a\0b\r\n\r\n",
        ),
        (
            "encoded slash",
            "GET /api%2Fv1/data HTTP/1.1\r\nHost: b\r\n\r\n",
        ),
        (
            "h2c upgrade",
            "GET /api/v1/data HTTP/1.1\r\nHost: b\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        ),
        ("HTTP/2 prior knowledge", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        (
            "oversized chunk size",
            "POST /api/v1/data HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n",
        ),
    ];
    // A TLS ClientHello on a port with HTTP rules: the rules cannot see inside, refused.
    let hello = b"\x16\x03\x01\x00\x2f\x01\x00\x00\x2b\x03\x03abcdefghijklmnopqrstuvwxyz012345\x00\x00\x02\x13\x01\x01\x00";
    let answer = raw_exchange(&frontend, dst, hello);
    assert_eq!(statuses(&answer), vec![400], "TLS: {answer:?}");
    for (what, bytes) in vectors {
        let answer = raw_exchange(&frontend, dst, bytes.as_bytes());
        let st = statuses(&answer);
        assert!(
            st.len() == 1 && [400, 403, 501].contains(&st[0]),
            "{what}: answered {answer:?}"
        );
    }
    assert_eq!(
        access_log(&nginx),
        vec!["GET /api/v1/data"],
        "no smuggling vector reached the server"
    );
}

/// Reliability row 19: one identity may hold `l7_proxy_connections_per_identity` proxied
/// connections; more are closed at accept, and other identities are still served.
#[test]
fn connections_over_the_per_identity_cap_are_closed_and_others_are_served() {
    let both = INGRESS_L7.replace(
        "fromEndpoints: [{matchLabels: {app: frontend}}]",
        "fromEndpoints: [{matchLabels: {app: frontend}}, {matchLabels: {app: tool}}]",
    );
    let Some(c) = common::traffic::start_with_config(
        "l7e2e",
        BLOCK,
        "l7 e2e per-identity cap",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", &both)],
        Some("l7_proxy_connections_per_identity: 2\n"),
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 5, 10);
    let backend = c.pod("production", "backend", 5, 11);
    let tool = c.pod("production", "tool", 5, 12);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    c.register(&tool, &[("app", "tool")]);
    let _nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let url = format!("http://{}:8080/api/v1/data", backend.ipv4);
    // The frontend holds two idle connections.
    let hold = format!(
        "import socket, time\n\
         s = [socket.create_connection(('{}', 8080)) for _ in range(2)]\n\
         time.sleep(8)\n",
        backend.ipv4
    );
    let _holder = frontend
        .spawn(&["python3", "-c", &hold])
        .expect("python3 runs");
    std::thread::sleep(Duration::from_millis(1500));
    let (third, exit) = curl(&frontend, "GET", &url, TIMEOUT);
    assert_eq!(
        third, 0,
        "a third connection of the frontend is closed unanswered (curl exit {exit})"
    );
    assert_eq!(curl(&tool, "GET", &url, TIMEOUT).0, 200, "another identity");
    assert!(
        c.log().contains("holds every connection slot"),
        "the refusal is logged:\n{}",
        c.log()
    );
    let metrics = scrape(&c);
    assert!(
        metrics.contains("palisade_l7_connections_over_cap_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_l7_requests_total 1"),
        "{metrics}"
    );
}

/// The agent's metrics (Prometheus text) from inside its node namespace.
fn scrape(c: &Cluster) -> String {
    use std::io::{Read, Write};
    c.node
        .run_in(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9963").unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .unwrap()
}

/// The agent killed and restarted under L7 traffic: no request is forwarded without being
/// judged (POSTs, which the rules deny, never reach the server), and GETs are served again
/// once the new agent's proxy is ready.
#[test]
fn sigkill_and_restart_under_l7_traffic_forward_nothing_unjudged() {
    let Some(mut c) = start(
        "l7 e2e sigkill",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", INGRESS_L7)],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 6, 10);
    let backend = c.pod("production", "backend", 6, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let url = |p: &str| format!("http://{}:8080{p}", backend.ipv4);
    assert_eq!(curl(&frontend, "GET", &url("/api/v1/data"), TIMEOUT).0, 200);

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (posts, answered) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let (mut sent, mut answered) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (st, _) = curl(
                    &frontend,
                    "POST",
                    &url("/api/v1/data"),
                    Duration::from_secs(1),
                );
                sent += 1;
                if st != 0 {
                    assert_eq!(st, 403, "a POST answered otherwise than 403");
                    answered += 1;
                }
            }
            (sent, answered)
        });
        std::thread::sleep(Duration::from_millis(800));
        c.enforcer.kill9();
        std::thread::sleep(Duration::from_millis(1500));
        c.enforcer.spawn().expect("the agent restarts");
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap()
    });
    assert!(
        posts > 3 && answered > 0,
        "{posts} POSTs sent, {answered} answered"
    );
    assert!(
        !access_log(&nginx).iter().any(|r| r.starts_with("POST")),
        "a POST reached the server: {:?}",
        access_log(&nginx)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = curl(
            &frontend,
            "GET",
            &url("/api/v1/data"),
            Duration::from_secs(2),
        );
        if st == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET not served after the restart (last {st})\n{}",
            c.log()
        );
    }
}

/// A PalisadeNetworkPolicy in audit mode with HTTP rules, on a backend no enforced policy
/// inspects: every request is forwarded; the ones its rules would refuse are logged as AUDIT
/// naming it.
const AUDIT_L7: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: production}
---
apiVersion: policy.palisade.dev/v1alpha1
kind: PalisadeNetworkPolicy
metadata: {name: audit-http, namespace: production}
spec:
  podSelector: {matchLabels: {app: backend}}
  mode: Audit
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports:
    - port: 8080
      http:
      - {method: GET, path: \"/api/.*\"}
";

#[test]
fn audit_mode_http_rules_forward_every_request_and_log_what_they_would_deny() {
    let Some(c) = start("l7 e2e audit", &[("00-audit.yaml", AUDIT_L7)]) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 7, 10);
    let backend = c.pod("production", "backend", 7, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let url = |p: &str| format!("http://{}:8080{p}", backend.ipv4);
    let (get, exit) = curl(&frontend, "GET", &url("/api/v1/data"), TIMEOUT);
    assert_eq!(get, 200, "curl exit {exit}\n{}", c.log());
    assert_eq!(
        curl(&frontend, "POST", &url("/api/v1/data"), TIMEOUT).0,
        200
    );
    assert_eq!(
        access_log(&nginx),
        vec!["GET /api/v1/data", "POST /api/v1/data"],
        "both forwarded"
    );
    let lines = wait_l7(&c, 2);
    assert_eq!(lines[0]["flow"]["verdict"], "FORWARDED", "{lines:#?}");
    let post = &lines[1]["flow"];
    assert_eq!(post["verdict"], "AUDIT", "{post:#}");
    assert_eq!(post["l7"]["http"]["code"], 200);
    assert_eq!(post["ingress_denied_by"][0]["name"], "audit-http");
    assert!(
        post["Summary"]
            .as_str()
            .unwrap()
            .contains("audit: would be denied"),
        "{post:#}"
    );
}

/// A kept-alive proxied connection whose client loses its egress in a policy change: nothing
/// more reaches the server. The datapath re-decides the client's connection to the proxy at
/// its next packet (revision re-check) and drops it; the proxy, whose upstream leg does not
/// pass the client's `from_pod`, also re-takes that decision per request
/// (`view::ConnectionRules::judge`).
#[test]
fn a_kept_alive_connection_stops_when_the_clients_egress_is_revoked() {
    let Some(c) = start(
        "l7 e2e egress revoked",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", INGRESS_L7)],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 8, 10);
    let backend = c.pod("production", "backend", 8, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let (first, second) = two_requests_on_one_connection(&c, &frontend, &backend, || {
        c.write_policy(
            "the frontend's egress is isolated",
            "30-egress-deny.yaml",
            "apiVersion: networking.k8s.io/v1\n\
             kind: NetworkPolicy\n\
             metadata: {name: frontend-no-egress, namespace: production}\n\
             spec:\n  podSelector: {matchLabels: {app: frontend}}\n  policyTypes: [Egress]\n",
        );
    });
    assert_eq!(first, "200");
    // The datapath re-decides the client's tracked connection at its next packet and cuts
    // it (the proxy would refuse the request too, were it to arrive): no answer, or 403.
    assert!(["none", "403"].contains(&second.as_str()), "{second}");
    assert_eq!(
        access_log(&nginx),
        vec!["GET /api/v1/data"],
        "nothing forwarded after the revocation"
    );
}

/// The proxy cannot start (its port is taken in the node's namespace): the agent says so in
/// `status` and keeps enforcing L3/L4, and a flow an HTTP rule governs gets no connection at
/// all — nothing reaches the server unjudged.
#[test]
fn a_proxy_that_cannot_start_leaves_http_rule_flows_dropped_and_says_why() {
    let Some(node) = palisade_testkit::node::Node::for_test("l7e2e", "l7 e2e proxy start failure")
    else {
        return;
    };
    // Something else listens on the proxy's port first.
    let squatter = std::process::Command::new("ip")
        .args(["netns", "exec", node.netns_name(), "python3", "-c"])
        .arg(
            "import socket, time\n\
             s = socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.bind(('::', 15099)); s.listen()\n\
             time.sleep(60)\n",
        )
        .spawn()
        .expect("python3 runs");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _squatter = Kill(squatter);
    let listening = node
        .run_in(|| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect("127.0.0.1:15099").is_err() {
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            true
        })
        .unwrap();
    assert!(listening, "the squatter listens");
    let src = std::env::temp_dir().join(format!("palisade-l7e2e-squat-{}", node.tag()));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("00-ns.yaml"), NAMESPACE).unwrap();
    std::fs::write(src.join("20-l7.yaml"), INGRESS_L7).unwrap();
    let config = src.with_extension("config.yaml");
    std::fs::write(&config, "l7_proxy_port: 15099\n").unwrap();
    let enforcer = palisade_testkit::harness::Enforcer::start_with_config(
        std::path::Path::new(env!("CARGO_BIN_EXE_palisade-enforcer")),
        &node,
        &src,
        true,
        Some(&config),
    )
    .expect("the agent starts without its proxy");
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_file(&config);
    let c = Cluster {
        enforcer,
        node,
        block: BLOCK,
    };
    let frontend = c.pod("production", "frontend", 9, 10);
    let backend = c.pod("production", "backend", 9, 11);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let warnings = match c.enforcer.request(&palisade_api::Request::Status).unwrap() {
        palisade_api::Response::Status { warnings, .. } => warnings,
        other => panic!("status: {other:?}"),
    };
    assert!(
        warnings.iter().any(|w| w.contains("L7 proxy not running")),
        "{warnings:?}"
    );
    let (status, exit) = curl(
        &frontend,
        "GET",
        &format!("http://{}:8080/api/v1/data", backend.ipv4),
        DENY * 2,
    );
    assert_eq!(
        (status, exit),
        (0, 28),
        "no connection while no proxy judges"
    );
    assert!(access_log(&nginx).is_empty(), "nothing reached the server");
    assert!(c.log().contains("L7 proxy not started"), "{}", c.log());
    // The verdict log names the drop's reason.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c
        .enforcer
        .verdicts()
        .iter()
        .any(|v| v["flow"]["drop_reason_desc"] == "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no DROP_PROXY_UNAVAILABLE line: {:#?}",
            c.enforcer.verdicts()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The backend's ingress HTTP rules for hosts outside the cluster, and a node port to it.
const FROM_OUTSIDE: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public-api, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /public/.*}
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: production}
spec:
  type: NodePort
  selector: {app: backend}
  clusterIP: 10.96.0.47
  ports: [{port: 80, targetPort: 8080, nodePort: 30047}]
";

/// Ingress HTTP rules apply to traffic from outside the node: the uplink hands a new TCP
/// flow to a pod with ingress HTTP rules to the proxy (to the pod's address directly, and
/// through a node port), which judges each request with the client's identity (world).
#[test]
fn ingress_http_rules_apply_to_traffic_from_outside_the_node() {
    use palisade_testkit::node::UPLINK_NODE_V4;
    let Some((c, outside)) = common::traffic::start_with_outside(
        "l7uplink",
        BLOCK,
        "l7 e2e from outside",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", FROM_OUTSIDE)],
        "uplinks: [uplink0]\n",
    ) else {
        return;
    };
    let backend = c.pod("production", "backend", 1, 11);
    c.register(&backend, &[("app", "backend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    for base in [
        format!("http://{}:8080", backend.ipv4),
        format!("http://{UPLINK_NODE_V4}:30047"),
    ] {
        let (get, exit) = curl_in(&outside.netns, "GET", &format!("{base}/public/x"), TIMEOUT);
        assert_eq!(
            get,
            200,
            "GET {base}/public/x from outside (curl exit {exit})\nagent log:\n{}",
            c.log()
        );
        let (post, _) = curl_in(&outside.netns, "POST", &format!("{base}/public/x"), TIMEOUT);
        assert_eq!(post, 403, "{base}: POST is not allowed by any HTTP rule");
        let (private, _) = curl_in(&outside.netns, "GET", &format!("{base}/private"), TIMEOUT);
        assert_eq!(private, 403, "{base}: GET /private is not allowed");
    }
    // Only the allowed requests reached nginx.
    let served = access_log(&nginx);
    assert_eq!(served.len(), 2, "{served:?}");
    assert!(served.iter().all(|l| l == "GET /public/x"), "{served:?}");
    // One L7 record per request, from the outside host, attributed to the rule.
    let lines = wait_l7(&c, 6);
    // The redirect itself is recorded where it was decided: at the uplink, from the world.
    let redirected: Vec<Value> = c
        .enforcer
        .verdicts()
        .into_iter()
        .filter(|l| l["flow"]["Type"] == "L3_L4" && l["flow"]["verdict"] == "REDIRECTED")
        .collect();
    assert_eq!(redirected.len(), 6, "one per connection: {redirected:#?}");
    for l in &redirected {
        assert_eq!(l["flow"]["interface"]["name"], "uplink0", "{l}");
        assert_eq!(l["flow"]["source"]["labels"][0], "reserved:world-ipv4");
        assert_eq!(l["flow"]["ingress_allowed_by"][0]["name"], "public-api");
    }
    assert_eq!(
        redirected
            .iter()
            .filter(|l| l["flow"]["destination_service"]["name"] == "backend")
            .count(),
        3,
        "the node port's connections name the service"
    );
    let outside_addr = palisade_testkit::node::OUTSIDE_V4.to_string();
    assert!(
        lines.iter().all(|l| {
            l["flow"]["IP"]["source"] == outside_addr.as_str()
                || l["flow"]["IP"]["destination"] == outside_addr.as_str()
        }),
        "{lines:#?}"
    );
    let allowed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["flow"]["l7"]["http"]["code"] == 200)
        .collect();
    assert_eq!(allowed.len(), 2);
    for l in allowed {
        assert_eq!(l["flow"]["ingress_allowed_by"][0]["name"], "public-api");
    }
}

/// A metric's value in the agent's scrape (0 when absent).
fn metric(c: &Cluster, name: &str) -> u64 {
    scrape(c)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Established connections nginx in `server` holds from `client`'s address.
fn upstreams_from(server: &Pod, client: &Pod) -> usize {
    let out = server
        .run(
            &["ss", "-Htn", "state", "established", "( sport = :8080 )"],
            TIMEOUT,
        )
        .expect("ss runs");
    out.stdout
        .lines()
        .filter(|l| l.contains(&format!("{}:", client.ipv4)))
        .count()
}

/// A client that opens a new connection per request (curl) is served over one upstream
/// connection, kept by the proxy between its connections: nginx holds one connection from
/// the client's address, and every request is still judged and logged. Another client
/// address gets its own; a policy change retires the kept one (the next request opens a new
/// connection), and an idle one is closed after `l7_upstream_idle_secs`.
#[test]
fn a_clients_new_connections_share_a_kept_upstream_connection_until_the_policy_changes() {
    let Some(c) = start(
        "l7 e2e kept upstream connections",
        &[("00-ns.yaml", NAMESPACE), ("20-l7.yaml", INGRESS_L7)],
    ) else {
        return;
    };
    let frontend = c.pod("production", "frontend", 6, 10);
    let backend = c.pod("production", "backend", 6, 11);
    let other = c.pod("production", "frontend-2", 6, 12);
    c.register(&frontend, &[("app", "frontend")]);
    c.register(&backend, &[("app", "backend")]);
    c.register(&other, &[("app", "frontend")]);
    let nginx = backend.start_nginx(8080).expect("nginx in the backend pod");
    let url = format!("http://{}:8080/api/v1/data", backend.ipv4);
    let settle = || std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_eq!(curl(&frontend, "GET", &url, TIMEOUT).0, 200);
        settle();
    }
    assert_eq!(curl(&frontend, "POST", &url, TIMEOUT).0, 403);
    settle();
    assert_eq!(
        (
            metric(&c, "palisade_l7_upstream_connections_opened_total"),
            metric(&c, "palisade_l7_upstream_connections_reused_total")
        ),
        (1, 2),
        "three GETs on three client connections, one upstream connection"
    );
    assert_eq!(upstreams_from(&backend, &frontend), 1);
    assert_eq!(access_log(&nginx).len(), 3, "the POST was not forwarded");
    // Another address of the same identity: its own upstream connection.
    assert_eq!(curl(&other, "GET", &url, TIMEOUT).0, 200);
    settle();
    assert_eq!(
        metric(&c, "palisade_l7_upstream_connections_opened_total"),
        2
    );
    assert_eq!(upstreams_from(&backend, &other), 1);
    // A policy change: the kept connections were opened under the old view.
    c.write_policy(
        "another HTTP rule",
        "20-l7.yaml",
        &INGRESS_L7.replace(
            "- {method: GET, path: /api/v1/data}",
            "- {method: GET, path: /api/v1/data}\n        - {method: GET, path: /healthz}",
        ),
    );
    assert_eq!(curl(&frontend, "GET", &url, TIMEOUT).0, 200);
    settle();
    assert_eq!(
        (
            metric(&c, "palisade_l7_upstream_connections_opened_total"),
            metric(&c, "palisade_l7_upstream_connections_reused_total")
        ),
        (3, 2)
    );
    // Every request judged and logged.
    wait_l7(&c, 6);
    // Idle longer than the default 4 s: closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstreams_from(&backend, &frontend) + upstreams_from(&backend, &other) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "idle upstream connections were not closed"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
