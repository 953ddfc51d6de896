//! The datapath's decision for a new flow at one hook, performed on a [`MapState`]: the
//! endpoint lookup, the source check (`from_pod`), the peer's ipcache identity and the
//! policy lookup (`policy_decide`). The same steps as `ebpf/tc_endpoint.c` and
//! `ebpf/lib/policy.h`; the update-plan tests judge every intermediate map state with it.

use std::net::IpAddr;

use crate::abi;
use crate::cidr::Cidr;
use crate::engine::{EntryKey, port_mask, tiers};

use super::{MapState, SlotEntries};

/// Which hook decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// Packets the pod sends: its egress policy, peer = destination.
    FromPod,
    /// Packets to the pod: its ingress policy, peer = source.
    ToPod,
}

/// The outcome of one hook for a new flow, in kernel terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookDecision {
    NotReady,
    InvalidSource,
    InvalidIdentity,
    /// `DROP_POLICY_DENIED`, rule 0.
    DefaultDeny,
    /// A map value: verdict, rule id, audit flag, proxy port.
    Value {
        verdict: u8,
        rule: u32,
        audit: bool,
        proxy_port: u16,
    },
}

/// Longest-prefix match of an address.
pub fn ipcache_lookup(state: &MapState, ip: &IpAddr) -> u32 {
    let max = crate::cidr::max_len(ip);
    (0..=max)
        .rev()
        .find_map(|l| Cidr::new(*ip, l).and_then(|c| state.ipcache.get(&c).copied()))
        .unwrap_or(abi::IDENTITY_UNKNOWN)
}

fn lpm(
    entries: &SlotEntries,
    identity: u32,
    dir: u8,
    proto: u8,
    port: u16,
) -> Option<abi::PolicyValue> {
    for bits in (0..=16u8).rev() {
        let key = EntryKey {
            identity,
            direction: dir,
            protocol: proto,
            port: port & port_mask(bits),
            prefixlen: abi::POLICY_PREFIX_ANY_PORT as u8 + bits,
        };
        if let Some(v) = entries.get(&key) {
            return Some(*v);
        }
    }
    entries
        .get(&EntryKey {
            identity,
            direction: dir,
            protocol: 0,
            port: 0,
            prefixlen: abi::POLICY_PREFIX_ANY_PROTO as u8,
        })
        .copied()
}

/// The decision at `hook` of the endpoint on `ifindex` for a new flow
/// `src -> dst`, protocol `proto`, destination port `port`.
pub fn decide(
    state: &MapState,
    ifindex: u32,
    hook: Hook,
    src: &IpAddr,
    dst: &IpAddr,
    proto: u8,
    port: u16,
) -> HookDecision {
    let Some(ep) = state.endpoints.get(&ifindex) else {
        return HookDecision::NotReady;
    };
    if ep.flags & abi::ENDPOINT_F_READY == 0 {
        return HookDecision::NotReady;
    }
    let (dir, peer_addr) = match hook {
        Hook::FromPod => (abi::DIRECTION_EGRESS, dst),
        Hook::ToPod => (abi::DIRECTION_INGRESS, src),
    };
    // The source check: one of the endpoint's own addresses, whatever identity the
    // ipcache gives it (`endpoint_owns` in ebpf/lib/endpoint.h).
    if hook == Hook::FromPod && !ep.owns(src) {
        return HookDecision::InvalidSource;
    }
    let peer = ipcache_lookup(state, peer_addr);
    if peer == abi::IDENTITY_UNKNOWN {
        return HookDecision::InvalidIdentity;
    }
    let Some(entries) = state.policy.get(&ep.policy_slot) else {
        return HookDecision::DefaultDeny;
    };
    let hit = lpm(entries, peer, dir, proto, port)
        .or_else(|| lpm(entries, abi::IDENTITY_UNKNOWN, dir, proto, port));
    match hit {
        None => HookDecision::DefaultDeny,
        // The terminal of a pod in an audit namespace is reported, not dropped.
        Some(v) if tiers::is_default_deny(&v) && v.flags & abi::POLICY_F_AUDIT == 0 => {
            HookDecision::DefaultDeny
        }
        Some(v) => HookDecision::Value {
            verdict: v.verdict,
            rule: v.rule_id,
            audit: v.flags & abi::POLICY_F_AUDIT != 0,
            proxy_port: u16::from_be(v.proxy_port_be),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::abi::EndpointInfo;

    /// The source check is by address (issue 10 item 16): another address of the same
    /// identity is not the endpoint's, and its own address passes whatever the ipcache
    /// says of it.
    #[test]
    fn the_source_check_accepts_only_the_endpoints_own_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut state = MapState::default();
        state.endpoints.insert(
            7,
            EndpointInfo {
                identity: 300,
                policy_slot: 1,
                flags: abi::ENDPOINT_F_READY,
                revision: 1,
                ..EndpointInfo::default()
            }
            .with_addresses(&[ip("10.0.0.1"), ip("fd00::1")]),
        );
        for (c, id) in [
            ("10.0.0.1/32", 400),
            ("10.0.0.4/32", 300),
            ("fd00::4/128", 300),
            ("0.0.0.0/0", abi::IDENTITY_WORLD_IPV4),
            ("::/0", abi::IDENTITY_WORLD_IPV6),
        ] {
            state.ipcache.insert(c.parse().unwrap(), id);
        }
        let from =
            |src: &str, dst: &str| decide(&state, 7, Hook::FromPod, &ip(src), &ip(dst), 6, 80);
        assert_eq!(from("10.0.0.4", "10.0.0.9"), HookDecision::InvalidSource);
        assert_eq!(from("fd00::4", "fd00::9"), HookDecision::InvalidSource);
        assert_ne!(from("10.0.0.1", "10.0.0.9"), HookDecision::InvalidSource);
        assert_ne!(from("fd00::1", "fd00::9"), HookDecision::InvalidSource);
        // to_pod has no source check.
        assert_ne!(
            decide(
                &state,
                7,
                Hook::ToPod,
                &ip("10.0.0.4"),
                &ip("10.0.0.1"),
                6,
                80
            ),
            HookDecision::InvalidSource
        );
    }
}
