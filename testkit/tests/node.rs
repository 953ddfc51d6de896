#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "integration test: a failed step should stop the test with its message"
)]
//! The local-node topology (`palisade_testkit::node`) through real namespaces and veths.
//!
//! Privileged tier: needs root. Under `CI=true` a host that cannot run these fails them;
//! elsewhere they print `skipped: ...` and return.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use palisade_testkit::node::{
    self, EchoOutcome, GATEWAY_V4, Node, NodeError, TcpOutcome, create_netns, list_links,
    list_netns, netns_exists, read_sysctl, run_in_netns,
};

const T: Duration = Duration::from_secs(3);
/// For outcomes expected to be negative: short, so the suite stays fast.
const SHORT: Duration = Duration::from_millis(500);

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, last)
}

/// Names of every namespace whose name mentions `tag`.
fn netns_with(tag: &str) -> Vec<String> {
    list_netns()
        .unwrap()
        .into_iter()
        .filter(|name| name.contains(tag))
        .collect()
}

fn root_links() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_pods_in_two_namespaces_talk_over_tcp_udp_icmp_ipv6_and_http() {
    let Some(node) = Node::for_test("nodetest", "node topology e2e") else {
        return;
    };
    let tag = node.tag().to_owned();
    let node_netns = node.netns_name().to_owned();
    let root_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    let a = node.add_pod("alpha", "a", v4(10), Some(v6(0x10))).unwrap();
    let b = node.add_pod("alpha", "b", v4(11), Some(v6(0x11))).unwrap();
    let c = node.add_pod("beta", "c", v4(20), Some(v6(0x20))).unwrap();

    // Shape: names, indexes, sysctls only inside our namespaces, nothing in the root namespace.
    assert_eq!(node.pods().len(), 3);
    assert_eq!(
        node.netns_path(),
        std::path::Path::new(&format!("/run/netns/{node_netns}"))
    );
    for pod in [&a, &b, &c] {
        assert!(
            pod.netns.starts_with(&format!("pal-{tag}-")),
            "{}",
            pod.netns
        );
        assert!(pod.netns_path.exists());
        assert!(
            pod.host_ifname.starts_with("lxc") && pod.host_ifname.len() <= 15,
            "{}",
            pod.host_ifname
        );
        assert!(pod.host_ifindex > 1);
        assert_eq!(
            node::link_ifindex(&node_netns, &pod.host_ifname).unwrap(),
            pod.host_ifindex
        );
        assert!(list_links(&pod.netns).unwrap().contains(&"eth0".to_owned()));
        let proxy_arp = format!("net.ipv4.conf.{}.proxy_arp", pod.host_ifname);
        assert_eq!(read_sysctl(&node_netns, &proxy_arp).unwrap(), "1");
        assert!(
            !root_links().contains(&pod.host_ifname),
            "{} leaked into the root namespace",
            pod.host_ifname
        );
    }
    assert_eq!(
        read_sysctl(&node_netns, "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    assert_eq!(
        read_sysctl(&node_netns, "net.ipv6.conf.all.forwarding").unwrap(),
        "1"
    );
    assert_eq!(read_sysctl(&a.netns, "net.ipv4.ip_forward").unwrap(), "0");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forwarding
    );
    let links = list_links(&node_netns).unwrap();
    assert!(
        links.contains(&a.host_ifname) && links.contains(&c.host_ifname),
        "{links:?}"
    );

    let servers: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|pod| pod.serve_tcp(8080).unwrap())
        .collect();

    // TCP both ways, within and across namespaces.
    for (from, to) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a), (&c, &b)] {
        let outcome = from.tcp_connect(to.addr_v4(8080), T).unwrap();
        assert_eq!(
            outcome,
            TcpOutcome::Connected {
                banner: to.identity()
            },
            "{} -> {}",
            from.identity(),
            to.identity()
        );
    }
    assert_eq!(
        a.tcp_connect(b.addr_v4(8081), SHORT).unwrap(),
        TcpOutcome::Refused
    );
    assert!(servers.iter().all(|s| s.served() >= 1));

    // IPv6 TCP, through the fe80::1 gateway.
    let outcome = a.tcp_connect(c.addr_v6(8080).unwrap(), T).unwrap();
    assert_eq!(outcome.banner(), Some("beta/c"));
    let outcome = c.tcp_connect(b.addr_v6(8080).unwrap(), T).unwrap();
    assert_eq!(outcome.banner(), Some("alpha/b"));

    // A session kept open and used from this thread.
    let mut session = a.tcp_session(c.addr_v4(8080), T).unwrap();
    assert_eq!(session.banner(), "beta/c");
    assert_eq!(session.local_addr().unwrap().ip(), IpAddr::V4(a.ipv4));
    assert_eq!(session.echo(b"hello", T).unwrap(), EchoOutcome::Echoed);
    assert_eq!(
        session.echo(&[7u8; 100_000], T).unwrap(),
        EchoOutcome::Echoed
    );
    session.shutdown_write().unwrap();

    // UDP, both families.
    let udp = c.serve_udp(5353).unwrap();
    let reply = a.udp_roundtrip(c.addr_v4(5353), b"ping", T).unwrap();
    assert_eq!(reply.as_deref(), Some(&b"beta/c\nping"[..]));
    let reply = b
        .udp_roundtrip(c.addr_v6(5353).unwrap(), b"six", T)
        .unwrap();
    assert_eq!(reply.as_deref(), Some(&b"beta/c\nsix"[..]));
    assert_eq!(
        a.udp_roundtrip(c.addr_v4(5354), b"nobody", SHORT).unwrap(),
        None
    );
    assert_eq!(udp.served(), 2);

    // ICMP, both families, to a pod and to the node itself.
    assert!(a.ping(IpAddr::V4(c.ipv4), T).unwrap());
    assert!(a.ping(IpAddr::V6(c.ipv6.unwrap()), T).unwrap());
    assert!(b.ping(IpAddr::V4(GATEWAY_V4), T).unwrap());
    assert!(!a.ping(IpAddr::V4(v4(99)), SHORT).unwrap());

    // nginx and curl.
    let nginx = c.start_nginx(80).unwrap();
    let http = a.curl("http://10.200.0.20/", T).unwrap();
    assert_eq!(
        (http.status, http.body.as_str(), http.curl_exit),
        (200, "beta/c\n", 0),
        "{http:?}"
    );
    let http = b
        .curl(&format!("http://[{}]:80/x", c.ipv6.unwrap()), T)
        .unwrap();
    assert_eq!(http.status, 200, "{http:?}");
    let http = a.curl("http://10.200.0.20:81/", T).unwrap();
    assert!(http.refused() && http.status == 0, "{http:?}");
    let access_log = std::fs::read_to_string(nginx.dir().join("access.log")).unwrap();
    assert!(access_log.contains("10.200.0.10"), "{access_log}");

    // Processes started in pods; node teardown kills what is still running.
    let mut sleeper_b = b.spawn(&["sleep", "600"]).unwrap();
    let mut sleeper_a = a.spawn(&["sleep", "600"]).unwrap();
    let output = a
        .run(&["ip", "-o", "addr", "show", "dev", "eth0"], T)
        .unwrap();
    assert!(
        output.status.success() && output.stdout.contains("10.200.0.10/32"),
        "{output:?}"
    );

    // Removing a pod removes its namespace, its veth and its route, and kills its processes.
    node.remove_pod(&b).unwrap();
    assert!(!netns_exists(&b.netns));
    assert!(!list_links(&node_netns).unwrap().contains(&b.host_ifname));
    assert!(
        !a.tcp_connect(b.addr_v4(8080), SHORT)
            .unwrap()
            .is_connected()
    );
    assert!(
        sleeper_b.wait_timeout(T).unwrap().is_some(),
        "removing a pod kills its processes"
    );
    assert!(matches!(
        node.remove_pod(&b),
        Err(NodeError::UnknownPod { .. })
    ));

    // Teardown with servers, a session, nginx and a process still running in the pods.
    drop(node);
    assert_eq!(netns_with(&tag), Vec::<String>::new());
    assert!(
        list_links(&node_netns).is_err(),
        "node namespace still answers"
    );
    assert!(!root_links().contains(&a.host_ifname));
    assert!(matches!(
        a.tcp_connect(c.addr_v4(8080), SHORT),
        Err(NodeError::OpenNetns { .. })
    ));
    assert!(
        sleeper_a.wait_timeout(T).unwrap().is_some(),
        "dropping the node kills processes in pods"
    );
    drop((servers, udp, session, nginx));
}

#[test]
fn a_panicking_test_still_removes_its_namespaces() {
    if !node::require_privileged("node cleanup on panic") {
        return;
    }
    let tag = node::unique_tag("nodepanic");
    let tag_for_test = tag.clone();
    let result = std::panic::catch_unwind(move || {
        let node = Node::create(&tag_for_test).unwrap();
        node.add_pod("default", "doomed", v4(30), Some(v6(0x30)))
            .unwrap();
        assert_eq!(netns_with(&tag_for_test).len(), 2);
        panic!("test failure inside a node");
    });
    assert!(result.is_err());
    assert_eq!(netns_with(&tag), Vec::<String>::new());
}

#[test]
fn host_interface_names_are_stable_and_duplicates_are_refused() {
    let Some(first) = Node::for_test("nodename", "node naming") else {
        return;
    };
    let Some(second) = Node::for_test("nodename", "node naming") else {
        return;
    };
    let one = first.add_pod("default", "web", v4(40), None).unwrap();
    let two = second.add_pod("default", "web", v4(40), None).unwrap();
    assert_eq!(
        one.host_ifname, two.host_ifname,
        "same pod, same host interface on every node"
    );
    assert_ne!(one.netns, two.netns, "namespaces differ per node");
    assert!(matches!(
        first.add_pod("default", "web", v4(41), None),
        Err(NodeError::DuplicatePod { .. })
    ));
    // A failed add leaves nothing behind, and the node keeps working.
    let err = first.add_pod("default", "clash", v4(40), None).unwrap_err();
    assert!(matches!(err, NodeError::CommandFailed { .. }), "{err}");
    assert_eq!(first.pods().len(), 1);
    assert_eq!(netns_with(first.tag()).len(), 2);
    let other = first.add_pod("default", "other", v4(42), None).unwrap();
    let server = other.serve_tcp(0).unwrap();
    let dst = SocketAddr::new(IpAddr::V4(other.ipv4), server.port());
    assert_eq!(
        one.tcp_connect(dst, T).unwrap().banner(),
        Some("default/other")
    );
}

#[test]
fn sweep_removes_namespaces_of_dead_owners_only() {
    if !node::require_privileged("stale namespace sweep") {
        return;
    }
    // A pid that just exited stands in for a crashed run.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let dead_name = format!("pal-nodesweep-{}-0-node", to_base36(dead));
    let live_tag = node::unique_tag("nodesweep");
    let live_name = format!("pal-{live_tag}-node");
    let stale = create_netns(&dead_name).unwrap().leak();
    let live = create_netns(&live_name).unwrap();

    let swept = node::sweep_stale("nodesweep").unwrap();
    assert!(swept.contains(&stale), "{swept:?}");
    assert!(!netns_exists(&stale));
    assert!(
        netns_exists(live.name()),
        "a live owner's namespace survives"
    );
    assert!(node::sweep_stale("bad-prefix").is_err());
}

#[test]
fn run_in_netns_enters_only_the_worker_thread_and_propagates_panics() {
    if !node::require_privileged("run_in_netns") {
        return;
    }
    let name = format!("pal-{}-scratch", node::unique_tag("noderun"));
    let ns = create_netns(&name).unwrap();
    // Only the worker thread moved: inside there is just `lo`, outside there is more.
    let inside = run_in_netns(ns.path(), || {
        nix::net::if_::if_nameindex().map(|names| names.iter().count())
    })
    .unwrap()
    .unwrap();
    assert_eq!(inside, 1);
    let outside = nix::net::if_::if_nameindex().unwrap().iter().count();
    assert!(outside > 1, "the caller's namespace has more than lo");
    let caught = std::panic::catch_unwind(|| run_in_netns(ns.path(), || panic!("inside")));
    assert!(
        caught.is_err(),
        "a panic inside the namespace thread reaches the caller"
    );
    assert!(matches!(
        run_in_netns(std::path::Path::new("/run/netns/pal-does-not-exist"), || ()),
        Err(NodeError::OpenNetns { .. })
    ));
}

fn to_base36(mut n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// The outside host: wired to the node's uplink, it reaches pods through the node over both
/// families (routed, as from another machine), a second call returns the same host, and
/// dropping the node removes its namespace and link too.
#[test]
fn an_outside_host_reaches_pods_through_the_uplink_and_goes_with_the_node() {
    let Some(n) = Node::for_test("nodeout", "outside host") else {
        return;
    };
    let tag = n.tag().to_string();
    let pod = n.add_pod("default", "web", v4(50), Some(v6(0x50))).unwrap();
    let outside = n.add_outside().unwrap();
    assert_eq!(
        n.add_outside().unwrap(),
        outside,
        "one outside host per node"
    );
    assert_eq!(netns_with(&tag).len(), 3, "node, pod, outside");
    let server = pod.serve_tcp(0).unwrap();
    for dst in [
        SocketAddr::new(IpAddr::V4(pod.ipv4), server.port()),
        SocketAddr::new(IpAddr::V6(v6(0x50)), server.port()),
    ] {
        let got = node::tcp_connect_in_netns(&outside.netns_path, dst, T).unwrap();
        assert_eq!(got.banner(), Some("default/web"), "{dst}");
    }
    drop(server);
    drop(n);
    assert_eq!(netns_with(&tag), Vec::<String>::new());
}
