/* SPDX-License-Identifier: Apache-2.0 */
/* Identities of addresses: one LPM trie for both families. Owns pal_ipcache. */
#ifndef PALISADE_IDENTITY_H
#define PALISADE_IDENTITY_H

#include "common.h"

/* address prefix -> identity */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ipcache SEC(".maps");

/* Step 2: identity of an address; 0 when the ipcache has no covering prefix. */
static __always_inline __u32 ipcache_identity(const __u8 *addr, __u8 family)
{
	struct ipcache_key k = {};

	k.prefixlen = IPCACHE_PREFIX_FIXED + (family == 4 ? 32 : 128);
	k.family = family;
	if (family == 4)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	struct ipcache_value *v = bpf_map_lookup_elem(&pal_ipcache, &k);
	return v ? v->identity : IDENTITY_UNKNOWN;
}

#endif
