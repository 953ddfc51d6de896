//! The flow hash that picks a Maglev slot, computed by the datapath (`ebpf/lib/jhash.h`,
//! run in the kernel with BPF_PROG_TEST_RUN through `ebpf/tests/test_progs.c` `flow_hash`)
//! and by the policy core (`policy_compiler::services::maglev::flow_hash`), must agree on
//! every tuple: otherwise `policy-test` would name another backend than the kernel picks.
//! Random TCP, UDP and SCTP tuples over IPv4 and IPv6.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::EbpfLoader;
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use palisade_testkit::packet::{self, L4, TCP_SYN};
use policy_compiler::services::maglev;

static TEST_PROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test_progs.o"));

/// xorshift64*: reproducible tuples without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn kernel_and_policy_core_hash_every_tuple_alike() {
    if !common::privileged("flow-hash") {
        return;
    }
    let mut bpf = EbpfLoader::new().load(TEST_PROGS).unwrap();
    let prog: &mut SchedClassifier = bpf.program_mut("flow_hash").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut distinct = std::collections::BTreeSet::new();
    for i in 0..3_000 {
        let v6 = i % 3 == 0;
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())).into(),
                Ipv6Addr::from(u128::from(rng.next()) << 64 | u128::from(rng.next())).into(),
            )
        } else {
            (
                Ipv4Addr::from(rng.next() as u32).into(),
                Ipv4Addr::from(rng.next() as u32).into(),
            )
        };
        let (sport, dport) = (rng.next() as u16 | 1, rng.next() as u16 | 1);
        let (l4, proto) = match i % 3 {
            0 => (
                L4::Tcp {
                    sport,
                    dport,
                    flags: TCP_SYN,
                },
                6u8,
            ),
            1 => (L4::Udp { sport, dport }, 17),
            _ => (L4::Sctp { sport, dport }, 132),
        };
        let pkt = packet::build(src, dst, l4);
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&pkt),
                ..Default::default()
            })
            .unwrap();
        let want = maglev::flow_hash(src, dst, sport, dport, proto);
        assert_eq!(
            r.return_value, want,
            "{src}:{sport} -> {dst}:{dport} proto {proto}: kernel {:#x}, policy core {want:#x}",
            r.return_value
        );
        distinct.insert(want);
    }
    assert!(
        distinct.len() > 2_990,
        "the hash spreads: {}",
        distinct.len()
    );
}
