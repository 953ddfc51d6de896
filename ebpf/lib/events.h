/* SPDX-License-Identifier: Apache-2.0 */
/* Verdict events: one per new flow, per close and per reported drop; never per packet. */
#ifndef PALISADE_EVENTS_H
#define PALISADE_EVENTS_H

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"

struct flow_ctx {
	struct pkt p;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 revision;
	__u8 dir;
};

static __always_inline void emit(const struct flow_ctx *f, const struct decision *d, __u8 kind)
{
	struct verdict_event *e = bpf_ringbuf_reserve(&pal_events, sizeof(*e), 0);

	if (!e) {
		count(f->dir, COUNTER_EVENTS_LOST, 0);
		return;
	}
	e->time_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->saddr, f->p.saddr, 16);
	__builtin_memcpy(e->daddr, f->p.daddr, 16);
	e->sport = f->p.sport;
	e->dport = f->p.dport;
	e->protocol = f->p.protocol;
	e->family = f->p.family;
	e->direction = f->dir;
	e->verdict = d->verdict;
	e->kind = kind;
	e->tcp_flags = f->p.protocol == IPPROTO_TCP ? f->p.tcp_flags : f->p.icmp_type;
	e->drop_reason = d->drop_reason;
	e->ifindex = f->ifindex;
	e->src_identity = f->src_identity;
	e->dst_identity = f->dst_identity;
	e->rule_id = d->rule_id;
	e->revision = f->revision;
	e->proxy_port = d->proxy_port;
	e->pad = 0;
	e->packet_len = f->p.len;
	bpf_ringbuf_submit(e, 0);
}

/* Report a drop unless the same tuple was reported within EVENT_DROP_REPEAT_NS. */
static __always_inline int drop_is_new(const struct ct_key *k)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&pal_drop_seen, k);

	if (last && now - *last < EVENT_DROP_REPEAT_NS)
		return 0;
	bpf_map_update_elem(&pal_drop_seen, k, &now, BPF_ANY);
	return 1;
}

#endif
