/* SPDX-License-Identifier: Apache-2.0 */
/* The L7 proxy's listener (docs/datapath.md §11): the `sk_lookup` program of the node's
 * network namespace hands a redirected flow's SYN to the proxy's listening socket.
 *
 * from_pod decides the redirect, tracks the flow with CT_F_PROXY and marks its packets
 * PROXY_MARK_LOCAL; the `ip rule fwmark` of the proxy routes them to the local table, so the
 * stack delivers them locally and, finding no socket for the pod's address, runs this
 * program. It cannot see the mark: it finds the flow's conntrack entry instead (the
 * opening hook's key: client -> server at the client's host veth, which is the arriving
 * interface) and assigns the listener only to flows conntrack says were redirected. Any
 * other local delivery is left to the stack. No listener in pal_proxy_socks (the proxy is
 * gone: a closed socket leaves the map by itself): nothing is assigned, the SYN finds no
 * socket and the connection fails (fail closed). */
#ifndef PALISADE_PROXY_H
#define PALISADE_PROXY_H

#include "common.h"
#include "ct.h"
#include "endpoint.h"
#include "policy.h"

#define PAL_AF_INET  2
#define PAL_AF_INET6 10

/* Slot 0: the proxy's listener (one dual-stack socket serves IPv4 and IPv6). Not pinned:
 * a socket lives as long as the proxy that put it here. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__type(key, __u32);
	__type(value, __u32); /* the socket's fd on update (aya writes 4 bytes) */
	__uint(max_entries, 1);
} pal_proxy_socks SEC(".maps");

/* The conntrack key the opening hook (from_pod at the arriving interface) made for this
 * lookup's flow: remote = the client pod, local = the server it addressed. */
static __always_inline void proxy_ct_key(struct ct_key *k, const struct bpf_sk_lookup *ctx)
{
	__u8 client[16] = {}, server[16] = {};
	__u8 family;

	if (ctx->family == PAL_AF_INET6) {
		__builtin_memcpy(client, (const void *)ctx->remote_ip6, 16);
		__builtin_memcpy(server, (const void *)ctx->local_ip6, 16);
		family = 6;
	} else {
		__u32 r = ctx->remote_ip4, l = ctx->local_ip4;

		__builtin_memcpy(client, &r, 4);
		__builtin_memcpy(server, &l, 4);
		family = 4;
	}
	ct_key_tuple(k, client, server, ctx->remote_port, bpf_htons((__u16)ctx->local_port),
		     IPPROTO_TCP, family, DIRECTION_EGRESS, ctx->ingress_ifindex);
}

/* Whether this lookup belongs to a flow from_pod redirected to the proxy. */
static __always_inline int proxy_flow(const struct bpf_sk_lookup *ctx)
{
	struct ct_key k = {};
	struct ct_entry *ct;

	if (ctx->protocol != IPPROTO_TCP || (ctx->family != PAL_AF_INET && ctx->family != PAL_AF_INET6))
		return 0;
	proxy_ct_key(&k, ctx);
	ct = bpf_map_lookup_elem(&pal_ct, &k);
	if (ct)
		return !!(ct->flags & CT_F_PROXY);
	/* A flow from outside the uplink redirected (docs/datapath.md §13): its entry is the
	 * uplink's, opened at its ingress. */
	k.direction ^= 1;
	ct = bpf_map_lookup_elem(&pal_ct, &k);
	return ct && (ct->flags & (CT_F_PROXY | CT_F_UPLINK)) == (CT_F_PROXY | CT_F_UPLINK);
}

/* The endpoint of this node a packet is routed to (the main table's route to the pod
 * points at its host veth), or NULL. */
static __always_inline struct endpoint_info *proxy_local_destination(struct __sk_buff *skb,
								     const struct pkt *p)
{
	struct bpf_fib_lookup fib = {};
	long r;

	fib.l4_protocol = p->protocol;
	fib.sport = p->sport;
	fib.dport = p->dport;
	fib.ifindex = skb->ifindex;
	if (p->family == 4) {
		fib.family = PAL_AF_INET;
		__builtin_memcpy(&fib.ipv4_src, p->saddr, 4);
		__builtin_memcpy(&fib.ipv4_dst, p->daddr, 4);
	} else {
		fib.family = PAL_AF_INET6;
		__builtin_memcpy(fib.ipv6_src, p->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, p->daddr, 16);
	}
	r = bpf_fib_lookup(skb, &fib, sizeof(fib),
			   BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_SKIP_NEIGH);
	if (r != BPF_FIB_LKUP_RET_SUCCESS && r != BPF_FIB_LKUP_RET_NO_NEIGH)
		return NULL;
	return endpoint_lookup(fib.ifindex);
}

/* Step 6b: a TCP flow from_pod admitted that goes to an endpoint on this node whose ingress
 * rules redirect it (HTTP rules) is taken to the proxy here, at the source veth, because a
 * socket can only be handed over from a tc ingress hook (docs/datapath.md §11). The
 * destination is the endpoint of the interface the packet is routed to, and its entry is
 * looked up exactly as its to_pod would (its policy slot, the source's identity). Only
 * while the proxy is ready; otherwise the destination's to_pod decides (and drops the
 * REDIRECT). Costs a route lookup on a new TCP flow, and only while some endpoint of this
 * node has ingress HTTP rules (PROXY_F_INGRESS_L7, kept by the enforcer). */
static __always_inline void policy_redirect_for_destination(struct __sk_buff *skb,
							    struct decision *d,
							    const struct pkt *p, __u32 src,
							    __be16 dport)
{
	struct endpoint_info *dst;
	struct policy_value *w;

	const __u32 want = PROXY_F_READY | PROXY_F_INGRESS_L7;

	if (p->protocol != IPPROTO_TCP || d->verdict == EVENT_VERDICT_REDIRECTED ||
	    (proxy_flags() & want) != want)
		return;
	dst = proxy_local_destination(skb, p);
	if (!dst)
		return;
	w = policy_entry(dst->policy_slot, src, DIRECTION_INGRESS, p->protocol, dport);
	if (!w || w->verdict != POLICY_VERDICT_REDIRECT)
		return;
	d->verdict = EVENT_VERDICT_REDIRECTED;
	d->rule_id = w->rule_id;
	d->proxy_port = w->proxy_port;
}

#endif
