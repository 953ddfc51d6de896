/* SPDX-License-Identifier: Apache-2.0 */
/* Header parsing into a flat tuple. Headers are read with direct packet access
 * (pkt_ptr); a header that is not in the linear area yet (a non-linear skb) is pulled into
 * it first, so such frames parse the same as linear ones. The quoted packet of an ICMP
 * error (a rare path) is read with bpf_skb_load_bytes. */
#ifndef PALISADE_PARSE_H
#define PALISADE_PARSE_H

#include "common.h"

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,    /* ARP and friends: not policed */
	PARSE_NEIGHBOR,  /* IPv6 neighbour discovery / MLD within the protocol's limits */
	PARSE_BAD,       /* truncated or malformed: DROP_INVALID_PACKET */
	PARSE_FRAGMENT,  /* non-first fragment: ports come from pal_frag (lib/frag.h) */
	PARSE_FORBIDDEN, /* ND/MLD outside its limits: DROP_FORBIDDEN_ICMP6 */
};

enum pkt_frag {
	FRAG_NONE = 0,
	FRAG_FIRST,      /* offset 0, more fragments follow: ports parsed, remembered */
	FRAG_LATER,      /* offset > 0: no L4 header */
};

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;     /* ICMP echo: id as sport (request) or dport (reply) */
	__be16 dport;
	__u8 protocol;
	__u8 family;      /* 4 or 6 */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 trackable;   /* ports are meaningful for conntrack */
	__u8 frag;        /* enum pkt_frag */
	__u8 hop_limit;   /* IPv4 TTL / IPv6 hop limit */
	__u8 pad;
	__u16 l3_off;     /* offset of the IP header in the frame */
	__u16 l4_off;     /* offset of the L4 header (0 for a later fragment) */
	__be32 frag_id;   /* IPv4 id (low 16 bits) or IPv6 fragment id; 0 when not fragmented */
	__u32 len;
	/* An ICMP error whose quoted packet parsed (icmp_error set): the quoted tuple, as the
	 * packet that caused the error carried it (ICMP echo: id as sport or dport, as above). */
	__u8 icmp_error;
	__u8 inner_protocol;
	__be16 inner_sport;
	__be16 inner_dport;
	__u8 inner_saddr[16];
	__u8 inner_daddr[16];
};

/* Direct access to `len` bytes at `off` of the frame, or NULL when the frame is shorter.
 * Bytes outside the linear area are pulled into it first (bpf_skb_pull_data, which
 * invalidates earlier packet pointers: callers copy what they need before the next call). */
static __always_inline const __u8 *pkt_ptr(struct __sk_buff *skb, __u32 off, __u32 len)
{
	if (off > PKT_MAX_HDR_OFF)
		return NULL;
	const __u8 *ptr = (const __u8 *)(long)skb->data + off;
	if (ptr + len <= (const __u8 *)(long)skb->data_end)
		return ptr;
	if (off + len > skb->len || bpf_skb_pull_data(skb, off + len))
		return NULL;
	ptr = (const __u8 *)(long)skb->data + off;
	if (ptr + len <= (const __u8 *)(long)skb->data_end)
		return ptr;
	return NULL;
}

static __always_inline int is_l4_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* The port a policy lookup uses: the destination port, 0 for protocols without ports. */
static __always_inline __be16 policy_port(const struct pkt *p, __be16 port)
{
	return is_l4_ports(p->protocol) ? port : 0;
}

/* IPv6 link control a pod needs whatever its policy, kept as narrow as the protocols allow:
 * neighbour discovery (RFC 4861) only with hop limit 255, which proves it was sent on the
 * link; MLD (RFC 2710, 3810) only with hop limit 1, from a link-local (or, for reports, the
 * unspecified) source, to a multicast destination; neither fragmented (RFC 6980). Other
 * ND/MLD is forbidden. Returns PARSE_NEIGHBOR, PARSE_FORBIDDEN or PARSE_OK (not ND/MLD). */
static __always_inline int icmp6_link_control(const struct pkt *p, __u8 type)
{
	int nd = type >= ICMPV6_ND_FIRST && type <= ICMPV6_CTRL_LAST;
	int mld = (type >= ICMPV6_CTRL_FIRST && type < ICMPV6_ND_FIRST) ||
		  type == ICMPV6_MLD2_REPORT;

	if (!nd && !mld)
		return PARSE_OK;
	if (p->frag != FRAG_NONE)
		return PARSE_FORBIDDEN;
	if (nd)
		return p->hop_limit == 255 ? PARSE_NEIGHBOR : PARSE_FORBIDDEN;
	int link_local = p->saddr[0] == 0xfe && (p->saddr[1] & 0xc0) == 0x80;
	int unspecified = 1;
#pragma unroll
	for (int i = 0; i < 16; i++)
		if (p->saddr[i])
			unspecified = 0;
	if (p->hop_limit != 1 || p->daddr[0] != 0xff)
		return PARSE_FORBIDDEN;
	if (link_local || (unspecified && type == ICMPV6_MLD2_REPORT))
		return PARSE_NEIGHBOR;
	return PARSE_FORBIDDEN;
}

/* Link control only routers send: MLD queries, router advertisements, redirects. A pod is
 * not a router, so from_pod never passes them (a rogue advertisement would reach the node
 * and its other pods). */
static __always_inline int icmp6_router_only(__u8 type)
{
	return type == ICMPV6_CTRL_FIRST /* MLD query */ || type == ICMPV6_ROUTER_ADVERT ||
	       type == ICMPV6_CTRL_LAST /* redirect */;
}

static __always_inline int icmp_is_error(__u8 protocol, __u8 type)
{
	if (protocol == IPPROTO_ICMP)
		return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
		       type == ICMP_PARAMETER_PROB;
	return type >= ICMPV6_DEST_UNREACH_ && type <= ICMPV6_PARAMPROB_;
}

/* The packet an ICMP error quotes (after the 8-byte ICMP header at `off`): its addresses,
 * protocol and ports (echo id for ICMP echo), when the quote is of the outer packet's
 * family, has no IPv6 extension headers and carries at least the first 4 bytes of its L4
 * header (RFC 792 quotes 8). Anything else leaves icmp_error 0: the error is then not
 * related to any flow and is decided by policy like any ICMP packet. */
static __always_inline void parse_icmp_quote(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__u8 proto;

	if (p->family == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return;
		if (ip.version != 4 || ip.ihl < 5 || bpf_ntohs(ip.frag_off) & IPV4_FRAG_OFFSET)
			return;
		proto = ip.protocol;
		__builtin_memcpy(p->inner_saddr, &ip.saddr, 4);
		__builtin_memcpy(p->inner_daddr, &ip.daddr, 4);
		off += ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return;
		if (ip6.version != 6)
			return;
		proto = ip6.nexthdr;
		__builtin_memcpy(p->inner_saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->inner_daddr, &ip6.daddr, 16);
		off += sizeof(ip6);
	}
	__u8 h[8];
	if (is_l4_ports(proto)) {
		if (bpf_skb_load_bytes(skb, off, h, 4))
			return;
		__builtin_memcpy(&p->inner_sport, &h[0], 2);
		__builtin_memcpy(&p->inner_dport, &h[2], 2);
	} else if (proto == p->protocol) {
		/* ICMP echo quoted: tracked on its id, as parse_l4 keys it. */
		if (bpf_skb_load_bytes(skb, off, h, 8))
			return;
		__u8 req = proto == IPPROTO_ICMP ? ICMP_ECHO_REQUEST : ICMPV6_ECHO_REQUEST_;
		__u8 rep = proto == IPPROTO_ICMP ? ICMP_ECHO_REPLY : ICMPV6_ECHO_REPLY_;
		if (h[0] == req)
			__builtin_memcpy(&p->inner_sport, &h[4], 2);
		else if (h[0] == rep)
			__builtin_memcpy(&p->inner_dport, &h[4], 2);
		else
			return;
	} else {
		return;
	}
	p->inner_protocol = proto;
	p->icmp_error = 1;
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	p->l4_off = off;
	switch (p->protocol) {
	case IPPROTO_TCP: {
		const __u8 *h = pkt_ptr(skb, off, 14);
		if (!h)
			return PARSE_BAD;
		__builtin_memcpy(&p->sport, &h[0], 2);
		__builtin_memcpy(&p->dport, &h[2], 2);
		p->tcp_flags = h[13];
		p->trackable = 1;
		return PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		const __u8 *h = pkt_ptr(skb, off, 4);
		if (!h)
			return PARSE_BAD;
		__builtin_memcpy(&p->sport, &h[0], 2);
		__builtin_memcpy(&p->dport, &h[2], 2);
		p->trackable = 1;
		return PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_: {
		const __u8 *h = pkt_ptr(skb, off, 8);
		if (!h)
			return PARSE_BAD;
		p->icmp_type = h[0];
		__be16 id;
		__builtin_memcpy(&id, &h[4], 2);
		__u8 req = p->protocol == IPPROTO_ICMP ? ICMP_ECHO_REQUEST : ICMPV6_ECHO_REQUEST_;
		__u8 rep = p->protocol == IPPROTO_ICMP ? ICMP_ECHO_REPLY : ICMPV6_ECHO_REPLY_;
		if (p->protocol == IPPROTO_ICMPV6_) {
			int lc = icmp6_link_control(p, h[0]);
			if (lc != PARSE_OK)
				return lc;
		}
		/* Only echo is tracked, keyed on its id; a request and a reply never share a
		 * tuple, so an echo request from a peer can never pass as a reply. */
		if (h[0] == req) {
			p->sport = id;
			p->trackable = 1;
		} else if (h[0] == rep) {
			p->dport = id;
			p->trackable = 1;
		} else if (icmp_is_error(p->protocol, h[0]) && p->frag == FRAG_NONE) {
			parse_icmp_quote(skb, off + 8, p);
		}
		return PARSE_OK;
	}
	default:
		/* Other protocols: no ports; policy may still allow them (rules without
		 * ports allow every protocol). Tracked on addresses alone. */
		p->trackable = 1;
		return PARSE_OK;
	}
}

/* Parses the frame into `p`, keeping the L3 and L4 header offsets (for checksum updates
 * and rewrites later in the pipeline). */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	p->len = skb->len;
	p->l3_off = ETH_HLEN;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		const struct iphdr *ipp = (const struct iphdr *)pkt_ptr(skb, ETH_HLEN, sizeof(*ipp));
		if (!ipp)
			return PARSE_BAD;
		struct iphdr ip = *ipp;
		if (ip.version != 4 || ip.ihl < 5)
			return PARSE_BAD;
		p->family = 4;
		p->protocol = ip.protocol;
		p->hop_limit = ip.ttl;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		__u16 frag_off = bpf_ntohs(ip.frag_off);
		if (frag_off & (IPV4_FRAG_OFFSET | IPV4_FRAG_MORE)) {
			p->frag_id = (__be32)ip.id;
			if (frag_off & IPV4_FRAG_OFFSET) {
				p->frag = FRAG_LATER;
				return PARSE_FRAGMENT;
			}
			p->frag = FRAG_FIRST;
		}
		return parse_l4(skb, ETH_HLEN + ip.ihl * 4, p);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		const struct ipv6hdr *ip6 =
			(const struct ipv6hdr *)pkt_ptr(skb, ETH_HLEN, sizeof(*ip6));
		if (!ip6)
			return PARSE_BAD;
		if (ip6->version != 6)
			return PARSE_BAD;
		p->family = 6;
		p->hop_limit = ip6->hop_limit;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		__u8 nh = ip6->nexthdr;
		__u32 off = ETH_HLEN + sizeof(*ip6);
		/* Skip up to four extension headers; more is treated as malformed. */
#pragma unroll
		for (int i = 0; i < 4; i++) {
			const __u8 *eh;
			if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
				eh = pkt_ptr(skb, off, 2);
				if (!eh)
					return PARSE_BAD;
				nh = eh[0];
				off += ((__u32)eh[1] + 1) * 8;
			} else if (nh == IPPROTO_FRAGMENT) {
				const __u8 *fh = pkt_ptr(skb, off, 8);
				if (!fh)
					return PARSE_BAD;
				__u16 fo = (fh[2] << 8) | fh[3];
				nh = fh[0];
				off += 8;
				/* An atomic fragment (offset 0, no more) is a whole datagram. */
				if (fo & (IPV6_FRAG_OFFSET | IPV6_FRAG_MORE)) {
					__builtin_memcpy(&p->frag_id, &fh[4], 4);
					if (fo & IPV6_FRAG_OFFSET) {
						p->protocol = nh;
						p->frag = FRAG_LATER;
						return PARSE_FRAGMENT;
					}
					p->frag = FRAG_FIRST;
				}
			} else if (nh == IPPROTO_AH) {
				eh = pkt_ptr(skb, off, 2);
				if (!eh)
					return PARSE_BAD;
				nh = eh[0];
				off += ((__u32)eh[1] + 2) * 4;
			} else {
				break;
			}
		}
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
		    nh == IPPROTO_FRAGMENT || nh == IPPROTO_AH)
			return PARSE_BAD;
		p->protocol = nh;
		return parse_l4(skb, off, p);
	}
	return PARSE_NOT_IP;
}

#endif
