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
use palisade_testkit::packet::{self, L4, TCP_SYN, checksums_ok, with_checksums};

static TEST_PROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_progs.o"));

const ETH: usize = 14;

/// The IPv4 (20) or IPv6 (40) header length of a frame built by `packet::build`.
fn l3_len(pkt: &[u8]) -> usize {
    if pkt[12..14] == [0x08, 0x00] { 20 } else { 40 }
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
            let l3 = l3_len(&out);
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
