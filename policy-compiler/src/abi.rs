//! Rust mirror of `ebpf/include/palisade_abi.h`, the datapath ABI.
//!
//! The C header is the source of truth. Every struct here is `#[repr(C)]` with explicit
//! padding, and the `const` blocks below fail the build if a size or offset drifts from the
//! header. A test (`tests/abi_header.rs`) parses the header's `#define`s and compares them
//! with the constants here.

use std::mem::{offset_of, size_of};

pub const ABI_VERSION: u32 = 1;

pub const IDENTITY_UNKNOWN: u32 = 0;
pub const IDENTITY_HOST: u32 = 1;
pub const IDENTITY_WORLD: u32 = 2;
pub const IDENTITY_UNMANAGED: u32 = 3;
pub const IDENTITY_HEALTH: u32 = 4;
pub const IDENTITY_INIT: u32 = 5;
pub const IDENTITY_REMOTE_NODE: u32 = 6;
pub const IDENTITY_KUBE_APISERVER: u32 = 7;
pub const IDENTITY_INGRESS: u32 = 8;
pub const IDENTITY_WORLD_IPV4: u32 = 9;
pub const IDENTITY_WORLD_IPV6: u32 = 10;
pub const IDENTITY_CLUSTER_MIN: u32 = 256;
pub const IDENTITY_CLUSTER_MAX: u32 = 0x00ff_ffff;
pub const IDENTITY_CIDR_MIN: u32 = 0x0100_0000;
pub const IDENTITY_CIDR_MAX: u32 = 0x01ff_ffff;

pub const RULE_ID_NONE: u32 = 0;
pub const RULE_ID_NOT_ISOLATED: u32 = 1;
pub const RULE_ID_FIRST_POLICY: u32 = 16;

pub const POLICY_VERDICT_ALLOW: u8 = 1;
pub const POLICY_VERDICT_DENY: u8 = 2;
pub const POLICY_VERDICT_REDIRECT: u8 = 3;

pub const POLICY_F_AUDIT: u8 = 0x01;

pub const PRECEDENCE_ADMIN_MIN: u16 = 0;
pub const PRECEDENCE_NETWORK_POLICY: u16 = 1000;
pub const PRECEDENCE_BASELINE: u16 = 2000;

pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

pub const DROP_POLICY_DENIED: u32 = 133;
pub const DROP_UNKNOWN_L4: u32 = 142;
pub const DROP_CT_INSERT_FAILED: u32 = 155;
pub const DROP_INVALID_IDENTITY: u32 = 171;
pub const DROP_POLICY_DENY: u32 = 181;
pub const DROP_EP_NOT_READY: u32 = 204;

pub const POLICY_PREFIX_ANY_PROTO: u32 = 40;
pub const POLICY_PREFIX_ANY_PORT: u32 = 48;
pub const POLICY_PREFIX_FULL: u32 = 64;

pub const IPCACHE_PREFIX_FIXED: u32 = 32;

pub const ENDPOINT_F_READY: u32 = 0x01;

/// `struct policy_key`: the LPM key of an endpoint policy map.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub identity: u32,
    pub direction: u8,
    pub protocol: u8,
    /// Network byte order.
    pub dport_be: u16,
}

/// `struct policy_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct PolicyValue {
    pub rule_id: u32,
    /// Network byte order.
    pub proxy_port_be: u16,
    pub precedence: u16,
    pub verdict: u8,
    pub flags: u8,
    pub pad: u16,
}

/// `struct ipcache_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// `struct ipcache_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpcacheValue {
    pub identity: u32,
    pub flags: u32,
}

/// `struct endpoint_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EndpointInfo {
    pub identity: u32,
    pub policy_slot: u32,
    pub flags: u32,
    pub revision: u32,
}

const _: () = {
    assert!(size_of::<PolicyKey>() == 12);
    assert!(offset_of!(PolicyKey, identity) == 4);
    assert!(offset_of!(PolicyKey, direction) == 8);
    assert!(offset_of!(PolicyKey, protocol) == 9);
    assert!(offset_of!(PolicyKey, dport_be) == 10);
    assert!(size_of::<PolicyValue>() == 12);
    assert!(offset_of!(PolicyValue, proxy_port_be) == 4);
    assert!(offset_of!(PolicyValue, precedence) == 6);
    assert!(offset_of!(PolicyValue, verdict) == 8);
    assert!(offset_of!(PolicyValue, flags) == 9);
    assert!(size_of::<IpcacheKey>() == 24);
    assert!(offset_of!(IpcacheKey, family) == 4);
    assert!(offset_of!(IpcacheKey, addr) == 8);
    assert!(size_of::<IpcacheValue>() == 8);
    assert!(size_of::<EndpointInfo>() == 16);
    assert!(offset_of!(EndpointInfo, revision) == 12);
};

impl PolicyKey {
    /// The bytes the kernel sees, padding zeroed.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.prefixlen.to_ne_bytes());
        b[4..8].copy_from_slice(&self.identity.to_ne_bytes());
        b[8] = self.direction;
        b[9] = self.protocol;
        b[10..12].copy_from_slice(&self.dport_be.to_ne_bytes());
        b
    }
}

impl PolicyValue {
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.rule_id.to_ne_bytes());
        b[4..6].copy_from_slice(&self.proxy_port_be.to_ne_bytes());
        b[6..8].copy_from_slice(&self.precedence.to_ne_bytes());
        b[8] = self.verdict;
        b[9] = self.flags;
        b
    }
}

/// Rank used when two lookups both hit: a larger rank wins at equal precedence.
pub fn verdict_rank(verdict: u8) -> u8 {
    match verdict {
        POLICY_VERDICT_DENY => 3,
        POLICY_VERDICT_REDIRECT => 2,
        POLICY_VERDICT_ALLOW => 1,
        _ => 0,
    }
}

/// The datapath's combine step (lookup order step 4): `true` when `a` beats `b`.
pub fn value_beats(a: &PolicyValue, b: &PolicyValue) -> bool {
    (
        a.precedence,
        std::cmp::Reverse(verdict_rank(a.verdict)),
        a.rule_id,
    ) < (
        b.precedence,
        std::cmp::Reverse(verdict_rank(b.verdict)),
        b.rule_id,
    )
}
