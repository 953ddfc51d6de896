//! Port targets of a rule and their LPM prefixes.

use crate::abi;

use super::EntryKey;

/// A port target of a rule before it meets a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PortPrefix {
    /// 0 = any protocol.
    pub(super) proto: u8,
    pub(super) port: u16,
    /// 0..=16 bits of port prefix.
    pub(super) bits: u8,
}

impl PortPrefix {
    pub(super) const ANY: PortPrefix = PortPrefix {
        proto: 0,
        port: 0,
        bits: 0,
    };

    pub(super) fn contains(&self, other: &PortPrefix) -> bool {
        if self.proto == 0 {
            return true;
        }
        self.proto == other.proto
            && self.bits <= other.bits
            && (other.port & port_mask(self.bits)) == self.port
    }

    pub(super) fn entry_key(&self, identity: u32, direction: u8) -> EntryKey {
        if self.proto == 0 {
            EntryKey {
                identity,
                direction,
                protocol: 0,
                port: 0,
                prefixlen: abi::POLICY_PREFIX_ANY_PROTO as u8,
            }
        } else {
            EntryKey {
                identity,
                direction,
                protocol: self.proto,
                port: self.port,
                prefixlen: abi::POLICY_PREFIX_ANY_PORT as u8 + self.bits,
            }
        }
    }
}

pub fn port_mask(bits: u8) -> u16 {
    if bits == 0 {
        0
    } else {
        u16::MAX << (16 - bits as u32)
    }
}

/// Splits an inclusive port range into aligned prefixes (at most 2*16 of them), so a range
/// costs a handful of LPM entries rather than one per port.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // Largest aligned block starting at lo that fits in [lo, hi].
        let mut size = if lo == 0 {
            1u32 << 16
        } else {
            1u32 << lo.trailing_zeros().min(16)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros() as u8;
        out.push((lo as u16, bits));
        lo += size;
    }
    out
}
