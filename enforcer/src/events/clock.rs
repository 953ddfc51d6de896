//! Event times and flow ids: the kernel's monotonic clock mapped to wall-clock time, and
//! UUID-shaped flow ids.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;

use super::FlowLogError;

/// A wall-clock instant (nanoseconds since the Unix epoch, may be negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallTime(pub i128);

impl WallTime {
    pub fn now() -> WallTime {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => WallTime(d.as_nanos() as i128),
            Err(e) => WallTime(-(e.duration().as_nanos() as i128)),
        }
    }

    /// RFC 3339 in UTC with nanoseconds, as protojson writes a `Timestamp`:
    /// `2024-05-01T12:34:56.123456789Z`.
    pub fn rfc3339(self) -> String {
        // One formatter for writer and readers: the record format's own.
        palisade_observe::time::rfc3339(self.0)
    }
}

/// Maps `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time with an offset taken
/// once: events carry the kernel's cheap clock, users read dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClock {
    /// realtime − monotonic, in nanoseconds.
    offset_ns: i128,
}

impl BootClock {
    /// Samples both clocks now. Call again ([`BootClock::refresh`]) after the wall clock
    /// is stepped if exact times matter.
    pub fn from_system() -> Result<BootClock, FlowLogError> {
        use nix::time::{ClockId, clock_gettime};
        let ns = |clock: &'static str, id: ClockId| {
            clock_gettime(id)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
                .map_err(|source| FlowLogError::Clock { clock, source })
        };
        let mono = ns("monotonic", ClockId::CLOCK_MONOTONIC)?;
        let real = ns("realtime", ClockId::CLOCK_REALTIME)?;
        Ok(BootClock {
            offset_ns: real - mono,
        })
    }

    /// A clock with a given offset (tests, replays).
    pub fn with_offset(offset_ns: i128) -> BootClock {
        BootClock { offset_ns }
    }

    pub fn refresh(&mut self) -> Result<(), FlowLogError> {
        *self = BootClock::from_system()?;
        Ok(())
    }

    pub fn to_wall(&self, ktime_ns: u64) -> WallTime {
        WallTime(self.offset_ns + ktime_ns as i128)
    }
}

// ---- flow ids ----------------------------------------------------------------------------

/// UUID-shaped flow ids: a random 128-bit seed per process with a counter folded into
/// its low bits, so ids are unique within a run and unlikely to repeat across runs.
#[derive(Debug, Clone)]
pub struct FlowIds {
    seed: u128,
    next: u64,
}

impl FlowIds {
    /// Seeded from `/dev/urandom`, else from the standard library's per-process random
    /// hasher keys.
    pub fn new() -> FlowIds {
        let mut buf = [0u8; 16];
        let seed = match File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)) {
            Ok(()) => u128::from_ne_bytes(buf),
            Err(_) => {
                let rs = std::collections::hash_map::RandomState::new();
                let mut a = rs.build_hasher();
                a.write_u64(std::process::id() as u64);
                let mut b = rs.build_hasher();
                b.write_u64(!(std::process::id() as u64));
                ((a.finish() as u128) << 64) | b.finish() as u128
            }
        };
        FlowIds::with_seed(seed)
    }

    pub fn with_seed(seed: u128) -> FlowIds {
        FlowIds { seed, next: 0 }
    }

    /// The next id, formatted as a version-4 UUID.
    pub fn next_id(&mut self) -> String {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        // The counter occupies the low 62 bits, below the variant bits, so consecutive ids
        // differ for 2^62 events.
        let mut v = self.seed ^ (n & ((1u64 << 62) - 1)) as u128;
        v = (v & !(0xf_u128 << 76)) | (0x4_u128 << 76); // version 4
        v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62); // RFC 4122 variant
        uuid_text(v)
    }
}

/// `v` as a UUID's text: 32 lowercase hex digits, dashes after the 8th, 12th, 16th, 20th.
fn uuid_text(v: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            s.push('-');
        }
        s.push(char::from(DIGITS[((v >> (124 - 4 * i)) & 0xf) as usize]));
    }
    s
}

impl Default for FlowIds {
    fn default() -> Self {
        FlowIds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text is `format!`'s hex, cut at the UUID's dashes.
    #[test]
    fn uuid_text_is_the_hex_cut_at_the_dashes() {
        let mut x: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for _ in 0..10_000 {
            let h = format!("{x:032x}");
            let want = format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            );
            assert_eq!(uuid_text(x), want);
            x = x
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .wrapping_add(0x9e37_79b9);
        }
        assert_eq!(uuid_text(0), "00000000-0000-0000-0000-000000000000");
        assert_eq!(uuid_text(u128::MAX), "ffffffff-ffff-ffff-ffff-ffffffffffff");
    }
}
