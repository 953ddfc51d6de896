//! IP prefixes, without a dependency: the compiler needs containment, ordering and the
//! ipcache key encoding, nothing more.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A network prefix with host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    pub input: String,
    pub reason: &'static str,
}

impl Cidr {
    /// Builds a prefix, clearing the bits beyond `len`.
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let max = max_len(&addr);
        if len > max {
            return None;
        }
        Some(Cidr {
            addr: mask(addr, len),
            len,
        })
    }

    pub fn host(addr: IpAddr) -> Cidr {
        let len = max_len(&addr);
        Cidr { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a prefix length, not a collection size"
    )]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    pub fn contains_ip(&self, ip: &IpAddr) -> bool {
        same_family(&self.addr, ip) && mask(*ip, self.len) == self.addr
    }

    /// `other` lies inside `self` (equal counts as inside).
    pub fn contains(&self, other: &Cidr) -> bool {
        same_family(&self.addr, &other.addr)
            && self.len <= other.len
            && mask(other.addr, self.len) == self.addr
    }

    /// First and last address as 128-bit integers (IPv4 in the low 32 bits).
    pub fn range(&self) -> (u128, u128) {
        let bits = max_len(&self.addr) as u32;
        let start = ip_to_u128(&self.addr);
        let host_bits = bits - self.len as u32;
        let span = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (start, start | span)
    }

    /// The address bytes as the ipcache key stores them (network order, IPv4 first 4 bytes).
    pub fn key_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        match self.addr {
            IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => out.copy_from_slice(&a.octets()),
        }
        out
    }

    /// The ipcache LPM key of this prefix: the prefix length as the kernel counts it and
    /// the 20 data bytes (family, padding, address).
    pub fn ipcache_key(&self) -> (u32, [u8; 20]) {
        let mut data = [0u8; 20];
        data[0] = if self.is_ipv4() { 4 } else { 6 };
        data[4..20].copy_from_slice(&self.key_bytes());
        (
            crate::abi::IPCACHE_PREFIX_FIXED + u32::from(self.len()),
            data,
        )
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Lenient parse (host bits are cleared); validation of user input happens in
    /// `validate`, which reports the apiserver's messages.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (a, l) = s.split_once('/').ok_or_else(|| err("missing '/'"))?;
        let addr: IpAddr = a.parse().map_err(|_| err("bad address"))?;
        let len: u8 = l.parse().map_err(|_| err("bad prefix length"))?;
        Cidr::new(addr, len).ok_or_else(|| err("prefix length too long"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub fn ip_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

pub fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn containment_is_per_family_and_prefix() {
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(c("0.0.0.0/0").contains(&c("1.2.3.4/32")));
        assert!(!c("0.0.0.0/0").contains(&c("::/0")));
        assert!(c("10.0.0.0/8").contains_ip(&"10.255.0.1".parse().unwrap_or_else(|_| panic!())));
        assert!(!c("10.0.0.0/8").contains_ip(&"11.0.0.1".parse().unwrap_or_else(|_| panic!())));
    }

    #[test]
    fn host_bits_are_cleared_and_range_is_inclusive() {
        assert_eq!(c("10.0.0.5/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("10.0.0.0/31").range(), (0x0a00_0000, 0x0a00_0001));
        assert_eq!(c("::/0").range(), (0, u128::MAX));
    }
}
