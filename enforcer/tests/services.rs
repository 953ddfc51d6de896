//! Service translation at packet level (BPF_PROG_TEST_RUN on the real programs, maps
//! written by the planner from manifests): a pod's flow to a frontend reaches the backend
//! the policy core predicts, with every checksum valid; its replies come back from the
//! frontend; egress policy is decided on the backend; a frontend without backends drops
//! with its own reason; a flow keeps its backend while the backend stays.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use palisade_enforcer::datapath::{Datapath, Hook};
use palisade_enforcer::maps::{AyaMaps, Maps as _};
use palisade_testkit::packet::{self, L4, TCP_ACK, TCP_SYN, checksums_ok, tuple, with_checksums};
use policy_compiler::EntryKey;
use policy_compiler::abi::{self, EndpointInfo, LbKey, PolicyValue, VerdictEvent};
use policy_compiler::cidr::Cidr;
use policy_compiler::manifest::{LoadOptions, load_str};
use policy_compiler::plan::lb::{self, LbTarget};

const PASS: u32 = abi::tcx::NEXT;
const DROP: u32 = abi::tcx::DROP;

const CLIENT: u32 = 300; // ifindex 1 (test_run binds the skb to lo): 10.0.0.1, fd00::1
const WEB: u32 = 400; // web-0 and web-1
const DB: u32 = 500; // db-0: reachable through the service, denied by the client's egress

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn manifests(web_pods: usize, affinity: bool) -> String {
    let mut s = String::new();
    for i in 0..web_pods {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: shop, labels: {{app: web}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIPs: [{{ip: 10.0.1.{} }}, {{ip: \"fd00:1::{}\"}}]}}\n",
            10 + i,
            10 + i
        ));
    }
    s.push_str("---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-0, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}\nstatus: {podIPs: [{ip: 10.0.1.99}, {ip: \"fd00:1::99\"}]}\n");
    s.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  selector: {{app: web}}\n  clusterIPs: [10.96.0.10, \"fd00:96::10\"]\n  ports: [{{name: http, port: 80, targetPort: http}}, {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}]\n{}",
        if affinity {
            "  sessionAffinity: ClientIP\n"
        } else {
            ""
        }
    ));
    s.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: shop}\nspec:\n  selector: {app: nothing}\n  clusterIPs: [10.96.0.20, \"fd00:96::20\"]\n  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]\n");
    s
}

fn target(web_pods: usize, affinity: bool) -> LbTarget {
    let c = load_str(
        "services.yaml",
        &manifests(web_pods, affinity),
        &LoadOptions::default(),
    )
    .unwrap()
    .cluster;
    LbTarget::from_cluster(&c, None)
}

struct Node {
    _fs: common::PrivateBpffs,
    dp: Datapath,
    events: RingBuf<MapData>,
}

fn allow(rule: u32) -> PolicyValue {
    PolicyValue {
        rule_id: rule,
        verdict: abi::POLICY_VERDICT_ALLOW,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        ..Default::default()
    }
}

fn key(identity: u32, dir: u8, proto: u8, port: u16) -> EntryKey {
    EntryKey {
        identity,
        direction: dir,
        protocol: proto,
        port,
        prefixlen: abi::POLICY_PREFIX_FULL as u8,
    }
}

/// The client may open TCP 8080 and UDP 5353 to WEB (egress); DB is not allowed. Replies
/// need no rule.
fn node(tag: &str) -> Option<Node> {
    if !common::privileged(tag) {
        return None;
    }
    let fs = common::PrivateBpffs::new(tag);
    let mut dp = fs.load();
    for (c, id) in [
        ("10.0.0.1/32", CLIENT),
        ("fd00::1/128", CLIENT),
        ("10.0.1.0/24", WEB),
        ("fd00:1::/64", WEB),
        ("10.0.1.99/32", DB),
        ("fd00:1::99/128", DB),
        ("0.0.0.0/0", abi::IDENTITY_WORLD_IPV4),
        ("::/0", abi::IDENTITY_WORLD_IPV6),
    ] {
        dp.upsert_ipcache(&c.parse::<Cidr>().unwrap(), id).unwrap();
    }
    let eg = abi::DIRECTION_EGRESS;
    dp.upsert_policy(CLIENT, &key(WEB, eg, 6, 8080), &allow(16))
        .unwrap();
    dp.upsert_policy(CLIENT, &key(WEB, eg, 17, 5353), &allow(17))
        .unwrap();
    dp.set_endpoint(
        1,
        &EndpointInfo {
            identity: CLIENT,
            policy_slot: CLIENT,
            flags: abi::ENDPOINT_F_READY,
            revision: 1,
            ..Default::default()
        }
        .with_addresses(&[ip("10.0.0.1"), ip("fd00::1")]),
    )
    .unwrap();
    let events = dp.take_events().unwrap();
    Some(Node {
        _fs: fs,
        dp,
        events,
    })
}

impl Node {
    /// Writes the service maps for `t` through the planner, as the agent does.
    fn services(&mut self, t: &LbTarget) -> lb::LbState {
        let old = self.dp.lb_state().unwrap();
        let p = lb::plan(&old, t);
        let mut maps = AyaMaps(&mut self.dp);
        for op in &p.ops {
            maps.apply(op).unwrap();
        }
        let now = self.dp.lb_state().unwrap();
        let mut expect = old;
        for op in &p.ops {
            expect.apply(op);
        }
        assert_eq!(now, expect, "the kernel maps hold what the plan says");
        now
    }

    fn run(&mut self, hook: Hook, pkt: Vec<u8>) -> (u32, Vec<u8>) {
        self.dp.test_run_output(hook, &with_checksums(pkt)).unwrap()
    }

    fn events(&mut self) -> Vec<VerdictEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(VerdictEvent::from_bytes(&item).unwrap());
        }
        out
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

#[test]
fn flows_to_a_frontend_reach_the_predicted_backend_and_replies_come_from_the_frontend() {
    let Some(mut n) = node("svc-xlate") else {
        return;
    };
    let state = n.services(&target(2, false));
    for (client, vip) in [("10.0.0.1", "10.96.0.10"), ("fd00::1", "fd00:96::10")] {
        let fe = LbKey::new(ip(vip), 80, 6);
        let mut reached = std::collections::BTreeSet::new();
        let mut denied = 0;
        for sport in 40000..40040u16 {
            let (baddr, bport) = lb::pick(&state, &fe, ip(client), sport).unwrap();
            let (rc, out) = n.run(
                Hook::FromPod,
                packet::build(ip(client), ip(vip), tcp(sport, 80, TCP_SYN)),
            );
            let ((s, sp), (d, dp)) = tuple(&out);
            assert_eq!((s, sp), (ip(client), sport), "the source is untouched");
            assert_eq!(
                (d, dp),
                (baddr, bport),
                "{client}:{sport}: the predicted backend"
            );
            assert!(checksums_ok(&out), "{client}:{sport}: checksums after DNAT");
            if baddr == ip("10.0.1.99") || baddr == ip("fd00:1::99") {
                // Policy is decided on the backend: DB is not allowed.
                assert_eq!(rc, DROP, "{client}:{sport} -> db through the frontend");
                denied += 1;
                continue;
            }
            assert_eq!(rc, PASS, "{client}:{sport} -> {baddr}");
            reached.insert(baddr);
            // The reply, as the backend sends it, reaches the client from the frontend.
            let (rc, out) = n.run(
                Hook::ToPod,
                packet::build(baddr, ip(client), tcp(bport, sport, TCP_SYN | TCP_ACK)),
            );
            assert_eq!(rc, PASS, "reply from {baddr}");
            assert_eq!(tuple(&out), ((ip(vip), 80), (ip(client), sport)));
            assert!(checksums_ok(&out), "checksums after reverse NAT");
            // The next packet of the flow goes to the same backend.
            let (rc, out) = n.run(
                Hook::FromPod,
                packet::build(ip(client), ip(vip), tcp(sport, 80, TCP_ACK)),
            );
            assert_eq!(rc, PASS);
            assert_eq!(tuple(&out).1, (baddr, bport));
        }
        assert_eq!(
            reached.len(),
            2,
            "{client}: flows spread over both web pods"
        );
        assert!(denied > 0, "{client}: some flows were given db-0");
    }
    let ev = n.events();
    let dropped: Vec<&VerdictEvent> = ev
        .iter()
        .filter(|e| e.verdict == abi::EVENT_VERDICT_DROPPED)
        .collect();
    assert!(!dropped.is_empty());
    for e in &dropped {
        assert_eq!(e.drop_reason as u32, abi::DROP_POLICY_DENIED);
        assert_eq!(
            e.dst_identity, DB,
            "the verdict names the backend's identity"
        );
        assert_ne!(e.service, 0, "and the frontend it was sent to");
    }
    let fwd: Vec<&VerdictEvent> = ev
        .iter()
        .filter(|e| e.verdict == abi::EVENT_VERDICT_FORWARDED && e.kind == abi::EVENT_KIND_NEW_FLOW)
        .collect();
    assert!(fwd.iter().all(|e| e.service != 0 && e.dst_identity == WEB));
}

#[test]
fn udp_is_translated_and_a_frontend_without_backends_drops_with_its_reason() {
    let Some(mut n) = node("svc-udp") else {
        return;
    };
    let state = n.services(&target(2, false));
    let fe = LbKey::new(ip("10.96.0.10"), 53, 17);
    let (rc, out) = n.run(
        Hook::FromPod,
        packet::build(
            ip("10.0.0.1"),
            ip("10.96.0.10"),
            L4::Udp {
                sport: 5000,
                dport: 53,
            },
        ),
    );
    let want = lb::pick(&state, &fe, ip("10.0.0.1"), 5000).unwrap();
    assert_eq!(tuple(&out).1, want);
    assert!(checksums_ok(&out));
    if want.0 == ip("10.0.1.99") {
        assert_eq!(rc, DROP);
    } else {
        assert_eq!(rc, PASS);
    }
    n.events();
    // No backend: the SYN is answered with a reset (sent back out of the pod's interface),
    // and reported as the drop it is.
    let syn = with_checksums(packet::build(
        ip("10.0.0.1"),
        ip("10.96.0.20"),
        tcp(5001, 80, TCP_SYN),
    ));
    let (rc, out) = n.dp.test_run_output(Hook::FromPod, &syn).unwrap();
    assert_eq!(rc, 7, "TC_ACT_REDIRECT: the reset goes back to the pod");
    assert_eq!(
        tuple(&out),
        ((ip("10.96.0.20"), 80), (ip("10.0.0.1"), 5001)),
        "from the frontend to the client"
    );
    let l4 = 14 + 20;
    assert_eq!(out[l4 + 13], 0x14, "RST|ACK");
    let seq = u32::from_be_bytes(syn[l4 + 4..l4 + 8].try_into().unwrap());
    assert_eq!(out[l4 + 4..l4 + 8], [0, 0, 0, 0], "seq 0");
    assert_eq!(
        u32::from_be_bytes(out[l4 + 8..l4 + 12].try_into().unwrap()),
        seq.wrapping_add(1),
        "ack = the SYN's seq + 1"
    );
    assert_eq!(out[0..6], syn[6..12], "to the pod's MAC");
    assert!(checksums_ok(&out), "the reset's checksums");
    let ev = n.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].drop_reason as u32, abi::DROP_NO_SERVICE);
    assert_eq!(
        abi::drop_reason_name(u32::from(ev[0].drop_reason)),
        "SERVICE_BACKEND_NOT_FOUND"
    );
    assert_ne!(ev[0].service, 0);
    // A UDP datagram is answered with an ICMP port unreachable (over both families), sent
    // back to the pod, marked as judged for its to_pod.
    for (client, vip) in [("10.0.0.1", "10.96.0.20"), ("fd00::1", "fd00:96::20")] {
        let mut dgram = packet::build(
            ip(client),
            ip(vip),
            L4::Udp {
                sport: 5002,
                dport: 53,
            },
        );
        dgram.extend_from_slice(&[0xab; 100]);
        let v4 = vip.contains('.');
        let l3 = if v4 { 20 } else { 40 };
        let len = (dgram.len() - 14 - if v4 { 0 } else { 40 }) as u16;
        dgram[14 + if v4 { 2 } else { 4 }..][..2].copy_from_slice(&len.to_be_bytes());
        dgram[14 + l3 + 4..14 + l3 + 6].copy_from_slice(&((108u16).to_be_bytes()));
        let dgram = with_checksums(dgram);
        let (rc, out) = n.dp.test_run_output(Hook::FromPod, &dgram).unwrap();
        assert_eq!(
            rc, 7,
            "{vip}: TC_ACT_REDIRECT, the error goes back to the pod"
        );
        assert_eq!(out[0..6], dgram[6..12], "to the pod's MAC");
        let octets = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        // (source, destination, protocol, ICMP type and code, quote, total length)
        let (src, dst, proto, ty, code, quote, total) = if v4 {
            (
                &out[26..30],
                &out[30..34],
                out[23],
                out[34],
                out[35],
                &out[42..],
                70,
            )
        } else {
            (
                &out[22..38],
                &out[38..54],
                out[20],
                out[54],
                out[55],
                &out[62..],
                110,
            )
        };
        assert_eq!(
            out.len(),
            total,
            "{vip}: the error is exactly its headers and the quote"
        );
        assert_eq!(src, octets(ip(vip)), "{vip}: from the frontend");
        assert_eq!(dst, octets(ip(client)), "{vip}: to the client");
        assert_eq!(
            (proto, ty, code),
            if v4 { (1, 3, 3) } else { (58, 1, 4) },
            "{vip}: port unreachable"
        );
        assert_eq!(
            quote,
            &dgram[14..14 + l3 + 8],
            "{vip}: quoting the datagram's header and its first 8 bytes"
        );
        assert!(checksums_ok(&out), "{vip}: the error's checksums");
    }
    let (_, mark) =
        n.dp.test_run_marked(
            Hook::FromPod,
            &with_checksums(packet::build(
                ip("10.0.0.1"),
                ip("10.96.0.20"),
                L4::Udp {
                    sport: 5003,
                    dport: 53,
                },
            )),
            0,
        )
        .unwrap();
    assert_eq!(mark & abi::PROXY_MARK_MASK, abi::LB_MARK_HAIRPIN);
    // A SYN carrying data is answered by no one.
    let mut with_data = packet::build(ip("10.0.0.1"), ip("10.96.0.20"), tcp(5003, 80, TCP_SYN));
    with_data.extend_from_slice(b"data");
    let ip_len = ((with_data.len() - 14) as u16).to_be_bytes();
    with_data[14 + 2..14 + 4].copy_from_slice(&ip_len);
    let (rc, _) = n.dp.test_run_output(Hook::FromPod, &with_data).unwrap();
    assert_eq!(rc, DROP, "a SYN with data is not answered");
}

#[test]
fn a_flow_keeps_its_backend_while_it_stays_and_moves_when_it_leaves() {
    let Some(mut n) = node("svc-churn") else {
        return;
    };
    let vip = ip("10.96.0.10");
    let client = ip("10.0.0.1");
    let s3 = n.services(&target(3, false));
    let fe = LbKey::new(vip, 80, 6);
    // Open one flow to each web backend.
    let mut flows = Vec::new();
    for sport in 41000..41200u16 {
        let b = lb::pick(&s3, &fe, client, sport).unwrap();
        if b.0 == ip("10.0.1.99") || flows.iter().any(|(_, fb)| *fb == b) {
            continue;
        }
        let (rc, _) = n.run(
            Hook::FromPod,
            packet::build(client, vip, tcp(sport, 80, TCP_SYN)),
        );
        assert_eq!(rc, PASS);
        flows.push((sport, b));
    }
    assert_eq!(flows.len(), 3, "one flow per web pod");
    // web-2 leaves: the other flows keep their backend, web-2's flow is given a live one.
    let s2 = n.services(&target(2, false));
    for (sport, b) in &flows {
        let (_, out) = n.run(
            Hook::FromPod,
            packet::build(client, vip, tcp(*sport, 80, TCP_ACK)),
        );
        let now = tuple(&out).1;
        if b.0 == ip("10.0.1.12") {
            assert_ne!(now, *b, "a removed backend gets no more packets");
            assert_eq!(now, lb::pick(&s2, &fe, client, *sport).unwrap());
        } else {
            assert_eq!(now, *b, "flow {sport} kept its backend");
        }
    }
    // All backends gone: the frontend drops new flows with SERVICE_BACKEND_NOT_FOUND.
    let mut none = target(0, false);
    for fe in none.frontends.values_mut() {
        fe.backends.clear();
    }
    n.services(&none);
    n.events();
    let (rc, _) = n.run(
        Hook::FromPod,
        packet::build(client, vip, tcp(42000, 80, TCP_SYN)),
    );
    assert_eq!(rc, 7, "refused with a reset sent back to the pod");
    assert_eq!(n.events()[0].drop_reason as u32, abi::DROP_NO_SERVICE);
    // The service deleted: the maps are empty and the address is no longer translated.
    n.services(&LbTarget::default());
    assert_eq!(n.dp.lb_state().unwrap(), lb::LbState::default());
}

#[test]
fn session_affinity_sends_every_connection_of_a_client_to_one_backend() {
    let Some(mut n) = node("svc-affinity") else {
        return;
    };
    n.services(&target(3, true));
    let mut seen = std::collections::BTreeSet::new();
    for sport in 43000..43050u16 {
        let (_, out) = n.run(
            Hook::FromPod,
            packet::build(ip("10.0.0.1"), ip("10.96.0.10"), tcp(sport, 80, TCP_SYN)),
        );
        seen.insert(tuple(&out).1);
    }
    assert_eq!(seen.len(), 1, "one backend for every source port: {seen:?}");
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_given_the_hairpin_source() {
    let Some(mut n) = node("svc-hairpin") else {
        return;
    };
    // The client is itself the one backend of `self`; its ingress admits itself on 8080.
    let yaml = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: me, namespace: shop, labels: {app: me}}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {podIPs: [{ip: 10.0.0.1}, {ip: \"fd00::1\"}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: self, namespace: shop}\nspec:\n  selector: {app: me}\n  clusterIPs: [10.96.0.30, \"fd00:96::30\"]\n  ports: [{name: http, port: 80, targetPort: http}]\n";
    let c = load_str("self.yaml", yaml, &LoadOptions::default())
        .unwrap()
        .cluster;
    n.services(&LbTarget::from_cluster(&c, None));
    n.dp.upsert_policy(
        CLIENT,
        &key(CLIENT, abi::DIRECTION_EGRESS, 6, 8080),
        &allow(18),
    )
    .unwrap();
    n.dp.upsert_policy(
        CLIENT,
        &key(CLIENT, abi::DIRECTION_INGRESS, 6, 8080),
        &allow(19),
    )
    .unwrap();
    const REDIRECT: u32 = 7; // TC_ACT_REDIRECT: sent back out of the pod's host veth
    for (me, vip, hairpin) in [
        (
            ip("10.0.0.1"),
            ip("10.96.0.30"),
            IpAddr::V4(abi::LB_HAIRPIN_V4),
        ),
        (
            ip("fd00::1"),
            ip("fd00:96::30"),
            IpAddr::V6(abi::LB_HAIRPIN_V6),
        ),
    ] {
        // The SYN leaves translated, from the hairpin source, back towards the pod,
        // addressed to the pod's own MAC (else its kernel drops it as another host's frame).
        let syn = with_checksums(packet::build(me, vip, tcp(45000, 80, TCP_SYN)));
        let (rc, out) = n.dp.test_run_output(Hook::FromPod, &syn).unwrap();
        assert_eq!(rc, REDIRECT, "{vip}: {:?}", n.events());
        assert_eq!(out[0..6], syn[6..12], "destination MAC = the pod's");
        assert_eq!(out[6..12], syn[0..6], "source MAC = the host side's");
        assert_eq!(tuple(&out), ((hairpin, 45000), (me, 8080)));
        assert!(checksums_ok(&out), "{vip}");
        // Its to_pod admits it as the pod's own flow.
        let (rc, _) = n.dp.test_run_output(Hook::ToPod, &out).unwrap();
        assert_eq!(rc, PASS, "{vip}: the hairpin SYN is the pod's own traffic");
        // The pod's answer goes back to its client side from the frontend.
        let (rc, out) = n.run(
            Hook::FromPod,
            packet::build(me, hairpin, tcp(8080, 45000, TCP_SYN | TCP_ACK)),
        );
        assert_eq!(rc, REDIRECT, "{:?}", n.events());
        assert_eq!(tuple(&out), ((vip, 80), (me, 45000)));
        assert!(checksums_ok(&out), "{vip}");
        // Another pod may not pose as the hairpin source.
        let (rc, _) = n.run(
            Hook::ToPod,
            packet::build(hairpin, me, tcp(46000, 8080, TCP_SYN)),
        );
        assert_eq!(
            rc, DROP,
            "{vip}: a hairpin source no flow of the pod opened"
        );
    }
}

#[test]
fn a_client_port_reused_between_a_pod_address_and_a_frontend_gets_the_right_replies() {
    let Some(mut n) = node("svc-reuse") else {
        return;
    };
    let state = n.services(&target(2, false));
    let (client, vip) = (ip("10.0.0.1"), ip("10.96.0.10"));
    let fe = LbKey::new(vip, 80, 6);
    // A port whose pick through the frontend is a web pod (the client may reach those).
    let (sport, (baddr, bport)) = (41000..41100u16)
        .map(|p| (p, lb::pick(&state, &fe, client, p).unwrap()))
        .find(|(_, (b, _))| *b != ip("10.0.1.99"))
        .unwrap();
    let reply = |n: &mut Node| {
        let (rc, out) = n.run(
            Hook::ToPod,
            packet::build(baddr, client, tcp(bport, sport, TCP_SYN | TCP_ACK)),
        );
        assert_eq!(rc, PASS);
        tuple(&out).0
    };
    // Three connections from one client port, each after the last: to the pod address,
    // through the frontend, to the pod address again. Each one's answer comes from the
    // address that connection was sent to.
    for (i, (dst, dport)) in [(baddr, bport), (vip, 80), (baddr, bport)]
        .into_iter()
        .enumerate()
    {
        let (rc, out) = n.run(
            Hook::FromPod,
            packet::build(client, dst, tcp(sport, dport, TCP_SYN)),
        );
        assert_eq!(rc, PASS, "connection {i}");
        assert_eq!(
            tuple(&out).1,
            (baddr, bport),
            "connection {i} reaches the pod"
        );
        assert_eq!(
            reply(&mut n),
            (dst, dport),
            "connection {i}: the reply's source"
        );
    }
}

/// The uplink (docs/datapath.md §13): a flow from outside to a node port on a node address
/// is sent to the backend the policy core predicts, checksums valid; its reply leaving by
/// the uplink comes from the node port; traffic to no frontend, and packets of flows the
/// uplink did not translate, pass untouched; a node port without backends refuses a SYN
/// with a reset and reports the drop.
#[test]
fn the_uplink_translates_node_ports_from_outside_and_reverses_the_replies() {
    let Some(mut n) = node("svc-uplink") else {
        return;
    };
    let yaml = manifests(2, false)
        .replace(
            "  ports: [{name: http, port: 80, targetPort: http}, ",
            "  type: NodePort\n  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}, ",
        )
        .replace(
            "  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]",
            "  type: NodePort\n  ports: [{name: http, port: 80, nodePort: 30090}, \
             {name: dns, port: 53, protocol: UDP, nodePort: 30053}]",
        );
    let c = load_str("services.yaml", &yaml, &LoadOptions::default())
        .unwrap()
        .cluster;
    let node_addrs = [ip("198.18.0.1"), ip("fd00:198:18::1")];
    let t = LbTarget::from_cluster(&c, Some(&LbTarget::for_node(&node_addrs)));
    let state = n.services(&t);
    for (outside, node) in [
        ("198.18.0.2", "198.18.0.1"),
        ("fd00:198:18::2", "fd00:198:18::1"),
    ] {
        let fe = LbKey::new(ip(node), 30080, 6);
        let mut reached = std::collections::BTreeSet::new();
        for sport in 41000..41030u16 {
            let (baddr, bport) = lb::pick(&state, &fe, ip(outside), sport).unwrap();
            let (rc, out) = n.run(
                Hook::FromUplink,
                packet::build(ip(outside), ip(node), tcp(sport, 30080, TCP_SYN)),
            );
            assert_eq!(rc, PASS, "the uplink decides no policy: {outside}:{sport}");
            assert_eq!(tuple(&out), ((ip(outside), sport), (baddr, bport)));
            assert!(
                checksums_ok(&out),
                "{outside}:{sport}: checksums after DNAT"
            );
            reached.insert(baddr);
            let (rc, out) = n.run(
                Hook::ToUplink,
                packet::build(baddr, ip(outside), tcp(bport, sport, TCP_SYN | TCP_ACK)),
            );
            assert_eq!(rc, PASS);
            assert_eq!(
                tuple(&out),
                ((ip(node), 30080), (ip(outside), sport)),
                "the reply leaves from the node port"
            );
            assert!(checksums_ok(&out), "checksums after reverse NAT");
            // The flow's next packet keeps its backend.
            let (_, out) = n.run(
                Hook::FromUplink,
                packet::build(ip(outside), ip(node), tcp(sport, 30080, TCP_ACK)),
            );
            assert_eq!(tuple(&out).1, (baddr, bport));
        }
        assert_eq!(
            reached.len(),
            3,
            "{outside}: flows spread over every backend"
        );
    }
    // Not a frontend (a pod address, another node port): untouched, both ways.
    for (src, dst, sport, dport) in [
        ("198.18.0.2", "10.0.1.10", 42000, 8080),
        ("198.18.0.2", "198.18.0.1", 42001, 30081),
    ] {
        let pkt = with_checksums(packet::build(ip(src), ip(dst), tcp(sport, dport, TCP_SYN)));
        let (rc, out) = n.dp.test_run_output(Hook::FromUplink, &pkt).unwrap();
        assert_eq!((rc, out), (PASS, pkt), "{dst}:{dport} passes untouched");
        let reply = with_checksums(packet::build(
            ip(dst),
            ip(src),
            tcp(dport, sport, TCP_SYN | TCP_ACK),
        ));
        let (rc, out) = n.dp.test_run_output(Hook::ToUplink, &reply).unwrap();
        assert_eq!((rc, out), (PASS, reply), "its reply too");
    }
    n.events();
    // A node port without backends: the SYN comes back as a reset, out of the uplink.
    let syn = with_checksums(packet::build(
        ip("198.18.0.2"),
        ip("198.18.0.1"),
        tcp(42002, 30090, TCP_SYN),
    ));
    let (rc, out) = n.dp.test_run_output(Hook::FromUplink, &syn).unwrap();
    assert_eq!(rc, 7, "TC_ACT_REDIRECT: the reset goes back out");
    assert_eq!(
        tuple(&out),
        ((ip("198.18.0.1"), 30090), (ip("198.18.0.2"), 42002))
    );
    assert_eq!(out[14 + 20 + 13], 0x14, "RST|ACK");
    assert!(checksums_ok(&out));
    // A UDP datagram there: an ICMP port unreachable, out of the uplink.
    let dgram = with_checksums(packet::build(
        ip("198.18.0.2"),
        ip("198.18.0.1"),
        L4::Udp {
            sport: 42004,
            dport: 30053,
        },
    ));
    let (rc, out) = n.dp.test_run_output(Hook::FromUplink, &dgram).unwrap();
    assert_eq!(rc, 7);
    assert_eq!(
        (out[23], out[34], out[35]),
        (1, 3, 3),
        "ICMP port unreachable"
    );
    assert_eq!(out[26..30], [198, 18, 0, 1], "from the node address");
    assert_eq!(out[42..], dgram[14..42], "quoting the datagram");
    assert!(checksums_ok(&out));
    let ev = n.events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in &ev {
        assert_eq!(e.drop_reason as u32, abi::DROP_NO_SERVICE);
        assert_eq!(e.src_identity, abi::IDENTITY_WORLD_IPV4);
        assert_ne!(e.service, 0);
    }
    // A reply whose frontend was deleted meanwhile is dropped, not sent untranslated.
    let (rc, out) = n.run(
        Hook::FromUplink,
        packet::build(
            ip("198.18.0.2"),
            ip("198.18.0.1"),
            tcp(42003, 30080, TCP_SYN),
        ),
    );
    assert_eq!(rc, PASS);
    let ((_, _), (baddr, bport)) = tuple(&out);
    n.services(&LbTarget::for_node(&node_addrs));
    let (rc, _) = n.run(
        Hook::ToUplink,
        packet::build(
            baddr,
            ip("198.18.0.2"),
            tcp(bport, 42003, TCP_SYN | TCP_ACK),
        ),
    );
    assert_eq!(rc, DROP, "no frontend to answer from");
}

/// SCTP (packet level only: this kernel has no SCTP sockets): a frontend whose backends
/// listen on its own port is translated by its address alone, which leaves the CRC32c valid
/// (it covers the SCTP packet, not the addresses) over both families, and the reply comes
/// back from the frontend; a frontend that would need its port rewritten is left out, with
/// the reason in the target's "not translated" list.
#[test]
fn sctp_frontends_on_their_backends_port_are_translated_with_the_crc_untouched() {
    let Some(mut n) = node("svc-sctp") else {
        return;
    };
    let yaml = "---
apiVersion: v1
kind: Pod
metadata: {name: diameter-0, namespace: shop, labels: {app: diameter}}
status: {podIPs: [{ip: 10.0.1.30}, {ip: \"fd00:1::30\"}]}
---
apiVersion: v1
kind: Service
metadata: {name: diameter, namespace: shop}
spec:
  selector: {app: diameter}
  clusterIPs: [10.96.0.60, \"fd00:96::60\"]
  ports: [{name: diameter, port: 3868, protocol: SCTP}]
---
apiVersion: v1
kind: Service
metadata: {name: remap, namespace: shop}
spec:
  selector: {app: diameter}
  clusterIPs: [10.96.0.61]
  ports: [{name: diameter, port: 3868, targetPort: 3869, protocol: SCTP}]
";
    let c = load_str("sctp.yaml", yaml, &LoadOptions::default())
        .unwrap()
        .cluster;
    let t = LbTarget::from_cluster(&c, None);
    assert!(
        t.skipped
            .iter()
            .any(|m| m.contains("shop/remap") && m.contains("CRC32c")),
        "{:?}",
        t.skipped
    );
    assert!(
        !t.frontends
            .contains_key(&LbKey::new(ip("10.96.0.61"), 3868, 132)),
        "the remapped frontend is not written"
    );
    n.services(&t);
    n.dp.upsert_policy(
        CLIENT,
        &key(WEB, abi::DIRECTION_EGRESS, 132, 3868),
        &allow(20),
    )
    .unwrap();
    let sctp = |sport, dport| L4::Sctp { sport, dport };
    for (client, vip, backend) in [
        ("10.0.0.1", "10.96.0.60", "10.0.1.30"),
        ("fd00::1", "fd00:96::60", "fd00:1::30"),
    ] {
        let pkt = with_checksums(packet::build(ip(client), ip(vip), sctp(40000, 3868)));
        assert!(checksums_ok(&pkt));
        let (rc, out) = n.dp.test_run_output(Hook::FromPod, &pkt).unwrap();
        assert_eq!(rc, PASS, "{vip}: {:?}", n.events());
        assert_eq!(tuple(&out), ((ip(client), 40000), (ip(backend), 3868)));
        let l4 = 14 + if vip.contains('.') { 20 } else { 40 };
        assert_eq!(
            out[l4..],
            pkt[l4..],
            "{vip}: the SCTP packet (and its CRC32c) untouched"
        );
        assert!(checksums_ok(&out), "{vip}: every checksum after DNAT");
        let reply = with_checksums(packet::build(ip(backend), ip(client), sctp(3868, 40000)));
        let (rc, out) = n.dp.test_run_output(Hook::ToPod, &reply).unwrap();
        assert_eq!(rc, PASS);
        assert_eq!(tuple(&out), ((ip(vip), 3868), (ip(client), 40000)));
        assert!(
            checksums_ok(&out),
            "{vip}: every checksum after reverse NAT"
        );
    }
    // The remapped frontend is no frontend: its packets go on untranslated (and the
    // client's policy, which admits nothing there, drops them).
    let pkt = with_checksums(packet::build(
        ip("10.0.0.1"),
        ip("10.96.0.61"),
        sctp(40001, 3868),
    ));
    let (rc, out) = n.dp.test_run_output(Hook::FromPod, &pkt).unwrap();
    assert_eq!(rc, DROP);
    assert_eq!(tuple(&out).1, (ip("10.96.0.61"), 3868), "not translated");
}

/// Session affinity holds across a backend change and ends with its timeout: after the
/// frontend's table changes so that it would now send the client elsewhere, the client's
/// new flows keep going to its backend (pal_lb_affinity) until `timeoutSeconds` pass
/// without a new flow; then they follow the table.
#[test]
fn session_affinity_outlives_a_table_change_until_its_timeout() {
    let Some(mut n) = node("svc-affinity-state") else {
        return;
    };
    let yaml = |pods: usize| {
        manifests(pods, true).replace(
            "  sessionAffinity: ClientIP\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n",
        )
    };
    let target = |pods: usize, previous: Option<&LbTarget>| {
        let c = load_str("affinity.yaml", &yaml(pods), &LoadOptions::default())
            .unwrap()
            .cluster;
        LbTarget::from_cluster(&c, previous)
    };
    let (client, vip) = (ip("10.0.0.1"), ip("10.96.0.10"));
    let fe = LbKey::new(vip, 80, 6);
    let t3 = target(3, None);
    n.services(&t3);
    let mut sport = 44000u16;
    let mut new_flow = |n: &mut Node| {
        sport += 1;
        let (_, out) = n.run(
            Hook::FromPod,
            packet::build(client, vip, tcp(sport, 80, TCP_SYN)),
        );
        tuple(&out).1
    };
    let mine = new_flow(&mut n);
    assert_eq!(new_flow(&mut n), mine, "affinity: the same backend");
    // A backend set whose table sends the client to another backend, keeping the first.
    let (pods, state) = (4..16)
        .find_map(|pods| {
            let t = target(pods, Some(&t3));
            let s = n.services(&t);
            let pick = lb::pick(&s, &fe, client, 0).unwrap();
            let keeps = t.frontends[&fe]
                .backends
                .contains(&abi::LbBackend::new(mine.0, mine.1));
            (pick != mine && keeps).then_some((pods, s))
        })
        .expect("some backend count moves the client's slot");
    let table_pick = lb::pick(&state, &fe, client, 0).unwrap();
    for _ in 0..3 {
        assert_eq!(
            new_flow(&mut n),
            mine,
            "with {pods} pods the table says {table_pick:?}; the affinity keeps {mine:?}"
        );
    }
    // No new flow for longer than the timeout: the next one follows the table.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(new_flow(&mut n), table_pick, "after the timeout");
    assert_eq!(new_flow(&mut n), table_pick, "and sticks there");
}
