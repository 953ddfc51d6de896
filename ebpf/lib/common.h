/* SPDX-License-Identifier: Apache-2.0 */
/* Kernel/toolchain glue the Debian 6.1 UAPI headers lack, and small helpers. */
#ifndef PALISADE_COMMON_H
#define PALISADE_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "palisade_abi.h"

/* TCX return codes (kernel enum tcx_action_base); the 6.1 UAPI headers have none.
 * A packet Palisade admits returns TCX_NEXT: later programs on the hook still see it (and
 * may drop it; with none, the kernel passes it). A drop returns TCX_DROP, which ends the
 * chain. See docs/datapath.md §5.1. */
#define TCX_NEXT -1
#define TCX_DROP 2

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define IPPROTO_ICMPV6_ 58

#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
/* ICMP errors that quote the packet they are about (lib/parse.h, lib/ct.h). */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETER_PROB 12
#define ICMPV6_DEST_UNREACH_ 1
#define ICMPV6_PKT_TOOBIG_ 2
#define ICMPV6_TIME_EXCEED_ 3
#define ICMPV6_PARAMPROB_ 4
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129
/* Link control the pod needs whatever its policy: MLD (130..132, 143) and neighbour
 * discovery (133..137); the limits are in lib/parse.h. */
#define ICMPV6_CTRL_FIRST 130
#define ICMPV6_ND_FIRST 133
#define ICMPV6_ROUTER_ADVERT 134
#define ICMPV6_CTRL_LAST 137
#define ICMPV6_MLD2_REPORT 143

#define IPV4_FRAG_MORE 0x2000
#define IPV4_FRAG_OFFSET 0x1fff
#define IPV6_FRAG_OFFSET 0xfff8
#define IPV6_FRAG_MORE 0x0001

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define NSEC_PER_SEC 1000000000ULL

/* Headers are parsed at most this far into the frame (IPv6 with four extension headers of
 * the largest size stays below it); lib/parse.h pkt_ptr bounds offsets with it. */
#define PKT_MAX_HDR_OFF 8192

/* Not in the 6.1 libbpf headers. Every map is pinned by name under the enforcer's
 * versioned bpffs directory, so a restarted enforcer adopts them (and their contents)
 * instead of starting empty. */
#ifndef LIBBPF_PIN_BY_NAME
#define LIBBPF_PIN_BY_NAME 1
#endif

#endif
