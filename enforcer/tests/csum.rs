//! The checksum helpers of `ebpf/lib/csum.h`, run in the kernel with BPF_PROG_TEST_RUN
//! through `ebpf/tests/test_progs.c` (`csum_rewrite`): IPv4 and IPv6, TCP and UDP packets
//! with valid checksums get their addresses and ports rewritten, and what comes out must
//! carry the new values with checksums that verify, computed independently here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use std::net::IpAddr;

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use palisade_testkit::packet::{self, L4, TCP_SYN};

static TEST_PROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_progs.o"));

const ETH: usize = 14;

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn add(sum: u32, data: &[u8]) -> u32 {
    data.chunks(2).fold(sum, |s, c| {
        s + u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
    })
}

/// (L3 header length, L4 protocol, L4 checksum offset within the L4 header).
fn shape(pkt: &[u8]) -> (usize, u8, usize) {
    let v4 = pkt[12..14] == [0x08, 0x00];
    let (l3, proto) = if v4 {
        (20, pkt[ETH + 9])
    } else {
        (40, pkt[ETH + 6])
    };
    (l3, proto, if proto == 6 { 16 } else { 6 })
}

fn pseudo(pkt: &[u8], l4_len: usize, proto: u8) -> u32 {
    let v4 = pkt[12..14] == [0x08, 0x00];
    let addrs = if v4 {
        &pkt[ETH + 12..ETH + 20]
    } else {
        &pkt[ETH + 8..ETH + 40]
    };
    let s = add(0, addrs);
    s + u32::from(proto) + l4_len as u32
}

/// Fills in correct checksums (IPv4 header, L4 with pseudo-header).
fn with_checksums(mut pkt: Vec<u8>) -> Vec<u8> {
    let (l3, proto, c) = shape(&pkt);
    if l3 == 20 {
        pkt[ETH + 10..ETH + 12].fill(0);
        let s = !fold(add(0, &pkt[ETH..ETH + 20]));
        pkt[ETH + 10..ETH + 12].copy_from_slice(&s.to_be_bytes());
    }
    let l4 = ETH + l3;
    pkt[l4 + c..l4 + c + 2].fill(0);
    let len = pkt.len() - l4;
    let s = !fold(add(pseudo(&pkt, len, proto), &pkt[l4..]));
    pkt[l4 + c..l4 + c + 2].copy_from_slice(&s.to_be_bytes());
    pkt
}

/// Whether every checksum of the packet verifies.
fn checksums_ok(pkt: &[u8]) -> bool {
    let (l3, proto, _) = shape(pkt);
    if l3 == 20 && fold(add(0, &pkt[ETH..ETH + 20])) != 0xffff {
        return false;
    }
    let l4 = ETH + l3;
    fold(add(pseudo(pkt, pkt.len() - l4, proto), &pkt[l4..])) == 0xffff
}

struct Prog {
    bpf: Ebpf,
}

impl Prog {
    fn load() -> Prog {
        let mut bpf = EbpfLoader::new().load(TEST_PROGS).unwrap();
        let p: &mut SchedClassifier = bpf.program_mut("csum_rewrite").unwrap().try_into().unwrap();
        p.load().unwrap();
        Prog { bpf }
    }

    fn run(&mut self, pkt: &[u8]) -> Vec<u8> {
        let p: &mut SchedClassifier = self
            .bpf
            .program_mut("csum_rewrite")
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; pkt.len() + 64];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(r.return_value, 0, "a csum.h helper failed");
        out.truncate(r.data_size_out as usize);
        out
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn rewrites_keep_every_checksum_valid() {
    if !common::privileged("csum") {
        return;
    }
    let mut prog = Prog::load();
    let tcp = L4::Tcp {
        sport: 40000,
        dport: 80,
        flags: TCP_SYN,
    };
    let udp = L4::Udp {
        sport: 5353,
        dport: 53,
    };
    for (src, dst) in [("10.0.0.2", "10.0.0.1"), ("fd00::2", "fd00::1")] {
        for l4 in [tcp, udp] {
            let input = with_checksums(packet::build(ip(src), ip(dst), l4));
            assert!(checksums_ok(&input), "test helper: {src} {l4:?}");
            let out = prog.run(&input);
            assert_eq!(out.len(), input.len());
            let (l3, _, _) = shape(&out);
            let l4o = ETH + l3;
            assert_eq!(
                &out[l4o..l4o + 4],
                &[0x10, 0x92, 0x1f, 0x90],
                "ports 4242 -> 8080"
            );
            if l3 == 20 {
                assert_eq!(&out[ETH + 12..ETH + 20], &[10, 8, 8, 8, 10, 9, 9, 9]);
            } else {
                assert_eq!(out[ETH + 8..ETH + 10], [0xfd, 0x08]);
                assert_eq!(out[ETH + 39], 0x09);
            }
            assert!(checksums_ok(&out), "{src} {l4:?}: checksums after rewrite");
            // The same rewrite without the helpers' checksum updates would not verify.
            let mut naive = input.clone();
            naive[l4o..l4o + 4].copy_from_slice(&out[l4o..l4o + 4]);
            assert!(!checksums_ok(&naive), "the test detects a missed update");
        }
    }
}

#[test]
fn an_absent_ipv4_udp_checksum_stays_absent() {
    if !common::privileged("csum-udp0") {
        return;
    }
    let mut prog = Prog::load();
    let mut input = with_checksums(packet::build(
        ip("10.0.0.2"),
        ip("10.0.0.1"),
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    ));
    input[ETH + 20 + 6..ETH + 20 + 8].fill(0);
    let out = prog.run(&input);
    assert_eq!(
        &out[ETH + 20 + 6..ETH + 20 + 8],
        &[0, 0],
        "0 means no checksum in UDP/IPv4"
    );
    assert_eq!(&out[ETH + 20..ETH + 24], &[0x10, 0x92, 0x1f, 0x90]);
}
