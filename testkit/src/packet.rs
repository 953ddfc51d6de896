//! Crafted Ethernet frames for BPF_PROG_TEST_RUN: the packet-level tests, the differential
//! test against the policy core and the datapath benchmark. Checksums are left zero:
//! the datapath never reads them.

use std::net::IpAddr;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The L4 part of a crafted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Sctp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 (by address family): type, code, echo id.
    Icmp {
        kind: u8,
        code: u8,
        id: u16,
    },
    /// Any other protocol number, with a few payload bytes.
    Other {
        protocol: u8,
    },
}

/// An IPv4 or IPv6 packet in an Ethernet frame.
pub fn build(src: IpAddr, dst: IpAddr, l4: L4) -> Vec<u8> {
    let l4_bytes = l4_header(&l4);
    let proto = match (l4, src.is_ipv4()) {
        (L4::Tcp { .. }, _) => PROTO_TCP,
        (L4::Udp { .. }, _) => PROTO_UDP,
        (L4::Sctp { .. }, _) => PROTO_SCTP,
        (L4::Icmp { .. }, true) => PROTO_ICMP,
        (L4::Icmp { .. }, false) => PROTO_ICMPV6,
        (L4::Other { protocol }, _) => protocol,
    };
    let mut f = Vec::with_capacity(14 + 40 + l4_bytes.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst mac
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src mac
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + l4_bytes.len()) as u16;
            f.push(0x45);
            f.push(0);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
            f.push(64);
            f.push(proto);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4_bytes.len() as u16).to_be_bytes());
            f.push(proto);
            f.push(64);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        // Mixed families cannot be one packet; callers pass matching pairs.
        _ => return Vec::new(),
    }
    f.extend_from_slice(&l4_bytes);
    f
}

fn l4_header(l4: &L4) -> Vec<u8> {
    match *l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = flags;
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h
        }
        L4::Udp { sport, dport } => {
            let mut h = vec![0u8; 12];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&12u16.to_be_bytes());
            h
        }
        L4::Sctp { sport, dport } => {
            let mut h = vec![0u8; 16];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h
        }
        L4::Icmp { kind, code, id } => {
            let mut h = vec![0u8; 16];
            h[0] = kind;
            h[1] = code;
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6..8].copy_from_slice(&1u16.to_be_bytes());
            h
        }
        L4::Other { .. } => vec![0u8; 8],
    }
}

/// An ARP request frame (not IP: the datapath passes it).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0u8; 28]);
    f
}

/// An IPv4 packet whose fragment offset is not zero (a non-first fragment).
pub fn ipv4_later_fragment(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut f = build(
        src,
        dst,
        L4::Udp {
            sport: 1000,
            dport: 53,
        },
    );
    if f.len() > 21 {
        f[20] = 0x00;
        f[21] = 0x10; // offset 16 * 8 bytes
    }
    f
}

// ---- checksums (tests of rewrites: service NAT, csum.h) ------------------------------

const ETH: usize = 14;

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn add(sum: u32, data: &[u8]) -> u32 {
    data.chunks(2).fold(sum, |s, c| {
        s + u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
    })
}

/// (L3 header length, L4 protocol, L4 checksum offset within the L4 header) of a TCP or
/// UDP frame built by [`build`].
fn shape(pkt: &[u8]) -> (usize, u8, usize) {
    let v4 = pkt[12..14] == [0x08, 0x00];
    let (l3, proto) = if v4 {
        (20, pkt[ETH + 9])
    } else {
        (40, pkt[ETH + 6])
    };
    (l3, proto, if proto == PROTO_TCP { 16 } else { 6 })
}

fn pseudo(pkt: &[u8], l4_len: usize, proto: u8) -> u32 {
    let v4 = pkt[12..14] == [0x08, 0x00];
    let addrs = if v4 {
        &pkt[ETH + 12..ETH + 20]
    } else {
        &pkt[ETH + 8..ETH + 40]
    };
    add(0, addrs) + u32::from(proto) + l4_len as u32
}

/// CRC32c (Castagnoli, reflected), as SCTP's checksum uses it (RFC 4960 appendix B).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The SCTP packet's checksum as it is stored (offset 8 of the common header): CRC32c over
/// the SCTP packet with the field zero, least significant byte first (as Linux stores it).
fn sctp_checksum(sctp: &[u8]) -> [u8; 4] {
    let mut copy = sctp.to_vec();
    copy[8..12].fill(0);
    crc32c(&copy).to_le_bytes()
}

/// The frame of a TCP, UDP or SCTP packet built by [`build`] with correct checksums (IPv4
/// header; L4 with its pseudo-header, or SCTP's CRC32c, which covers no address), computed
/// independently of the datapath.
pub fn with_checksums(mut pkt: Vec<u8>) -> Vec<u8> {
    let (l3, proto, c) = shape(&pkt);
    if l3 == 20 {
        pkt[ETH + 10..ETH + 12].fill(0);
        let s = !fold(add(0, &pkt[ETH..ETH + 20]));
        pkt[ETH + 10..ETH + 12].copy_from_slice(&s.to_be_bytes());
    }
    let l4 = ETH + l3;
    if proto == PROTO_SCTP {
        let sum = sctp_checksum(&pkt[l4..]);
        pkt[l4 + 8..l4 + 12].copy_from_slice(&sum);
        return pkt;
    }
    pkt[l4 + c..l4 + c + 2].fill(0);
    let len = pkt.len() - l4;
    let s = !fold(add(pseudo(&pkt, len, proto), &pkt[l4..]));
    pkt[l4 + c..l4 + c + 2].copy_from_slice(&s.to_be_bytes());
    pkt
}

/// Whether every checksum of a TCP, UDP, SCTP, ICMP or ICMPv6 frame (without IPv4 options or
/// IPv6 extension headers) verifies: the IPv4 header's, and the L4 one with its
/// pseudo-header (none for ICMP over IPv4; SCTP's CRC32c).
pub fn checksums_ok(pkt: &[u8]) -> bool {
    let (l3, proto, _) = shape(pkt);
    if l3 == 20 && fold(add(0, &pkt[ETH..ETH + 20])) != 0xffff {
        return false;
    }
    let l4 = ETH + l3;
    if proto == PROTO_SCTP {
        return pkt[l4 + 8..l4 + 12] == sctp_checksum(&pkt[l4..]);
    }
    let ph = if proto == 1 {
        0
    } else {
        pseudo(pkt, pkt.len() - l4, proto)
    };
    fold(add(ph, &pkt[l4..])) == 0xffff
}

/// The (source, destination) addresses and ports of a TCP or UDP frame.
pub fn tuple(pkt: &[u8]) -> ((IpAddr, u16), (IpAddr, u16)) {
    let (l3, _, _) = shape(pkt);
    let (s, d): (IpAddr, IpAddr) = if l3 == 20 {
        let a = |o: usize| -> IpAddr {
            std::net::Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]).into()
        };
        (a(ETH + 12), a(ETH + 16))
    } else {
        let a = |o: usize| -> IpAddr {
            let mut b = [0u8; 16];
            b.copy_from_slice(&pkt[o..o + 16]);
            std::net::Ipv6Addr::from(b).into()
        };
        (a(ETH + 8), a(ETH + 24))
    };
    let l4 = ETH + l3;
    let port = |o: usize| u16::from_be_bytes([pkt[l4 + o], pkt[l4 + o + 1]]);
    ((s, port(0)), (d, port(2)))
}

#[cfg(test)]
mod crc_tests {
    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C (iSCSI, SCTP) for "123456789".
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
    }
}
