/* SPDX-License-Identifier: Apache-2.0 */
/* Conntrack: one entry per (flow, endpoint), keyed by the flow's canonical tuple plus the
 * endpoint's host-side ifindex (palisade_abi.h, docs/datapath.md §4), so a packet and its
 * reply find the entry with one lookup. Owns pal_ct: lookups, lifetimes, the revision
 * re-check after a policy change, and the entry a new admitted flow creates. */
#ifndef PALISADE_CT_H
#define PALISADE_CT_H

#include "common.h"
#include "identity.h"
#include "parse.h"
#include "policy.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ct SEC(".maps");

/* Whether (a, ap) sorts after (b, bp): addresses as bytes (big-endian words), then ports
 * in network order. */
static __always_inline int ct_side_after(const __u8 *a, __be16 ap, const __u8 *b, __be16 bp)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	a0 = __builtin_bswap64(a0);
	b0 = __builtin_bswap64(b0);
	if (a0 != b0)
		return a0 > b0;
	a1 = __builtin_bswap64(a1);
	b1 = __builtin_bswap64(b1);
	if (a1 != b1)
		return a1 > b1;
	return bpf_ntohs(ap) > bpf_ntohs(bp);
}

/* The canonical key of a tuple seen at hook `dir` (palisade_abi.h): the lower side first,
 * direction = dir XOR swapped. A packet and its reply at the other hook make the same key. */
static __always_inline void ct_key_tuple(struct ct_key *k, const __u8 *saddr,
					 const __u8 *daddr, __be16 sport, __be16 dport,
					 __u8 protocol, __u8 family, __u8 dir, __u32 ifindex)
{
	__u8 swap = ct_side_after(saddr, sport, daddr, dport);

	if (swap) {
		__builtin_memcpy(k->saddr, daddr, 16);
		__builtin_memcpy(k->daddr, saddr, 16);
		k->sport = dport;
		k->dport = sport;
	} else {
		__builtin_memcpy(k->saddr, saddr, 16);
		__builtin_memcpy(k->daddr, daddr, 16);
		k->sport = sport;
		k->dport = dport;
	}
	k->protocol = protocol;
	k->family = family;
	k->direction = dir ^ swap;
	k->ifindex = ifindex;
}

/* The key of a packet at a hook. */
static __always_inline void ct_key_of(struct ct_key *k, const struct pkt *p, __u8 dir,
				      __u32 ifindex)
{
	ct_key_tuple(k, p->saddr, p->daddr, p->sport, p->dport, p->protocol, p->family, dir,
		     ifindex);
}

/* The hook that opened the flow of `ct` (DIRECTION_*): a packet there continues the flow,
 * a packet at the other hook replies to it. */
static __always_inline __u8 ct_opener(const struct ct_entry *ct)
{
	return ct->flags & CT_F_OPENED_INGRESS ? DIRECTION_INGRESS : DIRECTION_EGRESS;
}

/* A live entry under `k`, or NULL (an expired entry is treated as absent). */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k, __u64 now)
{
	struct ct_entry *ct = bpf_map_lookup_elem(&pal_ct, k);

	if (ct && ct->expires_ns > now)
		return ct;
	return NULL;
}

/* How long an entry lives after this packet. A TCP flow is established only once a reply
 * passed (CT_F_REPLY_SEEN): until then it keeps the short opening lifetime, so openers
 * that are never answered (a scan of allowed ports, a flood of mid-stream ACKs) cannot
 * hold conntrack entries for hours and evict other pods' live flows. */
static __always_inline __u64 ct_lifetime_ns(const struct pkt *p, __u8 ct_flags)
{
	if (p->protocol != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP_S * NSEC_PER_SEC;
	if (ct_flags & (CT_F_SEEN_FIN | CT_F_SEEN_RST))
		return CT_LIFETIME_TCP_CLOSE_S * NSEC_PER_SEC;
	if (!(ct_flags & CT_F_REPLY_SEEN))
		return CT_LIFETIME_TCP_SYN_S * NSEC_PER_SEC;
	return CT_LIFETIME_TCP_S * NSEC_PER_SEC;
}

/* Refresh a tracked flow on a packet; returns 1 when this packet closed it. */
static __always_inline int ct_refresh(struct ct_entry *ct, const struct pkt *p, __u64 now)
{
	__u8 before = ct->flags;

	if (p->protocol == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FLAG_RST)
			ct->flags |= CT_F_SEEN_RST;
		if (p->tcp_flags & TCP_FLAG_FIN)
			ct->flags |= CT_F_SEEN_FIN;
	}
	/* The deadline is written at most once a second (or when it shrinks on close): a
	 * store to the shared entry per packet costs more than the precision is worth. The
	 * per-entry packet and byte counts are approximate under concurrency; the per-CPU
	 * counters are exact. */
	__u64 deadline = now + ct_lifetime_ns(p, ct->flags);
	if (deadline < ct->expires_ns || deadline - ct->expires_ns > NSEC_PER_SEC)
		ct->expires_ns = deadline;
	ct->packets += 1;
	ct->bytes += p->len;
	return !(before & (CT_F_SEEN_FIN | CT_F_SEEN_RST)) &&
	       (ct->flags & (CT_F_SEEN_FIN | CT_F_SEEN_RST));
}

/* A tracked flow admitted under an older policy revision is decided once more against
 * the current maps. Returns 1 when the flow is revoked: its entry is removed and `d`
 * holds the drop. */
static __always_inline int ct_recheck(struct ct_entry *ct, const struct ct_key *key,
				      const struct endpoint_info *ep, const __u8 *peer_addr,
				      __u8 dir, const struct pkt *p, __be16 port,
				      struct decision *d)
{
	if (ct->revision == ep->revision)
		return 0;
	__u32 peer = ipcache_identity(peer_addr, p->family);
	/* A hairpin flow's peer is the endpoint itself (its other side has the hairpin source,
	 * which no ipcache entry maps). */
	if (ct->flags & CT_F_HAIRPIN) {
		/* The family's hairpin source (lib/lb.h), compared on all 16 bytes (an IPv4
		 * address is zero after its first 4). */
		__u64 h[2] = {}, a[2];
		if (p->family == 4) {
			h[0] = bpf_htonl(LB_HAIRPIN_V4);
		} else {
			h[0] = bpf_htonl(LB_HAIRPIN_V6_HIGH);
			h[1] = (__u64)bpf_htonl(LB_HAIRPIN_V4) << 32;
		}
		__builtin_memcpy(a, peer_addr, 16);
		if (((a[0] ^ h[0]) | (a[1] ^ h[1])) == 0)
			peer = ep->identity;
	}
	/* Decided with the mark the flow was opened with: a proxy upstream keeps its standing. */
	__u32 mark = ct->flags & CT_F_PROXY_UPSTREAM ? PROXY_MARK_UPSTREAM : 0;
	*d = policy_decide(ep->policy_slot, peer, dir, p->protocol, policy_port(p, port), mark);
	if (peer == IDENTITY_UNKNOWN || d->drop_reason) {
		if (!d->drop_reason)
			d->drop_reason = DROP_INVALID_IDENTITY;
		d->verdict = EVENT_VERDICT_DROPPED;
		bpf_map_delete_elem(&pal_ct, key);
		return 1;
	}
	ct->revision = ep->revision;
	ct->rule_id = d->rule_id;
	return 0;
}

/* Whether an ICMP error (p->icmp_error) is about a flow tracked at this endpoint. The
 * quoted packet was sent by the endpoint when the error arrives at to_pod, and to it when
 * the endpoint sends the error (from_pod): its endpoint-side address must be the outer
 * packet's endpoint-side address, and it passed the other hook, as quoted. Its canonical
 * key at that hook finds the flow whichever side opened it. The entry must be live and
 * decided under the endpoint's current revision; after a policy change the error is
 * decided by policy until the flow's next packet re-checks it. `k` is scratch space.
 * Nothing is created or refreshed. */
static __always_inline int ct_related(struct ct_key *k, const struct pkt *p, __u8 dir,
				      __u32 ifindex, __u32 revision, __u64 now)
{
	const __u8 *ep_outer = dir == DIRECTION_EGRESS ? p->saddr : p->daddr;
	const __u8 *ep_inner = dir == DIRECTION_EGRESS ? p->inner_daddr : p->inner_saddr;
	__u32 n = p->family == 4 ? 4 : 16;

	if (!p->icmp_error)
		return 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		if (i < n && ep_outer[i] != ep_inner[i])
			return 0;
	ct_key_tuple(k, p->inner_saddr, p->inner_daddr, p->inner_sport, p->inner_dport,
		     p->inner_protocol, p->family,
		     dir == DIRECTION_EGRESS ? DIRECTION_INGRESS : DIRECTION_EGRESS, ifindex);
	struct ct_entry *ct = ct_lookup(k, now);
	return ct && ct->revision == revision;
}

/* The decision reported when a tracked flow closes. */
static __always_inline struct decision ct_closed(const struct ct_entry *ct)
{
	struct decision d = {};

	d.verdict = EVENT_VERDICT_FORWARDED;
	d.rule_id = ct->rule_id;
	d.proxy_port = ct->proxy_port;
	return d;
}

/* Whether an admitted new flow creates an entry: openers and mid-stream packets the
 * policy admits; a bare RST is forwarded without creating state. */
static __always_inline int ct_should_track(const struct pkt *p)
{
	return p->trackable && !(p->protocol == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_RST));
}

/* Tracks an admitted new flow under `k`. Returns non-zero when the insert failed: the
 * caller drops (DROP_CT_INSERT_FAILED), since a flow that cannot be tracked would lose its
 * replies. */
static __always_inline int ct_create(const struct ct_key *k, const struct pkt *p, __u8 dir,
				     const struct decision *d, __u32 revision,
				     __u32 src_identity, __u32 dst_identity, __u64 now,
				     __u8 flags, __u16 service, __u32 ep_gen)
{
	struct ct_entry e = {};

	e.ep_gen = ep_gen;
	e.flags = flags;
	if (dir == DIRECTION_INGRESS)
		e.flags |= CT_F_OPENED_INGRESS;
	if (d->verdict == EVENT_VERDICT_REDIRECTED)
		e.flags |= CT_F_PROXY;
	e.rule_id = d->rule_id;
	e.revision = revision;
	e.src_identity = src_identity;
	e.dst_identity = dst_identity;
	e.proxy_port = d->proxy_port;
	e.rev_nat_index = service;
	e.service_id = service;
	e.packets = 1;
	e.bytes = p->len;
	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & TCP_FLAG_FIN))
		e.flags |= CT_F_SEEN_FIN;
	e.expires_ns = now + ct_lifetime_ns(p, e.flags);
	return bpf_map_update_elem(&pal_ct, k, &e, BPF_ANY);
}

/* to_pod, a new flow: the frontend of the uplink's entry for this tuple, when the packet
 * entered the node by an uplink that translated it (from_uplink), else 0. The entry is
 * under the interface the packet came in by, so no other flow can name it. */
static __always_inline __u16 ct_uplink_service(const struct pkt *p, __u32 in_ifindex, __u64 now)
{
	struct ct_key k = {};

	if (!in_ifindex)
		return 0;
	ct_key_of(&k, p, DIRECTION_INGRESS, in_ifindex);
	struct ct_entry *e = ct_lookup(&k, now);
	if (!e || !(e->flags & CT_F_UPLINK))
		return 0;
	return e->rev_nat_index;
}

#endif
