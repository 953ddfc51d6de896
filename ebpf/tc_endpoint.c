/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Palisade endpoint datapath: two tc programs on the host side of every pod veth.
 *   from_pod  (TCX ingress of the host veth): the pod's EGRESS policy, peer = destination
 *   to_pod    (TCX egress of the host veth):  the pod's INGRESS policy, peer = source
 * and one for the node: proxy_lookup (sk_lookup of the node's network namespace) hands
 * flows from_pod redirected to the L7 proxy's listener.
 *
 * Per packet, in this order (docs/datapath.md §3 numbers the same steps):
 *   1. parse (lib/parse.h): non-IP -> pass; IPv6 ND/MLD within its protocol limits -> pass
 *      (both counted, before the endpoint lookup: the pod needs them whatever its policy),
 *      except router-only messages (MLD query, router advertisement, redirect) from a pod.
 *   2. endpoint (lib/endpoint.h): missing or not READY -> DROP_EP_NOT_READY.
 *   3. malformed -> DROP_INVALID_PACKET; ND/MLD outside its limits, or router-only from a
 *      pod -> DROP_FORBIDDEN_ICMP6;
 *      a later fragment takes its first fragment's ports (lib/frag.h), unknown ->
 *      DROP_FRAG_NOT_FOUND; a first fragment's ports are remembered, failing that ->
 *      DROP_FRAG_NOT_SUPPORTED.
 *   3b. from_pod, after conntrack found no entry for the tuple as sent, TCP/UDP to a
 *      service frontend (lib/lb.h): translated to a backend (the flow's, or a new pick);
 *      no backend -> DROP_NO_SERVICE, a TCP SYN answered with a reset, a UDP datagram
 *      with an ICMP port unreachable (both passed by to_pod as judged); every later step
 *      sees the backend.
 *   4. conntrack hit (lib/ct.h; one lookup of the canonical key) on a flow opened at this
 *      hook -> pass, re-decided once after a policy change (revision re-check).
 *   5. the same hit on a flow opened at the other hook of this endpoint: a reply -> pass,
 *      same re-check; a reply on a translated flow gets the frontend as its source.
 *   5b. ICMP error quoting a packet of a flow tracked at this endpoint (lib/ct.h
 *      ct_related) -> pass, counted COUNTER_ICMP_RELATED, no entry created.
 *   6. new flow: from_pod with a source that is not one of the pod's own addresses
 *      (endpoint_info) -> DROP_INVALID_SOURCE_IP; peer identity (lib/identity.h), none -> DROP_INVALID_IDENTITY;
 *      policy lookup (lib/policy.h) decides. A REDIRECT passes at from_pod only while the
 *      L7 proxy is ready (pal_proxy), marked for local delivery to it; at to_pod only on the
 *      proxy's upstream leg (mark 0x0b00); else DROP_PROXY_UNAVAILABLE.
 *   6b. from_pod, admitted TCP to an endpoint on this node (by route lookup) whose ingress
 *      rules redirect it: redirected here while the proxy is ready (lib/proxy.h).
 *   4./5. also mark for local delivery: packets of a redirected flow (CT_F_PROXY) and
 *      replies to a proxy upstream (CT_F_PROXY_UPSTREAM).
 *   7. an admitted new flow is tracked (insert failure -> DROP_CT_INSERT_FAILED); every
 *      outcome is counted and reported once (lib/events.h).
 *   7b. an admitted new flow, or an entry re-validated under a new endpoint generation,
 *      teaches how the node delivers to this pod (lib/local.h); the fast path then hands
 *      established packets from_pod sends to a pod of this node, whose interface tracks
 *      the same tuple, straight to that pod's host veth, where to_pod judges them
 *      (docs/datapath.md §3.2).
 * A pass returns TCX_NEXT, so programs after Palisade on the hook still run; a drop returns
 * TCX_DROP, which ends the chain.
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/endpoint.h"
#include "lib/identity.h"
#include "lib/policy.h"
#include "lib/frag.h"
#include "lib/ct.h"
#include "lib/events.h"
#include "lib/proxy.h"
#include "lib/lb.h"
#include "lib/local.h"

/* Local delivery to the L7 proxy: the redirected flow's packets, and a server's replies to
 * a proxy upstream connection (docs/datapath.md §11). */
static __always_inline void mark_local(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~PROXY_MARK_MASK) | PROXY_MARK_LOCAL;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow_ctx f = {};
	struct decision d = {};
	struct ct_key fwd = {};
	__u8 kind = EVENT_KIND_NEW_FLOW;
	int hairpin = 0;
	int reject = 0;

	/* 1. */
	f.dir = dir;
	f.ifindex = skb->ifindex;
	int pr = parse(skb, &f.p);
	if (pr == PARSE_NOT_IP) {
		count(dir, COUNTER_PASS_NON_IP, skb->len);
		return TCX_NEXT;
	}
	if (pr == PARSE_NEIGHBOR) {
		if (dir == DIRECTION_EGRESS && icmp6_router_only(f.p.icmp_type)) {
			pr = PARSE_FORBIDDEN;
		} else {
			count(dir, COUNTER_PASS_NEIGHBOR, skb->len);
			return TCX_NEXT;
		}
	}
	ct_key_of(&fwd, &f.p, dir, f.ifindex);

	/* 2. The generation first (lib/endpoint.h): the endpoint read next is at least as new. */
	__u32 gen = endpoint_generation();
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

	/* 3. */
	if (pr == PARSE_BAD) {
		d.drop_reason = DROP_INVALID_PACKET;
		goto drop;
	}
	if (pr == PARSE_FORBIDDEN) {
		d.drop_reason = DROP_FORBIDDEN_ICMP6;
		goto drop;
	}
	__u64 now = bpf_ktime_get_coarse_ns();
	if (pr == PARSE_FRAGMENT) {
		if (frag_recover(&f.p, dir, f.ifindex, now)) {
			d.drop_reason = DROP_FRAG_NOT_FOUND;
			goto drop;
		}
		ct_key_of(&fwd, &f.p, dir, f.ifindex);
	} else if (f.p.frag == FRAG_FIRST && frag_remember(&f.p, dir, f.ifindex, now)) {
		d.drop_reason = DROP_FRAG_NOT_SUPPORTED;
		goto drop;
	}
	/* 4./5. The flow's entry (one lookup: the key is canonical). Looked up before 3b, so
	 * a packet of a flow to a pod address pays nothing for service translation. */
	struct ct_entry *ct = f.p.trackable ? ct_lookup(&fwd, now) : NULL;
	/* 3b. No entry for the tuple as sent: a packet to a service frontend is translated,
	 * then its flow's entry is the one of the translated tuple. */
	if (dir == DIRECTION_EGRESS && !ct) {
		__u32 id = 0;
		int lr = lb_translate(skb, &f.p, f.ifindex, &id);
		f.service = (__u16)id;
		if (lr == LB_NO_BACKEND || lr == LB_REWRITE_FAILED) {
			d.drop_reason = lr == LB_NO_BACKEND ? DROP_NO_SERVICE : DROP_INVALID_PACKET;
			/* A TCP opener is refused with a reset, a UDP datagram with an ICMP port
			 * unreachable (reported as the drop it is). */
			reject = lr == LB_NO_BACKEND &&
				 (lb_reject_syn(skb, &f.p) == 0 || lb_reject_udp(skb, &f.p) == 0);
			goto drop;
		}
		if (lr == LB_TRANSLATED) {
			/* A hairpin flow's source is rewritten below: the source check of step
			 * 6 is made here, on the pod's own address. */
			if (lb_same_addrs(&f.p) && !endpoint_owns(&ep, f.p.saddr, f.p.family)) {
				d.drop_reason = DROP_INVALID_SOURCE_IP;
				goto drop;
			}
			hairpin = lb_hairpin_source(skb, &f.p);
			if (hairpin < 0) {
				d.drop_reason = DROP_INVALID_PACKET;
				goto drop;
			}
			ct_key_of(&fwd, &f.p, dir, f.ifindex);
			ct = f.p.trackable ? ct_lookup(&fwd, now) : NULL;
		}
	}
	/* A hairpin reply that from_pod translated back (3b'): judged with its flow. */
	if (dir == DIRECTION_INGRESS && (skb->mark & PROXY_MARK_MASK) == LB_MARK_HAIRPIN) {
		skb->mark &= ~PROXY_MARK_MASK;
		count(dir, COUNTER_CT_REPLY, f.p.len);
		return TCX_NEXT;
	}
	const __u8 *peer_addr = dir == DIRECTION_EGRESS ? f.p.daddr : f.p.saddr;

	if (ct && ct_opener(ct) == dir) {
		/* 4. Same flow, same hook: established. */
		f.src_identity = ct->src_identity;
		f.dst_identity = ct->dst_identity;
		/* An entry of this hook made for another frontend, or for none, was made by an
		 * older flow on the same (translated) tuple: a client port reused within the
		 * closing lifetime once to a pod address and once through a service, or a
		 * frontend recreated under a new id. The decision (identity, port) is the
		 * same; the replies must be translated for the frontend this packet was sent
		 * to. */
		if (dir == DIRECTION_EGRESS && ct->rev_nat_index != f.service &&
		    !(ct->flags & CT_F_HAIRPIN)) {
			ct->rev_nat_index = f.service;
			ct->service_id = f.service;
		}
		f.service = ct->rev_nat_index;
		if (ct_recheck(ct, &fwd, &ep, peer_addr, dir, &f.p, f.p.dport, &d)) {
			count(dir, COUNTER_REVOKED, 0);
			kind = EVENT_KIND_REVOKED;
			goto drop;
		}
		/* Ready and current under this generation: the fast path may take it. */
		if (ct->ep_gen != gen) {
			ct->ep_gen = gen;
			local_learn(skb, &f, &ep, gen); /* 7b. */
		}
		if (ct_refresh(ct, &f.p, now)) {
			d = ct_closed(ct);
			emit(&f, &d, EVENT_KIND_CT_CLOSE);
		}
		if (ct->flags & CT_F_PROXY)
			mark_local(skb);
		count(dir, COUNTER_CT_ESTABLISHED, f.p.len);
		if (hairpin)
			return lb_send_back(skb, f.ifindex);
		return TCX_NEXT;
	}
	if (ct) {
		/* 5. Opened at the other hook of this endpoint: a reply. */
		f.src_identity = ct->dst_identity;
		f.dst_identity = ct->src_identity;
		/* Re-decided as it was opened: the other direction, the same peer, the
		 * port it was opened to. */
		if (ct_recheck(ct, &fwd, &ep, peer_addr, ct_opener(ct), &f.p, f.p.sport,
			       &d)) {
			count(dir, COUNTER_REVOKED, 0);
			kind = EVENT_KIND_REVOKED;
			goto drop;
		}
		if (ct->ep_gen != gen) {
			ct->ep_gen = gen;
			local_learn(skb, &f, &ep, gen); /* 7b. */
		}
		if (!(ct->flags & CT_F_REPLY_SEEN))
			ct->flags |= CT_F_REPLY_SEEN;
		if (ct_refresh(ct, &f.p, now)) {
			d = ct_closed(ct);
			emit(&f, &d, EVENT_KIND_CT_CLOSE);
		}
		if (ct->flags & CT_F_PROXY_UPSTREAM)
			mark_local(skb);
		f.service = ct->rev_nat_index;
		if (f.service && dir == DIRECTION_INGRESS && lb_reverse(skb, &f.p, f.service)) {
			d.verdict = EVENT_VERDICT_DROPPED;
			d.drop_reason = DROP_NO_SERVICE;
			goto drop;
		}
		if (dir == DIRECTION_EGRESS && (ct->flags & CT_F_HAIRPIN)) {
			/* The pod answering itself: back to its client side, translated,
			 * marked as judged for to_pod. */
			if (!f.service || lb_hairpin_reply(skb, &f.p, f.service, &ep)) {
				d.verdict = EVENT_VERDICT_DROPPED;
				d.drop_reason = DROP_NO_SERVICE;
				goto drop;
			}
			skb->mark = (skb->mark & ~PROXY_MARK_MASK) | LB_MARK_HAIRPIN;
			count(dir, COUNTER_CT_REPLY, f.p.len);
			return lb_send_back(skb, f.ifindex);
		}
		count(dir, COUNTER_CT_REPLY, f.p.len);
		return TCX_NEXT;
	}

	/* 5b. An ICMP error about a flow tracked at this endpoint (its quoted packet): passes,
	 * counted, creating no state. */
	if (f.p.icmp_error) {
		struct ct_key rel = {};
		if (ct_related(&rel, &f.p, dir, f.ifindex, ep.revision, now)) {
			count(dir, COUNTER_ICMP_RELATED, f.p.len);
			return TCX_NEXT;
		}
	}

	/* 6. A new flow. A pod may only open flows from its own addresses. Tracked packets
	 * skip this check safely: conntrack is keyed by the pod's interface, and every entry
	 * there was made by a packet that passed it (or by traffic addressed to the pod). */
	if (dir == DIRECTION_EGRESS && !hairpin && !endpoint_owns(&ep, f.p.saddr, f.p.family)) {
		d.drop_reason = DROP_INVALID_SOURCE_IP;
		goto drop;
	}
	__u32 peer = ipcache_identity(peer_addr, f.p.family);
	__u8 ct_hairpin = hairpin ? CT_F_HAIRPIN : 0;
	if (dir == DIRECTION_INGRESS && lb_is_hairpin_addr(&f.p, f.p.saddr)) {
		/* The hairpin source: the endpoint itself, when its own from_pod opened this
		 * flow (that entry carries the frontend for the replies); else no one. */
		struct ct_key hk = {};
		ct_key_of(&hk, &f.p, DIRECTION_EGRESS, f.ifindex);
		struct ct_entry *h = ct_lookup(&hk, now);
		peer = IDENTITY_UNKNOWN;
		if (h && (h->flags & CT_F_HAIRPIN)) {
			peer = ep.identity;
			f.service = h->rev_nat_index;
			ct_hairpin = CT_F_HAIRPIN;
		}
	}
	if (dir == DIRECTION_EGRESS) {
		f.dst_identity = peer;
	} else {
		f.src_identity = peer;
		/* A flow from outside that the uplink translated: named by its service. */
		if (!f.service)
			f.service = ct_uplink_service(&f.p, skb->ingress_ifindex, now);
	}
	if (peer == IDENTITY_UNKNOWN) {
		d.drop_reason = DROP_INVALID_IDENTITY;
		goto drop;
	}
	d = policy_decide(ep.policy_slot, peer, dir, f.p.protocol, policy_port(&f.p, f.p.dport),
			  skb->mark);
	if (d.drop_reason)
		goto drop;
	/* 6b. */
	if (dir == DIRECTION_EGRESS)
		policy_redirect_for_destination(skb, &d, &f.p, ep.identity,
						policy_port(&f.p, f.p.dport));

	/* 7. A flow the proxy's upstream opens is flagged, so that its replies are delivered
	 * to the proxy (step 5). */
	__u8 ct_flags = (dir == DIRECTION_INGRESS &&
				 (skb->mark & PROXY_MARK_MASK) == PROXY_MARK_UPSTREAM
			 ? CT_F_PROXY_UPSTREAM
			 : 0) |
			ct_hairpin;
	if (ct_should_track(&f.p) && ct_create(&fwd, &f.p, dir, &d, ep.revision, f.src_identity,
					      f.dst_identity, now, ct_flags, f.service, gen)) {
		d.verdict = EVENT_VERDICT_DROPPED;
		d.drop_reason = DROP_CT_INSERT_FAILED;
		goto drop;
	}
	if (d.verdict == EVENT_VERDICT_REDIRECTED)
		mark_local(skb);
	else if (!ct_hairpin)
		local_learn(skb, &f, &ep, gen); /* 7b. */
	count(dir,
	      d.verdict == EVENT_VERDICT_AUDIT	    ? COUNTER_AUDIT
	      : d.verdict == EVENT_VERDICT_REDIRECTED ? COUNTER_REDIRECTED
						      : COUNTER_FORWARDED,
	      f.p.len);
	emit(&f, &d, EVENT_KIND_NEW_FLOW);
	if (hairpin)
		return lb_send_back(skb, f.ifindex);
	return TCX_NEXT;

drop:
	count(dir, d.drop_reason, f.p.len);
	if (kind == EVENT_KIND_REVOKED || drop_is_new(&fwd))
		emit(&f, &d, kind);
	if (reject) {
		/* Made here for the pod: its to_pod passes it as already judged. */
		skb->mark = (skb->mark & ~PROXY_MARK_MASK) | LB_MARK_HAIRPIN;
		return lb_send_back(skb, f.ifindex);
	}
	return TCX_DROP;
}

/* The decision programs, by direction (palisade_abi.h, TAIL_SLOTS). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, TAIL_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_tail SEC(".maps");

/* Flows the node's own stack must deliver: to and from the L7 proxy. */
#define CT_F_LOCAL_ONLY (CT_F_PROXY | CT_F_PROXY_UPSTREAM)

/* Not a tc action (TCX_NEXT is -1, TCX_PASS 0, TCX_DROP 2, TCX_REDIRECT 7). */
#define FAST_DEFER 100

/* The fast path's drop (counted, reported unless it repeats), as handle() makes it. */
static __always_inline int fast_drop(const struct flow_ctx *f, const struct ct_key *k,
				     __u16 reason)
{
	struct decision d = {};

	d.verdict = EVENT_VERDICT_DROPPED;
	d.drop_reason = reason;
	count(f->dir, reason, f->p.len);
	if (drop_is_new(k))
		emit(f, &d, EVENT_KIND_NEW_FLOW);
	return TCX_DROP;
}

/* The first FIN or RST of a tracked flow, reported as handle() reports it. */
static __always_inline void fast_closed(const struct flow_ctx *f, const struct ct_entry *ct)
{
	struct decision d = ct_closed(ct);

	emit(f, &d, EVENT_KIND_CT_CLOSE);
}

/* The fast path (docs/datapath.md §3.1): a packet of a flow tracked at this endpoint that a
 * decision program validated under the current endpoint generation (pal_ep_gen: the
 * endpoint ready, the entry of its current revision), that opens nothing, needs its entry
 * and nothing else: steps 1, 2, 4 and 5 of handle() with the same outcome, in a program
 * small enough to stay in the instruction cache. Returns FAST_DEFER for every other packet, having
 * changed nothing: handle() (the decision program) then takes it from the start. A packet
 * from_pod sends to a frontend on a flow already translated and established for it is
 * translated here (step 3b's kept backend); a FIN or RST that closes the entry is reported
 * here. Deferred: anything that does not parse as a whole tracked packet (not IP, ND/MLD,
 * malformed, fragments, ICMP errors), no entry (new flows, a frontend's new flows or flows
 * whose backend left), an entry not validated under the current generation (any endpoint
 * written since: a missing or unready endpoint, a revision re-check), hairpin flows and
 * their marked replies, and a packet from_pod sends to a pod address on an entry made
 * through a service, or the reverse (handle() re-labels it). */
static __always_inline int fast(struct __sk_buff *skb, __u8 dir)
{
	struct flow_ctx f = {};
	struct ct_key k = {};

	if (parse(skb, &f.p) != PARSE_OK || !f.p.trackable || f.p.frag != FRAG_NONE ||
	    f.p.icmp_error)
		return FAST_DEFER;
	if (dir == DIRECTION_INGRESS && (skb->mark & PROXY_MARK_MASK) == LB_MARK_HAIRPIN)
		return FAST_DEFER;
	f.dir = dir;
	f.ifindex = skb->ifindex;
	/* No endpoint lookup: the entry's generation stands for it (lib/endpoint.h). */
	__u32 gen = endpoint_generation();
	if (!gen)
		return FAST_DEFER;
	ct_key_of(&k, &f.p, dir, f.ifindex);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct ct_entry *ct = ct_lookup(&k, now);
	struct lb_flow to = {};
	__u16 service = 0;
	/* A TCP opener (or a reset) without an entry is the decision's, without the service
	 * lookups below. */
	if (!ct && f.p.protocol == IPPROTO_TCP && (f.p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST)))
		return FAST_DEFER;
	if (!ct && dir == DIRECTION_EGRESS) {
		/* 3b for a flow already translated: the frontend, the backend its flow was
		 * given (still the frontend's at that index, not the pod itself) and the entry
		 * of the translated tuple, established here for this frontend; only then is the
		 * packet rewritten (lib/lb.h). */
		struct lb_service s = {};
		if (!lb_frontend(&f.p, &s) || !s.backends || !lb_flow_backend(&k, &s, &to) ||
		    lb_addr_eq(to.addr, f.p.saddr))
			return FAST_DEFER;
		ct_key_tuple(&k, f.p.saddr, to.addr, f.p.sport, to.port, f.p.protocol,
			     f.p.family, dir, f.ifindex);
		ct = ct_lookup(&k, now);
		if (!ct || ct_opener(ct) != dir || ct->rev_nat_index != s.id)
			return FAST_DEFER;
		service = s.id;
	}
	if (!ct || ct->ep_gen != gen || (ct->flags & CT_F_HAIRPIN))
		return FAST_DEFER;
	/* What handle() reports of the flow, should this packet close or drop it. */
	int reply = ct_opener(ct) != dir;
	f.revision = ct->revision;
	f.src_identity = reply ? ct->dst_identity : ct->src_identity;
	f.dst_identity = reply ? ct->src_identity : ct->dst_identity;
	if (!reply) {
		/* 4. */
		if (dir == DIRECTION_EGRESS && ct->rev_nat_index != service)
			return FAST_DEFER;
		f.service = ct->rev_nat_index;
		/* A failed rewrite is the one drop made here (nothing was deferred). */
		if (service && lb_rewrite(skb, &f.p, 1, to.addr, to.port))
			return fast_drop(&f, &k, DROP_INVALID_PACKET);
		if (ct_refresh(ct, &f.p, now))
			fast_closed(&f, ct);
		if (ct->flags & CT_F_PROXY)
			mark_local(skb);
		count(dir, COUNTER_CT_ESTABLISHED, f.p.len);
		if (dir == DIRECTION_EGRESS && !(ct->flags & CT_F_LOCAL_ONLY))
			return local_deliver(skb, &f.p, gen, &k, now);
		return TCX_NEXT;
	}
	/* 5. */
	if (!(ct->flags & CT_F_REPLY_SEEN))
		ct->flags |= CT_F_REPLY_SEEN;
	if (ct_refresh(ct, &f.p, now))
		fast_closed(&f, ct); /* as handle(): a reply's close names no service */
	if (ct->flags & CT_F_PROXY_UPSTREAM)
		mark_local(skb);
	f.service = ct->rev_nat_index;
	if (f.service && dir == DIRECTION_INGRESS && lb_reverse(skb, &f.p, f.service))
		return fast_drop(&f, &k, DROP_NO_SERVICE);
	count(dir, COUNTER_CT_REPLY, f.p.len);
	if (dir == DIRECTION_EGRESS && !(ct->flags & CT_F_LOCAL_ONLY))
		return local_deliver(skb, &f.p, gen, &k, now);
	return TCX_NEXT;
}

/* Entry of a hook: the fast path, else the decision program of the direction. A missing
 * decision program drops (fail closed); the loader fills pal_tail before attaching. */
static __always_inline int entry(struct __sk_buff *skb, __u8 dir)
{
	int r = fast(skb, dir);

	if (r != FAST_DEFER)
		return r;
	bpf_tail_call(skb, &pal_tail, dir);
	count(dir, DROP_MISSED_TAIL_CALL, skb->len);
	return TCX_DROP;
}

SEC("classifier/ingress")
int from_pod(struct __sk_buff *skb)
{
	return entry(skb, DIRECTION_EGRESS);
}

SEC("classifier/egress")
int to_pod(struct __sk_buff *skb)
{
	return entry(skb, DIRECTION_INGRESS);
}

/* The whole decision (handle()), tail-called by from_pod and to_pod. */
SEC("classifier/ingress_decide")
int from_pod_decide(struct __sk_buff *skb)
{
	return handle(skb, DIRECTION_EGRESS);
}

SEC("classifier/egress_decide")
int to_pod_decide(struct __sk_buff *skb)
{
	return handle(skb, DIRECTION_INGRESS);
}

/* The node's uplink (docs/datapath.md §13): traffic that enters the node from outside to a
 * service frontend on it (a node port on one of the node's addresses, an external or
 * load-balancer IP, a cluster IP routed to the node) is translated to a backend here, before
 * the stack routes it; the backend pod's to_pod then decides its ingress policy on the
 * client's own address (no source NAT). The uplink decides no policy and keeps state only
 * for the flows it translated: an entry of its own interface in pal_ct, opened at its
 * ingress, whose replies get the frontend back as their source at its egress.
 *   from_uplink (TCX ingress of the uplink): TCP/UDP to a frontend -> the flow's backend
 *     (lib/lb.h, as from_pod); no backend -> DROP_NO_SERVICE, a TCP SYN answered with a
 *     reset, a UDP datagram with an ICMP port unreachable; anything else passes untouched.
 *   to_uplink (TCX egress of the uplink): a reply on a translated flow -> source = the
 *     frontend; a translated flow whose frontend is gone -> DROP_NO_SERVICE. */
static __always_inline int uplink(struct __sk_buff *skb, __u8 dir)
{
	struct flow_ctx f = {};
	struct decision d = {};
	struct ct_key fwd = {};

	f.dir = DIRECTION_INGRESS;
	f.ifindex = skb->ifindex;
	int pr = parse(skb, &f.p);
	/* Not IP, neighbour discovery, malformed, a later fragment: the stack's to judge; no
	 * frontend is translated for them (docs/datapath.md §13, limits). */
	if (pr != PARSE_OK || !f.p.trackable || f.p.frag != FRAG_NONE ||
	    (f.p.protocol != IPPROTO_TCP && f.p.protocol != IPPROTO_UDP))
		return TCX_NEXT;
	__u64 now = bpf_ktime_get_coarse_ns();
	if (dir == DIRECTION_EGRESS) {
		ct_key_of(&fwd, &f.p, DIRECTION_EGRESS, f.ifindex);
		struct ct_entry *ct = ct_lookup(&fwd, now);
		if (!ct || ct_opener(ct) != DIRECTION_INGRESS)
			return TCX_NEXT;
		/* A reply of a flow the uplink opened (translated, redirected or both): the
		 * flow is established, its entry lives the established lifetime. */
		if (!(ct->flags & CT_F_REPLY_SEEN))
			ct->flags |= CT_F_REPLY_SEEN;
		ct_refresh(ct, &f.p, now);
		if (!ct->rev_nat_index)
			return TCX_NEXT;
		f.service = ct->rev_nat_index;
		f.src_identity = ct->dst_identity;
		f.dst_identity = ct->src_identity;
		if (lb_reverse(skb, &f.p, f.service)) {
			d.verdict = EVENT_VERDICT_DROPPED;
			d.drop_reason = DROP_NO_SERVICE;
			f.dir = DIRECTION_EGRESS;
			goto drop;
		}
		return TCX_NEXT;
	}
	__u32 id = 0;
	int lr = lb_translate(skb, &f.p, f.ifindex, &id);
	f.service = (__u16)id;
	/* Ingress HTTP rules of a pod of this node apply to traffic from outside too: while
	 * some endpoint has them and the proxy is ready, TCP flows are looked at here. */
	const __u32 l7_want = PROXY_F_READY | PROXY_F_INGRESS_L7;
	int l7 = f.p.protocol == IPPROTO_TCP && (proxy_flags() & l7_want) == l7_want;
	if (lr == LB_NONE && !l7)
		return TCX_NEXT;
	if (lr != LB_TRANSLATED && lr != LB_NONE) {
		f.src_identity = ipcache_identity(f.p.saddr, f.p.family);
		d.verdict = EVENT_VERDICT_DROPPED;
		d.drop_reason = lr == LB_NO_BACKEND ? DROP_NO_SERVICE : DROP_INVALID_PACKET;
		ct_key_of(&fwd, &f.p, DIRECTION_INGRESS, f.ifindex);
		if (lr == LB_NO_BACKEND &&
		    (lb_reject_syn(skb, &f.p) == 0 || lb_reject_udp(skb, &f.p) == 0)) {
			count(DIRECTION_INGRESS, d.drop_reason, f.p.len);
			if (drop_is_new(&fwd))
				emit(&f, &d, EVENT_KIND_NEW_FLOW);
			return lb_send_back(skb, f.ifindex);
		}
		goto drop;
	}
	ct_key_of(&fwd, &f.p, DIRECTION_INGRESS, f.ifindex);
	struct ct_entry *ct = ct_lookup(&fwd, now);
	if (ct) {
		/* The same translated tuple: a reused client port keeps this frontend. */
		if (lr == LB_TRANSLATED && ct->rev_nat_index != f.service) {
			ct->rev_nat_index = f.service;
			ct->service_id = f.service;
		}
		ct_refresh(ct, &f.p, now);
		if (ct->flags & CT_F_PROXY)
			mark_local(skb);
		return TCX_NEXT;
	}
	/* A new flow. A TCP opener to a pod of this node whose ingress rules redirect it goes
	 * to the L7 proxy (step 6b, with the client's identity); anything else the uplink
	 * opens no flow for but a translation. Mid-stream packets without an entry are left to
	 * the destination's to_pod, which drops a REDIRECT (fail closed). */
	f.src_identity = ipcache_identity(f.p.saddr, f.p.family);
	f.dst_identity = ipcache_identity(f.p.daddr, f.p.family);
	if (l7 && (f.p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		policy_redirect_for_destination(skb, &d, &f.p, f.src_identity,
						policy_port(&f.p, f.p.dport));
	if (lr == LB_NONE && d.verdict != EVENT_VERDICT_REDIRECTED)
		return TCX_NEXT;
	if (d.verdict != EVENT_VERDICT_REDIRECTED)
		d.verdict = EVENT_VERDICT_FORWARDED;
	/* A translation (or redirect) that cannot be tracked would leave its replies
	 * untranslated (or its packets undelivered): the flow is refused now, and said. */
	if (ct_create(&fwd, &f.p, DIRECTION_INGRESS, &d, 0, f.src_identity, f.dst_identity,
		      now, CT_F_UPLINK, f.service, 0)) {
		d.verdict = EVENT_VERDICT_DROPPED;
		d.drop_reason = DROP_CT_INSERT_FAILED;
		goto drop;
	}
	if (d.verdict == EVENT_VERDICT_REDIRECTED) {
		mark_local(skb);
		count(DIRECTION_INGRESS, COUNTER_REDIRECTED, f.p.len);
		emit(&f, &d, EVENT_KIND_NEW_FLOW);
	}
	return TCX_NEXT;

drop:
	count(f.dir, d.drop_reason, f.p.len);
	if (drop_is_new(&fwd))
		emit(&f, &d, EVENT_KIND_NEW_FLOW);
	return TCX_DROP;
}

SEC("classifier/uplink_ingress")
int from_uplink(struct __sk_buff *skb)
{
	return uplink(skb, DIRECTION_INGRESS);
}

SEC("classifier/uplink_egress")
int to_uplink(struct __sk_buff *skb)
{
	return uplink(skb, DIRECTION_EGRESS);
}

/* The node namespace's socket lookup (lib/proxy.h): a redirected flow's SYN, delivered
 * locally by its mark, is given to the L7 proxy's listener. Everything else, and every flow
 * while no listener is in pal_proxy_socks, is left to the stack. */
SEC("sk_lookup")
int proxy_lookup(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	struct bpf_sock *sk;

	if (!proxy_flow(ctx))
		return SK_PASS;
	sk = bpf_map_lookup_elem(&pal_proxy_socks, &zero);
	if (!sk)
		return SK_PASS;
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
