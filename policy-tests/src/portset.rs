//! Sets of (protocol, port) a direction allows, computed from the compiled policy maps.
//!
//! The datapath answers one (peer identity, protocol, port) at a time. To list whole port
//! sets without 3 x 65,535 lookups per pair, the entries of the two slots that can answer
//! (the peer's identity and identity 0, "any peer") are cut into elementary port
//! intervals at every entry boundary: inside such an interval every port matches the same
//! entries, so one [`maps::policy_decision`] per interval gives the answer for all of it.
//! The result is exactly what the map evaluator (and so the kernel) says port by port.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use policy_compiler::abi::{self, PolicyValue};
use policy_compiler::eval::maps;
use policy_compiler::{CompiledPolicy, Direction, EntryKey, Protocol};
use serde::Serialize;

/// The protocols NetworkPolicy ports can name, in output order (SCTP, TCP, UDP).
pub const PROTOCOLS: [Protocol; 3] = Protocol::POLICY;

/// Index of a protocol in [`PROTOCOLS`].
pub fn proto_index(p: Protocol) -> Option<usize> {
    PROTOCOLS.iter().position(|x| *x == p)
}

/// Allowed ports per protocol (TCP, UDP, SCTP; ports 1-65535), as sorted, merged,
/// inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    ranges: [Vec<(u16, u16)>; 3],
}

impl PortSet {
    pub fn empty() -> PortSet {
        PortSet::default()
    }

    pub fn all() -> PortSet {
        PortSet {
            ranges: [
                vec![(1, u16::MAX)],
                vec![(1, u16::MAX)],
                vec![(1, u16::MAX)],
            ],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.iter().all(Vec::is_empty)
    }

    /// Every port of TCP, UDP and SCTP: what `All Connections` means.
    pub fn is_all(&self) -> bool {
        self.ranges.iter().all(|r| r.as_slice() == [(1, u16::MAX)])
    }

    pub fn ranges(&self, proto: Protocol) -> &[(u16, u16)] {
        match proto_index(proto) {
            Some(i) => &self.ranges[i],
            None => &[],
        }
    }

    pub fn contains(&self, proto: Protocol, port: u16) -> bool {
        let r = self.ranges(proto);
        let i = r.partition_point(|(_, hi)| *hi < port);
        r.get(i).is_some_and(|(lo, _)| *lo <= port)
    }

    /// Appends a range above every range already present for the protocol, merging with an
    /// adjacent one.
    fn push(&mut self, proto: usize, lo: u16, hi: u16) {
        let v = &mut self.ranges[proto];
        match v.last_mut() {
            Some(last) if last.1 as u32 + 1 >= lo as u32 => last.1 = last.1.max(hi),
            _ => v.push((lo, hi)),
        }
    }

    /// Adds a range anywhere (used when building sets by hand, e.g. in tests).
    pub fn insert(&mut self, proto: Protocol, lo: u16, hi: u16) {
        let Some(i) = proto_index(proto) else { return };
        let mut v = std::mem::take(&mut self.ranges[i]);
        v.push((lo.max(1), hi));
        v.sort_unstable();
        for (lo, hi) in v {
            self.push(i, lo, hi);
        }
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        if self.is_all() {
            return other.clone();
        }
        if other.is_all() {
            return self.clone();
        }
        let mut out = PortSet::empty();
        for p in 0..3 {
            let (a, b) = (&self.ranges[p], &other.ranges[p]);
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                let lo = a[i].0.max(b[j].0);
                let hi = a[i].1.min(b[j].1);
                if lo <= hi {
                    out.push(p, lo, hi);
                }
                if a[i].1 < b[j].1 {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
        out
    }

    /// Whether the two sets share any (protocol, port).
    pub fn intersects(&self, other: &PortSet) -> bool {
        (0..3).any(|p| {
            let (a, b) = (&self.ranges[p], &other.ranges[p]);
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                if a[i].0.max(b[j].0) <= a[i].1.min(b[j].1) {
                    return true;
                }
                if a[i].1 < b[j].1 {
                    i += 1;
                } else {
                    j += 1;
                }
            }
            false
        })
    }

    /// `{"TCP": [[80, 80], [8000, 8999]], ...}` with only non-empty protocols.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (i, p) in PROTOCOLS.iter().enumerate() {
            if !self.ranges[i].is_empty() {
                let v: Vec<[u16; 2]> = self.ranges[i].iter().map(|(a, b)| [*a, *b]).collect();
                m.insert(p.to_string(), serde_json::json!(v));
            }
        }
        serde_json::Value::Object(m)
    }
}

/// netpol-analyzer's notation: `All Connections`, `No Connections`, or
/// `SCTP 1-65535,TCP 80,8080-8090,UDP 53` (protocols in alphabetical order).
impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("All Connections");
        }
        if self.is_empty() {
            return f.write_str("No Connections");
        }
        let mut first = true;
        for (i, p) in PROTOCOLS.iter().enumerate() {
            if self.ranges[i].is_empty() {
                continue;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{p} ")?;
            for (k, (lo, hi)) in self.ranges[i].iter().enumerate() {
                if k > 0 {
                    f.write_str(",")?;
                }
                if lo == hi {
                    write!(f, "{lo}")?;
                } else {
                    write!(f, "{lo}-{hi}")?;
                }
            }
        }
        Ok(())
    }
}

impl Serialize for PortSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

type Entries<'a> = &'a [(EntryKey, PolicyValue)];

/// The entries of one policy map for one direction, split by slot.
struct Slots<'a> {
    /// Identity 0: any peer.
    any: Entries<'a>,
    /// Peer identity -> its entries (identities in increasing order).
    peers: Vec<(u32, Entries<'a>)>,
}

fn slots(policy: &CompiledPolicy, dir: Direction) -> Slots<'_> {
    let d = dir.abi();
    let e = &policy.entries;
    let mut any: Entries<'_> = &[];
    let mut peers = Vec::new();
    let mut i = 0;
    while i < e.len() {
        let id = e[i].0.identity;
        let end = i + e[i..].partition_point(|(k, _)| k.identity == id);
        let group = &e[i..end];
        let lo = group.partition_point(|(k, _)| k.direction < d);
        let hi = group.partition_point(|(k, _)| k.direction <= d);
        if lo < hi {
            if id == abi::IDENTITY_UNKNOWN {
                any = &group[lo..hi];
            } else {
                peers.push((id, &group[lo..hi]));
            }
        }
        i = end;
    }
    Slots { any, peers }
}

/// The port range an entry covers for `proto`, if any.
fn entry_range(k: &EntryKey, proto: Protocol) -> Option<(u32, u32)> {
    if k.prefixlen as u32 == abi::POLICY_PREFIX_ANY_PROTO {
        return Some((1, u16::MAX as u32));
    }
    if k.protocol != proto.0 || (k.prefixlen as u32) < abi::POLICY_PREFIX_ANY_PORT {
        return None;
    }
    let (lo, hi) = k.port_range();
    Some(((lo as u32).max(1), hi as u32))
}

/// The allowed port set of the "any peer" answer: one decision per elementary interval of
/// the identity-0 slot.
fn any_peer_set(policy: &CompiledPolicy, dir: Direction, any: Entries<'_>) -> PortSet {
    let mut set = PortSet::empty();
    let mut cuts: Vec<u32> = Vec::new();
    for (pi, proto) in PROTOCOLS.iter().enumerate() {
        cuts.clear();
        cuts.extend([1, 1 << 16]);
        for (lo, hi) in any.iter().filter_map(|(k, _)| entry_range(k, *proto)) {
            cuts.extend([lo, hi + 1]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (start, end) = (w[0], w[1] - 1);
            if maps::policy_decision(policy, abi::IDENTITY_UNKNOWN, dir, *proto, start as u16)
                .allowed()
            {
                set.push(pi, start as u16, end as u16);
            }
        }
    }
    set
}

/// The allowed port set for a peer with entries of its own (`own`). Where none of them
/// covers a port, the peer's lookup misses and the datapath answers from the identity-0
/// slot, which `base` already holds; inside their coverage, one decision per elementary
/// interval of both slots.
fn peer_set(
    policy: &CompiledPolicy,
    peer: u32,
    dir: Direction,
    any: Entries<'_>,
    own: Entries<'_>,
    base: &PortSet,
) -> PortSet {
    let mut set = PortSet::empty();
    let mut covered: Vec<(u32, u32)> = Vec::new();
    let mut cuts: Vec<u32> = Vec::new();
    for (pi, proto) in PROTOCOLS.iter().enumerate() {
        covered.clear();
        covered.extend(own.iter().filter_map(|(k, _)| entry_range(k, *proto)));
        if covered.is_empty() {
            set.ranges[pi] = base.ranges[pi].clone();
            continue;
        }
        covered.sort_unstable();
        cuts.clear();
        cuts.extend([1, 1 << 16]);
        for (lo, hi) in covered
            .iter()
            .copied()
            .chain(any.iter().filter_map(|(k, _)| entry_range(k, *proto)))
        {
            cuts.extend([lo, hi + 1]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        // Merge the coverage to walk it alongside the intervals.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(covered.len());
        for &(lo, hi) in &covered {
            match merged.last_mut() {
                Some(last) if lo <= last.1 + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let mut m = 0;
        for w in cuts.windows(2) {
            let (start, end) = (w[0], w[1] - 1);
            while m < merged.len() && merged[m].1 < start {
                m += 1;
            }
            let inside = merged.get(m).is_some_and(|(lo, _)| *lo <= start);
            let allowed = if inside {
                maps::policy_decision(policy, peer, dir, *proto, start as u16).allowed()
            } else {
                base.contains(*proto, start as u16)
            };
            if allowed {
                set.push(pi, start as u16, end as u16);
            }
        }
    }
    set
}

/// One direction of one compiled policy map, answered for every peer identity at once:
/// peers without entries of their own get the "any peer" answer.
#[derive(Debug, Clone)]
pub struct DirectionAnswers<T> {
    pub any_peer: T,
    pub by_peer: HashMap<u32, T>,
}

impl<T> DirectionAnswers<T> {
    pub fn for_peer(&self, peer: u32) -> &T {
        self.by_peer.get(&peer).unwrap_or(&self.any_peer)
    }
}

/// Allowed port sets for every peer of one direction of a policy map.
pub fn direction_port_sets(
    policy: &CompiledPolicy,
    dir: Direction,
) -> DirectionAnswers<Arc<PortSet>> {
    let s = slots(policy, dir);
    let any_peer = Arc::new(any_peer_set(policy, dir, s.any));
    let by_peer = s
        .peers
        .iter()
        .map(|(id, own)| {
            let ps = peer_set(policy, *id, dir, s.any, own, &any_peer);
            let ps = if ps == *any_peer {
                any_peer.clone()
            } else {
                Arc::new(ps)
            };
            (*id, ps)
        })
        .collect();
    DirectionAnswers { any_peer, by_peer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_follows_netpol_analyzer() {
        assert_eq!(PortSet::all().to_string(), "All Connections");
        assert_eq!(PortSet::empty().to_string(), "No Connections");
        let mut s = PortSet::empty();
        s.insert(Protocol::UDP, 53, 53);
        s.insert(Protocol::TCP, 10054, 10054);
        s.insert(Protocol::TCP, 10053, 10053);
        s.insert(Protocol::SCTP, 1, 65535);
        assert_eq!(s.to_string(), "SCTP 1-65535,TCP 10053-10054,UDP 53");
        let mut t = PortSet::empty();
        t.insert(Protocol::TCP, 1, 65535);
        assert_eq!(t.to_string(), "TCP 1-65535");
    }

    #[test]
    fn intersection_and_membership() {
        let mut a = PortSet::empty();
        a.insert(Protocol::TCP, 1, 100);
        a.insert(Protocol::TCP, 200, 300);
        let mut b = PortSet::empty();
        b.insert(Protocol::TCP, 50, 250);
        b.insert(Protocol::UDP, 53, 53);
        let c = a.intersect(&b);
        assert_eq!(c.to_string(), "TCP 50-100,200-250");
        assert!(a.intersects(&b));
        assert!(c.contains(Protocol::TCP, 50));
        assert!(!c.contains(Protocol::TCP, 150));
        assert!(!c.contains(Protocol::UDP, 53));
        assert_eq!(PortSet::all().intersect(&b), b);
        assert!(!a.intersects(&PortSet::empty()));
    }
}
