//! The map-level evaluator: the datapath's lookup order (docs/datapath.md) performed on the
//! compiled maps. What this says is what the kernel does.

use std::net::IpAddr;

use crate::abi::{self, PolicyValue};
use crate::cidr::Cidr;
use crate::engine::l7::L7Set;
use crate::engine::{CompiledPolicy, Engine, EntryKey, port_mask, tiers};
use crate::eval::{Decision, Flow, FlowPeer, Verdict};
use crate::model::{Direction, Protocol};

pub fn evaluate(engine: &Engine, flow: &Flow) -> Verdict {
    let flow = flow.normalized(engine.cluster());
    let is_ep = |p: &FlowPeer| match p {
        FlowPeer::Endpoint(k) => engine.cluster().endpoints.contains_key(k),
        FlowPeer::Ip(_) => false,
    };
    let decide = |dir: Direction, subject: &FlowPeer, peer: &FlowPeer| {
        let FlowPeer::Endpoint(key) = subject else {
            return Decision::NotReady;
        };
        // Step 1: the endpoint and its policy.
        let Some(policy) = engine.endpoint_policy(key) else {
            return Decision::NotReady;
        };
        // Step 2: the peer's identity.
        let peer_id = match peer_identity(engine, peer) {
            Some(id) if id != abi::IDENTITY_UNKNOWN => id,
            _ => return Decision::InvalidIdentity,
        };
        // Steps 3-5.
        policy_decision(policy, peer_id, dir, flow.protocol, flow.port)
    };
    Verdict {
        egress: is_ep(&flow.src).then(|| decide(Direction::Egress, &flow.src, &flow.dst)),
        ingress: is_ep(&flow.dst).then(|| decide(Direction::Ingress, &flow.dst, &flow.src)),
    }
}

/// The identity the datapath would see for a peer: the ipcache entry of its address, or,
/// for an endpoint without an address (a workload representative), its own identity.
pub fn peer_identity(engine: &Engine, peer: &FlowPeer) -> Option<u32> {
    match peer {
        FlowPeer::Ip(ip) => ipcache_lookup(engine, ip),
        FlowPeer::Endpoint(k) => {
            let e = engine.cluster().endpoints.get(k)?;
            match e.ips.first() {
                // A host-network pod's address is its node's; it claims no ipcache entry.
                Some(ip) if !e.host_network => ipcache_lookup(engine, ip),
                _ => engine.endpoint_identity(k),
            }
        }
    }
}

/// Longest-prefix match in the ipcache.
pub fn ipcache_lookup(engine: &Engine, ip: &IpAddr) -> Option<u32> {
    let max = crate::cidr::max_len(ip);
    (0..=max)
        .rev()
        .find_map(|l| Cidr::new(*ip, l).and_then(|c| engine.ipcache().get(&c).copied()))
}

/// The HTTP rules the proxy applies on each side of a flow that the datapath redirects:
/// (egress, ingress), `None` where that side does not redirect. They belong to the entry the
/// datapath's lookup hit; a redirecting entry without a rule set (never written by the
/// compiler) gets an empty set, which denies every request.
pub fn l7_sets(engine: &Engine, flow: &Flow) -> (Option<L7Set>, Option<L7Set>) {
    let flow = flow.normalized(engine.cluster());
    let side = |dir: Direction, subject: &FlowPeer, peer: &FlowPeer| -> Option<L7Set> {
        let FlowPeer::Endpoint(key) = subject else {
            return None;
        };
        let policy = engine.endpoint_policy(key)?;
        let peer_id = peer_identity(engine, peer).filter(|id| *id != abi::IDENTITY_UNKNOWN)?;
        let d = dir.abi();
        let (key, value) = lpm_entry(policy, peer_id, d, flow.protocol.0, flow.port)
            .or_else(|| lpm_entry(policy, abi::IDENTITY_UNKNOWN, d, flow.protocol.0, flow.port))?;
        (value.verdict == abi::POLICY_VERDICT_REDIRECT)
            .then(|| policy.l7(&key).cloned().unwrap_or_default())
    };
    (
        side(Direction::Egress, &flow.src, &flow.dst),
        side(Direction::Ingress, &flow.dst, &flow.src),
    )
}

/// The HTTP rules of one endpoint policy map for a peer and port, when the lookup redirects.
pub fn l7_set_at(
    policy: &CompiledPolicy,
    peer: u32,
    dir: Direction,
    proto: Protocol,
    port: u16,
) -> Option<L7Set> {
    let d = dir.abi();
    let (key, value) = lpm_entry(policy, peer, d, proto.0, port)
        .or_else(|| lpm_entry(policy, abi::IDENTITY_UNKNOWN, d, proto.0, port))?;
    (value.verdict == abi::POLICY_VERDICT_REDIRECT)
        .then(|| policy.l7(&key).cloned().unwrap_or_default())
}

/// The policy lookup of the datapath (`policy_decide`) on one endpoint policy map.
pub fn policy_decision(
    policy: &CompiledPolicy,
    peer: u32,
    dir: Direction,
    proto: Protocol,
    port: u16,
) -> Decision {
    let d = dir.abi();
    // The exact-peer partition's hit is final; only a miss falls back to the any-peer
    // partition, whose hit is final too. A miss in both is default deny (fail closed).
    let hit = lpm(policy, peer, d, proto.0, port)
        .or_else(|| lpm(policy, abi::IDENTITY_UNKNOWN, d, proto.0, port));
    match hit {
        None => Decision::DefaultDeny {
            isolated_by: policy.isolated_by(dir).to_vec(),
        },
        // Default deny of a pod in an audit namespace: reported, forwarded.
        Some(v) if tiers::is_default_deny(&v) && v.flags & abi::POLICY_F_AUDIT != 0 => {
            Decision::Denied {
                rule: abi::RULE_ID_NONE,
                audit: true,
            }
        }
        Some(v) if tiers::is_default_deny(&v) => Decision::DefaultDeny {
            isolated_by: policy.isolated_by(dir).to_vec(),
        },
        Some(v) if v.rule_id == abi::RULE_ID_NOT_ISOLATED => Decision::NotIsolated,
        Some(v) => match v.verdict {
            abi::POLICY_VERDICT_ALLOW => Decision::Allowed { rule: v.rule_id },
            abi::POLICY_VERDICT_REDIRECT => Decision::Redirected {
                rule: v.rule_id,
                proxy_port: u16::from_be(v.proxy_port_be),
                audit: v.flags & abi::POLICY_F_AUDIT != 0,
            },
            abi::POLICY_VERDICT_DENY => Decision::Denied {
                rule: v.rule_id,
                audit: v.flags & abi::POLICY_F_AUDIT != 0,
            },
            // An unknown verdict in a map is corruption: fail closed, naming the rule.
            _ => Decision::Denied {
                rule: v.rule_id,
                audit: false,
            },
        },
    }
}

/// One LPM lookup in the policy map: longest (protocol, port prefix) first.
pub fn lpm(
    policy: &CompiledPolicy,
    identity: u32,
    direction: u8,
    protocol: u8,
    port: u16,
) -> Option<PolicyValue> {
    lpm_entry(policy, identity, direction, protocol, port).map(|(_, v)| v)
}

/// [`lpm`], with the key of the entry that matched.
pub fn lpm_entry(
    policy: &CompiledPolicy,
    identity: u32,
    direction: u8,
    protocol: u8,
    port: u16,
) -> Option<(EntryKey, PolicyValue)> {
    for bits in (0..=16u8).rev() {
        let key = EntryKey {
            identity,
            direction,
            protocol,
            port: port & port_mask(bits),
            prefixlen: abi::POLICY_PREFIX_ANY_PORT as u8 + bits,
        };
        if let Some(v) = policy.get(&key) {
            return Some((key, v));
        }
    }
    let key = EntryKey {
        identity,
        direction,
        protocol: 0,
        port: 0,
        prefixlen: abi::POLICY_PREFIX_ANY_PROTO as u8,
    };
    policy.get(&key).map(|v| (key, v))
}
