/* SPDX-License-Identifier: Apache-2.0 */
/* Endpoints: the pods this node enforces, keyed by the host-side interface index (what
 * skb->ifindex is on both hooks). Owns pal_endpoints and pal_ep_gen. */
#ifndef PALISADE_ENDPOINT_H
#define PALISADE_ENDPOINT_H

#include "common.h"

/* host-side ifindex -> endpoint */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_endpoints SEC(".maps");

/* The endpoint generation (palisade_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ep_gen SEC(".maps");

/* The current endpoint generation, 0 when unknown (which no fast path accepts). A decision
 * program reads it before it looks its endpoint up: the enforcer writes an endpoint before
 * it moves the generation, so an endpoint read after a generation is at least as new as
 * that generation's writes (x86's loads are not reordered with older loads; the datapath
 * is built for x86-64, and a weakly ordered port needs an acquire load here). */
static __always_inline __u32 endpoint_generation(void)
{
	__u32 zero = 0;
	__u32 *g = bpf_map_lookup_elem(&pal_ep_gen, &zero);

	return g ? *g : 0;
}

/* The endpoint of a hook's interface, or NULL when it is missing or not READY: an
 * interface with Palisade's programs and no ready policy drops everything. */
static __always_inline struct endpoint_info *endpoint_lookup(__u32 ifindex)
{
	struct endpoint_info *ep = bpf_map_lookup_elem(&pal_endpoints, &ifindex);

	if (!ep || !(ep->flags & ENDPOINT_F_READY))
		return NULL;
	return ep;
}

/* The source check of a new flow from the pod: the source must be one of the endpoint's
 * own addresses (ENDPOINT_F_IPV4 / ENDPOINT_F_IPV6), not merely an address of the same
 * identity. */
static __always_inline int endpoint_owns(const struct endpoint_info *ep, const __u8 *addr,
					 __u8 family)
{
	if (family == 4)
		return (ep->flags & ENDPOINT_F_IPV4) && __builtin_memcmp(ep->ipv4, addr, 4) == 0;
	if (!(ep->flags & ENDPOINT_F_IPV6))
		return 0;
	__u64 a[2], b[2];
	__builtin_memcpy(a, ep->ipv6, 16);
	__builtin_memcpy(b, addr, 16);
	return a[0] == b[0] && a[1] == b[1];
}

#endif
