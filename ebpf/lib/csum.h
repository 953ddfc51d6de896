/* SPDX-License-Identifier: Apache-2.0 */
/* Incremental checksum updates for rewrites (service NAT, proxy redirect): an address or
 * port changed in place keeps the IPv4 header checksum and the TCP/UDP checksum (whose
 * pseudo-header covers the addresses) valid. Offsets come from the parsed packet
 * (struct pkt l3_off / l4_off). ebpf/tests/csum_test.c exercises every helper under
 * BPF_PROG_TEST_RUN (enforcer/tests/csum.rs). */
#ifndef PALISADE_CSUM_H
#define PALISADE_CSUM_H

#include "common.h"
#include "parse.h"

#define IPV4_CSUM_OFF 10 /* within the IPv4 header */
#define IPV4_SADDR_OFF 12
#define IPV4_DADDR_OFF 16
#define IPV6_SADDR_OFF 8
#define IPV6_DADDR_OFF 24

/* Offset of the L4 checksum within the L4 header; -1 for protocols without one we keep. */
static __always_inline int csum_l4_field(__u8 protocol)
{
	switch (protocol) {
	case IPPROTO_TCP:
		return 16;
	case IPPROTO_UDP:
		return 6;
	case IPPROTO_ICMPV6_:
		return 2; /* ICMPv6 covers the pseudo-header too */
	default:
		return -1;
	}
}

/* The L4 checksum flags for an update in `p`. An IPv4 UDP checksum of 0 means "none" and
 * must stay 0 (BPF_F_MARK_MANGLED_0). */
static __always_inline __u64 csum_l4_flags(const struct pkt *p)
{
	return p->family == 4 && p->protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrites an IPv4 address (source when `dst` is 0) and fixes both checksums. */
static __always_inline int csum_set_addr4(struct __sk_buff *skb, const struct pkt *p, int dst,
					  __be32 to)
{
	__u32 off = p->l3_off + (dst ? IPV4_DADDR_OFF : IPV4_SADDR_OFF);
	__be32 from;

	if (bpf_skb_load_bytes(skb, off, &from, 4))
		return -1;
	int l4 = csum_l4_field(p->protocol);
	if (l4 >= 0 && p->frag != FRAG_LATER &&
	    bpf_l4_csum_replace(skb, p->l4_off + l4, from, to,
				BPF_F_PSEUDO_HDR | 4 | csum_l4_flags(p)))
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3_off + IPV4_CSUM_OFF, from, to, 4))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, 4, 0);
}

/* Rewrites an IPv6 address (source when `dst` is 0) and fixes the L4 checksum (IPv6 has
 * no header checksum). */
static __always_inline int csum_set_addr6(struct __sk_buff *skb, const struct pkt *p, int dst,
					  const __u8 *to)
{
	__u32 off = p->l3_off + (dst ? IPV6_DADDR_OFF : IPV6_SADDR_OFF);
	__u8 from[16];
	__u8 new_addr[16];

	if (bpf_skb_load_bytes(skb, off, from, 16))
		return -1;
	__builtin_memcpy(new_addr, to, 16);
	int l4 = csum_l4_field(p->protocol);
	if (l4 >= 0 && p->frag != FRAG_LATER) {
		__s64 diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)new_addr, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, p->l4_off + l4, 0, (__u32)diff,
					BPF_F_PSEUDO_HDR | csum_l4_flags(p)))
			return -1;
	}
	return bpf_skb_store_bytes(skb, off, new_addr, 16, 0);
}

/* Rewrites the TCP/UDP source (`dst` 0) or destination port and fixes the L4 checksum. */
static __always_inline int csum_set_port(struct __sk_buff *skb, const struct pkt *p, int dst,
					 __be16 to)
{
	__u32 off = p->l4_off + (dst ? 2 : 0);
	__be16 from;

	if (p->frag == FRAG_LATER || !(p->protocol == IPPROTO_TCP || p->protocol == IPPROTO_UDP))
		return -1;
	if (bpf_skb_load_bytes(skb, off, &from, 2))
		return -1;
	int l4 = csum_l4_field(p->protocol);
	if (bpf_l4_csum_replace(skb, p->l4_off + l4, from, to, 2 | csum_l4_flags(p)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &to, 2, 0);
}

#endif
