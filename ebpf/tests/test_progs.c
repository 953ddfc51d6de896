/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Programs for the enforcer's tests only (built by enforcer/build.rs next to the datapath,
 * never loaded by the agent):
 *   csum_rewrite  rewrites addresses and ports with lib/csum.h, so a BPF_PROG_TEST_RUN test
 *                 (enforcer/tests/csum.rs) can check the checksums of what comes out;
 *   legacy_pass   stands in for an older agent's program in the upgrade test
 *                 (enforcer/tests/upgrade.rs); legacy_state, legacy_ct (the v1
 *                 conntrack layout) and legacy_ct_v2 (v2: the v3 layout, keys as the
 *                 opening hook saw the tuple) stand in for its maps;
 *   flow_hash     returns lib/jhash.h pal_flow_hash of the packet, which
 *                 enforcer/tests/flow_hash.rs compares with the policy core's Rust
 *                 flow hash (the Maglev slot of a flow must be the same on both sides);
 *   floor_lookup  the floor of an eBPF datapath in the datapath benchmark
 *                 (enforcer/benches/datapath.rs): one hash lookup keyed by the
 *                 interface, then TCX_NEXT; floor_ifaces holds the interfaces.
 */
#include "../lib/common.h"
#include "../lib/parse.h"
#include "../lib/csum.h"
#include "../lib/jhash.h"

/* IPv4: source 10.8.8.8, destination 10.9.9.9; IPv6: source fd08::8, destination fd09::9;
 * TCP/UDP: source port 4242, destination port 8080. Returns 0, or 1 on the first helper
 * that failed. */
SEC("classifier/ingress")
int csum_rewrite(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) != PARSE_OK)
		return 1;
	if (p.family == 4) {
		if (csum_set_addr4(skb, &p, 0, bpf_htonl(0x0a080808)) ||
		    csum_set_addr4(skb, &p, 1, bpf_htonl(0x0a090909)))
			return 1;
	} else {
		__u8 s6[16] = {0xfd, 0x08, [15] = 0x08};
		__u8 d6[16] = {0xfd, 0x09, [15] = 0x09};
		if (csum_set_addr6(skb, &p, 0, s6) || csum_set_addr6(skb, &p, 1, d6))
			return 1;
	}
	if (p.protocol == IPPROTO_TCP || p.protocol == IPPROTO_UDP) {
		if (csum_set_port(skb, &p, 0, bpf_htons(4242)) ||
		    csum_set_port(skb, &p, 1, bpf_htons(8080)))
			return 1;
	}
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} legacy_state SEC(".maps");

/* The ABI v1 conntrack layout (44-byte key, 48-byte entry), pinned as v1's pal_ct. */
struct legacy_ct_key {
	__u8 bytes[44];
};
struct legacy_ct_entry {
	__u8 bytes[48];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct legacy_ct_key);
	__type(value, struct legacy_ct_entry);
	__uint(max_entries, 1024);
} legacy_ct SEC(".maps");

/* ABI v2 conntrack: the layout of v3 (struct ct_key, struct ct_entry), keyed by the tuple as
 * the opening hook saw it; pinned as v2's pal_ct. */
struct legacy_ct_v2_entry {
	__u8 bytes[56];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct legacy_ct_key);
	__type(value, struct legacy_ct_v2_entry);
	__uint(max_entries, 1024);
} legacy_ct_v2 SEC(".maps");

SEC("classifier/ingress")
int legacy_pass(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&legacy_state, &k);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0; /* TCX_PASS, as ABI v1 programs return */
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* anything; the bench writes 1 */
	__uint(max_entries, 64);
} floor_ifaces SEC(".maps");

/* One map lookup per packet and nothing else: what any map-driven tc program pays at
 * least. Found or not, the packet goes on (TCX_NEXT), as with no program. */
SEC("classifier/ingress")
int floor_lookup(struct __sk_buff *skb)
{
	__u32 k = skb->ifindex;

	bpf_map_lookup_elem(&floor_ifaces, &k);
	return TCX_NEXT;
}

SEC("classifier/ingress")
int flow_hash(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) != PARSE_OK)
		return 0;
	return (int)pal_flow_hash(&p);
}

char _license[] SEC("license") = "Dual BSD/GPL";
