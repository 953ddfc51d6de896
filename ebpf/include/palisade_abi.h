/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Palisade datapath ABI: the layout of every map shared between the C datapath and the
 * Rust control plane. This header is the source of truth. The Rust mirror lives in
 * ebpf/abi (crate palisade-abi) and asserts the same sizes and offsets at compile time;
 * enforcer/tests/abi_btf.rs compares it with the BTF of the built object.
 *
 * Codes (verdicts, drop reasons, reserved identities, rule ids) are append-only:
 * never renumber a value that has shipped. The one exception is ABI v2's alignment with
 * Hubble (DROP_EP_NOT_READY 204 -> 203, see docs/upgrade.md); 204 stays unused.
 *
 * ABI versions (the pin directory is <pin_root>/v<PALISADE_ABI_VERSION>; docs/upgrade.md):
 *   1  first release.
 *   2  ct_entry grows room for service reverse NAT and proxy redirect state (56 bytes);
 *      pal_frag (first-fragment ports); DROP_EP_NOT_READY is Hubble's 203; drop codes
 *      DROP_FRAG_NOT_FOUND and DROP_FORBIDDEN_ICMP6; pass verdicts return TCX_NEXT.
 *   3  conntrack keys are canonical (struct ct_key below): both directions of a flow find
 *      its one entry with one lookup; CT_F_OPENED_INGRESS records the opening hook. Same
 *      layouts as v2; an upgrade re-keys the older entries (docs/upgrade.md).
 *
 * Policy lookup order (also in docs/datapath.md):
 *   1. endpoint_info for the hook's endpoint; missing or not READY -> DROP_EP_NOT_READY.
 *   2. peer identity = ipcache LPM on the peer address (longest prefix wins);
 *      a miss or identity 0 -> DROP_INVALID_IDENTITY.
 *   3. LPM lookup in the policy map under the endpoint's policy_slot, same
 *      direction/protocol/port, identity = peer; only on a miss, the same lookup with
 *      identity = 0 (any peer). The first hit is final: the compiler resolved every tier
 *      into each entry and ends every partition in a catch-all (prefix 72).
 *   4. (no combine step: precedence only records which tier decided)
 *   5. no hit, or the default-deny terminal (DENY with rule_id RULE_ID_NONE)
 *      -> DROP_POLICY_DENIED (the direction is isolated and nothing opens it);
 *      DENY -> DROP_POLICY_DENY unless POLICY_F_AUDIT (then forward, verdict AUDIT);
 *      REDIRECT -> to the L7 proxy on proxy_port; ALLOW -> forward.
 */
#ifndef PALISADE_ABI_H
#define PALISADE_ABI_H

#include <linux/types.h>

#define PALISADE_ABI_VERSION 3

/* ---- identities ---------------------------------------------------------------- */
#define IDENTITY_UNKNOWN        0 /* never assigned; the wildcard in policy keys */
#define IDENTITY_HOST           1
#define IDENTITY_WORLD          2
#define IDENTITY_UNMANAGED      3
#define IDENTITY_HEALTH         4
#define IDENTITY_INIT           5
#define IDENTITY_REMOTE_NODE    6
#define IDENTITY_KUBE_APISERVER 7
#define IDENTITY_INGRESS        8
#define IDENTITY_WORLD_IPV4     9
#define IDENTITY_WORLD_IPV6     10
#define IDENTITY_CLUSTER_MIN    256
#define IDENTITY_CLUSTER_MAX    0x00ffffff
#define IDENTITY_CIDR_MIN       0x01000000 /* CIDR identities, local to the node */
#define IDENTITY_CIDR_MAX       0x01ffffff
/* Transit identities: an address the enforcer is moving between two identities maps to a
 * transit identity while endpoints switch policy slots (docs/datapath.md section 7).
 * Group transits are allocated per update; an endpoint's own addresses use the one derived
 * from its host-side ifindex, which its source check also accepts. */
#define IDENTITY_TRANSIT_MIN    0x02000000
#define IDENTITY_TRANSIT_MAX    0x02ffffff
#define IDENTITY_ENDPOINT_TRANSIT_BASE 0x03000000 /* | (ifindex & 0x00ffffff) */
#define IDENTITY_ENDPOINT_TRANSIT_MASK 0x00ffffff

/* ---- rule ids ------------------------------------------------------------------ */
#define RULE_ID_NONE            0 /* no rule: default deny (also the DENY terminal entry) */
#define RULE_ID_NOT_ISOLATED    1 /* allow-all of a direction no policy isolates */
#define RULE_ID_HOST            2  /* ingress from the endpoint's node: always allowed */
#define RULE_ID_FIRST_POLICY    16

/* ---- verdicts in policy values --------------------------------------------------- */
#define POLICY_VERDICT_ALLOW    1
#define POLICY_VERDICT_DENY     2
#define POLICY_VERDICT_REDIRECT 3 /* to the L7 proxy listening on proxy_port; with
				   * POLICY_F_AUDIT only audit-mode HTTP rules redirect it, and without
				   * a ready proxy it is forwarded instead of dropped */

#define POLICY_F_AUDIT          0x01 /* deny is logged as AUDIT and forwarded */

/* precedence: the tier that decided (informational; the datapath does not compare it) */
#define PRECEDENCE_ADMIN_MIN    0    /* the admin tier (AdminNetworkPolicy, ClusterNetworkPolicy tier Admin) */
#define PRECEDENCE_NETWORK_POLICY 1000
#define PRECEDENCE_BASELINE     2000

#define DIRECTION_INGRESS       0 /* traffic to the endpoint */
#define DIRECTION_EGRESS        1 /* traffic from the endpoint */

/* ---- drop reasons (Hubble DropReason numbering, api/v1/flow/flow.proto) ---------
 * Each value is Hubble's for the same meaning; the Hubble name is in a comment and in
 * palisade_abi::drop_reason_name. */
#define DROP_INVALID_SOURCE_IP    132 /* INVALID_SOURCE_IP: a pod sent from an address that is not its own */
#define DROP_POLICY_DENIED        133 /* POLICY_DENIED: default deny, no rule allows */
#define DROP_INVALID_PACKET       134 /* INVALID_PACKET_DROPPED: truncated or malformed L3/L4 header */
#define DROP_MISSED_TAIL_CALL     140 /* MISSED_TAIL_CALL: the decision program is not in pal_tail (fail closed) */
#define DROP_UNKNOWN_L4           142 /* UNKNOWN_L4_PROTOCOL (reserved, not emitted) */
#define DROP_CT_INSERT_FAILED     155 /* CT_MAP_INSERTION_FAILED */
#define DROP_FRAG_NOT_SUPPORTED   157 /* IP_FRAGMENTATION_NOT_SUPPORTED: a fragment that cannot be decided */
#define DROP_NO_SERVICE           158 /* SERVICE_BACKEND_NOT_FOUND: a service frontend with no backend, or a translated flow whose frontend is gone */
#define DROP_INVALID_IDENTITY     171 /* INVALID_IDENTITY */
#define DROP_FRAG_NOT_FOUND       175 /* FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND (v2) */
#define DROP_FORBIDDEN_ICMP6      176 /* FORBIDDEN_ICMPV6_MESSAGE (v2) */
#define DROP_PROXY_UNAVAILABLE    180 /* PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL: an L7 rule applies and no proxy is attached */
#define DROP_POLICY_DENY          181 /* POLICY_DENY: an explicit deny rule */
#define DROP_EP_NOT_READY         203 /* DROP_EP_NOT_READY: no policy written for the endpoint yet (v1 used 204) */

/* ---- policy map: one LPM trie, partitioned by policy slot ----------------------
 * Every endpoint policy lives under its slot (the enforcer uses the subject identity:
 * endpoints that share an identity share a policy). prefixlen counts bits after the
 * prefixlen field:
 *   72 = slot + identity + direction (any protocol, any port)
 *   80 = + protocol (any port)
 *   80 + n = + the top n bits of dport (n = 16: exact port)
 * Port ranges are stored as their aligned prefix decomposition.
 */
#define POLICY_PREFIX_SLOT      32
#define POLICY_PREFIX_ANY_PROTO 72
#define POLICY_PREFIX_ANY_PORT  80
#define POLICY_PREFIX_FULL      96

struct policy_key {
	__u32 prefixlen;
	__u32 slot;      /* endpoint_info.policy_slot */
	__u32 identity;  /* peer identity; 0 = any peer */
	__u8 direction;  /* DIRECTION_* */
	__u8 protocol;   /* IPPROTO_*; unused when prefixlen == 40 */
	__be16 dport;
};

struct policy_value {
	__u32 rule_id;     /* resolves to policy + rule index in user space */
	__be16 proxy_port; /* REDIRECT only */
	__u16 precedence;  /* PRECEDENCE_* tier */
	__u8 verdict;      /* POLICY_VERDICT_* */
	__u8 flags;        /* POLICY_F_* */
	__u16 pad;
};

/* ---- ipcache: address -> identity, one LPM trie for both families -------------
 * prefixlen = 32 (family + pad) + address prefix length.
 */
#define IPCACHE_PREFIX_FIXED 32

struct ipcache_key {
	__u32 prefixlen;
	__u8 family;     /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];   /* network order; IPv4 uses the first 4 bytes */
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;     /* reserved */
};

/* ---- endpoints: keyed by the host-side interface index --------------------------- */
#define ENDPOINT_F_READY 0x01
#define ENDPOINT_F_IPV4  0x02 /* ipv4 holds the endpoint's own IPv4 address */
#define ENDPOINT_F_IPV6  0x04 /* ipv6 holds the endpoint's own IPv6 address */

/* A pod has at most one address per family; they are what the source check (from_pod,
 * new flows) accepts as the source of the pod's packets. */
struct endpoint_info {
	__u32 identity;
	__u32 policy_slot; /* partition of the policy map holding this endpoint's policy */
	__u32 flags;       /* ENDPOINT_F_* */
	__u32 revision;    /* policy revision realized in the maps */
	__u8 ipv4[4];      /* network order (ENDPOINT_F_IPV4) */
	__u8 ipv6[16];     /* network order (ENDPOINT_F_IPV6) */
};

/* The endpoint generation: "pal_ep_gen", an array of one __u32, pinned. The enforcer adds
 * one after every write or delete of a pal_endpoints entry (and at every load; never 0).
 * A conntrack entry records the generation under which a decision program last found its
 * endpoint ready and its revision current (ct_entry.ep_gen); the fast path takes a packet
 * only while that is still the generation, so it needs no endpoint lookup, and any
 * endpoint change on the node sends each flow's next packet through the decision program
 * once (docs/datapath.md §3.1). */

/* ---- local delivery: "pal_local", an LRU hash, not pinned ---------------------------
 * How the node delivers to each of its pods, as the decision programs see it: for a pod's
 * own address, the host-side interface and the two MAC addresses of a frame on its link
 * (the pod's, and the host side's it sends to and receives from). Learned by the decision
 * programs from frames the node's own stack routed (to_pod: the destination's; from_pod:
 * the validated source's) and stamped with the endpoint generation; the fast path hands an
 * established packet of a pod to a pod of this node straight to that interface's egress
 * (where to_pod still judges it), skipping the node's routing and forwarding, only while
 * the stamp is the current generation (docs/datapath.md §3.2). Never written by user
 * space: a restart begins with an empty map. */
struct local_key {
	__u8 family;     /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];   /* network order; IPv4 uses the first 4 bytes */
};

struct local_route {
	__u32 ifindex;   /* host-side interface of the pod */
	__u32 ep_gen;    /* pal_ep_gen when learned */
	__u8 pod_mac[6]; /* destination MAC of a frame to the pod */
	__u8 node_mac[6];/* source MAC of a frame to the pod */
};

/* ---- conntrack: LRU hash, one entry per (flow, endpoint) --------------------------
 * Keyed by the flow's canonical tuple: the (address, port) side that is lower (addresses
 * compared as bytes, then ports in network order) is the key's source, the other its
 * destination, so a packet and its reply make the same key. `direction` is the hook's
 * DIRECTION_* XOR 1 when the packet's tuple had to be swapped: equal for the opening
 * packet (hook h, as seen) and its replies (the other hook, swapped), different for the
 * same tuple travelling the same way through the other hook. With the host-side ifindex of
 * the endpoint in the key, an entry made at one pod never admits another pod's packets.
 * The entry records the hook that opened the flow (CT_F_OPENED_INGRESS): a packet at that
 * hook continues the flow, one at the other hook is a reply. ICMP echo uses the echo id as
 * port (request: sport = id, reply: dport = id); other ICMP types are never tracked.
 */
#define CT_F_REPLY_SEEN   0x01 /* a reply has passed */
#define CT_F_SEEN_FIN     0x02 /* FIN seen from either side */
#define CT_F_SEEN_RST     0x04
#define CT_F_PROXY        0x08 /* redirected to the L7 proxy */
#define CT_F_OPENED_INGRESS 0x10 /* v3: opened at to_pod (DIRECTION_INGRESS), else from_pod */
#define CT_F_PROXY_UPSTREAM 0x20 /* opened at to_pod by the L7 proxy's upstream (mark 0x0b00) */
#define CT_F_HAIRPIN      0x40 /* a pod's flow to a service frontend that picked the pod itself */
#define CT_F_UPLINK       0x80 /* opened at the node's uplink (from_uplink): a flow from outside it translated */

/* A flow is only established once a reply passed: until then its entry lives
 * CT_LIFETIME_TCP_SYN_S (TCP) or CT_LIFETIME_NONTCP_S, so a flood of openers that never get
 * an answer cannot hold conntrack for hours. */

#define CT_LIFETIME_TCP_SYN_S     60
#define CT_LIFETIME_TCP_S         21600
#define CT_LIFETIME_TCP_CLOSE_S   10
#define CT_LIFETIME_NONTCP_S      60

struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 family;     /* 4 or 6 */
	__u8 direction;  /* DIRECTION_* of the hook XOR swapped (see above) */
	__u8 pad;
	__u32 ifindex;   /* host-side interface of the endpoint */
};

struct ct_entry {
	__u64 expires_ns;  /* bpf_ktime_get_ns() deadline */
	__u32 rule_id;     /* the rule that admitted the flow */
	__u32 revision;    /* endpoint policy revision it was admitted under */
	__u32 src_identity;
	__u32 dst_identity;
	__be16 proxy_port; /* L7 proxy the flow is redirected to (CT_F_PROXY) */
	__u8 flags;        /* CT_F_* */
	__u8 proxy_state;  /* v2, reserved for the L7 proxy redirect; 0 until it lands */
	__u16 rev_nat_index; /* v2, service reverse-NAT index; 0 = not translated */
	__u16 pad;
	__u32 service_id;  /* v2, the service the flow was load-balanced for; 0 = none */
	__u32 ep_gen;      /* pal_ep_gen when a decision program last validated it; 0 = never */
	__u64 packets;
	__u64 bytes;
};

/* ---- L7 proxy redirect: "pal_proxy", one entry (docs/datapath.md §11) --------------
 * skb->mark bits 0x0f00 (every match masked; the other bits belong to other agents):
 *   0x0200 set by from_pod: deliver locally (ip rule fwmark -> local table), for the packets
 *          of a redirected flow and for a server's replies to a proxy upstream connection;
 *   0x0a00 the proxy's client-facing sockets (SO_MARK on its listener);
 *   0x0b00 the proxy's upstream sockets: to_pod accepts a REDIRECT decision only with it.
 * A pod cannot set a mark: the veth scrubs it when the packet leaves the pod.
 */
#define PROXY_MARK_MASK     0x0f00
#define PROXY_MARK_LOCAL    0x0200
#define PROXY_MARK_LISTENER 0x0a00
#define PROXY_MARK_UPSTREAM 0x0b00
#define LB_MARK_HAIRPIN     0x0c00 /* from_pod: sent back to the pod, judged (a hairpin reply; a reject) */
#define PROXY_F_READY       0x01 /* the proxy listens and takes redirected connections */
#define PROXY_F_INGRESS_L7  0x02 /* an endpoint of this node has ingress HTTP rules: step 6b
				  * looks the destination up (else it costs a new flow nothing) */

struct proxy_state {
	__u32 flags;  /* PROXY_F_* */
	__be16 port;  /* the proxy's listener port (informational) */
	__u16 pad;
};

/* ---- the decision programs (docs/datapath.md §3.1) -------------------------------
 * from_pod and to_pod take the packets of tracked flows that need nothing but their entry
 * (the fast path) and tail-call the whole decision for every other packet:
 *   pal_tail  prog array  __u32 slot (= DIRECTION_*) -> from_pod_decide / to_pod_decide
 * The loader fills both slots before anything is attached; an empty slot drops
 * (DROP_MISSED_TAIL_CALL), it never passes. */
#define TAIL_SLOTS 2

/* ---- services (docs/services.md) ---------------------------------------------------
 * A frontend (an address, port and protocol clients connect to: a cluster IP, external IP
 * or load-balancer IP with a service port) has a small id (1..65535) the control plane
 * allocates. from_pod translates a pod's flow to a frontend before its policy lookup:
 *   pal_lb_svc      hash  lb_key (the frontend)            -> lb_service
 *   pal_lb_maglev   hash  __u32 id                         -> lb_maglev: slot -> backend index
 *   pal_lb_backends hash  lb_backend_key (id, index)       -> lb_backend
 *   pal_lb_revnat   hash  __u32 id                         -> lb_key (replies' source)
 *   pal_lb_flows    LRU   ct_key (the flow as the pod sent it, at from_pod) -> lb_flow
 * A new flow's backend is table[flow hash % table_size] (lib/jhash.h; with
 * LB_F_AFFINITY the source port is hashed as 0); the choice is kept in pal_lb_flows, and
 * the flow's conntrack entry records the id (rev_nat_index), so to_pod rewrites the
 * replies' source back to the frontend. Backend indexes are stable while a backend stays,
 * so a table and its backends can be replaced one entry at a time.
 */
#define LB_MAGLEV_MAX   16384 /* slots a table may have (the default size is 16381) */
#define LB_ID_MAX       65535 /* ct_entry.rev_nat_index is 16 bits */
#define LB_F_AFFINITY   0x01  /* sessionAffinity: ClientIP (its timeout: LB_AFFINITY_TIMEOUT_SHIFT) */
/* Hairpin: a flow whose backend is its own client leaves from_pod with this source
 * (IPv4 169.254.42.1, link-local; IPv6 100::a9fe:2a01, in the discard-only prefix 100::/64 of
 * RFC 6666: neither is routed off the node), so the pod's kernel accepts it; the pod's
 * replies to it are translated back in from_pod (docs/datapath.md §12). The IPv6 address is
 * four big-endian words: LB_HAIRPIN_V6_HIGH, 0, 0, LB_HAIRPIN_V4. */
#define LB_HAIRPIN_V4   0xa9fe2a01
#define LB_HAIRPIN_V6_HIGH 0x01000000

struct lb_key {
	__u8 addr[16];   /* network order; IPv4 in the first 4 bytes */
	__be16 port;
	__u8 protocol;
	__u8 family;     /* 4 or 6 */
};

struct lb_service {
	__u32 id;          /* the frontend id: tables, backends, reverse NAT */
	__u32 table_size;  /* slots used in its pal_lb_maglev table (<= LB_MAGLEV_MAX) */
	__u32 backends;    /* 0: no backend, new flows are dropped DROP_NO_SERVICE */
	__u32 flags;       /* LB_F_* */
};

struct lb_maglev {
	__u16 backend[LB_MAGLEV_MAX]; /* backend index of each slot */
};

struct lb_backend_key {
	__u32 id;
	__u32 index;
};

struct lb_backend {
	__u8 addr[16];
	__be16 port;
	__u16 pad;
};

struct lb_flow {
	__u8 addr[16];   /* the backend the flow was translated to */
	__be16 port;
	__u16 index;     /* its index: the choice stands while that index holds this backend */
	__u32 id;        /* the frontend */
};

/* ---- session affinity: LRU hash "pal_lb_affinity" ---------------------------------
 * A client's backend at a frontend with sessionAffinity: ClientIP (LB_F_AFFINITY): a new
 * flow of the client takes it while it was last taken less than the frontend's timeout ago
 * (lb_service.flags >> LB_AFFINITY_TIMEOUT_SHIFT, in seconds) and the frontend still has
 * that backend at that index, whatever its table says since; each new flow that takes it
 * starts the timeout again (kube-proxy's "recent" match). */
#define LB_AFFINITY_TIMEOUT_SHIFT 8

struct lb_affinity_key {
	__u8 addr[16];   /* the client, network order; IPv4 in the first 4 bytes */
	__u32 id;        /* the frontend */
};

struct lb_affinity {
	__u64 used_ns;   /* bpf_ktime_get_coarse_ns() when a new flow last took it */
	__u8 addr[16];   /* the backend */
	__be16 port;
	__u16 index;     /* its index at the frontend */
	__u32 pad;
};

/* ---- fragments: LRU hash "pal_frag" (v2) ------------------------------------------
 * The ports of a first fragment, keyed by the datagram (addresses, IP id, protocol), so
 * that later fragments, which carry no L4 header, are decided with the first one's ports.
 * IPv4 ids are 16 bits (stored in the low bits, network order); IPv6 ids 32 bits.
 */
#define FRAG_LIFETIME_S           30 /* a datagram's fragments arrive within this */

struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 id;
	__u8 protocol;
	__u8 family;
	__u8 direction;  /* DIRECTION_* of the hook */
	__u8 pad;
	__u32 ifindex;   /* host-side interface of the endpoint */
};

struct frag_ports {
	__u64 expires_ns;
	__be16 sport;
	__be16 dport;
	__u8 trackable;  /* the first fragment's tuple is tracked by conntrack */
	__u8 icmp_type;
	__u16 pad;
};

/* ---- verdict events: ring buffer "events" -------------------------------------
 * One event per new flow (allowed, redirected, audited or dropped), per TCP close and per
 * dropped repeat after EVENT_DROP_REPEAT_NS; never one per packet. A failed reserve is
 * counted in COUNTER_EVENTS_LOST.
 */
#define EVENT_VERDICT_FORWARDED  1 /* Hubble Verdict numbering */
#define EVENT_VERDICT_DROPPED    2
#define EVENT_VERDICT_AUDIT      4
#define EVENT_VERDICT_REDIRECTED 5

#define EVENT_KIND_NEW_FLOW      1
#define EVENT_KIND_CT_CLOSE      2 /* FIN or RST seen on a tracked flow */
#define EVENT_KIND_REVOKED       3 /* tracked flow dropped after a policy change */

#define EVENT_DROP_REPEAT_NS     1000000000ULL

struct verdict_event {
	__u64 time_ns;       /* bpf_ktime_get_ns(); user space maps it to wall time */
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 family;
	__u8 direction;      /* DIRECTION_* of the enforcing hook */
	__u8 verdict;        /* EVENT_VERDICT_* */
	__u8 kind;           /* EVENT_KIND_* */
	__u8 tcp_flags;      /* byte 13 of the TCP header, 0 otherwise */
	__u16 drop_reason;   /* DROP_*, 0 when forwarded */
	__u32 ifindex;
	__u32 src_identity;  /* 0 when not resolved */
	__u32 dst_identity;
	__u32 rule_id;       /* the deciding rule; RULE_ID_NONE for default deny */
	__u32 revision;      /* endpoint policy revision that decided */
	__be16 proxy_port;
	__u16 service;       /* the frontend id a translated flow was sent to, 0 = none */
	__u32 packet_len;
};

/* ---- counters: per-CPU array, index = direction * COUNTER_DIR_STRIDE + code --------
 * code is a DROP_* reason for drops, or one of the COUNTER_* slots below (< 128).
 */
#define COUNTER_DIR_STRIDE       256
#define COUNTER_MAX              512
#define COUNTER_FORWARDED        1  /* new flows forwarded by policy */
#define COUNTER_REDIRECTED       2
#define COUNTER_AUDIT            3
#define COUNTER_CT_ESTABLISHED   4  /* packets passed on a conntrack hit */
#define COUNTER_CT_REPLY         5
#define COUNTER_EVENTS_LOST      6  /* ring buffer full */
#define COUNTER_PASS_NON_IP      7  /* ARP and other non-IP frames */
#define COUNTER_PASS_NEIGHBOR    8  /* IPv6 neighbour discovery and MLD */
#define COUNTER_REVOKED          9  /* tracked flows cut by a policy change */
#define COUNTER_ICMP_RELATED     10 /* ICMP errors about a tracked flow */
#define COUNTER_LAST             10 /* = the last slot above; every drop code is above it */

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(sizeof(struct policy_key) == 16, "policy_key size");
_Static_assert(sizeof(struct proxy_state) == 8, "proxy_state size");
_Static_assert(sizeof(struct ct_key) == 44, "ct_key size");
_Static_assert(sizeof(struct ct_entry) == 56, "ct_entry size");
_Static_assert(sizeof(struct frag_key) == 44, "frag_key size");
_Static_assert(sizeof(struct frag_ports) == 16, "frag_ports size");
_Static_assert(sizeof(struct verdict_event) == 80, "verdict_event size");
_Static_assert(sizeof(struct counter_value) == 16, "counter_value size");
_Static_assert(sizeof(struct policy_value) == 12, "policy_value size");
_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key size");
_Static_assert(sizeof(struct ipcache_value) == 8, "ipcache_value size");
_Static_assert(sizeof(struct endpoint_info) == 36, "endpoint_info size");
_Static_assert(sizeof(struct local_key) == 20, "local_key size");
_Static_assert(sizeof(struct local_route) == 20, "local_route size");
_Static_assert(sizeof(struct lb_key) == 20, "lb_key size");
_Static_assert(sizeof(struct lb_service) == 16, "lb_service size");
_Static_assert(sizeof(struct lb_maglev) == 2 * LB_MAGLEV_MAX, "lb_maglev size");
_Static_assert(sizeof(struct lb_backend_key) == 8, "lb_backend_key size");
_Static_assert(sizeof(struct lb_backend) == 20, "lb_backend size");
_Static_assert(sizeof(struct lb_flow) == 24, "lb_flow size");
_Static_assert(sizeof(struct lb_affinity_key) == 20, "lb_affinity_key size");
_Static_assert(sizeof(struct lb_affinity) == 32, "lb_affinity size");

/* Counter index = direction * COUNTER_DIR_STRIDE + code: a code at or above the stride
 * would count in the other direction's slots, and a COUNTER_* slot must stay below every
 * drop code. */
#define PAL_CODE_FITS(code) ((code) > COUNTER_LAST && (code) < COUNTER_DIR_STRIDE)
_Static_assert(COUNTER_MAX == 2 * COUNTER_DIR_STRIDE, "one stride per direction");
_Static_assert(COUNTER_LAST == COUNTER_ICMP_RELATED, "COUNTER_LAST is the last slot");
_Static_assert(COUNTER_LAST < 128, "COUNTER_* slots stay below 128");
_Static_assert(PAL_CODE_FITS(DROP_INVALID_SOURCE_IP), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_POLICY_DENIED), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_INVALID_PACKET), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_UNKNOWN_L4), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_MISSED_TAIL_CALL), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_CT_INSERT_FAILED), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_FRAG_NOT_SUPPORTED), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_NO_SERVICE), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_INVALID_IDENTITY), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_FRAG_NOT_FOUND), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_FORBIDDEN_ICMP6), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_PROXY_UNAVAILABLE), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_POLICY_DENY), "drop code aliases a counter slot");
_Static_assert(PAL_CODE_FITS(DROP_EP_NOT_READY), "drop code aliases a counter slot");

#endif /* PALISADE_ABI_H */
