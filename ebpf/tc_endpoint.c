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
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/events.h"

static __always_inline int is_l4_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

static __always_inline __u64 lifetime_ns(const struct pkt *p, __u8 ct_flags)
{
	if (p->protocol != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP_S * NSEC_PER_SEC;
	if (ct_flags & (CT_F_SEEN_FIN | CT_F_SEEN_RST))
		return CT_LIFETIME_TCP_CLOSE_S * NSEC_PER_SEC;
	if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return CT_LIFETIME_TCP_SYN_S * NSEC_PER_SEC;
	return CT_LIFETIME_TCP_S * NSEC_PER_SEC;
}

/* Refresh a tracked flow on a packet; returns 1 when this packet closed it. */
static __always_inline int ct_refresh(struct ct_entry *ct, const struct pkt *p, __u64 now)
{
	__u8 before = ct->flags;

	if (p->protocol == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FLAG_RST)
			ct->flags |= CT_F_SEEN_RST;
		if (p->tcp_flags & TCP_FLAG_FIN)
			ct->flags |= CT_F_SEEN_FIN;
	}
	/* The deadline is written at most once a second (or when it shrinks on close): a
	 * store to the shared entry per packet costs more than the precision is worth. The
	 * per-entry packet and byte counts are approximate under concurrency; the per-CPU
	 * counters are exact. */
	__u64 deadline = now + lifetime_ns(p, ct->flags);
	if (deadline < ct->expires_ns || deadline - ct->expires_ns > NSEC_PER_SEC)
		ct->expires_ns = deadline;
	ct->packets += 1;
	ct->bytes += p->len;
	return !(before & (CT_F_SEEN_FIN | CT_F_SEEN_RST)) &&
	       (ct->flags & (CT_F_SEEN_FIN | CT_F_SEEN_RST));
}

static __always_inline __be16 policy_port(const struct pkt *p, __be16 port)
{
	return is_l4_ports(p->protocol) ? port : 0;
}

/* A tracked flow admitted under an older policy revision is decided once more against
 * the current maps. Returns 1 when the flow is revoked: its entry is removed and `d`
 * holds the drop. */
static __always_inline int ct_recheck(struct ct_entry *ct, const struct ct_key *key,
				      const struct endpoint_info *ep, const __u8 *peer_addr,
				      __u8 dir, const struct pkt *p, __be16 port,
				      struct decision *d)
{
	if (ct->revision == ep->revision)
		return 0;
	__u32 peer = ipcache_identity(peer_addr, p->family);
	*d = policy_decide(ep->policy_slot, peer, dir, p->protocol, policy_port(p, port));
	if (peer == IDENTITY_UNKNOWN || d->drop_reason) {
		if (!d->drop_reason)
			d->drop_reason = DROP_INVALID_IDENTITY;
		d->verdict = EVENT_VERDICT_DROPPED;
		bpf_map_delete_elem(&pal_ct, key);
		return 1;
	}
	ct->revision = ep->revision;
	ct->rule_id = d->rule_id;
	return 0;
}

/* The decision reported when a tracked flow closes. */
static __always_inline struct decision closed(const struct ct_entry *ct)
{
	struct decision d = {};

	d.verdict = EVENT_VERDICT_FORWARDED;
	d.rule_id = ct->rule_id;
	d.proxy_port = ct->proxy_port;
	return d;
}

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

	__builtin_memcpy(fwd.saddr, f.p.saddr, 16);
	__builtin_memcpy(fwd.daddr, f.p.daddr, 16);
	fwd.sport = f.p.sport;
	fwd.dport = f.p.dport;
	fwd.protocol = f.p.protocol;
	fwd.family = f.p.family;
	fwd.direction = dir;
	fwd.ifindex = f.ifindex;

	d.verdict = EVENT_VERDICT_DROPPED;
	__u32 ifindex = f.ifindex;
	struct endpoint_info *epp = bpf_map_lookup_elem(&pal_endpoints, &ifindex);
	if (!epp || !(epp->flags & ENDPOINT_F_READY)) {
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
		struct ct_entry *ct = bpf_map_lookup_elem(&pal_ct, &fwd);
		if (ct && ct->expires_ns > now) {
			f.src_identity = ct->src_identity;
			f.dst_identity = ct->dst_identity;
			if (ct_recheck(ct, &fwd, &ep, peer_addr, dir, &f.p, f.p.dport, &d)) {
				count(dir, COUNTER_REVOKED, 0);
				kind = EVENT_KIND_REVOKED;
				goto drop;
			}
			if (ct_refresh(ct, &f.p, now)) {
				d = closed(ct);
				emit(&f, &d, EVENT_KIND_CT_CLOSE);
			}
			count(dir, COUNTER_CT_ESTABLISHED, f.p.len);
			return TCX_PASS;
		}
		/* Reversed tuple made by the other hook of this endpoint: a reply. */
		__builtin_memcpy(rev.saddr, f.p.daddr, 16);
		__builtin_memcpy(rev.daddr, f.p.saddr, 16);
		rev.sport = f.p.dport;
		rev.dport = f.p.sport;
		rev.protocol = f.p.protocol;
		rev.family = f.p.family;
		rev.direction = dir == DIRECTION_EGRESS ? DIRECTION_INGRESS : DIRECTION_EGRESS;
		rev.ifindex = f.ifindex;
		ct = bpf_map_lookup_elem(&pal_ct, &rev);
		if (ct && ct->expires_ns > now) {
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
				d = closed(ct);
				emit(&f, &d, EVENT_KIND_CT_CLOSE);
			}
			count(dir, COUNTER_CT_REPLY, f.p.len);
			return TCX_PASS;
		}
	}

	/* A new flow. A pod may only open flows from its own addresses. Tracked packets skip
	 * this check safely: conntrack is keyed by the pod's interface, and every entry there
	 * was made by a packet that passed it (or by traffic addressed to the pod). */
	if (dir == DIRECTION_EGRESS && ipcache_identity(f.p.saddr, f.p.family) != ep.identity) {
		d.drop_reason = DROP_INVALID_SOURCE_IP;
		goto drop;
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

	/* Track openers and mid-stream packets the policy admits; a bare RST is forwarded
	 * without creating state. */
	if (f.p.trackable &&
	    !(f.p.protocol == IPPROTO_TCP && (f.p.tcp_flags & TCP_FLAG_RST))) {
		struct ct_entry e = {};
		e.rule_id = d.rule_id;
		e.revision = ep.revision;
		e.src_identity = f.src_identity;
		e.dst_identity = f.dst_identity;
		e.proxy_port = d.proxy_port;
		e.packets = 1;
		e.bytes = f.p.len;
		if (f.p.protocol == IPPROTO_TCP && (f.p.tcp_flags & TCP_FLAG_FIN))
			e.flags |= CT_F_SEEN_FIN;
		e.expires_ns = now + lifetime_ns(&f.p, e.flags);
		if (bpf_map_update_elem(&pal_ct, &fwd, &e, BPF_ANY)) {
			d.verdict = EVENT_VERDICT_DROPPED;
			d.drop_reason = DROP_CT_INSERT_FAILED;
			goto drop;
		}
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

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIRECTION_EGRESS);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIRECTION_INGRESS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
