/* SPDX-License-Identifier: Apache-2.0 */
/* Verdict events (one per new flow, per close and per reported drop; never per packet),
 * drop repeat suppression and per-CPU counters. Owns pal_events, pal_drop_seen and
 * pal_counters. */
#ifndef PALISADE_EVENTS_H
#define PALISADE_EVENTS_H

#include "common.h"
#include "parse.h"
#include "policy.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_events SEC(".maps");

/* Last time a drop of this tuple was reported: repeats (SYN retransmits) within
 * EVENT_DROP_REPEAT_NS are counted but not reported again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_drop_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(max_entries, COUNTER_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_counters SEC(".maps");

static __always_inline void count(__u8 dir, __u32 code, __u32 bytes)
{
	__u32 idx = (__u32)dir * COUNTER_DIR_STRIDE + code;
	struct counter_value *c = bpf_map_lookup_elem(&pal_counters, &idx);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

struct flow_ctx {
	struct pkt p;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 revision;
	__u16 service; /* the frontend id of a translated flow, 0 = none */
	__u8 dir;
};

/* Fills one event. Not inlined on purpose: a real function keeps `struct verdict_event` in
 * the object's BTF (through its prototype), where enforcer/tests/abi_btf.rs compares it
 * with the Rust mirror; it runs once per reported decision, never per forwarded packet. */
static __noinline void event_fill(struct verdict_event *e, const struct flow_ctx *f,
				  const struct decision *d, __u8 kind)
{
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
	e->service = f->service;
	e->packet_len = f->p.len;
}

static __always_inline void emit(const struct flow_ctx *f, const struct decision *d, __u8 kind)
{
	struct verdict_event *e = bpf_ringbuf_reserve(&pal_events, sizeof(*e), 0);

	if (!e) {
		count(f->dir, COUNTER_EVENTS_LOST, 0);
		return;
	}
	event_fill(e, f, d, kind);
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
