/* SPDX-License-Identifier: Apache-2.0 */
/* Bob Jenkins' lookup3 hash as the kernel spells it (include/linux/jhash.h), for the flow
 * hash that picks a Maglev slot. The policy core computes the same function in Rust
 * (policy-compiler/src/services/jhash.rs, maglev.rs flow_hash), so policy-test names the
 * backend the datapath picks; enforcer/tests/flow_hash.rs compares the two. */
#ifndef PALISADE_JHASH_H
#define PALISADE_JHASH_H

#include "common.h"
#include "parse.h"

#define PAL_JHASH_INITVAL 0xdeadbeef
/* The seed of the flow hash (maglev::FLOW_HASH_SEED). */
#define PAL_FLOW_HASH_SEED 0x50616c69

static __always_inline __u32 pal_rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

#define pal_jhash_mix(a, b, c)                                                                 \
	{                                                                                      \
		a -= c; a ^= pal_rol32(c, 4);  c += b;                                         \
		b -= a; b ^= pal_rol32(a, 6);  a += c;                                         \
		c -= b; c ^= pal_rol32(b, 8);  b += a;                                         \
		a -= c; a ^= pal_rol32(c, 16); c += b;                                         \
		b -= a; b ^= pal_rol32(a, 19); a += c;                                         \
		c -= b; c ^= pal_rol32(b, 4);  b += a;                                         \
	}

#define pal_jhash_final(a, b, c)                                                               \
	{                                                                                      \
		c ^= b; c -= pal_rol32(b, 14);                                                 \
		a ^= c; a -= pal_rol32(c, 11);                                                 \
		b ^= a; b -= pal_rol32(a, 25);                                                 \
		c ^= b; c -= pal_rol32(b, 16);                                                 \
		a ^= c; a -= pal_rol32(c, 4);                                                  \
		b ^= a; b -= pal_rol32(a, 14);                                                 \
		c ^= b; c -= pal_rol32(b, 24);                                                 \
	}

/* The flow hash of a parsed packet: jhash2 over the two addresses (four words each, as
 * stored), (sport << 16 | dport) in host order, and the protocol: ten words. */
static __always_inline __u32 pal_flow_hash(const struct pkt *p)
{
	__u32 k[10];

	__builtin_memcpy(k, p->saddr, 16);
	__builtin_memcpy(&k[4], p->daddr, 16);
	k[8] = ((__u32)bpf_ntohs(p->sport) << 16) | bpf_ntohs(p->dport);
	k[9] = p->protocol;
	__u32 a, b, c;
	a = b = c = PAL_JHASH_INITVAL + (10 << 2) + PAL_FLOW_HASH_SEED;
	a += k[0]; b += k[1]; c += k[2];
	pal_jhash_mix(a, b, c);
	a += k[3]; b += k[4]; c += k[5];
	pal_jhash_mix(a, b, c);
	a += k[6]; b += k[7]; c += k[8];
	pal_jhash_mix(a, b, c);
	a += k[9];
	pal_jhash_final(a, b, c);
	return c;
}

#endif
