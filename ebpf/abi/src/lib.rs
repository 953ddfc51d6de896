//! Rust mirror of `ebpf/include/palisade_abi.h`, the datapath ABI.
//!
//! The C header is the source of truth. Every struct here is `#[repr(C)]` with explicit
//! padding, and the `const` blocks below fail the build if a size or offset drifts from the
//! header. This crate has no dependencies, so every crate that touches the datapath (the
//! policy core, the enforcer, test tools) shares one mirror.

use std::mem::{offset_of, size_of};

pub mod btf;
pub mod elf;
pub mod layout;

pub use layout::{FieldLayout, StructLayout};

pub const ABI_VERSION: u32 = 3;

pub const IDENTITY_UNKNOWN: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_UNMANAGED: u32 = 3;
pub const IDENTITY_HEALTH: u32 = 4;
pub const IDENTITY_INIT: u32 = 5;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
pub const IDENTITY_INGRESS: u32 = 8;
pub const IDENTITY_WORLD_IPV4: u32 = 9;
pub const IDENTITY_WORLD_IPV6: u32 = 10;
pub const IDENTITY_CLUSTER_MIN: u32 = 256;
pub const IDENTITY_CLUSTER_MAX: u32 = 0x00ff_ffff;
pub const IDENTITY_CIDR_MIN: u32 = 0x0100_0000;
pub const IDENTITY_CIDR_MAX: u32 = 0x01ff_ffff;
pub const IDENTITY_TRANSIT_MIN: u32 = 0x0200_0000;
pub const IDENTITY_TRANSIT_MAX: u32 = 0x02ff_ffff;
pub const IDENTITY_ENDPOINT_TRANSIT_BASE: u32 = 0x0300_0000;
pub const IDENTITY_ENDPOINT_TRANSIT_MASK: u32 = 0x00ff_ffff;

/// The transit identity of an endpoint's own addresses (its source check accepts it), or
/// `None` when the ifindex does not fit the range.
pub fn endpoint_transit_identity(ifindex: u32) -> Option<u32> {
    (ifindex & !IDENTITY_ENDPOINT_TRANSIT_MASK == 0)
        .then_some(IDENTITY_ENDPOINT_TRANSIT_BASE | ifindex)
}

pub const RULE_ID_NONE: u32 = 0;
pub const RULE_ID_NOT_ISOLATED: u32 = 1;
/// Traffic from the endpoint's node (peer identity host) in an isolated ingress direction:
/// always allowed, as the NetworkPolicy API requires.
pub const RULE_ID_HOST: u32 = 2;
pub const RULE_ID_FIRST_POLICY: u32 = 16;

pub const POLICY_VERDICT_ALLOW: u8 = 1;
pub const POLICY_VERDICT_DENY: u8 = 2;
pub const POLICY_VERDICT_REDIRECT: u8 = 3;

pub const POLICY_F_AUDIT: u8 = 0x01;

pub const PRECEDENCE_ADMIN_MIN: u16 = 0;
pub const PRECEDENCE_NETWORK_POLICY: u16 = 1000;
pub const PRECEDENCE_BASELINE: u16 = 2000;

pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

pub const DROP_INVALID_SOURCE_IP: u32 = 132;
pub const DROP_POLICY_DENIED: u32 = 133;
pub const DROP_INVALID_PACKET: u32 = 134;
/// A pod hook's program found no decision program in `pal_tail` (fail closed).
pub const DROP_MISSED_TAIL_CALL: u32 = 140;
pub const DROP_UNKNOWN_L4: u32 = 142;
pub const DROP_CT_INSERT_FAILED: u32 = 155;
pub const DROP_FRAG_NOT_SUPPORTED: u32 = 157;
pub const DROP_NO_SERVICE: u32 = 158;
pub const DROP_INVALID_IDENTITY: u32 = 171;
pub const DROP_FRAG_NOT_FOUND: u32 = 175;
pub const DROP_FORBIDDEN_ICMP6: u32 = 176;
pub const DROP_PROXY_UNAVAILABLE: u32 = 180;
pub const DROP_POLICY_DENY: u32 = 181;
/// Hubble's `DROP_EP_NOT_READY`. ABI v1 used 204, which Hubble names `DROP_NO_EGRESS_IP`.
pub const DROP_EP_NOT_READY: u32 = 203;

/// Every drop code the datapath can emit, with its Hubble `DropReason` name.
pub const DROP_REASONS: &[(u32, &str)] = &[
    (DROP_INVALID_SOURCE_IP, "INVALID_SOURCE_IP"),
    (DROP_POLICY_DENIED, "POLICY_DENIED"),
    (DROP_INVALID_PACKET, "INVALID_PACKET_DROPPED"),
    (DROP_MISSED_TAIL_CALL, "MISSED_TAIL_CALL"),
    (DROP_UNKNOWN_L4, "UNKNOWN_L4_PROTOCOL"),
    (DROP_CT_INSERT_FAILED, "CT_MAP_INSERTION_FAILED"),
    (DROP_FRAG_NOT_SUPPORTED, "IP_FRAGMENTATION_NOT_SUPPORTED"),
    (DROP_NO_SERVICE, "SERVICE_BACKEND_NOT_FOUND"),
    (DROP_INVALID_IDENTITY, "INVALID_IDENTITY"),
    (
        DROP_FRAG_NOT_FOUND,
        "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
    ),
    (DROP_FORBIDDEN_ICMP6, "FORBIDDEN_ICMPV6_MESSAGE"),
    (
        DROP_PROXY_UNAVAILABLE,
        "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
    ),
    (DROP_POLICY_DENY, "POLICY_DENY"),
    (DROP_EP_NOT_READY, "DROP_EP_NOT_READY"),
];

/// The Hubble `DropReason` name of a drop code (the verdict log's `drop_reason_desc`).
pub fn drop_reason_name(code: u32) -> &'static str {
    DROP_REASONS
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
        .unwrap_or("DROP_REASON_UNKNOWN")
}

pub const POLICY_PREFIX_SLOT: u32 = 32;
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

pub const CT_F_REPLY_SEEN: u8 = 0x01;
pub const CT_F_SEEN_FIN: u8 = 0x02;
pub const CT_F_SEEN_RST: u8 = 0x04;
pub const CT_F_PROXY: u8 = 0x08;
pub const CT_F_OPENED_INGRESS: u8 = 0x10;
pub const CT_F_PROXY_UPSTREAM: u8 = 0x20;
/// A pod's flow to a service frontend whose backend is the pod itself (hairpin).
pub const CT_F_HAIRPIN: u8 = 0x40;
/// A flow from outside that the node's uplink translated (its entry is the uplink's).
pub const CT_F_UPLINK: u8 = 0x80;

/// `skb->mark` bits of the L7 proxy redirect (`PROXY_MARK_*`, docs/datapath.md §11).
pub const PROXY_MARK_MASK: u32 = 0x0f00;
/// Set by `from_pod`: deliver locally (to the proxy, or to its upstream socket).
pub const PROXY_MARK_LOCAL: u32 = 0x0200;
/// The proxy's client-facing sockets.
pub const PROXY_MARK_LISTENER: u32 = 0x0a00;
/// The proxy's upstream sockets: `to_pod` accepts a REDIRECT decision only with it.
pub const PROXY_MARK_UPSTREAM: u32 = 0x0b00;
/// Set by `from_pod` on a hairpin reply it translated and sends back to the pod.
pub const LB_MARK_HAIRPIN: u32 = 0x0c00;
/// `proxy_state.flags`: the proxy takes redirected connections.
pub const PROXY_F_READY: u32 = 0x01;
/// `PROXY_F_INGRESS_L7`: an endpoint of this node has ingress HTTP rules, so `from_pod`
/// looks a new TCP flow's destination up (step 6b); without it that lookup is skipped.
pub const PROXY_F_INGRESS_L7: u32 = 0x02;
pub const CT_LIFETIME_TCP_SYN_S: u64 = 60;
pub const CT_LIFETIME_TCP_S: u64 = 21600;
pub const CT_LIFETIME_TCP_CLOSE_S: u64 = 10;
pub const CT_LIFETIME_NONTCP_S: u64 = 60;

pub const EVENT_VERDICT_FORWARDED: u8 = 1;
pub const EVENT_VERDICT_DROPPED: u8 = 2;
pub const EVENT_VERDICT_AUDIT: u8 = 4;
pub const EVENT_VERDICT_REDIRECTED: u8 = 5;
pub const EVENT_KIND_NEW_FLOW: u8 = 1;
pub const EVENT_KIND_CT_CLOSE: u8 = 2;
pub const EVENT_KIND_REVOKED: u8 = 3;
pub const EVENT_DROP_REPEAT_NS: u64 = 1_000_000_000;

pub const COUNTER_DIR_STRIDE: u32 = 256;
pub const COUNTER_MAX: u32 = 512;

/// Slots of `pal_tail` (one decision program per policy direction, slot = `DIRECTION_*`).
pub const TAIL_SLOTS: u32 = 2;
pub const COUNTER_FORWARDED: u32 = 1;
pub const COUNTER_REDIRECTED: u32 = 2;
pub const COUNTER_AUDIT: u32 = 3;
pub const COUNTER_CT_ESTABLISHED: u32 = 4;
pub const COUNTER_CT_REPLY: u32 = 5;
pub const COUNTER_EVENTS_LOST: u32 = 6;
pub const COUNTER_PASS_NON_IP: u32 = 7;
pub const COUNTER_PASS_NEIGHBOR: u32 = 8;
pub const COUNTER_REVOKED: u32 = 9;
pub const COUNTER_ICMP_RELATED: u32 = 10;
/// The last `COUNTER_*` slot: every drop code is above it.
pub const COUNTER_LAST: u32 = COUNTER_ICMP_RELATED;

pub const FRAG_LIFETIME_S: u64 = 30;

pub const IPCACHE_PREFIX_FIXED: u32 = 32;

pub const ENDPOINT_F_READY: u32 = 0x01;
pub const ENDPOINT_F_IPV4: u32 = 0x02;
pub const ENDPOINT_F_IPV6: u32 = 0x04;

/// `struct policy_key`: the LPM key of an endpoint policy map.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub slot: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    /// Network byte order.
    pub dport_be: u16,
}

/// `struct policy_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyValue {
    pub rule_id: u32,
    /// Network byte order.
    pub proxy_port_be: u16,
    pub precedence: u16,
    pub verdict: u8,
    pub flags: u8,
    pub pad: u16,
}

/// `struct ipcache_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// `struct ipcache_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    pub flags: u32,
}

/// `struct endpoint_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointInfo {
    pub identity: u32,
    pub policy_slot: u32,
    pub flags: u32,
    pub revision: u32,
    /// The endpoint's own IPv4 address, network order (`ENDPOINT_F_IPV4`).
    pub ipv4: [u8; 4],
    /// Its own IPv6 address (`ENDPOINT_F_IPV6`).
    pub ipv6: [u8; 16],
}

/// `struct ct_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    pub family: u8,
    pub direction: u8,
    pub pad: u8,
    pub ifindex: u32,
}

/// `struct ct_entry`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtEntry {
    pub expires_ns: u64,
    pub rule_id: u32,
    pub revision: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub proxy_port_be: u16,
    pub flags: u8,
    /// Reserved for the L7 proxy redirect (ABI v2); 0 until it lands.
    pub proxy_state: u8,
    /// Service reverse-NAT index (ABI v2); 0 = not translated.
    pub rev_nat_index: u16,
    pub pad: u16,
    /// The service the flow was load-balanced for (ABI v2); 0 = none.
    pub service_id: u32,
    /// `pal_ep_gen` when a decision program last found the flow's endpoint ready and its
    /// revision current; the fast path takes the flow's packets only under that generation
    /// (0 = never).
    pub ep_gen: u32,
    pub packets: u64,
    pub bytes: u64,
}

/// `struct local_key`: a pod's own address (`pal_local`, learned by the datapath; user space
/// only reads it, for inspection and tests).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LocalKey {
    /// 4 or 6.
    pub family: u8,
    pub pad: [u8; 3],
    /// Network order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// `struct local_route`: how the node delivers to that pod.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LocalRoute {
    /// Host-side interface of the pod.
    pub ifindex: u32,
    /// `pal_ep_gen` when learned; used only while it is the current generation.
    pub ep_gen: u32,
    pub pod_mac: [u8; 6],
    pub node_mac: [u8; 6],
}

/// `struct frag_key`: a fragmented datagram at one endpoint interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Network byte order; an IPv4 id in the low 16 bits.
    pub id_be: u32,
    pub protocol: u8,
    pub family: u8,
    pub direction: u8,
    pub pad: u8,
    pub ifindex: u32,
}

/// `struct frag_ports`: the first fragment's ports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FragPorts {
    pub expires_ns: u64,
    pub sport_be: u16,
    pub dport_be: u16,
    pub trackable: u8,
    pub icmp_type: u8,
    pub pad: u16,
}

/// `struct verdict_event`: one record of the `events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VerdictEvent {
    pub time_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub protocol: u8,
    pub family: u8,
    pub direction: u8,
    pub verdict: u8,
    pub kind: u8,
    pub tcp_flags: u8,
    pub drop_reason: u16,
    pub ifindex: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub rule_id: u32,
    pub revision: u32,
    pub proxy_port_be: u16,
    /// The service frontend id a translated flow was sent to; 0 = none.
    pub service: u16,
    pub packet_len: u32,
}

/// `struct proxy_state`, the one entry of `pal_proxy`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ProxyState {
    pub flags: u32,
    pub port_be: u16,
    pub pad: u16,
}

impl ProxyState {
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.flags.to_ne_bytes());
        b[4..6].copy_from_slice(&self.port_be.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 8]) -> ProxyState {
        ProxyState {
            flags: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            port_be: u16::from_ne_bytes([b[4], b[5]]),
            pad: 0,
        }
    }
}

/// Slots a service frontend's Maglev table may have (`LB_MAGLEV_MAX`).
pub const LB_MAGLEV_MAX: usize = 16_384;
/// Frontend ids are 1..=`LB_ID_MAX` (`ct_entry.rev_nat_index` is 16 bits).
pub const LB_ID_MAX: u32 = 65_535;
/// `sessionAffinity: ClientIP`: the flow hash leaves the source port out.
pub const LB_F_AFFINITY: u32 = 0x01;
/// `lb_service.flags >> LB_AFFINITY_TIMEOUT_SHIFT`: the affinity timeout in seconds.
pub const LB_AFFINITY_TIMEOUT_SHIFT: u32 = 8;
/// The source a hairpin flow is given (169.254.42.1).
pub const LB_HAIRPIN_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 42, 1);
/// The first 32 bits of the IPv6 hairpin source (`100::a9fe:2a01`, in the discard-only
/// prefix 100::/64); its last 32 bits are [`LB_HAIRPIN_V4`]'s.
pub const LB_HAIRPIN_V6_HIGH: u32 = 0x0100_0000;
/// The source an IPv6 hairpin flow is given.
pub const LB_HAIRPIN_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0xa9fe, 0x2a01);

/// `struct lb_key`: a service frontend (address, port, protocol).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LbKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub protocol: u8,
    pub family: u8,
}

impl LbKey {
    pub fn new(addr: std::net::IpAddr, port: u16, protocol: u8) -> LbKey {
        let (addr, family) = addr16_of(&addr);
        LbKey {
            addr,
            port_be: port.to_be(),
            protocol,
            family,
        }
    }

    pub fn ip(&self) -> std::net::IpAddr {
        ip_of(&self.addr, self.family)
    }

    pub fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }

    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..16].copy_from_slice(&self.addr);
        b[16..18].copy_from_slice(&self.port_be.to_ne_bytes());
        b[18] = self.protocol;
        b[19] = self.family;
        b
    }

    pub fn from_bytes(b: &[u8; 20]) -> LbKey {
        LbKey {
            addr: addr16(b, 0),
            port_be: ne_u16(b, 16),
            protocol: b[18],
            family: b[19],
        }
    }
}

/// `struct lb_service`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LbService {
    pub id: u32,
    pub table_size: u32,
    pub backends: u32,
    pub flags: u32,
}

impl LbService {
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.table_size.to_ne_bytes());
        b[8..12].copy_from_slice(&self.backends.to_ne_bytes());
        b[12..16].copy_from_slice(&self.flags.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 16]) -> LbService {
        LbService {
            id: ne_u32(b, 0),
            table_size: ne_u32(b, 4),
            backends: ne_u32(b, 8),
            flags: ne_u32(b, 12),
        }
    }
}

/// `struct lb_backend_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LbBackendKey {
    pub id: u32,
    pub index: u32,
}

/// `struct lb_backend`: a backend's address and port.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LbBackend {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub pad: u16,
}

impl LbBackend {
    pub fn new(addr: std::net::IpAddr, port: u16) -> LbBackend {
        LbBackend {
            addr: addr16_of(&addr).0,
            port_be: port.to_be(),
            pad: 0,
        }
    }

    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..16].copy_from_slice(&self.addr);
        b[16..18].copy_from_slice(&self.port_be.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 20]) -> LbBackend {
        LbBackend {
            addr: addr16(b, 0),
            port_be: ne_u16(b, 16),
            pad: 0,
        }
    }
}

/// `struct lb_flow`: the backend a translated flow was sent to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LbFlow {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub index: u16,
    pub id: u32,
}

/// `struct lb_affinity_key`: a client at a frontend with session affinity.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LbAffinityKey {
    pub addr: [u8; 16],
    pub id: u32,
}

/// `struct lb_affinity`: the backend a client's new flows take while the timeout runs.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LbAffinity {
    pub used_ns: u64,
    pub addr: [u8; 16],
    pub port_be: u16,
    pub index: u16,
    pub pad: u32,
}

/// An address as the maps store it (16 bytes, IPv4 in the first four) and its family.
fn addr16_of(a: &std::net::IpAddr) -> ([u8; 16], u8) {
    let mut b = [0u8; 16];
    match a {
        std::net::IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        std::net::IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

fn ip_of(b: &[u8; 16], family: u8) -> std::net::IpAddr {
    if family == 4 {
        std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
    } else {
        std::net::Ipv6Addr::from(*b).into()
    }
}

/// `struct counter_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = {
    assert!(size_of::<PolicyKey>() == 16);
    assert!(offset_of!(PolicyKey, slot) == 4);
    assert!(offset_of!(PolicyKey, identity) == 8);
    assert!(offset_of!(PolicyKey, direction) == 12);
    assert!(offset_of!(PolicyKey, protocol) == 13);
    assert!(offset_of!(PolicyKey, dport_be) == 14);
    assert!(size_of::<CtKey>() == 44);
    assert!(offset_of!(CtKey, sport_be) == 32);
    assert!(offset_of!(CtKey, ifindex) == 40);
    assert!(size_of::<CtEntry>() == 56);
    assert!(offset_of!(CtEntry, proxy_port_be) == 24);
    assert!(offset_of!(CtEntry, rev_nat_index) == 28);
    assert!(offset_of!(CtEntry, service_id) == 32);
    assert!(offset_of!(CtEntry, packets) == 40);
    assert!(size_of::<FragKey>() == 44);
    assert!(size_of::<FragPorts>() == 16);
    // Counter index = direction * COUNTER_DIR_STRIDE + code: no drop code may reach the
    // other direction's slots or collide with a COUNTER_* slot.
    assert!(COUNTER_MAX == 2 * COUNTER_DIR_STRIDE);
    let mut i = 0;
    while i < DROP_REASONS.len() {
        let code = DROP_REASONS[i].0;
        assert!(code > COUNTER_LAST && code < COUNTER_DIR_STRIDE);
        i += 1;
    }
    assert!(size_of::<VerdictEvent>() == 80);
    assert!(offset_of!(VerdictEvent, sport_be) == 40);
    assert!(offset_of!(VerdictEvent, drop_reason) == 50);
    assert!(offset_of!(VerdictEvent, ifindex) == 52);
    assert!(offset_of!(VerdictEvent, proxy_port_be) == 72);
    assert!(offset_of!(VerdictEvent, packet_len) == 76);
    assert!(size_of::<CounterValue>() == 16);
    assert!(size_of::<LbKey>() == 20);
    assert!(offset_of!(LbKey, port_be) == 16);
    assert!(offset_of!(LbKey, family) == 19);
    assert!(size_of::<LbService>() == 16);
    assert!(size_of::<LbBackendKey>() == 8);
    assert!(size_of::<LbBackend>() == 20);
    assert!(offset_of!(LbBackend, port_be) == 16);
    assert!(size_of::<LbFlow>() == 24);
    assert!(offset_of!(LbFlow, index) == 18);
    assert!(offset_of!(LbFlow, id) == 20);
    assert!(size_of::<LbAffinityKey>() == 20);
    assert!(offset_of!(LbAffinityKey, id) == 16);
    assert!(size_of::<LbAffinity>() == 32);
    assert!(offset_of!(LbAffinity, port_be) == 24);
    assert!(offset_of!(LbAffinity, index) == 26);
    assert!(size_of::<ProxyState>() == 8);
    assert!(offset_of!(ProxyState, port_be) == 4);
    assert!(size_of::<PolicyValue>() == 12);
    assert!(offset_of!(PolicyValue, proxy_port_be) == 4);
    assert!(offset_of!(PolicyValue, precedence) == 6);
    assert!(offset_of!(PolicyValue, verdict) == 8);
    assert!(offset_of!(PolicyValue, flags) == 9);
    assert!(size_of::<IpcacheKey>() == 24);
    assert!(offset_of!(IpcacheKey, family) == 4);
    assert!(offset_of!(IpcacheKey, addr) == 8);
    assert!(size_of::<IpcacheValue>() == 8);
    assert!(size_of::<EndpointInfo>() == 36);
    assert!(offset_of!(EndpointInfo, revision) == 12);
    assert!(offset_of!(EndpointInfo, ipv4) == 16);
    assert!(offset_of!(EndpointInfo, ipv6) == 20);
};

impl PolicyKey {
    /// The bytes the kernel sees, padding zeroed.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.prefixlen.to_ne_bytes());
        b[4..8].copy_from_slice(&self.slot.to_ne_bytes());
        b[8..12].copy_from_slice(&self.identity.to_ne_bytes());
        b[12] = self.direction;
        b[13] = self.protocol;
        b[14..16].copy_from_slice(&self.dport_be.to_ne_bytes());
        b
    }
}

impl PolicyValue {
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.rule_id.to_ne_bytes());
        b[4..6].copy_from_slice(&self.proxy_port_be.to_ne_bytes());
        b[6..8].copy_from_slice(&self.precedence.to_ne_bytes());
        b[8] = self.verdict;
        b[9] = self.flags;
        b
    }
}

/// Rank used when two lookups both hit: a larger rank wins at equal precedence.
pub fn verdict_rank(verdict: u8) -> u8 {
    match verdict {
        POLICY_VERDICT_DENY => 3,
        POLICY_VERDICT_REDIRECT => 2,
        POLICY_VERDICT_ALLOW => 1,
        _ => 0,
    }
}

/// The datapath's combine step (lookup order step 4): `true` when `a` beats `b`.
pub fn value_beats(a: &PolicyValue, b: &PolicyValue) -> bool {
    (
        a.precedence,
        std::cmp::Reverse(verdict_rank(a.verdict)),
        a.rule_id,
    ) < (
        b.precedence,
        std::cmp::Reverse(verdict_rank(b.verdict)),
        b.rule_id,
    )
}

/// Little helpers to read native-endian fields out of a kernel record.
fn ne_u16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn ne_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}
fn addr16(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

impl VerdictEvent {
    /// Decodes a ring-buffer record; `None` when it is shorter than the struct.
    pub fn from_bytes(b: &[u8]) -> Option<VerdictEvent> {
        if b.len() < size_of::<VerdictEvent>() {
            return None;
        }
        Some(VerdictEvent {
            time_ns: ne_u64(b, 0),
            saddr: addr16(b, 8),
            daddr: addr16(b, 24),
            sport_be: ne_u16(b, 40),
            dport_be: ne_u16(b, 42),
            protocol: b[44],
            family: b[45],
            direction: b[46],
            verdict: b[47],
            kind: b[48],
            tcp_flags: b[49],
            drop_reason: ne_u16(b, 50),
            ifindex: ne_u32(b, 52),
            src_identity: ne_u32(b, 56),
            dst_identity: ne_u32(b, 60),
            rule_id: ne_u32(b, 64),
            revision: ne_u32(b, 68),
            proxy_port_be: ne_u16(b, 72),
            service: ne_u16(b, 74),
            packet_len: ne_u32(b, 76),
        })
    }
}

impl CtKey {
    /// The canonical key (ABI v3, `struct ct_key` in palisade_abi.h) of a tuple seen at
    /// hook `direction`: the lower (address bytes, port in network order) side first, and
    /// `direction` XOR 1 when the tuple was swapped. A packet and its reply at the other
    /// hook make the same key. Ports are network-order values as stored in the key.
    #[allow(clippy::too_many_arguments)]
    pub fn canonical(
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport_be: u16,
        dport_be: u16,
        protocol: u8,
        family: u8,
        direction: u8,
        ifindex: u32,
    ) -> CtKey {
        let swap = (saddr, u16::from_be(sport_be)) > (daddr, u16::from_be(dport_be));
        let (saddr, daddr, sport_be, dport_be) = if swap {
            (daddr, saddr, dport_be, sport_be)
        } else {
            (saddr, daddr, sport_be, dport_be)
        };
        CtKey {
            saddr,
            daddr,
            sport_be,
            dport_be,
            protocol,
            family,
            direction: direction ^ u8::from(swap),
            pad: 0,
            ifindex,
        }
    }

    pub fn to_bytes(&self) -> [u8; 44] {
        let mut b = [0u8; 44];
        b[0..16].copy_from_slice(&self.saddr);
        b[16..32].copy_from_slice(&self.daddr);
        b[32..34].copy_from_slice(&self.sport_be.to_ne_bytes());
        b[34..36].copy_from_slice(&self.dport_be.to_ne_bytes());
        b[36] = self.protocol;
        b[37] = self.family;
        b[38] = self.direction;
        b[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 44]) -> CtKey {
        CtKey {
            saddr: addr16(b, 0),
            daddr: addr16(b, 16),
            sport_be: ne_u16(b, 32),
            dport_be: ne_u16(b, 34),
            protocol: b[36],
            family: b[37],
            direction: b[38],
            pad: 0,
            ifindex: ne_u32(b, 40),
        }
    }
}

impl CtEntry {
    pub fn to_bytes(&self) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[0..8].copy_from_slice(&self.expires_ns.to_ne_bytes());
        b[8..12].copy_from_slice(&self.rule_id.to_ne_bytes());
        b[12..16].copy_from_slice(&self.revision.to_ne_bytes());
        b[16..20].copy_from_slice(&self.src_identity.to_ne_bytes());
        b[20..24].copy_from_slice(&self.dst_identity.to_ne_bytes());
        b[24..26].copy_from_slice(&self.proxy_port_be.to_ne_bytes());
        b[26] = self.flags;
        b[27] = self.proxy_state;
        b[28..30].copy_from_slice(&self.rev_nat_index.to_ne_bytes());
        b[32..36].copy_from_slice(&self.service_id.to_ne_bytes());
        b[36..40].copy_from_slice(&self.ep_gen.to_ne_bytes());
        b[40..48].copy_from_slice(&self.packets.to_ne_bytes());
        b[48..56].copy_from_slice(&self.bytes.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 56]) -> CtEntry {
        CtEntry {
            expires_ns: ne_u64(b, 0),
            rule_id: ne_u32(b, 8),
            revision: ne_u32(b, 12),
            src_identity: ne_u32(b, 16),
            dst_identity: ne_u32(b, 20),
            proxy_port_be: ne_u16(b, 24),
            flags: b[26],
            proxy_state: b[27],
            rev_nat_index: ne_u16(b, 28),
            pad: 0,
            service_id: ne_u32(b, 32),
            ep_gen: ne_u32(b, 36),
            packets: ne_u64(b, 40),
            bytes: ne_u64(b, 48),
        }
    }
}

impl LocalKey {
    pub fn new(addr: std::net::IpAddr) -> LocalKey {
        let (addr, family) = addr16_of(&addr);
        LocalKey {
            family,
            pad: [0; 3],
            addr,
        }
    }

    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0] = self.family;
        b[4..20].copy_from_slice(&self.addr);
        b
    }

    pub fn from_bytes(b: &[u8; 20]) -> LocalKey {
        LocalKey {
            family: b[0],
            pad: [0; 3],
            addr: addr16(b, 4),
        }
    }
}

impl LocalRoute {
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ep_gen.to_ne_bytes());
        b[8..14].copy_from_slice(&self.pod_mac);
        b[14..20].copy_from_slice(&self.node_mac);
        b
    }

    pub fn from_bytes(b: &[u8; 20]) -> LocalRoute {
        let mut pod_mac = [0u8; 6];
        pod_mac.copy_from_slice(&b[8..14]);
        let mut node_mac = [0u8; 6];
        node_mac.copy_from_slice(&b[14..20]);
        LocalRoute {
            ifindex: ne_u32(b, 0),
            ep_gen: ne_u32(b, 4),
            pod_mac,
            node_mac,
        }
    }
}

impl EndpointInfo {
    pub fn to_bytes(&self) -> [u8; 36] {
        let mut b = [0u8; 36];
        b[0..4].copy_from_slice(&self.identity.to_ne_bytes());
        b[4..8].copy_from_slice(&self.policy_slot.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&self.revision.to_ne_bytes());
        b[16..20].copy_from_slice(&self.ipv4);
        b[20..36].copy_from_slice(&self.ipv6);
        b
    }

    pub fn from_bytes(b: &[u8; 36]) -> EndpointInfo {
        let mut ipv4 = [0u8; 4];
        ipv4.copy_from_slice(&b[16..20]);
        let mut ipv6 = [0u8; 16];
        ipv6.copy_from_slice(&b[20..36]);
        EndpointInfo {
            identity: ne_u32(b, 0),
            policy_slot: ne_u32(b, 4),
            flags: ne_u32(b, 8),
            revision: ne_u32(b, 12),
            ipv4,
            ipv6,
        }
    }

    /// Records the endpoint's own addresses (the source check accepts exactly these): the
    /// first of each family. A pod has at most one per family; a further address of a
    /// family is not accepted as a source (fails closed).
    pub fn with_addresses(mut self, ips: &[std::net::IpAddr]) -> EndpointInfo {
        self.flags &= !(ENDPOINT_F_IPV4 | ENDPOINT_F_IPV6);
        self.ipv4 = [0; 4];
        self.ipv6 = [0; 16];
        for ip in ips.iter().rev() {
            match ip {
                std::net::IpAddr::V4(a) => {
                    self.ipv4 = a.octets();
                    self.flags |= ENDPOINT_F_IPV4;
                }
                std::net::IpAddr::V6(a) => {
                    self.ipv6 = a.octets();
                    self.flags |= ENDPOINT_F_IPV6;
                }
            }
        }
        self
    }

    /// Whether `ip` is one of the endpoint's own addresses: the datapath's source check
    /// (`endpoint_owns` in `ebpf/lib/endpoint.h`).
    pub fn owns(&self, ip: &std::net::IpAddr) -> bool {
        match ip {
            std::net::IpAddr::V4(a) => self.flags & ENDPOINT_F_IPV4 != 0 && self.ipv4 == a.octets(),
            std::net::IpAddr::V6(a) => self.flags & ENDPOINT_F_IPV6 != 0 && self.ipv6 == a.octets(),
        }
    }
}

impl PolicyValue {
    pub fn from_bytes(b: &[u8; 12]) -> PolicyValue {
        PolicyValue {
            rule_id: ne_u32(b, 0),
            proxy_port_be: ne_u16(b, 4),
            precedence: ne_u16(b, 6),
            verdict: b[8],
            flags: b[9],
            pad: 0,
        }
    }
}

/// What the programs return (kernel `enum tcx_action_base`), as BPF_PROG_TEST_RUN reports
/// it (an unsigned 32-bit value). Defined in `ebpf/lib/common.h`.
pub mod tcx {
    /// Admitted: later programs on the hook still run (`TCX_NEXT`, -1).
    pub const NEXT: u32 = u32::MAX;
    /// Dropped; ends the chain (`TCX_DROP`).
    pub const DROP: u32 = 2;
    /// Sent to another interface by `bpf_redirect` (`TCX_REDIRECT`, TC_ACT_REDIRECT).
    pub const REDIRECT: u32 = 7;
}

/// `BPF_MAP_TYPE_*` values (kernel UAPI) of the map types the datapath declares.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LPM_TRIE: u32 = 11;
    pub const PROG_ARRAY: u32 = 3;
    pub const SOCKMAP: u32 = 15;
    pub const RINGBUF: u32 = 27;
}

/// The name of every map (the object's symbol, and the pin's file name).
pub mod map_name {
    pub const ENDPOINTS: &str = "pal_endpoints";
    pub const IPCACHE: &str = "pal_ipcache";
    pub const POLICY: &str = "pal_policy";
    pub const CT: &str = "pal_ct";
    pub const FRAG: &str = "pal_frag";
    pub const DROP_SEEN: &str = "pal_drop_seen";
    pub const EVENTS: &str = "pal_events";
    pub const COUNTERS: &str = "pal_counters";
    pub const PROXY: &str = "pal_proxy";
    pub const PROXY_SOCKS: &str = "pal_proxy_socks";
    pub const TAIL: &str = "pal_tail";
    pub const EP_GEN: &str = "pal_ep_gen";
    pub const LOCAL: &str = "pal_local";
    pub const LOCAL_SCRATCH: &str = "pal_local_scratch";
    pub const LB_SVC: &str = "pal_lb_svc";
    pub const LB_MAGLEV: &str = "pal_lb_maglev";
    pub const LB_BACKENDS: &str = "pal_lb_backends";
    pub const LB_REVNAT: &str = "pal_lb_revnat";
    pub const LB_FLOWS: &str = "pal_lb_flows";
    pub const LB_AFFINITY: &str = "pal_lb_affinity";
}

/// Entry capacities of the maps the control plane fills (`max_entries` in `ebpf/lib/*.h`;
/// `enforcer/tests/abi_btf.rs` checks them against the object). The policy compiler's
/// capacity check (`policy_compiler::plan::Capacity`) defaults to these.
pub mod capacity {
    pub const POLICY: u32 = 1_048_576;
    pub const IPCACHE: u32 = 524_288;
    pub const ENDPOINTS: u32 = 65_536;
    /// Service frontends (`pal_lb_svc`, `pal_lb_maglev`, `pal_lb_revnat`).
    pub const LB_FRONTENDS: u32 = 65_535;
    /// Backends over all frontends (`pal_lb_backends`).
    pub const LB_BACKENDS: u32 = 262_144;
}

/// What the control plane's map code assumes about one map: its type, and the C type and
/// Rust size of key and value (`None` for a ring buffer). Entry counts and flags are not
/// assumed: the loader takes them from the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapAbi {
    pub name: &'static str,
    pub map_type: u32,
    pub key: Option<(&'static str, usize)>,
    pub value: Option<(&'static str, usize)>,
    /// Pinned by name under the pin directory (survives the agent); only the proxy's
    /// socket map is not (a socket lives as long as its process).
    pub pinned: bool,
}

/// Every map of the datapath and the layout the Rust side reads and writes it with.
pub const MAPS: &[MapAbi] = &[
    MapAbi {
        name: map_name::ENDPOINTS,
        map_type: map_type::HASH,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("endpoint_info", size_of::<EndpointInfo>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::IPCACHE,
        map_type: map_type::LPM_TRIE,
        key: Some(("ipcache_key", size_of::<IpcacheKey>())),
        value: Some(("ipcache_value", size_of::<IpcacheValue>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::POLICY,
        map_type: map_type::LPM_TRIE,
        key: Some(("policy_key", size_of::<PolicyKey>())),
        value: Some(("policy_value", size_of::<PolicyValue>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::CT,
        map_type: map_type::LRU_HASH,
        key: Some(("ct_key", size_of::<CtKey>())),
        value: Some(("ct_entry", size_of::<CtEntry>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::FRAG,
        map_type: map_type::LRU_HASH,
        key: Some(("frag_key", size_of::<FragKey>())),
        value: Some(("frag_ports", size_of::<FragPorts>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::DROP_SEEN,
        map_type: map_type::LRU_HASH,
        key: Some(("ct_key", size_of::<CtKey>())),
        value: Some(("__u64", size_of::<u64>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::EVENTS,
        map_type: map_type::RINGBUF,
        key: None,
        value: None,
        pinned: true,
    },
    MapAbi {
        name: map_name::COUNTERS,
        map_type: map_type::PERCPU_ARRAY,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("counter_value", size_of::<CounterValue>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::PROXY,
        map_type: map_type::ARRAY,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("proxy_state", size_of::<ProxyState>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::PROXY_SOCKS,
        map_type: map_type::SOCKMAP,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("__u32", size_of::<u32>())),
        pinned: false,
    },
    MapAbi {
        name: map_name::LOCAL,
        map_type: map_type::LRU_HASH,
        key: Some(("local_key", size_of::<LocalKey>())),
        value: Some(("local_route", size_of::<LocalRoute>())),
        pinned: false,
    },
    MapAbi {
        name: map_name::LOCAL_SCRATCH,
        map_type: map_type::PERCPU_ARRAY,
        key: Some(("__u32", size_of::<u32>())),
        value: Some((
            "local_scratch",
            size_of::<LocalKey>() + size_of::<LocalRoute>(),
        )),
        pinned: false,
    },
    MapAbi {
        name: map_name::EP_GEN,
        map_type: map_type::ARRAY,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("__u32", size_of::<u32>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::TAIL,
        map_type: map_type::PROG_ARRAY,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("__u32", size_of::<u32>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::LB_SVC,
        map_type: map_type::HASH,
        key: Some(("lb_key", size_of::<LbKey>())),
        value: Some(("lb_service", size_of::<LbService>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::LB_MAGLEV,
        map_type: map_type::HASH,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("lb_maglev", 2 * LB_MAGLEV_MAX)),
        pinned: true,
    },
    MapAbi {
        name: map_name::LB_BACKENDS,
        map_type: map_type::HASH,
        key: Some(("lb_backend_key", size_of::<LbBackendKey>())),
        value: Some(("lb_backend", size_of::<LbBackend>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::LB_REVNAT,
        map_type: map_type::HASH,
        key: Some(("__u32", size_of::<u32>())),
        value: Some(("lb_key", size_of::<LbKey>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::LB_FLOWS,
        map_type: map_type::LRU_HASH,
        key: Some(("ct_key", size_of::<CtKey>())),
        value: Some(("lb_flow", size_of::<LbFlow>())),
        pinned: true,
    },
    MapAbi {
        name: map_name::LB_AFFINITY,
        map_type: map_type::LRU_HASH,
        key: Some(("lb_affinity_key", size_of::<LbAffinityKey>())),
        value: Some(("lb_affinity", size_of::<LbAffinity>())),
        pinned: true,
    },
];

/// The layout of every ABI struct as the Rust mirror has it (compared with the object's
/// BTF by `enforcer/tests/abi_btf.rs`).
pub fn layouts() -> Vec<StructLayout> {
    vec![
        layout!(PolicyKey, "policy_key", [prefixlen, slot, identity, direction, protocol, dport_be as "dport"]),
        layout!(PolicyValue, "policy_value", [rule_id, proxy_port_be as "proxy_port", precedence, verdict, flags, pad]),
        layout!(IpcacheKey, "ipcache_key", [prefixlen, family, pad, addr]),
        layout!(IpcacheValue, "ipcache_value", [identity, flags]),
        layout!(
            EndpointInfo,
            "endpoint_info",
            [identity, policy_slot, flags, revision, ipv4, ipv6]
        ),
        layout!(CtKey, "ct_key", [saddr, daddr, sport_be as "sport", dport_be as "dport", protocol, family, direction, pad, ifindex]),
        layout!(CtEntry, "ct_entry", [
            expires_ns, rule_id, revision, src_identity, dst_identity,
            proxy_port_be as "proxy_port", flags, proxy_state, rev_nat_index, pad, service_id,
            ep_gen, packets, bytes
        ]),
        layout!(LocalKey, "local_key", [family, pad, addr]),
        layout!(
            LocalRoute,
            "local_route",
            [ifindex, ep_gen, pod_mac, node_mac]
        ),
        layout!(FragKey, "frag_key", [saddr, daddr, id_be as "id", protocol, family, direction, pad, ifindex]),
        layout!(FragPorts, "frag_ports", [expires_ns, sport_be as "sport", dport_be as "dport", trackable, icmp_type, pad]),
        layout!(VerdictEvent, "verdict_event", [
            time_ns, saddr, daddr, sport_be as "sport", dport_be as "dport", protocol, family,
            direction, verdict, kind, tcp_flags, drop_reason, ifindex, src_identity,
            dst_identity, rule_id, revision, proxy_port_be as "proxy_port", service, packet_len
        ]),
        layout!(CounterValue, "counter_value", [packets, bytes]),
        layout!(ProxyState, "proxy_state", [flags, port_be as "port", pad]),
        layout!(LbKey, "lb_key", [addr, port_be as "port", protocol, family]),
        layout!(LbService, "lb_service", [id, table_size, backends, flags]),
        layout!(LbBackendKey, "lb_backend_key", [id, index]),
        layout!(LbBackend, "lb_backend", [addr, port_be as "port", pad]),
        layout!(LbFlow, "lb_flow", [addr, port_be as "port", index, id]),
        layout!(LbAffinityKey, "lb_affinity_key", [addr, id]),
        layout!(LbAffinity, "lb_affinity", [used_ns, addr, port_be as "port", index, pad]),
    ]
}
