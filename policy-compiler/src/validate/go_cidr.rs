//! CIDR parsing with Go semantics: a reimplementation of Go's pre-1.17 ("sloppy")
//! `net.ParseCIDR`, compared with what `net/netip` would accept to find the values strict
//! validation rejects, and Go's formatting of addresses.

use super::*;

/// A CIDR as Go's lenient `net.ParseCIDR` (k8s.io/utils `ParseCIDRSloppy`) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GoCidr {
    /// The address as written, in 16-byte form (IPv4 literals stored IPv4-mapped, as Go does).
    pub(super) addr: [u8; 16],
    /// Written as an IPv4 literal: Go then uses a 4-byte mask (prefix ≤ 32); otherwise 16.
    pub(super) v4_literal: bool,
    pub(super) bits: u8,
    /// Some octet, hex field or the prefix length has leading zeros: the lenient parser takes
    /// it, `netip.ParsePrefix` does not. That is the only difference between the two parsers.
    pub(super) leading_zeros: bool,
}

impl GoCidr {
    pub(super) fn parse(s: &str) -> Option<GoCidr> {
        let b = s.as_bytes();
        let slash = b.iter().position(|c| *c == b'/')?;
        let (addr_part, mask_part) = (&b[..slash], &b[slash + 1..]);

        let mut leading_zeros = false;
        let (addr, v4_literal) = match parse_ipv4_sloppy(addr_part, &mut leading_zeros) {
            Some(v4) => (ipv4_mapped(v4), true),
            None => {
                // A failed IPv4 attempt may have flagged something; start over.
                leading_zeros = false;
                (parse_ipv6_sloppy(addr_part, &mut leading_zeros)?, false)
            }
        };
        let (bits, used, ok) = dtoi(mask_part);
        let max_bits = if v4_literal { 32 } else { 128 };
        if !ok || used != mask_part.len() || bits > max_bits {
            return None;
        }
        if used > 1 && mask_part.first() == Some(&b'0') {
            leading_zeros = true;
        }
        Some(GoCidr {
            addr,
            v4_literal,
            bits: u8::try_from(bits).ok()?,
            leading_zeros,
        })
    }

    /// The mask over the 16-byte form; for IPv4 literals the first 96 bits are kept so the
    /// mapped prefix survives masking.
    pub(super) fn mask16(&self) -> [u8; 16] {
        let ones = if self.v4_literal {
            96 + u32::from(self.bits)
        } else {
            u32::from(self.bits)
        };
        prefix_mask(ones)
    }

    pub(super) fn network16(&self) -> [u8; 16] {
        let mask = self.mask16();
        let mut net = self.addr;
        for (byte, m) in net.iter_mut().zip(mask) {
            *byte &= m;
        }
        net
    }

    pub(super) fn has_host_bits(&self) -> bool {
        self.network16() != self.addr
    }

    /// `netip.Addr.Is4In6` on an address written as IPv6.
    pub(super) fn is_4in6(&self) -> bool {
        !self.v4_literal && is_ipv4_mapped(&self.addr)
    }

    /// The strict-validation failure, checked in upstream's order.
    pub(super) fn strict_problem(&self) -> Option<&'static str> {
        if self.leading_zeros {
            Some("must not have leading 0s in IP or prefix length")
        } else if self.is_4in6() {
            Some("must not have an IPv4-mapped IPv6 address")
        } else if self.has_host_bits() {
            Some("must not have bits set beyond the prefix length")
        } else {
            None
        }
    }

    /// `net.IPNet.Contains(ip)` for `ip` in 16-byte form. Go compares in 4 bytes when both
    /// sides are IPv4 or IPv4-mapped and refuses mixed widths, which is why an IPv6 except is
    /// never inside an IPv4 cidr while an IPv4-mapped one can be.
    pub(super) fn contains(&self, ip: &[u8; 16]) -> bool {
        let net = self.network16();
        let net_is_4 = is_ipv4_mapped(&net);
        if net_is_4 != is_ipv4_mapped(ip) {
            return false;
        }
        // A 16-byte mask over a 4-byte network keeps only its last 4 bytes (`m[12:]`).
        let mask = self.mask16();
        let start = if net_is_4 { 12 } else { 0 };
        (start..16).all(|i| net[i] & mask[i] == ip[i] & mask[i])
    }

    /// `net.IPNet.String()`: IPv4 (or IPv4-mapped) networks print dotted with the prefix
    /// re-based to 32 bits.
    pub(super) fn go_network_string(&self) -> String {
        let net = self.network16();
        if is_ipv4_mapped(&net) {
            let bits = if self.v4_literal {
                self.bits
            } else {
                self.bits.saturating_sub(96)
            };
            format!("{}/{bits}", format_ipv4(&net))
        } else {
            format!("{}/{}", format_ipv6(&net), self.bits)
        }
    }

    /// `GetWarningsForCIDR`, without the leading `<path>: `.
    pub(super) fn warnings(&self, value: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.has_host_bits() {
            let total = if self.v4_literal { 32 } else { 128 };
            let single = format!("{}/{total}", go_ip_string(&self.addr));
            warnings.push(format!(
                "CIDR value {} is ambiguous in this context (should be {} or {}?)",
                quote(value),
                quote(&self.go_network_string()),
                quote(&single)
            ));
        }
        if self.leading_zeros || self.is_4in6() {
            warnings.push(format!(
                "non-standard CIDR value {} will be considered invalid in a future Kubernetes release: use {}",
                quote(value),
                quote(&self.go_network_string())
            ));
        }
        if warnings.is_empty() && !self.v4_literal {
            // `netip.Prefix.String()` keeps host bits and prints RFC 5952 text.
            let canonical = format!("{}/{}", format_ipv6(&self.addr), self.bits);
            if canonical != value {
                warnings.push(format!(
                    "IPv6 CIDR value {} should be in RFC 5952 canonical format ({})",
                    quote(value),
                    quote(&canonical)
                ));
            }
        }
        warnings
    }
}

/// Go's `big` sentinel in `dtoi`/`xtoi`: numbers stop being accumulated there.
pub(super) const GO_BIG: u32 = 0x00FF_FFFF;

/// Go's `dtoi`: leading decimal digits of `s` (leading zeros allowed) → (value, digits, ok).
pub(super) fn dtoi(s: &[u8]) -> (u32, usize, bool) {
    let mut n: u32 = 0;
    let mut i = 0;
    while let Some(c) = s.get(i).filter(|c| c.is_ascii_digit()) {
        n = n * 10 + u32::from(c - b'0');
        if n >= GO_BIG {
            return (GO_BIG, i, false);
        }
        i += 1;
    }
    (n, i, i > 0)
}

/// Go's `xtoi`: leading hex digits of `s` → (value, digits, ok).
pub(super) fn xtoi(s: &[u8]) -> (u32, usize, bool) {
    let mut n: u32 = 0;
    let mut i = 0;
    while let Some(d) = s.get(i).and_then(|c| char::from(*c).to_digit(16)) {
        n = n * 16 + d;
        if n >= GO_BIG {
            return (0, i, false);
        }
        i += 1;
    }
    (n, i, i > 0)
}

/// Go 1.16 `parseIPv4`: exactly four decimal octets ≤ 255, leading zeros allowed (and
/// flagged), nothing after.
pub(super) fn parse_ipv4_sloppy(mut s: &[u8], leading_zeros: &mut bool) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    for (i, octet) in out.iter_mut().enumerate() {
        if i > 0 {
            s = s.strip_prefix(b".")?;
        }
        let (n, used, ok) = dtoi(s);
        if !ok || n > 0xFF {
            return None;
        }
        if used > 1 && s.first() == Some(&b'0') {
            *leading_zeros = true;
        }
        *octet = u8::try_from(n).ok()?;
        s = &s[used..];
    }
    s.is_empty().then_some(out)
}

/// Go 1.16 `parseIPv6` (no zone): hex fields of any length whose value fits 16 bits (more
/// than four digits is flagged as leading zeros), one "::", an optional trailing IPv4.
pub(super) fn parse_ipv6_sloppy(mut s: &[u8], leading_zeros: &mut bool) -> Option<[u8; 16]> {
    let mut ip = [0u8; 16];
    let mut ellipsis: Option<usize> = None;

    if s.starts_with(b"::") {
        ellipsis = Some(0);
        s = &s[2..];
        if s.is_empty() {
            return Some(ip);
        }
    }

    let mut i = 0;
    while i < 16 {
        let (n, used, ok) = xtoi(s);
        if !ok || n > 0xFFFF {
            return None;
        }

        // A dot after the field means the rest is an embedded IPv4 address.
        if s.get(used) == Some(&b'.') {
            if ellipsis.is_none() && i != 12 {
                return None;
            }
            if i + 4 > 16 {
                return None;
            }
            let v4 = parse_ipv4_sloppy(s, leading_zeros)?;
            ip[i..i + 4].copy_from_slice(&v4);
            s = &[];
            i += 4;
            break;
        }

        if used > 4 {
            *leading_zeros = true;
        }
        let [hi, lo] = u16::try_from(n).ok()?.to_be_bytes();
        ip[i] = hi;
        ip[i + 1] = lo;
        i += 2;

        s = &s[used..];
        if s.is_empty() {
            break;
        }
        if s[0] != b':' || s.len() == 1 {
            return None;
        }
        s = &s[1..];
        if s[0] == b':' {
            if ellipsis.is_some() {
                return None;
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }

    if !s.is_empty() {
        return None;
    }
    if i < 16 {
        // Expand the "::" to the missing zero fields.
        let at = ellipsis?;
        let gap = 16 - i;
        ip.copy_within(at..i, at + gap);
        ip[at..at + gap].fill(0);
    } else if ellipsis.is_some() {
        // "::" must stand for at least one zero field.
        return None;
    }
    Some(ip)
}

pub(super) fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut ip = [0u8; 16];
    ip[10] = 0xff;
    ip[11] = 0xff;
    ip[12..].copy_from_slice(&v4);
    ip
}

/// `::ffff:a.b.c.d`, which Go's `To4` treats as IPv4.
pub(super) fn is_ipv4_mapped(ip: &[u8; 16]) -> bool {
    ip[..10].iter().all(|b| *b == 0) && ip[10] == 0xff && ip[11] == 0xff
}

/// A 128-bit prefix mask with `ones` leading one bits.
pub(super) fn prefix_mask(ones: u32) -> [u8; 16] {
    let value = u128::MAX
        .checked_shl(128u32.saturating_sub(ones))
        .unwrap_or(0);
    value.to_be_bytes()
}

pub(super) fn format_ipv4(ip: &[u8; 16]) -> String {
    format!("{}.{}.{}.{}", ip[12], ip[13], ip[14], ip[15])
}

/// Go's `net.IP.String()` on a 16-byte address: IPv4-mapped prints dotted.
pub(super) fn go_ip_string(ip: &[u8; 16]) -> String {
    if is_ipv4_mapped(ip) {
        format_ipv4(ip)
    } else {
        format_ipv6(ip)
    }
}

/// RFC 5952 text as Go prints it: lower-case hex, the first longest run of two or more zero
/// fields as "::". Written by hand because std prints IPv4-mapped addresses differently.
pub(super) fn format_ipv6(ip: &[u8; 16]) -> String {
    let groups: Vec<u16> = ip
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    // The first longest run of zero fields, if it spans at least two.
    let mut best: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < groups.len() {
        let run = groups[i..].iter().take_while(|g| **g == 0).count();
        if run >= 2 && best.is_none_or(|(_, len)| run > len) {
            best = Some((i, run));
        }
        i += run.max(1);
    }

    let mut out = String::new();
    let mut i = 0;
    while i < groups.len() {
        if let Some((start, len)) = best.filter(|(start, _)| *start == i) {
            out.push_str("::");
            i = start + len;
            continue;
        }
        let after_gap = best.is_some_and(|(start, len)| start + len == i);
        if i > 0 && !after_gap {
            out.push(':');
        }
        out.push_str(&format!("{:x}", groups[i]));
        i += 1;
    }
    out
}
