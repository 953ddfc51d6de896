/* SPDX-License-Identifier: Apache-2.0 */
/* IP fragments. Only the first fragment of a datagram carries the L4 header; its ports are
 * remembered per (addresses, IP id, protocol, hook, interface) so later fragments are
 * decided like the first one: the same conntrack lookup, the same policy lookup. A later
 * fragment whose first fragment was not seen here (or was forgotten) is dropped with
 * DROP_FRAG_NOT_FOUND; a first fragment that cannot be remembered is dropped with
 * DROP_FRAG_NOT_SUPPORTED, since its datagram could never be completed. Owns pal_frag. */
#ifndef PALISADE_FRAG_H
#define PALISADE_FRAG_H

#include "common.h"
#include "parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_frag SEC(".maps");

static __always_inline void frag_key_of(struct frag_key *k, const struct pkt *p, __u8 dir,
					__u32 ifindex)
{
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
	k->id = p->frag_id;
	k->protocol = p->protocol;
	k->family = p->family;
	k->direction = dir;
	k->ifindex = ifindex;
}

/* Remembers a first fragment's ports. Returns non-zero when they could not be stored. */
static __always_inline int frag_remember(const struct pkt *p, __u8 dir, __u32 ifindex,
					 __u64 now)
{
	struct frag_key k = {};
	struct frag_ports v = {};

	frag_key_of(&k, p, dir, ifindex);
	v.expires_ns = now + FRAG_LIFETIME_S * NSEC_PER_SEC;
	v.sport = p->sport;
	v.dport = p->dport;
	v.trackable = p->trackable;
	v.icmp_type = p->icmp_type;
	return bpf_map_update_elem(&pal_frag, &k, &v, BPF_ANY);
}

/* Gives a later fragment its first fragment's ports. Returns non-zero when the first
 * fragment is unknown or expired. */
static __always_inline int frag_recover(struct pkt *p, __u8 dir, __u32 ifindex, __u64 now)
{
	struct frag_key k = {};

	frag_key_of(&k, p, dir, ifindex);
	struct frag_ports *v = bpf_map_lookup_elem(&pal_frag, &k);
	if (!v || v->expires_ns <= now)
		return -1;
	p->sport = v->sport;
	p->dport = v->dport;
	p->trackable = v->trackable;
	p->icmp_type = v->icmp_type;
	return 0;
}

#endif
