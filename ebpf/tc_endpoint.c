/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Palisade endpoint datapath: two tc programs on the host side of every pod veth.
 *   from_pod  (tc ingress of the host veth): the pod's EGRESS policy, peer = destination
 *   to_pod    (tc egress of the host veth):  the pod's INGRESS policy, peer = source
 *
 * Per packet:
 *   non-IP, IPv6 neighbour discovery/MLD   -> pass (counted)
 *   endpoint missing or not READY           -> DROP_EP_NOT_READY
 *   malformed / non-first fragment          -> DROP_INVALID_PACKET / DROP_FRAG_NOT_SUPPORTED
 *   conntrack hit (same tuple, same hook)   -> pass; re-checked once after a policy change
 *   conntrack reply (reversed tuple, other hook of the same endpoint) -> pass; same re-check
 *   otherwise a new flow: from_pod with a source that is not the pod's own identity ->
 *   DROP_INVALID_SOURCE_IP; else decided by the lookup order in palisade_abi.h; allowed
 *   flows are tracked, every decision is counted and reported once.
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/endpoint.h"
#include "lib/identity.h"
#include "lib/policy.h"
#include "lib/ct.h"
#include "lib/events.h"

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow_ctx f = {};
	struct decision d = {};
	struct ct_key fwd = {}, rev = {};
	__u8 kind = EVENT_KIND_NEW_FLOW;

	f.dir = dir;
	f.ifindex = skb->ifindex;
	int pr = parse(skb, &f.p);
	if (pr == PARSE_NOT_IP) {
		count(dir, COUNTER_PASS_NON_IP, skb->len);
		return TCX_PASS;
	}
	if (pr == PARSE_NEIGHBOR) {
		count(dir, COUNTER_PASS_NEIGHBOR, skb->len);
		return TCX_PASS;
	}
	ct_key_of(&fwd, &f.p, dir, f.ifindex);

	d.verdict = EVENT_VERDICT_DROPPED;
	struct endpoint_info *epp = endpoint_lookup(f.ifindex);
	if (!epp) {
		d.drop_reason = DROP_EP_NOT_READY;
		goto drop;
	}
	struct endpoint_info ep = *epp;
	f.revision = ep.revision;
	if (dir == DIRECTION_EGRESS)
		f.src_identity = ep.identity;
	else
		f.dst_identity = ep.identity;
	if (pr == PARSE_BAD) {
		d.drop_reason = DROP_INVALID_PACKET;
		goto drop;
	}
	if (pr == PARSE_FRAGMENT) {
		d.drop_reason = DROP_FRAG_NOT_SUPPORTED;
		goto drop;
	}
	const __u8 *peer_addr = dir == DIRECTION_EGRESS ? f.p.daddr : f.p.saddr;

	__u64 now = bpf_ktime_get_ns();
	if (f.p.trackable) {
		/* Same flow, same hook: established. */
		struct ct_entry *ct = ct_lookup(&fwd, now);
		if (ct) {
			f.src_identity = ct->src_identity;
			f.dst_identity = ct->dst_identity;
			if (ct_recheck(ct, &fwd, &ep, peer_addr, dir, &f.p, f.p.dport, &d)) {
				count(dir, COUNTER_REVOKED, 0);
				kind = EVENT_KIND_REVOKED;
				goto drop;
			}
			if (ct_refresh(ct, &f.p, now)) {
				d = ct_closed(ct);
				emit(&f, &d, EVENT_KIND_CT_CLOSE);
			}
			count(dir, COUNTER_CT_ESTABLISHED, f.p.len);
			return TCX_PASS;
		}
		/* Reversed tuple made by the other hook of this endpoint: a reply. */
		ct_key_reply(&rev, &f.p, dir, f.ifindex);
		ct = ct_lookup(&rev, now);
		if (ct) {
			f.src_identity = ct->dst_identity;
			f.dst_identity = ct->src_identity;
			/* Re-decided as it was opened: the other direction, the same peer, the
			 * port it was opened to. */
			if (ct_recheck(ct, &rev, &ep, peer_addr, rev.direction, &f.p, f.p.sport, &d)) {
				count(dir, COUNTER_REVOKED, 0);
				kind = EVENT_KIND_REVOKED;
				goto drop;
			}
			ct->flags |= CT_F_REPLY_SEEN;
			if (ct_refresh(ct, &f.p, now)) {
				d = ct_closed(ct);
				emit(&f, &d, EVENT_KIND_CT_CLOSE);
			}
			count(dir, COUNTER_CT_REPLY, f.p.len);
			return TCX_PASS;
		}
	}

	/* A new flow. A pod may only open flows from its own addresses. Tracked packets skip
	 * this check safely: conntrack is keyed by the pod's interface, and every entry there
	 * was made by a packet that passed it (or by traffic addressed to the pod). */
	if (dir == DIRECTION_EGRESS) {
		__u32 src = ipcache_identity(f.p.saddr, f.p.family);
		/* While the pod's own addresses move to a new identity, the ipcache maps them
		 * to the endpoint's transit identity (docs/datapath.md section 7). */
		if (src != ep.identity &&
		    (f.ifindex & ~IDENTITY_ENDPOINT_TRANSIT_MASK ||
		     src != (IDENTITY_ENDPOINT_TRANSIT_BASE | f.ifindex))) {
			d.drop_reason = DROP_INVALID_SOURCE_IP;
			goto drop;
		}
	}
	__u32 peer = ipcache_identity(peer_addr, f.p.family);
	if (dir == DIRECTION_EGRESS)
		f.dst_identity = peer;
	else
		f.src_identity = peer;
	if (peer == IDENTITY_UNKNOWN) {
		d.drop_reason = DROP_INVALID_IDENTITY;
		goto drop;
	}
	d = policy_decide(ep.policy_slot, peer, dir, f.p.protocol, policy_port(&f.p, f.p.dport));
	if (d.drop_reason)
		goto drop;

	if (ct_should_track(&f.p) &&
	    ct_create(&fwd, &f.p, &d, ep.revision, f.src_identity, f.dst_identity, now)) {
		d.verdict = EVENT_VERDICT_DROPPED;
		d.drop_reason = DROP_CT_INSERT_FAILED;
		goto drop;
	}
	count(dir, d.verdict == EVENT_VERDICT_AUDIT ? COUNTER_AUDIT : COUNTER_FORWARDED, f.p.len);
	emit(&f, &d, EVENT_KIND_NEW_FLOW);
	return TCX_PASS;

drop:
	count(dir, d.drop_reason, f.p.len);
	if (kind == EVENT_KIND_REVOKED || drop_is_new(&fwd))
		emit(&f, &d, kind);
	return TCX_DROP;
}

SEC("classifier/ingress")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIRECTION_EGRESS);
}

SEC("classifier/egress")
int to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIRECTION_INGRESS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
