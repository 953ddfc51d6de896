//! The C header is the source of truth for the datapath ABI: every `#define` in it must
//! have a Rust constant of the same name and value in this crate. (BTF carries no
//! `#define`s; struct layouts and map definitions are compared with the built object's BTF
//! by `enforcer/tests/abi_btf.rs`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

use palisade_abi as abi;
use std::collections::BTreeMap;

fn header() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../include/palisade_abi.h");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches(['U', 'L']);
    if let Some(h) = s.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn rust_consts() -> BTreeMap<&'static str, i64> {
    BTreeMap::from([
        ("PALISADE_ABI_VERSION", abi::ABI_VERSION as i64),
        ("IDENTITY_UNKNOWN", abi::IDENTITY_UNKNOWN as i64),
        ("IDENTITY_HOST", abi::IDENTITY_HOST as i64),
        ("IDENTITY_WORLD", abi::IDENTITY_WORLD as i64),
        ("IDENTITY_UNMANAGED", abi::IDENTITY_UNMANAGED as i64),
        ("IDENTITY_HEALTH", abi::IDENTITY_HEALTH as i64),
        ("IDENTITY_INIT", abi::IDENTITY_INIT as i64),
        ("IDENTITY_REMOTE_NODE", abi::IDENTITY_REMOTE_NODE as i64),
        (
            "IDENTITY_KUBE_APISERVER",
            abi::IDENTITY_KUBE_APISERVER as i64,
        ),
        ("IDENTITY_INGRESS", abi::IDENTITY_INGRESS as i64),
        ("IDENTITY_WORLD_IPV4", abi::IDENTITY_WORLD_IPV4 as i64),
        ("IDENTITY_WORLD_IPV6", abi::IDENTITY_WORLD_IPV6 as i64),
        ("IDENTITY_CLUSTER_MIN", abi::IDENTITY_CLUSTER_MIN as i64),
        ("IDENTITY_CLUSTER_MAX", abi::IDENTITY_CLUSTER_MAX as i64),
        ("IDENTITY_CIDR_MIN", abi::IDENTITY_CIDR_MIN as i64),
        ("IDENTITY_CIDR_MAX", abi::IDENTITY_CIDR_MAX as i64),
        ("IDENTITY_TRANSIT_MIN", abi::IDENTITY_TRANSIT_MIN as i64),
        ("IDENTITY_TRANSIT_MAX", abi::IDENTITY_TRANSIT_MAX as i64),
        (
            "IDENTITY_ENDPOINT_TRANSIT_BASE",
            abi::IDENTITY_ENDPOINT_TRANSIT_BASE as i64,
        ),
        (
            "IDENTITY_ENDPOINT_TRANSIT_MASK",
            abi::IDENTITY_ENDPOINT_TRANSIT_MASK as i64,
        ),
        ("RULE_ID_NONE", abi::RULE_ID_NONE as i64),
        ("RULE_ID_NOT_ISOLATED", abi::RULE_ID_NOT_ISOLATED as i64),
        ("RULE_ID_HOST", abi::RULE_ID_HOST as i64),
        ("RULE_ID_FIRST_POLICY", abi::RULE_ID_FIRST_POLICY as i64),
        ("POLICY_VERDICT_ALLOW", abi::POLICY_VERDICT_ALLOW as i64),
        ("POLICY_VERDICT_DENY", abi::POLICY_VERDICT_DENY as i64),
        (
            "POLICY_VERDICT_REDIRECT",
            abi::POLICY_VERDICT_REDIRECT as i64,
        ),
        ("POLICY_F_AUDIT", abi::POLICY_F_AUDIT as i64),
        ("PRECEDENCE_ADMIN_MIN", abi::PRECEDENCE_ADMIN_MIN as i64),
        (
            "PRECEDENCE_NETWORK_POLICY",
            abi::PRECEDENCE_NETWORK_POLICY as i64,
        ),
        ("PRECEDENCE_BASELINE", abi::PRECEDENCE_BASELINE as i64),
        ("DIRECTION_INGRESS", abi::DIRECTION_INGRESS as i64),
        ("DIRECTION_EGRESS", abi::DIRECTION_EGRESS as i64),
        ("DROP_POLICY_DENIED", abi::DROP_POLICY_DENIED as i64),
        ("DROP_UNKNOWN_L4", abi::DROP_UNKNOWN_L4 as i64),
        ("DROP_CT_INSERT_FAILED", abi::DROP_CT_INSERT_FAILED as i64),
        ("DROP_INVALID_IDENTITY", abi::DROP_INVALID_IDENTITY as i64),
        ("DROP_POLICY_DENY", abi::DROP_POLICY_DENY as i64),
        ("DROP_EP_NOT_READY", abi::DROP_EP_NOT_READY as i64),
        ("DROP_FRAG_NOT_FOUND", abi::DROP_FRAG_NOT_FOUND as i64),
        ("DROP_FORBIDDEN_ICMP6", abi::DROP_FORBIDDEN_ICMP6 as i64),
        ("FRAG_LIFETIME_S", abi::FRAG_LIFETIME_S as i64),
        (
            "POLICY_PREFIX_ANY_PROTO",
            abi::POLICY_PREFIX_ANY_PROTO as i64,
        ),
        ("POLICY_PREFIX_ANY_PORT", abi::POLICY_PREFIX_ANY_PORT as i64),
        ("POLICY_PREFIX_FULL", abi::POLICY_PREFIX_FULL as i64),
        ("IPCACHE_PREFIX_FIXED", abi::IPCACHE_PREFIX_FIXED as i64),
        ("ENDPOINT_F_READY", abi::ENDPOINT_F_READY as i64),
        ("ENDPOINT_F_IPV4", abi::ENDPOINT_F_IPV4 as i64),
        ("ENDPOINT_F_IPV6", abi::ENDPOINT_F_IPV6 as i64),
        ("DROP_INVALID_SOURCE_IP", abi::DROP_INVALID_SOURCE_IP as i64),
        ("DROP_INVALID_PACKET", abi::DROP_INVALID_PACKET as i64),
        (
            "DROP_FRAG_NOT_SUPPORTED",
            abi::DROP_FRAG_NOT_SUPPORTED as i64,
        ),
        ("DROP_PROXY_UNAVAILABLE", abi::DROP_PROXY_UNAVAILABLE as i64),
        ("POLICY_PREFIX_SLOT", abi::POLICY_PREFIX_SLOT as i64),
        ("CT_F_REPLY_SEEN", abi::CT_F_REPLY_SEEN as i64),
        ("CT_F_SEEN_FIN", abi::CT_F_SEEN_FIN as i64),
        ("CT_F_SEEN_RST", abi::CT_F_SEEN_RST as i64),
        ("CT_F_PROXY", abi::CT_F_PROXY as i64),
        ("CT_F_OPENED_INGRESS", abi::CT_F_OPENED_INGRESS as i64),
        ("CT_F_PROXY_UPSTREAM", abi::CT_F_PROXY_UPSTREAM as i64),
        ("PROXY_MARK_MASK", abi::PROXY_MARK_MASK as i64),
        ("PROXY_MARK_LOCAL", abi::PROXY_MARK_LOCAL as i64),
        ("PROXY_MARK_LISTENER", abi::PROXY_MARK_LISTENER as i64),
        ("PROXY_MARK_UPSTREAM", abi::PROXY_MARK_UPSTREAM as i64),
        ("PROXY_F_READY", abi::PROXY_F_READY as i64),
        ("PROXY_F_INGRESS_L7", abi::PROXY_F_INGRESS_L7 as i64),
        ("CT_LIFETIME_TCP_SYN_S", abi::CT_LIFETIME_TCP_SYN_S as i64),
        ("CT_LIFETIME_TCP_S", abi::CT_LIFETIME_TCP_S as i64),
        (
            "CT_LIFETIME_TCP_CLOSE_S",
            abi::CT_LIFETIME_TCP_CLOSE_S as i64,
        ),
        ("CT_LIFETIME_NONTCP_S", abi::CT_LIFETIME_NONTCP_S as i64),
        (
            "EVENT_VERDICT_FORWARDED",
            abi::EVENT_VERDICT_FORWARDED as i64,
        ),
        ("EVENT_VERDICT_DROPPED", abi::EVENT_VERDICT_DROPPED as i64),
        ("EVENT_VERDICT_AUDIT", abi::EVENT_VERDICT_AUDIT as i64),
        (
            "EVENT_VERDICT_REDIRECTED",
            abi::EVENT_VERDICT_REDIRECTED as i64,
        ),
        ("EVENT_KIND_NEW_FLOW", abi::EVENT_KIND_NEW_FLOW as i64),
        ("EVENT_KIND_CT_CLOSE", abi::EVENT_KIND_CT_CLOSE as i64),
        ("EVENT_KIND_REVOKED", abi::EVENT_KIND_REVOKED as i64),
        ("EVENT_DROP_REPEAT_NS", abi::EVENT_DROP_REPEAT_NS as i64),
        ("COUNTER_DIR_STRIDE", abi::COUNTER_DIR_STRIDE as i64),
        ("COUNTER_MAX", abi::COUNTER_MAX as i64),
        ("COUNTER_FORWARDED", abi::COUNTER_FORWARDED as i64),
        ("COUNTER_REDIRECTED", abi::COUNTER_REDIRECTED as i64),
        ("COUNTER_AUDIT", abi::COUNTER_AUDIT as i64),
        ("COUNTER_CT_ESTABLISHED", abi::COUNTER_CT_ESTABLISHED as i64),
        ("COUNTER_CT_REPLY", abi::COUNTER_CT_REPLY as i64),
        ("COUNTER_EVENTS_LOST", abi::COUNTER_EVENTS_LOST as i64),
        ("COUNTER_PASS_NON_IP", abi::COUNTER_PASS_NON_IP as i64),
        ("COUNTER_PASS_NEIGHBOR", abi::COUNTER_PASS_NEIGHBOR as i64),
        ("COUNTER_REVOKED", abi::COUNTER_REVOKED as i64),
        ("COUNTER_ICMP_RELATED", abi::COUNTER_ICMP_RELATED as i64),
        ("COUNTER_LAST", abi::COUNTER_LAST as i64),
        ("DROP_NO_SERVICE", abi::DROP_NO_SERVICE as i64),
        ("LB_MAGLEV_MAX", abi::LB_MAGLEV_MAX as i64),
        ("LB_ID_MAX", abi::LB_ID_MAX as i64),
        ("LB_F_AFFINITY", abi::LB_F_AFFINITY as i64),
        (
            "LB_AFFINITY_TIMEOUT_SHIFT",
            abi::LB_AFFINITY_TIMEOUT_SHIFT as i64,
        ),
        ("LB_HAIRPIN_V4", u32::from(abi::LB_HAIRPIN_V4) as i64),
        ("LB_HAIRPIN_V6_HIGH", abi::LB_HAIRPIN_V6_HIGH as i64),
        ("LB_MARK_HAIRPIN", abi::LB_MARK_HAIRPIN as i64),
        ("CT_F_HAIRPIN", abi::CT_F_HAIRPIN as i64),
        ("CT_F_UPLINK", abi::CT_F_UPLINK as i64),
        ("DROP_MISSED_TAIL_CALL", abi::DROP_MISSED_TAIL_CALL as i64),
        ("TAIL_SLOTS", abi::TAIL_SLOTS as i64),
    ])
}

#[test]
fn every_define_has_an_equal_rust_constant() {
    let rust = rust_consts();
    let mut seen = 0;
    for line in header().lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#define") {
            continue;
        }
        let Some(name) = parts.next() else { continue };
        // Include guard and function-like helper macros carry no ABI value.
        if name == "PALISADE_ABI_H" || name.contains('(') {
            continue;
        }
        let value = parts
            .next()
            .and_then(parse_int)
            .unwrap_or_else(|| panic!("unparsable #define {name}"));
        let r = rust
            .get(name)
            .unwrap_or_else(|| panic!("#define {name} has no Rust mirror in abi.rs"));
        assert_eq!(*r, value, "{name}: C {value} vs Rust {r}");
        seen += 1;
    }
    assert_eq!(
        seen,
        rust.len(),
        "abi.rs mirrors constants the header does not define"
    );
}

/// The Hubble `DropReason` values and names (cilium `api/v1/flow/flow.proto`) of every code
/// Palisade emits. ABI v1 had 157 as `FRAG_NOT_SUPPORTED` and "endpoint not ready" as 204,
/// which Hubble calls `DROP_NO_EGRESS_IP`.
#[test]
fn drop_codes_and_names_are_hubbles() {
    let hubble = [
        (132, "INVALID_SOURCE_IP"),
        (133, "POLICY_DENIED"),
        (134, "INVALID_PACKET_DROPPED"),
        (140, "MISSED_TAIL_CALL"),
        (142, "UNKNOWN_L4_PROTOCOL"),
        (155, "CT_MAP_INSERTION_FAILED"),
        (157, "IP_FRAGMENTATION_NOT_SUPPORTED"),
        (158, "SERVICE_BACKEND_NOT_FOUND"),
        (171, "INVALID_IDENTITY"),
        (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND"),
        (176, "FORBIDDEN_ICMPV6_MESSAGE"),
        (180, "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL"),
        (181, "POLICY_DENY"),
        (203, "DROP_EP_NOT_READY"),
    ];
    let ours: Vec<(u32, &str)> = abi::DROP_REASONS.to_vec();
    assert_eq!(ours, hubble.to_vec());
    for (code, name) in hubble {
        assert_eq!(abi::drop_reason_name(code), name);
    }
    assert_eq!(abi::drop_reason_name(204), "DROP_REASON_UNKNOWN");
    // Every DROP_* of the header is in the table.
    let defined = header()
        .lines()
        .filter(|l| l.starts_with("#define DROP_"))
        .count();
    assert_eq!(defined, hubble.len());
}

#[test]
fn the_ipv6_hairpin_source_is_its_defines_words() {
    let o = abi::LB_HAIRPIN_V6.octets();
    let word = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    assert_eq!(
        [word(0), word(4), word(8), word(12)],
        [abi::LB_HAIRPIN_V6_HIGH, 0, 0, u32::from(abi::LB_HAIRPIN_V4)]
    );
}
