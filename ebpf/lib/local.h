/* SPDX-License-Identifier: Apache-2.0 */
/* Local delivery (docs/datapath.md §3.2): an established packet from a pod to a pod of this
 * node goes from the source's host veth straight to the destination's host veth egress,
 * without the node's routing and forwarding. to_pod still runs there and judges it as
 * before; what is skipped is the node's IP stack (routing lookup, netfilter's forward
 * hooks, neighbour output), which the two veth crossings would otherwise pay per packet.
 * Owns pal_local. */
#ifndef PALISADE_LOCAL_H
#define PALISADE_LOCAL_H

#include "common.h"
#include "parse.h"
#include "endpoint.h"
#include "events.h"
#include "ct.h"

/* a pod's own address -> how the node's stack delivers to it (palisade_abi.h) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct local_key);
	__type(value, struct local_route);
	__uint(max_entries, 65536);
} pal_local SEC(".maps");

/* local_learn's working copy of a key and route: per CPU, off the stack (a global
 * function's frame counts against the caller's 512 bytes, and handle() uses nearly all). */
struct local_scratch {
	struct local_key k;
	struct local_route r;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct local_scratch);
	__uint(max_entries, 1);
} pal_local_scratch SEC(".maps");

/* Local delivery on (1) or off (0): the agent's `local_delivery` setting, written into the
 * object by the loader before it is loaded (enforcer/src/datapath/mod.rs), so the verifier
 * sees a constant. */
volatile const __u32 local_delivery_on = 1;

/* The scratch map's key, in .rodata: a key on the stack would give local_learn a frame. */
static const __u32 local_zero = 0;

#define IPV4_TTL_OFF 8
#define IPV6_HOP_LIMIT_OFF 7

static __always_inline void local_key_of(struct local_key *k, const __u8 *addr, __u8 family)
{
	k->family = family;
	if (family == 4)
		__builtin_memcpy(k->addr, addr, 4);
	else
		__builtin_memcpy(k->addr, addr, 16);
}

/* Learns how the node delivers to the endpoint `ep` from the frame of a flow a decision
 * program admitted or re-validated, stamped with `gen`, the generation read before the
 * endpoint was (lib/endpoint.h); written only when something changed. Only a frame with the
 * endpoint's own address on its side teaches: at to_pod (DIRECTION_INGRESS) a frame the
 * node's stack addressed to the pod's own address (destination MAC = the pod's), at from_pod
 * a frame the pod sent from its own address (source MAC = the pod's); never one with a group
 * MAC. A global function, verified once on its own: inlined at its three call sites it
 * doubled the decision program's verifier work. */
__attribute__((noinline)) int local_learn(struct __sk_buff *skb, const struct flow_ctx *f,
					   const struct endpoint_info *ep, __u32 gen)
{
	if (!f || !ep)
		return 0;
	const __u8 *own = f->dir == DIRECTION_INGRESS ? f->p.daddr : f->p.saddr;
	if (!endpoint_owns(ep, own, f->p.family))
		return 0;
	struct local_scratch *s = bpf_map_lookup_elem(&pal_local_scratch, &local_zero);
	if (!s)
		return 0;
	s->r.ifindex = f->ifindex;
	s->r.ep_gen = gen;
	/* The frame's destination and source MACs: the pod's and the node side's at to_pod,
	 * the other way round at from_pod. */
	__u32 pod_off = f->dir == DIRECTION_INGRESS ? 0 : ETH_ALEN;
	if (bpf_skb_load_bytes(skb, pod_off, s->r.pod_mac, ETH_ALEN) ||
	    bpf_skb_load_bytes(skb, ETH_ALEN - pod_off, s->r.node_mac, ETH_ALEN))
		return 0;
	if ((s->r.pod_mac[0] & 1) || (s->r.node_mac[0] & 1))
		return 0;
	__builtin_memset(&s->k, 0, sizeof(s->k));
	local_key_of(&s->k, own, f->p.family);
	struct local_route *old = bpf_map_lookup_elem(&pal_local, &s->k);
	if (old && __builtin_memcmp(old, &s->r, sizeof(s->r)) == 0)
		return 0;
	bpf_map_update_elem(&pal_local, &s->k, &s->r, BPF_ANY);
	return 1;
}

/* At from_pod, on an established packet: hands it to the destination pod's host veth when
 * the destination is a pod of this node learned under the current generation `gen` whose
 * entries track this tuple (`peer`: scratch for its key; `now` for its lifetime),
 * forwarding as the node would (MACs of that link, TTL / hop limit one less). Returns
 * TCX_NEXT (the node's stack forwards it) when it is not, when the hop limit would run
 * out (the stack answers with its ICMP error), or when a rewrite fails (the stack
 * rewrites the MACs again). */
static __always_inline int local_deliver(struct __sk_buff *skb, const struct pkt *p, __u32 gen,
					 struct ct_key *peer, __u64 now)
{
	struct local_key k = {};

	if (!local_delivery_on)
		return TCX_NEXT;
	local_key_of(&k, p->daddr, p->family);
	struct local_route *r = bpf_map_lookup_elem(&pal_local, &k);
	if (!r || r->ep_gen != gen || r->ifindex == skb->ifindex || p->hop_limit <= 1)
		return TCX_NEXT;
	__u32 ifindex = r->ifindex;
	__u8 macs[2 * ETH_ALEN];
	__builtin_memcpy(macs, r->pod_mac, ETH_ALEN);
	__builtin_memcpy(macs + ETH_ALEN, r->node_mac, ETH_ALEN);
	/* The node's stack delivered this very tuple to that pod: the destination's to_pod
	 * tracks it. A flow the node rewrites on its way (a DNAT or SNAT of its own, such as
	 * kube-proxy's rules for a service Palisade does not translate) has another tuple
	 * there and stays with the stack, which must undo its rewrite on the replies. */
	ct_key_of(peer, p, DIRECTION_INGRESS, ifindex);
	if (!ct_lookup(peer, now))
		return TCX_NEXT;
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0))
		return TCX_NEXT;
	if (p->family == 4) {
		__be16 old, new;
		if (bpf_skb_load_bytes(skb, p->l3_off + IPV4_TTL_OFF, &old, 2))
			return TCX_NEXT;
		__u8 *b = (__u8 *)&new;
		new = old;
		b[0] = p->hop_limit - 1;
		if (bpf_l3_csum_replace(skb, p->l3_off + IPV4_CSUM_OFF, old, new, 2) ||
		    bpf_skb_store_bytes(skb, p->l3_off + IPV4_TTL_OFF, &new, 2, 0))
			return TCX_NEXT;
	} else {
		__u8 hl = p->hop_limit - 1;
		if (bpf_skb_store_bytes(skb, p->l3_off + IPV6_HOP_LIMIT_OFF, &hl, 1, 0))
			return TCX_NEXT;
	}
	return bpf_redirect(ifindex, 0);
}

#endif
