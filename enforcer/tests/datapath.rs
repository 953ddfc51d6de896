//! Packet-level tests of the C datapath: the real programs run with BPF_PROG_TEST_RUN
//! on crafted IPv4/IPv6 TCP/UDP/SCTP/ICMP packets against maps written through the
//! enforcer's own map code; return codes, conntrack entries, counters and events are
//! asserted. Each test loads a fresh datapath in a private bpffs (test_run has the side
//! effects of a real packet).
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
use palisade_testkit::packet::{self, L4, TCP_ACK, TCP_FIN, TCP_SYN};
use policy_compiler::EntryKey;
use policy_compiler::abi::{self, EndpointInfo, PolicyValue, VerdictEvent};
use policy_compiler::cidr::Cidr;

const PASS: u32 = abi::tcx::NEXT;
const DROP: u32 = abi::tcx::DROP;

const POD: u32 = 300; // the endpoint under test (ifindex 1: test_run binds skb to lo)
const PEER: u32 = 400; // 10.0.0.2, fd00::2
const OTHER: u32 = 500; // 10.0.0.3

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn allow(rule: u32) -> PolicyValue {
    PolicyValue {
        rule_id: rule,
        verdict: abi::POLICY_VERDICT_ALLOW,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        ..Default::default()
    }
}

/// An L7 redirect to the proxy on port 15080, naming `rule`.
fn redirect(rule: u32) -> PolicyValue {
    PolicyValue {
        rule_id: rule,
        verdict: abi::POLICY_VERDICT_REDIRECT,
        proxy_port_be: 15080u16.to_be(),
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        ..Default::default()
    }
}

/// `pal_proxy` says the L7 proxy (port 15080) takes redirected connections.
fn proxy_ready(dp: &mut Datapath) {
    dp.set_proxy(&abi::ProxyState {
        flags: abi::PROXY_F_READY,
        port_be: 15080u16.to_be(),
        pad: 0,
    })
    .unwrap();
}

fn port_key(identity: u32, dir: u8, proto: u8, port: u16) -> EntryKey {
    EntryKey {
        identity,
        direction: dir,
        protocol: proto,
        port,
        prefixlen: abi::POLICY_PREFIX_FULL as u8,
    }
}

fn any_key(identity: u32, dir: u8) -> EntryKey {
    EntryKey {
        identity,
        direction: dir,
        protocol: 0,
        port: 0,
        prefixlen: abi::POLICY_PREFIX_ANY_PROTO as u8,
    }
}

struct Fixture {
    _fs: common::PrivateBpffs,
    dp: Datapath,
    events: RingBuf<MapData>,
}

/// The standard node: POD with
///   ingress: PEER -> TCP 80 (rule 16); any peer -> UDP 53 (rule 17); OTHER -> TCP 80 (rule 20)
///            any peer -> SCTP 7000 (rule 21); fd00::2 (PEER) -> TCP 443 (rule 22)
///   egress:  PEER, any protocol (rule 18)
fn fixture(tag: &str) -> Option<Fixture> {
    if !common::privileged(tag) {
        return None;
    }
    let fs = common::PrivateBpffs::new(tag);
    let mut dp = fs.load();
    for (c, id) in [
        ("10.0.0.1/32", POD),
        ("10.0.0.2/32", PEER),
        ("10.0.0.3/32", OTHER),
        ("fd00::1/128", POD),
        ("fd00::2/128", PEER),
        ("0.0.0.0/0", abi::IDENTITY_WORLD_IPV4),
        ("::/0", abi::IDENTITY_WORLD_IPV6),
    ] {
        dp.upsert_ipcache(&c.parse::<Cidr>().unwrap(), id).unwrap();
    }
    let ing = abi::DIRECTION_INGRESS;
    let eg = abi::DIRECTION_EGRESS;
    for (k, v) in [
        (port_key(PEER, ing, 6, 80), allow(16)),
        (port_key(0, ing, 17, 53), allow(17)),
        (any_key(PEER, eg), allow(18)),
        (port_key(OTHER, ing, 6, 80), allow(20)),
        (port_key(0, ing, 132, 7000), allow(21)),
        (port_key(PEER, ing, 6, 443), allow(22)),
    ] {
        dp.upsert_policy(POD, &k, &v).unwrap();
    }
    set_ready(&mut dp, 1);
    let events = dp.take_events().unwrap();
    Some(Fixture {
        _fs: fs,
        dp,
        events,
    })
}

fn set_ready(dp: &mut Datapath, revision: u32) {
    dp.set_endpoint(
        1,
        &EndpointInfo {
            identity: POD,
            policy_slot: POD,
            flags: abi::ENDPOINT_F_READY,
            revision,
            ..Default::default()
        }
        .with_addresses(&[ip("10.0.0.1"), ip("fd00::1")]),
    )
    .unwrap();
}

/// The test endpoint written without READY (its policy not in place).
fn set_unready(dp: &mut Datapath) {
    dp.set_endpoint(
        1,
        &EndpointInfo {
            identity: POD,
            policy_slot: POD,
            flags: 0,
            revision: 1,
            ..Default::default()
        },
    )
    .unwrap();
}

impl Fixture {
    fn run(&mut self, hook: Hook, src: &str, dst: &str, l4: L4) -> u32 {
        self.dp
            .test_run(hook, &packet::build(ip(src), ip(dst), l4))
            .unwrap()
    }
    fn events(&mut self) -> Vec<VerdictEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(VerdictEvent::from_bytes(&item).unwrap());
        }
        out
    }
    fn counter(&self, dir: u8, code: u32) -> u64 {
        self.dp
            .counters()
            .unwrap()
            .get(&(dir, code))
            .map(|c| c.packets)
            .unwrap_or(0)
    }
}

/// Sets the IPv6 hop limit (IPv4 TTL) of a frame built by `packet::build`.
fn with_hop_limit(mut pkt: Vec<u8>, hops: u8) -> Vec<u8> {
    if pkt[12..14] == [0x86, 0xdd] {
        pkt[14 + 7] = hops;
    } else {
        pkt[14 + 8] = hops;
    }
    pkt
}

/// An IPv4 frame as fragment `offset8` (in 8-byte units) of datagram `id`; `more` sets MF.
/// A later fragment keeps the bytes after the IP header but they are payload, not L4.
fn ipv4_fragment(mut pkt: Vec<u8>, id: u16, offset8: u16, more: bool) -> Vec<u8> {
    pkt[18..20].copy_from_slice(&id.to_be_bytes());
    let fo = offset8 | if more { 0x2000 } else { 0 };
    pkt[20..22].copy_from_slice(&fo.to_be_bytes());
    pkt
}

/// An IPv6 frame with a fragment header (offset in 8-byte units, M flag, id) inserted
/// before its L4 header.
fn ipv6_fragment(pkt: Vec<u8>, id: u32, offset8: u16, more: bool) -> Vec<u8> {
    let next = pkt[20];
    let mut out = pkt[..54].to_vec();
    out[20] = 44; // IPPROTO_FRAGMENT
    let plen = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    let fo = (offset8 << 3) | u16::from(more);
    out.extend_from_slice(&[next, 0]);
    out.extend_from_slice(&fo.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&pkt[54..]);
    out
}

fn syn(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags: TCP_SYN,
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

#[test]
fn allowed_syn_is_tracked_reported_and_counted() {
    let Some(mut f) = fixture("allow") else {
        return;
    };
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(40000, 80)),
        PASS
    );
    let ct = f.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 1, "one conntrack entry: {ct:?}");
    let (k, e) = ct[0];
    // Canonical key (ABI v3): the pod's side 10.0.0.1:80 is the lower one, so the tuple
    // is swapped and the direction flipped; the entry records the opening hook.
    assert_eq!(k.direction, abi::DIRECTION_INGRESS ^ 1);
    assert_eq!(u16::from_be(k.sport_be), 80);
    assert_eq!(u16::from_be(k.dport_be), 40000);
    assert_eq!(k.ifindex, 1);
    assert_eq!(e.flags & abi::CT_F_OPENED_INGRESS, abi::CT_F_OPENED_INGRESS);
    assert_eq!(e.rule_id, 16);
    assert_eq!((e.src_identity, e.dst_identity), (PEER, POD));
    let ev = f.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].verdict, abi::EVENT_VERDICT_FORWARDED);
    assert_eq!(ev[0].kind, abi::EVENT_KIND_NEW_FLOW);
    assert_eq!(ev[0].rule_id, 16);
    assert_eq!((ev[0].src_identity, ev[0].dst_identity), (PEER, POD));
    assert_eq!(u16::from_be(ev[0].dport_be), 80);
    assert_eq!(ev[0].tcp_flags, TCP_SYN);
    assert_eq!(f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_FORWARDED), 1);

    // The rest of the connection: no more events, counted as conntrack hits.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(40000, 80, TCP_ACK)),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            tcp(80, 40000, TCP_ACK)
        ),
        PASS
    );
    assert!(f.events().is_empty());
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_CT_ESTABLISHED),
        1
    );
    assert_eq!(f.counter(abi::DIRECTION_EGRESS, abi::COUNTER_CT_REPLY), 1);
}

/// Fail closed (docs/datapath.md §3.1): a pod hook whose decision program is missing from
/// `pal_tail` drops every packet its fast path does not finish, counted as
/// DROP_MISSED_TAIL_CALL, never passes it; the flows it can finish (established, same
/// revision) keep passing, and the other direction's slot is untouched.
#[test]
fn a_missing_decision_program_drops_what_the_fast_path_does_not_finish() {
    let Some(mut f) = fixture("tail") else {
        return;
    };
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(40000, 80)),
        PASS
    );
    let data = aya::maps::MapData::from_pin(f.dp.pin_dir().join(abi::map_name::TAIL)).unwrap();
    let mut tail = aya::maps::ProgramArray::try_from(aya::maps::Map::ProgramArray(data)).unwrap();
    tail.clear_index(&u32::from(abi::DIRECTION_INGRESS))
        .unwrap();

    // A new flow needs the decision: dropped and counted, not passed.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(40001, 80)),
        DROP
    );
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::DROP_MISSED_TAIL_CALL),
        1
    );
    // The tracked flow's next packet is finished by the fast path.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(40000, 80, TCP_ACK)),
        PASS
    );
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_CT_ESTABLISHED),
        1
    );
    // After an endpoint write the flow must be validated again by the decision: dropped.
    set_ready(&mut f.dp, 1);
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(40000, 80, TCP_ACK)),
        DROP
    );
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::DROP_MISSED_TAIL_CALL),
        2
    );
    // from_pod's slot is in place: its new flows are decided as before.
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", syn(41000, 9999)),
        PASS
    );
    assert_eq!(
        f.counter(abi::DIRECTION_EGRESS, abi::DROP_MISSED_TAIL_CALL),
        0
    );
}

/// The fast path takes an established flow without looking its endpoint up; what stands
/// for the lookup is the endpoint generation (docs/datapath.md §3.1). An endpoint written
/// not ready, or deleted, or written for another endpoint, moves it: the flow's next packet
/// is decided again, so an endpoint that stops being ready drops its established flows at
/// once, as before the fast path, and a flow re-validated under the new generation is
/// taken by the fast path again.
#[test]
fn an_endpoint_write_sends_established_flows_back_to_the_decision() {
    let Some(mut f) = fixture("epgen") else {
        return;
    };
    let ack = |f: &mut Fixture| f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(40000, 80, TCP_ACK));
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(40000, 80)),
        PASS
    );
    let gen0 = f.dp.ep_gen();
    assert_ne!(gen0, 0);
    assert_eq!(f.dp.ct_entries().unwrap()[0].1.ep_gen, gen0);
    assert_eq!(ack(&mut f), PASS);

    // Not ready: the established flow is dropped as the decision drops it.
    set_unready(&mut f.dp);
    assert_eq!(f.dp.ep_gen(), gen0 + 1);
    assert_eq!(ack(&mut f), DROP);
    assert_eq!(f.counter(abi::DIRECTION_INGRESS, abi::DROP_EP_NOT_READY), 1);

    // Ready again, same revision: the decision re-validates the flow under the new
    // generation, and from then on the fast path takes it.
    set_ready(&mut f.dp, 1);
    let established = f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_CT_ESTABLISHED);
    assert_eq!(ack(&mut f), PASS);
    assert_eq!(f.dp.ct_entries().unwrap()[0].1.ep_gen, f.dp.ep_gen());
    assert_eq!(ack(&mut f), PASS);
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_CT_ESTABLISHED),
        established + 2
    );

    // Deleted: dropped again.
    f.dp.remove_endpoint(1).unwrap();
    assert_eq!(ack(&mut f), DROP);
    assert_eq!(f.counter(abi::DIRECTION_INGRESS, abi::DROP_EP_NOT_READY), 2);
}

/// Local delivery (docs/datapath.md §3.2): a decision learns how the node delivers to its
/// endpoint from a frame it admits; the fast path hands an established packet of the pod to
/// a pod of this node learned under the current endpoint generation (that link's MACs, TTL
/// or hop limit one less, redirected to its host veth), and leaves everything else to the
/// node's stack: a route of an older generation, a hop limit that would run out.
/// Gives the flow `src:sport -> dst:dport` an entry at PEER's interface (7) as PEER's
/// to_pod would make it, copied from the test endpoint's entry of the flow.
fn track_at_peer(f: &mut Fixture, src: &str, dst: &str, sport: u16, dport: u16) {
    let addr = |s: &str| abi::LocalKey::new(ip(s)).addr;
    let family = if ip(src).is_ipv4() { 4 } else { 6 };
    let key = |direction, ifindex| {
        abi::CtKey::canonical(
            addr(src),
            addr(dst),
            sport.to_be(),
            dport.to_be(),
            6,
            family,
            direction,
            ifindex,
        )
    };
    // The test endpoint's to_pod opened the flow from dst: its key is the reply's, swapped.
    let own = key(abi::DIRECTION_EGRESS, 1);
    let entry =
        f.dp.ct_entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == own)
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("no entry {own:?}"));
    f.dp.write_ct_entry(&key(abi::DIRECTION_INGRESS, 7), &entry)
        .unwrap();
}

#[test]
fn established_packets_go_straight_to_a_local_pod_learned_under_the_current_generation() {
    let Some(mut f) = fixture("local") else {
        return;
    };
    // A new flow to the pod: its address, interface and the frame's MACs are learned.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(40000, 80)),
        PASS
    );
    let routes = f.dp.local_routes().unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    let (k, r) = routes[0];
    assert_eq!(k, abi::LocalKey::new(ip("10.0.0.1")));
    assert_eq!((r.ifindex, r.ep_gen), (1, f.dp.ep_gen()));
    assert_eq!(r.pod_mac, [2, 0, 0, 0, 0, 2], "the frame's destination");
    assert_eq!(r.node_mac, [2, 0, 0, 0, 0, 1], "the frame's source");

    // PEER is a pod of this node on interface 7 (test_run runs everything on 1).
    let peer_route = |ep_gen| abi::LocalRoute {
        ifindex: 7,
        ep_gen,
        pod_mac: [2, 0, 0, 0, 0, 0x22],
        node_mac: [2, 0, 0, 0, 0, 0x11],
    };
    let peer4 = abi::LocalKey::new(ip("10.0.0.2"));
    f.dp.write_local_route(&peer4, &peer_route(f.dp.ep_gen()))
        .unwrap();
    let reply = packet::with_checksums(packet::build(
        ip("10.0.0.1"),
        ip("10.0.0.2"),
        tcp(80, 40000, TCP_SYN | TCP_ACK),
    ));
    // Until PEER's interface tracks this very tuple (as when the node rewrote the flow on
    // its way, a DNAT of its own), the packet stays with the node's stack.
    assert_eq!(f.dp.test_run(Hook::FromPod, &reply).unwrap(), PASS);
    track_at_peer(&mut f, "10.0.0.1", "10.0.0.2", 80, 40000);
    let (ret, out) = f.dp.test_run_output(Hook::FromPod, &reply).unwrap();
    assert_eq!(ret, abi::tcx::REDIRECT);
    assert_eq!(out[0..6], [2, 0, 0, 0, 0, 0x22]);
    assert_eq!(out[6..12], [2, 0, 0, 0, 0, 0x11]);
    assert_eq!(out[14 + 8], 63, "TTL one less");
    assert!(
        packet::checksums_ok(&out),
        "IPv4 header checksum follows the TTL"
    );
    assert_eq!(out[12..14 + 8], reply[12..14 + 8]);
    assert_eq!(out[14 + 9..14 + 10], reply[14 + 9..14 + 10]);
    assert_eq!(
        out[14 + 12..],
        reply[14 + 12..],
        "addresses and TCP untouched"
    );
    assert_eq!(f.counter(abi::DIRECTION_EGRESS, abi::COUNTER_CT_REPLY), 2);
    // A hop limit that would run out is the stack's (it answers time exceeded).
    let last_hop = packet::with_checksums(with_hop_limit(reply.clone(), 1));
    assert_eq!(f.dp.test_run(Hook::FromPod, &last_hop).unwrap(), PASS);

    // The generation moves: the decision re-validates the flow (and learns the pod's own
    // address from its frame); the fast path then leaves the packet to the stack while
    // PEER's route is of the older generation.
    set_ready(&mut f.dp, 1);
    assert_eq!(f.dp.test_run(Hook::FromPod, &reply).unwrap(), PASS);
    assert_eq!(f.dp.test_run(Hook::FromPod, &reply).unwrap(), PASS);
    let own = f.dp.local_routes().unwrap();
    let (_, r) = own
        .iter()
        .find(|(k, _)| *k == abi::LocalKey::new(ip("10.0.0.1")))
        .unwrap();
    assert_eq!(r.ep_gen, f.dp.ep_gen());
    assert_eq!(
        r.pod_mac,
        [2, 0, 0, 0, 0, 1],
        "from the pod: the frame's source"
    );
    // Learned again under this generation: straight to PEER again.
    f.dp.write_local_route(&peer4, &peer_route(f.dp.ep_gen()))
        .unwrap();
    assert_eq!(
        f.dp.test_run(Hook::FromPod, &reply).unwrap(),
        abi::tcx::REDIRECT
    );

    // IPv6: the hop limit, no header checksum.
    assert_eq!(
        f.run(Hook::ToPod, "fd00::2", "fd00::1", syn(40001, 443)),
        PASS
    );
    f.dp.write_local_route(
        &abi::LocalKey::new(ip("fd00::2")),
        &peer_route(f.dp.ep_gen()),
    )
    .unwrap();
    track_at_peer(&mut f, "fd00::1", "fd00::2", 443, 40001);
    let reply6 = packet::with_checksums(packet::build(
        ip("fd00::1"),
        ip("fd00::2"),
        tcp(443, 40001, TCP_SYN | TCP_ACK),
    ));
    let (ret, out) = f.dp.test_run_output(Hook::FromPod, &reply6).unwrap();
    assert_eq!(ret, abi::tcx::REDIRECT);
    assert_eq!(out[0..12], [2, 0, 0, 0, 0, 0x22, 2, 0, 0, 0, 0, 0x11]);
    assert_eq!(out[14 + 7], 63, "hop limit one less");
    assert_eq!(out[12..14 + 7], reply6[12..14 + 7]);
    assert_eq!(out[14 + 8..], reply6[14 + 8..]);

    // A frame to a group address teaches nothing: a new flow from PEER to the pod sent to a
    // multicast MAC leaves the pod's route as it was.
    let before = f.dp.local_routes().unwrap();
    let mut mcast = packet::build(ip("10.0.0.2"), ip("10.0.0.1"), syn(40002, 80));
    mcast[0] = 0x01;
    set_ready(&mut f.dp, 1);
    assert_eq!(f.dp.test_run(Hook::ToPod, &mcast).unwrap(), PASS);
    let after = f.dp.local_routes().unwrap();
    let route_of = |v: &[(abi::LocalKey, abi::LocalRoute)]| {
        v.iter()
            .find(|(k, _)| *k == abi::LocalKey::new(ip("10.0.0.1")))
            .map(|(_, r)| *r)
    };
    assert_eq!(route_of(&after), route_of(&before));
}

#[test]
fn default_deny_drops_with_reason_and_one_event_per_repeat_window() {
    let Some(mut f) = fixture("deny") else { return };
    for _ in 0..3 {
        assert_eq!(
            f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(40001, 81)),
            DROP
        );
    }
    let ev = f.events();
    assert_eq!(
        ev.len(),
        1,
        "retransmits are counted, not re-reported: {ev:?}"
    );
    assert_eq!(ev[0].verdict, abi::EVENT_VERDICT_DROPPED);
    assert_eq!(ev[0].drop_reason as u32, abi::DROP_POLICY_DENIED);
    assert_eq!(ev[0].rule_id, abi::RULE_ID_NONE);
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::DROP_POLICY_DENIED),
        3
    );
    assert!(
        f.dp.ct_entries().unwrap().is_empty(),
        "no state for a denied flow"
    );
}

#[test]
fn replies_pass_only_through_conntrack_of_the_same_endpoint() {
    let Some(mut f) = fixture("reply") else {
        return;
    };
    // OTHER may reach POD:80, but POD has no egress rule for OTHER.
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.3",
            tcp(80, 41000, TCP_SYN | TCP_ACK)
        ),
        DROP,
        "a reply-looking packet without state is a new flow"
    );
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", syn(41000, 80)),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.3",
            tcp(80, 41000, TCP_SYN | TCP_ACK)
        ),
        PASS
    );
    // Another source port: no state.
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.3",
            tcp(80, 41001, TCP_ACK)
        ),
        DROP
    );
    // An unsolicited ACK from a denied peer towards the pod is checked as new.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.9", "10.0.0.1", tcp(80, 5555, TCP_ACK)),
        DROP
    );
}

#[test]
fn icmp_echo_reply_is_a_reply_but_echo_request_is_not() {
    let Some(mut f) = fixture("icmp") else { return };
    let req = L4::Icmp {
        kind: 8,
        code: 0,
        id: 7,
    };
    let rep = L4::Icmp {
        kind: 0,
        code: 0,
        id: 7,
    };
    // POD pings PEER (egress allowed).
    assert_eq!(f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", req), PASS);
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", rep), PASS);
    // PEER's own echo request with the same id is a new flow: ingress has no ICMP rule.
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", req), DROP);
    // A reply with another id has no state.
    assert_eq!(
        f.run(
            Hook::ToPod,
            "10.0.0.2",
            "10.0.0.1",
            L4::Icmp {
                kind: 0,
                code: 0,
                id: 8
            }
        ),
        DROP
    );
    // ICMPv6 the same way.
    assert_eq!(
        f.run(
            Hook::FromPod,
            "fd00::1",
            "fd00::2",
            L4::Icmp {
                kind: 128,
                code: 0,
                id: 9
            }
        ),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::ToPod,
            "fd00::2",
            "fd00::1",
            L4::Icmp {
                kind: 129,
                code: 0,
                id: 9
            }
        ),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::ToPod,
            "fd00::2",
            "fd00::1",
            L4::Icmp {
                kind: 128,
                code: 0,
                id: 9
            }
        ),
        DROP
    );
}

#[test]
fn udp_sctp_and_ipv6_follow_their_rules() {
    let Some(mut f) = fixture("l4") else { return };
    let udp = |s, d| L4::Udp { sport: s, dport: d };
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", udp(5000, 53)),
        PASS,
        "any peer UDP 53"
    );
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.1", "10.0.0.3", udp(53, 5000)),
        PASS,
        "UDP reply"
    );
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", udp(5000, 54)),
        DROP
    );
    let sctp = |s, d| L4::Sctp { sport: s, dport: d };
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", sctp(6000, 7000)),
        PASS
    );
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", sctp(6000, 7001)),
        DROP
    );
    assert_eq!(
        f.run(Hook::ToPod, "fd00::2", "fd00::1", syn(1234, 443)),
        PASS
    );
    assert_eq!(
        f.run(Hook::ToPod, "fd00::2", "fd00::1", syn(1234, 444)),
        DROP
    );
    let ev = f.events();
    let v6 = ev
        .iter()
        .find(|e| e.family == 6 && u16::from_be(e.dport_be) == 443)
        .unwrap();
    assert_eq!((v6.rule_id, v6.src_identity), (22, PEER));
    // An unknown protocol number is allowed only by a rule without ports (egress to PEER).
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            L4::Other { protocol: 47 }
        ),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::ToPod,
            "10.0.0.3",
            "10.0.0.1",
            L4::Other { protocol: 47 }
        ),
        DROP
    );
}

/// Issue 10 item 16: the source check compares the source with the endpoint's own
/// addresses, not identities. Before, a pod could open flows from the address of another
/// endpoint of its identity (the ipcache gave the same identity), and its own address was
/// accepted only while the ipcache named its identity or its transit.
#[test]
fn source_check_is_the_endpoints_own_addresses() {
    let Some(mut f) = fixture("source") else {
        return;
    };
    let reason = |f: &mut Fixture| f.events().last().unwrap().drop_reason as u32;
    // Another endpoint of the same identity (10.0.0.4, fd00::4): not the pod's address.
    for c in ["10.0.0.4/32", "fd00::4/128"] {
        f.dp.upsert_ipcache(&c.parse::<Cidr>().unwrap(), POD)
            .unwrap();
    }
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.4", "10.0.0.2", syn(1, 80)),
        DROP
    );
    assert_eq!(reason(&mut f), abi::DROP_INVALID_SOURCE_IP);
    assert_eq!(f.run(Hook::FromPod, "fd00::4", "fd00::2", syn(1, 80)), DROP);
    assert_eq!(reason(&mut f), abi::DROP_INVALID_SOURCE_IP);
    // The pod's own addresses pass whatever the ipcache says of them (its identity, its
    // transit while it moves, a group transit, nothing).
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", syn(2, 80)),
        PASS
    );
    assert_eq!(f.run(Hook::FromPod, "fd00::1", "fd00::2", syn(2, 80)), PASS);
    for (sport, id) in [
        (3, abi::endpoint_transit_identity(1).unwrap()),
        (4, abi::IDENTITY_TRANSIT_MIN),
        (5, OTHER),
    ] {
        f.dp.upsert_ipcache(&"10.0.0.1/32".parse::<Cidr>().unwrap(), id)
            .unwrap();
        assert_eq!(
            f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", syn(sport, 80)),
            PASS,
            "own address labelled {id}"
        );
    }
    // An endpoint registered without an IPv6 address sends no IPv6 at all.
    f.dp.set_endpoint(
        1,
        &EndpointInfo {
            identity: POD,
            policy_slot: POD,
            flags: abi::ENDPOINT_F_READY,
            revision: 1,
            ..Default::default()
        }
        .with_addresses(&[ip("10.0.0.1")]),
    )
    .unwrap();
    assert_eq!(f.run(Hook::FromPod, "fd00::1", "fd00::2", syn(6, 80)), DROP);
    assert_eq!(reason(&mut f), abi::DROP_INVALID_SOURCE_IP);
}

#[test]
fn fail_closed_cases_have_their_own_reasons() {
    let Some(mut f) = fixture("closed") else {
        return;
    };
    // Spoofed source from the pod.
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.9", "10.0.0.2", syn(1, 80)),
        DROP
    );
    // Fragment and truncated header.
    let frag = packet::ipv4_later_fragment(ip("10.0.0.2"), ip("10.0.0.1"));
    assert_eq!(f.dp.test_run(Hook::ToPod, &frag).unwrap(), DROP);
    let mut short = packet::build(ip("10.0.0.2"), ip("10.0.0.1"), syn(1, 80));
    short.truncate(14 + 20 + 6);
    assert_eq!(f.dp.test_run(Hook::ToPod, &short).unwrap(), DROP);
    // Non-IP passes, and so do IPv6 neighbour discovery and MLD (link control).
    assert_eq!(f.dp.test_run(Hook::ToPod, &packet::arp()).unwrap(), PASS);
    // (ND with hop limit 255, MLD with hop limit 1: see nd_and_mld_pass_only_within_limits.)
    for (kind, hops) in [(135, 255), (136, 255), (143, 1)] {
        let icmp6 = L4::Icmp {
            kind,
            code: 0,
            id: 0,
        };
        let pkt = with_hop_limit(packet::build(ip("fe80::1"), ip("ff02::16"), icmp6), hops);
        assert_eq!(
            f.dp.test_run(Hook::FromPod, &pkt).unwrap(),
            PASS,
            "ICMPv6 type {kind}"
        );
    }
    // Other ICMPv6 from a link-local source is policed like any packet: not the pod's address.
    assert_eq!(
        f.run(
            Hook::FromPod,
            "fe80::1",
            "ff02::1",
            L4::Icmp {
                kind: 128,
                code: 0,
                id: 1
            }
        ),
        DROP
    );
    let ev = f.events();
    let reasons: Vec<u32> = ev.iter().map(|e| e.drop_reason as u32).collect();
    assert_eq!(
        reasons,
        vec![
            abi::DROP_INVALID_SOURCE_IP,
            // A later fragment whose first fragment never passed this hook.
            abi::DROP_FRAG_NOT_FOUND,
            abi::DROP_INVALID_PACKET,
            abi::DROP_INVALID_SOURCE_IP
        ]
    );
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_PASS_NON_IP),
        1
    );
    assert_eq!(
        f.counter(abi::DIRECTION_EGRESS, abi::COUNTER_PASS_NEIGHBOR),
        3
    );

    // A peer address no ipcache prefix covers.
    f.dp.delete_ipcache(&"0.0.0.0/0".parse().unwrap()).unwrap();
    assert_eq!(
        f.run(Hook::ToPod, "192.0.2.1", "10.0.0.1", syn(1, 80)),
        DROP
    );
    assert_eq!(f.events()[0].drop_reason as u32, abi::DROP_INVALID_IDENTITY);

    // Not ready, then no endpoint at all: everything dropped, even allowed flows.
    set_unready(&mut f.dp);
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(2, 80)), DROP);
    f.dp.remove_endpoint(1).unwrap();
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(3, 80)), DROP);
    assert_eq!(f.counter(abi::DIRECTION_INGRESS, abi::DROP_EP_NOT_READY), 2);
}

#[test]
fn deny_beats_allow_audit_forwards_and_redirect_fails_closed() {
    let Some(mut f) = fixture("tiers") else {
        return;
    };
    let ing = abi::DIRECTION_INGRESS;
    // An admin-tier deny of any peer on TCP 80, as the compiler writes it: folded into
    // every exact-peer partition (where it beats PEER's NetworkPolicy allow) and the
    // any-peer partition. The first hit is final.
    let deny = PolicyValue {
        rule_id: 30,
        verdict: abi::POLICY_VERDICT_DENY,
        precedence: abi::PRECEDENCE_ADMIN_MIN,
        ..Default::default()
    };
    for peer in [0, PEER] {
        f.dp.upsert_policy(POD, &port_key(peer, ing, 6, 80), &deny)
            .unwrap();
    }
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(1, 80)), DROP);
    let ev = f.events();
    assert_eq!(
        (ev[0].drop_reason as u32, ev[0].rule_id),
        (abi::DROP_POLICY_DENY, 30)
    );
    // The same deny in audit mode: forwarded, reported as AUDIT.
    let audit = PolicyValue {
        flags: abi::POLICY_F_AUDIT,
        ..deny
    };
    for peer in [0, PEER] {
        f.dp.upsert_policy(POD, &port_key(peer, ing, 6, 80), &audit)
            .unwrap();
    }
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(2, 80)), PASS);
    let ev = f.events();
    assert_eq!(
        (ev[0].verdict, ev[0].rule_id),
        (abi::EVENT_VERDICT_AUDIT, 30)
    );
    // An L7 redirect with no proxy attached: dropped, naming the rule.
    f.dp.upsert_policy(POD, &port_key(PEER, ing, 6, 8080), &redirect(31))
        .unwrap();
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(3, 8080)),
        DROP
    );
    let ev = f.events();
    assert_eq!(
        (ev[0].drop_reason as u32, ev[0].rule_id),
        (abi::DROP_PROXY_UNAVAILABLE, 31)
    );
    assert_eq!(u16::from_be(ev[0].proxy_port_be), 15080);
}

#[test]
fn the_first_hit_is_final_and_terminal_entries_decide() {
    let Some(mut f) = fixture("terminal") else {
        return;
    };
    let ing = abi::DIRECTION_INGRESS;
    let default_deny = PolicyValue {
        rule_id: abi::RULE_ID_NONE,
        verdict: abi::POLICY_VERDICT_DENY,
        precedence: abi::PRECEDENCE_NETWORK_POLICY,
        ..Default::default()
    };
    // PEER's partition ends in the default-deny terminal: its UDP 53 no longer falls
    // back to the any-peer allow (rule 17) and is reported as default deny, rule 0.
    f.dp.upsert_policy(POD, &any_key(PEER, ing), &default_deny)
        .unwrap();
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", udp(5000, 53)),
        DROP
    );
    let ev = f.events();
    assert_eq!(
        (ev[0].drop_reason as u32, ev[0].rule_id),
        (abi::DROP_POLICY_DENIED, abi::RULE_ID_NONE)
    );
    // A longer prefix in the same partition still wins inside the lookup.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(5001, 80)),
        PASS
    );
    assert_eq!(f.events()[0].rule_id, 16);
    // OTHER's partition has no terminal: a miss there falls back to the any-peer one.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", udp(5002, 53)),
        PASS
    );
    assert_eq!(f.events()[0].rule_id, 17);
    // The any-peer terminal "not isolated" allows everything else, as rule 1.
    f.dp.upsert_policy(
        POD,
        &any_key(0, ing),
        &PolicyValue {
            rule_id: abi::RULE_ID_NOT_ISOLATED,
            ..allow(abi::RULE_ID_NOT_ISOLATED)
        },
    )
    .unwrap();
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", syn(5003, 9999)),
        PASS
    );
    assert_eq!(f.events()[0].rule_id, abi::RULE_ID_NOT_ISOLATED);
    // ... and the exact terminal of PEER still overrides it.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(5004, 9999)),
        DROP
    );
    assert_eq!(f.events()[0].drop_reason as u32, abi::DROP_POLICY_DENIED);
}

#[test]
fn policy_change_revokes_tracked_flows_it_no_longer_allows() {
    let Some(mut f) = fixture("revoke") else {
        return;
    };
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(1, 80)), PASS);
    assert_eq!(f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", syn(2, 80)), PASS);
    f.events();
    // New revision: PEER's rule is gone, OTHER's stays.
    f.dp.delete_policy(POD, &port_key(PEER, abi::DIRECTION_INGRESS, 6, 80))
        .unwrap();
    set_ready(&mut f.dp, 2);
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", tcp(80, 1, TCP_ACK)),
        DROP,
        "the reply of a revoked flow"
    );
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(1, 80, TCP_ACK)),
        DROP
    );
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", tcp(2, 80, TCP_ACK)),
        PASS,
        "a flow both revisions allow is untouched"
    );
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.1", "10.0.0.3", tcp(80, 2, TCP_ACK)),
        PASS
    );
    let ev = f.events();
    assert_eq!(
        ev.iter()
            .filter(|e| e.kind == abi::EVENT_KIND_REVOKED)
            .count(),
        1
    );
    assert_eq!(f.counter(abi::DIRECTION_EGRESS, abi::COUNTER_REVOKED), 1);
    let ct = f.dp.ct_entries().unwrap();
    assert_eq!(ct.len(), 1, "the revoked entry is gone: {ct:?}");
    assert_eq!(ct[0].1.revision, 2);
}

#[test]
fn tcp_close_is_reported_once_and_shortens_the_entry() {
    let Some(mut f) = fixture("close") else {
        return;
    };
    assert_eq!(f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(1, 80)), PASS);
    assert_eq!(
        f.run(
            Hook::ToPod,
            "10.0.0.2",
            "10.0.0.1",
            tcp(1, 80, TCP_FIN | TCP_ACK)
        ),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            tcp(80, 1, TCP_FIN | TCP_ACK)
        ),
        PASS
    );
    let ev = f.events();
    assert_eq!(ev.len(), 2, "open + close: {ev:?}");
    assert_eq!(ev[1].kind, abi::EVENT_KIND_CT_CLOSE);
    // Reported by the fast path with what the opening event said of the flow.
    assert_eq!(ev[1].verdict, abi::EVENT_VERDICT_FORWARDED);
    assert_eq!(
        (ev[1].src_identity, ev[1].dst_identity, ev[1].rule_id),
        (PEER, POD, 16)
    );
    assert_eq!(ev[1].direction, abi::DIRECTION_INGRESS);
    assert_eq!(ev[1].revision, ev[0].revision);
    let (_, e) = f.dp.ct_entries().unwrap()[0];
    let left = e
        .expires_ns
        .saturating_sub(palisade_enforcer::datapath::monotonic_ns());
    assert!(
        left <= abi::CT_LIFETIME_TCP_CLOSE_S * 1_000_000_000,
        "closing lifetime: {left}"
    );
    assert!(e.flags & abi::CT_F_SEEN_FIN != 0 && e.flags & abi::CT_F_REPLY_SEEN != 0);
}

#[test]
fn pinned_maps_are_checked_before_reuse() {
    let Some(f) = fixture("stale") else { return };
    let dir = f.dp.pin_dir().to_path_buf();
    drop(f.events);
    drop(f.dp);
    // A second load adopts the same maps: the policy is still there.
    let mut dp = f._fs.load();
    assert!(!dp.policy_entries().unwrap().is_empty());
    assert_eq!(dp.endpoint(1).unwrap().unwrap().identity, POD);
    drop(dp);
    // Replace a pin with a map of another layout: loading refuses, naming it.
    std::fs::remove_file(dir.join("pal_drop_seen")).unwrap();
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(dir.join("pal_drop_seen"))
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "4",
            "name",
            "pal_drop_seen",
        ])
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        // Without bpftool the stale-layout half cannot be staged; the adoption half ran.
        palisade_testkit::skip_or_fail("stale map layout half", &"bpftool is not runnable");
        return;
    }
    let err =
        palisade_enforcer::datapath::Datapath::load(&palisade_enforcer::datapath::LoadOptions {
            pin_root: f._fs.path().to_path_buf(),
            mount_if_missing: false,
            local_delivery: true,
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pal_drop_seen") && err.contains("refusing"),
        "{err}"
    );
}

/// The recorded counts in ebpf/verifier_counts.txt: a program may grow by at most this
/// fraction over its recorded count before the test fails.
const VERIFIER_GROWTH_MARGIN: f64 = 0.10;

#[test]
fn verifier_instruction_counts_stay_within_the_recorded_margin() {
    let Some(mut f) = fixture("stats") else {
        return;
    };
    let recorded_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/verifier_counts.txt");
    let recorded_text = std::fs::read_to_string(&recorded_path).unwrap();
    let recorded: std::collections::BTreeMap<String, u64> = recorded_text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, count) = l.split_once(' ').unwrap();
            (name.to_string(), count.trim().parse().unwrap())
        })
        .collect();
    let stats = f.dp.program_stats();
    for (name, insns, xlated) in &stats {
        eprintln!("{name}: {insns} verified instructions, {xlated} bytes translated");
    }
    assert_eq!(stats.len(), 7);
    assert_eq!(
        recorded.len(),
        7,
        "{recorded_path:?} lists the seven programs"
    );
    for (name, insns, xlated) in stats {
        assert!(insns > 100 && xlated > 0, "{name}");
        let base = *recorded
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} missing from {recorded_path:?}"));
        let limit = (base as f64 * (1.0 + VERIFIER_GROWTH_MARGIN)) as u64;
        assert!(
            u64::from(insns) <= limit,
            "{name}: {insns} verified instructions, more than {limit} \
             ({base} recorded in {recorded_path:?} + {VERIFIER_GROWTH_MARGIN})"
        );
    }
}

/// Issue 10 item 13: a later fragment carries no ports; it takes the first fragment's
/// (remembered per datagram, hook and interface) and is decided like it. Before ABI v2
/// every later fragment was dropped.
#[test]
fn later_fragments_are_decided_with_the_first_fragments_ports() {
    let Some(mut f) = fixture("frag") else {
        return;
    };
    let udp = |dport| {
        packet::build(
            ip("10.0.0.3"),
            ip("10.0.0.1"),
            L4::Udp { sport: 5000, dport },
        )
    };
    // UDP 53 is allowed from any peer: first fragment, then a later one of the same datagram.
    let first = ipv4_fragment(udp(53), 0x1234, 0, true);
    assert_eq!(f.dp.test_run(Hook::ToPod, &first).unwrap(), PASS);
    let later = ipv4_fragment(udp(53), 0x1234, 185, false);
    assert_eq!(f.dp.test_run(Hook::ToPod, &later).unwrap(), PASS);
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_CT_ESTABLISHED),
        1,
        "the later fragment is the first one's flow"
    );
    // Another datagram id, or the same datagram at the other hook: never seen.
    let stranger = ipv4_fragment(udp(53), 0x1235, 185, false);
    assert_eq!(f.dp.test_run(Hook::ToPod, &stranger).unwrap(), DROP);
    assert_eq!(f.dp.test_run(Hook::FromPod, &later).unwrap(), DROP);
    // UDP 54 is denied: the first fragment is dropped, and the later one is decided the
    // same way with the remembered ports (default deny), not passed.
    let first = ipv4_fragment(udp(54), 0x2000, 0, true);
    assert_eq!(f.dp.test_run(Hook::ToPod, &first).unwrap(), DROP);
    let later = ipv4_fragment(udp(54), 0x2000, 185, false);
    assert_eq!(f.dp.test_run(Hook::ToPod, &later).unwrap(), DROP);
    // IPv6: TCP 443 from PEER is allowed; its later fragment passes, another id does not.
    let syn6 = packet::build(ip("fd00::2"), ip("fd00::1"), syn(1234, 443));
    let first = ipv6_fragment(syn6.clone(), 77, 0, true);
    assert_eq!(f.dp.test_run(Hook::ToPod, &first).unwrap(), PASS);
    let later = ipv6_fragment(syn6.clone(), 77, 100, false);
    assert_eq!(f.dp.test_run(Hook::ToPod, &later).unwrap(), PASS);
    let stranger = ipv6_fragment(syn6, 78, 100, false);
    assert_eq!(f.dp.test_run(Hook::ToPod, &stranger).unwrap(), DROP);
    let reasons: Vec<u32> = f
        .events()
        .iter()
        .map(|e| u32::from(e.drop_reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            0,
            abi::DROP_FRAG_NOT_FOUND,
            abi::DROP_FRAG_NOT_FOUND,
            abi::DROP_POLICY_DENIED,
            0,
            abi::DROP_FRAG_NOT_FOUND,
        ],
        "first fragments and drops are reported; a later fragment of a denied datagram is \
         the same tuple, so its repeat report is suppressed"
    );
}

/// Issue 10 item 17: neighbour discovery passes only with hop limit 255 (it was sent on the
/// link); MLD only with hop limit 1 from a link-local source to a multicast group. Anything
/// else of those types is FORBIDDEN_ICMPV6_MESSAGE. Before ABI v2 they all passed.
#[test]
fn nd_and_mld_pass_only_within_limits() {
    let Some(mut f) = fixture("nd") else {
        return;
    };
    let icmp6 = |kind| L4::Icmp {
        kind,
        code: 0,
        id: 0,
    };
    let run = |f: &mut Fixture, src: &str, dst: &str, kind: u8, hops: u8| {
        let pkt = with_hop_limit(packet::build(ip(src), ip(dst), icmp6(kind)), hops);
        f.dp.test_run(Hook::ToPod, &pkt).unwrap()
    };
    // Neighbour solicitation / advertisement, router solicitation / advertisement, redirect.
    for kind in 133..=137 {
        assert_eq!(
            run(&mut f, "fe80::2", "ff02::1:ff00:1", kind, 255),
            PASS,
            "ND {kind}"
        );
        assert_eq!(
            run(&mut f, "fd00::2", "fd00::1", kind, 255),
            PASS,
            "ND {kind} unicast"
        );
        assert_eq!(
            run(&mut f, "fe80::2", "ff02::1:ff00:1", kind, 254),
            DROP,
            "ND {kind} routed"
        );
        assert_eq!(
            run(&mut f, "fd00::2", "fd00::1", kind, 64),
            DROP,
            "ND {kind} routed"
        );
    }
    for kind in [130, 131, 132, 143] {
        assert_eq!(
            run(&mut f, "fe80::2", "ff02::16", kind, 1),
            PASS,
            "MLD {kind}"
        );
        assert_eq!(
            run(&mut f, "fe80::2", "ff02::16", kind, 2),
            DROP,
            "MLD {kind} hops"
        );
        assert_eq!(
            run(&mut f, "fd00::2", "ff02::16", kind, 1),
            DROP,
            "MLD {kind} source"
        );
        assert_eq!(
            run(&mut f, "fe80::2", "fd00::1", kind, 1),
            DROP,
            "MLD {kind} unicast"
        );
    }
    // A report from the unspecified address (no link-local address yet) is allowed.
    assert_eq!(run(&mut f, "::", "ff02::16", 143, 1), PASS);
    // From the pod, what a host sends passes; what only a router sends (MLD query, router
    // advertisement, redirect) is forbidden, even within the hop limits.
    let from_pod = |f: &mut Fixture, dst: &str, kind: u8, hops: u8| {
        let pkt = with_hop_limit(packet::build(ip("fe80::1"), ip(dst), icmp6(kind)), hops);
        f.dp.test_run(Hook::FromPod, &pkt).unwrap()
    };
    for (kind, hops) in [
        (131, 1),
        (132, 1),
        (143, 1),
        (133, 255),
        (135, 255),
        (136, 255),
    ] {
        assert_eq!(
            from_pod(&mut f, "ff02::2", kind, hops),
            PASS,
            "pod sends {kind}"
        );
    }
    for (kind, hops) in [(130, 1), (134, 255), (137, 255)] {
        assert_eq!(
            from_pod(&mut f, "ff02::1", kind, hops),
            DROP,
            "pod sends {kind}"
        );
    }
    assert_eq!(
        f.counter(abi::DIRECTION_EGRESS, abi::DROP_FORBIDDEN_ICMP6),
        3
    );
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::DROP_FORBIDDEN_ICMP6),
        5 * 2 + 4 * 3
    );
    assert_eq!(
        f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_PASS_NEIGHBOR),
        5 * 2 + 4 + 1
    );
}

/// Issue 10 item 15: an admitted TCP packet opens a flow with the short opening lifetime,
/// whatever its flags; only a reply makes it established (6 h). Before, any admitted
/// non-SYN packet created a 6-hour entry at once.
#[test]
fn tcp_flows_stay_short_lived_until_a_reply_is_seen() {
    let Some(mut f) = fixture("ct-life") else {
        return;
    };
    let left = |f: &mut Fixture, sport: u16| {
        let now = palisade_enforcer::datapath::monotonic_ns();
        let (_, e) = f
            .dp
            .ct_entries()
            .unwrap()
            .into_iter()
            // Canonical keys: the client's port is on either side of the key.
            .find(|(k, _)| u16::from_be(k.sport_be) == sport || u16::from_be(k.dport_be) == sport)
            .unwrap();
        e.expires_ns.saturating_sub(now)
    };
    let opening = abi::CT_LIFETIME_TCP_SYN_S * 1_000_000_000;
    // A mid-stream ACK the policy admits, then a SYN: both short-lived.
    for (sport, flags) in [(41000, TCP_ACK), (41001, TCP_SYN)] {
        assert_eq!(
            f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(sport, 80, flags)),
            PASS
        );
        assert!(left(&mut f, sport) <= opening, "{sport}: opening lifetime");
        // More packets from the same side do not establish it.
        assert_eq!(
            f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(sport, 80, TCP_ACK)),
            PASS
        );
        assert!(left(&mut f, sport) <= opening, "{sport}: still opening");
    }
    // The pod answers the SYN: established.
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            tcp(80, 41001, TCP_SYN | TCP_ACK)
        ),
        PASS
    );
    assert!(
        left(&mut f, 41001) > opening,
        "a reply establishes the flow"
    );
    assert!(left(&mut f, 41000) <= opening);
}

/// Issue 10 item 15 (part): an endpoint's conntrack entries go with it.
#[test]
fn an_endpoints_conntrack_is_flushed_by_interface() {
    let Some(mut f) = fixture("ct-flush") else {
        return;
    };
    for sport in [42000, 42001] {
        assert_eq!(
            f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(sport, 80)),
            PASS
        );
    }
    assert_eq!(f.dp.ct_entries().unwrap().len(), 2);
    assert_eq!(
        f.dp.ct_flush_ifindex(2).unwrap(),
        0,
        "another interface's: none"
    );
    assert_eq!(f.dp.ct_entries().unwrap().len(), 2);
    assert_eq!(f.dp.ct_flush_ifindex(1).unwrap(), 2);
    assert!(f.dp.ct_entries().unwrap().is_empty());
}

/// Issue 10 item 15 (part): conntrack churned at twice its capacity by one pod's new
/// flows (UDP 53 from 524,288 distinct world tuples, all admitted) does not cost an active
/// long-lived connection its entry: it keeps passing as established and its replies as
/// replies. Every churned entry has the short lifetime.
#[test]
fn long_lived_flows_survive_conntrack_churn_at_twice_capacity() {
    let Some(mut f) = fixture("ct-churn") else {
        return;
    };
    let capacity = palisade_enforcer::datapath::map_specs()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "pal_ct")
        .unwrap()
        .max_entries;
    // The long-lived connection: PEER -> POD:80, answered.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(50000, 80)),
        PASS
    );
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            tcp(80, 50000, TCP_SYN | TCP_ACK)
        ),
        PASS
    );
    let established = |f: &Fixture| f.counter(abi::DIRECTION_INGRESS, abi::COUNTER_CT_ESTABLISHED);
    let mut touches = 0;
    let total = 2 * capacity;
    let mut pkt = packet::build(
        ip("198.51.100.1"),
        ip("10.0.0.1"),
        L4::Udp {
            sport: 1,
            dport: 53,
        },
    );
    for i in 0..total {
        // Distinct tuples: the low 16 bits in the source port, the rest in the address.
        let port = (i & 0xffff) as u16;
        pkt[14 + 20..14 + 22].copy_from_slice(&port.to_be_bytes());
        pkt[14 + 14] = (i >> 16) as u8;
        assert_eq!(f.dp.test_run(Hook::ToPod, &pkt).unwrap(), PASS);
        if i % 50_000 == 0 {
            assert_eq!(
                f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", tcp(50000, 80, TCP_ACK)),
                PASS
            );
            touches += 1;
            assert_eq!(
                established(&f),
                touches,
                "still established after {i} new flows"
            );
        }
    }
    assert_eq!(
        f.run(
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            tcp(80, 50000, TCP_ACK)
        ),
        PASS
    );
    assert_eq!(
        f.counter(abi::DIRECTION_EGRESS, abi::COUNTER_CT_REPLY),
        2,
        "the reply still finds the connection"
    );
    let now = palisade_enforcer::datapath::monotonic_ns();
    let entries = f.dp.ct_entries().unwrap();
    assert!(entries.len() as u32 <= capacity);
    let long = 60 * 1_000_000_000;
    let over: Vec<_> = entries
        .iter()
        .filter(|(k, e)| k.protocol == 17 && e.expires_ns.saturating_sub(now) > long)
        .collect();
    assert!(over.is_empty(), "churned flows are short-lived");
}

/// An ICMP (ICMPv6 for IPv6 addresses) error from `src` to `dst` quoting `inner`, an IP
/// packet built by `packet::build` (its Ethernet header is dropped).
fn icmp_error(src: &str, dst: &str, kind: u8, code: u8, inner: &[u8]) -> Vec<u8> {
    let mut f = packet::build(ip(src), ip(dst), L4::Icmp { kind, code, id: 0 });
    let l3 = if ip(src).is_ipv4() { 20 } else { 40 };
    f.truncate(14 + l3 + 8);
    f[14 + l3 + 4..14 + l3 + 8].fill(0); // unused / MTU
    f.extend_from_slice(&inner[14..]);
    let len = f.len() - 14;
    if l3 == 20 {
        f[16..18].copy_from_slice(&(len as u16).to_be_bytes());
    } else {
        f[18..20].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    }
    f
}

/// Issue 10 item 14: an ICMP error whose quoted packet belongs to a flow tracked at this
/// endpoint passes (counted, no conntrack entry of its own), in both directions and both
/// families; an unrelated one is still decided by policy (dropped in an isolated
/// direction). Before, every error was a new ICMP flow: Fragmentation Needed / Packet Too
/// Big to a pod with isolated ingress was dropped (a path-MTU black hole).
#[test]
fn icmp_errors_pass_only_for_tracked_flows() {
    let Some(mut f) = fixture("icmp-err") else {
        return;
    };
    let related = |f: &Fixture, dir| f.counter(dir, abi::COUNTER_ICMP_RELATED);
    let ing = abi::DIRECTION_INGRESS;
    let eg = abi::DIRECTION_EGRESS;
    // The pod opens TCP to PEER (egress allows PEER); a router on the way (world) answers
    // with Fragmentation Needed. Ingress has no ICMP rule: isolated.
    let quoted = packet::build(ip("10.0.0.1"), ip("10.0.0.2"), syn(40000, 80));
    let frag_needed = icmp_error("192.0.2.1", "10.0.0.1", 3, 4, &quoted);
    assert_eq!(
        f.dp.test_run(Hook::ToPod, &frag_needed).unwrap(),
        DROP,
        "no flow yet"
    );
    assert_eq!(
        f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", syn(40000, 80)),
        PASS
    );
    let tracked = f.dp.ct_entries().unwrap().len();
    assert_eq!(f.dp.test_run(Hook::ToPod, &frag_needed).unwrap(), PASS);
    assert_eq!(related(&f, ing), 1);
    assert_eq!(
        f.dp.ct_entries().unwrap().len(),
        tracked,
        "an error creates no entry"
    );
    // Time exceeded and port unreachable about the same flow pass too.
    for (kind, code) in [(11, 0), (3, 3), (12, 0)] {
        let e = icmp_error("192.0.2.1", "10.0.0.1", kind, code, &quoted);
        assert_eq!(
            f.dp.test_run(Hook::ToPod, &e).unwrap(),
            PASS,
            "{kind}/{code}"
        );
    }
    // Unrelated: another port, another peer, another protocol, an error type that is
    // not an error (echo request quoting the flow), or a quoted source that is not the
    // pod the error is sent to.
    let other_port = packet::build(ip("10.0.0.1"), ip("10.0.0.2"), syn(40001, 80));
    let other_peer = packet::build(ip("10.0.0.1"), ip("10.0.0.3"), syn(40000, 80));
    let other_proto = packet::build(ip("10.0.0.1"), ip("10.0.0.2"), udp(40000, 80));
    for e in [
        icmp_error("192.0.2.1", "10.0.0.1", 3, 4, &other_port),
        icmp_error("192.0.2.1", "10.0.0.1", 3, 4, &other_peer),
        icmp_error("192.0.2.1", "10.0.0.1", 3, 4, &other_proto),
        icmp_error("192.0.2.1", "10.0.0.1", 8, 0, &quoted),
        icmp_error("192.0.2.1", "10.0.0.9", 3, 4, &quoted),
    ] {
        assert_eq!(f.dp.test_run(Hook::ToPod, &e).unwrap(), DROP);
    }
    let ev = f.events();
    assert!(
        ev.iter()
            .filter(|e| e.protocol == 1)
            .all(|e| e.drop_reason as u32 == abi::DROP_POLICY_DENIED
                || e.drop_reason as u32 == abi::DROP_INVALID_IDENTITY),
        "{ev:?}"
    );
    assert_eq!(related(&f, ing), 4);
    // The quoted packet truncated inside its L4 ports: not related, decided by policy.
    let mut short = frag_needed.clone();
    short.truncate(short.len() - 18);
    let len = (short.len() - 14) as u16;
    short[16..18].copy_from_slice(&len.to_be_bytes());
    assert_eq!(f.dp.test_run(Hook::ToPod, &short).unwrap(), DROP);

    // The error about a reply: PEER opened TCP 80 to the pod, the pod's SYN-ACK met an
    // error on the way back.
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(41000, 80)),
        PASS
    );
    let reply = packet::build(
        ip("10.0.0.1"),
        ip("10.0.0.2"),
        tcp(80, 41000, TCP_SYN | TCP_ACK),
    );
    let e = icmp_error("192.0.2.1", "10.0.0.1", 3, 4, &reply);
    assert_eq!(f.dp.test_run(Hook::ToPod, &e).unwrap(), PASS);

    // The other hook: the pod reports port unreachable for a UDP datagram OTHER sent it
    // (ingress allows UDP 53 from any peer; egress allows only PEER).
    assert_eq!(
        f.run(Hook::ToPod, "10.0.0.3", "10.0.0.1", udp(5000, 53)),
        PASS
    );
    let got = packet::build(ip("10.0.0.3"), ip("10.0.0.1"), udp(5000, 53));
    let unreach = icmp_error("10.0.0.1", "10.0.0.3", 3, 3, &got);
    assert_eq!(f.dp.test_run(Hook::FromPod, &unreach).unwrap(), PASS);
    assert_eq!(related(&f, eg), 1);
    let not_got = packet::build(ip("10.0.0.3"), ip("10.0.0.1"), udp(5001, 53));
    let unreach = icmp_error("10.0.0.1", "10.0.0.3", 3, 3, &not_got);
    assert_eq!(f.dp.test_run(Hook::FromPod, &unreach).unwrap(), DROP);

    // Time exceeded for the pod's echo request (tracked on its echo id).
    let ping = L4::Icmp {
        kind: 8,
        code: 0,
        id: 77,
    };
    assert_eq!(f.run(Hook::FromPod, "10.0.0.1", "10.0.0.2", ping), PASS);
    let echo = packet::build(ip("10.0.0.1"), ip("10.0.0.2"), ping);
    let te = icmp_error("192.0.2.1", "10.0.0.1", 11, 0, &echo);
    assert_eq!(f.dp.test_run(Hook::ToPod, &te).unwrap(), PASS);

    // IPv6: Packet Too Big for the pod's flow to PEER passes; for another flow it drops.
    assert_eq!(
        f.run(Hook::FromPod, "fd00::1", "fd00::2", udp(7000, 9000)),
        PASS
    );
    let q6 = packet::build(ip("fd00::1"), ip("fd00::2"), udp(7000, 9000));
    let ptb = icmp_error("2001:db8::1", "fd00::1", 2, 0, &q6);
    assert_eq!(f.dp.test_run(Hook::ToPod, &ptb).unwrap(), PASS);
    for (kind, code) in [(1, 4), (3, 0), (4, 0)] {
        let e = icmp_error("2001:db8::1", "fd00::1", kind, code, &q6);
        assert_eq!(
            f.dp.test_run(Hook::ToPod, &e).unwrap(),
            PASS,
            "v6 {kind}/{code}"
        );
    }
    let q6_other = packet::build(ip("fd00::1"), ip("fd00::2"), udp(7001, 9000));
    let ptb_other = icmp_error("2001:db8::1", "fd00::1", 2, 0, &q6_other);
    assert_eq!(f.dp.test_run(Hook::ToPod, &ptb_other).unwrap(), DROP);
    // An error quoting an IPv4 packet inside IPv6 is not related to anything.
    let ptb_v4 = icmp_error("2001:db8::1", "fd00::1", 2, 0, &quoted);
    assert_eq!(f.dp.test_run(Hook::ToPod, &ptb_v4).unwrap(), DROP);
    assert_eq!(related(&f, ing), 10);
}

/// The datapath's part of the L7 redirect (docs/datapath.md §11): a REDIRECT decision at
/// `from_pod` passes only while the proxy is ready (`pal_proxy`), and every packet of the
/// flow is marked `0x0200` (the mark's other bits kept) for local delivery to the proxy; at
/// `to_pod` a REDIRECT passes only on the proxy's upstream leg (mark `0x0b00`), whose replies
/// `from_pod` marks for local delivery to the upstream socket. The proxy gone or a re-check
/// after a policy change: redirected flows drop, the upstream leg keeps its standing.
#[test]
fn redirected_flows_are_marked_for_the_proxy_only_while_it_is_ready() {
    let Some(mut f) = fixture("proxy") else {
        return;
    };
    let (ing, eg) = (abi::DIRECTION_INGRESS, abi::DIRECTION_EGRESS);
    // POD's egress to PEER:8080 and its ingress from PEER on 8081 carry HTTP rules.
    f.dp.upsert_policy(POD, &port_key(PEER, eg, 6, 8080), &redirect(40))
        .unwrap();
    f.dp.upsert_policy(POD, &port_key(PEER, ing, 6, 8081), &redirect(41))
        .unwrap();
    let run = |f: &mut Fixture, hook, src: &str, dst: &str, l4, mark| {
        f.dp.test_run_marked(hook, &packet::build(ip(src), ip(dst), l4), mark)
            .unwrap()
    };
    let out = Hook::FromPod;
    let inb = Hook::ToPod;

    // No proxy: dropped, naming the reason.
    assert_eq!(
        run(&mut f, out, "10.0.0.1", "10.0.0.2", syn(1000, 8080), 0).0,
        DROP
    );
    let ev = f.events();
    assert_eq!(ev[0].drop_reason as u32, abi::DROP_PROXY_UNAVAILABLE);

    // The proxy ready: the SYN passes marked (kube-proxy's 0x4000 bit kept), reported and
    // counted as redirected; its entry is a proxied flow.
    proxy_ready(&mut f.dp);
    assert_eq!(
        run(&mut f, out, "10.0.0.1", "10.0.0.2", syn(1001, 8080), 0x4000),
        (PASS, 0x4000 | abi::PROXY_MARK_LOCAL)
    );
    let ev = f.events();
    assert_eq!(
        (ev[0].verdict, ev[0].rule_id),
        (abi::EVENT_VERDICT_REDIRECTED, 40)
    );
    assert_eq!(f.counter(eg, abi::COUNTER_REDIRECTED), 1);
    let proxied =
        f.dp.ct_entries()
            .unwrap()
            .into_iter()
            .filter(|(_, e)| e.flags & abi::CT_F_PROXY != 0)
            .count();
    assert_eq!(proxied, 1);
    // Its later packets are marked too; the proxy's answers (as the server) are its replies.
    assert_eq!(
        run(
            &mut f,
            out,
            "10.0.0.1",
            "10.0.0.2",
            tcp(1001, 8080, TCP_ACK),
            0
        ),
        (PASS, abi::PROXY_MARK_LOCAL)
    );
    assert_eq!(
        run(
            &mut f,
            inb,
            "10.0.0.2",
            "10.0.0.1",
            tcp(8080, 1001, TCP_SYN | TCP_ACK),
            abi::PROXY_MARK_LISTENER
        ),
        (PASS, abi::PROXY_MARK_LISTENER)
    );
    // A flow without HTTP rules is not marked.
    assert_eq!(
        run(&mut f, out, "10.0.0.1", "10.0.0.2", syn(1002, 9999), 0),
        (PASS, 0)
    );

    // An ingress REDIRECT at to_pod: dropped unless it is the proxy's upstream leg.
    assert_eq!(
        run(&mut f, inb, "10.0.0.2", "10.0.0.1", syn(2000, 8081), 0).0,
        DROP
    );
    assert_eq!(
        run(
            &mut f,
            inb,
            "10.0.0.2",
            "10.0.0.1",
            syn(2001, 8081),
            abi::PROXY_MARK_UPSTREAM
        ),
        (PASS, abi::PROXY_MARK_UPSTREAM)
    );
    // The server's reply to the upstream socket is delivered locally.
    assert_eq!(
        run(
            &mut f,
            out,
            "10.0.0.1",
            "10.0.0.2",
            tcp(8081, 2001, TCP_SYN | TCP_ACK),
            0
        ),
        (PASS, abi::PROXY_MARK_LOCAL)
    );

    // The proxy gone: a new redirected flow drops again; after a policy change the open
    // redirected flow is re-checked and revoked, while the upstream leg keeps its standing.
    f.dp.set_proxy(&abi::ProxyState::default()).unwrap();
    assert_eq!(
        run(&mut f, out, "10.0.0.1", "10.0.0.2", syn(1003, 8080), 0).0,
        DROP
    );
    set_ready(&mut f.dp, 2);
    assert_eq!(
        run(
            &mut f,
            out,
            "10.0.0.1",
            "10.0.0.2",
            tcp(1001, 8080, TCP_ACK),
            0
        )
        .0,
        DROP
    );
    assert_eq!(
        run(
            &mut f,
            out,
            "10.0.0.1",
            "10.0.0.2",
            tcp(8081, 2001, TCP_ACK),
            0
        ),
        (PASS, abi::PROXY_MARK_LOCAL)
    );
}

/// Step 6b: a destination on this node whose ingress HTTP rules redirect the flow has it
/// redirected at the source veth (a socket can only be assigned from a tc ingress hook),
/// while the proxy is ready; the destination's slot is its identity, so a destination with
/// no slot here, or a port its rules do not redirect, is not marked.
#[test]
fn a_local_destinations_ingress_http_rules_redirect_at_the_source() {
    let Some(mut f) = fixture("proxy-dst") else {
        return;
    };
    // The destination is found by route lookup, as on a node: a namespace where 10.0.0.2
    // is routed to an interface whose endpoint (identity PEER) has its policy in slot 4242
    // (a slot number unrelated to the identity, as after a policy change).
    let Some(node) = palisade_testkit::node::Node::for_test("dp-proxy-dst", "6b route lookup")
    else {
        return;
    };
    const PEER_SLOT: u32 = 4242;
    let (ing, eg) = (abi::DIRECTION_INGRESS, abi::DIRECTION_EGRESS);
    node.run_in(|| {
        for args in [
            &[
                "link", "add", "pal-dst0", "type", "veth", "peer", "name", "pal-dst1",
            ][..],
            &["link", "set", "pal-dst1", "up"],
            &["link", "set", "pal-dst0", "up"],
            &["route", "add", "10.0.0.2/32", "dev", "pal-dst0"],
        ] {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        let ifindex = palisade_enforcer::datapath::ifindex_of("pal-dst0").unwrap();
        f.dp.set_endpoint(
            ifindex,
            &EndpointInfo {
                identity: PEER,
                policy_slot: PEER_SLOT,
                flags: abi::ENDPOINT_F_READY,
                revision: 1,
                ..Default::default()
            }
            .with_addresses(&[ip("10.0.0.2")]),
        )
        .unwrap();
        // PEER: HTTP rules on 8082 from POD, a plain allow on 9000. POD may send anywhere
        // on 8082. Entries in PEER's identity-numbered slot must not count.
        f.dp.upsert_policy(PEER_SLOT, &port_key(POD, ing, 6, 8082), &redirect(42))
            .unwrap();
        f.dp.upsert_policy(PEER_SLOT, &port_key(0, ing, 6, 9000), &allow(43))
            .unwrap();
        f.dp.upsert_policy(PEER, &port_key(0, ing, 6, 9000), &redirect(45))
            .unwrap();
        f.dp.upsert_policy(POD, &port_key(0, eg, 6, 8082), &allow(44))
            .unwrap();
        f.dp.upsert_policy(POD, &port_key(0, eg, 6, 9000), &allow(46))
            .unwrap();
        let run = |f: &mut Fixture, dst: &str, l4| {
            f.dp.test_run_marked(
                Hook::FromPod,
                &packet::build(ip("10.0.0.1"), ip(dst), l4),
                0,
            )
            .unwrap()
        };
        // No proxy: POD's egress admits it unmarked; PEER's to_pod decides (and drops).
        assert_eq!(run(&mut f, "10.0.0.2", syn(3000, 8082)), (PASS, 0));
        f.events();
        // The proxy ready, but no endpoint here said to have ingress HTTP rules: the route
        // lookup is skipped (the destination's to_pod decides).
        proxy_ready(&mut f.dp);
        assert_eq!(run(&mut f, "10.0.0.2", syn(3004, 8082)), (PASS, 0));
        f.events();
        f.dp.set_proxy_ingress_l7(true).unwrap();
        assert_eq!(
            run(&mut f, "10.0.0.2", syn(3001, 8082)),
            (PASS, abi::PROXY_MARK_LOCAL)
        );
        let ev = f.events();
        assert_eq!(
            (ev[0].verdict, ev[0].rule_id),
            (abi::EVENT_VERDICT_REDIRECTED, 42)
        );
        // Its later packets follow it to the proxy.
        assert_eq!(
            run(&mut f, "10.0.0.2", tcp(3001, 8082, TCP_ACK)),
            (PASS, abi::PROXY_MARK_LOCAL)
        );
        // A port PEER's rules do not redirect (the identity-numbered slot is not read), and
        // a destination no local interface is routed to: unmarked.
        assert_eq!(run(&mut f, "10.0.0.2", syn(3002, 9000)), (PASS, 0));
        assert_eq!(run(&mut f, "10.0.0.3", syn(3003, 8082)), (PASS, 0));

        // The same decision at the node's uplink (docs/datapath.md §13), for a flow that
        // enters the node there: its opener is redirected and tracked, its later packets
        // follow it, its reply leaving by the uplink makes the entry established (else an
        // idle kept-alive connection would outlive it); a mid-stream packet of a flow the
        // uplink never saw opening is not redirected (the destination's to_pod decides).
        f.events();
        let up = |f: &mut Fixture, hook, src: &str, dst: &str, l4| {
            f.dp.test_run_marked(hook, &packet::build(ip(src), ip(dst), l4), 0)
                .unwrap()
        };
        assert_eq!(
            up(
                &mut f,
                Hook::FromUplink,
                "10.0.0.1",
                "10.0.0.2",
                syn(3010, 8082)
            ),
            (PASS, abi::PROXY_MARK_LOCAL)
        );
        let ev = f.events();
        assert_eq!(
            (ev[0].verdict, ev[0].rule_id),
            (abi::EVENT_VERDICT_REDIRECTED, 42)
        );
        assert_eq!(
            up(
                &mut f,
                Hook::FromUplink,
                "10.0.0.1",
                "10.0.0.2",
                tcp(3010, 8082, TCP_ACK)
            ),
            (PASS, abi::PROXY_MARK_LOCAL)
        );
        let entry = |f: &mut Fixture| {
            f.dp.ct_entries()
                .unwrap()
                .into_iter()
                .find(|(k, e)| {
                    e.flags & abi::CT_F_UPLINK != 0
                        && (k.sport_be == 3010u16.to_be() || k.dport_be == 3010u16.to_be())
                })
                .map(|(_, e)| e)
                .expect("the uplink's entry")
        };
        let e = entry(&mut f);
        assert_ne!(e.flags & abi::CT_F_PROXY, 0);
        assert_eq!(e.flags & abi::CT_F_REPLY_SEEN, 0);
        assert_eq!(
            up(
                &mut f,
                Hook::ToUplink,
                "10.0.0.2",
                "10.0.0.1",
                tcp(8082, 3010, TCP_SYN | TCP_ACK)
            ),
            (PASS, 0)
        );
        assert_ne!(
            entry(&mut f).flags & abi::CT_F_REPLY_SEEN,
            0,
            "the reply leaving by the uplink establishes the flow"
        );
        assert_eq!(
            up(
                &mut f,
                Hook::FromUplink,
                "10.0.0.1",
                "10.0.0.2",
                tcp(3011, 8082, TCP_ACK)
            ),
            (PASS, 0)
        );
    })
    .unwrap();
}

/// An audit-only redirect (only audit-mode HTTP rules send the flow to the proxy:
/// `POLICY_F_AUDIT` on the REDIRECT entry) enforces nothing: with no proxy it is forwarded
/// unmarked at both hooks, and with the proxy ready it is redirected like any other.
#[test]
fn audit_only_redirects_pass_without_a_proxy() {
    let Some(mut f) = fixture("proxy-audit") else {
        return;
    };
    let (ing, eg) = (abi::DIRECTION_INGRESS, abi::DIRECTION_EGRESS);
    let audit = |rule| PolicyValue {
        flags: abi::POLICY_F_AUDIT,
        ..redirect(rule)
    };
    f.dp.upsert_policy(POD, &port_key(PEER, eg, 6, 8090), &audit(50))
        .unwrap();
    f.dp.upsert_policy(POD, &port_key(PEER, ing, 6, 8091), &audit(51))
        .unwrap();
    let run = |f: &mut Fixture, hook, src: &str, dst: &str, l4| {
        f.dp.test_run_marked(hook, &packet::build(ip(src), ip(dst), l4), 0)
            .unwrap()
    };
    assert_eq!(
        run(
            &mut f,
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            syn(2000, 8090)
        ),
        (PASS, 0)
    );
    assert_eq!(
        run(&mut f, Hook::ToPod, "10.0.0.2", "10.0.0.1", syn(2001, 8091)),
        (PASS, 0)
    );
    let ev = f.events();
    assert_eq!(
        ev.iter()
            .map(|e| (e.verdict, e.rule_id))
            .collect::<Vec<_>>(),
        vec![
            (abi::EVENT_VERDICT_FORWARDED, 50),
            (abi::EVENT_VERDICT_FORWARDED, 51)
        ]
    );
    proxy_ready(&mut f.dp);
    assert_eq!(
        run(
            &mut f,
            Hook::FromPod,
            "10.0.0.1",
            "10.0.0.2",
            syn(2002, 8090)
        ),
        (PASS, abi::PROXY_MARK_LOCAL)
    );
}

/// Every delete of the update plan is idempotent: deleting an endpoint, an ipcache prefix, a
/// policy entry or a service frontend that is not there succeeds (a deregistration removes
/// the endpoint's entry before its plan deletes it again).
#[test]
fn deleting_what_is_not_there_succeeds() {
    let Some(mut f) = fixture("absent") else {
        return;
    };
    f.dp.remove_endpoint(4242).unwrap();
    f.dp.delete_ipcache(&"10.99.0.0/16".parse::<Cidr>().unwrap())
        .unwrap();
    f.dp.delete_policy(77, &port_key(0, abi::DIRECTION_INGRESS, 6, 1))
        .unwrap();
    f.dp.delete_lb_service(&abi::LbKey::new(ip("10.96.9.9"), 80, 6))
        .unwrap();
    f.dp.delete_lb_revnat(9).unwrap();
}
