/* SPDX-License-Identifier: Apache-2.0 */
/* Policy lookups, in the order written in palisade_abi.h and docs/datapath.md. Owns
 * pal_policy. The Rust map evaluator (policy_compiler::eval::maps) performs the same
 * steps; a differential test keeps the two in agreement. */
#ifndef PALISADE_POLICY_H
#define PALISADE_POLICY_H

#include "common.h"
#include "identity.h"
#include "parse.h"

/* (slot, peer identity, direction, protocol, port prefix) -> verdict */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_policy SEC(".maps");

/* The L7 proxy's state, written by the enforcer: PROXY_F_READY while it takes redirected
 * connections. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct proxy_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_proxy SEC(".maps");

static __always_inline __u32 proxy_flags(void)
{
	__u32 zero = 0;
	struct proxy_state *s = bpf_map_lookup_elem(&pal_proxy, &zero);

	return s ? s->flags : 0;
}

static __always_inline int proxy_ready(void)
{
	return proxy_flags() & PROXY_F_READY;
}

struct decision {
	__u32 rule_id;
	__u16 drop_reason;  /* 0 = not dropped */
	__u8 verdict;       /* EVENT_VERDICT_* */
	__u8 pad;
	__be16 proxy_port;
};

/* The entry that decides a flow of the endpoint in `slot` with `peer`, or NULL when the
 * slot has none for this direction. */
static __always_inline struct policy_value *policy_entry(__u32 slot, __u32 peer, __u8 dir,
							 __u8 protocol, __be16 dport)
{
	struct policy_key k = {};

	k.prefixlen = POLICY_PREFIX_FULL;
	k.slot = slot;
	k.identity = peer;
	k.direction = dir;
	k.protocol = protocol;
	k.dport = dport;
	/* The compiler resolved every tier into each entry, and every partition ends in a
	 * catch-all: the exact-peer hit is final; only a miss falls back to the any-peer
	 * partition, whose hit is final too. */
	struct policy_value *w = bpf_map_lookup_elem(&pal_policy, &k);
	if (!w) {
		k.identity = IDENTITY_UNKNOWN;
		w = bpf_map_lookup_elem(&pal_policy, &k);
	}
	return w;
}

/* Steps 3 and 5 for one flow of the endpoint in `slot`. `mark` is the packet's skb->mark
 * (for a re-check, the mark the flow was opened with). */
static __always_inline struct decision policy_decide(__u32 slot, __u32 peer, __u8 dir,
						     __u8 protocol, __be16 dport, __u32 mark)
{
	struct decision d = {};
	struct policy_value *w = policy_entry(slot, peer, dir, protocol, dport);
	/* No entry (a slot being torn down, a corrupted map) or the default-deny terminal
	 * (DENY with no rule): the direction is isolated and nothing opens it. The terminal
	 * of a pod in an audit namespace carries POLICY_F_AUDIT and is reported below. */
	if (!w || (w->verdict == POLICY_VERDICT_DENY && w->rule_id == RULE_ID_NONE &&
		   !(w->flags & POLICY_F_AUDIT))) {
		d.rule_id = RULE_ID_NONE;
		d.verdict = EVENT_VERDICT_DROPPED;
		d.drop_reason = DROP_POLICY_DENIED;
		return d;
	}
	d.rule_id = w->rule_id;
	switch (w->verdict) {
	case POLICY_VERDICT_ALLOW:
		d.verdict = EVENT_VERDICT_FORWARDED;
		break;
	case POLICY_VERDICT_REDIRECT:
		d.proxy_port = w->proxy_port;
		if (dir == DIRECTION_EGRESS && proxy_ready()) {
			/* The caller marks the flow for local delivery to the proxy. */
			d.verdict = EVENT_VERDICT_REDIRECTED;
		} else if (dir == DIRECTION_INGRESS &&
			   (mark & PROXY_MARK_MASK) == PROXY_MARK_UPSTREAM) {
			/* The proxy's upstream leg: the proxy judged its requests. */
			d.verdict = EVENT_VERDICT_FORWARDED;
		} else if (w->flags & POLICY_F_AUDIT) {
			/* Only audit-mode HTTP rules send it to the proxy, and they enforce
			 * nothing: without the proxy it passes unobserved. */
			d.verdict = EVENT_VERDICT_FORWARDED;
		} else {
			/* No proxy to take it: fail closed. */
			d.verdict = EVENT_VERDICT_DROPPED;
			d.drop_reason = DROP_PROXY_UNAVAILABLE;
		}
		break;
	case POLICY_VERDICT_DENY:
		if (w->flags & POLICY_F_AUDIT) {
			d.verdict = EVENT_VERDICT_AUDIT;
		} else {
			d.verdict = EVENT_VERDICT_DROPPED;
			d.drop_reason = DROP_POLICY_DENY;
		}
		break;
	default:
		/* An unknown verdict is corruption: deny, naming the rule. */
		d.verdict = EVENT_VERDICT_DROPPED;
		d.drop_reason = DROP_POLICY_DENY;
		break;
	}
	return d;
}

#endif
