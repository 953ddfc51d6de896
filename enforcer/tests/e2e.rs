#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! End to end: real TCP, UDP and ICMP between pods in network namespaces, through the real
//! `palisade-enforcer run` process (tc programs on the pods' host veths, maps from the
//! manifests, verdict log), on a local node per test.
//!
//! Privileged tier: needs root, network namespaces and BPF. Under `CI=true` a host that
//! cannot run these fails them (`Node::for_test`); elsewhere they print `skipped: ...`.
//!
//! Every test owns its node (namespaces, veths) and its enforcer (process, bpffs pins,
//! state, log), so tests run in parallel; both are removed on drop, also on panic.
//!
//! Conventions: a denied TCP attempt must end in `TimedOut` (a dropped SYN), never
//! `Refused` (which would mean the SYN reached the pod); a denied UDP request gets no
//! reply. Where it matters, the servers' `served()` counters prove that nothing denied
//! reached the pod. Denied probes of one test run in parallel threads.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_api::{NamedPort, Request, Response};
use palisade_testkit::node::{EchoOutcome, Pod, ServerHandle, TcpOutcome};
use serde_json::Value;

mod common;

use common::traffic::{
    CHANGE, Cluster, DENY, OK, Proto, expect_all, probe, serve_tcp, serve_udp, tcp, tcp6, udp, udp6,
};

/// This file's address block: `10.244.x.x`, `fd00:10:244::/48`.
const BLOCK: u8 = 244;

fn start(what: &str, manifests: &[(&str, &str)]) -> Option<Cluster> {
    common::traffic::start("e2e", BLOCK, what, manifests)
}

fn v4(subnet: u8, host: u8) -> Ipv4Addr {
    common::traffic::v4(BLOCK, subnet, host)
}

fn v6(subnet: u8, host: u8) -> Ipv6Addr {
    common::traffic::v6(BLOCK, subnet, host)
}

fn named(name: &str, port: u16, protocol: &str) -> NamedPort {
    NamedPort {
        name: name.into(),
        port,
        protocol: protocol.into(),
    }
}

fn echo(session: &mut palisade_testkit::node::TcpSession, payload: &[u8]) -> EchoOutcome {
    session.echo(payload, OK).expect("echo")
}

// ---- 1. default deny -----------------------------------------------------------------------

const DEFAULT_DENY_LOCKED: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: locked}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: locked}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

#[test]
fn default_deny_drops_both_directions_and_spares_unpoliced_namespaces() {
    let Some(c) = start("e2e default deny", &[("deny.yaml", DEFAULT_DENY_LOCKED)]) else {
        return;
    };
    let a = c.pod("locked", "a", 1, 10);
    let b = c.pod("locked", "b", 1, 11);
    let x = c.pod("open", "x", 1, 20);
    let y = c.pod("open", "y", 1, 21);
    for p in [&a, &b] {
        c.register(p, &[("app", "locked")]);
    }
    for p in [&x, &y] {
        c.register(p, &[("app", "open")]);
    }
    let (a_t, b_t, x_t, y_t) = (
        serve_tcp(&a, 8080),
        serve_tcp(&b, 8080),
        serve_tcp(&x, 8080),
        serve_tcp(&y, 8080),
    );
    let (a_u, b_u, x_u, y_u) = (
        serve_udp(&a, 5353),
        serve_udp(&b, 5353),
        serve_udp(&x, 5353),
        serve_udp(&y, 5353),
    );

    expect_all(
        &c,
        &[
            tcp(&a, &b, 8080, false, "both isolated, no rules"),
            udp(&a, &b, 5353, false, "both isolated, no rules"),
            tcp(&b, &a, 8080, false, "both isolated, no rules"),
            tcp6(&a, &b, 8080, false, "both isolated, no rules"),
            tcp(&a, &x, 8080, false, "a's egress is isolated"),
            udp(&a, &x, 5353, false, "a's egress is isolated"),
            tcp6(&a, &x, 8080, false, "a's egress is isolated"),
            tcp(&x, &a, 8080, false, "a's ingress is isolated"),
            udp(&x, &a, 5353, false, "a's ingress is isolated"),
            probe(
                &a,
                &b,
                Proto::Icmp,
                false,
                0,
                false,
                "both isolated, no rules",
            ),
            probe(
                &a,
                &x,
                Proto::Icmp,
                true,
                0,
                false,
                "a's egress is isolated",
            ),
            probe(
                &x,
                &a,
                Proto::Icmp,
                false,
                0,
                false,
                "a's ingress is isolated",
            ),
            probe(
                &x,
                &y,
                Proto::Icmp,
                false,
                0,
                true,
                "namespace open has no policy",
            ),
            probe(
                &x,
                &y,
                Proto::Icmp,
                true,
                0,
                true,
                "namespace open has no policy",
            ),
            tcp(&x, &y, 8080, true, "namespace open has no policy"),
            udp(&x, &y, 5353, true, "namespace open has no policy"),
            tcp(&y, &x, 8080, true, "namespace open has no policy"),
            tcp6(&y, &x, 8080, true, "namespace open has no policy"),
            udp6(&y, &x, 5353, true, "namespace open has no policy"),
        ],
    );
    // Nothing denied reached a server: the locked pods saw nothing at all, and x received
    // no datagram from a (a's egress dropped it on the way out).
    for (name, h) in [
        ("a tcp", &a_t),
        ("b tcp", &b_t),
        ("a udp", &a_u),
        ("b udp", &b_u),
    ] {
        assert_eq!(h.served(), 0, "{name} was reached");
    }
    assert_eq!(x_t.served(), 2, "x tcp: y over v4 and v6");
    assert_eq!(y_t.served(), 1, "y tcp: x");
    assert_eq!(x_u.served(), 1, "x udp: only y's v6 datagram, none from a");
    assert_eq!(y_u.served(), 1, "y udp: x");
}

// ---- 2. pod and namespace selectors --------------------------------------------------------

const SELECTORS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  # podSelector alone: pods of the policy's own namespace
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 8080}]
  # namespaceSelector alone: every pod of the selected namespaces
  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]
    ports: [{port: 8081}]
  # both in one peer: selected pods of selected namespaces (AND)
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
      podSelector: {matchLabels: {app: api}}
    ports: [{port: 8082}]
  # the same selectors as two peers (OR)
  - from:
    - namespaceSelector: {matchLabels: {env: dev}}
    - podSelector: {matchLabels: {app: api}}
    ports: [{port: 8083}]
";

#[test]
fn pod_selector_namespace_selector_and_both_in_one_peer() {
    let Some(c) = start("e2e selectors", &[("policy.yaml", SELECTORS)]) else {
        return;
    };
    let db = c.pod("prod", "db", 2, 10);
    let prod_api = c.pod("prod", "api", 2, 20);
    let dev_api = c.pod("dev", "api", 2, 30);
    let dev_web = c.pod("dev", "web", 2, 31);
    c.register(&db, &[("app", "db")]);
    c.register(&prod_api, &[("app", "api")]);
    c.register(&dev_api, &[("app", "api")]);
    c.register(&dev_web, &[("app", "web")]);
    let servers: Vec<ServerHandle> = (8080..=8083).map(|p| serve_tcp(&db, p)).collect();

    expect_all(
        &c,
        &[
            tcp(&prod_api, &db, 8080, true, "podSelector, same namespace"),
            tcp(&dev_api, &db, 8080, false, "right pod, wrong namespace"),
            tcp(&dev_web, &db, 8080, false, "wrong pod, wrong namespace"),
            tcp(&dev_api, &db, 8081, true, "namespaceSelector"),
            tcp(&dev_web, &db, 8081, true, "namespaceSelector, any pod"),
            tcp(&prod_api, &db, 8081, false, "namespace not selected"),
            tcp(&dev_api, &db, 8082, true, "both match"),
            tcp(&dev_web, &db, 8082, false, "right namespace, wrong pod"),
            tcp(&prod_api, &db, 8082, false, "right pod, wrong namespace"),
            tcp6(&dev_api, &db, 8082, true, "both match, IPv6"),
            tcp6(
                &prod_api,
                &db,
                8082,
                false,
                "right pod, wrong namespace, IPv6",
            ),
            tcp(&dev_web, &db, 8083, true, "OR: namespace matches"),
            tcp(&prod_api, &db, 8083, true, "OR: pod matches"),
            tcp(&dev_api, &db, 8083, true, "OR: both match"),
        ],
    );
    let served: Vec<usize> = servers.iter().map(ServerHandle::served).collect();
    assert_eq!(served, [1, 2, 2, 3], "connections per port 8080..8083");
}

// ---- 3. ipBlock with except ----------------------------------------------------------------

const IPBLOCK: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: blk}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-from-block, namespace: blk}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {cidr: 10.244.3.0/24, except: [10.244.3.21/32]}
    - ipBlock: {cidr: 'fd00:10:244:3::/64', except: ['fd00:10:244:3::21/128']}
    ports: [{port: 8080}]
  - from: [{ipBlock: {cidr: 10.244.4.5/32}}]
    ports: [{port: 8081}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: inside-egress, namespace: blk}
spec:
  podSelector: {matchLabels: {app: inside}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.244.3.0/28}}]
";

/// Pod IPs are in the ipcache with their pod identity, and with the default
/// `EngineConfig::ipblocks_select_pods` an ipBlock selects every pod with an address inside
/// it and outside its excepts (docs/policy-test.md, "ipBlocks and pod addresses"). The
/// selection is of the pod (its identity), not of one address: a dual-stack pod selected
/// through one family is selected for both (`inside` below).
#[test]
fn ip_block_with_except_selects_pods_by_their_addresses() {
    let Some(c) = start("e2e ipBlock", &[("policy.yaml", IPBLOCK)]) else {
        return;
    };
    // srv: 10.244.3.10, fd00:10:244:3::10.
    let srv = c.pod("blk", "srv", 3, 10);
    // inside: IPv4 inside the /24 (and the /28's complement); IPv6 outside the /64.
    let inside = c
        .node
        .add_pod("blk", "inside", v4(3, 20), Some(v6(9, 20)))
        .unwrap();
    // except: both addresses excepted.
    let except = c.pod("blk", "except", 3, 21);
    // out: both addresses outside the blocks; its IPv4 /32 is a block of its own.
    let out = c.pod("blk", "out", 4, 5);
    c.register(&srv, &[("app", "srv")]);
    c.register(&inside, &[("app", "inside")]);
    c.register(&except, &[("app", "except")]);
    c.register(&out, &[("app", "out")]);
    let srv_t = serve_tcp(&srv, 8080);
    let srv_8081 = serve_tcp(&srv, 8081);
    let out_t = serve_tcp(&out, 8080);
    let except_t = serve_tcp(&except, 8080);

    expect_all(
        &c,
        &[
            tcp(
                &inside,
                &srv,
                8080,
                true,
                "10.244.3.20 inside the /24; srv in the /28",
            ),
            tcp6(
                &inside,
                &srv,
                8080,
                true,
                "the pod is selected through its IPv4",
            ),
            tcp(&except, &srv, 8080, false, "10.244.3.21 is excepted"),
            tcp6(&except, &srv, 8080, false, "::21 is excepted"),
            tcp(&out, &srv, 8080, false, "10.244.4.5 outside the /24"),
            tcp6(&out, &srv, 8080, false, "fd00:10:244:4::5 outside the /64"),
            tcp(&out, &srv, 8081, true, "out's own /32"),
            tcp(&inside, &srv, 8081, false, "not out's /32"),
            tcp(
                &inside,
                &out,
                8080,
                false,
                "egress: 10.244.4.5 outside the /28",
            ),
            tcp(&inside, &except, 8080, false, "egress: .21 outside the /28"),
            tcp(&except, &out, 8080, true, "neither side isolated"),
        ],
    );
    assert_eq!(srv_t.served(), 2, "inside over IPv4 and IPv6");
    assert_eq!(srv_8081.served(), 1, "out only");
    assert_eq!(out_t.served(), 1, "except only");
    assert_eq!(except_t.served(), 0);
}

// ---- 4. named ports and port ranges --------------------------------------------------------

const PORTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: np}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-ports, namespace: np}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - ports:
    - {port: http}
    - {port: dns, protocol: UDP}
    - {port: 9000, endPort: 9010}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cl2-egress, namespace: np}
spec:
  podSelector: {matchLabels: {app: cl2}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
";

#[test]
fn named_ports_resolve_per_pod_and_port_ranges_include_both_ends() {
    let Some(c) = start("e2e named ports", &[("policy.yaml", PORTS)]) else {
        return;
    };
    let srv = c.pod("np", "srv", 5, 10);
    let srv2 = c.pod("np", "srv2", 5, 11);
    let cl = c.pod("np", "cl", 5, 20);
    let cl2 = c.pod("np", "cl2", 5, 21);
    c.enforcer
        .register_with_ports(
            &srv,
            &[("app", "srv")],
            vec![
                named("http", 8080, "TCP"),
                named("dns", 5353, "UDP"),
                named("metrics", 9100, "TCP"),
            ],
        )
        .unwrap();
    c.enforcer
        .register_with_ports(&srv2, &[("app", "srv")], vec![named("http", 8081, "TCP")])
        .unwrap();
    c.register(&cl, &[("app", "cl")]);
    c.register(&cl2, &[("app", "cl2")]);
    let _servers: Vec<ServerHandle> = [8080, 8081, 9100, 5353, 8999, 9000, 9005, 9010, 9011]
        .into_iter()
        .map(|p| serve_tcp(&srv, p))
        .chain([8080, 8081].map(|p| serve_tcp(&srv2, p)))
        .collect();
    let _dns = serve_udp(&srv, 5353);

    expect_all(
        &c,
        &[
            tcp(&cl, &srv, 8080, true, "http is 8080 on srv"),
            tcp(&cl, &srv, 8081, false, "8081 is not srv's http"),
            tcp(&cl, &srv, 9100, false, "metrics is named but not allowed"),
            udp(&cl, &srv, 5353, true, "dns is 5353/UDP on srv"),
            tcp(&cl, &srv, 5353, false, "dns is UDP only"),
            tcp(&cl, &srv, 8999, false, "below the range"),
            tcp(&cl, &srv, 9000, true, "range start"),
            tcp(&cl, &srv, 9005, true, "inside the range"),
            tcp(&cl, &srv, 9010, true, "range end (endPort is inclusive)"),
            tcp(&cl, &srv, 9011, false, "above the range"),
            tcp6(&cl, &srv, 9010, true, "range end over IPv6"),
            tcp(&cl, &srv2, 8081, true, "http is 8081 on srv2"),
            tcp(&cl, &srv2, 8080, false, "8080 is not srv2's http"),
            // Egress named ports resolve against the destination's ports.
            tcp(&cl2, &srv, 8080, true, "egress http = srv's 8080"),
            tcp(&cl2, &srv2, 8081, true, "egress http = srv2's 8081"),
            tcp(&cl2, &srv2, 8080, false, "egress: 8080 is not srv2's http"),
            tcp(&cl2, &srv, 9005, false, "egress allows only http"),
        ],
    );
}

// ---- 5. replies through conntrack ----------------------------------------------------------

const CONNTRACK: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: ct}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: ct}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-ingress, namespace: ct}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cl-egress, namespace: ct}
spec:
  podSelector: {matchLabels: {app: cl}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: srv}}}]
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
";

/// Only cl -> srv is allowed (cl's egress, srv's ingress); srv's egress and cl's ingress
/// have no rule at all, so every reply passes only through conntrack.
#[test]
fn replies_pass_through_conntrack_and_unsolicited_packets_do_not() {
    let Some(c) = start("e2e conntrack", &[("policy.yaml", CONNTRACK)]) else {
        return;
    };
    let srv = c.pod("ct", "srv", 6, 10);
    let cl = c.pod("ct", "cl", 6, 20);
    c.register(&srv, &[("app", "srv")]);
    c.register(&cl, &[("app", "cl")]);
    let srv_t = serve_tcp(&srv, 8080);
    let _srv_u = serve_udp(&srv, 5353);
    let cl_t = serve_tcp(&cl, 8080);
    let cl_u = serve_udp(&cl, 5353);

    // TCP both ways on one allowed connection, small and large (many segments each way).
    for dst in [srv.addr_v4(8080), srv.addr_v6(8080).unwrap()] {
        let mut s = cl
            .tcp_session(dst, OK)
            .unwrap_or_else(|e| panic!("session to {dst}: {e}\n{}", c.log()));
        assert_eq!(s.banner(), "ct/srv");
        for i in 0..20 {
            assert_eq!(
                echo(&mut s, format!("msg {i}").as_bytes()),
                EchoOutcome::Echoed
            );
        }
        let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo(&mut s, &big), EchoOutcome::Echoed, "256 KiB to {dst}");
    }

    // Allowed requests get their replies, v4 and v6; the other direction stays closed.
    expect_all(
        &c,
        &[
            udp(&cl, &srv, 5353, true, "request allowed, reply by conntrack"),
            udp6(&cl, &srv, 5353, true, "request allowed, reply by conntrack"),
            tcp(&srv, &cl, 8080, false, "no rule from srv to cl"),
            tcp6(&srv, &cl, 8080, false, "no rule from srv to cl"),
            udp(&srv, &cl, 5353, false, "no rule from srv to cl"),
        ],
    );
    assert_eq!(cl_t.served(), 0, "an unsolicited connection reached cl");
    assert_eq!(cl_u.served(), 0, "an unsolicited datagram reached cl");

    // A "reply" that does not match the tracked tuple is not a reply: after cl's request
    // to srv:5353 from port P, srv:5353 -> cl:P passes, srv:5354 -> cl:P does not.
    let cl_sock = cl
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    let cl_port = cl_sock.local_addr().unwrap().port();
    cl_sock.set_read_timeout(Some(OK)).unwrap();
    cl_sock.send_to(b"hello", srv.addr_v4(5353)).unwrap();
    let mut buf = [0u8; 256];
    let (n, from) = cl_sock.recv_from(&mut buf).expect("reply from srv:5353");
    assert_eq!(from, srv.addr_v4(5353));
    assert_eq!(&buf[..n], b"ct/srv\nhello");
    let stranger = srv
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5354)))
        .unwrap()
        .unwrap();
    stranger
        .send_to(b"not a reply", cl.addr_v4(cl_port))
        .unwrap();
    cl_sock.set_read_timeout(Some(DENY)).unwrap();
    match cl_sock.recv_from(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("srv:5354 -> cl:{cl_port} should be dropped, got {other:?}"),
    }
    // The tracked reply path still works after the stray packet.
    cl_sock.set_read_timeout(Some(OK)).unwrap();
    cl_sock.send_to(b"again", srv.addr_v4(5353)).unwrap();
    let (n, _) = cl_sock.recv_from(&mut buf).expect("second reply");
    assert_eq!(&buf[..n], b"ct/srv\nagain");
    assert_eq!(srv_t.served(), 2, "the two sessions");
}

// ---- 5b. local delivery --------------------------------------------------------------------

const LOCAL: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: local}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-ingress, namespace: local}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 8080}]
";

/// Runs an iptables-family command in a namespace; panics with its output if it fails.
fn xtables(netns: &str, argv: &[&str]) -> String {
    let out = palisade_testkit::node::run_command_in_netns(netns, argv, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{argv:?} in {netns}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in {netns}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Packets counted by the rule carrying `comment` in a listing of `iptables -L CHAIN -nvx`.
fn rule_packets(listing: &str, comment: &str) -> u64 {
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("/* {comment} */")))
        .unwrap_or_else(|| panic!("no rule {comment} in:\n{listing}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// A server and a client pod of the `local` namespace, with rules counting what the
/// node's FORWARD chain sees each way and how many packets from the client reach the
/// server (all, and with the hop limit one less), for IPv4 and IPv6.
struct LocalPair {
    srv: Pod,
    cl: Pod,
    _srv_t: ServerHandle,
}

impl LocalPair {
    fn new(c: &Cluster) -> LocalPair {
        let srv = c.pod("local", "srv", 11, 10);
        let cl = c.pod("local", "cl", 11, 20);
        c.register(&srv, &[("app", "srv")]);
        c.register(&cl, &[("app", "cl")]);
        let _srv_t = serve_tcp(&srv, 8080);
        let node = c.node.netns_name();
        for (tool, a, b, hop63) in Self::families(&cl, &srv) {
            for (src, dst, tag) in [(&a, &b, "to-srv"), (&b, &a, "to-cl")] {
                xtables(
                    node,
                    &[
                        tool,
                        "-w",
                        "-A",
                        "FORWARD",
                        "-s",
                        src,
                        "-d",
                        dst,
                        "-p",
                        "tcp",
                        "-m",
                        "comment",
                        "--comment",
                        tag,
                    ],
                );
            }
            let mut rule = vec![tool, "-w", "-A", "INPUT", "-s", &a, "-p", "tcp"];
            rule.extend_from_slice(&hop63);
            rule.extend_from_slice(&["-m", "comment", "--comment", "hop63"]);
            xtables(&srv.netns, &rule);
            xtables(
                &srv.netns,
                &[
                    tool,
                    "-w",
                    "-A",
                    "INPUT",
                    "-s",
                    &a,
                    "-p",
                    "tcp",
                    "-m",
                    "comment",
                    "--comment",
                    "all",
                ],
            );
        }
        LocalPair { srv, cl, _srv_t }
    }

    fn families(cl: &Pod, srv: &Pod) -> [(&'static str, String, String, [&'static str; 4]); 2] {
        [
            (
                "iptables",
                cl.ipv4.to_string(),
                srv.ipv4.to_string(),
                ["-m", "ttl", "--ttl-eq", "63"],
            ),
            (
                "ip6tables",
                cl.ipv6.unwrap().to_string(),
                srv.ipv6.unwrap().to_string(),
                ["-m", "hl", "--hl-eq", "63"],
            ),
        ]
    }

    /// (forwarded to the server, forwarded to the client, received by the server, received
    /// with the hop limit one less) for `tool`'s family; read once the connections are
    /// quiet (a delayed ACK may still be on its way when the last echo returns), since the
    /// rules' counters are not read all at one instant.
    fn counts(&self, c: &Cluster, tool: &str) -> (u64, u64, u64, u64) {
        std::thread::sleep(Duration::from_millis(500));
        let fwd = xtables(c.node.netns_name(), &[tool, "-w", "-L", "FORWARD", "-nvx"]);
        let input = xtables(&self.srv.netns, &[tool, "-w", "-L", "INPUT", "-nvx"]);
        (
            rule_packets(&fwd, "to-srv"),
            rule_packets(&fwd, "to-cl"),
            rule_packets(&input, "all"),
            rule_packets(&input, "hop63"),
        )
    }

    /// A session to the server over each family, with `n` echoes each; the sessions.
    fn sessions(&self, c: &Cluster, n: usize) -> Vec<palisade_testkit::node::TcpSession> {
        let mut sessions = Vec::new();
        for dst in [self.srv.addr_v4(8080), self.srv.addr_v6(8080).unwrap()] {
            let mut s = self
                .cl
                .tcp_session(dst, OK)
                .unwrap_or_else(|e| panic!("session to {dst}: {e}\n{}", c.log()));
            assert_eq!(s.banner(), "local/srv");
            for i in 0..n {
                assert_eq!(
                    echo(&mut s, format!("msg {i}").as_bytes()),
                    EchoOutcome::Echoed
                );
            }
            sessions.push(s);
        }
        sessions
    }
}

/// Local delivery (docs/datapath.md §3.2): once a flow between two pods of the node is
/// established, its packets go from one host veth straight to the other, where to_pod
/// still judges them; the node's forwarding sees only what a decision program took (the
/// opening packet, and the first packet each way after an endpoint write), and the
/// receiver gets what forwarding would have given it (TTL / hop limit one less).
#[test]
fn established_packets_between_pods_of_the_node_skip_its_forwarding() {
    let Some(c) = start("e2e local delivery", &[("policy.yaml", LOCAL)]) else {
        return;
    };
    let pair = LocalPair::new(&c);
    let mut sessions = pair.sessions(&c, 30);
    for tool in ["iptables", "ip6tables"] {
        let (to_srv, to_cl, all, hop63) = pair.counts(&c, tool);
        assert_eq!(to_srv, 1, "{tool}: only the SYN is forwarded by the node");
        assert_eq!(to_cl, 0, "{tool}: the replies never are");
        assert!(
            all >= 31,
            "{tool}: the server got {all} packets from the client"
        );
        assert_eq!(
            hop63, all,
            "{tool}: every packet arrives with the hop limit one less"
        );
    }

    // An endpoint write (a third pod) moves the generation: the first packet each way is
    // decided again and forwarded by the node, the rest go straight again.
    let other = c.pod("local", "other", 11, 30);
    c.register(&other, &[("app", "other")]);
    let (to_srv0, to_cl0, all0, _) = pair.counts(&c, "iptables");
    for i in 0..30 {
        assert_eq!(
            echo(&mut sessions[0], format!("again {i}").as_bytes()),
            EchoOutcome::Echoed
        );
    }
    let (to_srv, to_cl, all, hop63) = pair.counts(&c, "iptables");
    assert!(
        to_srv - to_srv0 <= 1,
        "forwarded to the server after the write: {}",
        to_srv - to_srv0
    );
    assert!(
        to_cl - to_cl0 <= 1,
        "forwarded to the client after the write: {}",
        to_cl - to_cl0
    );
    assert!(all - all0 >= 30);
    assert_eq!(hop63, all);
}

/// A flow the node itself rewrites on its way between two of its pods (here a DNAT rule in
/// its `nat` table, as kube-proxy writes for a service Palisade does not translate) stays
/// with the node's stack: the server's replies must get the node's reverse translation,
/// so local delivery does not take them (the server's interface tracks another tuple than
/// the client's). Without that check the client would see replies from the server's own
/// address and the connection would never open.
#[test]
fn a_flow_the_node_translates_itself_stays_with_the_node() {
    let Some(c) = start("e2e local delivery dnat", &[("policy.yaml", LOCAL)]) else {
        return;
    };
    let pair = LocalPair::new(&c);
    let vip = v4(12, 1);
    let vip6 = v6(12, 1);
    let node = c.node.netns_name();
    for (tool, vip, srv) in [
        ("iptables", vip.to_string(), pair.srv.ipv4.to_string()),
        (
            "ip6tables",
            vip6.to_string(),
            format!("[{}]", pair.srv.ipv6.unwrap()),
        ),
    ] {
        xtables(
            node,
            &[
                tool,
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &vip,
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{srv}:8080"),
            ],
        );
    }
    for dst in [
        std::net::SocketAddr::from((vip, 80)),
        std::net::SocketAddr::from((vip6, 80)),
    ] {
        let mut s = pair
            .cl
            .tcp_session(dst, OK)
            .unwrap_or_else(|e| panic!("session to {dst} through the node's DNAT: {e}"));
        assert_eq!(s.banner(), "local/srv");
        for i in 0..30 {
            assert_eq!(
                echo(&mut s, format!("msg {i}").as_bytes()),
                EchoOutcome::Echoed
            );
        }
    }
    // Every reply went through the node (its reverse translation).
    for tool in ["iptables", "ip6tables"] {
        let (_, to_cl, ..) = pair.counts(&c, tool);
        assert!(to_cl >= 31, "{tool}: {to_cl} replies forwarded by the node");
    }
}

/// `local_delivery: false` (docs/configuration.md): the node's stack forwards every packet
/// between its pods, as without Palisade.
#[test]
fn with_local_delivery_off_the_node_forwards_every_packet() {
    let Some(c) = common::traffic::start_with_config(
        "e2e",
        BLOCK,
        "e2e local delivery off",
        &[("policy.yaml", LOCAL)],
        Some("local_delivery: false\n"),
    ) else {
        return;
    };
    let pair = LocalPair::new(&c);
    let _sessions = pair.sessions(&c, 30);
    for tool in ["iptables", "ip6tables"] {
        let (to_srv, to_cl, all, hop63) = pair.counts(&c, tool);
        assert_eq!(
            to_srv, all,
            "{tool}: every packet to the server is forwarded"
        );
        assert!(to_cl >= 31, "{tool}: {to_cl} replies forwarded");
        assert_eq!(hop63, all, "{tool}: the hop limit one less, by the node");
    }
}

// ---- 6. IPv6 -------------------------------------------------------------------------------

const IPV6: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: six}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-ingress, namespace: six}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: good}}}]
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
";

#[test]
fn ipv6_tcp_and_udp_are_allowed_and_denied_like_ipv4() {
    let Some(c) = start("e2e ipv6", &[("policy.yaml", IPV6)]) else {
        return;
    };
    let srv = c.pod("six", "srv", 7, 10);
    let good = c.pod("six", "good", 7, 20);
    let bad = c.pod("six", "bad", 7, 30);
    c.register(&srv, &[("app", "srv")]);
    c.register(&good, &[("app", "good")]);
    c.register(&bad, &[("app", "bad")]);
    let srv_t = serve_tcp(&srv, 8080);
    let srv_9090 = serve_tcp(&srv, 9090);
    let srv_u = serve_udp(&srv, 5353);
    let good_t = serve_tcp(&good, 8080);

    let mut session = good.tcp_session(srv.addr_v6(8080).unwrap(), OK).unwrap();
    assert_eq!(session.banner(), "six/srv");
    assert_eq!(echo(&mut session, b"over ipv6"), EchoOutcome::Echoed);

    expect_all(
        &c,
        &[
            tcp6(&good, &srv, 8080, true, "good is allowed"),
            tcp(&good, &srv, 8080, true, "same over IPv4"),
            udp6(&good, &srv, 5353, true, "good is allowed UDP"),
            tcp6(&bad, &srv, 8080, false, "bad is not selected"),
            udp6(&bad, &srv, 5353, false, "bad is not selected"),
            tcp(&bad, &srv, 8080, false, "bad is not selected, IPv4"),
            tcp6(&good, &srv, 9090, false, "port not allowed"),
            tcp6(&srv, &good, 8080, true, "good has no ingress policy"),
        ],
    );
    assert_eq!(echo(&mut session, b"still there"), EchoOutcome::Echoed);
    assert_eq!(srv_t.served(), 3, "the session and good's two connects");
    assert_eq!(srv_9090.served(), 0);
    assert_eq!(srv_u.served(), 1, "only good's datagram");
    assert_eq!(good_t.served(), 1);
}

// ---- 7. policy change with open connections ------------------------------------------------

const CHG_NS_AND_DENY: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: chg}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: chg}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
";

fn chg_allow(srv_ports: &str) -> String {
    format!(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: srv-ingress, namespace: chg}}
spec:
  podSelector: {{matchLabels: {{app: srv}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: cl}}}}}}]
    ports: {srv_ports}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: cl-egress, namespace: chg}}
spec:
  podSelector: {{matchLabels: {{app: cl}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: srv}}}}}}]
    ports: [{{port: 8080}}, {{port: 9090}}]
"
    )
}

fn is_cut(outcome: &EchoOutcome) -> bool {
    matches!(outcome, EchoOutcome::TimedOut { .. } | EchoOutcome::Reset)
}

#[test]
fn policy_change_keeps_allowed_sessions_and_cuts_revoked_ones() {
    let allow_both = chg_allow("[{port: 8080}, {port: 9090}]");
    let Some(c) = start(
        "e2e policy change",
        &[
            ("10-deny.yaml", CHG_NS_AND_DENY),
            ("20-allow.yaml", &allow_both),
        ],
    ) else {
        return;
    };
    let srv = c.pod("chg", "srv", 8, 10);
    let cl = c.pod("chg", "cl", 8, 20);
    let other = c.pod("chg", "other", 8, 30);
    c.register(&srv, &[("app", "srv")]);
    c.register(&cl, &[("app", "cl")]);
    c.register(&other, &[("app", "other")]);
    let s8080 = serve_tcp(&srv, 8080);
    let s9090 = serve_tcp(&srv, 9090);

    let mut keep = cl.tcp_session(srv.addr_v4(8080), OK).unwrap();
    let mut revoke = cl.tcp_session(srv.addr_v4(9090), OK).unwrap();
    let mut keep6 = cl.tcp_session(srv.addr_v6(8080).unwrap(), OK).unwrap();
    assert_eq!(echo(&mut keep, b"before"), EchoOutcome::Echoed);
    assert_eq!(echo(&mut revoke, b"before"), EchoOutcome::Echoed);
    assert_eq!(echo(&mut keep6, b"before"), EchoOutcome::Echoed);
    expect_all(
        &c,
        &[tcp(&other, &srv, 8080, false, "other is never allowed")],
    );

    // 1. srv's ingress narrows to 8080: the 9090 session is revoked, 8080 ones continue.
    c.change_policy("narrowing to 8080", |e| {
        e.write_manifest("20-allow.yaml", &chg_allow("[{port: 8080}]"))
            .unwrap();
    });
    for i in 0..5 {
        assert_eq!(
            echo(&mut keep, format!("after narrowing {i}").as_bytes()),
            EchoOutcome::Echoed,
            "a session both policies allow must not notice the change\n{}",
            c.log()
        );
        assert_eq!(
            echo(&mut keep6, format!("after narrowing {i}").as_bytes()),
            EchoOutcome::Echoed
        );
    }
    let cut = revoke.echo(b"after narrowing", DENY).unwrap();
    assert!(
        is_cut(&cut),
        "revoked session still echoes: {cut:?}\n{}",
        c.log()
    );
    expect_all(
        &c,
        &[
            tcp(&cl, &srv, 9090, false, "9090 no longer allowed"),
            tcp(&cl, &srv, 8080, true, "8080 still allowed"),
            tcp(&other, &srv, 8080, false, "other is never allowed"),
        ],
    );

    // 2. The allow file goes: default deny revokes the 8080 sessions too.
    c.change_policy("removing the allows", |e| {
        e.remove_manifest("20-allow.yaml").unwrap();
    });
    let cut = keep.echo(b"after removal", DENY).unwrap();
    assert!(is_cut(&cut), "session survived its revocation: {cut:?}");
    let cut = keep6.echo(b"after removal", DENY).unwrap();
    assert!(
        is_cut(&cut),
        "IPv6 session survived its revocation: {cut:?}"
    );
    expect_all(
        &c,
        &[
            tcp(&cl, &srv, 8080, false, "default deny only"),
            tcp(&other, &srv, 8080, false, "other is never allowed"),
        ],
    );
    assert_eq!(
        s8080.served(),
        3,
        "keep, keep6, the connect after narrowing"
    );
    assert_eq!(s9090.served(), 1, "only the revoked session");

    // 3. No policy left: nothing is isolated any more.
    c.change_policy("removing default deny", |e| {
        e.remove_manifest("10-deny.yaml").unwrap();
    });
    expect_all(
        &c,
        &[
            tcp(&other, &srv, 8080, true, "no policy selects srv"),
            tcp(&cl, &srv, 9090, true, "no policy selects srv"),
        ],
    );
}

// ---- 8. SIGKILL and restart under traffic --------------------------------------------------

const KILL: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: kill}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: kill}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-ingress, namespace: kill}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 8080}, {port: 5353, protocol: UDP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cl-egress, namespace: kill}
spec:
  podSelector: {matchLabels: {app: cl}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: srv}}}]
";

const KILL_OPEN_9999: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-9999, namespace: kill}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 9999}]
";

/// What the traffic loops have seen so far.
#[derive(Debug, Default)]
struct Traffic {
    connects: AtomicUsize,
    echoes: AtomicUsize,
    udp_replies: AtomicUsize,
    denied_tcp: AtomicUsize,
    denied_udp_sent: AtomicUsize,
    /// Allowed attempts that failed and denied ones that got through, described.
    failures: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    connects: usize,
    echoes: usize,
    udp_replies: usize,
    denied_tcp: usize,
    denied_udp_sent: usize,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn counts(&self) -> Counts {
        Counts {
            connects: self.connects.load(Ordering::SeqCst),
            echoes: self.echoes.load(Ordering::SeqCst),
            udp_replies: self.udp_replies.load(Ordering::SeqCst),
            denied_tcp: self.denied_tcp.load(Ordering::SeqCst),
            denied_udp_sent: self.denied_udp_sent.load(Ordering::SeqCst),
        }
    }
}

/// Counts grew in every column between two snapshots (traffic really ran in that phase).
fn assert_progress(phase: &str, a: Counts, b: Counts) {
    assert!(
        b.connects > a.connects
            && b.echoes > a.echoes
            && b.udp_replies > a.udp_replies
            && b.denied_tcp > a.denied_tcp
            && b.denied_udp_sent > a.denied_udp_sent,
        "{phase}: traffic did not run in every loop: {a:?} -> {b:?}"
    );
}

/// The allowed loop: a new connection, an echo on one long session, a UDP round trip,
/// again and again. Every one of them must succeed.
fn allowed_loop(cl: &Pod, srv: &Pod, stop: &AtomicBool, t: &Traffic) {
    let mut session = cl.tcp_session(srv.addr_v4(8080), OK).unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        match cl.tcp_connect(srv.addr_v4(8080), OK) {
            Ok(TcpOutcome::Connected { banner }) if banner == "kill/srv" => {
                t.connects.fetch_add(1, Ordering::SeqCst);
            }
            other => t.fail(format!("allowed connect #{i}: {other:?}")),
        }
        let payload = format!("echo #{i}");
        match session.echo(payload.as_bytes(), OK) {
            Ok(EchoOutcome::Echoed) => {
                t.echoes.fetch_add(1, Ordering::SeqCst);
            }
            other => t.fail(format!("echo #{i} on the open session: {other:?}")),
        }
        match cl.udp_roundtrip(srv.addr_v4(5353), payload.as_bytes(), OK) {
            Ok(Some(r)) if r == format!("kill/srv\n{payload}").as_bytes() => {
                t.udp_replies.fetch_add(1, Ordering::SeqCst);
            }
            other => t.fail(format!("allowed UDP #{i}: {other:?}")),
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A denied port, tried again and again; any answer at all means the SYN got through.
fn denied_tcp_loop(cl: &Pod, srv: &Pod, stop: &AtomicBool, t: &Traffic) {
    while !stop.load(Ordering::SeqCst) {
        match cl.tcp_connect(srv.addr_v4(9999), Duration::from_millis(60)) {
            Ok(TcpOutcome::TimedOut) => {
                t.denied_tcp.fetch_add(1, Ordering::SeqCst);
            }
            other => t.fail(format!("denied connect to 9999: {other:?}")),
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// A datagram to a denied UDP port every 2 ms (the server counts what arrives).
fn denied_udp_loop(cl: &Pod, srv: &Pod, stop: &AtomicBool, t: &Traffic) {
    let sock = cl
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        if sock.send_to(b"denied", srv.addr_v4(5399)).is_ok() {
            t.denied_udp_sent.fetch_add(1, Ordering::SeqCst);
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            t.fail(format!("denied UDP got a reply from {from}: {n} bytes"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigkill_and_restart_under_traffic_break_nothing_and_let_nothing_through() {
    let Some(mut c) = start("e2e sigkill restart", &[("policy.yaml", KILL)]) else {
        return;
    };
    let srv = c.pod("kill", "srv", 9, 10);
    let cl = c.pod("kill", "cl", 9, 20);
    let srv_id = c.register(&srv, &[("app", "srv")]);
    let cl_id = c.register(&cl, &[("app", "cl")]);
    let _allowed_t = serve_tcp(&srv, 8080);
    let _allowed_u = serve_udp(&srv, 5353);
    let denied_t = serve_tcp(&srv, 9999);
    let denied_u = serve_udp(&srv, 5399);

    let stop = AtomicBool::new(false);
    let t = Traffic::default();
    let (up, down, restarted, end) = std::thread::scope(|s| {
        let workers = [
            s.spawn(|| allowed_loop(&cl, &srv, &stop, &t)),
            s.spawn(|| denied_tcp_loop(&cl, &srv, &stop, &t)),
            s.spawn(|| denied_tcp_loop(&cl, &srv, &stop, &t)),
            s.spawn(|| denied_udp_loop(&cl, &srv, &stop, &t)),
        ];
        let finish = |workers: [std::thread::ScopedJoinHandle<'_, ()>; 4]| {
            stop.store(true, Ordering::SeqCst);
            for w in workers {
                w.join().expect("traffic loop panicked");
            }
        };
        std::thread::sleep(Duration::from_millis(600));
        let up = t.counts();
        c.enforcer.kill9();
        // Agent down: pinned links and maps keep enforcing on their own.
        std::thread::sleep(Duration::from_millis(1500));
        let down = t.counts();
        let t_spawn = Instant::now();
        if let Err(e) = c.enforcer.spawn() {
            finish(workers);
            panic!("restarting the enforcer: {e}");
        }
        eprintln!("e2e sigkill: restart took {:?}", t_spawn.elapsed());
        std::thread::sleep(Duration::from_millis(800));
        let restarted = t.counts();
        finish(workers);
        (up, down, restarted, t.counts())
    });

    eprintln!(
        "e2e sigkill: counts at kill {up:?}, at restart {down:?}, 0.8 s later {restarted:?}, end {end:?}"
    );
    let failures = t.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures under kill/restart:\n  {}\ncounts at kill {up:?}, restart {down:?}, end {end:?}\nagent log:\n{}",
        failures.len(),
        failures.join("\n  "),
        c.log()
    );
    assert_eq!(denied_t.served(), 0, "a denied connection was accepted");
    assert_eq!(denied_u.served(), 0, "a denied datagram was delivered");
    assert!(up.connects > 0, "no traffic before the kill: {up:?}");
    assert_progress("while the agent was down", up, down);
    assert_progress("after the restart", down, restarted);

    // Not one packet of an allowed flow was dropped (a retransmission would have hidden
    // it from the loops): no DROPPED line touches the allowed ports.
    std::thread::sleep(Duration::from_millis(500)); // the agent flushes every 200 ms
    let allowed_ports = [8080, 5353];
    let verdicts = verdict_lines(&c);
    assert!(
        verdicts.iter().any(|l| l["flow"]["verdict"] == "DROPPED"
            && l["flow"]["l4"]["TCP"]["destination_port"] == 9999),
        "the verdict log shows none of the denied attempts"
    );
    let dropped_allowed: Vec<String> = verdicts
        .iter()
        .map(|l| &l["flow"])
        .filter(|f| f["verdict"] == "DROPPED")
        .filter(|f| {
            let l4 = f["l4"].as_object().and_then(|m| m.values().next());
            l4.is_some_and(|p| {
                allowed_ports
                    .iter()
                    .any(|port| p["destination_port"] == *port || p["source_port"] == *port)
            })
        })
        .map(|f| f["Summary"].to_string())
        .collect();
    assert!(
        dropped_allowed.is_empty(),
        "allowed-flow packets dropped around the restart:\n  {}",
        dropped_allowed.join("\n  ")
    );

    // The verdict log's hash chain survived the SIGKILL: the restarted agent continued it
    // (from the last record on disk, with the same key) and it verifies end to end.
    let rep = palisade_observe::verify::verify_log(
        &c.enforcer.verdict_log(),
        &palisade_observe::verify::Options::default(),
    )
    .unwrap();
    assert!(rep.ok(), "{:?}", rep.problem);
    assert!(rep.checkpoints >= 2, "a start checkpoint per run: {rep:?}");
    assert_eq!(
        rep.keys.len(),
        1,
        "one node key across the restart: {rep:?}"
    );
    assert_eq!(rep.first_seq, 1);

    // The restarted agent took the pinned links over instead of re-attaching: the first
    // start adopted none, the second both hooks of both pods.
    let log = c.log();
    let adopted: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("datapath ready"))
        .map(|l| {
            let tail = l.split("links.adopted=").nth(1).unwrap();
            tail.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(adopted, [0, 4], "datapath ready lines:\n{log}");
    // Same manifests, same pods: the restart finds the adopted maps already right and
    // rewrites nothing (identity numbers and rule ids are kept, so the pods' addresses and
    // policy entries mean what they meant).
    let restart_line = log.lines().rfind(|l| l.contains("datapath ready")).unwrap();
    assert!(
        restart_line.contains(" maps.policy_writes=0 maps.ipcache_writes=0 "),
        "the restart rewrote adopted maps: {restart_line}\n{log}"
    );
    match c.enforcer.request(&Request::Status).unwrap() {
        Response::Status {
            endpoints, ready, ..
        } => {
            assert!(ready);
            assert_eq!(endpoints, 2, "registrations survive the restart");
        }
        other => panic!("status: {other:?}"),
    }

    // Identities are what the adopted maps and conntrack entries are keyed by: a restart
    // must not renumber them (re-registering returns the pod's current identity).
    assert_eq!(
        (
            c.register(&srv, &[("app", "srv")]),
            c.register(&cl, &[("app", "cl")])
        ),
        (srv_id, cl_id),
        "identities changed across the restart"
    );

    // The restarted agent drives the adopted datapath: opening 9999 takes effect.
    c.change_policy("opening 9999 after the restart", |e| {
        e.write_manifest("50-open-9999.yaml", KILL_OPEN_9999)
            .unwrap();
    });
    expect_all(
        &c,
        &[tcp(&cl, &srv, 9999, true, "opened after the restart")],
    );
    assert_eq!(denied_t.served(), 1);
}

// ---- 9. verdict log ------------------------------------------------------------------------

const VERDICTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: vl}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: vl}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-ingress, namespace: vl}
spec:
  podSelector: {matchLabels: {app: srv}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: cl}}}]
    ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cl-egress, namespace: vl}
spec:
  podSelector: {matchLabels: {app: cl}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: srv}}}]
    ports: [{port: 8080}]
";

/// Every line of the verdict log so far, each of which must be JSON.
fn verdict_lines(c: &Cluster) -> Vec<Value> {
    parse_lines(&std::fs::read_to_string(c.enforcer.verdict_log()).unwrap_or_default())
}

fn parse_lines(raw: &str) -> Vec<Value> {
    raw.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `flow` objects of the verdict log that match a TCP flow, one direction.
fn flow_lines(lines: &[Value], src: &Pod, dst: &Pod, dport: u16, dir: &str) -> Vec<Value> {
    lines
        .iter()
        .map(|l| &l["flow"])
        .filter(|f| {
            f["IP"]["source"] == src.ipv4.to_string()
                && f["IP"]["destination"] == dst.ipv4.to_string()
                && f["l4"]["TCP"]["destination_port"] == dport
                && f["traffic_direction"] == dir
        })
        .cloned()
        .collect()
}

/// `namespace/name` of every policy in a `*_allowed_by` / `*_denied_by` list.
fn policy_names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or("?"),
                        p["name"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(ToString::to_string).collect()
}

#[test]
fn verdict_log_names_the_deciding_policies() {
    let Some(c) = start("e2e verdict log", &[("policy.yaml", VERDICTS)]) else {
        return;
    };
    let srv = c.pod("vl", "srv", 10, 10);
    let cl = c.pod("vl", "cl", 10, 20);
    let x = c.pod("free", "x", 10, 30);
    c.register(&srv, &[("app", "srv")]);
    c.register(&cl, &[("app", "cl")]);
    c.register(&x, &[("app", "x")]);
    let _s8080 = serve_tcp(&srv, 8080);
    let _s9090 = serve_tcp(&srv, 9090);

    expect_all(
        &c,
        &[
            tcp(&cl, &srv, 8080, true, "web-ingress and cl-egress"),
            tcp(&cl, &srv, 9090, false, "cl's egress: 8080 only"),
            tcp(&x, &srv, 8080, false, "srv's ingress: cl only"),
        ],
    );

    // The agent writes the log from the ring buffer; give it a few flushes.
    let t0 = Instant::now();
    let (raw, lines) = loop {
        let raw = std::fs::read_to_string(c.enforcer.verdict_log()).unwrap_or_default();
        let lines = parse_lines(&raw);
        let complete = !flow_lines(&lines, &cl, &srv, 8080, "EGRESS").is_empty()
            && !flow_lines(&lines, &cl, &srv, 8080, "INGRESS").is_empty()
            && !flow_lines(&lines, &cl, &srv, 9090, "EGRESS").is_empty()
            && !flow_lines(&lines, &x, &srv, 8080, "INGRESS").is_empty();
        if complete || t0.elapsed() > Duration::from_secs(5) {
            break (raw, lines);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!lines.is_empty(), "empty verdict log");
    for l in &lines {
        if let Some(v) = l.get("flow").map(|f| &f["verdict"]) {
            assert!(
                v == "FORWARDED" || v == "DROPPED",
                "unexpected verdict {v} in {l}"
            );
        }
    }
    let one = |src: &Pod, port: u16, dir: &str, verdict: &str| -> Value {
        let found: Vec<Value> = flow_lines(&lines, src, &srv, port, dir)
            .into_iter()
            .filter(|f| f["verdict"] == verdict)
            .collect();
        assert!(
            !found.is_empty(),
            "no {verdict} {dir} line for {} -> srv:{port} in:\n{raw}",
            src.identity()
        );
        found[0].clone()
    };

    // Default deny on cl's egress: both policies selecting cl for egress isolate it.
    let f = one(&cl, 9090, "EGRESS", "DROPPED");
    assert_eq!(f["drop_reason"], 133, "{f}");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED", "{f}");
    assert_eq!(
        policy_names(&f["egress_denied_by"]),
        set(&["vl/default-deny", "vl/cl-egress"]),
        "{f}"
    );
    assert!(f.get("ingress_denied_by").is_none(), "{f}");
    assert_eq!(f["source"]["namespace"], "vl", "{f}");
    assert_eq!(f["source"]["pod_name"], "cl", "{f}");

    // Default deny on srv's ingress for a pod of another namespace.
    let f = one(&x, 8080, "INGRESS", "DROPPED");
    assert_eq!(f["drop_reason"], 133, "{f}");
    assert_eq!(
        policy_names(&f["ingress_denied_by"]),
        set(&["vl/default-deny", "vl/web-ingress"]),
        "{f}"
    );
    assert_eq!(f["source"]["namespace"], "free", "{f}");
    assert_eq!(f["destination"]["pod_name"], "srv", "{f}");

    // The allowed flow, at each hook, names the policy that allowed it there.
    let f = one(&cl, 8080, "EGRESS", "FORWARDED");
    assert_eq!(
        policy_names(&f["egress_allowed_by"]),
        set(&["vl/cl-egress"]),
        "{f}"
    );
    assert!(f.get("drop_reason").is_none(), "{f}");
    let f = one(&cl, 8080, "INGRESS", "FORWARDED");
    assert_eq!(
        policy_names(&f["ingress_allowed_by"]),
        set(&["vl/web-ingress"]),
        "{f}"
    );
    assert_eq!(f["destination"]["namespace"], "vl", "{f}");
}

/// Finds a pinned map by name under the agent's pin root (pins live in `v<ABI>/`).
fn pinned_map(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if p.is_dir() {
                dirs.push(p);
            }
        }
    }
    None
}

fn status(c: &Cluster) -> (bool, Option<String>) {
    match c.enforcer.request(&Request::Status).unwrap() {
        Response::Status { ready, reason, .. } => (ready, reason),
        other => panic!("status: {other:?}"),
    }
}

/// The number in "N failed updates" of a not-ready reason.
fn failed_updates(reason: &str) -> u64 {
    let head = reason.split(" failed updates").next().unwrap();
    head.rsplit(['(', ' ']).next().unwrap().parse().unwrap()
}

/// A map write that fails (pal_policy frozen against writes from user space, so every
/// write of a new policy entry fails with EPERM) is not silent: the agent reports not ready
/// with the failed operation, counts every attempt while it retries the reconcile with
/// backoff, refuses to attach a new pod against maps it cannot write, and its log says what
/// the failure leaves. Traffic both policies allow keeps flowing (old or new, never a third).
#[test]
fn a_failed_map_write_makes_the_agent_not_ready_and_retries() {
    let Some(c) = start(
        "e2e failed map write",
        &[
            ("10-deny.yaml", CHG_NS_AND_DENY),
            ("20-allow.yaml", &chg_allow("[{port: 8080}]")),
        ],
    ) else {
        return;
    };
    let srv = c.pod("chg", "srv", 9, 10);
    let cl = c.pod("chg", "cl", 9, 20);
    let late = c.pod("chg", "late", 9, 30);
    c.register(&srv, &[("app", "srv")]);
    c.register(&cl, &[("app", "cl")]);
    let _s8080 = serve_tcp(&srv, 8080);
    expect_all(
        &c,
        &[tcp(&cl, &srv, 8080, true, "allowed before the failure")],
    );
    assert_eq!(status(&c), (true, None));

    let pin = pinned_map(&c.enforcer.pin_root(), "pal_policy").unwrap_or_else(|| {
        panic!(
            "no pal_policy pin under {}",
            c.enforcer.pin_root().display()
        )
    });
    let frozen = std::process::Command::new("bpftool")
        .args(["map", "freeze", "pinned"])
        .arg(&pin)
        .status();
    if !matches!(frozen, Ok(s) if s.success()) {
        palisade_testkit::skip_or_fail(
            "failed map write",
            &format!("bpftool map freeze {}: {frozen:?}", pin.display()),
        );
        return;
    }

    // A policy change needs new policy entries: the write fails.
    c.enforcer
        .write_manifest("20-allow.yaml", &chg_allow("[{port: 8080}, {port: 9090}]"))
        .unwrap();
    let deadline = Instant::now() + CHANGE;
    let reason = loop {
        match status(&c) {
            (false, Some(reason)) => break reason,
            (false, None) => panic!("not ready without a reason"),
            (true, _) => {}
        }
        assert!(
            Instant::now() < deadline,
            "still ready {CHANGE:?} after a policy change that cannot be written\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        reason.contains("map operation") && reason.contains("failed"),
        "{reason}"
    );
    // The reconcile keeps retrying (100 ms, 200 ms, 400 ms, ...) and counts each failure.
    let first = failed_updates(&reason);
    std::thread::sleep(Duration::from_millis(1500));
    let (ready, reason) = status(&c);
    assert!(!ready);
    let later = failed_updates(reason.as_deref().unwrap());
    assert!(later >= first + 2, "{first} then {later} failed updates");

    // Both policies allow 8080: it still flows.
    expect_all(&c, &[tcp(&cl, &srv, 8080, true, "allowed by old and new")]);
    // No pod is attached against maps the agent cannot write.
    assert!(
        c.enforcer.register(&late, &[("app", "cl")]).is_err(),
        "registered while the maps are dirty"
    );

    let log = c.log();
    assert!(
        log.contains("map update failed partway; not ready until the maps are reconciled"),
        "{log}"
    );
    assert!(!log.contains("previous maps stay"), "{log}");
}

/// Issue 10 item 12: traffic from the pod's own node is always allowed (kubelet probes).
/// The agent reads the node namespace's addresses (here 169.254.1.1 on `lo`, the source
/// the node uses towards its pods) and maps them to identity host; a pod with default-deny
/// ingress still answers a TCP and a UDP probe from the node, while other pods stay cut
/// off. Before, the node's address resolved to world and every probe was dropped.
#[test]
fn probes_from_the_node_reach_pods_with_default_deny_ingress() {
    let Some(c) = start("e2e node probes", &[("deny.yaml", DEFAULT_DENY_LOCKED)]) else {
        return;
    };
    let a = c.pod("locked", "a", 1, 10);
    let x = c.pod("open", "x", 1, 20);
    c.register(&a, &[("app", "locked")]);
    c.register(&x, &[("app", "open")]);
    let (_a_t, _a_u) = (serve_tcp(&a, 8080), serve_udp(&a, 5353));
    let netns = c.node.netns_path();
    let from_node = palisade_testkit::node::tcp_connect_in_netns(netns, a.addr_v4(8080), OK)
        .unwrap_or_else(|e| panic!("connect from the node: {e}"));
    assert!(
        from_node.is_connected(),
        "the node's TCP probe must pass: {from_node:?}\nagent log:\n{}",
        c.log()
    );
    let udp_reply =
        palisade_testkit::node::udp_roundtrip_in_netns(netns, a.addr_v4(5353), b"probe", OK)
            .unwrap_or_else(|e| panic!("udp from the node: {e}"));
    assert!(udp_reply.is_some(), "the node's UDP probe must pass");
    // A pod is not the node: a's ingress is still isolated against it.
    expect_all(
        &c,
        &[tcp(
            &x,
            &a,
            8080,
            false,
            "a's ingress is isolated; x is a pod, not the node",
        )],
    );
}
