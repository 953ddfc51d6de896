/* SPDX-License-Identifier: Apache-2.0 */
/* Service translation (docs/services.md, docs/datapath.md §12): a pod's TCP/UDP flow to a
 * service frontend is sent to one of its backends before the policy lookup, so egress
 * policy is decided on the backend; its replies get the frontend back as their source.
 * Owns pal_lb_svc, pal_lb_maglev, pal_lb_backends, pal_lb_revnat, pal_lb_flows and
 * pal_lb_affinity (layouts in palisade_abi.h). */
#ifndef PALISADE_LB_H
#define PALISADE_LB_H

#include "common.h"
#include "parse.h"
#include "csum.h"
#include "jhash.h"
#include "ct.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_key);
	__type(value, struct lb_service);
	__uint(max_entries, LB_ID_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_lb_svc SEC(".maps");

/* 32 KiB per frontend, allocated as frontends are written (not preallocated). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_maglev);
	__uint(max_entries, LB_ID_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_lb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_backend_key);
	__type(value, struct lb_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_key);
	__uint(max_entries, LB_ID_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct lb_flow);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_lb_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_lb_affinity SEC(".maps");

#define LB_NONE 0       /* not a service frontend: nothing translated */
#define LB_TRANSLATED 1 /* the packet now goes to a backend */
#define LB_NO_BACKEND -1
#define LB_REWRITE_FAILED -2

/* Rewrites the packet's destination (dst = 1) or source to addr:port and updates `p`. */
static __always_inline int lb_rewrite(struct __sk_buff *skb, struct pkt *p, int dst,
				      const __u8 *addr, __be16 port)
{
	__u8 *paddr = dst ? p->daddr : p->saddr;
	__be16 *pport = dst ? &p->dport : &p->sport;

	if (p->family == 4) {
		__be32 a;
		__builtin_memcpy(&a, addr, 4);
		if (csum_set_addr4(skb, p, dst, a))
			return -1;
	} else if (csum_set_addr6(skb, p, dst, addr)) {
		return -1;
	}
	__builtin_memcpy(paddr, addr, 16);
	if (*pport != port) {
		/* SCTP's CRC32c covers its ports (not the addresses): the planner writes SCTP
		 * frontends only for backends on the frontend's port, and a port rewrite here
		 * would leave the packet with a wrong checksum. */
		if (p->protocol == IPPROTO_SCTP)
			return -1;
		/* A later fragment has no L4 header: only its addresses change. */
		if (p->frag != FRAG_LATER && csum_set_port(skb, p, dst, port))
			return -1;
		*pport = port;
	}
	return 0;
}

/* The frontend a packet is addressed to (pal_lb_svc), copied to *s: 1, or 0 when its
 * destination is no frontend. */
static __always_inline int lb_frontend(const struct pkt *p, struct lb_service *s)
{
	struct lb_key key = {};

	if (p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP &&
	    p->protocol != IPPROTO_SCTP)
		return 0;
	__builtin_memcpy(key.addr, p->daddr, 16);
	key.port = p->dport;
	key.protocol = p->protocol;
	key.family = p->family;
	struct lb_service *svc = bpf_map_lookup_elem(&pal_lb_svc, &key);
	if (!svc)
		return 0;
	*s = *svc;
	return 1;
}

/* The backend the flow under `fkey` (the tuple as the pod sent it, at from_pod) was given
 * at frontend `s`, while the frontend still has that backend at that index: 1 with *to, else
 * 0 (a new flow, or one whose backend left). */
static __always_inline int lb_flow_backend(const struct ct_key *fkey, const struct lb_service *s,
					   struct lb_flow *to)
{
	struct lb_flow *fl = bpf_map_lookup_elem(&pal_lb_flows, fkey);

	if (!fl || fl->id != s->id)
		return 0;
	*to = *fl;
	struct lb_backend_key bkey = { .id = s->id, .index = to->index };
	struct lb_backend *b = bpf_map_lookup_elem(&pal_lb_backends, &bkey);
	return b && b->port == to->port && __builtin_memcmp(b->addr, to->addr, 16) == 0;
}

/* from_pod, before conntrack (step 3b): a TCP/UDP packet to a frontend goes to the backend its flow
 * was given (pal_lb_flows), or, for a new flow, to table[hash % size]. The choice stands
 * while the frontend keeps that backend at that index; otherwise the flow is given a live
 * one (a TCP peer then resets it). Returns LB_NONE, LB_TRANSLATED (with *id the frontend),
 * or an error: LB_NO_BACKEND (the frontend has none) or LB_REWRITE_FAILED. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct pkt *p, __u32 ifindex,
					__u32 *id)
{
	struct lb_service s = {};
	struct ct_key fkey = {};

	if (!lb_frontend(p, &s))
		return LB_NONE;
	*id = s.id;
	if (s.backends == 0 || s.table_size == 0 || s.table_size > LB_MAGLEV_MAX)
		return LB_NO_BACKEND;

	ct_key_of(&fkey, p, DIRECTION_EGRESS, ifindex);
	struct lb_backend_key bkey = { .id = s.id };
	struct lb_flow to = {};
	if (!lb_flow_backend(&fkey, &s, &to))
		to.id = 0;
	/* Session affinity: the client's backend at this frontend, while its timeout runs and
	 * the frontend still has it (pal_lb_affinity). */
	struct lb_affinity_key akey = { .id = s.id };
	__u64 now = bpf_ktime_get_coarse_ns();
	if (to.id == 0 && (s.flags & LB_F_AFFINITY)) {
		__builtin_memcpy(akey.addr, p->saddr, 16);
		struct lb_affinity *a = bpf_map_lookup_elem(&pal_lb_affinity, &akey);
		__u64 timeout = (__u64)(s.flags >> LB_AFFINITY_TIMEOUT_SHIFT) * NSEC_PER_SEC;
		if (a && now - a->used_ns < timeout) {
			bkey.index = a->index;
			struct lb_backend *b = bpf_map_lookup_elem(&pal_lb_backends, &bkey);
			if (b && b->port == a->port && __builtin_memcmp(b->addr, a->addr, 16) == 0) {
				__builtin_memcpy(to.addr, a->addr, 16);
				to.port = a->port;
				to.index = a->index;
				to.id = s.id;
				a->used_ns = now;
				bpf_map_update_elem(&pal_lb_flows, &fkey, &to, BPF_ANY);
			}
		}
	}
	if (to.id == 0) {
		/* A new flow (or one whose backend left): pick from the table. */
		struct lb_maglev *t = bpf_map_lookup_elem(&pal_lb_maglev, &s.id);
		if (!t)
			return LB_NO_BACKEND;
		__be16 sport = p->sport;
		if (s.flags & LB_F_AFFINITY)
			p->sport = 0;
		__u32 slot = pal_flow_hash(p) % s.table_size;
		p->sport = sport;
		if (slot >= LB_MAGLEV_MAX)
			return LB_NO_BACKEND;
		bkey.index = t->backend[slot];
		struct lb_backend *b = bpf_map_lookup_elem(&pal_lb_backends, &bkey);
		if (!b)
			return LB_NO_BACKEND;
		__builtin_memcpy(to.addr, b->addr, 16);
		to.port = b->port;
		to.index = bkey.index;
		to.id = s.id;
		/* A failed insert costs only stickiness: the next packet picks the same slot
		 * while the table stays. */
		bpf_map_update_elem(&pal_lb_flows, &fkey, &to, BPF_ANY);
		if (s.flags & LB_F_AFFINITY) {
			struct lb_affinity na = { .used_ns = now, .port = to.port,
						  .index = to.index };
			__builtin_memcpy(na.addr, to.addr, 16);
			__builtin_memcpy(akey.addr, p->saddr, 16);
			bpf_map_update_elem(&pal_lb_affinity, &akey, &na, BPF_ANY);
		}
	}
	return lb_rewrite(skb, p, 1, to.addr, to.port) ? LB_REWRITE_FAILED : LB_TRANSLATED;
}

/* The hairpin source of a family (palisade_abi.h), 16 bytes (IPv4 in the first 4). */
static __always_inline void lb_hairpin_addr(__u8 family, __u8 *out)
{
	__be32 w[4] = {};

	if (family == 4) {
		w[0] = bpf_htonl(LB_HAIRPIN_V4);
	} else {
		w[0] = bpf_htonl(LB_HAIRPIN_V6_HIGH);
		w[3] = bpf_htonl(LB_HAIRPIN_V4);
	}
	__builtin_memcpy(out, w, 16);
}

/* Whether two 16-byte addresses are equal (an IPv4 address fills the first 4 bytes of
 * its 16, the rest zero: the comparison serves both families). */
static __always_inline int lb_addr_eq(const __u8 *x, const __u8 *y)
{
	__u64 a[2], b[2];

	__builtin_memcpy(a, x, 16);
	__builtin_memcpy(b, y, 16);
	return ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0;
}

/* Whether the packet's two addresses are equal. */
static __always_inline int lb_same_addrs(const struct pkt *p)
{
	return lb_addr_eq(p->saddr, p->daddr);
}

/* Hairpin: after translation the backend is the client itself. Its kernel would drop a
 * packet from its own address, so the flow's source becomes the family's hairpin source;
 * returns 1 when it did, 0 when this is not a hairpin flow, -1 when the rewrite failed. */
static __always_inline int lb_hairpin_source(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[16];

	if (!lb_same_addrs(p))
		return 0;
	lb_hairpin_addr(p->family, h);
	if (p->family == 4) {
		__be32 a;
		__builtin_memcpy(&a, h, 4);
		if (csum_set_addr4(skb, p, 0, a))
			return -1;
	} else if (csum_set_addr6(skb, p, 0, h)) {
		return -1;
	}
	__builtin_memcpy(p->saddr, h, 16);
	return 1;
}

/* A frame sent back out of the interface it came in on (hairpin): its Ethernet addresses
 * are swapped, so the pod sees it addressed to itself (not PACKET_OTHERHOST) and it
 * redirects it there. Returns the redirect verdict, or TCX_DROP if the frame cannot be
 * rewritten. */
static __always_inline int lb_send_back(struct __sk_buff *skb, __u32 ifindex)
{
	__u8 mac[12];
	__u8 swapped[12];

	if (bpf_skb_load_bytes(skb, 0, mac, 12))
		return TCX_DROP;
	__builtin_memcpy(swapped, mac + 6, 6);
	__builtin_memcpy(swapped + 6, mac, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, 12, 0))
		return TCX_DROP;
	return bpf_redirect(ifindex, 0);
}

/* A TCP SYN (without payload) to a frontend without backends is answered with a reset, as
 * kube-proxy's reject rule answers it, so the client fails at once instead of retrying into
 * a blackhole: the SYN itself becomes the RST|ACK (addresses and ports swapped, which leaves
 * every checksum's sum unchanged; seq 0, ack the SYN's seq + 1, flags), to be sent back
 * with lb_send_back. Returns 0 when the packet was turned into the reset, -1 otherwise (the
 * caller drops it). */
static __always_inline int lb_reject_syn(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 hdr[16];
	__u8 addrs[32];

	if (p->protocol != IPPROTO_TCP || p->frag != FRAG_NONE ||
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) != TCP_FLAG_SYN)
		return -1;
	if (bpf_skb_load_bytes(skb, p->l4_off, hdr, 16))
		return -1;
	__u32 doff = (__u32)(hdr[12] >> 4) * 4;
	if (doff < 20 || skb->len != (__u32)p->l4_off + doff)
		return -1; /* a SYN carrying data: dropped, not answered */
	/* Addresses, then ports, swapped. */
	__u32 aoff = p->l3_off + (p->family == 4 ? IPV4_SADDR_OFF : IPV6_SADDR_OFF);
	if (p->family == 4) {
		if (bpf_skb_load_bytes(skb, aoff, addrs, 8))
			return -1;
		__u8 sw[8];
		__builtin_memcpy(sw, addrs + 4, 4);
		__builtin_memcpy(sw + 4, addrs, 4);
		if (bpf_skb_store_bytes(skb, aoff, sw, 8, 0))
			return -1;
	} else {
		if (bpf_skb_load_bytes(skb, aoff, addrs, 32))
			return -1;
		__u8 sw[32];
		__builtin_memcpy(sw, addrs + 16, 16);
		__builtin_memcpy(sw + 16, addrs, 16);
		if (bpf_skb_store_bytes(skb, aoff, sw, 32, 0))
			return -1;
	}
	__u8 ports[4] = { hdr[2], hdr[3], hdr[0], hdr[1] };
	if (bpf_skb_store_bytes(skb, p->l4_off, ports, 4, 0))
		return -1;
	/* seq 0, ack = seq + 1, flags RST|ACK; the checksum follows each word. */
	__be32 seq, ack_old, zero = 0;
	__builtin_memcpy(&seq, hdr + 4, 4);
	__builtin_memcpy(&ack_old, hdr + 8, 4);
	__be32 ack = bpf_htonl(bpf_ntohl(seq) + 1);
	__be16 fl_old, fl_new;
	__builtin_memcpy(&fl_old, hdr + 12, 2);
	__u8 fl[2] = { hdr[12], TCP_FLAG_RST | TCP_FLAG_ACK };
	__builtin_memcpy(&fl_new, fl, 2);
	__u32 csum = p->l4_off + 16;
	if (bpf_l4_csum_replace(skb, csum, seq, zero, 4) ||
	    bpf_l4_csum_replace(skb, csum, ack_old, ack, 4) ||
	    bpf_l4_csum_replace(skb, csum, fl_old, fl_new, 2))
		return -1;
	__u8 words[10];
	__builtin_memcpy(words, &zero, 4);
	__builtin_memcpy(words + 4, &ack, 4);
	__builtin_memcpy(words + 8, fl, 2);
	if (bpf_skb_store_bytes(skb, p->l4_off + 4, words, 10, 0))
		return -1;
	return 0;
}

/* The one's complement checksum of a bpf_csum_diff sum, ready to store as it is. */
static __always_inline __u16 lb_csum_fold(__s64 sum)
{
	__u32 x = (__u32)sum;

	x = (x & 0xffff) + (x >> 16);
	x = (x & 0xffff) + (x >> 16);
	return (__u16)~x;
}

/* A UDP datagram (not a fragment) to a frontend without backends is answered with an ICMP
 * port unreachable (ICMPv6 destination unreachable, port unreachable), as kube-proxy's
 * reject rule answers it, so the client's socket learns at once (ECONNREFUSED): the frame
 * becomes the error, from the frontend to the client, quoting the datagram's first bytes
 * (IPv4: its header, without options, and 8 bytes; IPv6: its first 48 bytes), to be sent
 * back with lb_send_back. Written in place, piece by piece (the caller's stack is nearly
 * full). Returns 0, or -1 (the caller drops). */
static __always_inline int lb_reject_udp(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 quote[48];
	__u8 head[20];
	__u8 icmp[8] = {};
	__u32 l3 = p->l3_off;

	if (p->protocol != IPPROTO_UDP || p->frag != FRAG_NONE)
		return -1;
	if (p->family == 4) {
		if (bpf_skb_load_bytes(skb, l3, quote, 28))
			return -1;
		if (quote[0] != 0x45)
			return -1; /* IPv4 options: dropped, not answered */
		__builtin_memset(head, 0, sizeof(head));
		head[0] = 0x45;
		head[3] = 20 + 8 + 28;
		head[8] = 64;
		head[9] = IPPROTO_ICMP;
		__builtin_memcpy(head + 12, quote + 16, 4); /* from the frontend */
		__builtin_memcpy(head + 16, quote + 12, 4); /* to the client */
		__u16 c = lb_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)head, 20, 0));
		__builtin_memcpy(head + 10, &c, 2);
		icmp[0] = ICMP_DEST_UNREACH;
		icmp[1] = 3; /* port unreachable */
		__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)quote, 28, 0);
		c = lb_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)icmp, 8, (__u32)sum));
		__builtin_memcpy(icmp + 2, &c, 2);
		if (bpf_skb_change_tail(skb, l3 + 20 + 8 + 28, 0) ||
		    bpf_skb_store_bytes(skb, l3 + 28, quote, 28, 0) ||
		    bpf_skb_store_bytes(skb, l3 + 20, icmp, 8, 0) ||
		    bpf_skb_store_bytes(skb, l3, head, 20, 0))
			return -1;
		return 0;
	}
	if (bpf_skb_load_bytes(skb, l3, quote, 48))
		return -1;
	/* The checksum's pseudo-header: the two addresses (the quote's, swapped: the same
	 * sum), the ICMPv6 length and next header. */
	__be32 lens[2] = { bpf_htonl(8 + 48), bpf_htonl(IPPROTO_ICMPV6_) };
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)(quote + 8), 32, 0);
	sum = bpf_csum_diff(NULL, 0, lens, sizeof(lens), (__u32)sum);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)quote, 48, (__u32)sum);
	icmp[0] = ICMPV6_DEST_UNREACH_;
	icmp[1] = 4; /* port unreachable */
	__u16 c = lb_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)icmp, 8, (__u32)sum));
	__builtin_memcpy(icmp + 2, &c, 2);
	__builtin_memset(head, 0, 8);
	head[0] = 0x60;
	head[5] = 8 + 48; /* payload length */
	head[6] = IPPROTO_ICMPV6_;
	head[7] = 64;
	if (bpf_skb_change_tail(skb, l3 + 40 + 8 + 48, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 48, quote, 48, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 40, icmp, 8, 0) ||
	    bpf_skb_store_bytes(skb, l3, head, 8, 0) ||
	    bpf_skb_store_bytes(skb, l3 + 8, quote + 24, 16, 0) || /* from the frontend */
	    bpf_skb_store_bytes(skb, l3 + 24, quote + 8, 16, 0))   /* to the client */
		return -1;
	return 0;
}

/* Whether `a` is the hairpin source of the packet's family. */
static __always_inline int lb_is_hairpin_addr(const struct pkt *p, const __u8 *a)
{
	__u8 h[16];

	lb_hairpin_addr(p->family, h);
	return lb_addr_eq(a, h);
}

/* from_pod, a pod's reply on a hairpin flow (its destination is the hairpin source): the
 * source becomes the frontend and the destination the pod's own address, as the pod's
 * client side expects. Returns 0 or -1 (frontend gone, rewrite failed). */
static __always_inline int lb_hairpin_reply(struct __sk_buff *skb, struct pkt *p, __u32 id,
					    const struct endpoint_info *ep)
{
	struct lb_key *fe = bpf_map_lookup_elem(&pal_lb_revnat, &id);

	if (!fe || fe->family != p->family)
		return -1;
	struct lb_key k = *fe;
	if (p->family == 4) {
		__be32 own;
		__builtin_memcpy(&own, ep->ipv4, 4);
		if (csum_set_addr4(skb, p, 1, own))
			return -1;
		__builtin_memcpy(p->daddr, &own, 4);
	} else {
		if (csum_set_addr6(skb, p, 1, ep->ipv6))
			return -1;
		__builtin_memcpy(p->daddr, ep->ipv6, 16);
	}
	return lb_rewrite(skb, p, 0, k.addr, k.port);
}

/* to_pod, a reply on a translated flow (conntrack entry with rev_nat_index): its source
 * becomes the frontend the pod connected to. Returns 0, or -1 when the frontend is gone
 * (or the rewrite failed): the caller drops, since the pod would not recognise the reply. */
static __always_inline int lb_reverse(struct __sk_buff *skb, struct pkt *p, __u32 id)
{
	struct lb_key *fe = bpf_map_lookup_elem(&pal_lb_revnat, &id);

	if (!fe || fe->family != p->family)
		return -1;
	struct lb_key k = *fe;
	return lb_rewrite(skb, p, 0, k.addr, k.port);
}

#endif
