/* SPDX-License-Identifier: Apache-2.0 */
/* Every map of the datapath. All are pinned by name under the enforcer's versioned bpffs
 * directory, so a restarted enforcer adopts them (and their contents) instead of
 * starting empty. Sizes are defaults; the enforcer may resize at load time. */
#ifndef PALISADE_MAPS_H
#define PALISADE_MAPS_H

#include "common.h"

/* Not in the 6.1 libbpf headers. */
#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

/* host-side ifindex -> endpoint */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_endpoints SEC(".maps");

/* address prefix -> identity */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ipcache SEC(".maps");

/* (slot, peer identity, direction, protocol, port prefix) -> verdict */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ct SEC(".maps");

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
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_events SEC(".maps");

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

#endif
