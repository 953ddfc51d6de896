//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) for service backends: a lookup
//! table of a prime size `M` in which every backend owns about `M / N` slots, built so that
//! adding or removing one backend moves few slots of the others. A flow's slot is its tuple
//! hash modulo `M` ([`flow_slot`]); the datapath reads the same table from a map, so the
//! backend `policy-test` names for a 5-tuple is the one the kernel picks.
//!
//! Each backend has a preference list over the slots, `(offset + j * skip) mod M`, with
//! `offset` and `skip` from two hashes of its name; backends take turns claiming their next
//! free preferred slot until the table is full. Names (not list positions) seed the
//! preferences, so a backend keeps its preferences when others come and go.

use std::net::IpAddr;

use super::jhash::{jhash, jhash2};

/// The default table size: a prime, so every `skip` in `1..M` visits every slot. With `N`
/// backends each owns `M / N` slots, rounded; at 100 backends that is 163 or 164 slots, an
/// imbalance under 1%. The same prime other Maglev datapaths default to.
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// Table sizes accepted by [`Table::build`]: the primes a user may choose.
pub const TABLE_SIZES: &[u32] = &[251, 509, 1_021, 2_039, 4_093, 16_381, 65_521, 131_071];

/// Seeds of the two preference hashes (`offset`, `skip`) and of the flow hash.
const SEED_OFFSET: u32 = 0x4d61_676c; // "Magl"
const SEED_SKIP: u32 = 0x6576_2121; // "ev!!"
/// The seed of [`flow_hash`]; the datapath uses the same value.
pub const FLOW_HASH_SEED: u32 = 0x5061_6c69; // "Pali"

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("table size {0} is not one of the supported primes {TABLE_SIZES:?}")]
    Size(u32),
    #[error("{0} backends do not fit a table of {1} slots (at most one backend per slot)")]
    TooMany(usize, u32),
    #[error("backend name {0:?} appears twice")]
    Duplicate(String),
}

/// A built table: `slots[i]` is the index (into the backend list it was built from) of the
/// backend that owns slot `i`. Empty when there are no backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub size: u32,
    pub slots: Vec<u32>,
}

impl Table {
    /// Builds the table for `names` (one per backend, unique; e.g. `10.0.1.5:8080`).
    pub fn build<S: AsRef<str>>(names: &[S], size: u32) -> Result<Table, MaglevError> {
        if !TABLE_SIZES.contains(&size) {
            return Err(MaglevError::Size(size));
        }
        if names.len() > size as usize {
            return Err(MaglevError::TooMany(names.len(), size));
        }
        let mut seen = std::collections::HashSet::new();
        for n in names {
            if !seen.insert(n.as_ref()) {
                return Err(MaglevError::Duplicate(n.as_ref().to_string()));
            }
        }
        if names.is_empty() {
            return Ok(Table {
                size,
                slots: Vec::new(),
            });
        }
        let m = u64::from(size);
        let prefs: Vec<(u64, u64)> = names
            .iter()
            .map(|n| {
                let b = n.as_ref().as_bytes();
                let offset = u64::from(jhash(b, SEED_OFFSET)) % m;
                let skip = u64::from(jhash(b, SEED_SKIP)) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        const FREE: u32 = u32::MAX;
        let mut slots = vec![FREE; size as usize];
        // Backend i's n-th preference is (offset + n * skip) mod M; `cur[i]` is its next
        // one, stepped by one addition (no division per probe).
        let mut cur: Vec<u64> = prefs.iter().map(|(offset, _)| *offset).collect();
        let mut filled = 0usize;
        'fill: loop {
            for (i, (_, skip)) in prefs.iter().enumerate() {
                // The next preferred slot of backend i that is still free. Each backend's
                // preference list is a permutation of all slots (M prime, skip in 1..M), so
                // this ends.
                let step = |c: u64| {
                    if c + skip >= m {
                        c + skip - m
                    } else {
                        c + skip
                    }
                };
                let mut c = cur[i];
                while slots[c as usize] != FREE {
                    c = step(c);
                }
                slots[c as usize] = i as u32;
                cur[i] = step(c);
                filled += 1;
                if filled == size as usize {
                    break 'fill;
                }
            }
        }
        Ok(Table { size, slots })
    }

    /// The backend index owning `slot`, or `None` for an empty table.
    pub fn backend(&self, slot: u32) -> Option<u32> {
        self.slots.get(slot as usize).copied()
    }
}

/// The flow hash the datapath computes for a new flow to a service: `jhash2` over the
/// source and destination addresses (4 words each, IPv4 in the first), the ports (source in
/// the high half) and the protocol, with [`FLOW_HASH_SEED`].
pub fn flow_hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, protocol: u8) -> u32 {
    let words = |a: IpAddr| -> [u32; 4] {
        let b: [u8; 16] = match a {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                b
            }
            IpAddr::V6(v6) => v6.octets(),
        };
        // Words as the datapath loads them from the address bytes (native, little-endian).
        [0, 4, 8, 12].map(|i| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
    };
    let (s, d) = (words(src), words(dst));
    let k = [
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
        (u32::from(sport) << 16) | u32::from(dport),
        u32::from(protocol),
    ];
    jhash2(&k, FLOW_HASH_SEED)
}

/// The table slot of a flow.
pub fn flow_slot(
    table: &Table,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    protocol: u8,
) -> u32 {
    flow_hash(src, dst, sport, dport, protocol) % table.size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn owned(t: &Table, n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for s in &t.slots {
            c[*s as usize] += 1;
        }
        c
    }

    #[test]
    fn every_slot_is_owned_and_shares_are_even() {
        for n in [1, 2, 3, 7, 10, 100, 1000] {
            let t = Table::build(&names(n), DEFAULT_TABLE_SIZE).unwrap();
            assert_eq!(t.slots.len(), DEFAULT_TABLE_SIZE as usize);
            let c = owned(&t, n);
            let (lo, hi) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
            // Turn-taking gives each backend floor or ceil of M/N slots.
            let ideal = DEFAULT_TABLE_SIZE as usize / n;
            assert!(
                lo >= ideal && hi <= ideal + 1,
                "{n} backends: {lo}..{hi}, ideal {ideal}"
            );
        }
    }

    /// The population as the Maglev paper writes it (the n-th preference computed with a
    /// division), against which the stepped one is checked slot by slot.
    fn reference(names: &[String], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let prefs: Vec<(u64, u64)> = names
            .iter()
            .map(|n| {
                let b = n.as_bytes();
                (
                    u64::from(jhash(b, SEED_OFFSET)) % m,
                    u64::from(jhash(b, SEED_SKIP)) % (m - 1) + 1,
                )
            })
            .collect();
        let mut slots = vec![u32::MAX; size as usize];
        let mut next = vec![0u64; names.len()];
        let mut filled = 0;
        'fill: loop {
            for (i, (offset, skip)) in prefs.iter().enumerate() {
                let mut c = (offset + next[i] * skip) % m;
                while slots[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                slots[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == size as usize {
                    break 'fill;
                }
            }
        }
        slots
    }

    #[test]
    fn the_stepped_population_equals_the_papers() {
        for (n, size) in [
            (1, 251),
            (3, 251),
            (11, 16_381),
            (100, 16_381),
            (250, 251),
            (7, 65_521),
        ] {
            let t = Table::build(&names(n), size).unwrap();
            assert_eq!(
                t.slots,
                reference(&names(n), size),
                "{n} backends, {size} slots"
            );
        }
    }

    #[test]
    fn the_table_is_a_function_of_the_names() {
        let a = Table::build(&names(17), 4_093).unwrap();
        let b = Table::build(&names(17), 4_093).unwrap();
        assert_eq!(a, b);
    }

    /// Minimal disruption: removing one of N backends moves its own slots and few others.
    /// The paper's bound is loose; measured here it is a small fraction of the table.
    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        for n in [10usize, 50, 100] {
            let all = names(n);
            let before = Table::build(&all, DEFAULT_TABLE_SIZE).unwrap();
            let removed = n / 2;
            let rest: Vec<String> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, s)| s.clone())
                .collect();
            let after = Table::build(&rest, DEFAULT_TABLE_SIZE).unwrap();
            let mut moved_other = 0usize;
            for (b, a) in before.slots.iter().zip(&after.slots) {
                let was = &all[*b as usize];
                let now = &rest[*a as usize];
                if *b as usize != removed && was != now {
                    moved_other += 1;
                }
            }
            let frac = moved_other as f64 / f64::from(DEFAULT_TABLE_SIZE);
            eprintln!(
                "{n} backends, one removed: {frac:.4} of the table moved between staying backends"
            );
            // Slots of the removed backend must move (1/N); others may move a little.
            assert!(
                frac < 0.05,
                "{n} backends: {frac:.4} of slots of staying backends moved"
            );
        }
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(Table::build(&names(2), 1000), Err(MaglevError::Size(1000)));
        assert_eq!(
            Table::build(&names(300), 251),
            Err(MaglevError::TooMany(300, 251))
        );
        assert!(matches!(
            Table::build(&["a", "a"], 251),
            Err(MaglevError::Duplicate(_))
        ));
        assert!(Table::build::<&str>(&[], 251).unwrap().slots.is_empty());
    }

    #[test]
    fn flows_spread_over_backends() {
        let t = Table::build(&names(4), DEFAULT_TABLE_SIZE).unwrap();
        let mut hits = [0usize; 4];
        for port in 10_000u16..14_000 {
            let s = flow_slot(
                &t,
                "10.0.0.7".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
                port,
                80,
                6,
            );
            hits[t.backend(s).unwrap() as usize] += 1;
        }
        for h in hits {
            assert!((850..=1150).contains(&h), "{hits:?}");
        }
    }
}
