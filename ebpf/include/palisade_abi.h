/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Palisade datapath ABI: the layout of every map shared between the C datapath and the
 * Rust control plane. This header is the source of truth. The Rust mirror lives in
 * policy-compiler/src/abi.rs and asserts the same sizes and offsets at compile time.
 *
 * Codes (verdicts, drop reasons, reserved identities, rule ids) are append-only:
 * never renumber a value that has shipped.
 *
 * Policy lookup order (also in docs/datapath.md):
 *   1. endpoint_info for the hook's endpoint; missing or not READY -> DROP_EP_NOT_READY.
 *   2. peer identity = ipcache LPM on the peer address (longest prefix wins);
 *      a miss or identity 0 -> DROP_INVALID_IDENTITY.
 *   3. two LPM lookups in the endpoint's policy map, same direction/protocol/port:
 *        exact = {identity = peer}, any = {identity = 0}.
 *      Inside one lookup the longest (protocol, port-prefix) match wins; the compiler has
 *      already folded every broader entry of that slot into each narrower one.
 *   4. winner = the smaller of the hits under (precedence asc, verdict rank desc
 *      [DENY > REDIRECT > ALLOW], rule_id asc).
 *   5. no hit -> DROP_POLICY_DENIED (default deny: the direction is isolated);
 *      DENY -> DROP_POLICY_DENY unless POLICY_F_AUDIT (then forward, verdict AUDIT);
 *      REDIRECT -> to the L7 proxy on proxy_port; ALLOW -> forward.
 */
#ifndef PALISADE_ABI_H
#define PALISADE_ABI_H

#include <linux/types.h>

#define PALISADE_ABI_VERSION 1

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

/* ---- rule ids ------------------------------------------------------------------ */
#define RULE_ID_NONE            0 /* no rule: default deny */
#define RULE_ID_NOT_ISOLATED    1 /* allow-all of a direction no policy isolates */
#define RULE_ID_FIRST_POLICY    16

/* ---- verdicts in policy values --------------------------------------------------- */
#define POLICY_VERDICT_ALLOW    1
#define POLICY_VERDICT_DENY     2
#define POLICY_VERDICT_REDIRECT 3 /* to the L7 proxy listening on proxy_port */

#define POLICY_F_AUDIT          0x01 /* deny is logged as AUDIT and forwarded */

/* precedence tiers: lower wins before verdict rank is compared */
#define PRECEDENCE_ADMIN_MIN    0    /* AdminNetworkPolicy priorities 0..999 */
#define PRECEDENCE_NETWORK_POLICY 1000
#define PRECEDENCE_BASELINE     2000

#define DIRECTION_INGRESS       0 /* traffic to the endpoint */
#define DIRECTION_EGRESS        1 /* traffic from the endpoint */

/* ---- drop reasons (Hubble DropReason numbering) ------------------------------- */
#define DROP_POLICY_DENIED        133 /* default deny: no rule allows */
#define DROP_UNKNOWN_L4           142
#define DROP_CT_INSERT_FAILED     155
#define DROP_INVALID_IDENTITY     171
#define DROP_POLICY_DENY          181 /* an explicit deny rule */
#define DROP_EP_NOT_READY         204 /* no policy written for the endpoint yet */

/* ---- policy map: one LPM trie per endpoint policy --------------------------------
 * prefixlen counts bits after the prefixlen field:
 *   40 = identity + direction (any protocol, any port)
 *   48 = + protocol (any port)
 *   48 + n = + the top n bits of dport (n = 16: exact port)
 * Port ranges are stored as their aligned prefix decomposition.
 */
#define POLICY_PREFIX_ANY_PROTO 40
#define POLICY_PREFIX_ANY_PORT  48
#define POLICY_PREFIX_FULL      64

struct policy_key {
	__u32 prefixlen;
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

struct endpoint_info {
	__u32 identity;
	__u32 policy_slot; /* index in the outer policy map */
	__u32 flags;       /* ENDPOINT_F_* */
	__u32 revision;    /* policy revision realized in the maps */
};

_Static_assert(sizeof(struct policy_key) == 12, "policy_key size");
_Static_assert(sizeof(struct policy_value) == 12, "policy_value size");
_Static_assert(sizeof(struct ipcache_key) == 24, "ipcache_key size");
_Static_assert(sizeof(struct ipcache_value) == 8, "ipcache_value size");
_Static_assert(sizeof(struct endpoint_info) == 16, "endpoint_info size");

#endif /* PALISADE_ABI_H */
